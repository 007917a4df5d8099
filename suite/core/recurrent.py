"""The recurrent stack shared by every own-loop variant, called like `torch.nn.LSTM` (plus `lengths`, `time_offset`).

A stack holds layers (`suite.core.cell.LSTMLayer`) in torch.nn.LSTM's order and runs them
level by level, each direction on its own (the reverse one on time-reversed sequences),
with dropout between levels. `Recurrent` (`impl = "reference"`) runs every layer on the
cell's own time loop; `LoopRecurrent` (`impl = "fast"`) runs each layer on the backend that
`suite.core.backends.choose` picks, and the whole stack on the reference loop when some layer
has no faster backend (so both see the same random draws). Parameters, buffers and
state_dict are the same for both, so a model swaps `impl` freely.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from suite.core import backends
from suite.core.backends import reference
from suite.core.cell import LSTMOptions
from suite.core.errors import ConfigError

IMPLS = ("reference", "fast")


@dataclass(frozen=True)
class ImplOptions(LSTMOptions):
    """LSTM options plus which implementation runs: "reference" (the cell's own time loop) or "fast"."""

    impl: str = "fast"  # or "reference": the straightforward loop of suite.core.cell, same parameters


def stack_class(impl: str, fast: type[Recurrent], variant: str) -> type[Recurrent]:
    """The Recurrent class for option `impl` of a variant: the reference or its fast path."""
    if impl not in IMPLS:
        raise ConfigError(f"{variant}: impl must be one of {', '.join(IMPLS)}, got {impl!r}")
    return fast if impl == "fast" else Recurrent


class Recurrent(nn.Module):
    """A stack of layers called like torch.nn.LSTM, plus `lengths` and `time_offset`."""

    def __init__(self, input_size: int, hidden_size: int, num_layers: int, batch_first: bool,
                 dropout: float, make_layer: Callable[[int], nn.Module], bidirectional: bool = False):
        super().__init__()
        if num_layers < 1:
            raise ValueError(f"num_layers must be >= 1, got {num_layers}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        self.input_size, self.hidden_size, self.num_layers = input_size, hidden_size, num_layers
        self.batch_first, self.dropout = batch_first, dropout
        self.num_directions = 2 if bidirectional else 1
        # torch.nn.LSTM's order: layer 0 forward, layer 0 reverse, layer 1 forward, ...
        self.layers = nn.ModuleList(
            make_layer(input_size if i < self.num_directions else self.num_directions * hidden_size)
            for i in range(num_layers * self.num_directions))

    def forward(self, input: torch.Tensor, hx: tuple[torch.Tensor, torch.Tensor] | None = None,
                lengths: torch.Tensor | None = None, time_offset: int = 0):
        """Return output (T, B, D*H) (or batch-first) and (h_n, c_n), each (num_layers*D, B, H)."""
        x = input.transpose(0, 1) if self.batch_first else input
        mask = check_inputs(x, hx, lengths, self.input_size, self.hidden_size,
                            self.num_layers * self.num_directions)
        reverse = reversal_index(mask, x.shape[0], x.shape[1], x.device) if self.num_directions == 2 else None
        h_n, c_n = [], []
        for level in range(self.num_layers):
            if level > 0 and self.dropout > 0:
                x = F.dropout(x, self.dropout, self.training)
            outputs = []
            for direction in range(self.num_directions):
                index = level * self.num_directions + direction
                layer = self.layers[index]
                state = layer.initial_state(x.shape[1]) if hx is None else (hx[0][index], hx[1][index])
                if direction == 0:
                    out, (h, c) = layer(x, state, mask, time_offset)
                else:
                    out, (h, c) = layer(reverse_time(x, reverse), state, mask, time_offset)
                    out = reverse_time(out, reverse)
                outputs.append(out)
                h_n.append(h)
                c_n.append(c)
            x = torch.cat(outputs, -1) if len(outputs) > 1 else outputs[0]
        output = x.transpose(0, 1) if self.batch_first else x
        return output, (torch.stack(h_n), torch.stack(c_n))


def initial_states(stack: Recurrent, hx, batch: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(h0, c0), each (num_layers, B, H): given, or each layer's learned initial state."""
    if hx is not None:
        return hx[0], hx[1]
    states = [layer.initial_state(batch) for layer in stack.layers]
    return torch.stack([s[0] for s in states]), torch.stack([s[1] for s in states])


class LoopRecurrent(Recurrent):
    """A stack whose layers each run on the backend `suite.core.backends.choose` picks for them."""

    def forward(self, input: torch.Tensor, hx=None, lengths: torch.Tensor | None = None, time_offset: int = 0):
        """Same contract as Recurrent.forward, which runs instead when some layer has no faster backend."""
        x = input.transpose(0, 1) if self.batch_first else input
        runners = [backends.choose(layer, x, masked=lengths is not None) for layer in self.layers]
        if any(run is reference.run_layer for run in runners):
            return super().forward(input, hx, lengths, time_offset)  # the whole stack on the reference loop
        directions = self.num_directions
        mask = check_inputs(x, hx, lengths, self.input_size, self.hidden_size, self.num_layers * directions)
        reverse = reversal_index(mask, x.shape[0], x.shape[1], x.device) if mask is not None else None
        padding = {} if mask is None else {"mask": mask}
        h0s, c0s = initial_states(self, hx, x.shape[1])
        h_n, c_n = [], []
        for level in range(self.num_layers):
            if level > 0 and self.dropout > 0:
                x = F.dropout(x, self.dropout, self.training)
            outputs = []
            for direction in range(directions):  # torch.nn.LSTM's order: forward, then reverse
                index = level * directions + direction
                source = x if direction == 0 else _reversed(x, reverse)
                out, (h, c) = runners[index](self.layers[index], source, h0s[index], c0s[index], time_offset,
                                             **padding)
                outputs.append(out if direction == 0 else _reversed(out, reverse))
                h_n.append(h)
                c_n.append(c)
            x = torch.cat(outputs, -1) if directions > 1 else outputs[0]
        output = x.transpose(0, 1) if self.batch_first else x
        return output, (torch.stack(h_n), torch.stack(c_n))


def _reversed(x: torch.Tensor, index: torch.Tensor | None) -> torch.Tensor:
    """Each sequence reversed in time: a flip without padding, else the reference's reversal."""
    return x.flip(0) if index is None else reverse_time(x, index)


def reversal_index(mask: torch.Tensor | None, steps: int, batch: int, device) -> torch.Tensor:
    """(T, B) time index that reverses each sequence's unpadded part and leaves its padding in place."""
    t = torch.arange(steps, device=device).unsqueeze(1).expand(steps, batch)
    if mask is None:
        return steps - 1 - t
    lengths = mask.sum(0, keepdim=True)
    return torch.where(t < lengths, lengths - 1 - t, t)


def reverse_time(x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """Reorder x (T, B, C) in time by a reversal index (its own inverse)."""
    return x.gather(0, index.unsqueeze(-1).expand_as(x))


def check_inputs(x: torch.Tensor, hx, lengths: torch.Tensor | None, input_size: int,
                 hidden_size: int, num_layers: int) -> torch.Tensor | None:
    """Validate shapes of a time-major input, state and lengths; return the (T, B) mask or None."""
    if x.dim() != 3:
        raise ValueError(f"expected input of shape (T, B, {input_size}), got {tuple(x.shape)}")
    steps, batch, features = x.shape
    if features != input_size:
        raise ValueError(f"input has {features} features per step but the layer was built for {input_size}")
    if hx is not None:
        want = (num_layers, batch, hidden_size)
        for name, tensor in zip(("h0", "c0"), hx):
            if tuple(tensor.shape) != want:
                raise ValueError(f"{name} has shape {tuple(tensor.shape)}, expected {want}")
    if lengths is None:
        return None
    lengths = torch.as_tensor(lengths, device=x.device)
    if lengths.shape != (batch,):
        raise ValueError(f"lengths has shape {tuple(lengths.shape)}, expected ({batch},)")
    if int(lengths.max()) > steps or int(lengths.min()) < 1:
        raise ValueError(f"lengths must lie in [1, {steps}] (the input has T={steps}), "
                         f"got min {int(lengths.min())}, max {int(lengths.max())}")
    return torch.arange(steps, device=x.device).unsqueeze(1) < lengths.unsqueeze(0)

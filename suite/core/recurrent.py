"""The sequence layer shared by every variant: `torch.nn.LSTM`'s call signature, the only time loop.

An `LSTMLayer` holds W_x, W_h, b and three norm slots (see `suite.core.cells.norms`):

    gates = norm_h(W_h h_{t-1}) + norm_x(W_x x_t) + b          (i, f, g, o as in torch.nn.LSTM)
    c_t   = sigmoid(f) * c_{t-1} + sigmoid(i) * tanh(g)
    h_t   = sigmoid(o) * tanh(norm_c(c_t))

which is Cooijmans et al. (2016), Eq. 6-8, when the norms are per-step batch norms, and the
plain LSTM when they are identities. The input term is computed for all steps before the
loop (one matmul, one vectorized normalization). With `lengths`, padded steps leave the
state unchanged, output zeros and are masked out of every statistic.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from suite.core.cells.norms import Identity


@dataclass(frozen=True)
class LSTMOptions:
    """Options every own-loop variant shares (authors' defaults)."""

    forget_bias: float = 1.0
    learn_init: bool = True
    h0_noise: float = 0.0


class LSTMLayer(nn.Module):
    """One LSTM layer, one direction, with pluggable normalizations of its three terms."""

    def __init__(self, input_size: int, hidden_size: int, options: LSTMOptions,
                 norm_x: nn.Module | None = None, norm_h: nn.Module | None = None,
                 norm_c: nn.Module | None = None):
        super().__init__()
        self.input_size, self.hidden_size, self.options = input_size, hidden_size, options
        self.weight_ih = nn.Parameter(torch.empty(4 * hidden_size, input_size))
        self.weight_hh = nn.Parameter(torch.empty(4 * hidden_size, hidden_size))
        self.bias = nn.Parameter(torch.zeros(4 * hidden_size))
        self.norm_x = norm_x or Identity()
        self.norm_h = norm_h or Identity()
        self.norm_c = norm_c or Identity()
        init = torch.zeros(2, hidden_size)
        if options.learn_init:
            self.init_state = nn.Parameter(init)
        else:
            self.register_buffer("init_state", init)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """torch.nn.LSTM's uniform init for weights; forget-gate bias set to `forget_bias`."""
        bound = 1.0 / math.sqrt(self.hidden_size)
        with torch.no_grad():
            self.weight_ih.uniform_(-bound, bound)
            self.weight_hh.uniform_(-bound, bound)
            self.bias.zero_()
            self.bias[self.hidden_size:2 * self.hidden_size].fill_(self.options.forget_bias)

    def initial_state(self, batch: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(h0, c0) for a batch: the learned initial state, with optional noise on h0 in training."""
        h0, c0 = self.init_state.unsqueeze(1).expand(2, batch, self.hidden_size).unbind(0)
        if self.training and self.options.h0_noise > 0:
            h0 = h0 + self.options.h0_noise * torch.randn_like(h0)
        return h0, c0

    def forward(self, x: torch.Tensor, state: tuple[torch.Tensor, torch.Tensor],
                mask: torch.Tensor | None = None, time_offset: int = 0):
        """Run the layer over x (T, B, F); returns outputs (T, B, H) and the final (h, c)."""
        w_ih, w_hh = self.weight_ih, self.weight_hh  # read once: a weight-norm reparametrization runs here only
        xg = self.norm_x.sequence(F.linear(x, w_ih), mask, time_offset) + self.bias
        w_hh_t = w_hh.t()
        h, c = state
        masks = mask.unsqueeze(-1).unbind(0) if mask is not None else [None] * x.shape[0]
        outputs = []
        # unbind, not xg[t]: indexing makes the backward pass quadratic in T.
        for step, (xg_t, keep) in enumerate(zip(xg.unbind(0), masks)):
            t = time_offset + step
            m_t = None if keep is None else keep.squeeze(-1)
            gates = xg_t + self.norm_h.step(h.mm(w_hh_t), t, m_t)
            i, f, g, o = gates.chunk(4, 1)
            c_new = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
            h_new = torch.sigmoid(o) * torch.tanh(self.norm_c.step(c_new, t, m_t))
            if keep is None:
                h, c = h_new, c_new
                outputs.append(h)
            else:
                h, c = torch.where(keep, h_new, h), torch.where(keep, c_new, c)
                outputs.append(h_new * keep)
        return torch.stack(outputs), (h, c)


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

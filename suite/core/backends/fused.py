"""The fused stack: torch's fused LSTM kernel for stacks whose layers have no activation norms (`wn_lstm`).

`FusedRecurrent` reads every layer's weights once per batch -- for weight norm that is where
w = g v / ||v|| is computed (Salimans & Kingma 2016) -- and hands them to torch's fused LSTM
kernel (`torch._VF.lstm`, what `torch.nn.LSTM` calls: oneDNN on CPU, cuDNN on GPU),
multi-layer with dropout, bidirectional, `lengths` through packing. A whole-stack backend,
unlike the per-layer ones `suite.core.backends.choose` picks from; its one support check is
`supports` (cuDNN has no backward in eval mode, where the reference loop runs instead).
Checked against the reference in tests/unit/test_fast.py.
"""

from __future__ import annotations

import warnings

import torch
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence, pad_packed_sequence

from suite.core.cells.norms import IDENTITY
from suite.core.errors import ConfigError
from suite.core.recurrent import Recurrent, check_inputs, initial_states


def supports(stack: Recurrent, x: torch.Tensor) -> bool:
    """True when the fused kernel computes this stack on x (time-major) as the reference would."""
    return not (x.is_cuda and not stack.training and torch.is_grad_enabled())


class FusedRecurrent(Recurrent):
    """A stack of un-normalized LSTMLayers run by the fused LSTM kernel."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        for layer in self.layers:
            if any(n.kind() != IDENTITY for n in (layer.norm_x, layer.norm_h, layer.norm_c)):
                raise ConfigError("impl='fast' through the fused kernel needs layers without activation norms")

    def forward(self, input: torch.Tensor, hx=None, lengths: torch.Tensor | None = None, time_offset: int = 0):
        """Same contract as Recurrent.forward (time_offset has no effect without per-step statistics)."""
        x = input.transpose(0, 1) if self.batch_first else input
        if not supports(self, x):
            return super().forward(input, hx, lengths, time_offset)  # the reference loop
        mask = check_inputs(x, hx, lengths, self.input_size, self.hidden_size, len(self.layers))
        h0, c0 = initial_states(self, hx, x.shape[1])
        weights = []  # torch.nn.LSTM's order, which is also self.layers': layer 0 forward, layer 0 reverse, ...
        for layer in self.layers:
            bias = layer.bias
            # Read once per batch: with weight norm this runs the reparametrization.
            weights += [layer.weight_ih, layer.weight_hh, bias, torch.zeros_like(bias)]
        with warnings.catch_warnings():
            # cuDNN warns that the weights are not one contiguous chunk: they are computed anew per batch.
            warnings.filterwarnings("ignore", message="RNN module weights are not part")
            out, h, c = self._run(x, mask, h0, c0, weights)
        return (out.transpose(0, 1) if self.batch_first else out), (h, c)

    def _run(self, x, mask, h0, c0, weights):
        dropout, train, bidir = float(self.dropout), self.training, self.num_directions == 2
        if mask is None:
            out, h, c = torch._VF.lstm(x, (h0, c0), weights, True, self.num_layers, dropout, train, bidir, False)
        else:
            packed = pack_padded_sequence(x, mask.sum(0).cpu(), enforce_sorted=False)
            order, back = packed.sorted_indices, packed.unsorted_indices
            data, h, c = torch._VF.lstm(packed.data, packed.batch_sizes, (h0.index_select(1, order),
                                        c0.index_select(1, order)), weights, True, self.num_layers,
                                        dropout, train, bidir)
            out, _ = pad_packed_sequence(PackedSequence(data, packed.batch_sizes, order, back),
                                         total_length=x.shape[0])
            h, c = h.index_select(1, back), c.index_select(1, back)
        return out, h, c

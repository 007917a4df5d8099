"""`lstm`: the plain LSTM (Hochreiter & Schmidhuber 1997) in the suite's own time loop.

Its fast path is the same loop machinery as the normalized variants' (`LoopRecurrent`: the
native step kernels on CPU) with every norm an identity, so that `lstm` against `bn_lstm`
measures what normalization costs; `cudnn_lstm` is the library's fused kernel.
"""

from __future__ import annotations

from torch import nn

from suite.core.cell import LSTMLayer
from suite.core.cells import register
from suite.core.recurrent import ImplOptions, LoopRecurrent, stack_class


@register("lstm", ImplOptions, "plain LSTM, own time loop (baseline)")
def build_lstm(input_size: int, hidden_size: int, num_layers: int, batch_first: bool, dropout: float,
               options: ImplOptions, bidirectional: bool = False) -> nn.Module:
    """A stack of un-normalized LSTM layers."""
    stack = stack_class(options.impl, LoopRecurrent, "lstm")
    return stack(input_size, hidden_size, num_layers, batch_first, dropout,
                 lambda size: LSTMLayer(size, hidden_size, options), bidirectional=bidirectional)

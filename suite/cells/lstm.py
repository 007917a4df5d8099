"""`lstm`: the plain LSTM (Hochreiter & Schmidhuber 1997) in the suite's own time loop."""

from __future__ import annotations

from torch import nn

from suite.cells import register
from suite.fused import FusedRecurrent, ImplOptions, stack_class
from suite.recurrent import LSTMLayer


@register("lstm", ImplOptions, "plain LSTM, own time loop (baseline)")
def build_lstm(input_size: int, hidden_size: int, num_layers: int, batch_first: bool, dropout: float,
               options: ImplOptions, bidirectional: bool = False) -> nn.Module:
    """A stack of un-normalized LSTM layers."""
    stack = stack_class(options.impl, FusedRecurrent, "lstm")  # "fast": the fused kernel, same parameters
    return stack(input_size, hidden_size, num_layers, batch_first, dropout,
                     lambda size: LSTMLayer(size, hidden_size, options), bidirectional=bidirectional)

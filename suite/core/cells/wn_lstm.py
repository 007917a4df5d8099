"""`wn_lstm`: weight-normalized LSTM (Salimans & Kingma 2016), W_x and W_h per output unit.

The weight is w = g * v / ||v|| row by row (`torch.nn.utils.parametrizations.weight_norm`,
dim 0); the layer reads each weight once per forward pass, so the normalization runs once
per batch, not once per step.
"""

from __future__ import annotations

from torch import nn
from torch.nn.utils.parametrizations import weight_norm

from suite.core.backends.fused import FusedRecurrent
from suite.core.cell import LSTMLayer, LSTMOptions
from suite.core.cells import register
from suite.core.recurrent import ImplOptions, stack_class


def wn_layer(input_size: int, hidden_size: int, options: LSTMOptions) -> LSTMLayer:
    """An LSTM layer whose two weight matrices are weight-normalized per output unit."""
    layer = LSTMLayer(input_size, hidden_size, options)
    weight_norm(layer, "weight_ih", dim=0)
    weight_norm(layer, "weight_hh", dim=0)
    return layer


@register("wn_lstm", ImplOptions, "weight norm of W_x and W_h per unit (Salimans & Kingma 2016)")
def build_wn_lstm(input_size: int, hidden_size: int, num_layers: int, batch_first: bool, dropout: float,
                  options: ImplOptions, bidirectional: bool = False) -> nn.Module:
    """A stack of weight-normalized LSTM layers."""
    stack = stack_class(options.impl, FusedRecurrent, "wn_lstm")  # "fast": normalized weights -> fused kernel
    return stack(input_size, hidden_size, num_layers, batch_first, dropout,
                     lambda size: wn_layer(size, hidden_size, options), bidirectional=bidirectional)

"""`wn_lstm`: weight-normalized LSTM (Salimans & Kingma 2016), W_x and W_h per output unit.

The weight is w = g * v / ||v|| row by row (`torch.nn.utils.parametrizations.weight_norm`,
dim 0); the layer reads each weight once per forward pass, so the normalization runs once
per batch, not once per step.
"""

from __future__ import annotations

from torch import nn
from torch.nn.utils.parametrizations import weight_norm

from suite.cells import register
from suite.recurrent import LSTMLayer, LSTMOptions, Recurrent


def wn_layer(input_size: int, hidden_size: int, options: LSTMOptions) -> LSTMLayer:
    """An LSTM layer whose two weight matrices are weight-normalized per output unit."""
    layer = LSTMLayer(input_size, hidden_size, options)
    weight_norm(layer, "weight_ih", dim=0)
    weight_norm(layer, "weight_hh", dim=0)
    return layer


@register("wn_lstm", LSTMOptions, "weight norm of W_x and W_h per unit (Salimans & Kingma 2016)")
def build_wn_lstm(input_size: int, hidden_size: int, num_layers: int, batch_first: bool, dropout: float,
                  options: LSTMOptions, bidirectional: bool = False) -> nn.Module:
    """A stack of weight-normalized LSTM layers."""
    return Recurrent(input_size, hidden_size, num_layers, batch_first, dropout,
                     lambda size: wn_layer(size, hidden_size, options), bidirectional=bidirectional)

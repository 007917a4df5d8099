"""`ln_lstm`: layer-normalized LSTM (Ba et al. 2016), norms in the same three places as BN-LSTM."""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from suite.core.cell import LSTMLayer, LSTMOptions
from suite.core.cells import register
from suite.core.cells.norms import LayerNorm
from suite.core.recurrent import LoopRecurrent, stack_class


@dataclass(frozen=True)
class LNOptions(LSTMOptions):
    """Layer-norm gain starts at 1 (Ba et al.); eps as in the paper's BN."""

    gain_init: float = 1.0
    eps: float = 1e-5
    impl: str = "fast"  # suite.core.recurrent.LoopRecurrent; "reference": the straightforward loop, same parameters


@register("ln_lstm", LNOptions, "layer norm on W_x x, W_h h and c_t (Ba et al. 2016)")
def build_ln_lstm(input_size: int, hidden_size: int, num_layers: int, batch_first: bool, dropout: float,
                  options: LNOptions, bidirectional: bool = False) -> nn.Module:
    """A stack of layer-normalized LSTM layers."""
    def layer(size: int) -> LSTMLayer:
        g, eps = options.gain_init, options.eps
        return LSTMLayer(size, hidden_size, options,
                         norm_x=LayerNorm(4 * hidden_size, g, eps, bias=False),
                         norm_h=LayerNorm(4 * hidden_size, g, eps, bias=False),
                         norm_c=LayerNorm(hidden_size, g, eps, bias=True))

    stack = stack_class(options.impl, LoopRecurrent, "ln_lstm")
    return stack(input_size, hidden_size, num_layers, batch_first, dropout, layer, bidirectional=bidirectional)

"""`bn_vertical`: BN of the input-to-hidden term only (Laurent et al. 2016; Deep Speech 2).

The baseline the paper argues against. Statistics are per time step by default; with
`statistics = "sequence"` they are shared over time and batch, as Deep Speech 2 did.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from suite.core.cell import LSTMLayer
from suite.core.cells import register
from suite.core.cells.bn_lstm import BNOptions, step_bn
from suite.core.errors import ConfigError
from suite.core.recurrent import LoopRecurrent, stack_class


@dataclass(frozen=True)
class VerticalBNOptions(BNOptions):
    """BN options plus where the statistics come from: "per_step" or "sequence"."""

    statistics: str = "per_step"


@register("bn_vertical", VerticalBNOptions, "BN on W_x x only (Laurent et al. 2016)")
def build_bn_vertical(input_size: int, hidden_size: int, num_layers: int, batch_first: bool, dropout: float,
                      options: VerticalBNOptions, bidirectional: bool = False) -> nn.Module:
    """A stack of LSTM layers with batch-normalized input terms."""
    if options.statistics not in ("per_step", "sequence"):
        raise ConfigError(f"bn_vertical: statistics must be 'per_step' or 'sequence', got {options.statistics!r}")
    per_step = options.statistics == "per_step"
    def layer(size: int) -> LSTMLayer:
        return LSTMLayer(size, hidden_size, options, norm_x=step_bn(4 * hidden_size, options, False, per_step))

    stack = stack_class(options.impl, LoopRecurrent, "bn_vertical")
    return stack(input_size, hidden_size, num_layers, batch_first, dropout, layer, bidirectional=bidirectional)

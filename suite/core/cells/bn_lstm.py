"""`bn_lstm`: the recurrent batch-normalized LSTM of Cooijmans et al. (2016), Eq. 6-8.

BN on W_x x_t and on W_h h_{t-1} separately (gamma only: the bias b stands in for beta),
and on c_t for the output path only, with statistics per time step 1..T_max.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from suite.core.cell import LSTMLayer, LSTMOptions
from suite.core.cells import register
from suite.core.cells.norms import StepBatchNorm
from suite.core.errors import ConfigError
from suite.core.recurrent import LoopRecurrent, stack_class


@dataclass(frozen=True)
class BNOptions(LSTMOptions):
    """Paper defaults: gamma 0.1 (Section 4), eps 1e-5, running-average momentum 0.1."""

    gamma_init: float = 0.1
    eps: float = 1e-5
    momentum: float = 0.1
    t_max: int = 1000
    # Statistics of the input term W_x x_t: "per_step" (Section 3), or "sequence", shared over
    # time and batch (Laurent et al. 2016), as in the paper's BN-e* on CNN QA (Section 5.4).
    statistics: str = "per_step"
    impl: str = "fast"  # suite.core.recurrent.LoopRecurrent; "reference": the straightforward loop, same parameters


def step_bn(size: int, options: BNOptions, bias: bool, per_step: bool = True) -> StepBatchNorm:
    """A StepBatchNorm configured from a variant's options."""
    return StepBatchNorm(size, options.t_max, options.gamma_init, options.eps, options.momentum, bias, per_step)


@register("bn_lstm", BNOptions, "BN on W_x x, W_h h and c_t, per-step statistics (Cooijmans et al. 2016)")
def build_bn_lstm(input_size: int, hidden_size: int, num_layers: int, batch_first: bool, dropout: float,
                  options: BNOptions, bidirectional: bool = False) -> nn.Module:
    """A stack of BN-LSTM layers."""
    if options.statistics not in ("per_step", "sequence"):
        raise ConfigError(f"bn_lstm: statistics must be 'per_step' or 'sequence', got {options.statistics!r}")

    def layer(size: int) -> LSTMLayer:
        return LSTMLayer(size, hidden_size, options,
                         norm_x=step_bn(4 * hidden_size, options, bias=False,
                                        per_step=options.statistics == "per_step"),
                         norm_h=step_bn(4 * hidden_size, options, bias=False),
                         norm_c=step_bn(hidden_size, options, bias=True))

    stack = stack_class(options.impl, LoopRecurrent, "bn_lstm")
    return stack(input_size, hidden_size, num_layers, batch_first, dropout, layer, bidirectional=bidirectional)

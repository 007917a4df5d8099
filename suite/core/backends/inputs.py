"""The input term of an LSTM layer, norm_x(W_x x) + b for all steps at once, shared by the backends.

Hoisted out of the time loop (Cooijmans et al. 2016, Eq. 6: the input and recurrent terms are
normalized separately, so the input's can be computed for every step first).
"""

from __future__ import annotations

import torch
from torch import nn

from suite.core.cells.norms import ACCUMULATE, BATCH, POPULATION, Identity, LayerNorm, StepBatchNorm
from suite.core.recurrent import LSTMLayer


def norm_supported(norm: nn.Module, batch: int) -> bool:
    """True when torch's batch-norm kernels compute this norm exactly: identity, layer norm, or
    per-step batch norm outside accumulate mode (and with more than one example for batch statistics)."""
    if isinstance(norm, Identity | LayerNorm):
        return True
    return (isinstance(norm, StepBatchNorm) and norm.per_step and norm.mode() != ACCUMULATE
            and (batch > 1 or norm.mode() == POPULATION))


def input_term(layer: LSTMLayer, x: torch.Tensor, time_offset: int, mask: torch.Tensor | None = None) -> torch.Tensor:
    """norm_x(W_x x) + b for all steps at once.

    Per-step batch norm of a (T, B, C) tensor is batch norm of its (B, T*C) view, one channel
    per (step, unit): one native kernel each way instead of a dozen passes over (T, B, C).
    Used in train, batch and population modes when steps t0..t0+T-1 all have their own
    statistics row and there is no (T, B) `mask`; otherwise (accumulate mode, shared
    statistics, steps beyond T_max, masked statistics) the reference norm computes it.
    """
    z = nn.functional.linear(x, layer.weight_ih)
    norm = layer.norm_x
    steps, batch, size = z.shape
    if (mask is None and isinstance(norm, StepBatchNorm) and norm_supported(norm, batch)
            and time_offset + steps <= norm.t_max):
        mode = norm.mode()
        rows = slice(time_offset, time_offset + steps)
        keep = mode != BATCH
        running_mean = norm.running_mean[rows].view(-1) if keep else None
        running_var = norm.running_var[rows].view(-1) if keep else None
        flat = z.transpose(0, 1).reshape(batch, steps * size)
        weight = norm.weight.repeat(steps)
        bias = norm.bias.repeat(steps) if norm.bias is not None else None
        out = nn.functional.batch_norm(flat, running_mean, running_var, weight, bias, mode != POPULATION,
                                       norm.momentum, norm.eps)
        xg = out.view(batch, steps, size).transpose(0, 1)
    else:
        xg = norm.sequence(z, mask, time_offset)
    return xg + layer.bias

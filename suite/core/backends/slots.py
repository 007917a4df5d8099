"""Norm slots as the step kernels see them, shared by the native (CPU) and Triton (GPU) backends.

A kernel backend normalizes norm_h and norm_c (and, on the native kernels, norm_x) inside its
step kernels (Cooijmans et al. 2016, Eq. 6-8). Each norm becomes a `Slot`: its kind in the
current statistics mode, its affine parameters, and per-step statistics buffers. Batch
statistics computed by a kernel go back to `StepBatchNorm.record` after the loop
(`record_statistics`), so running averages, re-estimation sums and steps beyond T_max follow
the reference's rules exactly, whichever backend computed them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from suite.core.cells.norms import IDENTITY, LAYER as LAYER_NORM, POPULATION, STEP_BATCH

# Slot kinds: no norm, batch norm with this batch's statistics (train, batch and accumulate
# modes), batch norm with stored population statistics, layer norm.
NONE, BN_BATCH, BN_POPULATION, LAYER = 0, 1, 2, 3


@dataclass
class Slot:
    """One norm slot: kind, affine parameters (detached), eps and per-step statistics.

    Statistics: LAYER, mean and invstd (steps, B); BN_BATCH, mean, invstd and biased var
    (steps, C), written by the kernels; BN_POPULATION, mean and invstd (steps, C), read.
    """

    kind: int
    gamma: torch.Tensor | None = None
    beta: torch.Tensor | None = None
    eps: float = 0.0
    mean: torch.Tensor | None = None
    invstd: torch.Tensor | None = None
    var: torch.Tensor | None = None
    grads: dict[str, torch.Tensor] = field(default_factory=dict)


def slot_kind(norm: nn.Module) -> int | None:
    """The kernels' kind for a norm in its current statistics mode; None where they have none."""
    kind = norm.kind()
    if kind == IDENTITY:
        return NONE
    if kind == LAYER_NORM:
        return LAYER
    if kind == STEP_BATCH:
        return BN_POPULATION if norm.mode() == POPULATION else BN_BATCH
    return None


def make_slot(norm: nn.Module, kind: int, steps: int, batch: int, offset: int, like: torch.Tensor) -> Slot:
    """The slot of `norm` for `steps` steps from time `offset`, buffers on `like`'s device and dtype."""
    if kind == NONE:
        return Slot(NONE)
    width = norm.weight.shape[0]
    slot = Slot(kind, norm.weight.detach().contiguous(),
                None if norm.bias is None else norm.bias.detach().contiguous(), float(norm.eps))
    if kind == LAYER:
        slot.mean, slot.invstd = like.new_empty(steps, batch), like.new_empty(steps, batch)
    elif kind == BN_BATCH:
        slot.mean, slot.invstd, slot.var = (like.new_empty(steps, width) for _ in range(3))
    else:
        mean, var = norm.population(offset, steps)
        slot.mean = mean.to(like.dtype).contiguous()
        slot.invstd = torch.rsqrt(var.to(like.dtype) + norm.eps)
    return slot


def affine_parameters(slots: Sequence[Slot],
                      norms: Sequence[nn.Module]) -> tuple[list[torch.Tensor], list[tuple[int, str]]]:
    """The norms' gamma and beta tensors that a kernel backend's backward gives gradients to, in
    order, and each one's owner (slot index, "gamma" or "beta"); none for a NONE slot or a missing beta."""
    params, owners = [], []
    for index, (slot, norm) in enumerate(zip(slots, norms)):
        if slot.kind == NONE:
            continue
        for name, tensor in (("gamma", norm.weight), ("beta", norm.bias)):
            if tensor is not None:
                params.append(tensor)
                owners.append((index, name))
    return params, owners


def record_statistics(slots: Sequence[Slot], norms: Sequence[nn.Module], count: int | torch.Tensor,
                      offset: int) -> None:
    """Hand the batch statistics the kernels computed to their norms (running averages or sums)."""
    for slot, norm in zip(slots, norms):
        if slot.kind == BN_BATCH:
            norm.record(slot.mean, slot.var, count, offset)

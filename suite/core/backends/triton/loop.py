"""The normalized LSTM recurrence on the Triton step kernels (`kernels.py`), for CUDA.

`run_layer` has the interface of `suite.core.backends.native.loop.run_layer`: one `LSTMLayer`
(`lstm`, `bn_vertical`, `bn_lstm`, `ln_lstm`; Cooijmans et al. 2016, Eq. 6-8) over x (T, B, F).

* Before the loop: the input term norm_x(W_x x) + b for all steps
  (`suite.core.backends.pytorch.input_term`: torch's batch norm, or the reference's own norm
  for masked statistics and the accumulate mode; autograd differentiates it).
* Per step forward: h_{t-1} W_h^T (cuBLAS) and ONE Triton launch doing norm_h, the gates, c_t,
  norm_c and h_t, saving the batch or layer statistics.
* Per step backward, in reverse: dh_t = d out_t + dz_{t+1} W_h (cuBLAS) and ONE Triton launch
  doing the cell's, both norms' and the gates' gradients.
* After the loop: dW_h as one matrix product over all steps, and the norms' gamma/beta
  gradients as reductions over (T, B) of the saved d-outputs times the recomputed x-hat.

Batch statistics go to `StepBatchNorm.record` through `slots.record_statistics`, exactly as on
the native kernels, so train, batch, population and accumulate (re-estimation) modes and
steps beyond T_max follow the reference's rules.

Fail-safe: before a device's first layer, `works_on` runs a tiny self-check (each norm kind,
forward and backward, against the reference loop). Where the kernels fail to compile, launch
or agree there, or with RECNORM_TRITON=0, `supports` says no and `suite.core.backends.choose`
takes the next backend (the PyTorch loop on CUDA), with one warning; `status()` goes into every
run's environment (`env_json.triton_kernels`).

Not handled here (the caller then uses another path; all rare): tiles over `MAX_TILE`
values, which happens for batch statistics of over 8192 examples, layer norm over 8192 units,
or batch statistics and layer norm in one layer (no built-in variant mixes them) when the
padded B x H exceeds 8192; dtypes other than float32/float64; CUDA autocast; tensors beyond
2^31 elements.
"""

from __future__ import annotations

import importlib.util
import warnings
from dataclasses import dataclass
from functools import cache

import torch
from torch import nn

from suite.core.backends import reference
from suite.core.perf import switched_off
from suite.core.backends.pytorch import input_term
from suite.core.backends.slots import (BN_BATCH, LAYER, NONE, Slot, affine_parameters, make_slot, record_statistics,
                                       slot_kind)
from suite.core.cell import LSTMLayer, LSTMOptions
from suite.core.cells.norms import LayerNorm, StepBatchNorm

TAKES_MASK = True  # run_layer takes a (T, B) padding mask
STATUS_FIELD = "triton_kernels"  # where a run's environment records `status()`
ENV_SWITCH = "RECNORM_TRITON"  # 0/false/no/off: never use the kernels
# Device types the backend runs on. Tests add "cpu" while running the kernels under Triton's
# interpreter; nothing else should.
DEVICES = ("cuda",)
# Most values in one program's (rows, units) tile; registers, not correctness, set the bound.
MAX_TILE = 1 << 13
# Target tile (rows x units) beside a dimension forced whole, and when neither is: smaller tiles
# give more programs per step (smnist's batch norm: 13 programs of 128 x 8). Not tuned on a GPU yet.
TILE = 1 << 10


# The self-check's tolerance: largest difference from the float32 reference loop relative to
# the largest value, per output and gradient. Sound kernels differ by ~1e-6 (rounding, batch
# statistics of 4 examples); broken ones by O(1).
CHECK_TOLERANCE = 1e-3
# Device -> None (the kernels passed the self-check there) or why they did not; one check per
# device and process.
_checks: dict[torch.device, str | None] = {}


@cache
def available() -> bool:
    """True when triton can be imported (it ships with CUDA builds of torch)."""
    return importlib.util.find_spec("triton") is not None


def enabled() -> bool:
    """False when RECNORM_TRITON is 0/false/no/off."""
    return not switched_off(ENV_SWITCH)


def _kernels():
    # Imported on first use: the kernels are decorated (compiled or interpreted) at import.
    from suite.core.backends.triton import kernels

    return kernels


def _pow2(n: int) -> int:
    return 1 << max(0, (n - 1).bit_length())


@dataclass(frozen=True)
class Tiling:
    """Block sizes and grid of both step kernels for one layer's norm kinds and shape."""

    block_b: int
    block_h: int
    grid: tuple[int, int]
    num_warps: int


def tiling(kinds: tuple[int, int], batch: int, hidden: int) -> Tiling | None:
    """Tiles for (norm_h kind, norm_c kind): whole batch for batch statistics, whole rows for
    layer norm; None when that needs a tile over MAX_TILE values."""
    whole_b, whole_h = BN_BATCH in kinds, LAYER in kinds
    if whole_b and whole_h:
        block_b, block_h = _pow2(batch), _pow2(hidden)
    elif whole_b:
        block_b = _pow2(batch)
        block_h = max(1, min(_pow2(hidden), TILE // block_b))
    elif whole_h:
        block_h = _pow2(hidden)
        block_b = max(1, min(_pow2(batch), TILE // block_h))
    else:
        block_h = min(_pow2(hidden), 64)
        block_b = max(1, min(_pow2(batch), TILE // block_h))
    size = block_b * block_h
    if size > MAX_TILE:
        return None
    grid = (-(-hidden // block_h), -(-batch // block_b))
    return Tiling(block_b, block_h, grid, 4 if size <= 1024 else 8)


def supports(layer: nn.Module, x: torch.Tensor) -> bool:
    """True when `run_layer` computes this layer on input x (and the kernels passed their
    self-check on x's device: see `works_on`)."""
    if not isinstance(layer, LSTMLayer) or x.device.type not in DEVICES or not available() or not enabled():
        return False
    if x.device.type == "cuda" and torch.is_autocast_enabled("cuda"):
        return False
    if x.dtype not in (torch.float32, torch.float64) or any(p.dtype != x.dtype for p in layer.parameters()):
        return False
    kinds = (slot_kind(layer.norm_h), slot_kind(layer.norm_c))
    steps, batch = x.shape[0], x.shape[1]
    hidden = layer.hidden_size
    if None in kinds or (steps + 1) * batch * 4 * hidden >= 2 ** 31:  # kernels index with int32
        return False
    return tiling(kinds, batch, hidden) is not None and works_on(x.device)


def works_on(device: torch.device) -> bool:
    """True when the kernels passed `self_check` on this device; checked once per device and
    process. A failure warns once, and the device's layers then take the next backend."""
    if device not in _checks:
        _checks[device] = self_check(device)
        if _checks[device] is not None:
            warnings.warn(f"Triton kernels unusable on {device} ({_checks[device]}); impl='fast' runs the PyTorch "
                          f"loop instead ({ENV_SWITCH}=0 skips them)", stacklevel=4)
    return _checks[device] is None


def status() -> str:
    """For the record of a run: "available" (this process's CUDA layers run on the kernels) or why not."""
    if not enabled():
        return f"not used: switched off by {ENV_SWITCH}=0"
    if not available():
        return "not used: triton is not installed"
    failed = [reason for reason in _checks.values() if reason is not None]
    if failed:
        return failed[0]
    if not torch.cuda.is_available():
        return "not used: no CUDA"
    device = torch.device("cuda", torch.cuda.current_device())
    return "available" if works_on(device) else str(_checks[device])


def self_check(device: torch.device) -> str | None:
    """Why the kernels cannot be used on `device`, or None when they can.

    A tiny float32 layer (T=3, B=4, H=8) per norm kind the kernels take in training
    (identity, batch statistics, layer norm with padding) runs forward and backward on
    `run_layer` and on the reference loop; every output and gradient must agree within
    CHECK_TOLERANCE. Any exception (a compile or launch error) is a failure too. The global
    random state is left as it was, so `impl="fast"` still draws what `"reference"` does."""
    try:
        with (torch.random.fork_rng(devices=[]), torch.inference_mode(False), torch.enable_grad(),
              torch.autocast(device.type, enabled=False)):
            for kind, masked in ((NONE, False), (BN_BATCH, False), (LAYER, True)):
                error = _check_error(kind, masked, device)
                if not error <= CHECK_TOLERANCE:  # NaN fails too
                    return f"self-check: {_KIND_NAMES[kind]} layer off the reference loop by {error:.2g} (relative)"
    except Exception as error:  # noqa: BLE001 -- anything the kernels raise means: do not use them
        first_line = (str(error).strip().splitlines() or [""])[0]
        return f"self-check: {type(error).__name__}: {first_line}"[:300]
    return None


_KIND_NAMES = {NONE: "identity", BN_BATCH: "batch-norm", LAYER: "layer-norm"}


def _check_error(kind: int, masked: bool, device: torch.device) -> float:
    """Largest relative difference between the kernels and the reference loop over the outputs,
    final state and the gradients of input, initial state and parameters, for one tiny layer."""
    steps, batch, features, hidden = 3, 4, 2, 8
    gen = torch.Generator().manual_seed(0)

    def randn(*shape):
        return torch.randn(*shape, generator=gen).to(device)

    norms = {NONE: lambda size: None,
             BN_BATCH: lambda size: StepBatchNorm(size, steps, 0.1, 1e-5, 0.1, bias=True),
             LAYER: lambda size: LayerNorm(size, 1.0, 1e-5, bias=True)}[kind]
    layer = LSTMLayer(features, hidden, LSTMOptions(), norm_h=norms(4 * hidden), norm_c=norms(hidden)).to(device)
    with torch.no_grad():
        for p in layer.parameters():
            p.add_(0.5 * randn(*p.shape))
    twin = LSTMLayer(features, hidden, LSTMOptions(), norm_h=norms(4 * hidden), norm_c=norms(hidden)).to(device)
    twin.load_state_dict(layer.state_dict())
    x, h0, c0 = randn(steps, batch, features), randn(batch, hidden), randn(batch, hidden)
    mask = (torch.arange(steps).unsqueeze(1) < torch.tensor([steps, 2, steps, 1])).to(device) if masked else None
    weights = [randn(steps, batch, hidden), randn(batch, hidden), randn(batch, hidden)]

    def outcome(model, run):
        inputs = [v.clone().requires_grad_() for v in (x, h0, c0)]
        out, (h, c) = run(model, *inputs, 0, mask)
        loss = sum((w * v).sum() for w, v in zip(weights, (out, h, c)))
        params = [p for p in model.parameters() if p is not model.init_state]
        return [out.detach(), h.detach(), c.detach(), *torch.autograd.grad(loss, inputs + params)]

    got, want = outcome(layer, run_layer), outcome(twin, reference.run_layer)
    return max(float((a - b).abs().max() / b.abs().max().clamp_min(1e-6)) for a, b in zip(got, want))


def run_layer(layer: LSTMLayer, x: torch.Tensor, h0: torch.Tensor, c0: torch.Tensor, time_offset: int,
              mask: torch.Tensor | None = None):
    """One layer over x (T, B, F); returns outputs (T, B, H) and (h_T, c_T).

    With a (T, B) `mask`, padded steps hold the state, output zeros and stay out of every
    statistic, as in `LSTMLayer.forward`.
    """
    steps, batch, _ = x.shape
    xg = input_term(layer, x, time_offset, mask).contiguous()
    real = None if mask is None else mask.to(x.dtype).contiguous()
    count = batch if real is None else real.sum(1)
    norms = (layer.norm_h, layer.norm_c)
    slots = [make_slot(n, slot_kind(n), steps, batch, time_offset, xg) for n in norms]
    params, owners = affine_parameters(slots, norms)
    padding = None if real is None else (real, count)
    out, h, c = TritonLoop.apply(torch.is_grad_enabled(), slots, owners, padding, xg, layer.weight_hh, h0, c0,
                                 *params)
    record_statistics(slots, norms, count, time_offset)
    return (out if real is None else out * real.unsqueeze(-1)), (h, c)


def _norm_args(slot: Slot, dummy: torch.Tensor) -> list[torch.Tensor]:
    """gamma, beta, mean, var, invstd pointers of a slot (`dummy` where absent: never read)."""
    return [dummy if v is None else v for v in (slot.gamma, slot.beta, slot.mean, slot.var, slot.invstd)]


class TritonLoop(torch.autograd.Function):
    """The recurrence over the input term xg (T, B, 4H), forward and backward.

    `grad_enabled` is torch's grad mode at the call (inside `forward` it is always off).
    `padding` is None or (mask (T, B), count (T,)) in the input's dtype; outputs at padded
    steps are the held state (the caller zeroes them). Saved for backward: W_h h_{t-1} (only
    with a norm_h), the gate activations, c and h per step, tanh(norm_c(c)) and the statistics.
    """

    @staticmethod
    def forward(ctx, grad_enabled, slots, owners, padding, xg, w, h0, c0, *params):
        kernels = _kernels()
        steps, batch, four_h = xg.shape
        hidden = four_h // 4
        # Without a backward to come (no_grad evaluation), per-step buffers are reused: two cells, one step.
        keep = grad_enabled and any(ctx.needs_input_grad)
        kept = steps if keep else 1
        kinds = (slots[0].kind, slots[1].kind)
        tile = tiling(kinds, batch, hidden)
        new = xg.new_empty
        zh = new(kept if kinds[0] != NONE else 1, batch, four_h)
        acts, tcn = new(kept, batch, four_h), new(kept, batch, hidden)
        hs, cs = new(steps + 1, batch, hidden), new(kept + 1 if keep else 2, batch, hidden)
        hs[0], cs[0] = h0, c0
        mask, count = padding if padding is not None else (xg, xg)
        norm_args = _norm_args(slots[0], xg) + _norm_args(slots[1], xg)
        eps = (slots[0].eps, slots[1].eps)
        meta = dict(H_KIND=kinds[0], C_KIND=kinds[1], H_BETA=slots[0].beta is not None,
                    C_BETA=slots[1].beta is not None, HAS_MASK=padding is not None, BLOCK_B=tile.block_b,
                    BLOCK_H=tile.block_h, num_warps=tile.num_warps)
        launch = kernels.step_forward[tile.grid]
        w_t = w.detach().t()
        h_views, zh_views = hs.unbind(0), zh.unbind(0)
        for t in range(steps):
            k = t if keep else 0
            z = k if kinds[0] != NONE else 0
            torch.mm(h_views[t], w_t, out=zh_views[z])
            c_in, c_out = (t, t + 1) if keep else (t % 2, (t + 1) % 2)
            launch(xg, zh, acts, cs, tcn, hs, mask, count, *norm_args, t, z, k, c_in, c_out, batch, hidden, *eps,
                   **meta)
        if keep:
            ctx.slots, ctx.owners, ctx.padding, ctx.tile = slots, owners, padding, tile
            ctx.save_for_backward(w, zh, acts, hs, cs, tcn)  # not xg: nothing in backward reads it
        return hs[1:], hs[-1].clone(), cs[steps if keep else steps % 2].clone()

    @staticmethod
    def backward(ctx, d_out, d_hn, d_cn):
        kernels = _kernels()
        w, zh, acts, hs, cs, tcn = ctx.saved_tensors
        slots, owners, padding, tile = ctx.slots, ctx.owners, ctx.padding, ctx.tile
        steps, batch, four_h = acts.shape
        hidden = four_h // 4
        kinds = (slots[0].kind, slots[1].kind)
        d_out = d_out.contiguous()
        d_gates = torch.empty_like(acts)
        d_zh = d_gates if kinds[0] == NONE else torch.empty_like(acts)
        d_norm_c = torch.empty_like(tcn) if kinds[1] != NONE else tcn  # never written without a norm_c
        dh = torch.empty_like(hs[0])
        dc = d_cn.contiguous().clone()
        carry = torch.zeros_like(dh) if padding is not None else dh
        mask, count = padding if padding is not None else (w, w)  # w: a placeholder pointer, never read
        stats = [v if v is not None else w for s in slots for v in (s.gamma, s.mean, s.invstd)]
        meta = dict(H_KIND=kinds[0], C_KIND=kinds[1], HAS_MASK=padding is not None, BLOCK_B=tile.block_b,
                    BLOCK_H=tile.block_h, num_warps=tile.num_warps)
        launch = kernels.step_backward[tile.grid]
        out_views, d_zh_views = d_out.unbind(0), d_zh.unbind(0)
        for t in range(steps - 1, -1, -1):
            if t == steps - 1:
                torch.add(out_views[t], d_hn, out=dh)
            else:
                torch.addmm(out_views[t], d_zh_views[t + 1], w, out=dh)
            launch(dh, carry, dc, acts, cs, tcn, zh, mask, count, d_gates, d_zh, d_norm_c, *stats, t, batch,
                   hidden, **meta)
        d_w = d_zh.view(steps * batch, four_h).t().mm(hs[:-1].reshape(steps * batch, hidden))
        d_h0 = d_zh[0].mm(w)
        if padding is not None:
            d_h0 += carry
        grads = _norm_grads(slots, (d_gates, d_norm_c), (zh, cs[1:]))
        param_grads = [grads[index][name] for index, name in owners]
        return (None, None, None, None, d_gates, d_w, d_h0, dc, *param_grads)


def _norm_grads(slots: list[Slot], d_outputs, inputs) -> list[dict[str, torch.Tensor]]:
    """gamma and beta gradients of each slot: sums over (T, B) of d output (x-hat for gamma).

    d output is zero at padded positions, so they add nothing."""
    grads: list[dict[str, torch.Tensor]] = []
    for slot, d_y, z in zip(slots, d_outputs, inputs):
        if slot.kind == NONE:
            grads.append({})
            continue
        if slot.kind == LAYER:  # statistics per (step, example)
            xhat = (z - slot.mean.unsqueeze(-1)) * slot.invstd.unsqueeze(-1)
        else:  # per (step, unit)
            xhat = (z - slot.mean.unsqueeze(1)) * slot.invstd.unsqueeze(1)
        grads.append({"gamma": (d_y * xhat).sum((0, 1)), "beta": d_y.sum((0, 1))})
    return grads

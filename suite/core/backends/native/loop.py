"""The normalized LSTM recurrence on the native kernels (`norm_lstm.cpp`), CPU only.

`run_layer` runs one `LSTMLayer` whose norms are identities, per-step batch norms or layer
norms (`lstm`, `bn_vertical`, `bn_lstm`, `ln_lstm`; Cooijmans et al. 2016, Eq. 6-8). One
kernel call runs the forward time loop and one the backward: the recurrent product h_{t-1} W_h^T
of every step (backward: dh_t's product with W_h and W_h's gradient), the three norms, the gates
and the cell (and W_x x_t for narrow inputs), the threads splitting the batch. PyTorch forms the
input term W_x x for all steps at once when the input is wide. Batch statistics computed in the
kernel go to `StepBatchNorm.record`, so running averages and re-estimation follow the
reference's rules exactly.
"""

from __future__ import annotations

import ctypes
import warnings

import torch
from torch import nn
from torch.nn import functional as F

from suite.core.backends.native import build
from suite.core.backends.native.build import load
from suite.core.backends.slots import (  # noqa: F401 (BN_BATCH: tests name the kinds through this module)
    BN_BATCH, LAYER, NONE, Slot, affine_parameters, make_slot, record_statistics, slot_kind)
from suite.core.cell import LSTMLayer
from suite.core.cells.norms import Identity

# Up to this many input features the kernel computes W_x x_t itself, step by step: cheaper than
# a (T, B, 4H) array of input terms written, read and differentiated through memory.
SMALL_INPUT = 8
# The kernels' threads split the batch's rows between them, at most this many (the kernel's cap).
MAX_THREADS = 64
# Loop<T> of norm_lstm.cpp, in order: sizes, then buffer pointers, then the three norms.
SIZES = ("steps", "batch", "hidden", "threads", "kept", "features")
BUFFERS = ("w", "bias", "mask", "count", "dh_carry", "zx", "x", "wx_t", "z_step", "d_step", "dx", "d_wx",
           "zh", "acts", "c", "tcn", "h", "d_out", "d_hn", "dh", "dc", "d_zx", "d_zh", "d_bias", "d_w", "scratch",
           "partial")


class _NormStruct(ctypes.Structure):
    _fields_ = [("kind", ctypes.c_int64), ("gamma", ctypes.c_void_p), ("beta", ctypes.c_void_p),
                ("eps", ctypes.c_double), ("mean", ctypes.c_void_p), ("invstd", ctypes.c_void_p),
                ("var", ctypes.c_void_p), ("d_gamma", ctypes.c_void_p), ("d_beta", ctypes.c_void_p)]


class _LoopStruct(ctypes.Structure):
    _fields_ = ([(n, ctypes.c_int64) for n in SIZES]
                + [(n, ctypes.c_void_p) for n in BUFFERS]
                + [("nx", _NormStruct), ("nh", _NormStruct), ("nc", _NormStruct)])


def _ptr(tensor: torch.Tensor | None) -> int | None:
    return None if tensor is None else tensor.data_ptr()


def _norm_struct(slot: Slot) -> _NormStruct:
    """The C view of a slot."""
    return _NormStruct(slot.kind, _ptr(slot.gamma), _ptr(slot.beta), slot.eps, _ptr(slot.mean),
                       _ptr(slot.invstd), _ptr(slot.var), _ptr(slot.grads.get("gamma")),
                       _ptr(slot.grads.get("beta")))


TAKES_MASK = True  # run_layer takes a (T, B) padding mask
STATUS_FIELD = "native_kernels"  # where a run's environment records `status()`


def status() -> str:
    """"available" (the CPU fast paths of this process run on the kernels) or why not."""
    return build.status()


def supports(layer: nn.Module, x: torch.Tensor) -> bool:
    """True when `run_layer` computes this layer on input x and the kernels are built (else a warning
    says why not when they should have been)."""
    if not computes(layer, x):
        return False
    if load() is not None:
        return True
    if build.enabled():
        warnings.warn(f"impl='fast' runs the slower PyTorch loop: {build.reason()}", stacklevel=3)
    return False


def computes(layer: nn.Module, x: torch.Tensor) -> bool:
    """True when the kernels compute this layer on input x (norm_x may also be one the kernel lacks)."""
    if not isinstance(layer, LSTMLayer) or x.is_cuda or torch.is_autocast_enabled("cpu"):
        return False
    # The kernels read float32 or float64 through raw pointers: input and every parameter alike.
    if x.dtype not in (torch.float32, torch.float64) or any(p.dtype != x.dtype for p in layer.parameters()):
        return False
    x_kind, h_kind, c_kind = (slot_kind(n) for n in (layer.norm_x, layer.norm_h, layer.norm_c))
    if h_kind is None or c_kind is None:
        return False
    # Batch norm is per unit over the batch, layer norm per example over units: the gate pass
    # runs one way or the other, so norm_x and norm_h must not mix them (a norm_x the kernel
    # lacks runs before the loop and is no norm to it).
    gate_kinds = {k for k in (x_kind, h_kind) if k not in (None, NONE)}
    return not (LAYER in gate_kinds and len(gate_kinds) > 1)


def run_layer(layer: LSTMLayer, x: torch.Tensor, h0: torch.Tensor, c0: torch.Tensor, time_offset: int,
              mask: torch.Tensor | None = None):
    """One layer over x (T, B, F) on the native kernels; returns outputs (T, B, H) and (h_T, c_T).

    With a (T, B) `mask`, padded steps hold the state, output zeros and stay out of every
    statistic, as in `LSTMLayer.forward`.
    """
    steps, batch, features = x.shape
    real = None if mask is None else mask.to(x.dtype).contiguous()
    count = batch if real is None else real.sum(1)
    x_kind = slot_kind(layer.norm_x)
    if x_kind is not None and features <= SMALL_INPUT:
        source, w_x = x.contiguous(), layer.weight_ih
    else:
        source, w_x = F.linear(x, layer.weight_ih), None
        if x_kind is None:  # e.g. statistics shared over time: the reference norm, before the loop
            source, x_kind = layer.norm_x.sequence(source, mask, time_offset), NONE
    norms = (layer.norm_x if x_kind != NONE else Identity(), layer.norm_h, layer.norm_c)
    kinds = (x_kind, slot_kind(layer.norm_h), slot_kind(layer.norm_c))
    slots = [make_slot(n, k, steps, batch, time_offset, source) for n, k in zip(norms, kinds)]
    params, owners = affine_parameters(slots, norms)
    padding = None if real is None else (real, count)
    out, h, c = NativeLoop.apply(torch.is_grad_enabled(), slots, owners, padding, source.contiguous(), w_x,
                                 layer.weight_hh, layer.bias, h0, c0, *params)
    record_statistics(slots, norms, count, time_offset)
    return (out if real is None else out * real.unsqueeze(-1)), (h, c)


def kernel_threads(batch: int) -> int:
    """Threads for the kernels: torch's, at most one per example."""
    return max(1, min(torch.get_num_threads(), batch, MAX_THREADS))


def _struct(sizes: dict[str, int], buffers: dict[str, torch.Tensor | None], slots: list[Slot]) -> _LoopStruct:
    return _LoopStruct(*(sizes[n] for n in SIZES), *(_ptr(buffers.get(n)) for n in BUFFERS),
                       *(_norm_struct(s) for s in slots))


class NativeLoop(torch.autograd.Function):
    """The recurrence over the input term, forward and backward, one kernel call each.

    `source` is x (T, B, F) with `w_x` W_x, the kernel forming W_x x_t per step; or, with w_x
    None, the input term itself (T, B, 4H). `padding` is None or (mask (T, B), count (T,)) in
    the input's dtype; outputs at padded steps are the held state (the caller zeroes them).
    """

    @staticmethod
    def forward(ctx, grad_mode, slots, owners, padding, source, w_x, w, bias, h0, c0, *params):
        library = load()
        steps, batch = source.shape[:2]
        four_h, hidden = w.shape[0], w.shape[1]
        # needs_input_grad holds under no_grad too (parameters still require grad): the caller's
        # grad mode (`grad_mode`; it is off inside forward) says whether a backward can follow.
        keep = grad_mode and any(ctx.needs_input_grad)
        kept = steps if keep else 1
        # norm_h's backward reads the recurrent term of every step; nothing else does.
        kept_zh = steps if keep and slots[1].kind != NONE else 1
        threads = kernel_threads(batch)
        new = source.new_empty
        sizes = dict(steps=steps, batch=batch, hidden=hidden, threads=threads, kept=int(keep),
                     features=source.shape[2] if w_x is not None else 0)
        buffers = dict(w=w.detach().contiguous(), bias=bias.detach().contiguous(),
                       zh=new(kept_zh, batch, four_h), acts=new(kept, batch, four_h), c=new(kept + 1, batch, hidden),
                       tcn=new(kept, batch, hidden), h=new(steps + 1, batch, hidden),
                       scratch=new(threads, 8 * four_h), partial=new(threads, 2, 6 * four_h))
        if padding is not None:
            buffers["mask"], buffers["count"] = padding
        if w_x is None:
            buffers["zx"] = source
        else:
            buffers.update(x=source, wx_t=w_x.detach().t().contiguous(), z_step=new(batch, four_h),
                           d_step=new(batch, four_h))
        hs, cs = buffers["h"], buffers["c"]
        hs[0], cs[0] = h0, c0
        loop = _struct(sizes, buffers, slots)
        (library.recnorm_forward_f64 if source.dtype == torch.float64 else library.recnorm_forward_f32)(
            ctypes.byref(loop))
        if keep:
            ctx.slots, ctx.owners, ctx.sizes, ctx.buffers = slots, owners, sizes, buffers
            ctx.save_for_backward(w)
        return hs[1:], hs[-1].clone(), cs[-1 if keep else steps % 2].clone()

    @staticmethod
    def backward(ctx, d_out, d_hn, d_cn):
        (w,) = ctx.saved_tensors
        slots, owners, sizes, buffers = ctx.slots, ctx.owners, ctx.sizes, dict(ctx.buffers)
        steps, batch, hidden, threads, features = (sizes[n] for n in ("steps", "batch", "hidden", "threads",
                                                                      "features"))
        four_h = 4 * hidden
        new, zeros = w.new_empty, w.new_zeros
        d_zh = new(steps, batch, four_h)
        buffers.update(d_zh=d_zh, d_bias=zeros(threads, four_h), d_w=zeros(threads, four_h, hidden),
                       dh=new(batch, hidden), dc=d_cn.contiguous().clone(), d_out=d_out.contiguous(),
                       d_hn=d_hn.contiguous())
        if buffers.get("mask") is not None:
            buffers["dh_carry"] = zeros(batch, hidden)
        if features:
            buffers.update(dx=new(steps, batch, features), d_wx=zeros(threads, features, four_h))
        else:
            both_none = slots[0].kind == NONE and slots[1].kind == NONE
            buffers["d_zx"] = d_zh if both_none else new(steps, batch, four_h)
        for index, name in owners:
            slots[index].grads[name] = zeros(threads, getattr(slots[index], name).shape[0])
        library = load()
        loop = _struct(sizes, buffers, slots)
        (library.recnorm_backward_f64 if w.dtype == torch.float64 else library.recnorm_backward_f32)(ctypes.byref(loop))
        d_w = buffers["d_w"].sum(0)
        d_h0 = d_zh[0].mm(w)
        if buffers.get("dh_carry") is not None:
            d_h0 += buffers["dh_carry"]
        d_source = buffers["dx"] if features else buffers["d_zx"]
        d_w_x = buffers["d_wx"].sum(0).t() if features else None
        param_grads = [slots[index].grads.pop(name).sum(0) for index, name in owners]
        return (None, None, None, None, d_source, d_w_x, d_w, buffers["d_bias"].sum(0), d_h0, buffers["dc"],
                *param_grads)

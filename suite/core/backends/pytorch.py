"""The PyTorch loop backend: the normalized LSTM recurrence in one autograd Function, `NormLoop`.

The input term norm_x(W_x x) + b is computed for all steps before the loop (`input_term`: one
batch-norm kernel for per-step statistics, else the reference's own norm, so every statistics
mode behaves identically); then the recurrence runs in `NormLoop`, with a hand-derived
backward (Cooijmans et al. 2016, Eq. 6-8) and torch's batch-norm / layer-norm kernels per
step where norm_h and norm_c are not identities. Pure PyTorch, so it runs on any device: the
fallback where the native kernels do not apply (GPU, no compiler). It takes no padding mask,
and not the accumulate (re-estimation) statistics mode or batch statistics of one example:
`supports` says so, and `suite.core.backends.choose` then picks the next backend.

Checked against the reference loop in tests/unit/test_fast.py; speed in tests/bench.
"""

from __future__ import annotations

import torch
from torch import nn

from suite.core.cell import LSTMLayer
from suite.core.cells.norms import ACCUMULATE, BATCH, IDENTITY, LAYER, POPULATION, STEP_BATCH, TRAIN

TAKES_MASK = False  # sequences of unequal length (`lengths`) run elsewhere


def supports(layer: nn.Module, x: torch.Tensor) -> bool:
    """True when `NormLoop` computes this layer on x exactly in its norms' current statistics modes."""
    return supports_norm_loop(layer, x.shape[1])


def supports_norm_loop(layer: nn.Module, batch: int) -> bool:
    """True when `NormLoop` computes this layer (a batch of `batch` sequences) exactly in its current statistics mode."""
    return isinstance(layer, LSTMLayer) and _norm_supported(layer.norm_h, batch) and _norm_supported(layer.norm_c, batch)


def input_term(layer: LSTMLayer, x: torch.Tensor, time_offset: int, mask: torch.Tensor | None = None) -> torch.Tensor:
    """norm_x(W_x x) + b for all steps at once.

    Per-step batch norm of a (T, B, C) tensor is batch norm of its (B, T*C) view, one channel
    per (step, unit): one native kernel each way instead of a dozen passes over (T, B, C).
    Used in train, batch and population modes when steps t0..t0+T-1 all have their own
    statistics row and there is no (T, B) padding `mask`; otherwise (accumulate mode, shared
    statistics, steps beyond T_max, masked statistics) the reference norm computes it. Also
    the input term of the Triton backend (suite.core.backends.triton).
    """
    z = nn.functional.linear(x, layer.weight_ih)
    norm = layer.norm_x
    steps, batch, size = z.shape
    if (mask is None and norm.kind() == STEP_BATCH and _norm_supported(norm, batch)
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


class _StepNorm:
    """One in-loop norm (norm_h or norm_c) as forward/backward kernels over (B, C) steps.

    Batch norm uses torch's native kernels with statistics of step t (row min(t, T_max - 1));
    in TRAIN mode the kernel updates that row of the running averages in place, exactly the
    reference's rule (momentum, unbiased variance, rows beyond T_max updated step after step).
    Layer norm uses the native layer-norm kernels. Identity (lstm, bn_vertical) passes through.
    """

    def __init__(self, norm: nn.Module, time_offset: int):
        self.norm, self.offset = norm, time_offset
        self.kind = {STEP_BATCH: "bn", LAYER: "ln", IDENTITY: "id"}[norm.kind()]
        if self.kind == "bn":
            mode = norm.mode()
            self.train = mode in (TRAIN, BATCH)
            self.update = mode == TRAIN
            self.eps, self.momentum = norm.eps, norm.momentum
        elif self.kind == "ln":
            self.eps = norm.eps

    def _row(self, t: int) -> int:
        return min(self.offset + t, self.norm.t_max - 1)

    def forward(self, z: torch.Tensor, t: int, weight, bias):
        """Normalized z and what backward needs."""
        if self.kind == "id":
            return z, None
        if self.kind == "ln":
            out, mean, rstd = torch.native_layer_norm(z, [z.shape[1]], weight, bias, self.eps)
            return out, (mean, rstd)
        row = self._row(t)
        rm, rv = self.norm.running_mean[row], self.norm.running_var[row]
        use_rm = rm if (self.update or not self.train) else None
        use_rv = rv if (self.update or not self.train) else None
        out, mean, invstd = torch.native_batch_norm(z, weight, bias, use_rm, use_rv, self.train,
                                                    self.momentum, self.eps)
        return out, (mean, invstd, rm, rv)

    def backward(self, d_out: torch.Tensor, z: torch.Tensor, saved, weight, bias):
        """(dz, dweight, dbias) of one step."""
        if self.kind == "id":
            return d_out, None, None
        mask = [True, weight is not None, bias is not None]
        if self.kind == "ln":
            mean, rstd = saved
            return torch.ops.aten.native_layer_norm_backward(d_out, z, [z.shape[1]], mean, rstd, weight, bias, mask)
        mean, invstd, rm, rv = saved
        return torch.ops.aten.native_batch_norm_backward(d_out, z, weight, rm, rv, mean, invstd, self.train,
                                                         self.eps, mask)


def _norm_supported(norm: nn.Module, batch: int) -> bool:
    kind = norm.kind()
    if kind in (IDENTITY, LAYER):
        return True
    # torch's batch-norm kernel cannot take the statistics of a single example.
    return kind == STEP_BATCH and norm.mode() != ACCUMULATE and (batch > 1 or norm.mode() == POPULATION)


def _param(norm: nn.Module, name: str) -> torch.Tensor | None:
    return getattr(norm, name, None)  # an identity has neither weight nor bias


def run_layer(layer: LSTMLayer, x: torch.Tensor, h0: torch.Tensor, c0: torch.Tensor, time_offset: int):
    """One layer over x (T, B, F): norm_x(W_x x) + b for all steps (`input_term`), then `NormLoop`;
    returns outputs (T, B, H) and (h_T, c_T)."""
    xg = input_term(layer, x, time_offset)
    norm_h, norm_c = _StepNorm(layer.norm_h, time_offset), _StepNorm(layer.norm_c, time_offset)
    params = [_param(layer.norm_h, "weight"), _param(layer.norm_h, "bias"),
              _param(layer.norm_c, "weight"), _param(layer.norm_c, "bias")]
    present = [p for p in params if p is not None]
    out, h, c = NormLoop.apply(torch.is_grad_enabled(), norm_h, norm_c, [p is not None for p in params], xg,
                               layer.weight_hh, h0, c0, *present)
    return out, (h, c)


class NormLoop(torch.autograd.Function):
    """LSTM recurrence with norm_h on W_h h_{t-1} and norm_c on c_t (Cooijmans et al. 2016, Eq. 6-8).

    gates_t = xg_t + norm_h(h_{t-1} W_h^T); c_t = sigmoid(f) c_{t-1} + sigmoid(i) tanh(g);
    h_t = sigmoid(o) tanh(norm_c(c_t)); either norm may be the identity. Hand-derived backward
    with the native norm backward kernels. Every factor that does not depend on the incoming
    gradient is computed for all steps at once, and the W_h gradient is one matrix multiply.
    Saved: W_h h_{t-1}, the gate activations, c, h and tanh(norm_c(c)) per step.
    """

    @staticmethod
    def forward(ctx, grad_mode, norm_h, norm_c, has, xg, w, h0, c0, *present):
        it = iter(present)
        wh, bh, wc, bc = (next(it) if flag else None for flag in has)
        steps, batch, four_h = xg.shape
        hidden = four_h // 4
        # Without a backward, per-step buffers are reused. needs_input_grad holds under no_grad
        # too (parameters still require grad): the caller's grad mode (off inside forward) decides.
        keep = grad_mode and any(ctx.needs_input_grad)
        kept = steps if keep else 1
        z = xg.new_empty(kept, batch, four_h)  # W_h h_{t-1}, the input of norm_h
        acts = xg.new_empty(kept, batch, four_h)  # sigmoid(i, f, o) and tanh(g)
        hs = xg.new_empty(steps + 1, batch, hidden)
        cs = xg.new_empty(kept + 1, batch, hidden)
        tanh_cn = xg.new_empty(kept, batch, hidden)
        hs[0], cs[0] = h0, c0
        saved_h, saved_c = [], []
        w_t = w.t()
        for t in range(steps):
            k, c_prev, c_next = (t, cs[t], cs[t + 1]) if keep else (0, cs[t % 2], cs[(t + 1) % 2])
            torch.mm(hs[t], w_t, out=z[k])
            zn, s_h = norm_h.forward(z[k], t, wh, bh)
            a = acts[k]
            torch.add(xg[t], zn, out=a)
            i, f, g, o = a.chunk(4, 1)
            a[:, :2 * hidden].sigmoid_()
            g.tanh_()
            o.sigmoid_()
            torch.mul(f, c_prev, out=c_next).addcmul_(i, g)
            cn, s_c = norm_c.forward(c_next, t, wc, bc)
            torch.tanh(cn, out=tanh_cn[k])
            torch.mul(o, tanh_cn[k], out=hs[t + 1])
            if keep:
                saved_h.append(s_h)
                saved_c.append(s_c)
        if keep:
            ctx.norms, ctx.has, ctx.saved_stats = (norm_h, norm_c), has, (saved_h, saved_c)
            ctx.save_for_backward(z, acts, hs, cs, tanh_cn, w, *present)
        return hs[1:], hs[-1].clone(), c_next.clone()

    @staticmethod
    def backward(ctx, d_out, d_hn, d_cn):
        z, acts, hs, cs, tanh_cn, w, *present = ctx.saved_tensors
        it = iter(present)
        wh, bh, wc, bc = (next(it) if flag else None for flag in ctx.has)
        norm_h, norm_c = ctx.norms
        saved_h, saved_c = ctx.saved_stats
        steps, batch, four_h = acts.shape
        hidden = four_h // 4
        i, f, g, o = acts.chunk(4, 2)
        # Step-independent factors: d pre-activation = (partner * activation') times dc (i, f, g) or dh (o).
        deriv = acts * (1.0 - acts)
        deriv[..., 2 * hidden:3 * hidden] = 1.0 - g * g
        partner = torch.cat([g, cs[:-1], i, tanh_cn], dim=2).mul_(deriv)
        q = o * (1.0 - tanh_cn * tanh_cn)  # d c_n from d h
        d_gates = torch.empty_like(acts)
        d_z = torch.empty_like(acts)
        grads = {"wh": None, "bh": None, "wc": None, "bc": None}
        dh = d_hn.clone()
        dc = d_cn.clone()

        def add(key, value):
            if value is not None:
                grads[key] = value.clone() if grads[key] is None else grads[key].add_(value)

        for t in range(steps - 1, -1, -1):
            if t == steps - 1:
                dh.add_(d_out[t])
            else:
                dh = torch.addmm(d_out[t], d_z[t + 1], w)
                dc.mul_(f[t + 1])
            d_cn_t = dh * q[t]
            dc_norm, dwc, dbc = norm_c.backward(d_cn_t, cs[t + 1], saved_c[t], wc, bc)
            dc.add_(dc_norm)
            add("wc", dwc)
            add("bc", dbc)
            torch.mul(partner[t, :, :3 * hidden].view(batch, 3, hidden), dc.unsqueeze(1),
                      out=d_gates[t, :, :3 * hidden].view(batch, 3, hidden))
            torch.mul(partner[t, :, 3 * hidden:], dh, out=d_gates[t, :, 3 * hidden:])
            dz, dwh, dbh = norm_h.backward(d_gates[t], z[t], saved_h[t], wh, bh)
            d_z[t].copy_(dz)
            add("wh", dwh)
            add("bh", dbh)
        d_w = d_z.view(steps * batch, four_h).t().mm(hs[:-1].reshape(steps * batch, hidden))
        d_h0 = d_z[0].mm(w)
        d_c0 = dc * f[0]
        extra = [grads[k] for k, flag in zip(("wh", "bh", "wc", "bc"), ctx.has) if flag]
        return (None, None, None, None, d_gates, d_w, d_h0, d_c0, *extra)

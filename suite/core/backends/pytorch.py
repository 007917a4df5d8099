"""Fast paths of the own-loop variants, selected with the variant option `impl = "fast"`.

Both classes subclass `suite.core.recurrent.Recurrent` and keep its layers (`LSTMLayer`), so the
parameters, buffers and state_dict are exactly the reference's; only `forward` differs.

* `FusedRecurrent` (`wn_lstm`): reads every layer's weights once per batch --
  for weight norm that is where w = g v / ||v|| is computed (Salimans & Kingma 2016) -- and
  hands them to torch's fused LSTM kernel (`torch._VF.lstm`, what `torch.nn.LSTM` calls:
  oneDNN on CPU, cuDNN on GPU), multi-layer with dropout, bidirectional, `lengths` through packing.
* `LoopRecurrent` (`lstm`, `bn_vertical`, `bn_lstm`, `ln_lstm`): on CUDA with triton, each layer
  runs on the Triton step kernels (`suite.core.backends.triton`); on CPU, on the native step
  kernels (`suite.core.backends.native`) where they build. Otherwise (e.g. CPU without a compiler) the
  input term norm_x(W_x x) + b is computed for all steps by the reference's own norm (so
  every statistics mode behaves identically), then the recurrence runs in an autograd
  Function with a hand-derived backward (Cooijmans et al. 2016, Eq. 6-8), `NormLoop`, with
  torch's batch-norm / layer-norm kernels per step where norm_h and norm_c are not identities.
  Bidirectional stacks run their reverse layers on the flipped input.
  Explicit fallbacks to the reference loop, in `forward`, for the PyTorch loops only: `lengths`,
  the accumulate (re-estimation) statistics mode and batch statistics of a single example.

Every path is checked against the reference in tests/unit/test_fast.py; measured speed and
memory are in tests/bench (README, "Speed").
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence, pad_packed_sequence

from suite.core.backends.inputs import input_term, norm_supported
from suite.core.backends.native import build as native_build
from suite.core.backends.native import loop as native_loop
from suite.core.backends.triton import loop as triton_loop
from suite.core.cells.norms import BATCH, TRAIN, Identity, LayerNorm, StepBatchNorm
from suite.core.errors import ConfigError
from suite.core.recurrent import LSTMLayer, LSTMOptions, Recurrent, check_inputs, reversal_index, reverse_time

IMPLS = ("reference", "fast")


@dataclass(frozen=True)
class ImplOptions(LSTMOptions):
    """LSTM options plus which implementation runs: "reference" (the one time loop) or "fast"."""

    impl: str = "fast"  # or "reference": the straightforward loop of suite.core.recurrent, same parameters


def stack_class(impl: str, fast: type[Recurrent], variant: str) -> type[Recurrent]:
    """The Recurrent class for option `impl` of a variant: the reference or its fast path."""
    if impl not in IMPLS:
        raise ConfigError(f"{variant}: impl must be one of {', '.join(IMPLS)}, got {impl!r}")
    return fast if impl == "fast" else Recurrent


def _initial_states(stack: Recurrent, hx, batch: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(h0, c0), each (num_layers, B, H): given, or each layer's learned initial state."""
    if hx is not None:
        return hx[0], hx[1]
    states = [layer.initial_state(batch) for layer in stack.layers]
    return torch.stack([s[0] for s in states]), torch.stack([s[1] for s in states])


class FusedRecurrent(Recurrent):
    """A stack of un-normalized LSTMLayers run by the fused LSTM kernel."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        for layer in self.layers:
            if not isinstance(layer, LSTMLayer) or not all(
                    isinstance(n, Identity) for n in (layer.norm_x, layer.norm_h, layer.norm_c)):
                raise ConfigError("impl='fast' through the fused kernel needs layers without activation norms")

    def forward(self, input: torch.Tensor, hx=None, lengths: torch.Tensor | None = None, time_offset: int = 0):
        """Same contract as Recurrent.forward (time_offset has no effect without per-step statistics)."""
        x = input.transpose(0, 1) if self.batch_first else input
        if x.is_cuda and not self.training and torch.is_grad_enabled():
            # cuDNN has no backward in eval mode; the reference loop has (explicit fallback).
            return super().forward(input, hx, lengths, time_offset)
        mask = check_inputs(x, hx, lengths, self.input_size, self.hidden_size, len(self.layers))
        h0, c0 = _initial_states(self, hx, x.shape[1])
        weights = []  # torch.nn.LSTM's order, which is also self.layers': layer 0 forward, layer 0 reverse, ...
        for layer in self.layers:
            bias = layer.bias
            # Read once per batch: with weight norm this runs the reparametrization.
            weights += [layer.weight_ih, layer.weight_hh, bias, torch.zeros_like(bias)]
        with warnings.catch_warnings():
            # cuDNN warns that the weights are not one contiguous chunk: they are computed anew per batch.
            warnings.filterwarnings("ignore", message="RNN module weights are not part")
            out, h, c = self._run(x, mask, h0, c0, weights)
        return (out.transpose(0, 1) if self.batch_first else out), (h, c)

    def _run(self, x, mask, h0, c0, weights):
        dropout, train, bidir = float(self.dropout), self.training, self.num_directions == 2
        if mask is None:
            out, h, c = torch._VF.lstm(x, (h0, c0), weights, True, self.num_layers, dropout, train, bidir, False)
        else:
            packed = pack_padded_sequence(x, mask.sum(0).cpu(), enforce_sorted=False)
            order, back = packed.sorted_indices, packed.unsorted_indices
            data, h, c = torch._VF.lstm(packed.data, packed.batch_sizes, (h0.index_select(1, order),
                                        c0.index_select(1, order)), weights, True, self.num_layers,
                                        dropout, train, bidir)
            out, _ = pad_packed_sequence(PackedSequence(data, packed.batch_sizes, order, back),
                                         total_length=x.shape[0])
            h, c = h.index_select(1, back), c.index_select(1, back)
        return out, h, c


class LoopRecurrent(Recurrent):
    """A stack whose layers run on the native step kernels, or in `NormLoop`."""

    def forward(self, input: torch.Tensor, hx=None, lengths: torch.Tensor | None = None, time_offset: int = 0):
        """Same contract as Recurrent.forward; falls back to it where the loops do not apply (module doc)."""
        x = input.transpose(0, 1) if self.batch_first else input
        runners = [layer_runner(layer, x) for layer in self.layers]
        masked_ok = all(run in (native_loop.run_layer, triton_loop.run_layer) for run in runners)  # kernels only
        if None in runners or (lengths is not None and not masked_ok):
            return super().forward(input, hx, lengths, time_offset)  # explicit fallback: the reference loop
        directions = self.num_directions
        mask = check_inputs(x, hx, lengths, self.input_size, self.hidden_size, self.num_layers * directions)
        reverse = reversal_index(mask, x.shape[0], x.shape[1], x.device) if mask is not None else None
        padding = {} if mask is None else {"mask": mask}
        h0s, c0s = _initial_states(self, hx, x.shape[1])
        h_n, c_n = [], []
        for level in range(self.num_layers):
            if level > 0 and self.dropout > 0:
                x = nn.functional.dropout(x, self.dropout, self.training)
            outputs = []
            for direction in range(directions):  # torch.nn.LSTM's order: forward, then reverse
                index = level * directions + direction
                source = x if direction == 0 else _reversed(x, reverse)
                out, (h, c) = runners[index](self.layers[index], source, h0s[index], c0s[index], time_offset,
                                             **padding)
                outputs.append(out if direction == 0 else _reversed(out, reverse))
                h_n.append(h)
                c_n.append(c)
            x = torch.cat(outputs, -1) if directions > 1 else outputs[0]
        output = x.transpose(0, 1) if self.batch_first else x
        return output, (torch.stack(h_n), torch.stack(c_n))


def _reversed(x: torch.Tensor, index: torch.Tensor | None) -> torch.Tensor:
    """Each sequence reversed in time: a flip without padding, else the reference's reversal."""
    return x.flip(0) if index is None else reverse_time(x, index)


def layer_runner(layer: nn.Module, x: torch.Tensor) -> Callable | None:
    """How a layer runs on input x: the Triton kernels (CUDA, with triton), the native kernels
    (CPU, where they build), else `NormLoop`; None where none computes it exactly (the
    reference loop then does)."""
    if triton_loop.supports(layer, x):
        return triton_loop.run_layer
    if native_loop.supports(layer, x):
        if native_build.load() is not None:
            return native_loop.run_layer
        if native_build.enabled():
            warnings.warn(f"impl='fast' runs the slower PyTorch loop: {native_build.reason()}", stacklevel=2)
    if not supports_norm_loop(layer, x.shape[1]):
        return None
    return norm_loop_layer


def supports_norm_loop(layer: nn.Module, batch: int) -> bool:
    """True when `NormLoop` computes this layer exactly in its current statistics mode."""
    return isinstance(layer, LSTMLayer) and norm_supported(layer.norm_h, batch) and norm_supported(layer.norm_c, batch)


class _StepNorm:
    """One in-loop norm (norm_h or norm_c) as forward/backward kernels over (B, C) steps.

    Batch norm uses torch's native kernels with statistics of step t (row min(t, T_max - 1));
    in TRAIN mode the kernel updates that row of the running averages in place, exactly the
    reference's rule (momentum, unbiased variance, rows beyond T_max updated step after step).
    Layer norm uses the native layer-norm kernels. Identity (lstm, bn_vertical) passes through.
    """

    def __init__(self, norm: nn.Module, time_offset: int):
        self.norm, self.offset = norm, time_offset
        self.kind = "bn" if isinstance(norm, StepBatchNorm) else "ln" if isinstance(norm, LayerNorm) else "id"
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


def _param(norm: nn.Module, name: str) -> torch.Tensor | None:
    return getattr(norm, name, None) if not isinstance(norm, Identity) else None


def norm_loop_layer(layer: LSTMLayer, x: torch.Tensor, h0: torch.Tensor, c0: torch.Tensor, time_offset: int):
    """One layer: norm_x(W_x x) + b for all steps (`input_term`), then `NormLoop`."""
    xg = input_term(layer, x, time_offset)
    norm_h, norm_c = _StepNorm(layer.norm_h, time_offset), _StepNorm(layer.norm_c, time_offset)
    params = [_param(layer.norm_h, "weight"), _param(layer.norm_h, "bias"),
              _param(layer.norm_c, "weight"), _param(layer.norm_c, "bias")]
    present = [p for p in params if p is not None]
    out, h, c = NormLoop.apply(norm_h, norm_c, [p is not None for p in params], xg, layer.weight_hh, h0, c0,
                               *present)
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
    def forward(ctx, norm_h, norm_c, has, xg, w, h0, c0, *present):
        it = iter(present)
        wh, bh, wc, bc = (next(it) if flag else None for flag in has)
        steps, batch, four_h = xg.shape
        hidden = four_h // 4
        keep = any(ctx.needs_input_grad)  # without a backward, per-step buffers are reused
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
        return (None, None, None, d_gates, d_w, d_h0, d_c0, *extra)

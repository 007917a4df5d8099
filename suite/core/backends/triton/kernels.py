"""The Triton step kernels of the normalized LSTM recurrence (Cooijmans et al. 2016, Eq. 6-8).

One launch per time step forward (`step_forward`) and one per step backward (`step_backward`);
the recurrent products h_{t-1} W_h^T and dz_t W_h stay cuBLAS matrix multiplies between them.
Each program owns a tile of (rows, hidden units) and the four gate columns of those units:

* batch norm (statistics of this batch) reduces over the batch per unit, so its tile holds
  every row of the batch (BLOCK_B >= B) and the grid runs over units;
* layer norm reduces over units per example, so its tile holds every unit (BLOCK_H >= H; the
  four gates' 4H units for norm_h) and the grid runs over rows;
* population batch norm and identity need neither: any tiling.

Norm kinds are the slot kinds of `suite.core.backends.slots` (0 none, 1 batch statistics,
2 population statistics, 3 layer norm), passed as compile-time constants. Padded steps
(`HAS_MASK`) hold the state and stay out of every statistic, as in `LSTMLayer.forward`.

Only Triton language features present in both triton 3.6 and 3.9 are used (no tl.dot, no
libdevice: tanh is written with exp). The kernels are decorated at import: set
TRITON_INTERPRET=1 before importing this module to run them on CPU tensors.
"""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def _sigmoid(x):
    return 1.0 / (1.0 + tl.exp(-x))


@triton.jit
def _tanh(x):
    # 1 - 2 / (e^{2x} + 1): saturates to +-1 without inf/inf for large |x|.
    return 1.0 - 2.0 / (tl.exp(2.0 * x) + 1.0)


@triton.jit
def _column_forward(z, w, n, col, col_ok, g_ptr, b_ptr, m_ptr, v_ptr, i_ptr, stat, eps,
                    KIND: tl.constexpr, HAS_BETA: tl.constexpr):
    """Identity or batch norm of a (rows, units) tile, one channel per column `col`.

    KIND 1: statistics over the rows weighted by w (1 real, 0 padding), written to row `stat`
    of the mean/var/invstd buffers; KIND 2: population statistics read from there."""
    if KIND == 1:
        mean = tl.sum(z * w[:, None], axis=0) / n
        d = z - mean[None, :]
        var = tl.sum(d * d * w[:, None], axis=0) / n
        invstd = 1.0 / tl.sqrt(var + eps)
        tl.store(m_ptr + stat + col, mean, mask=col_ok)
        tl.store(v_ptr + stat + col, var, mask=col_ok)
        tl.store(i_ptr + stat + col, invstd, mask=col_ok)
        y = d * invstd[None, :] * tl.load(g_ptr + col, mask=col_ok, other=0.0)[None, :]
    elif KIND == 2:
        mean = tl.load(m_ptr + stat + col, mask=col_ok, other=0.0)
        invstd = tl.load(i_ptr + stat + col, mask=col_ok, other=0.0)
        y = (z - mean[None, :]) * invstd[None, :] * tl.load(g_ptr + col, mask=col_ok, other=0.0)[None, :]
    else:
        y = z
    if KIND != 0:
        if HAS_BETA:
            y = y + tl.load(b_ptr + col, mask=col_ok, other=0.0)[None, :]
    return y


@triton.jit
def _column_backward(dy, z, w, n, col, col_ok, g_ptr, m_ptr, i_ptr, stat, KIND: tl.constexpr):
    """d input of `_column_forward` from d output dy (zero on padded rows)."""
    if KIND == 0:
        dz = dy
    else:
        gy = dy * tl.load(g_ptr + col, mask=col_ok, other=0.0)[None, :]
        invstd = tl.load(i_ptr + stat + col, mask=col_ok, other=0.0)
        if KIND == 1:
            mean = tl.load(m_ptr + stat + col, mask=col_ok, other=0.0)
            xhat = (z - mean[None, :]) * invstd[None, :]
            s1 = tl.sum(gy, axis=0) / n
            s2 = tl.sum(gy * xhat * w[:, None], axis=0) / n
            dz = (gy - w[:, None] * (s1[None, :] + xhat * s2[None, :])) * invstd[None, :]
        else:
            dz = gy * invstd[None, :]
    return dz


@triton.jit
def _row_sum(z, col_ok):
    return tl.sum(tl.where(col_ok[None, :], z, 0.0), axis=1)


@triton.jit
def _row_affine(z, mean, invstd, col, col_ok, g_ptr, b_ptr, HAS_BETA: tl.constexpr):
    y = (z - mean[:, None]) * invstd[:, None] * tl.load(g_ptr + col, mask=col_ok, other=0.0)[None, :]
    if HAS_BETA:
        y = y + tl.load(b_ptr + col, mask=col_ok, other=0.0)[None, :]
    return y


@triton.jit
def _row_dy(dy, z, mean, invstd, col, col_ok, g_ptr):
    """(gamma dy, xhat) of a layer-norm tile, zero outside the units."""
    gy = tl.where(col_ok[None, :], dy * tl.load(g_ptr + col, mask=col_ok, other=0.0)[None, :], 0.0)
    xhat = tl.where(col_ok[None, :], (z - mean[:, None]) * invstd[:, None], 0.0)
    return gy, xhat


@triton.jit
def _tile(t, B, H, mask_ptr, count_ptr, HAS_MASK: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr):
    """This program's tile of step t, shared by both step kernels: (rows, units, row_ok, col_ok,
    ok, w, n, G, gate, cell). w weighs each row (1 real, 0 padding or outside the batch), n is the
    number of real rows (the statistics' divisor), G = 4H; gate and cell are the tile's offsets
    into (B, 4H) and (B, H) buffers."""
    rows = tl.program_id(1) * BLOCK_B + tl.arange(0, BLOCK_B)
    units = tl.program_id(0) * BLOCK_H + tl.arange(0, BLOCK_H)
    row_ok = rows < B
    col_ok = units < H
    ok = row_ok[:, None] & col_ok[None, :]
    G = 4 * H
    if HAS_MASK:
        w = tl.load(mask_ptr + t * B + rows, mask=row_ok, other=0.0)
        n = tl.maximum(tl.load(count_ptr + t), 1.0)
    else:
        w = tl.where(row_ok, 1.0, 0.0)
        n = tl.sum(w, axis=0)  # B, exactly: a float divisor keeps float64 division exact
    gate = rows[:, None] * G + units[None, :]
    cell = rows[:, None] * H + units[None, :]
    return rows, units, row_ok, col_ok, ok, w, n, G, gate, cell


@triton.jit
def step_forward(
    xg_ptr, zh_ptr, act_ptr, c_ptr, tcn_ptr, h_ptr, mask_ptr, count_ptr,
    gh_ptr, bh_ptr, mh_ptr, vh_ptr, ih_ptr,
    gc_ptr, bc_ptr, mc_ptr, vc_ptr, ic_ptr,
    t, z, k, c_in, c_out, B, H, eps_h, eps_c,
    H_KIND: tl.constexpr, C_KIND: tl.constexpr, H_BETA: tl.constexpr, C_BETA: tl.constexpr,
    HAS_MASK: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr,
):
    """Step t: gates = xg_t + norm_h(zh), the cell, norm_c, h_t; saves activations and statistics.

    xg (T, B, 4H) input term; zh at slot z (one slot without a norm_h); act (kept, B, 4H)
    at slot k; c (kept+1, B, H) read at slot
    c_in, written at c_out; tcn (kept, B, H) tanh(norm_c(c)) at slot k; h (T+1, B, H) read at
    t, written at t+1; mask (T, B) and count (T,) only with HAS_MASK. Statistics rows are t.
    """
    rows, units, row_ok, col_ok, ok, w, n, G, gate, cell = _tile(t, B, H, mask_ptr, count_ptr, HAS_MASK, BLOCK_B,
                                                                 BLOCK_H)
    zh = zh_ptr + z * B * G + gate
    zi = tl.load(zh, mask=ok, other=0.0)
    zf = tl.load(zh + H, mask=ok, other=0.0)
    zg = tl.load(zh + 2 * H, mask=ok, other=0.0)
    zo = tl.load(zh + 3 * H, mask=ok, other=0.0)
    if H_KIND == 3:  # layer norm over the 4H gate units of each row
        mean = (_row_sum(zi, col_ok) + _row_sum(zf, col_ok) + _row_sum(zg, col_ok) + _row_sum(zo, col_ok)) / G
        di = tl.where(col_ok[None, :], zi - mean[:, None], 0.0)
        df = tl.where(col_ok[None, :], zf - mean[:, None], 0.0)
        dg = tl.where(col_ok[None, :], zg - mean[:, None], 0.0)
        do = tl.where(col_ok[None, :], zo - mean[:, None], 0.0)
        var = (tl.sum(di * di, axis=1) + tl.sum(df * df, axis=1) + tl.sum(dg * dg, axis=1)
               + tl.sum(do * do, axis=1)) / G
        invstd = 1.0 / tl.sqrt(var + eps_h)
        tl.store(mh_ptr + t * B + rows, mean, mask=row_ok)
        tl.store(ih_ptr + t * B + rows, invstd, mask=row_ok)
        yi = _row_affine(zi, mean, invstd, units, col_ok, gh_ptr, bh_ptr, H_BETA)
        yf = _row_affine(zf, mean, invstd, units + H, col_ok, gh_ptr, bh_ptr, H_BETA)
        yg = _row_affine(zg, mean, invstd, units + 2 * H, col_ok, gh_ptr, bh_ptr, H_BETA)
        yo = _row_affine(zo, mean, invstd, units + 3 * H, col_ok, gh_ptr, bh_ptr, H_BETA)
    else:
        stat = t * G
        yi = _column_forward(zi, w, n, units, col_ok, gh_ptr, bh_ptr, mh_ptr, vh_ptr, ih_ptr, stat, eps_h,
                             H_KIND, H_BETA)
        yf = _column_forward(zf, w, n, units + H, col_ok, gh_ptr, bh_ptr, mh_ptr, vh_ptr, ih_ptr, stat, eps_h,
                             H_KIND, H_BETA)
        yg = _column_forward(zg, w, n, units + 2 * H, col_ok, gh_ptr, bh_ptr, mh_ptr, vh_ptr, ih_ptr, stat,
                             eps_h, H_KIND, H_BETA)
        yo = _column_forward(zo, w, n, units + 3 * H, col_ok, gh_ptr, bh_ptr, mh_ptr, vh_ptr, ih_ptr, stat,
                             eps_h, H_KIND, H_BETA)
    xg = xg_ptr + t * B * G + gate
    i = _sigmoid(tl.load(xg, mask=ok, other=0.0) + yi)
    f = _sigmoid(tl.load(xg + H, mask=ok, other=0.0) + yf)
    g = _tanh(tl.load(xg + 2 * H, mask=ok, other=0.0) + yg)
    o = _sigmoid(tl.load(xg + 3 * H, mask=ok, other=0.0) + yo)
    act = act_ptr + k * B * G + gate
    tl.store(act, i, mask=ok)
    tl.store(act + H, f, mask=ok)
    tl.store(act + 2 * H, g, mask=ok)
    tl.store(act + 3 * H, o, mask=ok)
    c_prev = tl.load(c_ptr + c_in * B * H + cell, mask=ok, other=0.0)
    c = f * c_prev + i * g
    if C_KIND == 3:
        mean_c = _row_sum(c, col_ok) / H
        dc = tl.where(col_ok[None, :], c - mean_c[:, None], 0.0)
        invstd_c = 1.0 / tl.sqrt(tl.sum(dc * dc, axis=1) / H + eps_c)
        tl.store(mc_ptr + t * B + rows, mean_c, mask=row_ok)
        tl.store(ic_ptr + t * B + rows, invstd_c, mask=row_ok)
        cn = _row_affine(c, mean_c, invstd_c, units, col_ok, gc_ptr, bc_ptr, C_BETA)
    else:
        cn = _column_forward(c, w, n, units, col_ok, gc_ptr, bc_ptr, mc_ptr, vc_ptr, ic_ptr, t * H, eps_c,
                             C_KIND, C_BETA)
    tc = _tanh(cn)
    h = o * tc
    if HAS_MASK:  # padded steps hold the state
        real = (w > 0)[:, None]
        c = tl.where(real, c, c_prev)
        h = tl.where(real, h, tl.load(h_ptr + t * B * H + cell, mask=ok, other=0.0))
    tl.store(tcn_ptr + k * B * H + cell, tc, mask=ok)
    tl.store(c_ptr + c_out * B * H + cell, c, mask=ok)
    tl.store(h_ptr + (t + 1) * B * H + cell, h, mask=ok)


@triton.jit
def step_backward(
    dh_ptr, carry_ptr, dc_ptr, act_ptr, c_ptr, tcn_ptr, zh_ptr, mask_ptr, count_ptr,
    dgate_ptr, dzh_ptr, dcn_ptr,
    gh_ptr, mh_ptr, ih_ptr, gc_ptr, mc_ptr, ic_ptr,
    t, B, H,
    H_KIND: tl.constexpr, C_KIND: tl.constexpr, HAS_MASK: tl.constexpr,
    BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr,
):
    """Gradients of step t from dL/dh_t (dh, plus `carry` through padded steps with HAS_MASK)
    and dL/dc_t (dc, updated in place to dL/dc_{t-1}).

    Writes d gates (pre-activation; also d of the input term) and d zh = d (h_{t-1} W_h^T) at
    row t of (T, B, 4H) buffers (one buffer when norm_h is the identity), and with a norm_c
    d norm_c(c_t) at row t of dcn (T, B, H), from which the caller sums gamma/beta gradients.
    """
    rows, units, row_ok, col_ok, ok, w, n, G, gate, cell = _tile(t, B, H, mask_ptr, count_ptr, HAS_MASK, BLOCK_B,
                                                                 BLOCK_H)
    real = (w > 0)[:, None]
    dh = tl.load(dh_ptr + cell, mask=ok, other=0.0)
    if HAS_MASK:  # dL/dh_t also arrives through the state held by a padded step t+1
        dh = dh + tl.load(carry_ptr + cell, mask=ok, other=0.0)
        tl.store(carry_ptr + cell, tl.where(real, 0.0, dh), mask=ok)
    act = act_ptr + t * B * G + gate
    i = tl.load(act, mask=ok, other=0.0)
    f = tl.load(act + H, mask=ok, other=0.0)
    g = tl.load(act + 2 * H, mask=ok, other=0.0)
    o = tl.load(act + 3 * H, mask=ok, other=0.0)
    tc = tl.load(tcn_ptr + t * B * H + cell, mask=ok, other=0.0)
    d_cn = tl.where(real, dh * o * (1.0 - tc * tc), 0.0)
    c = tl.load(c_ptr + (t + 1) * B * H + cell, mask=ok, other=0.0)
    if C_KIND == 3:
        mean_c = tl.load(mc_ptr + t * B + rows, mask=row_ok, other=0.0)
        invstd_c = tl.load(ic_ptr + t * B + rows, mask=row_ok, other=0.0)
        gy, xhat = _row_dy(d_cn, c, mean_c, invstd_c, units, col_ok, gc_ptr)
        s1 = tl.sum(gy, axis=1) / H
        s2 = tl.sum(gy * xhat, axis=1) / H
        dc_h = (gy - s1[:, None] - xhat * s2[:, None]) * invstd_c[:, None]
    else:
        dc_h = _column_backward(d_cn, c, w, n, units, col_ok, gc_ptr, mc_ptr, ic_ptr, t * H, C_KIND)
    if C_KIND != 0:
        tl.store(dcn_ptr + t * B * H + cell, d_cn, mask=ok)
    dc_in = tl.load(dc_ptr + cell, mask=ok, other=0.0)
    dc = dc_in + dc_h
    c_prev = tl.load(c_ptr + t * B * H + cell, mask=ok, other=0.0)
    d_i = tl.where(real, dc * g * i * (1.0 - i), 0.0)
    d_f = tl.where(real, dc * c_prev * f * (1.0 - f), 0.0)
    d_g = tl.where(real, dc * i * (1.0 - g * g), 0.0)
    d_o = tl.where(real, dh * tc * o * (1.0 - o), 0.0)
    tl.store(dc_ptr + cell, tl.where(real, dc * f, dc_in), mask=ok)
    dgate = dgate_ptr + t * B * G + gate
    tl.store(dgate, d_i, mask=ok)
    tl.store(dgate + H, d_f, mask=ok)
    tl.store(dgate + 2 * H, d_g, mask=ok)
    tl.store(dgate + 3 * H, d_o, mask=ok)
    if H_KIND != 0:
        zh = zh_ptr + t * B * G + gate
        zi = tl.load(zh, mask=ok, other=0.0)
        zf = tl.load(zh + H, mask=ok, other=0.0)
        zg = tl.load(zh + 2 * H, mask=ok, other=0.0)
        zo = tl.load(zh + 3 * H, mask=ok, other=0.0)
        if H_KIND == 3:
            mean = tl.load(mh_ptr + t * B + rows, mask=row_ok, other=0.0)
            invstd = tl.load(ih_ptr + t * B + rows, mask=row_ok, other=0.0)
            gi, xi = _row_dy(d_i, zi, mean, invstd, units, col_ok, gh_ptr)
            gf, xf = _row_dy(d_f, zf, mean, invstd, units + H, col_ok, gh_ptr)
            gg, xg = _row_dy(d_g, zg, mean, invstd, units + 2 * H, col_ok, gh_ptr)
            go, xo = _row_dy(d_o, zo, mean, invstd, units + 3 * H, col_ok, gh_ptr)
            s1 = (tl.sum(gi, axis=1) + tl.sum(gf, axis=1) + tl.sum(gg, axis=1) + tl.sum(go, axis=1)) / G
            s2 = (tl.sum(gi * xi, axis=1) + tl.sum(gf * xf, axis=1) + tl.sum(gg * xg, axis=1)
                  + tl.sum(go * xo, axis=1)) / G
            e_i = (gi - s1[:, None] - xi * s2[:, None]) * invstd[:, None]
            e_f = (gf - s1[:, None] - xf * s2[:, None]) * invstd[:, None]
            e_g = (gg - s1[:, None] - xg * s2[:, None]) * invstd[:, None]
            e_o = (go - s1[:, None] - xo * s2[:, None]) * invstd[:, None]
        else:
            stat = t * G
            e_i = _column_backward(d_i, zi, w, n, units, col_ok, gh_ptr, mh_ptr, ih_ptr, stat, H_KIND)
            e_f = _column_backward(d_f, zf, w, n, units + H, col_ok, gh_ptr, mh_ptr, ih_ptr, stat, H_KIND)
            e_g = _column_backward(d_g, zg, w, n, units + 2 * H, col_ok, gh_ptr, mh_ptr, ih_ptr, stat, H_KIND)
            e_o = _column_backward(d_o, zo, w, n, units + 3 * H, col_ok, gh_ptr, mh_ptr, ih_ptr, stat, H_KIND)
        dzh = dzh_ptr + t * B * G + gate
        tl.store(dzh, e_i, mask=ok)
        tl.store(dzh + H, e_f, mask=ok)
        tl.store(dzh + 2 * H, e_g, mask=ok)
        tl.store(dzh + 3 * H, e_o, mask=ok)

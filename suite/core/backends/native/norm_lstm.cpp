// One time step of the normalized LSTM (Cooijmans et al. 2016, Eq. 6-8), forward and backward,
// fused into two passes over cache-resident (B, 4H) and (B, H) blocks.
//
// The caller (suite/core/backends/native/loop.py) runs the time loop and the recurrent matrix products
// in PyTorch; these functions do everything else of a step: the three normalizations (per-step
// batch norm with batch or population statistics, or layer norm), the gate nonlinearities, the
// cell update, and their hand-derived gradients. No PyTorch headers: plain C++ with OpenMP,
// built with the system compiler at first use and loaded with ctypes.
//
// Layouts are row-major: z[b * C + j] for example b, unit j. Gates are ordered i, f, g, o
// (torch.nn.LSTM's order). tanh(z) is computed as 2 sigmoid(2z) - 1, so that every gate uses
// one vectorizable exp.

#include <cmath>
#include <cstdint>
#include <cstring>
#include <algorithm>
#include <omp.h>

namespace {

enum Kind : int64_t { NONE = 0, BN_BATCH = 1, BN_POPULATION = 2, LAYER = 3 };

template <typename T>
struct Norm {
  int64_t kind;
  const T* gamma;  // (C) or null
  const T* beta;   // (C) or null
  double eps;
  T* mean;         // BN: (steps, C), written (batch) or given (population); LN: (steps, B), written
  T* invstd;       // same shape as mean
  T* var;          // BN batch statistics: (steps, C) biased variance, written; else null
  T* d_gamma;      // (threads, C) per-thread gradient accumulators, or null
  T* d_beta;       // (threads, C) or null
};

template <typename T>
struct Loop {
  int64_t steps, batch, hidden, threads, kept;  // kept = 0: per-step buffers hold one step (no backward)
  int64_t features;  // F
  const T* bias;  // (4H)
  // Variable lengths: mask[t * B + b] is 1 where step t of example b is real, 0 in padding.
  // Padding leaves the state unchanged and is left out of every batch statistic (count[t]
  // real examples at step t), exactly as the reference loop does. Both null without lengths.
  const T* mask;   // (steps, B) or null
  const T* count;  // (steps) or null
  T* dh_carry;     // (B, H) dL/dh passed through padded steps, backward with a mask only
  // The input term W_x x_t: either given for all steps (zx), or -- for few input features,
  // where a (steps, B, 4H) array would cost more memory traffic than the products --
  // computed per step from x and W_x^T into z_step, with dx and dW_x accumulated here.
  const T* zx;    // (steps, B, 4H) or null
  const T* x;     // (steps, B, F) or null
  const T* wx_t;  // (F, 4H) W_x^T
  T* z_step;      // (B, 4H) this step's input term
  T* d_step;      // (B, 4H) this step's gate gradient when it has no array of its own
  T* dx;          // (steps, B, F)
  T* d_wx;        // (threads, F, 4H) per-thread accumulators of dW_x^T
  T* dx_part;     // (threads, B, F) per-thread partial sums of dx_t
  const T* zh;    // (kept steps, B, 4H) recurrent term h_{t-1} W_h^T, filled by the caller
  T* acts;        // (kept steps, B, 4H) i, f, g, o after their nonlinearities
  T* c;           // (kept steps + 1, B, H); without backward two rows used in turn
  T* tcn;         // (kept steps, B, H) tanh(norm_c(c_t))
  T* h;           // (steps + 1, B, H)
  T* dh;          // (B, H) dL/dh_t, filled by the caller
  T* dc;          // (B, H) dL/dc_t from step t+1 (already times f_{t+1}); left as dL/dc_{t-1}'s part
  T* d_zx;        // (steps, B, 4H), with zx only
  T* d_zh;        // (steps, B, 4H)
  T* d_bias;      // (threads, 4H)
  T* scratch;     // (max(6, 4 threads) * 4H) coefficients: by unit (disjoint per thread) or by thread
  Norm<T> nx, nh, nc;
};

inline float exp_(float x) {
  // Cody-Waite reduction to r in [-ln2/2, ln2/2], degree-6 Taylor (relative error ~1e-7), and
  // 2^k built from its bits: branch-free, so loops over it vectorize.
  x = std::min(std::max(x, -87.0f), 88.0f);
  const float shifter = 12582912.0f;  // 1.5 * 2^23: adding it rounds to an integer
  float k = (x * 1.44269504088896341f + shifter) - shifter;
  float r = x - k * 0.693145751953125f;
  r = r - k * 1.428606765330187045e-06f;
  float p = 1.0f / 720;
  p = p * r + 1.0f / 120;
  p = p * r + 1.0f / 24;
  p = p * r + 1.0f / 6;
  p = p * r + 0.5f;
  p = p * r + 1.0f;
  p = p * r + 1.0f;
  int32_t bits = (static_cast<int32_t>(k) + 127) << 23;
  float scale;
  std::memcpy(&scale, &bits, sizeof scale);
  return p * scale;
}
inline double exp_(double x) { return std::exp(x); }

template <typename T> inline T sigmoid(T x) { return T(1) / (T(1) + exp_(-x)); }
template <typename T> inline T tanh_(T x) { return T(2) * sigmoid(T(2) * x) - T(1); }

// Units [lo, hi) of `size` for thread p of n, in blocks of 16 so that inner loops vectorize.
inline void share(int64_t size, int p, int n, int64_t& lo, int64_t& hi) {
  int64_t per = ((size + n - 1) / n + 15) / 16 * 16;
  lo = std::min<int64_t>(size, p * per);
  hi = std::min<int64_t>(size, lo + per);
}

template <typename F> inline void parallel(int n, F body) {
  if (n <= 1) {
    body(0, 1);
    return;
  }
#pragma omp parallel num_threads(n)
  body(omp_get_thread_num(), omp_get_num_threads());
}

// Batch-norm (or identity) of units [lo, hi) of a (B, C) block as y = a z + k: fills a and k
// (and, for batch statistics, the step's mean, invstd and variance).
template <typename T>
void column_affine(const Norm<T>& n, const T* z, int64_t B, int64_t C, int64_t t, int64_t lo, int64_t hi,
                   T* a, T* k, const T* mask, T count) {
  if (n.kind == NONE) {
    for (int64_t j = lo; j < hi; ++j) a[j] = T(1), k[j] = T(0);
    return;
  }
  T* mean = n.mean + t * C;
  T* invstd = n.invstd + t * C;
  if (n.kind == BN_BATCH) {
    T* var = n.var + t * C;
    for (int64_t j = lo; j < hi; ++j) mean[j] = T(0), var[j] = T(0);
    const T per = T(1) / std::max(count, T(1));  // a step with no real example: zeros, as the reference
    for (int64_t b = 0; b < B; ++b) {
      const T* row = z + b * C;
      const T m = mask ? mask[b] : T(1);
#pragma omp simd
      for (int64_t j = lo; j < hi; ++j) mean[j] += m * row[j];
    }
    for (int64_t j = lo; j < hi; ++j) mean[j] *= per;
    for (int64_t b = 0; b < B; ++b) {  // two passes: the one-pass formula loses digits
      const T* row = z + b * C;
      const T m = mask ? mask[b] : T(1);
#pragma omp simd
      for (int64_t j = lo; j < hi; ++j) var[j] += m * (row[j] - mean[j]) * (row[j] - mean[j]);
    }
    for (int64_t j = lo; j < hi; ++j) {
      var[j] *= per;
      invstd[j] = T(1) / std::sqrt(var[j] + T(n.eps));
    }
  }
  for (int64_t j = lo; j < hi; ++j) {
    a[j] = n.gamma[j] * invstd[j];
    k[j] = (n.beta ? n.beta[j] : T(0)) - a[j] * mean[j];
  }
}

// Layer norm (or identity) of one row of C units as y = a_j z + k_j, a and k over the row.
template <typename T>
void row_affine(const Norm<T>& n, const T* z, int64_t B, int64_t C, int64_t t, int64_t b, T* a, T* k) {
  if (n.kind == NONE) {
    for (int64_t j = 0; j < C; ++j) a[j] = T(1), k[j] = T(0);
    return;
  }
  T mean = 0, var = 0;
#pragma omp simd reduction(+ : mean)
  for (int64_t j = 0; j < C; ++j) mean += z[j];
  mean /= T(C);
#pragma omp simd reduction(+ : var)
  for (int64_t j = 0; j < C; ++j) var += (z[j] - mean) * (z[j] - mean);
  T invstd = T(1) / std::sqrt(var / T(C) + T(n.eps));
  n.mean[t * B + b] = mean;
  n.invstd[t * B + b] = invstd;
  for (int64_t j = 0; j < C; ++j) {
    a[j] = n.gamma[j] * invstd;
    k[j] = (n.beta ? n.beta[j] : T(0)) - a[j] * mean;
  }
}

// Gate pre-activations -> activations for units [lo, hi) of one row; the g block gets tanh.
template <typename T>
inline void activate(const T* zx, const T* zh, const T* ax, const T* ah, const T* k, T* out, int64_t H,
                     int64_t lo, int64_t hi) {
  for (int q = 0; q < 4; ++q) {
    int64_t s = std::max(lo, q * H), e = std::min(hi, (q + 1) * H);
    const T m = q == 2 ? T(2) : T(1);  // tanh(z) = 2 sigmoid(2z) - 1
#pragma omp simd
    for (int64_t j = s; j < e; ++j) out[j] = m * sigmoid(m * (ax[j] * zx[j] + ah[j] * zh[j] + k[j])) - (m - T(1));
  }
}

// z_step[b, j] = sum_f x_t[b, f] W_x^T[f, j] for rows [b0, b1) and units [lo, hi).
template <typename T>
void project(const Loop<T>& L, int64_t t, int64_t b0, int64_t b1, int64_t lo, int64_t hi) {
  const int64_t B = L.batch, G = 4 * L.hidden, F = L.features;
  const T* x = L.x + t * B * F;
  for (int64_t b = b0; b < b1; ++b) {
    T* z = L.z_step + b * G;
    for (int64_t j = lo; j < hi; ++j) z[j] = T(0);
    for (int64_t f = 0; f < F; ++f) {
      const T xf = x[b * F + f];
      const T* w = L.wx_t + f * G;
#pragma omp simd
      for (int64_t j = lo; j < hi; ++j) z[j] += xf * w[j];
    }
  }
}

// Gradient of the input term of row b, units [lo, hi) (d): into thread p's dW_x^T and into
// dx_t[b] (whole rows) or thread p's partial sums of it (some units only).
template <typename T>
void project_backward(const Loop<T>& L, int64_t t, int64_t b, int64_t lo, int64_t hi, const T* d, int p,
                      bool whole_row) {
  const int64_t B = L.batch, G = 4 * L.hidden, F = L.features;
  const T* x = L.x + t * B * F;
  for (int64_t f = 0; f < F; ++f) {
    const T xf = x[b * F + f];
    T* dw = L.d_wx + (p * F + f) * G;
    const T* w = L.wx_t + f * G;
    T sum = 0;
#pragma omp simd reduction(+ : sum)
    for (int64_t j = lo; j < hi; ++j) {
      dw[j] += d[j] * xf;
      sum += d[j] * w[j];
    }
    if (whole_row) L.dx[(t * B + b) * F + f] = sum;
    else L.dx_part[(p * B + b) * F + f] += sum;
  }
}

// A padded step leaves example b's state as it was.
template <typename T>
inline void hold(T* c_next, const T* c_prev, T* h, const T* h_prev, int64_t b, int64_t H, int64_t lo, int64_t hi) {
  for (int64_t j = lo; j < hi; ++j) c_next[b * H + j] = c_prev[b * H + j], h[b * H + j] = h_prev[b * H + j];
}

template <typename T>
void forward_step(const Loop<T>& L, int64_t t) {
  const int64_t B = L.batch, H = L.hidden, G = 4 * H;
  const int64_t slot = L.kept ? t : 0;
  const T* zx = L.x ? L.z_step : L.zx + t * B * G;
  const T* zh = L.zh + slot * B * G;
  T* acts = L.acts + slot * B * G;
  const T* c_prev = L.c + (L.kept ? t : t % 2) * B * H;
  T* c_next = L.c + (L.kept ? t + 1 : (t + 1) % 2) * B * H;
  T* tcn = L.tcn + slot * B * H;
  T* h = L.h + (t + 1) * B * H;
  const T* h_prev = L.h + t * B * H;
  const T* mask = L.mask ? L.mask + t * B : nullptr;
  const T count = L.count ? L.count[t] : T(B);
  const bool rows = L.nx.kind == LAYER || L.nh.kind == LAYER;
  const bool cell_rows = L.nc.kind == LAYER;
  T* ax = L.scratch;  // coefficient arrays, (4H) each
  T* ah = ax + G;
  T* k = ah + G;
  T* kh = k + G;
  parallel(L.threads, [&](int p, int n) {
    if (!rows) {
      int64_t lo, hi;
      share(G, p, n, lo, hi);
      if (L.x) project(L, t, 0, B, lo, hi);
      column_affine(L.nx, zx, B, G, t, lo, hi, ax, k, mask, count);
      column_affine(L.nh, zh, B, G, t, lo, hi, ah, kh, mask, count);
      for (int64_t j = lo; j < hi; ++j) k[j] += kh[j] + L.bias[j];
      for (int64_t b = 0; b < B; ++b) activate(zx + b * G, zh + b * G, ax, ah, k, acts + b * G, H, lo, hi);
    } else {
      int64_t lo, hi;
      share(B, p, n, lo, hi);
      if (L.x) project(L, t, lo, hi, 0, G);
      T* rax = L.scratch + p * 4 * G;  // per-thread rows: 4 arrays of 4H
      T* rah = rax + G;
      T* rk = rah + G;
      T* rkh = rk + G;
      for (int64_t b = lo; b < hi; ++b) {
        row_affine(L.nx, zx + b * G, B, G, t, b, rax, rk);
        row_affine(L.nh, zh + b * G, B, G, t, b, rah, rkh);
        for (int64_t j = 0; j < G; ++j) rk[j] += rkh[j] + L.bias[j];
        activate(zx + b * G, zh + b * G, rax, rah, rk, acts + b * G, H, 0, G);
      }
    }
  });
  parallel(L.threads, [&](int p, int n) {
    int64_t lo, hi;
    share(cell_rows ? B : H, p, n, lo, hi);
    if (!cell_rows) {
      for (int64_t b = 0; b < B; ++b) {
        const T* a = acts + b * G;
#pragma omp simd
        for (int64_t j = lo; j < hi; ++j) c_next[b * H + j] = a[H + j] * c_prev[b * H + j] + a[j] * a[2 * H + j];
      }
      T* ac = L.scratch;  // the gate coefficients are dead by now
      T* kc = ac + H;
      column_affine(L.nc, c_next, B, H, t, lo, hi, ac, kc, mask, count);
      for (int64_t b = 0; b < B; ++b) {
        const T* a = acts + b * G;
#pragma omp simd
        for (int64_t j = lo; j < hi; ++j) {
          T v = tanh_(ac[j] * c_next[b * H + j] + kc[j]);
          tcn[b * H + j] = v;
          h[b * H + j] = a[3 * H + j] * v;
        }
        if (mask && mask[b] == T(0)) hold(c_next, c_prev, h, h_prev, b, H, lo, hi);
      }
    } else {
      T* ac = L.scratch + p * 2 * H;
      T* kc = ac + H;
      for (int64_t b = lo; b < hi; ++b) {
        const T* a = acts + b * G;
        T* cn = c_next + b * H;
        const T* cp = c_prev + b * H;
#pragma omp simd
        for (int64_t j = 0; j < H; ++j) cn[j] = a[H + j] * cp[j] + a[j] * a[2 * H + j];
        row_affine(L.nc, cn, B, H, t, b, ac, kc);
#pragma omp simd
        for (int64_t j = 0; j < H; ++j) {
          T v = tanh_(ac[j] * cn[j] + kc[j]);
          tcn[b * H + j] = v;
          h[b * H + j] = a[3 * H + j] * v;
        }
        if (mask && mask[b] == T(0)) hold(c_next, c_prev, h, h_prev, b, H, 0, H);
      }
    }
  });
}

// Batch-norm backward coefficients of units [lo, hi): dz = a dy + e z + f, with the sums of
// dy and dy * xhat over the batch; accumulates d_gamma, d_beta of thread p.
template <typename T>
void column_backward(const Norm<T>& n, const T* sum_dy, const T* sum_dy_xhat, T count, int64_t C, int64_t t,
                     int p, int64_t lo, int64_t hi, T* a, T* e, T* f) {
  if (n.kind == NONE) {
    for (int64_t j = lo; j < hi; ++j) a[j] = T(1), e[j] = T(0), f[j] = T(0);
    return;
  }
  const T* mean = n.mean + t * C;
  const T* invstd = n.invstd + t * C;
  for (int64_t j = lo; j < hi; ++j) {
    if (n.d_gamma) n.d_gamma[p * C + j] += sum_dy_xhat[j];
    if (n.d_beta) n.d_beta[p * C + j] += sum_dy[j];
    a[j] = n.gamma[j] * invstd[j];
    if (n.kind == BN_BATCH) {
      // dz = a (dy - mean(dy) - xhat mean(dy xhat)), xhat = (z - mean) invstd
      const T per = T(1) / std::max(count, T(1));
      T m1 = sum_dy[j] * per, m2 = sum_dy_xhat[j] * per;
      e[j] = -a[j] * invstd[j] * m2;
      f[j] = -a[j] * m1 - e[j] * mean[j];
    } else {
      e[j] = T(0), f[j] = T(0);
    }
  }
}

// Layer-norm backward of one row, in place on dy (C units) -> dz; accumulates d_gamma, d_beta.
template <typename T>
void row_backward(const Norm<T>& n, const T* z, T* dy, int64_t B, int64_t C, int64_t t, int64_t b, int p) {
  if (n.kind == NONE) return;
  const T mean = n.mean[t * B + b], invstd = n.invstd[t * B + b];
  T* dg = n.d_gamma ? n.d_gamma + p * C : nullptr;
  T* db = n.d_beta ? n.d_beta + p * C : nullptr;
  if (dg) {
#pragma omp simd
    for (int64_t j = 0; j < C; ++j) dg[j] += dy[j] * (z[j] - mean) * invstd;
  }
  if (db) {
#pragma omp simd
    for (int64_t j = 0; j < C; ++j) db[j] += dy[j];
  }
  T s1 = 0, s2 = 0;
#pragma omp simd reduction(+ : s1, s2)
  for (int64_t j = 0; j < C; ++j) {
    T g = dy[j] * n.gamma[j];
    s1 += g;
    s2 += g * (z[j] - mean) * invstd;
  }
  s1 /= T(C);
  s2 /= T(C);
#pragma omp simd
  for (int64_t j = 0; j < C; ++j) dy[j] = invstd * (dy[j] * n.gamma[j] - s1 - (z[j] - mean) * invstd * s2);
}

template <typename T>
void backward_step(const Loop<T>& L, int64_t t) {
  const int64_t B = L.batch, H = L.hidden, G = 4 * H;
  const T* zx = L.x ? L.z_step : L.zx + t * B * G;
  const T* zh = L.zh + t * B * G;
  const T* acts = L.acts + t * B * G;
  const T* c_prev = L.c + t * B * H;
  const T* c_now = L.c + (t + 1) * B * H;
  const T* tcn = L.tcn + t * B * H;
  // The gate gradient is written where it is consumed last: into d_zx (then normalized in
  // place) or this step's buffer when norm_h has a backward of its own, else into d_zh.
  T* d_zh = L.d_zh + t * B * G;
  T* d_zx = L.x ? L.d_step : L.d_zx + t * B * G;
  T* d_pre = L.nh.kind == NONE ? d_zh : d_zx;
  const bool rows = L.nx.kind == LAYER || L.nh.kind == LAYER;
  const bool cell_rows = L.nc.kind == LAYER;
  const T* mask = L.mask ? L.mask + t * B : nullptr;
  const T count = L.count ? L.count[t] : T(B);
  T* dh = L.dh;
  T* dc = L.dc;

  // Padding: dL/dh of a padded step goes on to the step before (the state was held), and the
  // step's own gradients are zero; dL/dc is passed on untouched in gates_of_row.
  auto route_padding = [&](int64_t b, int64_t lo, int64_t hi) {
    T* carry = L.dh_carry + b * H;
    T* d = dh + b * H;
    if (mask[b] != T(0)) {
      for (int64_t j = lo; j < hi; ++j) d[j] += carry[j], carry[j] = T(0);
    } else {
      for (int64_t j = lo; j < hi; ++j) carry[j] += d[j], d[j] = T(0);
    }
  };
  auto padded = [&](int64_t b) { return mask && mask[b] == T(0); };
  auto zero_row = [&](T* row, int64_t lo, int64_t hi) { std::fill(row + lo, row + hi, T(0)); };

  // Cell: d tanh(norm_c(c)), its norm's backward, then the four gate gradients.
  // dL/d norm_c(c_t) of example b, unit j: through h_t = o tanh(norm_c(c_t)).
  auto d_norm_c = [&](int64_t b, int64_t j) {
    T v = tcn[b * H + j];
    return dh[b * H + j] * acts[b * G + 3 * H + j] * (T(1) - v * v);
  };
  auto gates_of_row = [&](int64_t b, int64_t lo, int64_t hi, const T* d_cell) {
    const T* a = acts + b * G;
    T* d = d_pre + b * G;
    if (padded(b)) {
      for (int q = 0; q < 4; ++q) zero_row(d, q * H + lo, q * H + hi);
      return;
    }
#pragma omp simd
    for (int64_t j = lo; j < hi; ++j) {
      T i = a[j], f = a[H + j], g = a[2 * H + j], o = a[3 * H + j];
      T dct = dc[b * H + j] + d_cell[j];
      d[j] = dct * g * i * (T(1) - i);
      d[H + j] = dct * c_prev[b * H + j] * f * (T(1) - f);
      d[2 * H + j] = dct * i * (T(1) - g * g);
      d[3 * H + j] = dh[b * H + j] * tcn[b * H + j] * o * (T(1) - o);
      dc[b * H + j] = dct * f;
    }
  };
  parallel(L.threads, [&](int p, int n) {
    int64_t lo, hi;
    share(cell_rows ? B : H, p, n, lo, hi);
    if (mask) {
      if (cell_rows) for (int64_t b = lo; b < hi; ++b) route_padding(b, 0, H);
      else for (int64_t b = 0; b < B; ++b) route_padding(b, lo, hi);
    }
    if (!cell_rows) {
      T* s1 = L.scratch;
      T* s2 = s1 + H;
      T* ac = s2 + H;
      T* ec = ac + H;
      T* fc = ec + H;
      T* d_cell = fc + H;  // one row of dL/dc_t, by unit
      for (int64_t j = lo; j < hi; ++j) s1[j] = T(0), s2[j] = T(0);
      if (L.nc.kind != NONE) {
        const T* mean = L.nc.mean + t * H;
        const T* invstd = L.nc.invstd + t * H;
        for (int64_t b = 0; b < B; ++b) {
#pragma omp simd
          for (int64_t j = lo; j < hi; ++j) {
            T d = d_norm_c(b, j);
            s1[j] += d;
            s2[j] += d * (c_now[b * H + j] - mean[j]) * invstd[j];
          }
        }
      }
      column_backward(L.nc, s1, s2, count, H, t, p, lo, hi, ac, ec, fc);
      for (int64_t b = 0; b < B; ++b) {
#pragma omp simd
        for (int64_t j = lo; j < hi; ++j) d_cell[j] = ac[j] * d_norm_c(b, j) + ec[j] * c_now[b * H + j] + fc[j];
        gates_of_row(b, lo, hi, d_cell);
      }
    } else {
      T* d_cell = L.scratch + p * H;
      for (int64_t b = lo; b < hi; ++b) {
#pragma omp simd
        for (int64_t j = 0; j < H; ++j) d_cell[j] = d_norm_c(b, j);
        row_backward(L.nc, c_now + b * H, d_cell, B, H, t, b, p);
        gates_of_row(b, 0, H, d_cell);
      }
    }
  });

  // Gates: bias gradient, then norm_h's and norm_x's backward on the same gate gradient.
  if (L.x && !rows) std::fill(L.dx_part, L.dx_part + L.threads * B * L.features, T(0));
  parallel(L.threads, [&](int p, int n) {
    int64_t lo, hi;
    share(rows ? B : G, p, n, lo, hi);
    if (L.x && L.nx.kind != NONE) {  // the input term again, for norm_x's backward
      if (rows) project(L, t, lo, hi, 0, G);
      else project(L, t, 0, B, lo, hi);
    }
    if (!rows) {
      T* sd = L.scratch;
      T* sh = sd + G;
      T* sx = sh + G;
      T* a = sx + G;
      T* e = a + G;
      T* f = e + G;
      for (int64_t j = lo; j < hi; ++j) sd[j] = T(0), sh[j] = T(0), sx[j] = T(0);
      const bool need_h = L.nh.kind != NONE, need_x = L.nx.kind != NONE;
      const T* mh = need_h ? L.nh.mean + t * G : nullptr;
      const T* ih = need_h ? L.nh.invstd + t * G : nullptr;
      const T* mx = need_x ? L.nx.mean + t * G : nullptr;
      const T* ix = need_x ? L.nx.invstd + t * G : nullptr;
      for (int64_t b = 0; b < B; ++b) {
        const T* d = d_pre + b * G;
#pragma omp simd
        for (int64_t j = lo; j < hi; ++j) sd[j] += d[j];
        if (need_h) {
#pragma omp simd
          for (int64_t j = lo; j < hi; ++j) sh[j] += d[j] * (zh[b * G + j] - mh[j]) * ih[j];
        }
        if (need_x) {
#pragma omp simd
          for (int64_t j = lo; j < hi; ++j) sx[j] += d[j] * (zx[b * G + j] - mx[j]) * ix[j];
        }
      }
      for (int64_t j = lo; j < hi; ++j) L.d_bias[p * G + j] += sd[j];
      if (need_h) {
        column_backward(L.nh, sd, sh, count, G, t, p, lo, hi, a, e, f);
        for (int64_t b = 0; b < B; ++b) {
#pragma omp simd
          for (int64_t j = lo; j < hi; ++j) d_zh[b * G + j] = a[j] * d_pre[b * G + j] + e[j] * zh[b * G + j] + f[j];
          if (padded(b)) zero_row(d_zh + b * G, lo, hi);  // padding is in no statistic
        }
      }
      if (need_x) {  // in place when d_pre is d_zx
        column_backward(L.nx, sd, sx, count, G, t, p, lo, hi, a, e, f);
        for (int64_t b = 0; b < B; ++b) {
#pragma omp simd
          for (int64_t j = lo; j < hi; ++j) d_zx[b * G + j] = a[j] * d_pre[b * G + j] + e[j] * zx[b * G + j] + f[j];
          if (padded(b)) zero_row(d_zx + b * G, lo, hi);
        }
      }
      if (L.x) {
        const T* d_input = need_x ? d_zx : d_pre;
        for (int64_t b = 0; b < B; ++b) project_backward(L, t, b, lo, hi, d_input + b * G, p, false);
      }
    } else {
      for (int64_t b = lo; b < hi; ++b) {
        T* d = d_pre + b * G;
        for (int64_t j = 0; j < G; ++j) L.d_bias[p * G + j] += d[j];
        if (L.nh.kind != NONE) {  // d is d_zx's row: copied out, then normalized in place
          std::memcpy(d_zh + b * G, d, sizeof(T) * G);
          row_backward(L.nh, zh + b * G, d_zh + b * G, B, G, t, b, p);
        } else if (L.nx.kind != NONE) {
          std::memcpy(d_zx + b * G, d, sizeof(T) * G);
        }
        row_backward(L.nx, zx + b * G, d_zx + b * G, B, G, t, b, p);
        if (L.x) project_backward(L, t, b, 0, G, L.nx.kind != NONE ? d_zx + b * G : d, p, true);
      }
    }
  });
  if (L.x && !rows) {
    for (int64_t i = 0; i < B * L.features; ++i) {
      T sum = 0;
      for (int64_t p = 0; p < L.threads; ++p) sum += L.dx_part[p * B * L.features + i];
      L.dx[t * B * L.features + i] = sum;
    }
  }
}

}  // namespace

extern "C" {
void recnorm_forward_f32(const Loop<float>* loop, int64_t t) { forward_step(*loop, t); }
void recnorm_forward_f64(const Loop<double>* loop, int64_t t) { forward_step(*loop, t); }
void recnorm_backward_f32(const Loop<float>* loop, int64_t t) { backward_step(*loop, t); }
void recnorm_backward_f64(const Loop<double>* loop, int64_t t) { backward_step(*loop, t); }
int64_t recnorm_abi_version() { return 1; }
}

// The normalized LSTM recurrence (Cooijmans et al. 2016, Eq. 6-8), forward and backward over
// the whole sequence, on the CPU.
//
// The caller (suite/core/backends/native/loop.py) hands over the buffers; these functions run
// the time loop: the recurrent matrix product of every step, the three normalizations (per-step
// batch norm with batch or population statistics, or layer norm), the gate nonlinearities, the
// cell update, and their hand-derived gradients. No PyTorch headers: plain C++ with OpenMP and
// GCC's vector extensions, built with the system compiler at first use and loaded with ctypes.
//
// Threads split the batch: each owns a block of rows for the whole sequence and runs its own
// rows' product, gates and cell, so that rows stay in its cache and no thread waits on another,
// except where a batch statistic couples the rows: there each thread reduces its rows, and one
// barrier later every thread combines the partial results in the same order (Chan et al.'s
// pairwise update for mean and variance), so all threads hold identical statistics.
//
// Layouts are row-major: z[b * C + j] for example b, unit j. Gates are ordered i, f, g, o
// (torch.nn.LSTM's order). tanh(z) is computed as 2 sigmoid(2z) - 1, so that every gate uses
// one vectorizable exp.

#include <cmath>
#include <cstdint>
#include <cstring>
#include <algorithm>
#include <vector>
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
  const T* w;        // (4H, H) W_h
  const T* bias;     // (4H)
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
  T* zh;          // (steps, B, 4H) recurrent term h_{t-1} W_h^T where norm_h needs it backward, else (B, 4H)
  T* acts;        // (kept steps, B, 4H) i, f, g, o after their nonlinearities
  T* c;           // (kept steps + 1, B, H); without backward two rows used in turn
  T* tcn;         // (kept steps, B, H) tanh(norm_c(c_t))
  T* h;           // (steps + 1, B, H)
  const T* d_out; // (steps, B, H) dL/d output h_t
  const T* d_hn;  // (B, H) dL/dh_T from the final state
  T* dh;          // (B, H) dL/dh_t
  T* dc;          // (B, H) dL/dc_t from step t+1 (already times f_{t+1}); left as dL/dc_{-1}'s part
  T* d_zx;        // (steps, B, 4H), with zx only
  T* d_zh;        // (steps, B, 4H)
  T* d_bias;      // (threads, 4H)
  T* d_w;         // (threads, 4H, H) per-thread accumulators of dW_h
  T* scratch;     // (threads, 8 * 4H) per-thread coefficient rows
  T* partial;     // (threads, 2, 6 * 4H) per-thread partial statistics, two sets (see part())
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

// Rows [lo, hi) of `size` for thread p of n.
inline void share(int64_t size, int p, int n, int64_t& lo, int64_t& hi) {
  lo = size * p / n;
  hi = size * (p + 1) / n;
}

// The recurrent products: a register-blocked kernel over a copy of W_h packed once per
// sequence. W_h is the same at every step, so its packing is paid once, and the kernel keeps a
// block of R rows by W vectors of C in registers while it walks K (measured against torch's
// BLAS on an AVX-512 EPYC VM at the smnist step, 50 x 400 x 100, one thread: 170 against 65 GFLOP/s).
#if defined(__AVX512F__)
constexpr int VECTOR_BYTES = 64;
#elif defined(__AVX__)
constexpr int VECTOR_BYTES = 32;
#else
constexpr int VECTOR_BYTES = 16;
#endif

template <typename T> struct Vec { typedef T type __attribute__((vector_size(VECTOR_BYTES))); };

template <typename T>
struct Panels {  // op(B), K x N, as column panels of 2 vectors (the last may be 1), zero-padded
  static constexpr int V = VECTOR_BYTES / sizeof(T);
  int64_t K = 0, N = 0;
  std::vector<T> data;

  // op(B) = B^T of B (N, K) row-major when `b_rows_are_n`, else B (K, N) row-major.
  void pack(const T* B, int64_t K_, int64_t N_, bool b_rows_are_n) {
    K = K_, N = N_;
    const int64_t padded = (N + V - 1) / V * V;
    data.assign(K * padded, T(0));
    T* out = data.data();
    for (int64_t j0 = 0; j0 < padded; j0 += 2 * V) {
      const int64_t width = std::min<int64_t>(2 * V, padded - j0);
      for (int64_t k = 0; k < K; ++k, out += width)
        for (int64_t j = j0; j < std::min(j0 + width, N); ++j) out[j - j0] = b_rows_are_n ? B[j * K + k] : B[k * N + j];
    }
  }
};

// C[R rows, one panel of W vectors] = A[R rows] op(B)[panel] + beta C; only `columns` of it are
// real. A's element (r, k) is A[r * a_r + k * a_k].
template <typename T, int R, int W>
inline void block(const T* A, int64_t a_r, int64_t a_k, const T* panel, int64_t K, T* C, int64_t ldc,
                  int64_t columns, T beta) {
  using V = typename Vec<T>::type;
  constexpr int L = VECTOR_BYTES / sizeof(T);
  V acc[R][W];
  for (int r = 0; r < R; ++r)
    for (int w = 0; w < W; ++w) acc[r][w] = V{};
  for (int64_t k = 0; k < K; ++k) {
    V b[W];
    for (int w = 0; w < W; ++w) std::memcpy(&b[w], panel + (k * W + w) * L, sizeof(V));
    for (int r = 0; r < R; ++r) {
      const T a = A[r * a_r + k * a_k];
      for (int w = 0; w < W; ++w) acc[r][w] += a * b[w];
    }
  }
  for (int r = 0; r < R; ++r) {
    T out[W * L];
    std::memcpy(out, acc[r], sizeof out);
    T* c = C + r * ldc;
    if (beta == T(0)) {
      for (int64_t j = 0; j < columns; ++j) c[j] = out[j];
    } else {
      for (int64_t j = 0; j < columns; ++j) c[j] = beta * c[j] + out[j];
    }
  }
}

template <typename T, int W>
void rows_of_panel(int64_t rows, const T* A, int64_t a_r, int64_t a_k, const T* panel, int64_t K, T* C, int64_t ldc,
                   int64_t columns, T beta) {
  constexpr int R = 6;  // 6 x 2 accumulators of 16 registers (AVX2) leave room for the b row and a
  int64_t r = 0;
  for (; r + R <= rows; r += R) block<T, R, W>(A + r * a_r, a_r, a_k, panel, K, C + r * ldc, ldc, columns, beta);
  const T* a = A + r * a_r;
  T* c = C + r * ldc;
  switch (rows - r) {
    case 5: block<T, 5, W>(a, a_r, a_k, panel, K, c, ldc, columns, beta); break;
    case 4: block<T, 4, W>(a, a_r, a_k, panel, K, c, ldc, columns, beta); break;
    case 3: block<T, 3, W>(a, a_r, a_k, panel, K, c, ldc, columns, beta); break;
    case 2: block<T, 2, W>(a, a_r, a_k, panel, K, c, ldc, columns, beta); break;
    case 1: block<T, 1, W>(a, a_r, a_k, panel, K, c, ldc, columns, beta); break;
    default: break;
  }
}

// C (rows x N, row-major) = A (rows x K; element (r, k) at A[r * a_r + k * a_k]) op(B) + beta C.
template <typename T>
void product(const Panels<T>& B, int64_t rows, const T* A, int64_t a_r, int64_t a_k, T beta, T* C) {
  constexpr int64_t V = Panels<T>::V;
  const T* panel = B.data.data();
  for (int64_t j0 = 0; j0 < B.N; j0 += 2 * V) {
    const int64_t columns = std::min<int64_t>(2 * V, B.N - j0);
    if (columns > V) rows_of_panel<T, 2>(rows, A, a_r, a_k, panel, B.K, C + j0, B.N, columns, beta);
    else rows_of_panel<T, 1>(rows, A, a_r, a_k, panel, B.K, C + j0, B.N, columns, beta);
    panel += B.K * (columns > V ? 2 * V : V);
  }
}

inline bool is_batch(int64_t kind) { return kind == BN_BATCH; }

template <typename T> inline T real_rows(const T* mask, int64_t lo, int64_t hi) {
  if (!mask) return T(hi - lo);
  T n = 0;
  for (int64_t b = lo; b < hi; ++b) n += mask[b];
  return n;
}

// Mean and sum of squared deviations of units of rows [lo, hi) of a (B, C) block, real rows only.
template <typename T>
void local_moments(const T* z, int64_t C, int64_t lo, int64_t hi, const T* mask, T* mean, T* m2) {
  for (int64_t j = 0; j < C; ++j) mean[j] = T(0), m2[j] = T(0);
  const T n = real_rows(mask, lo, hi);
  if (n == T(0)) return;
  for (int64_t b = lo; b < hi; ++b) {
    const T* row = z + b * C;
    const T m = mask ? mask[b] : T(1);
#pragma omp simd
    for (int64_t j = 0; j < C; ++j) mean[j] += m * row[j];
  }
  for (int64_t j = 0; j < C; ++j) mean[j] /= n;
  for (int64_t b = lo; b < hi; ++b) {  // two passes: the one-pass formula loses digits
    const T* row = z + b * C;
    const T m = mask ? mask[b] : T(1);
#pragma omp simd
    for (int64_t j = 0; j < C; ++j) m2[j] += m * (row[j] - mean[j]) * (row[j] - mean[j]);
  }
}

// Batch statistics, first half: thread p reduces its rows of a (B, C) block into `part` (2C:
// mean, m2). A barrier later `column_affine` combines all threads' parts.
template <typename T>
void reduce_rows(const Norm<T>& n, const T* z, int64_t B, int64_t C, int p, int threads, T* part, const T* mask) {
  if (n.kind != BN_BATCH) return;
  int64_t lo, hi;
  share(B, p, threads, lo, hi);
  local_moments(z, C, lo, hi, mask, part, part + C);
}

// A column norm (batch norm or none) of a (B, C) block as y = a z + k per unit. Batch
// statistics: every thread combines all threads' parts (`reduce_rows`) the same way, and
// thread 0 writes the step's mean, invstd and variance.
template <typename T>
void column_affine(const Norm<T>& n, int64_t B, int64_t C, int64_t t, int threads, int p, T* const* parts,
                   const T* mask, T count, T* a, T* k) {
  if (n.kind == NONE) {
    for (int64_t j = 0; j < C; ++j) a[j] = T(1), k[j] = T(0);
    return;
  }
  T* mean = n.mean + t * C;
  T* invstd = n.invstd + t * C;
  if (n.kind == BN_BATCH) {
    // Chan et al.: with n = n_A + n_B, mean = mean_A + (mean_B - mean_A) n_B / n and
    // m2 = m2_A + m2_B + (mean_B - mean_A)^2 n_A n_B / n, thread blocks taken in order.
    T* mu = a;  // a and k hold the combined mean and m2 until the coefficients replace them
    T* m2 = k;
    T seen = 0;
    for (int q = 0; q < threads; ++q) {
      int64_t lo, hi;
      share(B, q, threads, lo, hi);
      const T nq = real_rows(mask, lo, hi);
      if (nq == T(0)) continue;
      const T* pm = parts[q];
      const T* pm2 = parts[q] + C;
      const T total = seen + nq;
      if (seen == T(0)) {
        for (int64_t j = 0; j < C; ++j) mu[j] = pm[j], m2[j] = pm2[j];
      } else {
        const T wq = nq / total, cross = seen * nq / total;
#pragma omp simd
        for (int64_t j = 0; j < C; ++j) {
          const T delta = pm[j] - mu[j];
          mu[j] += delta * wq;
          m2[j] += pm2[j] + delta * delta * cross;
        }
      }
      seen = total;
    }
    if (seen == T(0)) {  // a step with no real example: zeros, as the reference
      for (int64_t j = 0; j < C; ++j) mu[j] = T(0), m2[j] = T(0);
    }
    const T per = T(1) / std::max(count, T(1));
    for (int64_t j = 0; j < C; ++j) {
      const T m = mu[j], v = m2[j] * per, is = T(1) / std::sqrt(v + T(n.eps));
      if (p == 0) mean[j] = m, n.var[t * C + j] = v, invstd[j] = is;
      a[j] = n.gamma[j] * is;
      k[j] = (n.beta ? n.beta[j] : T(0)) - a[j] * m;
    }
    return;
  }
  for (int64_t j = 0; j < C; ++j) {
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

// Gate pre-activations -> activations of one row; the g block gets tanh.
template <typename T>
inline void activate(const T* zx, const T* zh, const T* ax, const T* ah, const T* k, T* out, int64_t H) {
  for (int q = 0; q < 4; ++q) {
    const T m = q == 2 ? T(2) : T(1);  // tanh(z) = 2 sigmoid(2z) - 1
#pragma omp simd
    for (int64_t j = q * H; j < (q + 1) * H; ++j)
      out[j] = m * sigmoid(m * (ax[j] * zx[j] + ah[j] * zh[j] + k[j])) - (m - T(1));
  }
}

// z_step[b, :] = x_t[b, :] W_x^T for rows [b0, b1).
template <typename T>
void project(const Loop<T>& L, int64_t t, int64_t b0, int64_t b1) {
  const int64_t B = L.batch, G = 4 * L.hidden, F = L.features;
  const T* x = L.x + t * B * F;
  for (int64_t b = b0; b < b1; ++b) {
    T* z = L.z_step + b * G;
    std::fill(z, z + G, T(0));
    for (int64_t f = 0; f < F; ++f) {
      const T xf = x[b * F + f];
      const T* w = L.wx_t + f * G;
#pragma omp simd
      for (int64_t j = 0; j < G; ++j) z[j] += xf * w[j];
    }
  }
}

// Gradient of row b's input term (d): into thread p's dW_x^T and into dx_t[b].
template <typename T>
void project_backward(const Loop<T>& L, int64_t t, int64_t b, const T* d, int p) {
  const int64_t B = L.batch, G = 4 * L.hidden, F = L.features;
  const T* x = L.x + t * B * F;
  for (int64_t f = 0; f < F; ++f) {
    const T xf = x[b * F + f];
    T* dw = L.d_wx + (p * F + f) * G;
    const T* w = L.wx_t + f * G;
    T sum = 0;
#pragma omp simd reduction(+ : sum)
    for (int64_t j = 0; j < G; ++j) {
      dw[j] += d[j] * xf;
      sum += d[j] * w[j];
    }
    L.dx[(t * B + b) * F + f] = sum;
  }
}

// Thread p's partial statistics of step t, at `offset` within its set. Steps alternate between two
// sets: a thread may already reduce step t+1 while a slower one still combines step t's parts, but
// never step t+2, since the barrier of step t+1 lies between.
template <typename T> inline T* part(const Loop<T>& L, int p, int64_t t, int64_t offset) {
  return L.partial + (p * 2 + t % 2) * 6 * 4 * L.hidden + offset;
}

template <typename T>
void forward_step(const Loop<T>& L, const Panels<T>& w_t, Panels<T>&, int64_t t, int p, int threads, int64_t lo,
                  int64_t hi) {
  const int64_t B = L.batch, H = L.hidden, G = 4 * H;
  const int64_t slot = L.kept ? t : 0;
  const T* zx = L.x ? L.z_step : L.zx + t * B * G;
  T* zh = L.zh + (L.kept && L.nh.kind != NONE ? t : 0) * B * G;
  T* acts = L.acts + slot * B * G;
  const T* c_prev = L.c + (L.kept ? t : t % 2) * B * H;
  T* c_next = L.c + (L.kept ? t + 1 : (t + 1) % 2) * B * H;
  T* tcn = L.tcn + slot * B * H;
  T* h = L.h + (t + 1) * B * H;
  const T* h_prev = L.h + t * B * H;
  const T* mask = L.mask ? L.mask + t * B : nullptr;
  const T count = L.count ? L.count[t] : T(B);
  const bool rows = L.nx.kind == LAYER || L.nh.kind == LAYER;
  T* ax = L.scratch + p * 8 * G;  // this thread's coefficient rows
  T* ah = ax + G;
  T* k = ah + G;
  T* kh = k + G;
  T* ac = kh + G;
  T* kc = ac + H;

  product(w_t, hi - lo, h_prev + lo * H, H, 1, T(0), zh + lo * G);
  if (L.x) project(L, t, lo, hi);
  if (!rows) {
    T* parts_x[64];
    T* parts_h[64];
    for (int q = 0; q < threads; ++q) parts_x[q] = part(L, q, t, 0), parts_h[q] = part(L, q, t, 2 * G);
    reduce_rows(L.nx, zx, B, G, p, threads, parts_x[p], mask);
    reduce_rows(L.nh, zh, B, G, p, threads, parts_h[p], mask);
    if (is_batch(L.nx.kind) || is_batch(L.nh.kind)) {
#pragma omp barrier
    }
    column_affine(L.nx, B, G, t, threads, p, parts_x, mask, count, ax, k);
    column_affine(L.nh, B, G, t, threads, p, parts_h, mask, count, ah, kh);
    for (int64_t j = 0; j < G; ++j) k[j] += kh[j] + L.bias[j];
    for (int64_t b = lo; b < hi; ++b) activate(zx + b * G, zh + b * G, ax, ah, k, acts + b * G, H);
  } else {
    for (int64_t b = lo; b < hi; ++b) {
      row_affine(L.nx, zx + b * G, B, G, t, b, ax, k);
      row_affine(L.nh, zh + b * G, B, G, t, b, ah, kh);
      for (int64_t j = 0; j < G; ++j) k[j] += kh[j] + L.bias[j];
      activate(zx + b * G, zh + b * G, ax, ah, k, acts + b * G, H);
    }
  }
  for (int64_t b = lo; b < hi; ++b) {
    const T* a = acts + b * G;
    T* cn = c_next + b * H;
    const T* cp = c_prev + b * H;
#pragma omp simd
    for (int64_t j = 0; j < H; ++j) cn[j] = a[H + j] * cp[j] + a[j] * a[2 * H + j];
  }
  const bool cell_rows = L.nc.kind == LAYER;
  if (!cell_rows) {
    T* parts_c[64];
    for (int q = 0; q < threads; ++q) parts_c[q] = part(L, q, t, 4 * G);
    reduce_rows(L.nc, c_next, B, H, p, threads, parts_c[p], mask);
    if (is_batch(L.nc.kind)) {
#pragma omp barrier
    }
    column_affine(L.nc, B, H, t, threads, p, parts_c, mask, count, ac, kc);
  }
  for (int64_t b = lo; b < hi; ++b) {
    const T* a = acts + b * G;
    T* cn = c_next + b * H;
    if (cell_rows) row_affine(L.nc, cn, B, H, t, b, ac, kc);
#pragma omp simd
    for (int64_t j = 0; j < H; ++j) {
      T v = tanh_(ac[j] * cn[j] + kc[j]);
      tcn[b * H + j] = v;
      h[b * H + j] = a[3 * H + j] * v;
    }
    if (mask && mask[b] == T(0)) {  // a padded step leaves the example's state as it was
      std::memcpy(cn, c_prev + b * H, sizeof(T) * H);
      std::memcpy(h + b * H, h_prev + b * H, sizeof(T) * H);
    }
  }
}

// Batch-norm backward coefficients of C units: dz = a dy + e z + f, from the batch sums of dy
// and dy * xhat; adds this thread's own sums to its d_gamma, d_beta.
template <typename T>
void column_backward(const Norm<T>& n, const T* sum_dy, const T* sum_dy_xhat, const T* own_dy,
                     const T* own_dy_xhat, T count, int64_t C, int64_t t, int p, T* a, T* e, T* f) {
  if (n.kind == NONE) {
    for (int64_t j = 0; j < C; ++j) a[j] = T(1), e[j] = T(0), f[j] = T(0);
    return;
  }
  const T* mean = n.mean + t * C;
  const T* invstd = n.invstd + t * C;
  const T per = T(1) / std::max(count, T(1));
  for (int64_t j = 0; j < C; ++j) {
    if (n.d_gamma) n.d_gamma[p * C + j] += own_dy_xhat[j];
    if (n.d_beta) n.d_beta[p * C + j] += own_dy[j];
    a[j] = n.gamma[j] * invstd[j];
    if (n.kind == BN_BATCH) {
      // dz = a (dy - mean(dy) - xhat mean(dy xhat)), xhat = (z - mean) invstd
      T m1 = sum_dy[j] * per, m2 = sum_dy_xhat[j] * per;
      e[j] = -a[j] * invstd[j] * m2;
      f[j] = -a[j] * m1 - e[j] * mean[j];
    } else {
      e[j] = T(0), f[j] = T(0);
    }
  }
}

// Sum over threads of a C-wide partial at `offset`, into out (same order on every thread).
template <typename T>
void total(const Loop<T>& L, int64_t t, int threads, int64_t offset, int64_t C, T* out) {
  std::memcpy(out, part(L, 0, t, offset), sizeof(T) * C);
  for (int q = 1; q < threads; ++q) {
    const T* pq = part(L, q, t, offset);
#pragma omp simd
    for (int64_t j = 0; j < C; ++j) out[j] += pq[j];
  }
}

// Layer-norm backward of one row, in place on dy (C units) -> dz; accumulates d_gamma, d_beta.
template <typename T>
void row_backward(const Norm<T>& n, const T* z, T* dy, int64_t B, int64_t C, int64_t t, int64_t b, int p) {
  if (n.kind == NONE) return;
  const T mean = n.mean[t * B + b], invstd = n.invstd[t * B + b];
  const T* gamma = n.gamma;  // a local: GCC vectorizes no reduction that reads through n
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
    T g = dy[j] * gamma[j];
    s1 += g;
    s2 += g * (z[j] - mean) * invstd;
  }
  s1 /= T(C);
  s2 /= T(C);
#pragma omp simd
  for (int64_t j = 0; j < C; ++j) dy[j] = invstd * (dy[j] * gamma[j] - s1 - (z[j] - mean) * invstd * s2);
}

template <typename T>
void backward_step(const Loop<T>& L, const Panels<T>& w, Panels<T>& h_rows, int64_t t, int p, int threads, int64_t lo,
                   int64_t hi) {
  const int64_t B = L.batch, H = L.hidden, G = 4 * H;
  const T* zx = L.x ? L.z_step : L.zx + t * B * G;
  const T* zh = L.zh + (L.nh.kind != NONE ? t : 0) * B * G;
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
  T* coef = L.scratch + p * 8 * G;
  auto padded = [&](int64_t b) { return mask && mask[b] == T(0); };

  // dL/dh_t of this thread's rows: from the output, and from step t+1 through W_h.
  std::memcpy(dh + lo * H, L.d_out + (t * B + lo) * H, sizeof(T) * (hi - lo) * H);
  if (t == L.steps - 1) {
    for (int64_t i = lo * H; i < hi * H; ++i) dh[i] += L.d_hn[i];
  } else {
    product(w, hi - lo, L.d_zh + ((t + 1) * B + lo) * G, G, 1, T(1), dh + lo * H);
  }
  if (mask) {  // dL/dh of a padded step goes on to the step before (the state was held)
    for (int64_t b = lo; b < hi; ++b) {
      T* carry = L.dh_carry + b * H;
      T* d = dh + b * H;
      if (mask[b] != T(0)) {
        for (int64_t j = 0; j < H; ++j) d[j] += carry[j], carry[j] = T(0);
      } else {
        for (int64_t j = 0; j < H; ++j) carry[j] += d[j], d[j] = T(0);
      }
    }
  }

  // Cell: dL/d norm_c(c_t) through h_t = o tanh(norm_c(c_t)), its norm's backward, then the
  // four gate gradients (a padded row's are zero, and its dL/dc passes on untouched).
  auto d_norm_c = [&](int64_t b, int64_t j) {
    T v = tcn[b * H + j];
    return dh[b * H + j] * acts[b * G + 3 * H + j] * (T(1) - v * v);
  };
  auto gates_of_row = [&](int64_t b, const T* d_cell) {
    const T* a = acts + b * G;
    T* d = d_pre + b * G;
    if (padded(b)) {
      std::fill(d, d + G, T(0));
      return;
    }
#pragma omp simd
    for (int64_t j = 0; j < H; ++j) {
      T i = a[j], f = a[H + j], g = a[2 * H + j], o = a[3 * H + j];
      T dct = dc[b * H + j] + d_cell[j];
      d[j] = dct * g * i * (T(1) - i);
      d[H + j] = dct * c_prev[b * H + j] * f * (T(1) - f);
      d[2 * H + j] = dct * i * (T(1) - g * g);
      d[3 * H + j] = dh[b * H + j] * tcn[b * H + j] * o * (T(1) - o);
      dc[b * H + j] = dct * f;
    }
  };
  T* d_cell = coef + 7 * G;  // one row of dL/dc_t
  if (!cell_rows) {
    T* ac = coef;
    T* ec = ac + H;
    T* fc = ec + H;
    T* s1 = fc + H;
    T* s2 = s1 + H;
    if (L.nc.kind != NONE) {
      T* own1 = part(L, p, t, 0);
      T* own2 = own1 + H;
      std::fill(own1, own1 + 2 * H, T(0));
      const T* mean = L.nc.mean + t * H;
      const T* invstd = L.nc.invstd + t * H;
      for (int64_t b = lo; b < hi; ++b) {
#pragma omp simd
        for (int64_t j = 0; j < H; ++j) {
          T d = d_norm_c(b, j);
          own1[j] += d;
          own2[j] += d * (c_now[b * H + j] - mean[j]) * invstd[j];
        }
      }
      if (is_batch(L.nc.kind)) {
#pragma omp barrier
        total(L, t, threads, 0, H, s1);
        total(L, t, threads, H, H, s2);
      }
      column_backward(L.nc, s1, s2, own1, own2, count, H, t, p, ac, ec, fc);
    } else {
      column_backward(L.nc, s1, s2, s1, s2, count, H, t, p, ac, ec, fc);
    }
    for (int64_t b = lo; b < hi; ++b) {
#pragma omp simd
      for (int64_t j = 0; j < H; ++j) d_cell[j] = ac[j] * d_norm_c(b, j) + ec[j] * c_now[b * H + j] + fc[j];
      gates_of_row(b, d_cell);
    }
  } else {
    for (int64_t b = lo; b < hi; ++b) {
#pragma omp simd
      for (int64_t j = 0; j < H; ++j) d_cell[j] = d_norm_c(b, j);
      row_backward(L.nc, c_now + b * H, d_cell, B, H, t, b, p);
      gates_of_row(b, d_cell);
    }
  }

  // Gates: bias gradient, then norm_h's and norm_x's backward on the same gate gradient.
  if (L.x && L.nx.kind != NONE) project(L, t, lo, hi);  // the input term again, for norm_x's backward
  T* d_bias = L.d_bias + p * G;
  if (!rows) {
    const bool need_h = L.nh.kind != NONE, need_x = L.nx.kind != NONE;
    T* own_d = part(L, p, t, 2 * H);
    T* own_h = own_d + G;
    T* own_x = own_h + G;
    std::fill(own_d, own_d + 3 * G, T(0));
    const T* mh = need_h ? L.nh.mean + t * G : nullptr;
    const T* ih = need_h ? L.nh.invstd + t * G : nullptr;
    const T* mx = need_x ? L.nx.mean + t * G : nullptr;
    const T* ix = need_x ? L.nx.invstd + t * G : nullptr;
    for (int64_t b = lo; b < hi; ++b) {
      const T* d = d_pre + b * G;
#pragma omp simd
      for (int64_t j = 0; j < G; ++j) own_d[j] += d[j];
      if (need_h) {
#pragma omp simd
        for (int64_t j = 0; j < G; ++j) own_h[j] += d[j] * (zh[b * G + j] - mh[j]) * ih[j];
      }
      if (need_x) {
#pragma omp simd
        for (int64_t j = 0; j < G; ++j) own_x[j] += d[j] * (zx[b * G + j] - mx[j]) * ix[j];
      }
    }
    for (int64_t j = 0; j < G; ++j) d_bias[j] += own_d[j];
    T* sd = coef;
    T* sh = sd + G;
    T* sx = sh + G;
    T* a = sx + G;
    T* e = a + G;
    T* f = e + G;
    if (is_batch(L.nh.kind) || is_batch(L.nx.kind)) {
#pragma omp barrier
      total(L, t, threads, 2 * H, G, sd);
      if (need_h) total(L, t, threads, 2 * H + G, G, sh);
      if (need_x) total(L, t, threads, 2 * H + 2 * G, G, sx);
    }
    if (need_h) {
      column_backward(L.nh, sd, sh, own_d, own_h, count, G, t, p, a, e, f);
      for (int64_t b = lo; b < hi; ++b) {
#pragma omp simd
        for (int64_t j = 0; j < G; ++j) d_zh[b * G + j] = a[j] * d_pre[b * G + j] + e[j] * zh[b * G + j] + f[j];
        if (padded(b)) std::fill(d_zh + b * G, d_zh + (b + 1) * G, T(0));  // padding is in no statistic
      }
    }
    if (need_x) {  // in place when d_pre is d_zx
      column_backward(L.nx, sd, sx, own_d, own_x, count, G, t, p, a, e, f);
      for (int64_t b = lo; b < hi; ++b) {
#pragma omp simd
        for (int64_t j = 0; j < G; ++j) d_zx[b * G + j] = a[j] * d_pre[b * G + j] + e[j] * zx[b * G + j] + f[j];
        if (padded(b)) std::fill(d_zx + b * G, d_zx + (b + 1) * G, T(0));
      }
    }
    if (L.x) {
      for (int64_t b = lo; b < hi; ++b) project_backward(L, t, b, (need_x ? d_zx : d_pre) + b * G, p);
    }
  } else {
    for (int64_t b = lo; b < hi; ++b) {
      T* d = d_pre + b * G;
      for (int64_t j = 0; j < G; ++j) d_bias[j] += d[j];
      if (L.nh.kind != NONE) {  // d is d_zx's row: copied out, then normalized in place
        std::memcpy(d_zh + b * G, d, sizeof(T) * G);
        row_backward(L.nh, zh + b * G, d_zh + b * G, B, G, t, b, p);
      } else if (L.nx.kind != NONE) {
        std::memcpy(d_zx + b * G, d, sizeof(T) * G);
      }
      row_backward(L.nx, zx + b * G, d_zx + b * G, B, G, t, b, p);
      if (L.x) project_backward(L, t, b, L.nx.kind != NONE ? d_zx + b * G : d, p);
    }
  }

  // This thread's part of dW_h += d_zh_t^T h_{t-1}, over its rows.
  h_rows.pack(L.h + (t * B + lo) * H, hi - lo, H, false);
  product(h_rows, G, d_zh + lo * G, 1, G, T(1), L.d_w + p * G * H);
}

// The whole sequence on L.threads threads, each owning a block of rows; the recurrent product's
// right factor is W_h^T forward, W_h backward.
template <typename T, typename Step>
void sequence(const Loop<T>& L, bool reverse, Step step) {
  const int threads = int(std::max<int64_t>(1, std::min<int64_t>({L.threads, L.batch, 64})));
  const int64_t H = L.hidden, G = 4 * H;
  Panels<T> right;
  if (reverse) right.pack(L.w, G, H, false);
  else right.pack(L.w, H, G, true);
  auto body = [&](int p, int n) {
    Panels<T> own;  // per-step panels of this thread
    int64_t lo, hi;
    share(L.batch, p, n, lo, hi);
    for (int64_t i = 0; i < L.steps; ++i) step(L, right, own, reverse ? L.steps - 1 - i : i, p, n, lo, hi);
  };
  if (threads == 1) {
    body(0, 1);
    return;
  }
#pragma omp parallel num_threads(threads)
  body(omp_get_thread_num(), omp_get_num_threads());
}

}  // namespace

extern "C" {
void recnorm_forward_f32(const Loop<float>* loop) { sequence(*loop, false, forward_step<float>); }
void recnorm_forward_f64(const Loop<double>* loop) { sequence(*loop, false, forward_step<double>); }
void recnorm_backward_f32(const Loop<float>* loop) { sequence(*loop, true, backward_step<float>); }
void recnorm_backward_f64(const Loop<double>* loop) { sequence(*loop, true, backward_step<double>); }
int64_t recnorm_abi_version() { return 2; }
}

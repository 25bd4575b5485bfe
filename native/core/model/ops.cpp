#include "ops.hpp"

#include <algorithm>
#include <cmath>
#include <cstring>

#include "../packed_gemm.hpp"
#include "../thread_pool.hpp"

#if defined(__x86_64__) || defined(_M_X64)
#include <immintrin.h>
#define LOWBIT_X86 1
#define AVX2_FN __attribute__((target("avx2,fma,f16c")))
#define AVX2_INLINE __attribute__((target("avx2,fma,f16c"), always_inline)) inline
#else
#define LOWBIT_X86 0
#endif

namespace lowbit {
namespace model {
namespace cpu {

bool use_avx2() { return active_simd() != SimdLevel::Scalar; }

namespace {
thread_local bool t_serial = false;
}

SerialScope::SerialScope() : previous_(t_serial) { t_serial = true; }
SerialScope::~SerialScope() { t_serial = previous_; }

void parallel(int64_t n, int64_t grain, const std::function<void(int64_t, int64_t)>& fn) {
  if (n <= 0) return;
  if (t_serial) fn(0, n);
  else global_pool()->parallel_for(n, grain, fn);
}

namespace {
int64_t round_up(int64_t v, int64_t m) { return (v + m - 1) / m * m; }

float silu_mul(float g, float u) { return g / (1.0f + std::exp(-g)) * u; }
}  // namespace

// ---------------------------------------------------------------- AVX2 helpers
#if LOWBIT_X86
namespace {

// e^x for x in f32 lanes: range reduction x = n·ln2 + r, then a degree-7 polynomial for e^r (the
// Cephes coefficients), relative error about 1e-7. Inputs are clamped to [-87, 88] so 2^n stays normal.
AVX2_INLINE __m256 exp256(__m256 x) {
  x = _mm256_min_ps(_mm256_max_ps(x, _mm256_set1_ps(-87.0f)), _mm256_set1_ps(88.0f));
  const __m256 n = _mm256_floor_ps(_mm256_fmadd_ps(x, _mm256_set1_ps(1.44269504088896341f), _mm256_set1_ps(0.5f)));
  __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), x);
  r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.12194440e-4f), r);
  __m256 p = _mm256_set1_ps(1.9875691500e-4f);
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.3981999507e-3f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(8.3334519073e-3f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(4.1665795894e-2f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.6666665459e-1f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(5.0000001201e-1f));
  p = _mm256_fmadd_ps(p, _mm256_mul_ps(r, r), _mm256_add_ps(r, _mm256_set1_ps(1.0f)));
  const __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
  return _mm256_mul_ps(p, _mm256_castsi256_ps(e));
}

AVX2_INLINE float hsum256(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

AVX2_INLINE float hmax256(__m256 v) {
  __m128 s = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_max_ps(s, _mm_movehl_ps(s, s));
  s = _mm_max_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

// Loads the 16 weights of panel row k as two f32 vectors.
template <DType D>
AVX2_INLINE void load16(const void* panel, int64_t k, __m256& w0, __m256& w1) {
  if constexpr (D == DType::F32) {
    const float* p = static_cast<const float*>(panel) + k * 16;
    w0 = _mm256_loadu_ps(p);
    w1 = _mm256_loadu_ps(p + 8);
  } else {
    const uint16_t* p = static_cast<const uint16_t*>(panel) + k * 16;
    const __m128i a = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
    const __m128i b = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p + 8));
    if constexpr (D == DType::F16) {
      w0 = _mm256_cvtph_ps(a);
      w1 = _mm256_cvtph_ps(b);
    } else {  // bf16: the high half of an f32
      w0 = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(a), 16));
      w1 = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(b), 16));
    }
  }
}

// Up to 6 rows of X times one panel: 12 named accumulators of 8 lanes stay in registers over the
// whole K loop (arrays of vectors get spilled by the compiler). Rows past `rows` repeat the last row
// and are not stored.
template <DType D>
AVX2_FN void panel_kernel(const float* X, int64_t rows, int64_t K, const void* panel, float* Y, int64_t ldy,
                          int64_t cols) {
  const float* x0 = X;
  const float* x1 = X + std::min<int64_t>(1, rows - 1) * K;
  const float* x2 = X + std::min<int64_t>(2, rows - 1) * K;
  const float* x3 = X + std::min<int64_t>(3, rows - 1) * K;
  const float* x4 = X + std::min<int64_t>(4, rows - 1) * K;
  const float* x5 = X + std::min<int64_t>(5, rows - 1) * K;
  __m256 a00 = _mm256_setzero_ps(), a01 = a00, a10 = a00, a11 = a00, a20 = a00, a21 = a00;
  __m256 a30 = a00, a31 = a00, a40 = a00, a41 = a00, a50 = a00, a51 = a00;
  for (int64_t k = 0; k < K; ++k) {
    __m256 w0, w1;
    load16<D>(panel, k, w0, w1);
    __m256 x = _mm256_broadcast_ss(x0 + k);
    a00 = _mm256_fmadd_ps(x, w0, a00);
    a01 = _mm256_fmadd_ps(x, w1, a01);
    x = _mm256_broadcast_ss(x1 + k);
    a10 = _mm256_fmadd_ps(x, w0, a10);
    a11 = _mm256_fmadd_ps(x, w1, a11);
    x = _mm256_broadcast_ss(x2 + k);
    a20 = _mm256_fmadd_ps(x, w0, a20);
    a21 = _mm256_fmadd_ps(x, w1, a21);
    x = _mm256_broadcast_ss(x3 + k);
    a30 = _mm256_fmadd_ps(x, w0, a30);
    a31 = _mm256_fmadd_ps(x, w1, a31);
    x = _mm256_broadcast_ss(x4 + k);
    a40 = _mm256_fmadd_ps(x, w0, a40);
    a41 = _mm256_fmadd_ps(x, w1, a41);
    x = _mm256_broadcast_ss(x5 + k);
    a50 = _mm256_fmadd_ps(x, w0, a50);
    a51 = _mm256_fmadd_ps(x, w1, a51);
  }
  const __m256 acc[6][2] = {{a00, a01}, {a10, a11}, {a20, a21}, {a30, a31}, {a40, a41}, {a50, a51}};
  for (int64_t r = 0; r < rows; ++r) {
    if (cols == 16) {
      _mm256_storeu_ps(Y + r * ldy, acc[r][0]);
      _mm256_storeu_ps(Y + r * ldy + 8, acc[r][1]);
    } else {
      alignas(32) float tmp[16];
      _mm256_store_ps(tmp, acc[r][0]);
      _mm256_store_ps(tmp + 8, acc[r][1]);
      std::memcpy(Y + r * ldy, tmp, (size_t)cols * 4);
    }
  }
}

// One row of X times one panel (decode, M = 1): the same operations in the same order as row 0 of
// panel_kernel (so the same bits), without the five unused rows' FMAs, and with the panel prefetched
// 4 KiB ahead into L2. panel_kernel on one row read a DRAM-resident panel at ~47% of a streaming
// read; this at 88-95% (2 threads, 32000 x 2048 f32 rotated past the L3, Xeon 2026-12-01: bench
// note in RESULTS.md, issue 13), which is most of a decode step's time when the head is tied f32.
template <DType D>
AVX2_FN void panel_row1(const float* x, int64_t K, const void* panel, float* y, int64_t cols) {
  constexpr int64_t kStep = 16 * (D == DType::F32 ? 4 : 2);  // bytes of one k
  const char* bytes = static_cast<const char*>(panel);
  __m256 a0 = _mm256_setzero_ps(), a1 = a0;
  for (int64_t k = 0; k < K; ++k) {
    if (k % 4 == 0)  // prefetching never faults, so reaching past the panel's end is harmless
      for (int64_t off = 0; off < 4 * kStep; off += 64) _mm_prefetch(bytes + k * kStep + 4096 + off, _MM_HINT_T1);
    __m256 w0, w1;
    load16<D>(panel, k, w0, w1);
    const __m256 xk = _mm256_broadcast_ss(x + k);
    a0 = _mm256_fmadd_ps(xk, w0, a0);
    a1 = _mm256_fmadd_ps(xk, w1, a1);
  }
  if (cols == 16) {
    _mm256_storeu_ps(y, a0);
    _mm256_storeu_ps(y + 8, a1);
  } else {
    alignas(32) float tmp[16];
    _mm256_store_ps(tmp, a0);
    _mm256_store_ps(tmp + 8, a1);
    std::memcpy(y, tmp, (size_t)cols * 4);
  }
}

template <DType D>
AVX2_FN void panel_rows_avx2(const float* X, int64_t rows, int64_t K, const void* panel, float* Y, int64_t ldy,
                             int64_t cols) {
  constexpr int64_t kRows = 6;  // 12 accumulators + 2 weights + 1 broadcast of the 16 ymm registers
  for (int64_t r = 0; r < rows; r += kRows) {
    if (rows - r == 1) panel_row1<D>(X + r * K, K, panel, Y + r * ldy, cols);
    else panel_kernel<D>(X + r * K, std::min(kRows, rows - r), K, panel, Y + r * ldy, ldy, cols);
  }
}

AVX2_FN void swiglu_avx2(const float* gate, const float* up, int64_t n, float* out) {
  int64_t i = 0;
  const __m256 one = _mm256_set1_ps(1.0f);
  for (; i + 8 <= n; i += 8) {
    const __m256 g = _mm256_loadu_ps(gate + i);
    const __m256 e = exp256(_mm256_sub_ps(_mm256_setzero_ps(), g));
    _mm256_storeu_ps(out + i, _mm256_mul_ps(_mm256_div_ps(g, _mm256_add_ps(one, e)), _mm256_loadu_ps(up + i)));
  }
  for (; i < n; ++i) out[i] = silu_mul(gate[i], up[i]);
}

AVX2_FN float row_nll_avx2(const float* x, int64_t n, int32_t target) {
  __m256 vmax = _mm256_set1_ps(-INFINITY);
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) vmax = _mm256_max_ps(vmax, _mm256_loadu_ps(x + i));
  float m = hmax256(vmax);
  for (; i < n; ++i) m = std::max(m, x[i]);
  const __m256 vm = _mm256_set1_ps(m);
  __m256 vsum = _mm256_setzero_ps();
  for (i = 0; i + 8 <= n; i += 8) vsum = _mm256_add_ps(vsum, exp256(_mm256_sub_ps(_mm256_loadu_ps(x + i), vm)));
  float sum = hsum256(vsum);
  for (; i < n; ++i) sum += std::exp(x[i] - m);
  return m + std::log(sum) - x[target];
}

// One query against keys 0..len-1 of one kv head: scores, softmax, weighted values.
// s: scratch of round_up(len, 32) floats. Keys go 32 at a time (four independent accumulator
// chains hide the FMA latency); lanes past len are computed on the cache's padding and dropped.
AVX2_FN void attend_one_avx2(const float* q, int64_t hd, const float* kt, const float* vt, int64_t cap, int64_t len,
                             float scale, float* s, float* out) {
  const int64_t len32 = round_up(len, 32);
  const __m256 vscale = _mm256_set1_ps(scale);
  for (int64_t j = 0; j < len32; j += 32) {
    __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
    const float* k = kt + j;
    for (int64_t d = 0; d < hd; ++d, k += cap) {
      const __m256 qd = _mm256_set1_ps(q[d]);
      a0 = _mm256_fmadd_ps(qd, _mm256_loadu_ps(k), a0);
      a1 = _mm256_fmadd_ps(qd, _mm256_loadu_ps(k + 8), a1);
      a2 = _mm256_fmadd_ps(qd, _mm256_loadu_ps(k + 16), a2);
      a3 = _mm256_fmadd_ps(qd, _mm256_loadu_ps(k + 24), a3);
    }
    _mm256_storeu_ps(s + j, _mm256_mul_ps(a0, vscale));
    _mm256_storeu_ps(s + j + 8, _mm256_mul_ps(a1, vscale));
    _mm256_storeu_ps(s + j + 16, _mm256_mul_ps(a2, vscale));
    _mm256_storeu_ps(s + j + 24, _mm256_mul_ps(a3, vscale));
  }
  for (int64_t j = len; j < len32; ++j) s[j] = -INFINITY;
  __m256 vmax = _mm256_set1_ps(-INFINITY);
  for (int64_t j = 0; j < len32; j += 8) vmax = _mm256_max_ps(vmax, _mm256_loadu_ps(s + j));
  const __m256 vm = _mm256_set1_ps(hmax256(vmax));
  __m256 vsum = _mm256_setzero_ps();
  for (int64_t j = 0; j < len32; j += 8) {
    const __m256 e = exp256(_mm256_sub_ps(_mm256_loadu_ps(s + j), vm));
    _mm256_storeu_ps(s + j, e);
    vsum = _mm256_add_ps(vsum, e);
  }
  // exp of the -inf padding lanes is clamped, not zero: zero them (and drop them from the sum).
  float pad = 0.f;
  for (int64_t j = len; j < len32; ++j) {
    pad += s[j];
    s[j] = 0.f;
  }
  const float inv = 1.0f / (hsum256(vsum) - pad);
  int64_t d = 0;
  for (; d + 4 <= hd; d += 4) {
    __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
    const float* v0 = vt + d * cap;
    for (int64_t j = 0; j < len32; j += 8) {
      const __m256 p = _mm256_loadu_ps(s + j);
      a0 = _mm256_fmadd_ps(p, _mm256_loadu_ps(v0 + j), a0);
      a1 = _mm256_fmadd_ps(p, _mm256_loadu_ps(v0 + cap + j), a1);
      a2 = _mm256_fmadd_ps(p, _mm256_loadu_ps(v0 + 2 * cap + j), a2);
      a3 = _mm256_fmadd_ps(p, _mm256_loadu_ps(v0 + 3 * cap + j), a3);
    }
    out[d] = hsum256(a0) * inv;
    out[d + 1] = hsum256(a1) * inv;
    out[d + 2] = hsum256(a2) * inv;
    out[d + 3] = hsum256(a3) * inv;
  }
  for (; d < hd; ++d) {
    __m256 a = _mm256_setzero_ps();
    for (int64_t j = 0; j < len32; j += 8) a = _mm256_fmadd_ps(_mm256_loadu_ps(s + j), _mm256_loadu_ps(vt + d * cap + j), a);
    out[d] = hsum256(a) * inv;
  }
}

}  // namespace
#endif

// ---------------------------------------------------------------- plain paths
namespace {

void panel_rows_plain(const float* X, int64_t rows, int64_t K, const DensePanels& W, int64_t p, float* Y, int64_t ldy,
                      int64_t cols) {
  const void* panel = W.panel(p);
  for (int64_t r = 0; r < rows; ++r) {
    float acc[16] = {0};
    const float* x = X + r * K;
    for (int64_t k = 0; k < K; ++k) {
      float w[16];
      if (W.dtype() == DType::F32) {
        std::memcpy(w, static_cast<const float*>(panel) + k * 16, sizeof w);
      } else {
        const uint16_t* h = static_cast<const uint16_t*>(panel) + k * 16;
        for (int c = 0; c < 16; ++c) w[c] = W.dtype() == DType::F16 ? f16_to_f32(h[c]) : bf16_to_f32(h[c]);
      }
      for (int c = 0; c < 16; ++c) acc[c] += x[k] * w[c];
    }
    std::memcpy(Y + r * ldy, acc, (size_t)cols * 4);
  }
}

void attend_one_plain(const float* q, int64_t hd, const float* kt, const float* vt, int64_t cap, int64_t len,
                      float scale, float* s, float* out) {
  float m = -INFINITY;
  for (int64_t j = 0; j < len; ++j) {
    float acc = 0.f;
    for (int64_t d = 0; d < hd; ++d) acc += q[d] * kt[d * cap + j];
    s[j] = acc * scale;
    m = std::max(m, s[j]);
  }
  float sum = 0.f;
  for (int64_t j = 0; j < len; ++j) {
    s[j] = std::exp(s[j] - m);
    sum += s[j];
  }
  const float inv = 1.0f / sum;
  for (int64_t d = 0; d < hd; ++d) {
    float acc = 0.f;
    for (int64_t j = 0; j < len; ++j) acc += s[j] * vt[d * cap + j];
    out[d] = acc * inv;
  }
}

}  // namespace

// ---------------------------------------------------------------- dense weights

DensePanels::DensePanels(const void* W, DType dtype, int64_t N, int64_t K) : dtype_(dtype), N_(N), K_(K) {
  require(dtype == DType::F32 || dtype == DType::F16 || dtype == DType::BF16, "E_DTYPE",
          "dense weights must be f32, f16 or bf16");
  const size_t total = (size_t)(panels() * kWidth * K);
  if (dtype == DType::F32) f32_.assign(total, 0.f);
  else u16_.assign(total, 0);
  const size_t esize = dtype_size(dtype);
  parallel(panels(), 4, [&](int64_t p0, int64_t p1) {
    for (int64_t p = p0; p < p1; ++p)
      for (int64_t c = 0; c < kWidth && p * kWidth + c < N; ++c) {
        const int64_t n = p * kWidth + c;
        const uint8_t* src = static_cast<const uint8_t*>(W) + (size_t)(n * K) * esize;
        for (int64_t k = 0; k < K; ++k) {
          const size_t dst = (size_t)((p * K + k) * kWidth + c);
          if (dtype == DType::F32) std::memcpy(&f32_[dst], src + k * 4, 4);
          else std::memcpy(&u16_[dst], src + k * 2, 2);
        }
      }
  });
}

const void* DensePanels::panel(int64_t p) const {
  const size_t off = (size_t)(p * K_ * kWidth);
  return dtype_ == DType::F32 ? static_cast<const void*>(f32_.data() + off) : static_cast<const void*>(u16_.data() + off);
}

void DensePanels::row(int64_t n, float* out) const {
  const int64_t p = n / kWidth, c = n % kWidth;
  const size_t base = (size_t)(p * K_ * kWidth + c);
  for (int64_t k = 0; k < K_; ++k) {
    const size_t i = base + (size_t)(k * kWidth);
    switch (dtype_) {
      case DType::F32: out[k] = f32_[i]; break;
      case DType::F16: out[k] = f16_to_f32(u16_[i]); break;
      default: out[k] = bf16_to_f32(u16_[i]); break;
    }
  }
}

void dense_linear(const float* X, int64_t M, const DensePanels& W, const float* bias, float* Y) {
  const int64_t K = W.K(), N = W.N(), P = W.panels();
  constexpr int64_t kRowChunk = 48;  // rows per task: a multiple of the kernel's 6
  const int64_t chunks = (M + kRowChunk - 1) / kRowChunk;
  const bool avx2 = use_avx2();
  parallel(P * chunks, 1, [&](int64_t t0, int64_t t1) {
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t p = t % P, chunk = t / P;
      const int64_t r0 = chunk * kRowChunk, rows = std::min(M, r0 + kRowChunk) - r0;
      const int64_t n0 = p * DensePanels::kWidth, cols = std::min(N - n0, DensePanels::kWidth);
      const float* x = X + r0 * K;
      float* y = Y + r0 * N + n0;
#if LOWBIT_X86
      if (avx2) {
        switch (W.dtype()) {
          case DType::F32: panel_rows_avx2<DType::F32>(x, rows, K, W.panel(p), y, N, cols); break;
          case DType::F16: panel_rows_avx2<DType::F16>(x, rows, K, W.panel(p), y, N, cols); break;
          default: panel_rows_avx2<DType::BF16>(x, rows, K, W.panel(p), y, N, cols); break;
        }
      } else
#endif
      {
        (void)avx2;
        panel_rows_plain(x, rows, K, W, p, y, N, cols);
      }
      if (bias)
        for (int64_t r = 0; r < rows; ++r)
          for (int64_t c = 0; c < cols; ++c) y[r * N + c] += bias[n0 + c];
    }
  });
}

// ---------------------------------------------------------------- elementwise and row ops

void rms_norm(const float* X, int64_t rows, int64_t dim, const float* weight, float eps, float* Y) {
  parallel(rows, 64, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      const float* x = X + r * dim;
      float* y = Y + r * dim;
      double ss = 0;
      for (int64_t i = 0; i < dim; ++i) ss += (double)x[i] * x[i];
      const float variance = (float)(ss / (double)dim);
      const float inv = 1.0f / std::sqrt(variance + eps);
      for (int64_t i = 0; i < dim; ++i) y[i] = weight[i] * (x[i] * inv);
    }
  });
}

void apply_rope(float* X, int64_t rows, int64_t stride, int64_t heads, const RopeTable& table) {
  const int64_t half = table.half;
  parallel(rows, 64, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      const float* c = table.cos.data() + r * half;
      const float* s = table.sin.data() + r * half;
      for (int64_t h = 0; h < heads; ++h) {
        float* x = X + r * stride + h * 2 * half;
        for (int64_t i = 0; i < half; ++i) {
          const float a = x[i], b = x[i + half];
          // q*cos + rotate_half(q)*sin, rotate_half(q) = (-q2, q1)
          x[i] = a * c[i] - b * s[i];
          x[i + half] = b * c[i] + a * s[i];
        }
      }
    }
  });
}

void KvBlock::resize(int64_t kv_heads_, int64_t head_dim_, int64_t capacity) {
  kv_heads = kv_heads_;
  head_dim = head_dim_;
  cap = round_up(std::max<int64_t>(capacity, 1), 32);  // the attention loops read keys 32 at a time
  kt.assign((size_t)(kv_heads * head_dim * cap), 0.f);
  vt.assign((size_t)(kv_heads * head_dim * cap), 0.f);
}

void store_kv(const float* K, const float* V, int64_t n, int64_t p0, KvBlock& kv) {
  require(p0 + n <= kv.cap, "E_SHAPE", "the KV cache is full");
  const int64_t width = kv.kv_heads * kv.head_dim;
  for (int64_t h = 0; h < kv.kv_heads; ++h)
    for (int64_t d = 0; d < kv.head_dim; ++d) {
      float* kt = kv.k_row(h, d) + p0;
      float* vt = kv.v_row(h, d) + p0;
      const int64_t col = h * kv.head_dim + d;
      for (int64_t i = 0; i < n; ++i) {
        kt[i] = K[i * width + col];
        vt[i] = V[i * width + col];
      }
    }
}

void causal_attention(const float* Q, int64_t n, int64_t p0, int64_t heads, const KvBlock& kv, float scale,
                      float* out) {
  const int64_t hd = kv.head_dim, group = heads / kv.kv_heads, width = heads * hd;
  // Tasks: (head, block of queries). Later queries see more keys; the pool's dynamic chunks even that out.
  constexpr int64_t kQueries = 32;
  const int64_t qblocks = (n + kQueries - 1) / kQueries;
  const bool avx2 = use_avx2();
  parallel(heads * qblocks, 1, [&](int64_t t0, int64_t t1) {
    std::vector<float> scores((size_t)round_up(p0 + n, 32));
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t h = t / qblocks, qb = t % qblocks;
      const int64_t kvh = h / group;
      const float* kt = kv.k_row(kvh, 0);
      const float* vt = kv.v_row(kvh, 0);
      for (int64_t i = qb * kQueries; i < std::min(n, (qb + 1) * kQueries); ++i) {
        const float* q = Q + i * width + h * hd;
        float* o = out + i * width + h * hd;
        const int64_t len = p0 + i + 1;
#if LOWBIT_X86
        if (avx2) {
          attend_one_avx2(q, hd, kt, vt, kv.cap, len, scale, scores.data(), o);
          continue;
        }
#endif
        (void)avx2;
        attend_one_plain(q, hd, kt, vt, kv.cap, len, scale, scores.data(), o);
      }
    }
  });
}

void swiglu(const float* gate, const float* up, int64_t n, float* out) {
  const bool avx2 = use_avx2();
  parallel(n, 4096, [&](int64_t i0, int64_t i1) {
#if LOWBIT_X86
    if (avx2) {
      swiglu_avx2(gate + i0, up + i0, i1 - i0, out + i0);
      return;
    }
#endif
    (void)avx2;
    for (int64_t i = i0; i < i1; ++i) out[i] = silu_mul(gate[i], up[i]);
  });
}

void add_inplace(float* y, const float* x, int64_t n) {
  for (int64_t i = 0; i < n; ++i) y[i] += x[i];
}

float row_nll(const float* logits, int64_t vocab, int32_t target) {
#if LOWBIT_X86
  if (use_avx2()) return row_nll_avx2(logits, vocab, target);
#endif
  float m = -INFINITY;
  for (int64_t i = 0; i < vocab; ++i) m = std::max(m, logits[i]);
  float sum = 0.f;
  for (int64_t i = 0; i < vocab; ++i) sum += std::exp(logits[i] - m);
  return m + std::log(sum) - logits[target];
}

}  // namespace cpu
}  // namespace model
}  // namespace lowbit

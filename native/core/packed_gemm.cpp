#include "packed_gemm.hpp"

#include <algorithm>
#include <atomic>
#include <vector>

#include "dtype.hpp"
#include "pack.hpp"
#include "thread_pool.hpp"

namespace lowbit {
namespace {
std::atomic<int> g_forced{-1};
}

SimdLevel detected_simd() {
#if defined(__x86_64__) || defined(_M_X64)
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("fma"))
    return SimdLevel::Avx512;
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c"))
    return SimdLevel::Avx2;
#endif
  return SimdLevel::Scalar;
}

SimdLevel active_simd() {
  const SimdLevel d = detected_simd();
  const int f = g_forced.load();
  return (f >= 0 && f < (int)d) ? (SimdLevel)f : d;
}

void force_simd(SimdLevel level) { g_forced.store((int)level); }

const char* simd_name(SimdLevel level) {
  switch (level) {
    case SimdLevel::Avx512: return "avx512";
    case SimdLevel::Avx2: return "avx2";
    default: return "scalar";
  }
}

void dequantize(const PackedMatrix& W, float* out) {
  global_pool().parallel_for(W.N, 8, [&](int64_t n0, int64_t n1) {
    const int64_t zcols = packed_words(W.bits, W.N);
    for (int64_t n = n0; n < n1; ++n)
      for (int64_t k = 0; k < W.K; ++k) {
        const int64_t g = W.group_of(k);
        const float s = f16_to_f32(W.scales[g * W.N + n]);
        const int32_t z = (int32_t)read_packed(W.qzeros + g * zcols, 1, W.bits, n) + W.zero_offset;
        const int32_t q = (int32_t)read_packed(W.qweight + n, W.N, W.bits, k);
        out[n * W.K + k] = s * (float)(q - z);
      }
  });
}

void packed_gemm(const float* X, int64_t M, const PackedMatrix& W, float* Y) {
  // Scalar path: dequantize a tile of output channels, then multiply every row of X against it.
  constexpr int64_t kTile = 16;
  global_pool().parallel_for(ceil_div(W.N, kTile), 1, [&](int64_t t0, int64_t t1) {
    std::vector<float> tile((size_t)(kTile * W.K));
    const int64_t zcols = packed_words(W.bits, W.N);
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t n0 = t * kTile, n1 = std::min(W.N, n0 + kTile);
      for (int64_t n = n0; n < n1; ++n)
        for (int64_t k = 0; k < W.K; ++k) {
          const int64_t g = W.group_of(k);
          const float s = f16_to_f32(W.scales[g * W.N + n]);
          const int32_t z = (int32_t)read_packed(W.qzeros + g * zcols, 1, W.bits, n) + W.zero_offset;
          const int32_t q = (int32_t)read_packed(W.qweight + n, W.N, W.bits, k);
          tile[(size_t)((n - n0) * W.K + k)] = s * (float)(q - z);
        }
      for (int64_t m = 0; m < M; ++m)
        for (int64_t n = n0; n < n1; ++n) {
          const float* x = X + m * W.K;
          const float* w = tile.data() + (n - n0) * W.K;
          float acc = 0.f;
          for (int64_t k = 0; k < W.K; ++k) acc += x[k] * w[k];
          Y[m * W.N + n] = acc;
        }
    }
  });
}

void dense_gemm(const float* X, int64_t M, const float* W, int64_t N, int64_t K, float* Y) {
  global_pool().parallel_for(N, 16, [&](int64_t n0, int64_t n1) {
    for (int64_t m = 0; m < M; ++m)
      for (int64_t n = n0; n < n1; ++n) {
        const float* x = X + m * K;
        const float* w = W + n * K;
        float acc = 0.f;
        for (int64_t k = 0; k < K; ++k) acc += x[k] * w[k];
        Y[m * N + n] = acc;
      }
  });
}

}  // namespace lowbit

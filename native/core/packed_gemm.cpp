#include "packed_gemm.hpp"

#include <algorithm>
#include <atomic>
#include <vector>

#if defined(__x86_64__) || defined(_M_X64)
#include <cpuid.h>
#endif

#include "dtype.hpp"
#include "pack.hpp"
#include "packed_gemm_kernels.hpp"
#include "thread_pool.hpp"
#include "weight_format.hpp"

namespace lowbit {
namespace {
std::atomic<int> g_forced{-1};
std::atomic<int> g_last_packed{-1};

#if defined(__x86_64__) || defined(_M_X64)
// F16C from cpuid leaf 1 (ECX bit 29): GCC 10, which builds the prebuilt against an old glibc
// (scripts/make-sysroot.sh), has no __builtin_cpu_supports("f16c").
bool cpu_has_f16c() {
  unsigned eax = 0, ebx = 0, ecx = 0, edx = 0;
  return __get_cpuid(1, &eax, &ebx, &ecx, &edx) && (ecx & (1u << 29)) != 0;
}
#endif

// The processor's level, probed once (cpuid is slow enough to matter for small products).
SimdLevel probe_simd() {
#if defined(__x86_64__) || defined(_M_X64)
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("fma") &&
      cpu_has_f16c())
    return SimdLevel::Avx512;
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && cpu_has_f16c())
    return SimdLevel::Avx2;
#endif
  return SimdLevel::Scalar;
}
}  // namespace

SimdLevel detected_simd() {
  static const SimdLevel level = probe_simd();
  return level;
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
  // By blocks of 16 columns, unit by unit: each block's words of a unit row share a cache line, and
  // each output row is written contiguously.
  constexpr int64_t kBlock = 16;
  const WeightFormat f = weight_format(W.bits);
  const int64_t units = ceil_div(W.K, f.values_per_unit), zcols = packed_words(W.bits, W.N);
  global_pool()->parallel_for(ceil_div(W.N, kBlock), 4, [&](int64_t b0, int64_t b1) {
    for (int64_t u = 0; u < units; ++u) {
      const int64_t k0 = u * f.values_per_unit, k1 = std::min(W.K, k0 + f.values_per_unit);
      for (int64_t n = b0 * kBlock; n < std::min(W.N, b1 * kBlock); ++n) {
        const int32_t* words = W.qweight + u * f.words_per_unit * W.N + n;
        for (int64_t k = k0; k < k1; ++k) {
          const int64_t g = W.group_of(k);
          const float s = f16_to_f32(W.scales[g * W.N + n]);
          const int32_t z = (int32_t)read_packed(W.qzeros + g * zcols, 1, W.bits, n) + W.zero_offset;
          const int32_t q = (int32_t)read_packed(words, W.N, W.bits, k - k0);
          out[n * W.K + k] = s * (float)(q - z);
        }
      }
    }
  });
}

SimdLevel last_packed_gemm_level() { return (SimdLevel)std::max(0, g_last_packed.load()); }

void packed_gemm(const float* X, int64_t M, const PackedMatrix& W, float* Y) {
  const SimdLevel level = active_simd();
  g_last_packed.store((int)level);
  switch (level) {
    case SimdLevel::Avx512: kernels_avx512::packed_gemm(X, M, W, Y); break;
    case SimdLevel::Avx2: kernels_avx2::packed_gemm(X, M, W, Y); break;
    default: kernels_scalar::packed_gemm(X, M, W, Y); break;
  }
}

void dense_gemm(const float* X, int64_t M, const float* W, int64_t N, int64_t K, float* Y) {
  switch (active_simd()) {
    case SimdLevel::Avx512: kernels_avx512::dense_gemm(X, M, W, N, K, Y); break;
    case SimdLevel::Avx2: kernels_avx2::dense_gemm(X, M, W, N, K, Y); break;
    default: kernels_scalar::dense_gemm(X, M, W, N, K, Y); break;
  }
}

}  // namespace lowbit

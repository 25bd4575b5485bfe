// SpQR row kernel with AVX2 + FMA (8 lanes); called only after the processor check (spqr_gemm.cpp).
#if defined(__x86_64__) || defined(_M_X64)
#include <immintrin.h>

#include <cstdint>
#include <cstring>

#define LOWBIT_SPQR_NS spqr_avx2
#define LOWBIT_TARGET __attribute__((target("avx2,fma")))
#define LOWBIT_SPQR_VEC static inline __attribute__((always_inline, target("avx2,fma")))

namespace lowbit {
namespace spqr_avx2 {
struct SpqrVec {
  static constexpr int W = 8;
  using F = __m256;
  LOWBIT_SPQR_VEC F zero() { return _mm256_setzero_ps(); }
  LOWBIT_SPQR_VEC F set1(float x) { return _mm256_set1_ps(x); }
  LOWBIT_SPQR_VEC F load(const float* p) { return _mm256_loadu_ps(p); }
  LOWBIT_SPQR_VEC void store(float* p, F v) { _mm256_storeu_ps(p, v); }
  LOWBIT_SPQR_VEC F add(F a, F b) { return _mm256_add_ps(a, b); }
  LOWBIT_SPQR_VEC F fma(F a, F b, F c) { return _mm256_fmadd_ps(a, b, c); }
  LOWBIT_SPQR_VEC F fms(F a, F b, F c) { return _mm256_fmsub_ps(a, b, c); }
  LOWBIT_SPQR_VEC F mul(F a, F b) { return _mm256_mul_ps(a, b); }
  LOWBIT_SPQR_VEC F bytes(const uint8_t* p) {
    return _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p))));
  }
  // The 16 codes of the 2·bits bytes at p: codes 0-7 are the low 8·bits bits of the 64-bit word,
  // codes 8-15 the next 8·bits (8·bits ≤ 32).
  LOWBIT_SPQR_VEC void codes16(const uint8_t* p, int bits, F (&q)[2]) {
    uint64_t word;
    std::memcpy(&word, p, 8);
    const __m256i shifts = _mm256_mullo_epi32(_mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7), _mm256_set1_epi32(bits));
    const __m256i mask = _mm256_set1_epi32((int)((1u << bits) - 1u));
    for (int h = 0; h < 2; ++h) {
      const uint32_t half = (uint32_t)(word >> (8 * bits * h));
      q[h] = _mm256_cvtepi32_ps(_mm256_and_si256(_mm256_srlv_epi32(_mm256_set1_epi32((int)half), shifts), mask));
    }
  }
  LOWBIT_SPQR_VEC float hsum(F v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
  }
  // Lane i: bits [i·bits, (i+1)·bits) of the 32-bit word at p.
  LOWBIT_SPQR_VEC void codes8(const uint8_t* p, int bits, float* out) {
    uint32_t word;
    std::memcpy(&word, p, 4);
    const __m256i shifts = _mm256_mullo_epi32(_mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7), _mm256_set1_epi32(bits));
    const __m256i v = _mm256_and_si256(_mm256_srlv_epi32(_mm256_set1_epi32((int)word), shifts),
                                       _mm256_set1_epi32((int)((1u << bits) - 1u)));
    _mm256_storeu_ps(out, _mm256_cvtepi32_ps(v));
  }
};
}  // namespace spqr_avx2
}  // namespace lowbit

#include "spqr_gemm_impl.hpp"

#else
#include "spqr_gemm.hpp"
namespace lowbit {
namespace spqr_avx2 {
void spqr_rows(const SpqrCpuWeights& W, const float* Xp, int64_t M, int64_t n0, int64_t n1, float* qf, float* w,
               float* stats, float* Y) {
  spqr_scalar::spqr_rows(W, Xp, M, n0, n1, qf, w, stats, Y);
}
}  // namespace spqr_avx2
}  // namespace lowbit
#endif

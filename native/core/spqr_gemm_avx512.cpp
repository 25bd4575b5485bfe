// SpQR row kernel with AVX-512 (16 lanes); called only after the processor check (spqr_gemm.cpp).
#if defined(__x86_64__) || defined(_M_X64)
#include <immintrin.h>

#include <cstdint>
#include <cstring>

// GCC 12's AVX-512 intrinsics start from deliberately undefined vectors (_mm512_undefined_*), which
// -Wmaybe-uninitialized reports once they are inlined into loops (a false positive).
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif

#define LOWBIT_SPQR_NS spqr_avx512
#define LOWBIT_TARGET __attribute__((target("avx512f,avx512bw,fma")))
#define LOWBIT_SPQR_VEC static inline __attribute__((always_inline, target("avx512f,avx512bw,fma")))

namespace lowbit {
namespace spqr_avx512 {
struct SpqrVec {
  static constexpr int W = 16;
  using F = __m512;
  LOWBIT_SPQR_VEC F zero() { return _mm512_setzero_ps(); }
  LOWBIT_SPQR_VEC F set1(float x) { return _mm512_set1_ps(x); }
  LOWBIT_SPQR_VEC F load(const float* p) { return _mm512_loadu_ps(p); }
  LOWBIT_SPQR_VEC void store(float* p, F v) { _mm512_storeu_ps(p, v); }
  LOWBIT_SPQR_VEC F add(F a, F b) { return _mm512_add_ps(a, b); }
  LOWBIT_SPQR_VEC F fma(F a, F b, F c) { return _mm512_fmadd_ps(a, b, c); }
  LOWBIT_SPQR_VEC F fms(F a, F b, F c) { return _mm512_fmsub_ps(a, b, c); }
  LOWBIT_SPQR_VEC F mul(F a, F b) { return _mm512_mul_ps(a, b); }
  LOWBIT_SPQR_VEC F bytes(const uint8_t* p) {
    return _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))));
  }
  // The 16 codes of the 2·bits bytes at p (one 64-bit load: code i at bits [i·bits, (i+1)·bits)):
  // 64-bit lane j shifts the word right by 2j·bits for code 2j (its low half) and by (2j+1)·bits for
  // code 2j + 1 (moved to its high half).
  LOWBIT_SPQR_VEC void codes16(const uint8_t* p, int bits, F (&q)[1]) {
    uint64_t word;
    std::memcpy(&word, p, 8);
    const __m512i v = _mm512_set1_epi64((long long)word);
    const __m512i even = _mm512_mul_epu32(_mm512_setr_epi64(0, 2, 4, 6, 8, 10, 12, 14), _mm512_set1_epi64(bits));
    const __m512i odd = _mm512_add_epi64(even, _mm512_set1_epi64(bits));
    const __m512i mask = _mm512_set1_epi64((long long)((1u << bits) - 1u));
    const __m512i lo = _mm512_and_si512(_mm512_srlv_epi64(v, even), mask);
    const __m512i hi = _mm512_slli_epi64(_mm512_and_si512(_mm512_srlv_epi64(v, odd), mask), 32);
    q[0] = _mm512_cvtepi32_ps(_mm512_or_si512(lo, hi));
  }
  LOWBIT_SPQR_VEC float hsum(F v) { return _mm512_reduce_add_ps(v); }
  // Lane i: bits [i·bits, (i+1)·bits) of the 32-bit word at p (8 lanes suffice per chunk).
  LOWBIT_SPQR_VEC void codes8(const uint8_t* p, int bits, float* out) {
    uint32_t word;
    std::memcpy(&word, p, 4);
    const __m256i shifts = _mm256_mullo_epi32(_mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7), _mm256_set1_epi32(bits));
    const __m256i v = _mm256_and_si256(_mm256_srlv_epi32(_mm256_set1_epi32((int)word), shifts),
                                       _mm256_set1_epi32((int)((1u << bits) - 1u)));
    _mm256_storeu_ps(out, _mm256_cvtepi32_ps(v));
  }
};
}  // namespace spqr_avx512
}  // namespace lowbit

#include "spqr_gemm_impl.hpp"

#else
#include "spqr_gemm.hpp"
namespace lowbit {
namespace spqr_avx512 {
void spqr_rows(const SpqrCpuWeights& W, const float* Xp, int64_t M, int64_t n0, int64_t n1, float* qf, float* w,
               float* stats, float* Y) {
  spqr_scalar::spqr_rows(W, Xp, M, n0, n1, qf, w, stats, Y);
}
}  // namespace spqr_avx512
}  // namespace lowbit
#endif

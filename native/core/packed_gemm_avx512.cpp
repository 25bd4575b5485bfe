// Packed products with AVX-512F (16 lanes; FMA and F16C come with it). Only these functions carry
// the target attribute; packed_gemm.cpp calls in here only when the processor has AVX-512F/BW.
#if defined(__x86_64__) || defined(_M_X64)

// GCC 12's AVX-512 intrinsics headers trip -W(maybe-)uninitialized on their own _mm512_undefined_*
// placeholders (GCC bug 105593, fixed in 13): silence those warnings for this file.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"
#endif

#include <immintrin.h>

#include <cstdint>

#define LOWBIT_KERNEL_NS kernels_avx512
#define LOWBIT_TARGET __attribute__((target("avx512f,avx2,fma,f16c")))
#define LOWBIT_VEC static inline __attribute__((always_inline, target("avx512f,avx2,fma,f16c")))

namespace lowbit {
namespace kernels_avx512 {

struct Vec {
  static constexpr int W = 16;
  using F = __m512;
  using I = __m512i;
  LOWBIT_VEC F zero() { return _mm512_setzero_ps(); }
  LOWBIT_VEC F set1(float x) { return _mm512_set1_ps(x); }
  LOWBIT_VEC F load(const float* p) { return _mm512_loadu_ps(p); }
  LOWBIT_VEC void store(float* p, F v) { _mm512_storeu_ps(p, v); }
  LOWBIT_VEC F add(F a, F b) { return _mm512_add_ps(a, b); }
  LOWBIT_VEC F sub(F a, F b) { return _mm512_sub_ps(a, b); }
  LOWBIT_VEC F mul(F a, F b) { return _mm512_mul_ps(a, b); }
  LOWBIT_VEC F fma(F a, F b, F c) { return _mm512_fmadd_ps(a, b, c); }
  LOWBIT_VEC I load_i(const int32_t* p) { return _mm512_loadu_si512(p); }
  LOWBIT_VEC I set1_i(uint32_t x) { return _mm512_set1_epi32((int)x); }
  LOWBIT_VEC I srl(I v, int s) { return _mm512_srli_epi32(v, (unsigned)s); }
  LOWBIT_VEC I sll(I v, int s) { return _mm512_slli_epi32(v, (unsigned)s); }
  LOWBIT_VEC I or_(I a, I b) { return _mm512_or_si512(a, b); }
  LOWBIT_VEC I and_(I a, I b) { return _mm512_and_si512(a, b); }
  LOWBIT_VEC F to_float(I v) { return _mm512_cvtepi32_ps(v); }
  LOWBIT_VEC F load_half(const uint16_t* p) {
    return _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
  }
  // As in the AVX2 level: gather each lane's word and the next (clamped), shift the pair down.
  LOWBIT_VEC I load_packed(const int32_t* row, int64_t n, int bits, int64_t words) {
    const __m512i lane = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
    const __m512i bit = _mm512_mullo_epi32(_mm512_add_epi32(_mm512_set1_epi32((int)n), lane), _mm512_set1_epi32(bits));
    const __m512i word = _mm512_srli_epi32(bit, 5);
    const __m512i shift = _mm512_and_si512(bit, _mm512_set1_epi32(31));
    const __m512i next = _mm512_min_epi32(_mm512_add_epi32(word, _mm512_set1_epi32(1)), _mm512_set1_epi32((int)(words - 1)));
    const __m512i lo = _mm512_i32gather_epi32(word, row, 4);
    const __m512i hi = _mm512_i32gather_epi32(next, row, 4);
    const __m512i v = _mm512_or_si512(_mm512_srlv_epi32(lo, shift), _mm512_sllv_epi32(hi, _mm512_sub_epi32(_mm512_set1_epi32(32), shift)));
    return _mm512_and_si512(v, _mm512_set1_epi32((int)((1u << bits) - 1u)));
  }
  LOWBIT_VEC float hsum(F v) { return _mm512_reduce_add_ps(v); }
};

}  // namespace kernels_avx512
}  // namespace lowbit

#include "packed_gemm_impl.hpp"

#else  // not x86-64: the level is never selected; keep the symbols so the dispatcher links.
#include "packed_gemm_kernels.hpp"
namespace lowbit {
namespace kernels_avx512 {
void packed_gemm(const float* X, int64_t M, const PackedMatrix& W, float* Y) { kernels_scalar::packed_gemm(X, M, W, Y); }
void dense_gemm(const float* X, int64_t M, const float* W, int64_t N, int64_t K, float* Y) {
  kernels_scalar::dense_gemm(X, M, W, N, K, Y);
}
}  // namespace kernels_avx512
}  // namespace lowbit
#endif

// Packed products with AVX2 + FMA + F16C (8 lanes). Only these functions carry the target
// attribute, so the rest of the addon still runs on any x86-64; packed_gemm.cpp calls in here only
// after checking the processor.
#if defined(__x86_64__) || defined(_M_X64)

#include <immintrin.h>

#include <cstdint>

#define LOWBIT_KERNEL_NS kernels_avx2
#define LOWBIT_TARGET __attribute__((target("avx2,fma,f16c")))
#define LOWBIT_VEC static inline __attribute__((always_inline, target("avx2,fma,f16c")))

namespace lowbit {
namespace kernels_avx2 {

struct Vec {
  static constexpr int W = 8;
  using F = __m256;
  using I = __m256i;
  LOWBIT_VEC F zero() { return _mm256_setzero_ps(); }
  LOWBIT_VEC F set1(float x) { return _mm256_set1_ps(x); }
  LOWBIT_VEC F load(const float* p) { return _mm256_loadu_ps(p); }
  LOWBIT_VEC void store(float* p, F v) { _mm256_storeu_ps(p, v); }
  LOWBIT_VEC F add(F a, F b) { return _mm256_add_ps(a, b); }
  LOWBIT_VEC F sub(F a, F b) { return _mm256_sub_ps(a, b); }
  LOWBIT_VEC F mul(F a, F b) { return _mm256_mul_ps(a, b); }
  LOWBIT_VEC F fma(F a, F b, F c) { return _mm256_fmadd_ps(a, b, c); }
  LOWBIT_VEC I load_i(const int32_t* p) { return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)); }
  LOWBIT_VEC I set1_i(uint32_t x) { return _mm256_set1_epi32((int)x); }
  LOWBIT_VEC I srl(I v, int s) { return _mm256_srli_epi32(v, s); }
  LOWBIT_VEC I sll(I v, int s) { return _mm256_slli_epi32(v, s); }
  LOWBIT_VEC I or_(I a, I b) { return _mm256_or_si256(a, b); }
  LOWBIT_VEC I and_(I a, I b) { return _mm256_and_si256(a, b); }
  LOWBIT_VEC F to_float(I v) { return _mm256_cvtepi32_ps(v); }
  LOWBIT_VEC F load_half(const uint16_t* p) {
    return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
  }
  // Lane l gets value n + l of the packed row: gather its word and the next (clamped to the row),
  // shift the pair down; a shift count of 32 gives 0, so values inside one word need no special case.
  LOWBIT_VEC I load_packed(const int32_t* row, int64_t n, int bits, int64_t words) {
    const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    const __m256i bit = _mm256_mullo_epi32(_mm256_add_epi32(_mm256_set1_epi32((int)n), lane), _mm256_set1_epi32(bits));
    const __m256i word = _mm256_srli_epi32(bit, 5);
    const __m256i shift = _mm256_and_si256(bit, _mm256_set1_epi32(31));
    const __m256i next = _mm256_min_epi32(_mm256_add_epi32(word, _mm256_set1_epi32(1)), _mm256_set1_epi32((int)(words - 1)));
    const __m256i lo = _mm256_i32gather_epi32(row, word, 4);
    const __m256i hi = _mm256_i32gather_epi32(row, next, 4);
    const __m256i v = _mm256_or_si256(_mm256_srlv_epi32(lo, shift), _mm256_sllv_epi32(hi, _mm256_sub_epi32(_mm256_set1_epi32(32), shift)));
    return _mm256_and_si256(v, _mm256_set1_epi32((int)((1u << bits) - 1u)));
  }
  LOWBIT_VEC float hsum(F v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
  }
};

}  // namespace kernels_avx2
}  // namespace lowbit

#include "packed_gemm_impl.hpp"

#else  // not x86-64: the level is never selected; keep the symbols so the dispatcher links.
#include "packed_gemm_kernels.hpp"
namespace lowbit {
namespace kernels_avx2 {
void packed_gemm(const float* X, int64_t M, const PackedMatrix& W, float* Y) { kernels_scalar::packed_gemm(X, M, W, Y); }
void dense_gemm(const float* X, int64_t M, const float* W, int64_t N, int64_t K, float* Y) {
  kernels_scalar::dense_gemm(X, M, W, N, K, Y);
}
}  // namespace kernels_avx2
}  // namespace lowbit
#endif

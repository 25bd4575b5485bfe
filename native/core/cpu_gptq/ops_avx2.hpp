// Not an ordinary header (no include guard): included twice, inside two namespaces.
// The AVX2 vector operations of kernels_impl.hpp's contract (see there): one "vector" of 16 columns
// is two 256-bit halves. Included by kernels_avx2.cpp once without and once with AVX-VNNI
// (LOWBIT_VNNI 0/1), each time in its own namespace with LOWBIT_OPS carrying that variant's target.
struct Ops {
  static constexpr int GEMV_NB = 2, GEMM_MR = 3, GEMM_NB = 1;
  struct U { __m256i a, b; };
  using I = U;
  struct F { __m256 a, b; };
  LOWBIT_OPS U load(const uint8_t* p) {
    return {_mm256_load_si256(reinterpret_cast<const __m256i*>(p)), _mm256_load_si256(reinterpret_cast<const __m256i*>(p + 32))};
  }
  LOWBIT_OPS U and8(U u, uint8_t m) {
    const __m256i k = _mm256_set1_epi8((char)m);
    return {_mm256_and_si256(u.a, k), _mm256_and_si256(u.b, k)};
  }
  template <int S> LOWBIT_OPS U srl16(U u) { return {_mm256_srli_epi16(u.a, S), _mm256_srli_epi16(u.b, S)}; }
  template <int S> LOWBIT_OPS U sll16(U u) { return {_mm256_slli_epi16(u.a, S), _mm256_slli_epi16(u.b, S)}; }
  LOWBIT_OPS U merge3(U lo, U hi) {
    const __m256i three = _mm256_set1_epi8(3), four = _mm256_set1_epi8(4);
    return {_mm256_or_si256(_mm256_and_si256(lo.a, three), _mm256_and_si256(hi.a, four)),
            _mm256_or_si256(_mm256_and_si256(lo.b, three), _mm256_and_si256(hi.b, four))};
  }
  LOWBIT_OPS __m256i dot_half(__m256i acc, __m256i w, __m256i x) {
#if LOWBIT_VNNI
    return _mm256_dpbusd_avx_epi32(acc, w, x);
#else  // u8·s8 pairs to s16 (no saturation for ≤ 4-bit weights), then to s32
    return _mm256_add_epi32(acc, _mm256_madd_epi16(_mm256_maddubs_epi16(w, x), _mm256_set1_epi16(1)));
#endif
  }
  LOWBIT_OPS I dot(I acc, U w, const int8_t* x) {
    int32_t x4;
    std::memcpy(&x4, x, 4);
    const __m256i xb = _mm256_set1_epi32(x4);
    return {dot_half(acc.a, w.a, xb), dot_half(acc.b, w.b, xb)};
  }
  LOWBIT_OPS I zero_i() { return {_mm256_setzero_si256(), _mm256_setzero_si256()}; }
  LOWBIT_OPS I add_i(I a, I b) { return {_mm256_add_epi32(a.a, b.a), _mm256_add_epi32(a.b, b.b)}; }
  LOWBIT_OPS F zero_f() { return {_mm256_setzero_ps(), _mm256_setzero_ps()}; }
  LOWBIT_OPS F set1(float x) { return {_mm256_set1_ps(x), _mm256_set1_ps(x)}; }
  LOWBIT_OPS F cvt(I a) { return {_mm256_cvtepi32_ps(a.a), _mm256_cvtepi32_ps(a.b)}; }
  LOWBIT_OPS F load_f16(const uint16_t* p) {
    return {_mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))),
            _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p + 8)))};
  }
  LOWBIT_OPS F load_u8(const uint8_t* p) {
    return {_mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p)))),
            _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p + 8))))};
  }
  LOWBIT_OPS F load(const float* p) { return {_mm256_loadu_ps(p), _mm256_loadu_ps(p + 8)}; }
  LOWBIT_OPS void store(float* p, F f) { _mm256_storeu_ps(p, f.a); _mm256_storeu_ps(p + 8, f.b); }
  LOWBIT_OPS F add(F x, F y) { return {_mm256_add_ps(x.a, y.a), _mm256_add_ps(x.b, y.b)}; }
  LOWBIT_OPS F sub(F x, F y) { return {_mm256_sub_ps(x.a, y.a), _mm256_sub_ps(x.b, y.b)}; }
  LOWBIT_OPS F mul(F x, F y) { return {_mm256_mul_ps(x.a, y.a), _mm256_mul_ps(x.b, y.b)}; }
  LOWBIT_OPS F fma(F x, F y, F z) { return {_mm256_fmadd_ps(x.a, y.a, z.a), _mm256_fmadd_ps(x.b, y.b, z.b)}; }
  LOWBIT_OPS F fnma(F x, F y, F z) { return {_mm256_fnmadd_ps(x.a, y.a, z.a), _mm256_fnmadd_ps(x.b, y.b, z.b)}; }
  template <int J> LOWBIT_OPS F byte(U u) {
    const __m256i ff = _mm256_set1_epi32(0xFF);
    return {_mm256_cvtepi32_ps(_mm256_and_si256(_mm256_srli_epi32(u.a, 8 * J), ff)),
            _mm256_cvtepi32_ps(_mm256_and_si256(_mm256_srli_epi32(u.b, 8 * J), ff))};
  }
};

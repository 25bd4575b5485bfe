// Not an ordinary header (no include guard): included twice, inside two namespaces.
// The AVX2 vector operations of kernels_impl.hpp's contract (see there): one "vector" of 16 columns
// is two 256-bit halves. Included by kernels_avx2.cpp once without and once with AVX-VNNI
// (LOWBIT_VNNI 0/1), each time in its own namespace with LOWBIT_OPS carrying that variant's target.
struct Ops {
  static constexpr int GEMV_NB3 = 2, GEMV_NB = 2, GEMV_P = 2, GEMM_MR = 3, GEMM_NB = 1;  // 16 ymm registers
  static constexpr bool DOT_ANY_U8 = LOWBIT_VNNI != 0;
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
  template <int S> LOWBIT_OPS I srai(I a) { return {_mm256_srai_epi32(a.a, S), _mm256_srai_epi32(a.b, S)}; }
  // SpQR's statistics (spqr_kernels_impl.hpp): 16 bytes as int32 lanes, a mask, a logical shift.
  LOWBIT_OPS I load_u8_i(const uint8_t* p) {
    return {_mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p))),
            _mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p + 8)))};
  }
  LOWBIT_OPS I and_i(I x, int32_t m) {
    const __m256i k = _mm256_set1_epi32(m);
    return {_mm256_and_si256(x.a, k), _mm256_and_si256(x.b, k)};
  }
  template <int S> LOWBIT_OPS I srli(I x) { return {_mm256_srli_epi32(x.a, S), _mm256_srli_epi32(x.b, S)}; }
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
  // Activation quantization (kernels_impl.hpp's quantize_rows).
  LOWBIT_OPS __m256 gather_half(const float* base, const int32_t* idx) {
    const __m256i i = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(idx));
    const __m256 valid = _mm256_castsi256_ps(_mm256_cmpgt_epi32(i, _mm256_set1_epi32(-1)));
    return _mm256_mask_i32gather_ps(_mm256_setzero_ps(), base, i, valid, 4);
  }
  LOWBIT_OPS F gather(const float* base, const int32_t* idx) { return {gather_half(base, idx), gather_half(base, idx + 8)}; }
  // SpQR's outliers (spqr_kernels_impl.hpp): 16-bit columns, kNoColumn gathered as 0.
  LOWBIT_OPS __m256 gather_u16_half(const float* base, const uint16_t* idx) {
    const __m256i i = _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(idx)));
    const __m256 valid = _mm256_castsi256_ps(_mm256_cmpgt_epi32(_mm256_set1_epi32(kNoColumn), i));
    return _mm256_mask_i32gather_ps(_mm256_setzero_ps(), base, i, valid, 4);
  }
  LOWBIT_OPS F gather_u16(const float* base, const uint16_t* idx) {
    return {gather_u16_half(base, idx), gather_u16_half(base, idx + 8)};
  }
  LOWBIT_OPS float half(uint16_t h) { return _cvtsh_ss(h); }
  LOWBIT_OPS float reduce_add_f(F x) {
    const __m256 s = _mm256_add_ps(x.a, x.b);
    __m128 h = _mm_add_ps(_mm256_castps256_ps128(s), _mm256_extractf128_ps(s, 1));
    h = _mm_add_ps(h, _mm_movehl_ps(h, h));
    return _mm_cvtss_f32(_mm_add_ss(h, _mm_movehdup_ps(h)));
  }
  LOWBIT_OPS F abs(F x) {
    const __m256 m = _mm256_castsi256_ps(_mm256_set1_epi32(0x7FFFFFFF));
    return {_mm256_and_ps(x.a, m), _mm256_and_ps(x.b, m)};
  }
  LOWBIT_OPS F max(F x, F y) { return {_mm256_max_ps(x.a, y.a), _mm256_max_ps(x.b, y.b)}; }
  LOWBIT_OPS float reduce_max(F x) {
    __m256 m = _mm256_max_ps(x.a, x.b);
    __m128 h = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps(m, 1));
    h = _mm_max_ps(h, _mm_movehl_ps(h, h));
    h = _mm_max_ss(h, _mm_movehdup_ps(h));
    return _mm_cvtss_f32(h);
  }
  LOWBIT_OPS I round_i(F x) { return {_mm256_cvtps_epi32(x.a), _mm256_cvtps_epi32(x.b)}; }  // nearest-even, as lrint
  LOWBIT_OPS void store_i8(int8_t* p, I x) {
    // |values| ≤ 127: the saturating packs keep them; packs work per 128-bit lane, hence the permute
    const __m256i w = _mm256_packs_epi32(x.a, x.b);  // a0-3 b0-3 a4-7 b4-7 (int16)
    const __m128i b = _mm_packs_epi16(_mm256_castsi256_si128(w), _mm256_extracti128_si256(w, 1));  // a0-3 b0-3 a4-7 b4-7
    _mm_storeu_si128(reinterpret_cast<__m128i*>(p), _mm_shuffle_epi32(b, _MM_SHUFFLE(3, 1, 2, 0)));
  }
  LOWBIT_OPS int32_t reduce_add(I x) {
    const __m256i s = _mm256_add_epi32(x.a, x.b);
    __m128i h = _mm_add_epi32(_mm256_castsi256_si128(s), _mm256_extracti128_si256(s, 1));
    h = _mm_add_epi32(h, _mm_shuffle_epi32(h, _MM_SHUFFLE(1, 0, 3, 2)));
    h = _mm_add_epi32(h, _mm_shuffle_epi32(h, _MM_SHUFFLE(2, 3, 0, 1)));
    return _mm_cvtsi128_si32(h);
  }
};

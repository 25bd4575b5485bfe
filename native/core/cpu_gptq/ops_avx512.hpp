// Not an ordinary header (no include guard): included twice, inside two namespaces.
// The AVX-512 vector operations of kernels_impl.hpp's contract (see there), included by
// kernels_avx512.cpp once without and once with VNNI (LOWBIT_VNNI 0/1), each time inside its own
// namespace and with LOWBIT_OPS carrying that variant's target: without VNNI the compiler must not
// be allowed to emit VNNI instructions on its own.
struct Ops {
  static constexpr int GEMV_NB3 = 4, GEMV_NB = 4, GEMV_P = 4, GEMM_MR = 4, GEMM_NB = 2;
  static constexpr bool DOT_ANY_U8 = LOWBIT_VNNI != 0;
  using U = __m512i;
  using I = __m512i;
  using F = __m512;
  LOWBIT_OPS U load(const uint8_t* p) { return _mm512_load_si512(p); }
  LOWBIT_OPS U and8(U u, uint8_t m) { return _mm512_and_si512(u, _mm512_set1_epi8((char)m)); }
  template <int S> LOWBIT_OPS U srl16(U u) { return _mm512_srli_epi16(u, S); }
  // (lo & 3) | (hi & 4): mask hi, then one ternary-logic op computes (A & C) | B.
  LOWBIT_OPS U merge3(U lo, U hi) {
    return _mm512_ternarylogic_epi32(lo, _mm512_and_si512(hi, _mm512_set1_epi8(4)), _mm512_set1_epi8(3), 0xEC);
  }
  LOWBIT_OPS I dot(I acc, U w, const int8_t* x) {
    int32_t x4;
    std::memcpy(&x4, x, 4);
    if constexpr (LOWBIT_VNNI) {
      return _mm512_dpbusd_epi32(acc, w, _mm512_set1_epi32(x4));
    } else {  // u8·s8 pairs to s16 (|15·127·2| fits: no saturation for ≤ 4-bit weights), then to s32
      const __m512i pairs = _mm512_maddubs_epi16(w, _mm512_set1_epi32(x4));
      return _mm512_add_epi32(acc, _mm512_madd_epi16(pairs, _mm512_set1_epi16(1)));
    }
  }
  LOWBIT_OPS I zero_i() { return _mm512_setzero_si512(); }
  LOWBIT_OPS I add_i(I a, I b) { return _mm512_add_epi32(a, b); }
  template <int S> LOWBIT_OPS I srai(I a) { return _mm512_srai_epi32(a, S); }
  // SpQR's statistics (spqr_kernels_impl.hpp): 16 bytes as int32 lanes, a mask, a logical shift.
  LOWBIT_OPS I load_u8_i(const uint8_t* p) { return _mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))); }
  LOWBIT_OPS I and_i(I a, int32_t m) { return _mm512_and_si512(a, _mm512_set1_epi32(m)); }
  template <int S> LOWBIT_OPS I srli(I a) { return _mm512_srli_epi32(a, S); }
  LOWBIT_OPS F zero_f() { return _mm512_setzero_ps(); }
  LOWBIT_OPS F set1(float x) { return _mm512_set1_ps(x); }
  LOWBIT_OPS F cvt(I a) { return _mm512_cvtepi32_ps(a); }
  LOWBIT_OPS F load_f16(const uint16_t* p) { return _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p))); }
  LOWBIT_OPS F load_u8(const uint8_t* p) {
    return _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))));
  }
  LOWBIT_OPS F load(const float* p) { return _mm512_loadu_ps(p); }
  LOWBIT_OPS void store(float* p, F f) { _mm512_storeu_ps(p, f); }
  LOWBIT_OPS F add(F a, F b) { return _mm512_add_ps(a, b); }
  LOWBIT_OPS F sub(F a, F b) { return _mm512_sub_ps(a, b); }
  LOWBIT_OPS F mul(F a, F b) { return _mm512_mul_ps(a, b); }
  LOWBIT_OPS F fma(F a, F b, F c) { return _mm512_fmadd_ps(a, b, c); }
  LOWBIT_OPS F fnma(F a, F b, F c) { return _mm512_fnmadd_ps(a, b, c); }
  template <int J> LOWBIT_OPS F byte(U u) {
    return _mm512_cvtepi32_ps(_mm512_and_si512(_mm512_srli_epi32(u, 8 * J), _mm512_set1_epi32(0xFF)));
  }
  // Activation quantization (kernels_impl.hpp's quantize_rows).
  LOWBIT_OPS F gather(const float* base, const int32_t* idx) {
    const __m512i i = _mm512_loadu_si512(idx);
    return _mm512_mask_i32gather_ps(_mm512_setzero_ps(), _mm512_cmpge_epi32_mask(i, _mm512_setzero_si512()), i, base, 4);
  }
  // SpQR's outliers (spqr_kernels_impl.hpp): 16-bit columns, kNoColumn gathered as 0.
  LOWBIT_OPS F gather_u16(const float* base, const uint16_t* idx) {
    const __m512i i = _mm512_cvtepu16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(idx)));
    return _mm512_mask_i32gather_ps(_mm512_setzero_ps(), _mm512_cmpneq_epi32_mask(i, _mm512_set1_epi32(kNoColumn)), i, base, 4);
  }
  LOWBIT_OPS float half(uint16_t h) { return _cvtsh_ss(h); }
  LOWBIT_OPS float reduce_add_f(F a) { return _mm512_reduce_add_ps(a); }
  LOWBIT_OPS F abs(F a) { return _mm512_abs_ps(a); }
  LOWBIT_OPS F max(F a, F b) { return _mm512_max_ps(a, b); }
  LOWBIT_OPS float reduce_max(F a) { return _mm512_reduce_max_ps(a); }
  LOWBIT_OPS I round_i(F a) { return _mm512_cvtps_epi32(a); }  // MXCSR's nearest-even, as lrint
  LOWBIT_OPS void store_i8(int8_t* p, I a) { _mm_storeu_si128(reinterpret_cast<__m128i*>(p), _mm512_cvtsepi32_epi8(a)); }
  LOWBIT_OPS int32_t reduce_add(I a) { return _mm512_reduce_add_epi32(a); }
};


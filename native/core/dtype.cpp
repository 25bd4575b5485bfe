#include "dtype.hpp"

#include "packed_gemm.hpp"  // active_simd(): the one switch that caps every kernel's SIMD level

#if defined(__x86_64__) || defined(_M_X64)
#include <immintrin.h>
#define LOWBIT_X86 1
#endif

namespace lowbit {
namespace {

bool is_float(DType t) { return t == DType::F32 || t == DType::F16 || t == DType::BF16; }

// The scalar conversions (dtype.hpp), one element at a time: the fallback, and the tails.
void convert_scalar(const void* src, DType from, void* dst, DType to, size_t begin, size_t end) {
  for (size_t i = begin; i < end; ++i) {
    float v;  // through f32: every f16 and bf16 value is exact in f32
    switch (from) {
      case DType::F16: v = f16_to_f32(static_cast<const uint16_t*>(src)[i]); break;
      case DType::BF16: v = bf16_to_f32(static_cast<const uint16_t*>(src)[i]); break;
      default: v = static_cast<const float*>(src)[i]; break;
    }
    switch (to) {
      case DType::F16: static_cast<uint16_t*>(dst)[i] = f32_to_f16(v); break;
      case DType::BF16: static_cast<uint16_t*>(dst)[i] = f32_to_bf16(v); break;
      default: static_cast<float*>(dst)[i] = v; break;
    }
  }
}

#ifdef LOWBIT_X86
// 8 elements at a time with F16C (f16) and AVX2 integer ops (bf16). Blocks holding a NaN or an
// infinity go through the scalar code, so that every bit of the result, NaN payloads included,
// is the same whichever path ran. Returns how many leading elements were converted.
__attribute__((target("avx2,f16c"))) size_t convert_avx2(const void* src, DType from, void* dst, DType to, size_t n) {
  const __m256i exp_mask = _mm256_set1_epi32(0x7f800000);
  size_t i = 0;
  for (; i + 8 <= n; i += 8) {
    __m256 v;
    if (from == DType::F16) {
      const __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(static_cast<const uint16_t*>(src) + i));
      const __m128i e = _mm_and_si128(h, _mm_set1_epi16(0x7c00));
      if (_mm_movemask_epi8(_mm_cmpeq_epi16(e, _mm_set1_epi16(0x7c00))) != 0) {
        convert_scalar(src, from, dst, to, i, i + 8);
        continue;
      }
      v = _mm256_cvtph_ps(h);
    } else if (from == DType::BF16) {
      const __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(static_cast<const uint16_t*>(src) + i));
      v = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
    } else {
      v = _mm256_loadu_ps(static_cast<const float*>(src) + i);
    }
    const __m256i bits = _mm256_castps_si256(v);
    if (to != DType::F32 &&
        _mm256_movemask_epi8(_mm256_cmpeq_epi32(_mm256_and_si256(bits, exp_mask), exp_mask)) != 0) {
      convert_scalar(src, from, dst, to, i, i + 8);  // NaN or infinity in this block
      continue;
    }
    if (to == DType::F16) {
      const __m128i h = _mm256_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
      _mm_storeu_si128(reinterpret_cast<__m128i*>(static_cast<uint16_t*>(dst) + i), h);
    } else if (to == DType::BF16) {
      // Round to nearest even on the upper half: add 0x7fff plus the lowest kept bit, then shift.
      const __m256i lsb = _mm256_and_si256(_mm256_srli_epi32(bits, 16), _mm256_set1_epi32(1));
      const __m256i r = _mm256_srli_epi32(_mm256_add_epi32(_mm256_add_epi32(bits, _mm256_set1_epi32(0x7fff)), lsb), 16);
      const __m128i packed = _mm_packus_epi32(_mm256_castsi256_si128(r), _mm256_extracti128_si256(r, 1));
      _mm_storeu_si128(reinterpret_cast<__m128i*>(static_cast<uint16_t*>(dst) + i), packed);
    } else {
      _mm256_storeu_ps(static_cast<float*>(dst) + i, v);
    }
  }
  return i;
}
#endif

}  // namespace

void convert(const void* src, DType from, void* dst, DType to, size_t n) {
  require(is_float(from) && is_float(to), "E_DTYPE",
          std::string("cannot convert ") + dtype_name(from) + " to " + dtype_name(to));
  if (from == to) {
    std::memcpy(dst, src, n * dtype_size(from));
    return;
  }
  size_t done = 0;
#ifdef LOWBIT_X86
  if (active_simd() >= SimdLevel::Avx2) done = convert_avx2(src, from, dst, to, n);  // implies F16C
#endif
  convert_scalar(src, from, dst, to, done, n);
}

}  // namespace lowbit

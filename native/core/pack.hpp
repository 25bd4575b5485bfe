// Packing of quantized integers into the GPTQ checkpoint layout.
//   qweight int32 [packed_words(bits, K), N]: packed along the input dimension K, low bits first.
//   qzeros  int32 [G, packed_words(bits, N)]: packed along the output dimension N, storing
//           zero - zero_offset (zero_offset 1 for "gptq" v1, 0 for "gptq_v2").
// Values form one little-endian bit stream per unit, so 3-bit values may straddle two words.
// Padding values past K (or N) are written as 0.
#pragma once

#include <cstdint>

namespace lowbit {

// q: [N, K] row-major (one output channel per row), values in [0, 2^bits).
void pack_qweight(const uint8_t* q, int64_t N, int64_t K, int bits, int32_t* qweight);
void unpack_qweight(const int32_t* qweight, int64_t N, int64_t K, int bits, uint8_t* q);

// zeros: [G, N] integer zero points in [0, 2^bits) (v1: zero 0 is stored as 2^bits - 1, which every
// v1 reader, lowbit's included, reads back as 2^bits: v1 cannot represent a zero point of 0).
void pack_qzeros(const int32_t* zeros, int64_t G, int64_t N, int bits, int zero_offset, int32_t* qzeros);
void unpack_qzeros(const int32_t* qzeros, int64_t G, int64_t N, int bits, int zero_offset, int32_t* zeros);

// Reads value i of a packed unit stream starting at `words` (stride: distance between consecutive
// words of the same stream, in int32s).
inline uint32_t read_packed(const int32_t* words, int64_t stride, int bits, int64_t i) {
  const int64_t bit = i * bits;
  const int64_t w = bit >> 5;
  const int sh = (int)(bit & 31);
  uint64_t v = (uint32_t)words[w * stride];
  if (sh + bits > 32) v |= (uint64_t)(uint32_t)words[(w + 1) * stride] << 32;
  return (uint32_t)(v >> sh) & ((1u << bits) - 1u);
}

}  // namespace lowbit

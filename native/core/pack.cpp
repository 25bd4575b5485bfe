#include "pack.hpp"

#include <cstring>

#include "weight_format.hpp"

namespace lowbit {
namespace {

// Writes `bits` of v at stream position i (stream words are `stride` int32s apart).
inline void write_packed(int32_t* words, int64_t stride, int bits, int64_t i, uint32_t v) {
  const int64_t bit = i * bits;
  const int64_t w = bit >> 5;
  const int sh = (int)(bit & 31);
  const uint32_t mask = (1u << bits) - 1u;
  v &= mask;
  uint32_t* lo = reinterpret_cast<uint32_t*>(&words[w * stride]);
  *lo = (*lo & ~(mask << sh)) | (v << sh);
  if (sh + bits > 32) {  // the value straddles into the next word (3-bit only)
    uint32_t* hi = reinterpret_cast<uint32_t*>(&words[(w + 1) * stride]);
    const int spill = sh + bits - 32;
    *hi = (*hi & ~((1u << spill) - 1u)) | (v >> (bits - spill));
  }
}

}  // namespace

void pack_qweight(const uint8_t* q, int64_t N, int64_t K, int bits, int32_t* qweight) {
  const int64_t rows = packed_words(bits, K);
  std::memset(qweight, 0, (size_t)(rows * N) * sizeof(int32_t));
  for (int64_t n = 0; n < N; ++n)
    for (int64_t k = 0; k < K; ++k) write_packed(qweight + n, N, bits, k, q[n * K + k]);
}

void unpack_qweight(const int32_t* qweight, int64_t N, int64_t K, int bits, uint8_t* q) {
  for (int64_t n = 0; n < N; ++n)
    for (int64_t k = 0; k < K; ++k) q[n * K + k] = (uint8_t)read_packed(qweight + n, N, bits, k);
}

void pack_qzeros(const int32_t* zeros, int64_t G, int64_t N, int bits, int zero_offset, int32_t* qzeros) {
  const int64_t cols = packed_words(bits, N);
  std::memset(qzeros, 0, (size_t)(G * cols) * sizeof(int32_t));
  for (int64_t g = 0; g < G; ++g)
    for (int64_t n = 0; n < N; ++n)
      write_packed(qzeros + g * cols, 1, bits, n, (uint32_t)(zeros[g * N + n] - zero_offset));
}

void unpack_qzeros(const int32_t* qzeros, int64_t G, int64_t N, int bits, int zero_offset, int32_t* zeros) {
  const int64_t cols = packed_words(bits, N);
  for (int64_t g = 0; g < G; ++g)
    for (int64_t n = 0; n < N; ++n)
      zeros[g * N + n] = (int32_t)read_packed(qzeros + g * cols, 1, bits, n) + zero_offset;
}

}  // namespace lowbit

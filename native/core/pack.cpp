#include "pack.hpp"

#include <algorithm>
#include <cstring>

#include "thread_pool.hpp"
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

// qweight is written and read one 16-column block at a time, unit by unit: each block's words of a
// unit row share a cache line, and each column's codes are read contiguously. (Writing value by
// value down each column took ~25 s for an 11008 x 4096 layer; this takes milliseconds.)
constexpr int64_t kColumnBlock = 16;

void pack_qweight(const uint8_t* q, int64_t N, int64_t K, int bits, int32_t* qweight) {
  const WeightFormat f = weight_format(bits);
  const int64_t units = ceil_div(K, f.values_per_unit);
  const uint32_t mask = (1u << bits) - 1u;
  global_pool()->parallel_for(ceil_div(N, kColumnBlock), 4, [&](int64_t b0, int64_t b1) {
    for (int64_t u = 0; u < units; ++u) {
      const int64_t k0 = u * f.values_per_unit, count = std::min<int64_t>(f.values_per_unit, K - k0);
      for (int64_t n = b0 * kColumnBlock; n < std::min(N, b1 * kColumnBlock); ++n) {
        uint32_t words[3] = {0, 0, 0};
        const uint8_t* src = q + n * K + k0;
        for (int64_t i = 0; i < count; ++i) {
          const uint32_t v = src[i] & mask;
          const int bit = (int)i * bits, w = bit >> 5, sh = bit & 31;
          words[w] |= v << sh;
          if (sh + bits > 32) words[w + 1] |= v >> (32 - sh);  // straddles into the next word (3-bit)
        }
        for (int j = 0; j < f.words_per_unit; ++j) qweight[(u * f.words_per_unit + j) * N + n] = (int32_t)words[j];
      }
    }
  });
}

void unpack_qweight(const int32_t* qweight, int64_t N, int64_t K, int bits, uint8_t* q) {
  const WeightFormat f = weight_format(bits);
  const int64_t units = ceil_div(K, f.values_per_unit);
  global_pool()->parallel_for(ceil_div(N, kColumnBlock), 4, [&](int64_t b0, int64_t b1) {
    for (int64_t u = 0; u < units; ++u) {
      const int64_t k0 = u * f.values_per_unit, count = std::min<int64_t>(f.values_per_unit, K - k0);
      for (int64_t n = b0 * kColumnBlock; n < std::min(N, b1 * kColumnBlock); ++n) {
        const int32_t* words = qweight + u * f.words_per_unit * N + n;
        for (int64_t i = 0; i < count; ++i) q[n * K + k0 + i] = (uint8_t)read_packed(words, N, bits, i);
      }
    }
  });
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

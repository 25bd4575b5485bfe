#include "stream_read.hpp"

#include <algorithm>
#include <chrono>
#include <cstring>
#include <string>
#include <vector>

#if defined(__x86_64__) || defined(_M_X64)
#include <immintrin.h>
#endif

#include "common.hpp"
#include "packed_gemm.hpp"
#include "cpu_gptq/repack.hpp"
#include "thread_pool.hpp"

namespace lowbit {
namespace {

// Sums 64-bit words with eight independent accumulators (the loads, not the adds, are the limit).
uint64_t read_words(const uint64_t* p, int64_t n) {
  uint64_t a[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  int64_t i = 0;
  for (; i + 8 <= n; i += 8)
    for (int j = 0; j < 8; ++j) a[j] += p[i + j];
  for (; i < n; ++i) a[0] += p[i];
  return a[0] + a[1] + a[2] + a[3] + a[4] + a[5] + a[6] + a[7];
}

#if defined(__x86_64__) || defined(_M_X64)
// The widest loads the processor has, four independent sums: the plain 64-bit loop leaves bandwidth
// unused (on the Xeon hosts here one thread read DRAM at 8.9 GB/s with it, 12.5 with 64-byte loads),
// and the ceiling must be the best plain read, not an easy one. p is 64-byte aligned; the tail goes word by word.
__attribute__((target("avx512f"))) uint64_t read_avx512(const uint64_t* p, int64_t n) {
  __m512i a = _mm512_setzero_si512(), b = a, c = a, d = a;
  int64_t i = 0;
  for (; i + 32 <= n; i += 32) {
    a = _mm512_add_epi64(a, _mm512_load_si512(p + i));
    b = _mm512_add_epi64(b, _mm512_load_si512(p + i + 8));
    c = _mm512_add_epi64(c, _mm512_load_si512(p + i + 16));
    d = _mm512_add_epi64(d, _mm512_load_si512(p + i + 24));
  }
  alignas(64) uint64_t lanes[8];  // (not _mm512_reduce_add_epi64: GCC 12 warns inside it, bug 105593)
  _mm512_store_si512(lanes, _mm512_add_epi64(_mm512_add_epi64(a, b), _mm512_add_epi64(c, d)));
  return read_words(lanes, 8) + read_words(p + i, n - i);
}
__attribute__((target("avx2"))) uint64_t read_avx2(const uint64_t* p, int64_t n) {
  __m256i a = _mm256_setzero_si256(), b = a, c = a, d = a;
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) {
    a = _mm256_add_epi64(a, _mm256_load_si256(reinterpret_cast<const __m256i*>(p + i)));
    b = _mm256_add_epi64(b, _mm256_load_si256(reinterpret_cast<const __m256i*>(p + i + 4)));
    c = _mm256_add_epi64(c, _mm256_load_si256(reinterpret_cast<const __m256i*>(p + i + 8)));
    d = _mm256_add_epi64(d, _mm256_load_si256(reinterpret_cast<const __m256i*>(p + i + 12)));
  }
  alignas(32) uint64_t lanes[4];
  _mm256_store_si256(reinterpret_cast<__m256i*>(lanes), _mm256_add_epi64(_mm256_add_epi64(a, b), _mm256_add_epi64(c, d)));
  return lanes[0] + lanes[1] + lanes[2] + lanes[3] + read_words(p + i, n - i);
}
#endif

// Reads n words at p (64-byte aligned) with the widest loads this processor has.
uint64_t read_block(const uint64_t* p, int64_t n) {
#if defined(__x86_64__) || defined(_M_X64)
  switch (detected_simd()) {
    case SimdLevel::Avx512: return read_avx512(p, n);
    case SimdLevel::Avx2: return read_avx2(p, n);
    default: break;
  }
#endif
  return read_words(p, n);
}

// One pass over n words at p (64-byte aligned), split evenly over `threads` threads of the pool
// (1: the calling thread alone); returns the words' sum so the reads cannot be dropped.
uint64_t read_pass(const uint64_t* p, int64_t words, int threads) {
  if (threads == 1) return read_block(p, words);
  std::vector<uint64_t> part((size_t)threads, 0);
  global_pool()->parallel_for(threads, 1, [&](int64_t t0, int64_t t1) {
    // Each thread's share starts on a 64-byte boundary (8 words).
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t w0 = words / 8 * t / threads * 8, w1 = t + 1 == threads ? words : words / 8 * (t + 1) / threads * 8;
      part[(size_t)t] = read_block(p + w0, w1 - w0);
    }
  });
  uint64_t sum = 0;
  for (uint64_t v : part) sum += v;
  return sum;
}

volatile uint64_t g_sink = 0;

}  // namespace

double stream_read_bandwidth(int64_t bytes, int threads, int runs) {
  require(bytes >= 4096 && bytes <= (int64_t(1) << 36), "E_ARGUMENT", "bytes must be in [4096, 2^36]");
  require(threads >= 1 && runs >= 1, "E_ARGUMENT", "threads and runs must be at least 1");
  StreamReader reader(bytes);
  reader.read_seconds(0, bytes, threads);  // untimed first pass
  std::vector<double> seconds;
  for (int r = 0; r < runs; ++r) seconds.push_back(reader.read_seconds(0, bytes, threads));
  std::sort(seconds.begin(), seconds.end());
  return (double)(bytes / 8 * 8) / seconds[seconds.size() / 2];
}

StreamReader::StreamReader(int64_t bytes) {
  require(bytes >= 4096 && bytes <= (int64_t(1) << 36), "E_ARGUMENT", "bytes must be in [4096, 2^36]");
  buf_.allocate(bytes);
  std::memset(buf_.data(), 1, (size_t)bytes);  // every page touched: no shared zero page to read instead
}

double StreamReader::read_seconds(int64_t offset, int64_t bytes, int threads) const {
  require(threads >= 1, "E_ARGUMENT", "threads must be at least 1");
  require(offset >= 0 && offset % 64 == 0, "E_ARGUMENT", "offset must be a non-negative multiple of 64");
  require(bytes >= 64 && offset <= buf_.size && bytes <= buf_.size - offset, "E_ARGUMENT",
          "the read [offset, offset + bytes) must lie inside the reader's " + std::to_string(buf_.size) + " bytes");
  const auto* p = reinterpret_cast<const uint64_t*>(buf_.data() + offset);
  const auto t0 = std::chrono::steady_clock::now();
  g_sink = g_sink + read_pass(p, bytes / 8, threads);
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

}  // namespace lowbit

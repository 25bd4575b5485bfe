#include "stream_read.hpp"

#include <algorithm>
#include <chrono>
#include <cstring>
#include <vector>

#include "common.hpp"
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

}  // namespace

double stream_read_bandwidth(int64_t bytes, int threads, int runs) {
  require(bytes >= 4096 && bytes <= (int64_t(1) << 36), "E_ARGUMENT", "bytes must be in [4096, 2^36]");
  require(threads >= 1 && runs >= 1, "E_ARGUMENT", "threads and runs must be at least 1");
  cpu_gptq::AlignedBytes buf;
  buf.allocate(bytes);
  std::memset(buf.data(), 1, (size_t)bytes);
  const int64_t words = bytes / 8;
  const auto* p = reinterpret_cast<const uint64_t*>(buf.data());
  volatile uint64_t sink = 0;
  auto pass = [&] {
    if (threads == 1) {
      sink = sink + read_words(p, words);
      return;
    }
    std::vector<uint64_t> part((size_t)threads, 0);
    global_pool()->parallel_for(threads, 1, [&](int64_t t0, int64_t t1) {
      for (int64_t t = t0; t < t1; ++t) part[(size_t)t] = read_words(p + words * t / threads, words * (t + 1) / threads - words * t / threads);
    });
    for (uint64_t v : part) sink = sink + v;
  };
  pass();
  std::vector<double> seconds;
  for (int r = 0; r < runs; ++r) {
    const auto t0 = std::chrono::steady_clock::now();
    pass();
    seconds.push_back(std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
  }
  std::sort(seconds.begin(), seconds.end());
  return (double)(words * 8) / seconds[seconds.size() / 2];
}

}  // namespace lowbit

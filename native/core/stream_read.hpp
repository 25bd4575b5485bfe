// The streaming-read ceiling for bandwidth-bound kernels: how fast this machine reads a buffer it
// does not write (a copy would count writes too). Benchmarks report kernels as a share of it.
#pragma once

#include <cstdint>

#include "cpu_gptq/repack.hpp"

namespace lowbit {

// Median bandwidth in bytes/s of `runs` passes reading `bytes` (split evenly over `threads` threads
// of the global pool; 1 = the calling thread alone), after one untimed pass.
double stream_read_bandwidth(int64_t bytes, int threads, int runs);

// A buffer allocated and filled once (same allocator as the repacked weights: 2 MiB pages), read in
// slices: benchmarks rotate over a set larger than the last-level cache, so that each read comes
// from DRAM as a real forward pass's weights do, and time each slice next to the product it bounds.
class StreamReader {
 public:
  explicit StreamReader(int64_t bytes);  // bytes in [4096, 2^36]
  int64_t size() const { return buf_.size; }
  // Seconds of one pass over [offset, offset + bytes) (offset a multiple of 64) by `threads` threads.
  double read_seconds(int64_t offset, int64_t bytes, int threads) const;

 private:
  cpu_gptq::AlignedBytes buf_;
};

}  // namespace lowbit

// The streaming-read ceiling for bandwidth-bound kernels: how fast this machine reads a buffer it
// does not write (a copy would count writes too). Benchmarks report kernels as a share of it.
#pragma once

#include <cstdint>

namespace lowbit {

// Median bandwidth in bytes/s of `runs` passes reading `bytes` (split evenly over `threads` threads
// of the global pool; 1 = the calling thread alone), after one untimed pass.
double stream_read_bandwidth(int64_t bytes, int threads, int runs);

}  // namespace lowbit

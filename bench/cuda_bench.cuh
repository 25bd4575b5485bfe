// Shared by the standalone CUDA benchmark programs: exit with the failing call on any CUDA error, a
// seeded random stream, and a median event timing.
#pragma once

#include <cuda_runtime.h>

#include <cstdio>
#include <cstdlib>

#define CK(x)                                                       \
  do {                                                              \
    cudaError_t e_ = (x);                                           \
    if (e_ != cudaSuccess) {                                        \
      std::fprintf(stderr, "%s: %s\n", #x, cudaGetErrorString(e_)); \
      std::exit(1);                                                 \
    }                                                               \
  } while (0)

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <type_traits>
#include <vector>

namespace bench {

// A xorshift stream: uniform doubles and normals (Box-Muller), reproducible from a seed.
struct Rng {
  uint64_t s;
  explicit Rng(uint64_t seed) : s(seed * 0x9E3779B97F4A7C15ull + 1) {}
  uint64_t next() {
    s ^= s << 13;
    s ^= s >> 7;
    s ^= s << 17;
    return s;
  }
  double uniform() { return (double)(next() >> 11) * (1.0 / 9007199254740992.0); }
  double normal() {
    const double u = 1.0 - uniform(), v = uniform();
    return std::sqrt(-2.0 * std::log(u)) * std::cos(6.283185307179586 * v);
  }
};

inline double f16_value(uint16_t h) { return (double)__half2float(__ushort_as_half(h)); }

// A 16-bit activation's bit pattern (fp16, or bf16 when `bf16`), rounded to nearest, and its value back.
inline uint16_t half_bits(float v, bool bf16) {
  if (!bf16) return __half_as_ushort(__float2half_rn(v));
  const __nv_bfloat16 b = __float2bfloat16_rn(v);
  return *reinterpret_cast<const uint16_t*>(&b);
}
inline double half_value(uint16_t h, bool bf16) {
  if (!bf16) return f16_value(h);
  uint32_t u = (uint32_t)h << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

// The median of `reps` CUDA-event timings of f() on `stream`, in microseconds, after 3 warm-up calls.
template <class F>
double median_us(F f, int reps = 30, cudaStream_t stream = nullptr) {
  for (int i = 0; i < 3; ++i) f();
  cudaEvent_t a, b;
  CK(cudaEventCreate(&a));
  CK(cudaEventCreate(&b));
  std::vector<float> t;
  for (int i = 0; i < reps; ++i) {
    CK(cudaEventRecord(a, stream));
    f();
    CK(cudaEventRecord(b, stream));
    CK(cudaEventSynchronize(b));
    float ms = 0;
    CK(cudaEventElapsedTime(&ms, a, b));
    t.push_back(ms * 1000.f);
  }
  CK(cudaGetLastError());
  CK(cudaEventDestroy(a));
  CK(cudaEventDestroy(b));
  std::sort(t.begin(), t.end());
  return t[t.size() / 2];
}

// The device-to-device copy bandwidth (GB/s, bytes read + written) of a 1 GiB copy: the ceiling the
// products are quoted against, measured in the same run.
inline double copy_bandwidth_gbs() {
  const size_t copy_bytes = size_t(1) << 30;
  void *src, *dst;
  CK(cudaMalloc(&src, copy_bytes));
  CK(cudaMalloc(&dst, copy_bytes));
  CK(cudaMemset(src, 1, copy_bytes));
  const double copy_us = median_us([&] { CK(cudaMemcpyAsync(dst, src, copy_bytes, cudaMemcpyDeviceToDevice)); }, 20);
  CK(cudaFree(src));
  CK(cudaFree(dst));
  return 2.0 * copy_bytes / copy_us / 1e3;
}

// Time per launch of `count` launches captured in one CUDA graph (launch(i) enqueues the i-th on
// `stream`), the median of 10 replays: launch latency not counted, as in a forward pass. The launches
// run once before capture (scratch grows outside it); a launch that returns false declines, and the
// timing returns -1.
template <class F>
double graph_us(cudaStream_t stream, int count, F launch) {
  for (int i = 0; i < count; ++i) {
    if constexpr (std::is_void_v<decltype(launch(i))>) launch(i);
    else if (!launch(i)) return -1.0;
  }
  CK(cudaStreamSynchronize(stream));
  cudaGraph_t graph;
  cudaGraphExec_t exec;
  CK(cudaStreamBeginCapture(stream, cudaStreamCaptureModeThreadLocal));
  for (int i = 0; i < count; ++i) launch(i);
  CK(cudaStreamEndCapture(stream, &graph));
  CK(cudaGraphInstantiate(&exec, graph, 0));
  const double us = median_us([&] { CK(cudaGraphLaunch(exec, stream)); }, 10, stream) / count;
  CK(cudaGraphExecDestroy(exec));
  CK(cudaGraphDestroy(graph));
  return us;
}

}  // namespace bench

// Programmatic dependent launch (compute capability 9.0 and newer), for the packed products.
//
// A kernel launched overlapped may start while the kernel before it in the stream still runs: as soon
// as every block of that kernel has called let_next_launch() (or exited) and room frees up on the
// multiprocessors. It must call wait_for_previous() before it reads anything earlier work in the
// stream writes, or writes anything that work reads; wait_for_previous() returns once the previous
// kernel has finished and its writes are visible. The products read only their own weights before
// that point (immutable since their upload, which synchronizes), so a product's first weight loads
// overlap the previous kernel's last blocks and its own launch, instead of starting after them. They
// call let_next_launch() right after their wait, so that at most one product runs ahead: letting
// the next one start at once let whole chains of products sit resident waiting (in one measurement,
// a 16-row product on 8192 × 28672 took 116 instead of 84 µs).
//
// LOWBIT_CUDA_OVERLAP=0 launches everything plainly (for comparisons).
#pragma once

#include <cuda_runtime.h>

#include <cstdlib>
#include <cstring>
#include <utility>

#include "cuda_check.cuh"

namespace lowbit {
namespace cuda {

// Lets the next overlapped kernel in the stream start launching (a no-op before sm_90).
__device__ __forceinline__ void let_next_launch() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.launch_dependents;\n" ::: "memory");
#endif
}

// Waits until the previous kernel in the stream has finished and its writes are visible (a no-op
// when this kernel was not launched overlapped, or before sm_90).
__device__ __forceinline__ void wait_for_previous() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.wait;\n" ::: "memory");
#endif
}

// Whether kernels on `device` are launched overlapped: compute capability 9.0 or newer, and not
// switched off by LOWBIT_CUDA_OVERLAP=0.
inline bool overlap_enabled(int device) {
  static const bool off = [] {
    const char* v = std::getenv("LOWBIT_CUDA_OVERLAP");
    return v != nullptr && std::strcmp(v, "0") == 0;
  }();
  return !off && compute_capability(device) >= 90;
}

// Launches kernel<<<grid, block, smem, stream>>>(args...), overlapped with the previous kernel when
// `overlap` (the kernel must call wait_for_previous() as above).
template <class... Params, class... Args>
void launch_maybe_overlapped(void (*kernel)(Params...), dim3 grid, dim3 block, size_t smem, cudaStream_t stream,
                             bool overlap, const char* what, Args&&... args) {
  cudaLaunchConfig_t config{};
  config.gridDim = grid;
  config.blockDim = block;
  config.dynamicSmemBytes = smem;
  config.stream = stream;
  cudaLaunchAttribute attr[1];
  attr[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
  attr[0].val.programmaticStreamSerializationAllowed = 1;
  config.attrs = attr;
  config.numAttrs = overlap ? 1 : 0;
  check(cudaLaunchKernelEx(&config, kernel, std::forward<Args>(args)...), what);
}

}  // namespace cuda
}  // namespace lowbit

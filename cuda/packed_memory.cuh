// Device memory shared by the packed-weight kernels (gptq_kernels/, spqr_kernels/): one allocation
// for a repacked matrix's arrays, and the split-K scratch each weights object owns. Host code.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>
#include <initializer_list>
#include <string>

#include "../native/core/common.hpp"
#include "cuda_check.cuh"

namespace lowbit {
namespace cuda {

struct HostArray {
  const void* data;
  int64_t bytes;
};

inline int64_t align256(int64_t b) { return (b + 255) / 256 * 256; }

// Uploads `arrays` end to end, each at a 256-byte boundary, into one allocation on the current
// device; dst[i] receives array i's device address (null when it is empty) and *total the size.
// Returns the allocation (the caller frees it); on a failed copy nothing is left allocated.
inline void* upload_arrays(std::initializer_list<HostArray> arrays, void** dst, int64_t* total, const char* what) {
  int64_t bytes = 0;
  for (const HostArray& a : arrays) bytes = checked_add(bytes, align256(a.bytes));
  void* storage = nullptr;
  check(cudaMalloc(&storage, (size_t)bytes), (std::string("cudaMalloc (") + what + ")").c_str());
  char* base = static_cast<char*>(storage);
  int i = 0;
  for (const HostArray& a : arrays) {
    dst[i++] = a.bytes ? base : nullptr;
    if (!a.bytes) continue;
    const cudaError_t err = memcpy_to_device(base, a.data, (size_t)a.bytes);
    if (err != cudaSuccess) {
      cudaFree(storage);
      check(err, (std::string("cudaMemcpy H2D (") + what + ")").c_str());
    }
    base += align256(a.bytes);
  }
  *total = bytes;
  return storage;
}

// A weights object's split-K scratch: fp32 partial sums and one counter per output tile, both kept
// zero between products (the last block of a tile clears them). Grows to `floats` and `count`
// outside graph capture only, after the stream's earlier products that may still use it.
inline void grow_split_k(float*& partial, int32_t*& counters, int64_t& have_floats, int64_t& have_count,
                         int64_t floats, int64_t count, cudaStream_t stream, const char* what) {
  if (have_floats >= floats && have_count >= count) return;
  cudaStreamCaptureStatus capture = cudaStreamCaptureStatusNone;
  check(cudaStreamIsCapturing(stream, &capture), "cudaStreamIsCapturing");
  require(capture == cudaStreamCaptureStatusNone, "E_CUDA",
          std::string(what) + ": split-K scratch must grow outside graph capture (run once first)");
  check(cudaStreamSynchronize(stream), "cudaStreamSynchronize");
  if (partial) cudaFree(partial);
  if (counters) cudaFree(counters);
  partial = nullptr;
  counters = nullptr;
  have_floats = have_count = 0;
  check(cudaMalloc(&partial, (size_t)(floats * 4)), "cudaMalloc (split-K partial sums)");
  check(cudaMalloc(&counters, (size_t)(count * 4)), "cudaMalloc (split-K counters)");
  check(cudaMemsetAsync(partial, 0, (size_t)(floats * 4), stream), "cudaMemsetAsync");
  check(cudaMemsetAsync(counters, 0, (size_t)(count * 4), stream), "cudaMemsetAsync");
  have_floats = floats;
  have_count = count;
}

}  // namespace cuda
}  // namespace lowbit

// The CUDA backend's host entry points. Implemented by the .cu files when nvcc is found at build
// time, and by stub.cpp otherwise (every call then reports E_CUDA_UNAVAILABLE). Plain C++: no
// CUDA headers here, so the binding and the core can include it in any build.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "../native/core/packed_matrix.hpp"

namespace lowbit {
namespace cuda {

struct DeviceInfo {
  int index = 0;
  std::string name;
  int major = 0, minor = 0;  // compute capability
  int multiprocessors = 0;
  uint64_t total_memory = 0;
};

// True when this addon was built with the CUDA backend.
bool compiled();
// The CUDA devices visible now; empty (with the reason in *why_none) without a GPU or driver.
std::vector<DeviceInfo> devices(std::string* why_none);

// Y = X · Wᵀ on device `device`, all buffers on the host (copied in and out). Same contract as
// lowbit::packed_gemm on the CPU.
void packed_gemm(int device, const float* X, int64_t M, const PackedMatrix& W, float* Y);

// A packed matrix uploaded once to one GPU and kept there (the forward pass multiplies by it many
// times). view() has the same shape fields as the host matrix, with device pointers.
class PackedMatrixDevice {
 public:
  PackedMatrixDevice(int device, const PackedMatrix& host);  // host must be validated
  ~PackedMatrixDevice();
  PackedMatrixDevice(const PackedMatrixDevice&) = delete;
  PackedMatrixDevice& operator=(const PackedMatrixDevice&) = delete;

  int device() const { return device_; }
  const PackedMatrix& view() const { return view_; }
  int64_t bytes() const { return bytes_; }

 private:
  int device_ = -1;
  PackedMatrix view_;
  void* storage_ = nullptr;  // one allocation holding qweight, qzeros, scales and g_idx
  int64_t bytes_ = 0;
};

// Y = X · Wᵀ with X [M, K] and Y [M, N] device pointers on W's device, enqueued on `stream` (a
// cudaStream_t; null for the default stream). Returns without waiting for the GPU.
void packed_gemm_device(const PackedMatrixDevice& W, const float* X, int64_t M, float* Y, void* stream);

}  // namespace cuda
}  // namespace lowbit

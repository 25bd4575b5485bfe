// Turns CUDA errors into CoreError(E_CUDA) with the call that failed.
#pragma once

#include <cuda_runtime.h>

#include <string>

#include "../native/core/common.hpp"

namespace lowbit {
namespace cuda {

inline void check(cudaError_t err, const char* what) {
  if (err != cudaSuccess) fail("E_CUDA", std::string(what) + ": " + cudaGetErrorString(err));
}

// Owns one device allocation; freed on scope exit, also when an error unwinds.
template <class T>
class DeviceBuffer {
 public:
  explicit DeviceBuffer(size_t count) : count_(count) {
    if (count_ > 0) check(cudaMalloc(&ptr_, count_ * sizeof(T)), "cudaMalloc");
  }
  ~DeviceBuffer() {
    if (ptr_) cudaFree(ptr_);
  }
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;
  T* get() const { return ptr_; }
  void upload(const T* host, size_t count) {
    if (count) check(cudaMemcpy(ptr_, host, count * sizeof(T), cudaMemcpyHostToDevice), "cudaMemcpy H2D");
  }
  void download(T* host, size_t count) const {
    if (count) check(cudaMemcpy(host, ptr_, count * sizeof(T), cudaMemcpyDeviceToHost), "cudaMemcpy D2H");
  }

 private:
  T* ptr_ = nullptr;
  size_t count_;
};

// Selects `device` for this thread after checking it exists.
void use_device(int device);

}  // namespace cuda
}  // namespace lowbit

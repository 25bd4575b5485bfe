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

// The calling thread's current device.
inline int current_device() {
  int device = 0;
  check(cudaGetDevice(&device), "cudaGetDevice");
  return device;
}

// The compute capability of `device` as 10 · major + minor (90 on Hopper), asked of the driver once per
// device; 0 for a device index out of range.
inline int compute_capability(int device) {
  static int cc[64] = {};
  if (device < 0 || device >= 64) return 0;
  if (!cc[device]) {
    int major = 0, minor = 0;
    check(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device), "compute capability");
    check(cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, device), "compute capability");
    cc[device] = major * 10 + minor;
  }
  return cc[device];
}

// A host-to-device copy that has landed when it returns. cudaMemcpy from pageable host memory may
// return once the data is staged, before its DMA (ordered on the legacy default stream) has reached
// `dst` (CUDA's API synchronization behavior), and this library's streams are non-blocking, so they
// do not wait for that stream: a kernel launched right after could read the old bytes.
inline cudaError_t memcpy_to_device(void* dst, const void* src, size_t bytes) {
  cudaError_t err = cudaMemcpy(dst, src, bytes, cudaMemcpyHostToDevice);
  if (err == cudaSuccess) err = cudaStreamSynchronize(cudaStreamLegacy);
  return err;
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
    if (count) check(memcpy_to_device(ptr_, host, count * sizeof(T)), "cudaMemcpy H2D");
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

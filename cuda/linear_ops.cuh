// The pieces of CUDA linear operators that more than one file uses: dense weights on the device,
// the bias, and the default kernels' makers (listed in linear_ops.cu's table). A new CUDA kernel is
// a DeviceLinearOp subclass in a file of its own plus one entry in that table.
#pragma once

#include <cuda_runtime.h>

#include <memory>

#include "cuda_api.hpp"
#include "cuda_check.cuh"

namespace lowbit {
namespace cuda {

inline unsigned blocks_for(int64_t n, int threads) { return (unsigned)ceil_div(n, threads); }

// A dense matrix on the device in the dtype it came in (f32, f16 or bf16): 16-bit weights keep half
// the memory and are widened to f32 (exactly) into scratch when used.
class DenseDevice {
 public:
  DenseDevice(const void* src, DType dtype, int64_t count);
  // The f32 matrix, widened into `scratch` when stored in 16 bits (enqueued on s).
  const float* f32(DeviceScratch& scratch, cudaStream_t s) const;
  int64_t bytes() const { return count_ * (int64_t)dtype_size(dtype_); }

 private:
  DType dtype_;
  int64_t count_;
  std::unique_ptr<DeviceBuffer<uint8_t>> buf_;
};

// A linear's bias [N] on the device (or none), added to Y [M, N].
class DeviceBias {
 public:
  DeviceBias(const float* bias, int64_t N);
  void add(float* Y, int64_t M, cudaStream_t s) const;
  int64_t bytes() const { return buf_ ? N_ * 4 : 0; }
  const float* data() const { return buf_ ? buf_->get() : nullptr; }  // device; null without a bias

 private:
  int64_t N_;
  std::unique_ptr<DeviceBuffer<float>> buf_;
};

// The spqr format's operator (spqr_linear.cu): f32 activations ('spqr-cuda', the f32 table) and
// f16/bf16 ('spqr-cuda-half', the half table); one kernel templated on the activation type.
std::unique_ptr<DeviceLinearOp> make_spqr_device_op(const LinearWeights& w, const DeviceInfo& d);
std::unique_ptr<DeviceLinearOp> make_spqr_device_op_half(const LinearWeights& w, const DeviceInfo& d);

}  // namespace cuda
}  // namespace lowbit

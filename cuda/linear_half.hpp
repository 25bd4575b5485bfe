// Prepared linears with fp16 or bf16 activations on a GPU (the binding's prepared linears): X and Y
// are host arrays of 16-bit patterns, copied to the device and back; accumulation in f32. The f32
// interface is LinearOp (native/core/weights/linear.hpp); this one extends it for the CUDA kernels
// that take 16-bit activations (linear_ops.cu's half table). Plain C++, like cuda_api.hpp.
#pragma once

#include <cstdint>
#include <memory>

#include "../native/core/weights/linear.hpp"

namespace lowbit {
namespace cuda {

class HalfLinearOp : public LinearOp {
 public:
  HalfLinearOp(int64_t N, int64_t K, DType activations) : LinearOp(N, K), activations_(activations) {}
  DType activations() const { return activations_; }  // F16 or BF16
  // Y [M, N] = X [M, K] · Wᵀ + bias in activations(); may run on several threads at once.
  virtual void apply_half(const uint16_t* X, int64_t M, uint16_t* Y) const = 0;

 private:
  DType activations_;
};

// The operator for `w` on GPU `device` with `activations` (F16 or BF16): the first kernel of the
// CUDA half table that takes w (or options.kernel). E_UNSUPPORTED when none does (dense weights,
// GPTQ 8-bit), E_ARGUMENT for a kernel that takes f32 activations only.
std::unique_ptr<HalfLinearOp> make_cuda_linear_half(int device, const LinearWeights& w, DType activations,
                                                    const LinearOptions& options = {});

}  // namespace cuda
}  // namespace lowbit

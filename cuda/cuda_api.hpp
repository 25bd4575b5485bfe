// The CUDA backend's host entry points. Implemented by the .cu files when nvcc is found at build
// time, and by stub.cpp otherwise (every call then reports E_CUDA_UNAVAILABLE). Plain C++: no
// CUDA headers here, so the binding and the core can include it in any build.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "../native/core/dtype.hpp"
#include "../native/core/gptq.hpp"
#include "../native/core/packed_matrix.hpp"
#include "../native/core/weights/linear.hpp"

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

// --- linear operators on one GPU (the device side of weights/linear.hpp's seam)

// A growable device allocation an operator may use during apply (e.g. a 16-bit dense weight
// widened to f32 for cuBLAS). Contents do not survive between calls; one per stream (not thread-safe).
class DeviceScratch {
 public:
  DeviceScratch() = default;
  ~DeviceScratch();
  DeviceScratch(const DeviceScratch&) = delete;
  DeviceScratch& operator=(const DeviceScratch&) = delete;
  void* get(int64_t bytes);  // at least `bytes`, on the current device
  int64_t size() const { return size_; }  // bytes held now (get() may grow and move it)

 private:
  void* ptr_ = nullptr;
  int64_t size_ = 0;
};

// One linear's weight resident on one GPU, in whatever layout its kernel chose at load time.
class DeviceLinearOp {
 public:
  DeviceLinearOp(int device, int64_t N, int64_t K) : device_(device), N_(N), K_(K) {}
  virtual ~DeviceLinearOp() = default;
  DeviceLinearOp(const DeviceLinearOp&) = delete;
  DeviceLinearOp& operator=(const DeviceLinearOp&) = delete;

  // Y [M, N] = X [M, K] · Wᵀ + bias, f32, X and Y device memory on device(); enqueued on `stream`
  // (a cudaStream_t; null: the default stream), returns without waiting. The caller selected device().
  virtual void apply(const float* X, int64_t M, float* Y, DeviceScratch& scratch, void* stream) const = 0;
  // The same with fp16 or bf16 activations and outputs (dtype F16 or BF16), f32 accumulation, for
  // kernels that have them (has_half); E_UNSUPPORTED otherwise.
  virtual bool has_half(DType dtype) const {
    (void)dtype;
    return false;
  }
  virtual void apply_half(const uint16_t* X, DType dtype, int64_t M, uint16_t* Y, DeviceScratch& scratch,
                          void* stream) const {
    (void)X, (void)M, (void)Y, (void)scratch, (void)stream;
    fail("E_UNSUPPORTED", std::string("kernel '") + kernel() + "' has no " + dtype_name(dtype) + " activations");
  }
  virtual int64_t bytes() const = 0;       // device memory held
  virtual const char* kernel() const = 0;  // the table entry that made it
  int device() const { return device_; }
  int64_t N() const { return N_; }
  int64_t K() const { return K_; }

 private:
  int device_;
  int64_t N_, K_;
};

// One entry of the CUDA kernel table (cuda/linear_ops.cu); accepts() and make() get the device.
using CudaKernel = KernelEntry<DeviceLinearOp, const DeviceInfo&>;

// The operator for `w` on GPU `device`: the first entry of the CUDA table that takes it (or
// options.kernel). w is host memory (checked with check_linear_weights); the operator copies it.
std::unique_ptr<DeviceLinearOp> make_device_linear(int device, const LinearWeights& w, const LinearOptions& options = {});
// The first operator of the CUDA table of kernels with 16-bit activations (apply_half) that takes `w`
// with `activations` (F16 or BF16), or null when none does (the caller picks another way).
std::unique_ptr<DeviceLinearOp> make_device_linear_half(int device, const LinearWeights& w, DType activations);
// The same operator behind the host-memory LinearOp interface: apply() copies X to the GPU and Y
// back (for the binding's prepared linears and for tests; the forward pass uses the device op).
std::unique_ptr<LinearOp> make_cuda_linear(int device, const LinearWeights& w, const LinearOptions& options = {});
// The CUDA table's entry names, in the order they are tried (empty without CUDA).
std::vector<std::string> cuda_linear_kernels();

// --- GPTQ on one GPU: the contract of native/core/gptq.hpp and hessian.hpp ---

// The GPTQ Hessian H = (2/n) Σ x xᵀ kept on the GPU as an fp32 running mean (as hessian.hpp, which
// says why fp32), updated with a symmetric rank-m product per batch (cuBLAS SSYRK when available).
class HessianAccumulatorDevice {
 public:
  HessianAccumulatorDevice(int device, int64_t K);  // zero H; E_SHAPE for K <= 0
  ~HessianAccumulatorDevice();
  HessianAccumulatorDevice(const HessianAccumulatorDevice&) = delete;
  HessianAccumulatorDevice& operator=(const HessianAccumulatorDevice&) = delete;

  // Folds m tokens X [m, K] (row-major) into the mean: X on the host, or already on this device.
  // E_NAN (H unchanged) when X holds NaN or infinity. Not thread-safe: callers serialize.
  void add_batch(const float* X, int64_t m);
  void add_batch_device(const float* X, int64_t m);
  // X [m, K] on this device in F32, F16 or BF16 (e.g. a 16-bit forward pass's captures, read where
  // they are): 16-bit products on the tensor cores with f32 accumulation, the lower half only.
  void add_batch_device(const void* X, DType dtype, int64_t m);
  void download(float* H) const;  // [K, K], full symmetric
  void reset();

  int device() const { return device_; }
  int64_t K() const { return K_; }
  int64_t samples() const { return samples_; }
  const float* data() const { return H_; }  // device pointer, [K, K] full symmetric

 private:
  int device_;
  int64_t K_;
  int64_t samples_ = 0;
  float* H_ = nullptr;
  float* staging_ = nullptr;  // device copy of host batches
  int64_t staging_rows_ = 0;
  int* flag_ = nullptr;       // first non-finite element of a batch
};

// gptq_quantize of native/core/gptq.hpp on GPU `device`: W [N, K] and H [K, K] on the host, the
// same options, outputs (host buffers) and report; the Hessian's factorization and the blocked
// sweep run on the GPU. Results match the CPU's except where float rounding in a different order
// tips a value that sits on a rounding boundary.
GptqReport gptq_quantize(int device, const float* W, int64_t N, int64_t K, const float* H, const GptqOptions& opt,
                         const GptqOutput& out);
// The same with the Hessian already on the GPU (no round trip through the host).
GptqReport gptq_quantize(const HessianAccumulatorDevice& H, const float* W, int64_t N, const GptqOptions& opt,
                         const GptqOutput& out);

// Which libraries the GPU's linear algebra uses here, e.g. "cuBLAS 130100 (dlopen), cuSOLVER
// Cholesky (dlopen)", or the built-in fallbacks and why.
std::string gptq_linalg_backend();

}  // namespace cuda
}  // namespace lowbit

// CUDA linear operators: the default kernels for each weight format, the table they are picked
// from, and the host-memory wrapper behind make_cuda_linear. Faster kernels (load-time repacks,
// tensor cores) go in files of their own and take an entry in kCudaKernels before the defaults.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <mutex>
#include <vector>

#include "cuda_api.hpp"
#include "cuda_check.cuh"
#include "gptq_kernels/gptq_kernels.hpp"
#include "linalg.cuh"
#include "linear_half.hpp"
#include "linear_ops.cuh"

namespace lowbit {
namespace cuda {

DeviceScratch::~DeviceScratch() {
  if (ptr_) cudaFree(ptr_);
}

void* DeviceScratch::get(int64_t bytes) {
  if (bytes > size_) {
    if (ptr_) cudaFree(ptr_);
    ptr_ = nullptr;
    size_ = 0;
    check(cudaMalloc(&ptr_, (size_t)bytes), "cudaMalloc (scratch)");
    size_ = bytes;
  }
  return ptr_;
}

namespace {

// 16-bit weights to f32 (exact): fp16 through the hardware conversion, bf16 by shifting into place.
__global__ void widen(const uint16_t* src, int64_t n, bool bf16, float* dst) {
  const int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x;
  if (i >= n) return;
  dst[i] = bf16 ? __uint_as_float((uint32_t)src[i] << 16) : __half2float(__ushort_as_half(src[i]));
}

__global__ void add_bias(float* Y, int64_t rows, int64_t N, const float* bias) {
  const int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x;
  if (i < rows * N) Y[i] += bias[i % N];
}

// The f32 bias added to 16-bit outputs (one more rounding, as a bias add in the model's dtype).
template <class T>
__global__ void add_bias_half(T* Y, int64_t rows, int64_t N, const float* bias) {
  const int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x;
  if (i < rows * N) Y[i] = T(float(Y[i]) + bias[i % N]);
}

}  // namespace

DenseDevice::DenseDevice(const void* src, DType dtype, int64_t count) : dtype_(dtype), count_(count) {
  require(dtype == DType::F32 || dtype == DType::F16 || dtype == DType::BF16, "E_DTYPE",
          "dense weights must be f32, f16 or bf16");
  const size_t bytes = (size_t)count * dtype_size(dtype);
  buf_ = std::make_unique<DeviceBuffer<uint8_t>>(bytes);
  buf_->upload(static_cast<const uint8_t*>(src), bytes);
}

const float* DenseDevice::f32(DeviceScratch& scratch, cudaStream_t s) const {
  if (dtype_ == DType::F32) return reinterpret_cast<const float*>(buf_->get());
  float* out = static_cast<float*>(scratch.get(count_ * 4));
  widen<<<blocks_for(count_, 256), 256, 0, s>>>(reinterpret_cast<const uint16_t*>(buf_->get()), count_,
                                                dtype_ == DType::BF16, out);
  check(cudaGetLastError(), "widen launch");
  return out;
}

DeviceBias::DeviceBias(const float* bias, int64_t N) : N_(N) {
  if (!bias) return;
  buf_ = std::make_unique<DeviceBuffer<float>>((size_t)N);
  buf_->upload(bias, (size_t)N);
}

void DeviceBias::add(float* Y, int64_t M, cudaStream_t s) const {
  if (!buf_) return;
  add_bias<<<blocks_for(M * N_, 256), 256, 0, s>>>(Y, M, N_, buf_->get());
  check(cudaGetLastError(), "add_bias launch");
}

namespace {

// Dense weights: cuBLAS SGEMM (or the built-in tiled product), 16-bit weights widened first.
class DenseSgemmOp : public DeviceLinearOp {
 public:
  DenseSgemmOp(int device, const LinearWeights& w)
      : DeviceLinearOp(device, w.N(), w.K()),
        dense_(w.dense()->data, w.dense()->dtype, w.N() * w.K()),
        bias_(w.bias, w.N()) {}
  void apply(const float* X, int64_t M, float* Y, DeviceScratch& scratch, void* stream) const override {
    const cudaStream_t s = static_cast<cudaStream_t>(stream);
    sgemm(s, false, true, M, N(), K(), 1.f, X, K(), dense_.f32(scratch, s), K(), 0.f, Y, N());
    bias_.add(Y, M, s);
  }
  int64_t bytes() const override { return dense_.bytes() + bias_.bytes(); }
  const char* kernel() const override { return "dense-sgemm"; }

 private:
  DenseDevice dense_;
  DeviceBias bias_;
};

// GPTQ weights copied verbatim (PackedMatrixDevice), multiplied by packed_gemm.cu's kernels.
class GptqPackedDeviceOp : public DeviceLinearOp {
 public:
  GptqPackedDeviceOp(int device, const LinearWeights& w)
      : DeviceLinearOp(device, w.N(), w.K()), packed_(device, *w.gptq()), bias_(w.bias, w.N()) {}
  void apply(const float* X, int64_t M, float* Y, DeviceScratch&, void* stream) const override {
    packed_gemm_device(packed_, X, M, Y, stream);
    bias_.add(Y, M, static_cast<cudaStream_t>(stream));
  }
  int64_t bytes() const override { return packed_.bytes() + bias_.bytes(); }
  const char* kernel() const override { return "gptq-packed"; }

 private:
  PackedMatrixDevice packed_;
  DeviceBias bias_;
};

// GPTQ 2/3/4-bit weights repacked once at load time for the tensor-core kernels of gptq_kernels/
// (fp16/bf16 activations only: the f32 path keeps gptq-packed, whose results equal the CPU's).
// The repacked weights own the kernels' scratch, so products of one operator must not overlap:
// HostCopyOp serializes its calls, and the forward pass runs one stream.
class GptqTensorCoreOp : public DeviceLinearOp {
 public:
  GptqTensorCoreOp(int device, const LinearWeights& w)
      : DeviceLinearOp(device, w.N(), w.K()), repacked_(gptq_repack(*w.gptq(), device)), bias_(w.bias, w.N()) {}
  void apply(const float*, int64_t, float*, DeviceScratch&, void*) const override {
    fail("E_UNSUPPORTED", "kernel 'gptq-tc' takes fp16 or bf16 activations, not f32 (use gptq-packed)");
  }
  bool has_half(DType dtype) const override { return dtype == DType::F16 || dtype == DType::BF16; }
  void apply_half(const uint16_t* X, DType dtype, int64_t M, uint16_t* Y, DeviceScratch& scratch,
                  void* stream) const override {
    require(has_half(dtype), "E_DTYPE", "gptq-tc takes f16 or bf16 activations");
    const cudaStream_t s = static_cast<cudaStream_t>(stream);
    // Large M: the dequantize + cuBLAS path, in the caller's scratch (grown only outside graph capture;
    // a captured product whose scratch is too small keeps the fused kernels).
    void* wide = nullptr;
    if (gptq_dequant_wins(*repacked_, M) && have_cublas()) {
      const int64_t need = gptq_dequant_bytes(*repacked_);
      cudaStreamCaptureStatus capture = cudaStreamCaptureStatusNone;
      check(cudaStreamIsCapturing(s, &capture), "cudaStreamIsCapturing");
      if (capture == cudaStreamCaptureStatusNone || scratch.size() >= need) wide = scratch.get(need);
    }
    gptq_matmul(*repacked_, X, dtype == DType::F16 ? GptqDtype::f16 : GptqDtype::bf16, M, Y, stream, wide);
    if (bias_.bytes() == 0) return;
    const unsigned blocks = blocks_for(M * N(), 256);
    if (dtype == DType::F16)
      add_bias_half<<<blocks, 256, 0, s>>>(reinterpret_cast<__half*>(Y), M, N(), bias_.data());
    else
      add_bias_half<<<blocks, 256, 0, s>>>(reinterpret_cast<__nv_bfloat16*>(Y), M, N(), bias_.data());
    check(cudaGetLastError(), "add_bias launch");
  }
  int64_t bytes() const override { return repacked_->bytes + bias_.bytes(); }
  const char* kernel() const override { return "gptq-tc"; }

 private:
  std::unique_ptr<GptqDeviceWeights> repacked_;
  DeviceBias bias_;
};

bool gptq_tc_takes(const LinearWeights& w, const DeviceInfo& d) {
  const int bits = w.gptq()->bits;
  return (bits == 2 || bits == 3 || bits == 4) && d.major >= 8;  // mma.sync with bf16: sm_80 and newer
}

template <class Op>
std::unique_ptr<DeviceLinearOp> make(const LinearWeights& w, const DeviceInfo& d) {
  return std::make_unique<Op>(d.index, w);
}

// Tried in order: put a specialised kernel before the general one of its format.
const std::vector<CudaKernel>& cuda_kernels() {
  static const std::vector<CudaKernel> table = {
      {"dense-sgemm", Format::Dense, nullptr, &make<DenseSgemmOp>},
      {"gptq-packed", Format::Gptq, nullptr, &make<GptqPackedDeviceOp>},
      {"spqr-cuda", Format::Spqr, nullptr, &make_spqr_device_op},
  };
  return table;
}

// The kernels with fp16/bf16 activations (DeviceLinearOp::apply_half), tried in order.
const std::vector<CudaKernel>& cuda_half_kernels() {
  static const std::vector<CudaKernel> table = {
      {"gptq-tc", Format::Gptq, &gptq_tc_takes, &make<GptqTensorCoreOp>},
      {"spqr-cuda-half", Format::Spqr, nullptr, &make_spqr_device_op_half},
  };
  return table;
}

bool named_in(const std::vector<CudaKernel>& table, const std::string& name) {
  for (const auto& e : table)
    if (name == e.name) return true;
  return false;
}

// The properties of `device` (E_CUDA_UNAVAILABLE when it does not exist), read once per device.
const DeviceInfo& device_info(int device) {
  static std::mutex lock;
  static std::vector<DeviceInfo> known;
  use_device(device);
  std::lock_guard<std::mutex> guard(lock);
  for (const auto& d : known)
    if (d.index == device) return d;
  for (const auto& d : devices(nullptr))
    if (d.index == device) {
      known.push_back(d);
      return known.back();
    }
  fail("E_CUDA_UNAVAILABLE", "no CUDA device " + std::to_string(device));
}

// A device operator behind the host-memory interface: X in, Y out through device buffers that grow
// to the largest call. One call at a time per operator (a lock), on a stream of its own.
// With 16-bit activations (HalfLinearOp) apply_half does the same in 16 bits; the lock also keeps
// the operator's own scratch (gptq-tc's split-K sums) to one product at a time.
class HostCopyOp : public HalfLinearOp {
 public:
  explicit HostCopyOp(std::unique_ptr<DeviceLinearOp> op, DType activations = DType::F32)
      : HalfLinearOp(op->N(), op->K(), activations), op_(std::move(op)) {
    check(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking), "cudaStreamCreate");
  }
  ~HostCopyOp() override {
    select_quietly();
    cudaStreamDestroy(stream_);
  }
  void apply(const float* X, int64_t M, float* Y) const override {
    require(M >= 1, "E_SHAPE", "M must be at least 1");
    std::lock_guard<std::mutex> guard(lock_);
    check(cudaSetDevice(op_->device()), "cudaSetDevice");
    float* dx = static_cast<float*>(x_.get(M * K() * 4));
    float* dy = static_cast<float*>(y_.get(M * N() * 4));
    check(cudaMemcpyAsync(dx, X, (size_t)(M * K()) * 4, cudaMemcpyHostToDevice, stream_), "cudaMemcpy H2D");
    op_->apply(dx, M, dy, scratch_, stream_);
    check(cudaMemcpyAsync(Y, dy, (size_t)(M * N()) * 4, cudaMemcpyDeviceToHost, stream_), "cudaMemcpy D2H");
    check(cudaStreamSynchronize(stream_), "linear");
  }
  void apply_half(const uint16_t* X, int64_t M, uint16_t* Y) const override {
    require(M >= 1, "E_SHAPE", "M must be at least 1");
    std::lock_guard<std::mutex> guard(lock_);
    check(cudaSetDevice(op_->device()), "cudaSetDevice");
    uint16_t* dx = static_cast<uint16_t*>(x_.get(M * K() * 2));
    uint16_t* dy = static_cast<uint16_t*>(y_.get(M * N() * 2));
    check(cudaMemcpyAsync(dx, X, (size_t)(M * K()) * 2, cudaMemcpyHostToDevice, stream_), "cudaMemcpy H2D");
    op_->apply_half(dx, activations(), M, dy, scratch_, stream_);
    check(cudaMemcpyAsync(Y, dy, (size_t)(M * N()) * 2, cudaMemcpyDeviceToHost, stream_), "cudaMemcpy D2H");
    check(cudaStreamSynchronize(stream_), "linear");
  }
  int64_t bytes() const override { return op_->bytes(); }
  const char* kernel() const override { return op_->kernel(); }

 private:
  void select_quietly() const { cudaSetDevice(op_->device()); }
  std::unique_ptr<DeviceLinearOp> op_;
  cudaStream_t stream_ = nullptr;
  mutable std::mutex lock_;
  mutable DeviceScratch x_, y_, scratch_;
};

}  // namespace

std::unique_ptr<DeviceLinearOp> make_device_linear(int device, const LinearWeights& w, const LinearOptions& options) {
  check_linear_weights(w, "weight");
  require(!named_in(cuda_half_kernels(), options.kernel), "E_ARGUMENT",
          "kernel '" + options.kernel + "' takes f16 or bf16 activations only, not f32");
  const DeviceInfo& d = device_info(device);
  return pick_kernel(cuda_kernels(), w, options, d).make(w, d);
}

std::unique_ptr<DeviceLinearOp> make_device_linear_half(int device, const LinearWeights& w, DType activations) {
  const DeviceInfo& d = device_info(device);
  for (const auto& e : cuda_half_kernels())
    if (e.format == w.format() && (!e.accepts || e.accepts(w, d))) {
      auto op = e.make(w, d);
      if (op->has_half(activations)) return op;
    }
  return nullptr;
}

std::unique_ptr<LinearOp> make_cuda_linear(int device, const LinearWeights& w, const LinearOptions& options) {
  return std::make_unique<HostCopyOp>(make_device_linear(device, w, options));
}

std::unique_ptr<HalfLinearOp> make_cuda_linear_half(int device, const LinearWeights& w, DType activations,
                                                    const LinearOptions& options) {
  require(activations == DType::F16 || activations == DType::BF16, "E_DTYPE", "16-bit activations are f16 or bf16");
  check_linear_weights(w, "weight");
  const DeviceInfo& d = device_info(device);
  const std::string act = dtype_name(activations);
  require(options.kernel.empty() || !named_in(cuda_kernels(), options.kernel), "E_ARGUMENT",
          "kernel '" + options.kernel + "' takes f32 activations only, not " + act);
  for (const auto& e : cuda_half_kernels())
    if (e.format == w.format() && (!e.accepts || e.accepts(w, d)) && (options.kernel.empty() || options.kernel == e.name)) {
      auto op = e.make(w, d);
      require(op->has_half(activations), "E_UNSUPPORTED", std::string("kernel '") + e.name + "' has no " + act + " activations");
      return std::make_unique<HostCopyOp>(std::move(op), activations);
    }
  require(options.kernel.empty() || named_in(cuda_half_kernels(), options.kernel), "E_ARGUMENT",
          "no kernel named '" + options.kernel + "'");
  std::string what = std::string(kFormatNames[(int)w.format()]);
  if (const PackedMatrix* q = w.gptq()) what += " " + std::to_string(q->bits) + "-bit";
  fail("E_UNSUPPORTED", "no CUDA kernel takes " + what + " weights with " + act +
                            " activations on this device (gptq-tc: GPTQ 2/3/4-bit, compute capability 8.0+; spqr-cuda-half: SpQR)");
}

// Both tables' names: the f32 kernels, then those with 16-bit activations.
std::vector<std::string> cuda_linear_kernels() {
  std::vector<std::string> names;
  for (const auto& e : cuda_kernels()) names.push_back(e.name);
  for (const auto& e : cuda_half_kernels()) names.push_back(e.name);
  return names;
}

}  // namespace cuda
}  // namespace lowbit

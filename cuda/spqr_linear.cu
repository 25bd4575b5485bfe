// SpQR weights on a GPU (the 'spqr' weight format, native/core/spqr.hpp): Y = X · Wᵀ without
// materialising W. The dense low-bit part is decoded on the fly (codes and both levels of
// statistics, in f32), the sparse fp16 outliers are added from their CSR rows.
//
// Load-time repack (SpqrDevice): each row's codes in sweep order packed `per` = floor(32 / bits) to
// a 32-bit word (2-bit: 16, 3-bit: 10 with 2 bits unused, 4-bit: 8), so that a lane decodes a whole
// word with shifts; the first-level scale and zero codes stay the checkpoint's bit streams; the
// second-level (offset, step) pairs are widened to f32; outlier values to f32.
//
// Per call: X is gathered into sweep order once (x[perm[p]], in f32, into scratch); then one warp
// per output row walks the row's words (lane l takes words l, l + 32, ...), keeps the current
// group's decoded scale and shift in registers, accumulates up to MT input rows at once, adds the
// row's outliers, and reduces across the warp. f32 accumulation for every activation dtype.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <vector>

#include "cuda_api.hpp"
#include "cuda_check.cuh"
#include "linear_ops.cuh"
#include "../native/core/dtype.hpp"
#include "../native/core/spqr.hpp"
#include "spqr_kernels/spqr_kernels.hpp"

namespace lowbit {
namespace cuda {
namespace {

constexpr int kWarpsPerBlock = 4;

__device__ __forceinline__ float to_f32(float v) { return v; }
__device__ __forceinline__ float to_f32(__half v) { return __half2float(v); }
__device__ __forceinline__ float to_f32(__nv_bfloat16 v) { return __bfloat162float(v); }
template <class T>
__device__ __forceinline__ T from_f32(float v);
template <>
__device__ __forceinline__ float from_f32<float>(float v) { return v; }
template <>
__device__ __forceinline__ __half from_f32<__half>(float v) { return __float2half_rn(v); }
template <>
__device__ __forceinline__ __nv_bfloat16 from_f32<__nv_bfloat16>(float v) { return __float2bfloat16_rn(v); }

// Value i of an LSB-first bit stream of `bits` (≤ 8) bits per value; the stream has a byte of padding.
__device__ __forceinline__ uint32_t stream_get(const uint8_t* s, int64_t i, int bits) {
  const int64_t o = i * bits;
  const uint32_t two = (uint32_t)s[o >> 3] | ((uint32_t)s[(o >> 3) + 1] << 8);
  return (two >> (o & 7)) & ((1u << bits) - 1u);
}

// Xp [M, K] (f32, sweep order) = X [M, K] gathered through perm (identity when null).
template <class T>
__global__ void gather_kernel(const T* X, int64_t M, int64_t K, const int32_t* perm, float* Xp) {
  const int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x;
  if (i >= M * K) return;
  const int64_t m = i / K, p = i % K;
  Xp[i] = to_f32(X[m * K + (perm ? perm[p] : p)]);
}

struct SpqrDeviceView {
  const uint32_t* codes;     // [N, words]
  const uint8_t* scode;      // bit stream [N, G]
  const uint8_t* zcode;      // bit stream [N, G]
  const float4* stats;       // [G, NB]: (scale offset, scale step, zero offset, zero step)
  const int32_t* rowptr;     // [N + 1]
  const int32_t* cols;       // [nnz] sweep positions
  const float* values;       // [nnz]
  const float* bias;         // [N] or null
  int64_t N, K, G, NB, words, beta1, beta2;
  int bits, per, stat_bits;
};

// Rows [m0, m0 + MT) ∩ [0, M) of Y; one warp per output row.
template <class T, int MT>
__global__ void spqr_rows_kernel(SpqrDeviceView w, const float* Xp, int64_t M, int64_t m0, T* Y) {
  const int lane = threadIdx.x & 31;
  const int64_t n = blockIdx.x * (int64_t)kWarpsPerBlock + (threadIdx.x >> 5);
  if (n >= w.N) return;
  const int64_t b = n / w.beta2;
  const uint32_t mask = (1u << w.bits) - 1u;
  float acc[MT];
#pragma unroll
  for (int j = 0; j < MT; ++j) acc[j] = 0.f;
  const int rows = (int)(M - m0 < MT ? M - m0 : MT);
  const float* x0 = Xp + m0 * w.K;
  auto decode = [&](int64_t g, float& scale, float& shift) {
    const float4 s = w.stats[g * w.NB + b];
    scale = fmaf(s.y, (float)stream_get(w.scode, n * w.G + g, w.stat_bits), s.x);
    const float zero = fmaf(s.w, (float)stream_get(w.zcode, n * w.G + g, w.stat_bits), s.z);
    shift = -scale * zero;
  };
  const uint32_t* row = w.codes + n * w.words;
  for (int64_t word = lane; word < w.words; word += 32) {
    const uint32_t c = row[word];
    int64_t p = word * w.per;
    int64_t g = p / w.beta1, next = (g + 1) * w.beta1;
    float scale, shift;
    decode(g, scale, shift);
    const int count = (int)(w.K - p < w.per ? w.K - p : w.per);
    for (int j = 0; j < count; ++j, ++p) {
      if (p == next) {
        ++g;
        next += w.beta1;
        decode(g, scale, shift);
      }
      const float v = fmaf((float)((c >> (j * w.bits)) & mask), scale, shift);
#pragma unroll
      for (int r = 0; r < MT; ++r)
        if (r < rows) acc[r] = fmaf(v, x0[r * w.K + p], acc[r]);
    }
  }
  for (int32_t i = w.rowptr[n] + lane; i < w.rowptr[n + 1]; i += 32) {
    const float v = w.values[i];
    const int32_t p = w.cols[i];
#pragma unroll
    for (int r = 0; r < MT; ++r)
      if (r < rows) acc[r] = fmaf(v, x0[r * w.K + p], acc[r]);
  }
#pragma unroll
  for (int r = 0; r < MT; ++r) {
    float s = acc[r];
    for (int off = 16; off > 0; off >>= 1) s += __shfl_xor_sync(0xffffffffu, s, off);
    if (lane == 0 && r < rows) Y[(m0 + r) * w.N + n] = from_f32<T>(w.bias ? s + w.bias[n] : s);
  }
}

// The weights in the kernel's layout, on one device.
class SpqrDevice {
 public:
  explicit SpqrDevice(const SpqrMatrix& m) {
    v_.N = m.N;
    v_.K = m.K;
    v_.G = m.groups();
    v_.NB = m.row_blocks();
    v_.beta1 = m.beta1;
    v_.beta2 = m.beta2;
    v_.bits = m.bits;
    v_.per = 32 / m.bits;
    v_.stat_bits = m.stat_bits;
    v_.words = ceil_div(m.K, (int64_t)v_.per);
    std::vector<uint32_t> codes((size_t)checked_mul(m.N, v_.words, "SpQR code words"), 0u);
    for (int64_t n = 0; n < m.N; ++n)
      for (int64_t p = 0; p < m.K; ++p)
        codes[(size_t)(n * v_.words + p / v_.per)] |= bitstream_get(m.qweight, n * m.K + p, m.bits)
                                                       << (int)((p % v_.per) * m.bits);
    codes_ = upload(codes);
    const int64_t stat_bytes = bitstream_bytes(m.N * v_.G, m.stat_bits);
    std::vector<uint8_t> s(m.scale_codes, m.scale_codes + stat_bytes), z(m.zero_codes, m.zero_codes + stat_bytes);
    s.resize(s.size() + 4, 0);  // stream_get reads one byte past a value
    z.resize(z.size() + 4, 0);
    scode_ = upload(s);
    zcode_ = upload(z);
    std::vector<float4> stats((size_t)(v_.G * v_.NB));
    for (size_t i = 0; i < stats.size(); ++i)
      stats[i] = make_float4(f16_to_f32(m.scale_stats[2 * i]), f16_to_f32(m.scale_stats[2 * i + 1]),
                             f16_to_f32(m.zero_stats[2 * i]), f16_to_f32(m.zero_stats[2 * i + 1]));
    stats_ = upload(stats);
    rowptr_ = upload(std::vector<int32_t>(m.outlier_rowptr, m.outlier_rowptr + m.N + 1));
    const int64_t nnz = m.outliers();
    std::vector<int32_t> cols(m.outlier_cols, m.outlier_cols + nnz);
    std::vector<float> values((size_t)nnz);
    for (int64_t i = 0; i < nnz; ++i) values[(size_t)i] = f16_to_f32(m.outlier_values[i]);
    cols.push_back(0);  // (never empty: a null buffer is fine, but keep one code path)
    values.push_back(0.f);
    cols_ = upload(cols);
    values_ = upload(values);
    if (m.perm) perm_ = upload(std::vector<int32_t>(m.perm, m.perm + m.K));
    v_.codes = codes_->get();
    v_.scode = scode_->get();
    v_.zcode = zcode_->get();
    v_.stats = stats_->get();
    v_.rowptr = rowptr_->get();
    v_.cols = cols_->get();
    v_.values = values_->get();
    bytes_ = (int64_t)(codes.size() * 4 + s.size() + z.size() + stats.size() * 16 + (m.N + 1) * 4 + cols.size() * 4 +
                       values.size() * 4 + (m.perm ? m.K * 4 : 0));
  }

  // Y [M, N] (T) = X [M, K] (T) · Wᵀ + bias, enqueued on s; Xp: scratch of M·K floats.
  template <class T>
  void run(const T* X, int64_t M, T* Y, const float* bias, DeviceScratch& scratch, cudaStream_t s) const {
    float* Xp = static_cast<float*>(scratch.get(checked_mul(M, v_.K, "M x K") * 4));
    gather_kernel<T><<<blocks_for(M * v_.K, 256), 256, 0, s>>>(X, M, v_.K, perm_ ? perm_->get() : nullptr, Xp);
    check(cudaGetLastError(), "spqr gather launch");
    SpqrDeviceView w = v_;
    w.bias = bias;
    const unsigned grid = blocks_for(v_.N, kWarpsPerBlock);
    const int threads = 32 * kWarpsPerBlock;
    for (int64_t m0 = 0; m0 < M; m0 += 8) {
      const int64_t rows = M - m0;
      if (rows == 1)
        spqr_rows_kernel<T, 1><<<grid, threads, 0, s>>>(w, Xp, M, m0, Y);
      else if (rows == 2)
        spqr_rows_kernel<T, 2><<<grid, threads, 0, s>>>(w, Xp, M, m0, Y);
      else if (rows <= 4)
        spqr_rows_kernel<T, 4><<<grid, threads, 0, s>>>(w, Xp, M, m0, Y);
      else
        spqr_rows_kernel<T, 8><<<grid, threads, 0, s>>>(w, Xp, M, m0, Y);
      check(cudaGetLastError(), "spqr launch");
    }
  }
  int64_t bytes() const { return bytes_; }

 private:
  template <class E>
  static std::unique_ptr<DeviceBuffer<E>> upload(const std::vector<E>& v) {
    auto b = std::make_unique<DeviceBuffer<E>>(v.size());
    b->upload(v.data(), v.size());
    return b;
  }
  SpqrDeviceView v_{};
  std::unique_ptr<DeviceBuffer<uint32_t>> codes_;
  std::unique_ptr<DeviceBuffer<uint8_t>> scode_, zcode_;
  std::unique_ptr<DeviceBuffer<float4>> stats_;
  std::unique_ptr<DeviceBuffer<int32_t>> rowptr_, cols_, perm_;
  std::unique_ptr<DeviceBuffer<float>> values_;
  int64_t bytes_ = 0;
};

// The spqr format's CUDA operator: f32 activations (apply, the forward pass's path: the plain
// kernel above, f32 throughout) and f16/bf16 (apply_half): the tensor-core kernel of spqr_kernels/
// when the weights fit it (spqr_tc_supports; sm_80 and newer), else the plain kernel. The
// repacked weights own that kernel's scratch, so products of one operator must not overlap (the
// host-memory wrapper serializes its calls; the forward pass runs one stream).
class SpqrDeviceOp : public DeviceLinearOp {
 public:
  SpqrDeviceOp(int device, const LinearWeights& w, const char* name, bool fast)
      : DeviceLinearOp(device, w.N(), w.K()), bias_(w.bias, w.N()), name_(name) {
    if (fast) fast_ = spqr_repack(*w.spqr(), device);
    else weights_ = std::make_unique<SpqrDevice>(*w.spqr());
  }
  void apply(const float* X, int64_t M, float* Y, DeviceScratch& scratch, void* stream) const override {
    require(weights_ != nullptr, "E_UNSUPPORTED", std::string(name_) + " takes f16 or bf16 activations (f32: spqr-cuda)");
    weights_->run(X, M, Y, bias_.data(), scratch, static_cast<cudaStream_t>(stream));
  }
  bool has_half(DType dtype) const override { return dtype == DType::F16 || dtype == DType::BF16; }
  void apply_half(const uint16_t* X, DType dtype, int64_t M, uint16_t* Y, DeviceScratch& scratch,
                  void* stream) const override {
    require(has_half(dtype), "E_DTYPE", std::string(name_) + " takes f32, f16 or bf16 activations");
    if (fast_) {
      spqr_matmul(*fast_, X, dtype == DType::F16 ? SpqrDtype::f16 : SpqrDtype::bf16, M, Y, bias_.data(), stream);
      return;
    }
    const cudaStream_t s = static_cast<cudaStream_t>(stream);
    if (dtype == DType::F16)
      weights_->run(reinterpret_cast<const __half*>(X), M, reinterpret_cast<__half*>(Y), bias_.data(), scratch, s);
    else
      weights_->run(reinterpret_cast<const __nv_bfloat16*>(X), M, reinterpret_cast<__nv_bfloat16*>(Y), bias_.data(),
                    scratch, s);
  }
  int64_t bytes() const override { return (fast_ ? fast_->bytes : weights_->bytes()) + bias_.bytes(); }
  const char* kernel() const override { return name_; }

 private:
  std::unique_ptr<SpqrDevice> weights_;
  std::unique_ptr<SpqrDeviceWeights> fast_;
  DeviceBias bias_;
  const char* name_;
};

}  // namespace

std::unique_ptr<DeviceLinearOp> make_spqr_device_op(const LinearWeights& w, const DeviceInfo& d) {
  return std::make_unique<SpqrDeviceOp>(d.index, w, "spqr-cuda", false);
}

std::unique_ptr<DeviceLinearOp> make_spqr_device_op_half(const LinearWeights& w, const DeviceInfo& d) {
  const bool fast = d.major >= 8 && spqr_tc_supports(*w.spqr(), nullptr);  // mma.sync with bf16: sm_80+
  return std::make_unique<SpqrDeviceOp>(d.index, w, "spqr-cuda-half", fast);
}

}  // namespace cuda
}  // namespace lowbit

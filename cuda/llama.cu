// The Llama forward pass on one GPU: native/core/model/backend.hpp's LlamaBackend, with every weight
// resident on the device (dense linears as f32 copies, packed ones as PackedMatrixDevice) and the
// ops as straightforward f32 kernels. Same math as cpu_llama.cpp, op for op; correctness first (the
// speed work has its own issue). Registered with make_backend() by a static initializer.
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cmath>
#include <cstring>
#include <memory>
#include <optional>
#include <vector>

#include "../native/core/model/backend.hpp"
#include "cuda_api.hpp"
#include "cuda_check.cuh"
#include "linalg.cuh"

namespace lowbit {
namespace cuda {
namespace {

using model::BlockRun;
using model::BlockWeights;
using model::CapturePoint;
using model::GlobalWeights;
using model::kBlockLinears;
using model::Linear;
using model::LinearWeights;
using model::LlamaBackend;
using model::LlamaConfig;

unsigned blocks_for(int64_t n, int threads) { return (unsigned)ceil_div(n, threads); }

// --- kernels ---

__global__ void gather_rows(const float* table, const int32_t* ids, int64_t n, int64_t dim, float* out) {
  const int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x;
  if (i < n * dim) out[i] = table[(int64_t)ids[i / dim] * dim + i % dim];
}

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

__global__ void add_inplace(float* y, const float* x, int64_t n) {
  const int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x;
  if (i < n) y[i] += x[i];
}

// y = gate · sigmoid(gate) · up, as silu_mul on the CPU.
__global__ void swiglu(const float* gate, const float* up, int64_t n, float* out) {
  const int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x;
  if (i < n) out[i] = gate[i] / (1.0f + expf(-gate[i])) * up[i];
}

// One block per row: the sum of squares in double, as the CPU.
__global__ void rms_norm(const float* X, int64_t dim, const float* w, float eps, float* Y) {
  __shared__ double part[32];
  const float* x = X + blockIdx.x * dim;
  float* y = Y + blockIdx.x * dim;
  double ss = 0;
  for (int64_t i = threadIdx.x; i < dim; i += blockDim.x) ss += (double)x[i] * x[i];
  for (int off = 16; off; off >>= 1) ss += __shfl_xor_sync(0xffffffffu, ss, off);
  if (threadIdx.x % 32 == 0) part[threadIdx.x / 32] = ss;
  __syncthreads();
  if (threadIdx.x < 32) {
    double v = threadIdx.x < blockDim.x / 32 ? part[threadIdx.x] : 0.0;
    for (int off = 16; off; off >>= 1) v += __shfl_xor_sync(0xffffffffu, v, off);
    if (threadIdx.x == 0) part[0] = v;
  }
  __syncthreads();
  const float variance = (float)(part[0] / (double)dim);
  const float inv = 1.0f / sqrtf(variance + eps);
  for (int64_t i = threadIdx.x; i < dim; i += blockDim.x) y[i] = __fmul_rn(w[i], __fmul_rn(x[i], inv));
}

// Half-split rotary embedding; row r sits at table row (r % rows_per_seq). cos/sin [positions, half].
__global__ void rope(float* X, int64_t rows, int64_t rows_per_seq, int64_t stride, int64_t heads, int64_t half,
                     const float* cosv, const float* sinv) {
  const int64_t e = blockIdx.x * (int64_t)blockDim.x + threadIdx.x;
  if (e >= rows * heads * half) return;
  const int64_t i = e % half, h = (e / half) % heads, r = e / (half * heads);
  const int64_t t = r % rows_per_seq;
  float* x = X + r * stride + h * 2 * half;
  const float c = cosv[t * half + i], s = sinv[t * half + i];
  const float a = x[i], b = x[i + half];
  x[i] = __fsub_rn(__fmul_rn(a, c), __fmul_rn(b, s));
  x[i + half] = __fadd_rn(__fmul_rn(b, c), __fmul_rn(a, s));
}

// Causal grouped-query attention. Query row r: sequence b = r / S, position p0 + r % S; it attends
// to keys 0 .. p0 + r % S of its sequence, at rows b·key_stride + j of K and V ([*, kv_heads·hd]).
// One block per (query row, head); scores in shared memory.
__global__ void attention(const float* Q, int64_t S, int64_t p0, const float* K, const float* V, int64_t key_stride,
                          int64_t heads, int64_t kv_heads, int64_t hd, float scale, float* out) {
  extern __shared__ float scores[];
  __shared__ float red[32];
  const int64_t r = blockIdx.x, h = blockIdx.y, b = r / S, len = p0 + r % S + 1;
  const int64_t kvh = h / (heads / kv_heads), kw = kv_heads * hd;
  const float* q = Q + r * heads * hd + h * hd;
  const float* kbase = K + b * key_stride * kw + kvh * hd;
  const float* vbase = V + b * key_stride * kw + kvh * hd;
  float local_max = -INFINITY;
  for (int64_t j = threadIdx.x; j < len; j += blockDim.x) {
    const float* k = kbase + j * kw;
    float dot = 0.f;
    for (int64_t d = 0; d < hd; ++d) dot += q[d] * k[d];
    scores[j] = dot * scale;
    local_max = fmaxf(local_max, scores[j]);
  }
  // Block max, then the sum of exponentials.
  for (int off = 16; off; off >>= 1) local_max = fmaxf(local_max, __shfl_xor_sync(0xffffffffu, local_max, off));
  if (threadIdx.x % 32 == 0) red[threadIdx.x / 32] = local_max;
  __syncthreads();
  float m = -INFINITY;
  for (int w = 0; w < (int)(blockDim.x / 32); ++w) m = fmaxf(m, red[w]);
  __syncthreads();
  float local_sum = 0.f;
  for (int64_t j = threadIdx.x; j < len; j += blockDim.x) {
    const float p = expf(scores[j] - m);
    scores[j] = p;
    local_sum += p;
  }
  for (int off = 16; off; off >>= 1) local_sum += __shfl_xor_sync(0xffffffffu, local_sum, off);
  if (threadIdx.x % 32 == 0) red[threadIdx.x / 32] = local_sum;
  __syncthreads();
  float sum = 0.f;
  for (int w = 0; w < (int)(blockDim.x / 32); ++w) sum += red[w];
  const float inv = 1.f / sum;
  // out[d] = Σ_j p_j v_j[d] / sum: threads over d, each summing over all keys.
  for (int64_t d = threadIdx.x; d < hd; d += blockDim.x) {
    float acc = 0.f;
    for (int64_t j = 0; j < len; ++j) acc += scores[j] * vbase[j * kw + d];
    out[r * heads * hd + h * hd + d] = acc * inv;
  }
}

// -log softmax(x)[target] per row; one block per row.
__global__ void row_nll(const float* logits, int64_t vocab, const int32_t* targets, float* out) {
  __shared__ float red[32];
  const float* x = logits + blockIdx.x * vocab;
  float m = -INFINITY;
  for (int64_t i = threadIdx.x; i < vocab; i += blockDim.x) m = fmaxf(m, x[i]);
  for (int off = 16; off; off >>= 1) m = fmaxf(m, __shfl_xor_sync(0xffffffffu, m, off));
  if (threadIdx.x % 32 == 0) red[threadIdx.x / 32] = m;
  __syncthreads();
  m = -INFINITY;
  for (int w = 0; w < (int)(blockDim.x / 32); ++w) m = fmaxf(m, red[w]);
  __syncthreads();
  float s = 0.f;
  for (int64_t i = threadIdx.x; i < vocab; i += blockDim.x) s += expf(x[i] - m);
  for (int off = 16; off; off >>= 1) s += __shfl_xor_sync(0xffffffffu, s, off);
  if (threadIdx.x % 32 == 0) red[threadIdx.x / 32] = s;
  __syncthreads();
  if (threadIdx.x == 0) {
    float sum = 0.f;
    for (int w = 0; w < (int)(blockDim.x / 32); ++w) sum += red[w];
    out[blockIdx.x] = m + logf(sum) - x[targets[blockIdx.x]];
  }
}

// --- device memory ---

// A growable device scratch buffer of floats.
class Scratch {
 public:
  float* get(int64_t n) {
    if (n > size_) {
      buf_.reset();
      buf_ = std::make_unique<DeviceBuffer<float>>((size_t)n);
      size_ = n;
    }
    return buf_ ? buf_->get() : nullptr;
  }

 private:
  std::unique_ptr<DeviceBuffer<float>> buf_;
  int64_t size_ = 0;
};

std::unique_ptr<DeviceBuffer<float>> upload_floats(const float* src, int64_t n) {
  auto b = std::make_unique<DeviceBuffer<float>>((size_t)n);
  b->upload(src, (size_t)n);
  return b;
}

// A dense matrix on the device in the dtype it came in (f32, f16 or bf16): 16-bit weights keep half
// the memory and are widened to f32 (exactly) into a scratch buffer when used.
class DenseDevice {
 public:
  DenseDevice(const void* src, DType dtype, int64_t count) : dtype_(dtype), count_(count) {
    require(dtype == DType::F32 || dtype == DType::F16 || dtype == DType::BF16, "E_DTYPE",
            "dense weights must be f32, f16 or bf16");
    const size_t bytes = (size_t)count * dtype_size(dtype);
    buf_ = std::make_unique<DeviceBuffer<uint8_t>>(bytes);
    buf_->upload(static_cast<const uint8_t*>(src), bytes);
  }
  // The f32 matrix, widened into `scratch` when stored in 16 bits.
  const float* f32(Scratch& scratch, cudaStream_t s) const {
    if (dtype_ == DType::F32) return reinterpret_cast<const float*>(buf_->get());
    float* out = scratch.get(count_);
    widen<<<blocks_for(count_, 256), 256, 0, s>>>(reinterpret_cast<const uint16_t*>(buf_->get()), count_,
                                                  dtype_ == DType::BF16, out);
    check(cudaGetLastError(), "widen launch");
    return out;
  }
  int64_t bytes() const { return count_ * (int64_t)dtype_size(dtype_); }

 private:
  DType dtype_;
  int64_t count_;
  std::unique_ptr<DeviceBuffer<uint8_t>> buf_;
};

// A dense or packed linear on the device.
class CudaLinear {
 public:
  CudaLinear(int device, const LinearWeights& w, int64_t N, int64_t K) : N_(N), K_(K) {
    if (w.packed) packed_ = std::make_unique<PackedMatrixDevice>(device, w.q);
    else dense_ = std::make_unique<DenseDevice>(w.data, w.dtype, N * K);
    if (w.bias) bias_ = upload_floats(w.bias, N);
  }
  // Y [M, N] = X [M, K] · Wᵀ + bias, device memory, on `s`.
  void apply(const float* X, int64_t M, float* Y, Scratch& wide, cudaStream_t s) const {
    if (packed_) packed_gemm_device(*packed_, X, M, Y, s);
    else sgemm(s, false, true, M, N_, K_, 1.f, X, K_, dense_->f32(wide, s), K_, 0.f, Y, N_);
    if (bias_) {
      add_bias<<<blocks_for(M * N_, 256), 256, 0, s>>>(Y, M, N_, bias_->get());
      check(cudaGetLastError(), "add_bias launch");
    }
  }
  int64_t bytes() const { return (packed_ ? packed_->bytes() : dense_->bytes()) + (bias_ ? N_ * 4 : 0); }

 private:
  int64_t N_, K_;
  std::unique_ptr<DenseDevice> dense_;
  std::unique_ptr<PackedMatrixDevice> packed_;
  std::unique_ptr<DeviceBuffer<float>> bias_;
};

struct CudaBlock {
  std::unique_ptr<DeviceBuffer<float>> attn_norm, mlp_norm;
  std::unique_ptr<CudaLinear> linears[kBlockLinears];
  int64_t bytes(int64_t dim) const {
    int64_t b = 2 * dim * 4;
    for (const auto& l : linears) b += l->bytes();
    return b;
  }
};

class CudaSequence : public model::Sequence {
 public:
  std::vector<std::unique_ptr<DeviceBuffer<float>>> keys, values;  // per layer [capacity, kv_heads·hd]
};

class CudaLlama : public LlamaBackend {
 public:
  CudaLlama(int device, const LlamaConfig& config) : LlamaBackend(config), device_(device), blocks_((size_t)config.layers) {
    use_device(device);
    check(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking), "cudaStreamCreate");
  }
  ~CudaLlama() override { cudaStreamDestroy(stream_); }

  int device() const override { return device_; }

  void set_globals(const GlobalWeights& w) override {
    require(w.embed && w.final_norm, "E_BUFFER", "globals need the embedding and the final norm");
    select();
    embed_ = std::make_unique<DenseDevice>(w.embed, w.embed_dtype, config_.vocab * config_.dim);
    final_norm_ = upload_floats(w.final_norm, config_.dim);
    head_.reset();
    if (!config_.tie_embeddings) {
      check_linear(Linear::Head, w.head);
      head_ = std::make_unique<CudaLinear>(device_, w.head, config_.vocab, config_.dim);
    }
  }

  void set_block(int64_t i, const BlockWeights& w) override {
    check_block_index(i);
    require(w.attn_norm && w.mlp_norm, "E_BUFFER", "block weights need both norms");
    for (int l = 0; l < kBlockLinears; ++l) check_linear((Linear)l, w.linears[l]);
    select();
    auto b = std::make_unique<CudaBlock>();
    b->attn_norm = upload_floats(w.attn_norm, config_.dim);
    b->mlp_norm = upload_floats(w.mlp_norm, config_.dim);
    for (int l = 0; l < kBlockLinears; ++l)
      b->linears[l] = std::make_unique<CudaLinear>(device_, w.linears[l], model::linear_out(config_, (Linear)l),
                                                   model::linear_in(config_, (Linear)l));
    blocks_[(size_t)i] = std::move(b);
  }

  void set_linear(int64_t i, Linear which, const LinearWeights& w) override {
    check_block_index(i);
    require((int)which < kBlockLinears, "E_ARGUMENT", "set_linear replaces a block's linear, not the head");
    require(blocks_[(size_t)i] != nullptr, "E_MISSING_TENSOR", "block " + std::to_string(i) + "'s weights are not set");
    check_linear(which, w);
    select();
    blocks_[(size_t)i]->linears[(int)which] =
        std::make_unique<CudaLinear>(device_, w, model::linear_out(config_, which), model::linear_in(config_, which));
  }

  void drop_block(int64_t i) override {
    check_block_index(i);
    select();
    blocks_[(size_t)i].reset();
  }

  bool has_block(int64_t i) const override { return i >= 0 && i < config_.layers && blocks_[(size_t)i] != nullptr; }

  int64_t weight_bytes() const override {
    int64_t b = embed_ ? embed_->bytes() + config_.dim * 4 : 0;
    if (head_) b += head_->bytes();
    for (const auto& blk : blocks_)
      if (blk) b += blk->bytes(config_.dim);
    return b;
  }

  void embed(const int32_t* ids, int64_t n, float* hidden) override {
    require_globals();
    check_ids(ids, n);
    select();
    float* h = embed_device(ids, n);
    download(hidden, h, n * config_.dim);
  }

  void run_block(int64_t i, float* hidden, int64_t batch, int64_t seq, const BlockRun& run) override {
    check_block_index(i);
    check_batch(batch, seq);
    require(run.stop_after >= -1 && run.stop_after < model::kCapturePoints, "E_ARGUMENT", "stop_after is out of range");
    const CudaBlock& blk = block(i);
    select();
    const int64_t rows = batch * seq;
    float* h = hidden_.get(rows * config_.dim);
    upload(h, hidden, rows * config_.dim);
    if (block_forward(blk, h, rows, seq, 0, nullptr, nullptr, &run)) download(hidden, h, rows * config_.dim);
    else sync();
  }

  void head(const float* hidden, int64_t rows, float* logits) override {
    require_globals();
    select();
    float* h = hidden_.get(rows * config_.dim);
    upload(h, hidden, rows * config_.dim);
    float* out = logits_.get(rows * config_.vocab);
    head_rows(h, rows, out);
    download(logits, out, rows * config_.vocab);
  }

  void logits(const int32_t* ids, int64_t batch, int64_t seq, float* out) override {
    check_batch(batch, seq);
    check_ids(ids, batch * seq);
    require_all_blocks();
    select();
    const int64_t rows = batch * seq;
    float* h = forward(ids, batch, seq);
    constexpr int64_t kChunk = 1024;
    for (int64_t r0 = 0; r0 < rows; r0 += kChunk) {
      const int64_t n = std::min(kChunk, rows - r0);
      float* lg = logits_.get(n * config_.vocab);
      head_rows(h + r0 * config_.dim, n, lg);
      download(out + r0 * config_.vocab, lg, n * config_.vocab);
    }
  }

  void nll(const int32_t* ids, int64_t batch, int64_t seq, float* out) override {
    check_batch(batch, seq);
    check_ids(ids, batch * seq);
    require_all_blocks();
    select();
    float* h = forward(ids, batch, seq);
    // Positions 0 .. seq-2 of each sequence predict ids[t + 1].
    const int32_t* ids_dev = reinterpret_cast<const int32_t*>(ids_.get(batch * seq));
    float* nll_dev = nll_.get(batch * (seq - 1));
    for (int64_t b = 0; b < batch; ++b) {
      float* lg = logits_.get((seq - 1) * config_.vocab);
      head_rows(h + b * seq * config_.dim, seq - 1, lg);
      row_nll<<<(unsigned)(seq - 1), 256, 0, stream_>>>(lg, config_.vocab, ids_dev + b * seq + 1, nll_dev + b * (seq - 1));
      check(cudaGetLastError(), "row_nll launch");
    }
    download(out, nll_dev, batch * (seq - 1));
  }

  std::unique_ptr<model::Sequence> new_sequence(int64_t capacity) override {
    require(capacity >= 1 && capacity <= config_.max_seq, "E_ARGUMENT",
            "sequence capacity must be in [1, " + std::to_string(config_.max_seq) + "], got " + std::to_string(capacity));
    select();
    auto s = std::make_unique<CudaSequence>();
    s->capacity = capacity;
    const int64_t kw = config_.kv_heads * config_.head_dim;
    for (int64_t l = 0; l < config_.layers; ++l) {
      s->keys.push_back(std::make_unique<DeviceBuffer<float>>((size_t)(capacity * kw)));
      s->values.push_back(std::make_unique<DeviceBuffer<float>>((size_t)(capacity * kw)));
    }
    return s;
  }

  void decode(model::Sequence& sequence, const int32_t* ids, int64_t n, float* last_logits) override {
    auto* s = dynamic_cast<CudaSequence*>(&sequence);
    require(s != nullptr, "E_ARGUMENT", "the sequence belongs to another backend");
    require(n >= 1, "E_SHAPE", "decode needs at least one token");
    require(s->length + n <= s->capacity, "E_SHAPE",
            "the sequence holds " + std::to_string(s->length) + " of " + std::to_string(s->capacity) + " tokens; " +
                std::to_string(n) + " more do not fit");
    require_all_blocks();
    check_ids(ids, n);
    select();
    float* h = embed_device(ids, n);
    for (int64_t i = 0; i < config_.layers; ++i) block_forward(block(i), h, n, n, s->length, s, &i, nullptr);
    s->length += n;
    float* lg = logits_.get(config_.vocab);
    head_rows(h + (n - 1) * config_.dim, 1, lg);
    download(last_logits, lg, config_.vocab);
  }

 private:
  void select() const { check(cudaSetDevice(device_), "cudaSetDevice"); }
  void sync() const { check(cudaStreamSynchronize(stream_), "forward pass"); }
  template <class T>
  void upload(T* dst, const T* src, int64_t n) {
    check(cudaMemcpyAsync(dst, src, (size_t)n * sizeof(T), cudaMemcpyHostToDevice, stream_), "cudaMemcpy H2D");
  }
  template <class T>
  void download(T* dst, const T* src, int64_t n) {
    check(cudaMemcpyAsync(dst, src, (size_t)n * sizeof(T), cudaMemcpyDeviceToHost, stream_), "cudaMemcpy D2H");
    sync();
  }

  const CudaBlock& block(int64_t i) const {
    require(blocks_[(size_t)i] != nullptr, "E_MISSING_TENSOR", "block " + std::to_string(i) + "'s weights are not set");
    return *blocks_[(size_t)i];
  }
  void require_globals() const { require(embed_ != nullptr, "E_MISSING_TENSOR", "the embedding and final norm are not set"); }
  void require_all_blocks() const {
    require_globals();
    for (int64_t i = 0; i < config_.layers; ++i) block(i);
  }

  // ids (host) -> hidden rows on the device (hidden_ scratch); ids stay in ids_ for nll.
  float* embed_device(const int32_t* ids, int64_t n) {
    int32_t* ids_dev = reinterpret_cast<int32_t*>(ids_.get(n));
    upload(ids_dev, ids, n);
    float* h = hidden_.get(n * config_.dim);
    gather_rows<<<blocks_for(n * config_.dim, 256), 256, 0, stream_>>>(embed_->f32(wide_, stream_), ids_dev, n,
                                                                        config_.dim, h);
    check(cudaGetLastError(), "gather_rows launch");
    return h;
  }

  // The whole model over a batch; returns the last block's hidden states (device).
  float* forward(const int32_t* ids, int64_t batch, int64_t seq) {
    float* h = embed_device(ids, batch * seq);
    for (int64_t i = 0; i < config_.layers; ++i) block_forward(block(i), h, batch * seq, seq, 0, nullptr, nullptr, nullptr);
    return h;
  }

  // final norm + lm_head, device to device.
  void head_rows(const float* h, int64_t rows, float* out) {
    float* normed = norm_.get(rows * config_.dim);
    rms_norm<<<(unsigned)rows, 256, 0, stream_>>>(h, config_.dim, final_norm_->get(), config_.norm_eps, normed);
    check(cudaGetLastError(), "rms_norm launch");
    if (head_) head_->apply(normed, rows, out, wide_, stream_);
    else sgemm(stream_, false, true, rows, config_.vocab, config_.dim, 1.f, normed, config_.dim,
               embed_->f32(wide_, stream_), config_.dim, 0.f, out, config_.vocab);
  }

  // RoPE tables for positions p0 .. p0 + n - 1, computed on the host exactly as the CPU does.
  void rope_tables(int64_t p0, int64_t n) {
    const int64_t half = (int64_t)config_.inv_freq.size();
    host_cos_.resize((size_t)(n * half));
    host_sin_.resize((size_t)(n * half));
    for (int64_t r = 0; r < n; ++r)
      for (int64_t i = 0; i < half; ++i) {
        const float angle = config_.inv_freq[(size_t)i] * (float)(p0 + r);
        host_cos_[(size_t)(r * half + i)] = (float)std::cos((double)angle) * config_.rope_scale;
        host_sin_[(size_t)(r * half + i)] = (float)std::sin((double)angle) * config_.rope_scale;
      }
    upload(cos_.get(n * half), host_cos_.data(), n * half);
    upload(sin_.get(n * half), host_sin_.data(), n * half);
  }

  // One block over `rows` rows in place on h (device): sequences of S rows each at positions p0..,
  // with keys from this call (seq == nullptr) or appended to the KV cache of layer *layer.
  // Returns false when the run stopped early at a capture point (h unchanged).
  bool block_forward(const CudaBlock& blk, float* h, int64_t rows, int64_t S, int64_t p0, CudaSequence* kv,
                     const int64_t* layer, const BlockRun* run) {
    const LlamaConfig& c = config_;
    const int64_t qw = c.heads * c.head_dim, kw = c.kv_heads * c.head_dim;
    float* x = x_.get(rows * c.dim);
    float* norm = norm_.get(rows * c.dim);
    float* q = q_.get(rows * qw);
    float* k = k_.get(rows * kw);
    float* v = v_.get(rows * kw);
    float* att = att_.get(rows * qw);
    float* proj = proj_.get(rows * c.dim);
    float* gate = gate_.get(rows * c.hidden);
    float* up = up_.get(rows * c.hidden);
    const model::CaptureFn* capture = run ? run->capture : nullptr;
    const int stop = run ? run->stop_after : -1;
    auto emit = [&](CapturePoint p, const float* data, int64_t cols) {
      if (capture && *capture) {
        if (run->capture_on_device) {
          sync();
          (*capture)(p, model::Activations{data, rows, cols, 0, device_});
        } else {
          host_capture_.resize((size_t)(rows * cols));
          download(host_capture_.data(), data, rows * cols);
          (*capture)(p, model::Activations{host_capture_.data(), rows, cols, 0, -1});
        }
      }
      return stop == (int)p;
    };
    auto launched = [](const char* what) { check(cudaGetLastError(), what); };

    check(cudaMemcpyAsync(x, h, (size_t)(rows * c.dim) * 4, cudaMemcpyDeviceToDevice, stream_), "copy");
    rms_norm<<<(unsigned)rows, 256, 0, stream_>>>(x, c.dim, blk.attn_norm->get(), c.norm_eps, norm);
    launched("rms_norm launch");
    if (emit(CapturePoint::Qkv, norm, c.dim)) return false;
    blk.linears[(int)Linear::Q]->apply(norm, rows, q, wide_, stream_);
    blk.linears[(int)Linear::K]->apply(norm, rows, k, wide_, stream_);
    blk.linears[(int)Linear::V]->apply(norm, rows, v, wide_, stream_);
    const int64_t half = c.head_dim / 2;
    rope_tables(p0, S);
    rope<<<blocks_for(rows * c.heads * half, 256), 256, 0, stream_>>>(q, rows, S, qw, c.heads, half, cos_.get(0),
                                                                       sin_.get(0));
    launched("rope launch");
    rope<<<blocks_for(rows * c.kv_heads * half, 256), 256, 0, stream_>>>(k, rows, S, kw, c.kv_heads, half, cos_.get(0),
                                                                          sin_.get(0));
    launched("rope launch");
    const float* keys = k;
    const float* values = v;
    int64_t key_stride = S;
    if (kv) {
      float* kc = kv->keys[(size_t)*layer]->get();
      float* vc = kv->values[(size_t)*layer]->get();
      check(cudaMemcpyAsync(kc + kv->length * kw, k, (size_t)(rows * kw) * 4, cudaMemcpyDeviceToDevice, stream_), "kv");
      check(cudaMemcpyAsync(vc + kv->length * kw, v, (size_t)(rows * kw) * 4, cudaMemcpyDeviceToDevice, stream_), "kv");
      keys = kc;
      values = vc;
      key_stride = 0;
    }
    const int64_t max_len = p0 + S;
    const size_t smem = (size_t)max_len * 4;
    require(smem <= 48 * 1024, "E_UNSUPPORTED", "the CUDA attention kernel holds at most 12288 positions");
    const float scale = (float)(1.0 / std::sqrt((double)c.head_dim));
    attention<<<dim3((unsigned)rows, (unsigned)c.heads), 128, smem, stream_>>>(q, S, p0, keys, values, key_stride,
                                                                              c.heads, c.kv_heads, c.head_dim, scale, att);
    launched("attention launch");
    if (emit(CapturePoint::O, att, qw)) return false;
    blk.linears[(int)Linear::O]->apply(att, rows, proj, wide_, stream_);
    add_inplace<<<blocks_for(rows * c.dim, 256), 256, 0, stream_>>>(x, proj, rows * c.dim);
    launched("add launch");
    rms_norm<<<(unsigned)rows, 256, 0, stream_>>>(x, c.dim, blk.mlp_norm->get(), c.norm_eps, norm);
    launched("rms_norm launch");
    if (emit(CapturePoint::GateUp, norm, c.dim)) return false;
    blk.linears[(int)Linear::Gate]->apply(norm, rows, gate, wide_, stream_);
    blk.linears[(int)Linear::Up]->apply(norm, rows, up, wide_, stream_);
    swiglu<<<blocks_for(rows * c.hidden, 256), 256, 0, stream_>>>(gate, up, rows * c.hidden, gate);
    launched("swiglu launch");
    if (emit(CapturePoint::Down, gate, c.hidden)) return false;
    blk.linears[(int)Linear::Down]->apply(gate, rows, proj, wide_, stream_);
    add_inplace<<<blocks_for(rows * c.dim, 256), 256, 0, stream_>>>(x, proj, rows * c.dim);
    launched("add launch");
    check(cudaMemcpyAsync(h, x, (size_t)(rows * c.dim) * 4, cudaMemcpyDeviceToDevice, stream_), "copy");
    return true;
  }

  int device_;
  cudaStream_t stream_ = nullptr;
  std::vector<std::unique_ptr<CudaBlock>> blocks_;
  std::unique_ptr<DenseDevice> embed_;
  std::unique_ptr<DeviceBuffer<float>> final_norm_;
  std::unique_ptr<CudaLinear> head_;
  // Scratch (a backend is used by one thread at a time). ids_ holds int32 ids in float-sized slots.
  // wide_: a 16-bit weight widened to f32 for the product that uses it next.
  Scratch hidden_, x_, norm_, q_, k_, v_, att_, proj_, gate_, up_, logits_, nll_, ids_, cos_, sin_, wide_;
  std::vector<float> host_cos_, host_sin_, host_capture_;
};

std::unique_ptr<LlamaBackend> make_cuda_llama(int device, const LlamaConfig& config) {
  use_device(device);  // E_CUDA_UNAVAILABLE before anything else
  return std::make_unique<CudaLlama>(device, config);
}

// Registers the CUDA forward pass with make_backend() when the addon loads.
const bool registered = (model::register_cuda_backend(&make_cuda_llama), true);

}  // namespace
}  // namespace cuda
}  // namespace lowbit

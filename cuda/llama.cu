// The f32 Llama forward pass on one GPU (llama16.cu has the fp16/bf16 one): native/core/model/
// backend.hpp's LlamaBackend, with every weight resident on the device (each linear as the
// DeviceLinearOp the CUDA kernel table picks for it) and the ops of llama_ops.cu. Same math as
// cpu_llama.cpp, op for op; the argument and weight checks are the base class's. Registered with
// make_backend() by a static initializer.
#include <cuda_runtime.h>

#include <cmath>
#include <memory>
#include <vector>

#include "../native/core/model/backend.hpp"
#include "../native/core/model/block_recipe.hpp"
#include "../native/core/model/rope.hpp"
#include "cuda_api.hpp"
#include "cuda_check.cuh"
#include "linalg.cuh"
#include "linear_ops.cuh"
#include "llama_ops.cuh"

namespace lowbit {
namespace cuda {

// The fp16/bf16 forward pass (llama16.cu).
std::unique_ptr<model::LlamaBackend> make_cuda_llama16(int device, const model::LlamaConfig& config, DType activations);

namespace {

using model::BlockRun;
using model::BlockWeights;
using model::CapturePoint;
using model::GlobalWeights;
using model::kBlockLinears;
using model::Linear;
using model::LlamaBackend;
using model::LlamaConfig;

// A growable device scratch buffer of floats.
class Scratch {
 public:
  float* get(int64_t n) { return static_cast<float*>(buf_.get(n * 4)); }

 private:
  DeviceScratch buf_;
};

std::unique_ptr<DeviceBuffer<float>> upload_floats(const float* src, int64_t n) {
  auto b = std::make_unique<DeviceBuffer<float>>((size_t)n);
  b->upload(src, (size_t)n);
  return b;
}

struct CudaBlock {
  std::unique_ptr<DeviceBuffer<float>> attn_norm, mlp_norm;
  std::unique_ptr<DeviceLinearOp> linears[kBlockLinears];
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
  bool has_block(int64_t i) const override { return i >= 0 && i < config_.layers && blocks_[(size_t)i] != nullptr; }
  bool has_globals() const override { return embed_ != nullptr; }

  int64_t weight_bytes() const override {
    int64_t b = embed_ ? embed_->bytes() + config_.dim * 4 : 0;
    if (head_) b += head_->bytes();
    for (const auto& blk : blocks_)
      if (blk) b += blk->bytes(config_.dim);
    return b;
  }

 protected:
  void do_set_globals(const GlobalWeights& w) override {
    select();
    embed_ = std::make_unique<DenseDevice>(w.embed, w.embed_dtype, config_.vocab * config_.dim);
    final_norm_ = upload_floats(w.final_norm, config_.dim);
    head_.reset();
    if (!config_.tie_embeddings) head_ = make_device_linear(device_, w.head);
  }

  void do_set_block(int64_t i, const BlockWeights& w) override {
    select();
    auto b = std::make_unique<CudaBlock>();
    b->attn_norm = upload_floats(w.attn_norm, config_.dim);
    b->mlp_norm = upload_floats(w.mlp_norm, config_.dim);
    for (int l = 0; l < kBlockLinears; ++l) b->linears[l] = make_device_linear(device_, w.linears[l]);
    blocks_[(size_t)i] = std::move(b);
  }

  void do_set_linear(int64_t i, Linear which, const LinearWeights& w) override {
    select();
    blocks_[(size_t)i]->linears[(int)which] = make_device_linear(device_, w);
  }

  void do_drop_block(int64_t i) override {
    select();
    blocks_[(size_t)i].reset();
  }

  void do_embed(const int32_t* ids, int64_t n, float* hidden) override {
    select();
    float* h = embed_device(ids, n);
    download(hidden, h, n * config_.dim);
  }

  void do_run_block(int64_t i, float* hidden, int64_t batch, int64_t seq, const BlockRun& run) override {
    select();
    const int64_t rows = batch * seq;
    float* h = hidden_.get(rows * config_.dim);
    upload(h, hidden, rows * config_.dim);
    if (block_forward(block(i), h, rows, seq, 0, nullptr, nullptr, &run)) download(hidden, h, rows * config_.dim);
    else sync();
  }

  void do_head(const float* hidden, int64_t rows, float* logits) override {
    select();
    float* h = hidden_.get(rows * config_.dim);
    upload(h, hidden, rows * config_.dim);
    float* out = logits_.get(rows * config_.vocab);
    head_rows(h, rows, out);
    download(logits, out, rows * config_.vocab);
  }

  void do_logits(const int32_t* ids, int64_t batch, int64_t seq, float* out) override {
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

  void do_nll(const int32_t* ids, int64_t batch, int64_t seq, float* out) override {
    select();
    float* h = forward(ids, batch, seq);
    // Positions 0 .. seq-2 of each sequence predict ids[t + 1].
    const int32_t* ids_dev = reinterpret_cast<const int32_t*>(ids_.get(batch * seq));
    float* nll_dev = nll_.get(batch * (seq - 1));
    for (int64_t b = 0; b < batch; ++b) {
      float* lg = logits_.get((seq - 1) * config_.vocab);
      head_rows(h + b * seq * config_.dim, seq - 1, lg);
      ops::row_nll(lg, seq - 1, config_.vocab, ids_dev + b * seq + 1, nll_dev + b * (seq - 1), stream_);
    }
    download(out, nll_dev, batch * (seq - 1));
  }

  std::unique_ptr<model::Sequence> do_new_sequence(int64_t capacity) override {
    select();
    auto s = std::make_unique<CudaSequence>();
    const int64_t kw = config_.kv_heads * config_.head_dim;
    for (int64_t l = 0; l < config_.layers; ++l) {
      s->keys.push_back(std::make_unique<DeviceBuffer<float>>((size_t)(capacity * kw)));
      s->values.push_back(std::make_unique<DeviceBuffer<float>>((size_t)(capacity * kw)));
    }
    return s;
  }

  void do_decode(model::Sequence& sequence, const int32_t* ids, int64_t n, float* last_logits) override {
    auto* s = static_cast<CudaSequence*>(&sequence);  // the base checked that this backend made it
    select();
    float* h = embed_device(ids, n);
    for (int64_t i = 0; i < config_.layers; ++i) block_forward(block(i), h, n, n, s->length, s, &i, nullptr);
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

  const CudaBlock& block(int64_t i) const { return *blocks_[(size_t)i]; }  // present: the base checked

  // ids (host) -> hidden rows on the device (hidden_ scratch); ids stay in ids_ for nll.
  float* embed_device(const int32_t* ids, int64_t n) {
    int32_t* ids_dev = reinterpret_cast<int32_t*>(ids_.get(n));
    upload(ids_dev, ids, n);
    float* h = hidden_.get(n * config_.dim);
    ops::gather_rows(embed_->f32(wide_, stream_), ids_dev, n, config_.dim, h, stream_);
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
    ops::rms_norm(h, rows, config_.dim, final_norm_->get(), config_.norm_eps, normed, stream_);
    if (head_) head_->apply(normed, rows, out, wide_, stream_);
    else sgemm(stream_, false, true, rows, config_.vocab, config_.dim, 1.f, normed, config_.dim,
               embed_->f32(wide_, stream_), config_.dim, 0.f, out, config_.vocab);
  }

  // RoPE tables for positions p0 .. p0 + n - 1, built on the host as the CPU builds them.
  void rope_tables(int64_t p0, int64_t n) {
    rope_.build(config_.inv_freq, config_.rope_scale, p0, n);
    upload(cos_.get(n * rope_.half), rope_.cos.data(), n * rope_.half);
    upload(sin_.get(n * rope_.half), rope_.sin.data(), n * rope_.half);
  }

  // One block over `rows` rows in place on h (device): sequences of S rows each at positions p0..,
  // with keys from this call (seq == nullptr) or appended to the KV cache of layer *layer.
  // Returns false when the run stopped early at a capture point (h unchanged).
  bool block_forward(const CudaBlock& blk, float* h, int64_t rows, int64_t S, int64_t p0, CudaSequence* kv,
                     const int64_t* layer, const BlockRun* run) {
    const LlamaConfig& c = config_;
    const int64_t qw = c.heads * c.head_dim, kw = c.kv_heads * c.head_dim;
    // The GPU's ops for block_recipe, over all rows of the batch at once.
    struct Ops {
      CudaLlama& m;
      const CudaBlock& blk;
      int64_t rows, S, p0, kw;
      CudaSequence* kv;
      const int64_t* layer;
      const BlockRun* run;
      void rms_norm(const float* in, const float* w, float* out) {
        ops::rms_norm(in, rows, m.config_.dim, w, m.config_.norm_eps, out, m.stream_);
      }
      void linear(Linear which, const float* in, float* out) {
        blk.linears[(int)which]->apply(in, rows, out, m.wide_, m.stream_);
      }
      void rope(float* q, float* k) {
        const LlamaConfig& c = m.config_;
        m.rope_tables(p0, S);
        const float* cosv = m.cos_.get(0);
        const float* sinv = m.sin_.get(0);
        ops::rope(q, rows, S, c.heads * c.head_dim, c.heads, c.head_dim / 2, cosv, sinv, m.stream_);
        ops::rope(k, rows, S, kw, c.kv_heads, c.head_dim / 2, cosv, sinv, m.stream_);
      }
      void attention(const float* q, const float* k, const float* v, float* out) {
        const LlamaConfig& c = m.config_;
        const float* keys = k;
        const float* values = v;
        int64_t key_stride = S;
        if (kv) {  // append to the cache, then attend over all of it
          float* kc = kv->keys[(size_t)*layer]->get();
          float* vc = kv->values[(size_t)*layer]->get();
          const size_t bytes = (size_t)(rows * kw) * 4;
          check(cudaMemcpyAsync(kc + kv->length * kw, k, bytes, cudaMemcpyDeviceToDevice, m.stream_), "kv");
          check(cudaMemcpyAsync(vc + kv->length * kw, v, bytes, cudaMemcpyDeviceToDevice, m.stream_), "kv");
          keys = kc;
          values = vc;
          key_stride = 0;
        }
        const float scale = (float)(1.0 / std::sqrt((double)c.head_dim));
        ops::attention(q, rows, S, p0, keys, values, key_stride, c.heads, c.kv_heads, c.head_dim, scale, out,
                       m.stream_);
      }
      void add(float* y, const float* x, int64_t cols) { ops::add_inplace(y, x, rows * cols, m.stream_); }
      void swiglu(const float* gate, const float* up, float* out) {
        ops::swiglu(gate, up, rows * m.config_.hidden, out, m.stream_);
      }
      bool emit(CapturePoint p, const float* data, int64_t cols) {
        const model::CaptureFn* capture = run ? run->capture : nullptr;
        if (capture && *capture) {
          m.host_capture_.resize((size_t)(rows * cols));
          m.download(m.host_capture_.data(), data, rows * cols);
          (*capture)(p, model::Activations{m.host_capture_.data(), rows, cols, 0});
        }
        return run && run->stop_after == (int)p;
      }
    } recipe_ops{*this, blk, rows, S, p0, kw, kv, layer, run};
    const model::BlockBuffers b{x_.get(rows * c.dim),    norm_.get(rows * c.dim), q_.get(rows * qw),
                                k_.get(rows * kw),        v_.get(rows * kw),       att_.get(rows * qw),
                                proj_.get(rows * c.dim), gate_.get(rows * c.hidden), up_.get(rows * c.hidden)};
    check(cudaMemcpyAsync(b.x, h, (size_t)(rows * c.dim) * 4, cudaMemcpyDeviceToDevice, stream_), "copy");
    if (!model::block_recipe(c, b, blk.attn_norm->get(), blk.mlp_norm->get(), recipe_ops)) return false;
    check(cudaMemcpyAsync(h, b.x, (size_t)(rows * c.dim) * 4, cudaMemcpyDeviceToDevice, stream_), "copy");
    return true;
  }

  int device_;
  cudaStream_t stream_ = nullptr;
  std::vector<std::unique_ptr<CudaBlock>> blocks_;
  std::unique_ptr<DenseDevice> embed_;
  std::unique_ptr<DeviceBuffer<float>> final_norm_;
  std::unique_ptr<DeviceLinearOp> head_;
  // Scratch (a backend is used by one thread at a time). ids_ holds int32 ids in float-sized slots.
  // wide_: what a linear's operator needs during one product (e.g. a 16-bit weight widened to f32).
  Scratch hidden_, x_, norm_, q_, k_, v_, att_, proj_, gate_, up_, logits_, nll_, ids_, cos_, sin_;
  DeviceScratch wide_;
  model::RopeTable rope_;
  std::vector<float> host_capture_;
};

std::unique_ptr<LlamaBackend> make_cuda_llama(int device, const LlamaConfig& config, DType activations) {
  use_device(device);  // E_CUDA_UNAVAILABLE before anything else
  if (activations != DType::F32) return make_cuda_llama16(device, config, activations);
  return std::make_unique<CudaLlama>(device, config);
}

// Registers the CUDA forward pass with make_backend() when the addon loads.
const bool registered = (model::register_cuda_backend(&make_cuda_llama), true);

}  // namespace
}  // namespace cuda
}  // namespace lowbit

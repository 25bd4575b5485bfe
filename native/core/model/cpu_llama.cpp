// The CPU backend of the Llama forward pass: weights in native-owned memory (dense panels in their
// own dtype, or packed GPTQ buffers), one sequence at a time through each block so activation memory
// grows with the sequence length, not the batch.
#include <atomic>
#include <cmath>
#include <cstring>
#include <functional>
#include <optional>

#include "../thread_pool.hpp"
#include "../weights/linear.hpp"
#include "backend.hpp"
#include "block_recipe.hpp"
#include "ops.hpp"

namespace lowbit {
namespace model {
namespace {

using cpu::DensePanels;
using cpu::KvBlock;

struct CpuBlock {
  std::vector<float> attn_norm, mlp_norm;
  std::unique_ptr<LinearOp> linears[kBlockLinears];
  int64_t bytes() const {
    int64_t b = (int64_t)(attn_norm.size() + mlp_norm.size()) * 4;
    for (const auto& l : linears) b += l->bytes();
    return b;
  }
};

class CpuSequence : public Sequence {
 public:
  std::vector<KvBlock> layers;
};

// Scratch activations of one sequence through one block.
struct Scratch {
  std::vector<float> x, norm, q, k, v, attn, proj, gate, up;
  void resize(const LlamaConfig& c, int64_t rows) {
    auto fit = [&](std::vector<float>& b, int64_t cols) {
      if ((int64_t)b.size() < rows * cols) b.resize((size_t)(rows * cols));
    };
    fit(x, c.dim);
    fit(norm, c.dim);
    fit(q, c.heads * c.head_dim);
    fit(k, c.kv_heads * c.head_dim);
    fit(v, c.kv_heads * c.head_dim);
    fit(attn, c.heads * c.head_dim);
    fit(proj, c.dim);
    fit(gate, c.hidden);
    fit(up, c.hidden);
  }
};

// Everything one sequence's pass through the model writes, so several can run at once.
struct Workspace {
  Scratch scratch;
  KvBlock kv;
  cpu::RopeTable rope;
  std::vector<float> hidden, normed, logits;
};

class CpuLlama : public LlamaBackend {
 public:
  CpuLlama(const LlamaConfig& config, const LinearOptions& linears)
      : LlamaBackend(config), linear_options_(linears), blocks_((size_t)config.layers) {}

  int device() const override { return -1; }

  bool has_globals() const override { return !embed_.empty(); }

  bool has_block(int64_t i) const override {
    return i >= 0 && i < config_.layers && blocks_[(size_t)i] != nullptr;
  }

 protected:
  void do_set_globals(const GlobalWeights& w) override {
    embed_ = DensePanels(w.embed, w.embed_dtype, config_.vocab, config_.dim);
    final_norm_.assign(w.final_norm, w.final_norm + config_.dim);
    head_.reset();
    if (!config_.tie_embeddings) head_ = make_cpu_linear(w.head, linear_options_);
  }

  void do_set_block(int64_t i, const BlockWeights& w) override {
    auto b = std::make_unique<CpuBlock>();
    b->attn_norm.assign(w.attn_norm, w.attn_norm + config_.dim);
    b->mlp_norm.assign(w.mlp_norm, w.mlp_norm + config_.dim);
    for (int l = 0; l < kBlockLinears; ++l) b->linears[l] = make_cpu_linear(w.linears[l], linear_options_);
    blocks_[(size_t)i] = std::move(b);
  }

  void do_set_linear(int64_t i, Linear which, const LinearWeights& w) override {
    blocks_[(size_t)i]->linears[(int)which] = make_cpu_linear(w, linear_options_);
  }

  void do_drop_block(int64_t i) override { blocks_[(size_t)i].reset(); }

 public:
  int64_t weight_bytes() const override {
    int64_t b = embed_.bytes() + (int64_t)final_norm_.size() * 4 + (head_ ? head_->bytes() : 0);
    for (const auto& blk : blocks_)
      if (blk) b += blk->bytes();
    return b;
  }

  void do_embed(const int32_t* ids, int64_t n, float* hidden) override {
    cpu::parallel(n, 64, [&](int64_t i0, int64_t i1) {
      for (int64_t i = i0; i < i1; ++i) embed_.row(ids[i], hidden + i * config_.dim);
    });
  }

  void do_run_block(int64_t i, float* hidden, int64_t batch, int64_t seq, const BlockRun& run) override {
    const CpuBlock& blk = block(i);
    // One sequence at a time (the capture callback is not asked to be thread-safe).
    Workspace& ws = main_;
    ws.kv.resize(config_.kv_heads, config_.head_dim, seq);
    for (int64_t b = 0; b < batch; ++b) block_forward(blk, hidden + b * seq * config_.dim, seq, 0, ws.kv, &run, b * seq, ws);
  }

  void do_head(const float* hidden, int64_t rows, float* logits) override {
    head_rows(hidden, rows, logits, main_);
  }

  void do_logits(const int32_t* ids, int64_t batch, int64_t seq, float* out) override {
    for_each_sequence(batch, [&](int64_t b, Workspace& ws) {
      ws.hidden.resize((size_t)(seq * config_.dim));
      forward_sequence(ids + b * seq, seq, ws.hidden.data(), ws);
      head_rows(ws.hidden.data(), seq, out + b * seq * config_.vocab, ws);
    });
  }

  void do_nll(const int32_t* ids, int64_t batch, int64_t seq, float* out) override {
    constexpr int64_t kChunk = 64;  // logits of this many positions at a time
    for_each_sequence(batch, [&](int64_t b, Workspace& ws) {
      const int32_t* row_ids = ids + b * seq;
      ws.hidden.resize((size_t)(seq * config_.dim));
      ws.logits.resize((size_t)(kChunk * config_.vocab));
      forward_sequence(row_ids, seq, ws.hidden.data(), ws);
      for (int64_t t0 = 0; t0 < seq - 1; t0 += kChunk) {
        const int64_t n = std::min(kChunk, seq - 1 - t0);
        head_rows(ws.hidden.data() + t0 * config_.dim, n, ws.logits.data(), ws);
        cpu::parallel(n, 8, [&](int64_t r0, int64_t r1) {
          for (int64_t r = r0; r < r1; ++r)
            out[b * (seq - 1) + t0 + r] = cpu::row_nll(ws.logits.data() + r * config_.vocab, config_.vocab, row_ids[t0 + r + 1]);
        });
      }
    });
  }

  std::unique_ptr<Sequence> do_new_sequence(int64_t capacity) override {
    auto s = std::make_unique<CpuSequence>();
    s->layers.resize((size_t)config_.layers);
    for (auto& l : s->layers) l.resize(config_.kv_heads, config_.head_dim, capacity);
    return s;
  }

  void do_decode(Sequence& sequence, const int32_t* ids, int64_t n, float* last_logits) override {
    auto* s = static_cast<CpuSequence*>(&sequence);  // the base checked that this backend made it
    Workspace& ws = main_;
    ws.hidden.resize((size_t)(n * config_.dim));
    do_embed(ids, n, ws.hidden.data());
    for (int64_t i = 0; i < config_.layers; ++i)
      block_forward(block(i), ws.hidden.data(), n, s->length, s->layers[(size_t)i], nullptr, 0, ws);
    head_rows(ws.hidden.data() + (n - 1) * config_.dim, 1, last_logits, ws);
  }

  // One token for each of `count` sequences: the linears run once over the count rows (M = count),
  // RoPE and attention per row against that row's own cache.
  void do_decode_batch(Sequence* const* seqs, int64_t count, const int32_t* ids, float* logits) override {
    Workspace& ws = main_;
    ws.hidden.resize((size_t)(count * config_.dim));
    do_embed(ids, count, ws.hidden.data());
    std::vector<CpuSequence*> rows((size_t)count);
    for (int64_t r = 0; r < count; ++r) rows[(size_t)r] = static_cast<CpuSequence*>(seqs[r]);
    for (int64_t i = 0; i < config_.layers; ++i) block_forward_rows(block(i), ws.hidden.data(), rows, i, ws);
    head_rows(ws.hidden.data(), count, logits, ws);
  }

 private:
  const CpuBlock& block(int64_t i) const { return *blocks_[(size_t)i]; }  // present: the base checked

  // One block over one new token of each sequence of `rows` (row r at position rows[r]->length),
  // in place on `hidden` [rows, dim]; each row's key and value go to its own cache of `layer`.
  void block_forward_rows(const CpuBlock& blk, float* hidden, const std::vector<CpuSequence*>& rows, int64_t layer,
                          Workspace& ws) {
    const LlamaConfig& c = config_;
    const int64_t n = (int64_t)rows.size();
    Scratch& s = ws.scratch;
    s.resize(c, n);
    struct Ops {
      const LlamaConfig& c;
      const CpuBlock& blk;
      const std::vector<CpuSequence*>& rows;
      int64_t n, layer;
      Workspace& ws;
      void rms_norm(const float* in, const float* w, float* out) { cpu::rms_norm(in, n, c.dim, w, c.norm_eps, out); }
      void linear(Linear which, const float* in, float* out) { blk.linears[(int)which]->apply(in, n, out); }
      void rope(float* q, float* k) {
        const int64_t qw = c.heads * c.head_dim, kw = c.kv_heads * c.head_dim;
        for (int64_t r = 0; r < n; ++r) {
          ws.rope.build(c.inv_freq, c.rope_scale, rows[(size_t)r]->length, 1);
          cpu::apply_rope(q + r * qw, 1, qw, c.heads, ws.rope);
          cpu::apply_rope(k + r * kw, 1, kw, c.kv_heads, ws.rope);
        }
      }
      void attention(const float* q, const float* k, const float* v, float* out) {
        const int64_t qw = c.heads * c.head_dim, kw = c.kv_heads * c.head_dim;
        const float scale = (float)(1.0 / std::sqrt((double)c.head_dim));
        for (int64_t r = 0; r < n; ++r) {
          KvBlock& kv = rows[(size_t)r]->layers[(size_t)layer];
          const int64_t p = rows[(size_t)r]->length;
          cpu::store_kv(k + r * kw, v + r * kw, 1, p, kv);
          cpu::causal_attention(q + r * qw, 1, p, c.heads, kv, scale, out + r * qw);
        }
      }
      void add(float* y, const float* x, int64_t cols) { cpu::add_inplace(y, x, n * cols); }
      void swiglu(const float* gate, const float* up, float* out) { cpu::swiglu(gate, up, n * c.hidden, out); }
      bool emit(CapturePoint, const float*, int64_t) { return false; }
    } recipe_ops{c, blk, rows, n, layer, ws};
    const BlockBuffers b{s.x.data(),    s.norm.data(),  s.q.data(),    s.k.data(), s.v.data(),
                         s.attn.data(), s.proj.data(), s.gate.data(), s.up.data()};
    std::memcpy(b.x, hidden, (size_t)(n * c.dim) * 4);
    block_recipe(c, b, blk.attn_norm.data(), blk.mlp_norm.data(), recipe_ops);
    std::memcpy(hidden, b.x, (size_t)(n * c.dim) * 4);
  }

  // final norm + lm_head over rows, in chunks that bound the normalised copy.
  void head_rows(const float* hidden, int64_t rows, float* logits, Workspace& ws) const {
    constexpr int64_t kChunk = 64;
    ws.normed.resize((size_t)(std::min(rows, kChunk) * config_.dim));
    for (int64_t r0 = 0; r0 < rows; r0 += kChunk) {
      const int64_t n = std::min(kChunk, rows - r0);
      cpu::rms_norm(hidden + r0 * config_.dim, n, config_.dim, final_norm_.data(), config_.norm_eps, ws.normed.data());
      if (head_) head_->apply(ws.normed.data(), n, logits + r0 * config_.vocab);
      else cpu::dense_linear(ws.normed.data(), n, embed_, nullptr, logits + r0 * config_.vocab);
    }
  }

  // ids [seq] -> hidden [seq, dim] after the last block (no final norm).
  void forward_sequence(const int32_t* ids, int64_t seq, float* hidden, Workspace& ws) {
    do_embed(ids, seq, hidden);
    ws.kv.resize(config_.kv_heads, config_.head_dim, seq);
    for (int64_t i = 0; i < config_.layers; ++i) block_forward(block(i), hidden, seq, 0, ws.kv, nullptr, 0, ws);
  }

  // Runs fn(b, workspace) for every sequence b of a batch. Small models run whole sequences on
  // different threads (their ops are too small to split well); larger ones one sequence at a time,
  // each op spread over the pool.
  void for_each_sequence(int64_t batch, const std::function<void(int64_t, Workspace&)>& fn) {
    const int64_t threads = global_pool()->size();
    if (batch == 1 || threads == 1 || config_.dim >= kSplitOpsFromDim) {
      for (int64_t b = 0; b < batch; ++b) fn(b, main_);
      return;
    }
    std::vector<Workspace> spaces((size_t)std::min(batch, threads));
    std::atomic<int64_t> next{0};
    global_pool()->parallel_for((int64_t)spaces.size(), 1, [&](int64_t w0, int64_t w1) {
      cpu::SerialScope serial;
      for (int64_t w = w0; w < w1; ++w)
        for (int64_t b = next++; b < batch; b = next++) fn(b, spaces[(size_t)w]);
    });
  }
  static constexpr int64_t kSplitOpsFromDim = 1024;

  // One block over the n rows of one sequence at positions p0..p0+n-1, in place on `hidden`.
  // The keys and values are appended to `kv` (which holds positions 0..p0-1 already).
  void block_forward(const CpuBlock& blk, float* hidden, int64_t n, int64_t p0, KvBlock& kv, const BlockRun* run,
                     int64_t row0, Workspace& ws) {
    const LlamaConfig& c = config_;
    Scratch& s = ws.scratch;
    s.resize(c, n);
    // The CPU's ops for block_recipe, over the n rows of this sequence.
    struct Ops {
      const LlamaConfig& c;
      const CpuBlock& blk;
      int64_t n, p0, row0;
      KvBlock& kv;
      const BlockRun* run;
      Workspace& ws;
      void rms_norm(const float* in, const float* w, float* out) { cpu::rms_norm(in, n, c.dim, w, c.norm_eps, out); }
      void linear(Linear which, const float* in, float* out) { blk.linears[(int)which]->apply(in, n, out); }
      void rope(float* q, float* k) {
        ws.rope.build(c.inv_freq, c.rope_scale, p0, n);
        cpu::apply_rope(q, n, c.heads * c.head_dim, c.heads, ws.rope);
        cpu::apply_rope(k, n, c.kv_heads * c.head_dim, c.kv_heads, ws.rope);
      }
      void attention(const float* q, const float* k, const float* v, float* out) {
        cpu::store_kv(k, v, n, p0, kv);
        const float scale = (float)(1.0 / std::sqrt((double)c.head_dim));
        cpu::causal_attention(q, n, p0, c.heads, kv, scale, out);
      }
      void add(float* y, const float* x, int64_t cols) { cpu::add_inplace(y, x, n * cols); }
      void swiglu(const float* gate, const float* up, float* out) { cpu::swiglu(gate, up, n * c.hidden, out); }
      bool emit(CapturePoint p, const float* data, int64_t cols) {
        const CaptureFn* capture = run ? run->capture : nullptr;
        if (capture && *capture) (*capture)(p, Activations{data, n, cols, row0});
        return run && run->stop_after == (int)p;
      }
    } recipe_ops{c, blk, n, p0, row0, kv, run, ws};
    const BlockBuffers b{s.x.data(),    s.norm.data(),  s.q.data(),    s.k.data(), s.v.data(),
                         s.attn.data(), s.proj.data(), s.gate.data(), s.up.data()};
    std::memcpy(b.x, hidden, (size_t)(n * c.dim) * 4);
    if (block_recipe(c, b, blk.attn_norm.data(), blk.mlp_norm.data(), recipe_ops))
      std::memcpy(hidden, b.x, (size_t)(n * c.dim) * 4);
  }

  LinearOptions linear_options_;  // how this model makes its linears (e.g. int8 activations)
  std::vector<std::unique_ptr<CpuBlock>> blocks_;
  DensePanels embed_;
  std::vector<float> final_norm_;
  std::unique_ptr<LinearOp> head_;
  // Reused between calls (a backend is used by one thread at a time).
  Workspace main_;
};

}  // namespace

std::unique_ptr<LlamaBackend> make_cpu_backend(const LlamaConfig& config, const LinearOptions& linears) {
  return std::make_unique<CpuLlama>(config, linears);
}

}  // namespace model
}  // namespace lowbit

// The CPU backend of the Llama forward pass: weights in native-owned memory (dense panels in their
// own dtype, or packed GPTQ buffers), one sequence at a time through each block so activation memory
// grows with the sequence length, not the batch.
#include <atomic>
#include <cmath>
#include <cstring>
#include <functional>
#include <optional>

#include "../packed_gemm.hpp"
#include "../thread_pool.hpp"
#include "backend.hpp"
#include "ops.hpp"

namespace lowbit {
namespace model {
namespace {

using cpu::DensePanels;
using cpu::KvBlock;

// A packed weight with its own copies of the buffers behind the PackedMatrix view.
struct PackedStore {
  std::vector<int32_t> qweight, qzeros, g_idx;
  std::vector<uint16_t> scales;
  PackedMatrix view;

  explicit PackedStore(const PackedMatrix& src)
      : qweight(src.qweight, src.qweight + src.qweight_words()),
        qzeros(src.qzeros, src.qzeros + src.qzeros_words()),
        scales(src.scales, src.scales + src.groups * src.N) {
    if (src.g_idx) g_idx.assign(src.g_idx, src.g_idx + src.K);
    view = src;
    view.qweight = qweight.data();
    view.qzeros = qzeros.data();
    view.scales = scales.data();
    view.g_idx = src.g_idx ? g_idx.data() : nullptr;
  }
  int64_t bytes() const { return (int64_t)(qweight.size() * 4 + qzeros.size() * 4 + g_idx.size() * 4 + scales.size() * 2); }
};

class CpuLinear {
 public:
  CpuLinear(const LinearWeights& w, int64_t N, int64_t K) : N_(N), K_(K) {
    if (w.packed) packed_.emplace(w.q);
    else dense_ = DensePanels(w.data, w.dtype, N, K);
    if (w.bias) bias_.assign(w.bias, w.bias + N);
  }

  // Y [M, N] = X [M, K] · Wᵀ + bias
  void apply(const float* X, int64_t M, float* Y) const {
    if (packed_) {
      packed_gemm(X, M, packed_->view, Y);
      if (!bias_.empty())
        for (int64_t m = 0; m < M; ++m)
          for (int64_t n = 0; n < N_; ++n) Y[m * N_ + n] += bias_[(size_t)n];
    } else {
      cpu::dense_linear(X, M, dense_, bias_.empty() ? nullptr : bias_.data(), Y);
    }
  }
  int64_t bytes() const { return (packed_ ? packed_->bytes() : dense_.bytes()) + (int64_t)bias_.size() * 4; }

 private:
  int64_t N_, K_;
  DensePanels dense_;
  std::optional<PackedStore> packed_;
  std::vector<float> bias_;
};

struct CpuBlock {
  std::vector<float> attn_norm, mlp_norm;
  std::unique_ptr<CpuLinear> linears[kBlockLinears];
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
  explicit CpuLlama(const LlamaConfig& config) : LlamaBackend(config), blocks_((size_t)config.layers) {}

  int device() const override { return -1; }

  void set_globals(const GlobalWeights& w) override {
    require(w.embed && w.final_norm, "E_BUFFER", "globals need the embedding and the final norm");
    embed_ = DensePanels(w.embed, w.embed_dtype, config_.vocab, config_.dim);
    final_norm_.assign(w.final_norm, w.final_norm + config_.dim);
    head_.reset();
    if (!config_.tie_embeddings) {
      check_linear(Linear::Head, w.head);
      head_ = std::make_unique<CpuLinear>(w.head, config_.vocab, config_.dim);
    }
  }

  void set_block(int64_t i, const BlockWeights& w) override {
    check_block_index(i);
    require(w.attn_norm && w.mlp_norm, "E_BUFFER", "block weights need both norms");
    for (int l = 0; l < kBlockLinears; ++l) check_linear((Linear)l, w.linears[l]);
    auto b = std::make_unique<CpuBlock>();
    b->attn_norm.assign(w.attn_norm, w.attn_norm + config_.dim);
    b->mlp_norm.assign(w.mlp_norm, w.mlp_norm + config_.dim);
    for (int l = 0; l < kBlockLinears; ++l)
      b->linears[l] = std::make_unique<CpuLinear>(w.linears[l], linear_out(config_, (Linear)l), linear_in(config_, (Linear)l));
    blocks_[(size_t)i] = std::move(b);
  }

  void set_linear(int64_t i, Linear which, const LinearWeights& w) override {
    check_block_index(i);
    require((int)which < kBlockLinears, "E_ARGUMENT", "set_linear replaces a block's linear, not the head");
    require(blocks_[(size_t)i] != nullptr, "E_MISSING_TENSOR", "block " + std::to_string(i) + "'s weights are not set");
    check_linear(which, w);
    blocks_[(size_t)i]->linears[(int)which] =
        std::make_unique<CpuLinear>(w, linear_out(config_, which), linear_in(config_, which));
  }

  void drop_block(int64_t i) override {
    check_block_index(i);
    blocks_[(size_t)i].reset();
  }

  bool has_block(int64_t i) const override {
    return i >= 0 && i < config_.layers && blocks_[(size_t)i] != nullptr;
  }

  int64_t weight_bytes() const override {
    int64_t b = embed_.bytes() + (int64_t)final_norm_.size() * 4 + (head_ ? head_->bytes() : 0);
    for (const auto& blk : blocks_)
      if (blk) b += blk->bytes();
    return b;
  }

  void embed(const int32_t* ids, int64_t n, float* hidden) override {
    require_globals();
    check_ids(ids, n);
    cpu::parallel(n, 64, [&](int64_t i0, int64_t i1) {
      for (int64_t i = i0; i < i1; ++i) embed_.row(ids[i], hidden + i * config_.dim);
    });
  }

  void run_block(int64_t i, float* hidden, int64_t batch, int64_t seq, const BlockRun& run) override {
    check_block_index(i);
    check_batch(batch, seq);
    const CpuBlock& blk = block(i);
    require(run.stop_after >= -1 && run.stop_after < kCapturePoints, "E_ARGUMENT", "stop_after is out of range");
    // One sequence at a time (the capture callback is not asked to be thread-safe).
    Workspace& ws = main_;
    ws.kv.resize(config_.kv_heads, config_.head_dim, seq);
    for (int64_t b = 0; b < batch; ++b) block_forward(blk, hidden + b * seq * config_.dim, seq, 0, ws.kv, &run, b * seq, ws);
  }

  void head(const float* hidden, int64_t rows, float* logits) override {
    require_globals();
    head_rows(hidden, rows, logits, main_);
  }

  void logits(const int32_t* ids, int64_t batch, int64_t seq, float* out) override {
    check_batch(batch, seq);
    check_ids(ids, batch * seq);
    require_all_blocks();
    for_each_sequence(batch, [&](int64_t b, Workspace& ws) {
      ws.hidden.resize((size_t)(seq * config_.dim));
      forward_sequence(ids + b * seq, seq, ws.hidden.data(), ws);
      head_rows(ws.hidden.data(), seq, out + b * seq * config_.vocab, ws);
    });
  }

  void nll(const int32_t* ids, int64_t batch, int64_t seq, float* out) override {
    check_batch(batch, seq);
    check_ids(ids, batch * seq);
    require_all_blocks();
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

  std::unique_ptr<Sequence> new_sequence(int64_t capacity) override {
    require(capacity >= 1 && capacity <= config_.max_seq, "E_ARGUMENT",
            "sequence capacity must be in [1, " + std::to_string(config_.max_seq) + "], got " + std::to_string(capacity));
    auto s = std::make_unique<CpuSequence>();
    s->capacity = capacity;
    s->layers.resize((size_t)config_.layers);
    for (auto& l : s->layers) l.resize(config_.kv_heads, config_.head_dim, capacity);
    return s;
  }

  void decode(Sequence& sequence, const int32_t* ids, int64_t n, float* last_logits) override {
    auto* s = dynamic_cast<CpuSequence*>(&sequence);
    require(s != nullptr, "E_ARGUMENT", "the sequence belongs to another backend");
    require(n >= 1, "E_SHAPE", "decode needs at least one token");
    require(s->length + n <= s->capacity, "E_SHAPE",
            "the sequence holds " + std::to_string(s->length) + " of " + std::to_string(s->capacity) +
                " tokens; " + std::to_string(n) + " more do not fit");
    require_all_blocks();
    check_ids(ids, n);
    Workspace& ws = main_;
    ws.hidden.resize((size_t)(n * config_.dim));
    embed(ids, n, ws.hidden.data());
    for (int64_t i = 0; i < config_.layers; ++i)
      block_forward(block(i), ws.hidden.data(), n, s->length, s->layers[(size_t)i], nullptr, 0, ws);
    s->length += n;
    head_rows(ws.hidden.data() + (n - 1) * config_.dim, 1, last_logits, ws);
  }

 private:
  const CpuBlock& block(int64_t i) const {
    require(blocks_[(size_t)i] != nullptr, "E_MISSING_TENSOR", "block " + std::to_string(i) + "'s weights are not set");
    return *blocks_[(size_t)i];
  }
  void require_globals() const {
    require(!embed_.empty(), "E_MISSING_TENSOR", "the embedding and final norm are not set");
  }
  void require_all_blocks() const {
    require_globals();
    for (int64_t i = 0; i < config_.layers; ++i) block(i);
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
    embed(ids, seq, hidden);
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
    const int64_t qw = c.heads * c.head_dim, kw = c.kv_heads * c.head_dim;
    Scratch& s = ws.scratch;
    s.resize(c, n);
    const CaptureFn* capture = run ? run->capture : nullptr;
    const int stop = run ? run->stop_after : -1;
    auto emit = [&](CapturePoint p, const float* data, int64_t cols) {
      if (capture && *capture) (*capture)(p, Activations{data, n, cols, row0, -1});
      return stop == (int)p;
    };
    // Attention: x = hidden + o(attn(rope(q(norm(hidden))), rope(k(..)), v(..)))
    float* x = s.x.data();
    std::memcpy(x, hidden, (size_t)(n * c.dim) * 4);
    cpu::rms_norm(x, n, c.dim, blk.attn_norm.data(), c.norm_eps, s.norm.data());
    if (emit(CapturePoint::Qkv, s.norm.data(), c.dim)) return;
    blk.linears[(int)Linear::Q]->apply(s.norm.data(), n, s.q.data());
    blk.linears[(int)Linear::K]->apply(s.norm.data(), n, s.k.data());
    blk.linears[(int)Linear::V]->apply(s.norm.data(), n, s.v.data());
    ws.rope.build(c.inv_freq, c.rope_scale, p0, n);
    cpu::apply_rope(s.q.data(), n, qw, c.heads, ws.rope);
    cpu::apply_rope(s.k.data(), n, kw, c.kv_heads, ws.rope);
    cpu::store_kv(s.k.data(), s.v.data(), n, p0, kv);
    const float scale = (float)(1.0 / std::sqrt((double)c.head_dim));
    cpu::causal_attention(s.q.data(), n, p0, c.heads, kv, scale, s.attn.data());
    if (emit(CapturePoint::O, s.attn.data(), qw)) return;
    blk.linears[(int)Linear::O]->apply(s.attn.data(), n, s.proj.data());
    cpu::add_inplace(x, s.proj.data(), n * c.dim);
    // MLP: x += down(silu(gate(norm(x))) * up(norm(x)))
    cpu::rms_norm(x, n, c.dim, blk.mlp_norm.data(), c.norm_eps, s.norm.data());
    if (emit(CapturePoint::GateUp, s.norm.data(), c.dim)) return;
    blk.linears[(int)Linear::Gate]->apply(s.norm.data(), n, s.gate.data());
    blk.linears[(int)Linear::Up]->apply(s.norm.data(), n, s.up.data());
    cpu::swiglu(s.gate.data(), s.up.data(), n * c.hidden, s.gate.data());
    if (emit(CapturePoint::Down, s.gate.data(), c.hidden)) return;
    blk.linears[(int)Linear::Down]->apply(s.gate.data(), n, s.proj.data());
    cpu::add_inplace(x, s.proj.data(), n * c.dim);
    std::memcpy(hidden, x, (size_t)(n * c.dim) * 4);
  }

  std::vector<std::unique_ptr<CpuBlock>> blocks_;
  DensePanels embed_;
  std::vector<float> final_norm_;
  std::unique_ptr<CpuLinear> head_;
  // Reused between calls (a backend is used by one thread at a time).
  Workspace main_;
};

}  // namespace

std::unique_ptr<LlamaBackend> make_cpu_backend(const LlamaConfig& config) { return std::make_unique<CpuLlama>(config); }

}  // namespace model
}  // namespace lowbit

#include "backend.hpp"
#include "rope.hpp"

#include <algorithm>
#include <atomic>
#include <climits>
#include <cmath>

namespace lowbit {
namespace model {

namespace {
std::string str(int64_t v) { return std::to_string(v); }
std::atomic<BackendFactory> g_cuda_factory{nullptr};
}  // namespace

void LlamaConfig::validate() const {
  auto positive = [](int64_t v, const char* name) {
    require(v > 0, "E_CONFIG", std::string(name) + " must be positive, got " + std::to_string(v));
  };
  positive(dim, "dim");
  positive(hidden, "hidden");
  positive(layers, "layers");
  positive(heads, "heads");
  positive(kv_heads, "kvHeads");
  positive(head_dim, "headDim");
  positive(vocab, "vocab");
  positive(max_seq, "maxSeq");
  require(heads % kv_heads == 0, "E_CONFIG",
          "heads (" + str(heads) + ") must be a multiple of kvHeads (" + str(kv_heads) + ")");
  require(head_dim % 2 == 0, "E_CONFIG", "headDim must be even for rotary embeddings, got " + str(head_dim));
  require((int64_t)inv_freq.size() == head_dim / 2, "E_CONFIG",
          "invFreq must hold headDim/2 = " + str(head_dim / 2) + " values, got " + str((int64_t)inv_freq.size()));
  for (float f : inv_freq) require(std::isfinite(f), "E_CONFIG", "invFreq must be finite");
  // The sizes the backends and the binding compute from these must fit in int64 (E_SHAPE otherwise).
  checked_product({vocab, dim}, "vocab x dim");
  checked_product({hidden, dim}, "hidden x dim");
  checked_product({heads, head_dim, dim}, "heads x headDim x dim");
  checked_product({2, layers, kv_heads, head_dim, max_seq, 4}, "KV cache bytes");
  checked_product({max_seq, max_seq}, "maxSeq x maxSeq");
  checked_product({max_seq, vocab}, "maxSeq x vocab");
  require(std::isfinite(norm_eps) && norm_eps >= 0, "E_CONFIG", "normEps must be finite and non-negative");
  require(std::isfinite(rope_scale) && rope_scale > 0, "E_CONFIG", "ropeScale must be positive");
}

const char* linear_name(Linear which) {
  static const char* const names[] = {"q", "k", "v", "o", "gate", "up", "down", "head"};
  return names[(int)which];
}

const char* capture_name(CapturePoint p) {
  static const char* const names[] = {"qkv", "o", "gateUp", "down"};
  return names[(int)p];
}

int64_t linear_in(const LlamaConfig& c, Linear which) {
  switch (which) {
    case Linear::O: return c.heads * c.head_dim;
    case Linear::Down: return c.hidden;
    default: return c.dim;  // q, k, v, gate, up, head
  }
}

int64_t linear_out(const LlamaConfig& c, Linear which) {
  switch (which) {
    case Linear::Q: return c.heads * c.head_dim;
    case Linear::K:
    case Linear::V: return c.kv_heads * c.head_dim;
    case Linear::O: return c.dim;
    case Linear::Gate:
    case Linear::Up: return c.hidden;
    case Linear::Down: return c.dim;
    case Linear::Head: return c.vocab;
  }
  return 0;
}

void LlamaBackend::check_ids(const int32_t* ids, int64_t n) const {
  for (int64_t i = 0; i < n; ++i)
    require(ids[i] >= 0 && ids[i] < config_.vocab, "E_ARGUMENT",
            "token id " + str(ids[i]) + " at index " + str(i) + " is outside the vocabulary [0, " + str(config_.vocab) +
                ")");
}

void LlamaBackend::check_block_index(int64_t block) const {
  require(block >= 0 && block < config_.layers, "E_ARGUMENT",
          "block " + str(block) + " is outside [0, " + str(config_.layers) + ")");
}

void LlamaBackend::check_batch(int64_t batch, int64_t seq) const {
  require(batch >= 1 && seq >= 1, "E_SHAPE", "batch and seq must be positive");
  require(seq <= config_.max_seq, "E_SHAPE",
          "sequence length " + str(seq) + " exceeds the model's maximum " + str(config_.max_seq));
}

void LlamaBackend::check_linear(Linear which, const LinearWeights& w) const {
  check_linear_weights(w, linear_name(which), linear_out(config_, which), linear_in(config_, which));
}

void LlamaBackend::require_block(int64_t block) const {
  require(has_block(block), "E_MISSING_TENSOR", "block " + str(block) + "'s weights are not set");
}

void LlamaBackend::require_globals() const {
  require(has_globals(), "E_MISSING_TENSOR", "the embedding and final norm are not set");
}

void LlamaBackend::require_all_blocks() const {
  require_globals();
  for (int64_t i = 0; i < config_.layers; ++i) require_block(i);
}

void LlamaBackend::set_globals(const GlobalWeights& w) {
  require(w.embed && w.final_norm, "E_BUFFER", "globals need the embedding and the final norm");
  if (!config_.tie_embeddings) check_linear(Linear::Head, w.head);
  do_set_globals(w);
}

void LlamaBackend::set_block(int64_t block, const BlockWeights& w) {
  check_block_index(block);
  require(w.attn_norm && w.mlp_norm, "E_BUFFER", "block weights need both norms");
  for (int l = 0; l < kBlockLinears; ++l) check_linear((Linear)l, w.linears[l]);
  do_set_block(block, w);
}

void LlamaBackend::set_linear(int64_t block, Linear which, const LinearWeights& w) {
  check_block_index(block);
  require((int)which >= 0 && (int)which < kBlockLinears, "E_ARGUMENT",
          "set_linear replaces a block's linear, not the head");
  require_block(block);
  check_linear(which, w);
  do_set_linear(block, which, w);
}

void LlamaBackend::drop_block(int64_t block) {
  check_block_index(block);
  do_drop_block(block);
}

void LlamaBackend::embed(const int32_t* ids, int64_t n, float* hidden) {
  require_globals();
  check_ids(ids, n);
  do_embed(ids, n, hidden);
}

void LlamaBackend::run_block(int64_t block, float* hidden, int64_t batch, int64_t seq, const BlockRun& run) {
  check_block_index(block);
  check_batch(batch, seq);
  require(run.stop_after >= -1 && run.stop_after < kCapturePoints, "E_ARGUMENT", "stop_after is out of range");
  require_block(block);
  do_run_block(block, hidden, batch, seq, run);
}

namespace {
// The default resident states: rows x dim floats in host memory.
class HostStates : public HiddenStates {
 public:
  std::vector<float> data;
};
}  // namespace

std::unique_ptr<HiddenStates> LlamaBackend::new_states(const float* hidden, int64_t rows) {
  require(rows >= 1, "E_SHAPE", "hidden states need at least one row, got " + str(rows));
  require(rows <= INT64_MAX / config_.dim, "E_SHAPE", "rows x dim overflows");
  std::unique_ptr<HiddenStates> s = do_new_states(hidden, rows);
  s->rows = rows;
  s->owner = this;
  return s;
}

void LlamaBackend::read_states(const HiddenStates& states, int64_t row0, int64_t rows, float* out) const {
  require(states.owner == this, "E_ARGUMENT", "the hidden states belong to another backend");
  require(row0 >= 0 && rows >= 0 && row0 <= states.rows && rows <= states.rows - row0, "E_SHAPE",
          "rows [" + str(row0) + ", " + str(row0 + rows) + ") are outside the " + str(states.rows) + " held");
  do_read_states(states, row0, rows, out);
}

void LlamaBackend::run_block_states(int64_t block, HiddenStates& states, int64_t row0, int64_t batch, int64_t seq,
                                    const BlockRun& run) {
  require(states.owner == this, "E_ARGUMENT", "the hidden states belong to another backend");
  check_block_index(block);
  check_batch(batch, seq);
  const int64_t rows = batch * seq;
  require(row0 >= 0 && row0 <= states.rows && rows <= states.rows - row0, "E_SHAPE",
          "rows [" + str(row0) + ", " + str(row0 + rows) + ") are outside the " + str(states.rows) + " held");
  require(run.stop_after >= -1 && run.stop_after < kCapturePoints, "E_ARGUMENT", "stop_after is out of range");
  require_block(block);
  do_run_block_states(block, states, row0, batch, seq, run);
}

std::unique_ptr<HiddenStates> LlamaBackend::do_new_states(const float* hidden, int64_t rows) {
  auto s = std::make_unique<HostStates>();
  s->data.assign(hidden, hidden + rows * config_.dim);
  return s;
}

void LlamaBackend::do_read_states(const HiddenStates& states, int64_t row0, int64_t rows, float* out) const {
  const auto& s = static_cast<const HostStates&>(states);
  std::copy(s.data.begin() + row0 * config_.dim, s.data.begin() + (row0 + rows) * config_.dim, out);
}

void LlamaBackend::do_run_block_states(int64_t block, HiddenStates& states, int64_t row0, int64_t batch, int64_t seq,
                                       const BlockRun& run) {
  auto& s = static_cast<HostStates&>(states);
  do_run_block(block, s.data.data() + row0 * config_.dim, batch, seq, run);
}

void LlamaBackend::head(const float* hidden, int64_t rows, float* logits) {
  require_globals();
  do_head(hidden, rows, logits);
}

void LlamaBackend::logits(const int32_t* ids, int64_t batch, int64_t seq, float* out) {
  check_batch(batch, seq);
  check_ids(ids, batch * seq);
  require_all_blocks();
  do_logits(ids, batch, seq, out);
}

void LlamaBackend::nll(const int32_t* ids, int64_t batch, int64_t seq, float* out) {
  check_batch(batch, seq);
  check_ids(ids, batch * seq);
  require_all_blocks();
  do_nll(ids, batch, seq, out);
}

std::unique_ptr<Sequence> LlamaBackend::new_sequence(int64_t capacity) {
  require(capacity >= 1 && capacity <= config_.max_seq, "E_ARGUMENT",
          "sequence capacity must be in [1, " + str(config_.max_seq) + "], got " + str(capacity));
  std::unique_ptr<Sequence> s = do_new_sequence(capacity);
  s->capacity = capacity;
  s->owner = this;
  return s;
}

void LlamaBackend::decode(Sequence& seq, const int32_t* ids, int64_t n, float* last_logits) {
  require(seq.owner == this, "E_ARGUMENT", "the sequence belongs to another backend");
  require(n >= 1, "E_SHAPE", "decode needs at least one token");
  require(seq.length + n <= seq.capacity, "E_SHAPE",
          "the sequence holds " + str(seq.length) + " of " + str(seq.capacity) + " tokens; " + str(n) +
              " more do not fit");
  require_all_blocks();
  check_ids(ids, n);
  do_decode(seq, ids, n, last_logits);
  seq.length += n;
}

// The checks decode_batch and decode_greedy share: distinct sequences of this backend, each with room
// for `steps` more tokens, and valid ids.
void LlamaBackend::check_batch(Sequence* const* seqs, int64_t count, const int32_t* ids, int64_t steps,
                               const char* what) {
  require(count >= 1, "E_SHAPE", std::string(what) + " needs at least one sequence");
  require(steps >= 1, "E_SHAPE", std::string(what) + " needs at least one step");
  for (int64_t i = 0; i < count; ++i) {
    require(seqs[i] != nullptr && seqs[i]->owner == this, "E_ARGUMENT",
            "sequence " + str(i) + " of the batch belongs to another backend");
    require(seqs[i]->length <= seqs[i]->capacity - steps, "E_SHAPE",
            "sequence " + str(i) + " of the batch holds " + str(seqs[i]->length) + " of " + str(seqs[i]->capacity) +
                " tokens; " + (steps == 1 ? std::string("one more does not fit") : str(steps) + " more do not fit"));
    for (int64_t j = 0; j < i; ++j)
      require(seqs[j] != seqs[i], "E_ARGUMENT", "sequences " + str(j) + " and " + str(i) + " of the batch are the same");
  }
  require_all_blocks();
  check_ids(ids, count);
}

void LlamaBackend::decode_batch(Sequence* const* seqs, int64_t count, const int32_t* ids, float* logits) {
  check_batch(seqs, count, ids, 1, "decode_batch");
  std::vector<int64_t> before((size_t)count);
  for (int64_t i = 0; i < count; ++i) before[(size_t)i] = seqs[i]->length;
  do_decode_batch(seqs, count, ids, logits);
  // (the default loop advances each sequence itself; a batched override advances none)
  for (int64_t i = 0; i < count; ++i) seqs[i]->length = before[(size_t)i] + 1;
}

void LlamaBackend::decode_greedy(Sequence* const* seqs, int64_t count, const int32_t* ids, int64_t steps,
                                 int32_t* tokens) {
  check_batch(seqs, count, ids, steps, "decode_greedy");
  std::vector<int64_t> before((size_t)count);
  for (int64_t i = 0; i < count; ++i) before[(size_t)i] = seqs[i]->length;
  do_decode_greedy(seqs, count, ids, steps, tokens);
  for (int64_t i = 0; i < count; ++i) seqs[i]->length = before[(size_t)i] + steps;
}

void LlamaBackend::do_decode_greedy(Sequence* const* seqs, int64_t count, const int32_t* ids, int64_t steps,
                                    int32_t* tokens) {
  const int64_t V = config_.vocab;
  std::vector<float> logits((size_t)checked_product({count, V}, "sequences x vocab"));
  for (int64_t s = 0; s < steps; ++s) {
    decode_batch(seqs, count, s == 0 ? ids : tokens + (s - 1) * count, logits.data());
    for (int64_t i = 0; i < count; ++i) tokens[s * count + i] = argmax_first(logits.data() + i * V, V);
  }
}

int32_t argmax_first(const float* x, int64_t n) {
  int64_t best = 0;
  for (int64_t i = 1; i < n; ++i)
    if (x[i] > x[best]) best = i;
  return (int32_t)best;
}

void LlamaBackend::do_decode_batch(Sequence* const* seqs, int64_t count, const int32_t* ids, float* logits) {
  for (int64_t i = 0; i < count; ++i) {
    do_decode(*seqs[i], ids + i, 1, logits + i * config_.vocab);
    seqs[i]->length += 1;
  }
}

void RopeTable::build(const std::vector<float>& inv_freq, float scale, int64_t p0, int64_t n) {

  half = (int64_t)inv_freq.size();
  cos.resize((size_t)(n * half));
  sin.resize((size_t)(n * half));
  for (int64_t r = 0; r < n; ++r)
    for (int64_t i = 0; i < half; ++i) {
      // transformers: freqs = inv_freq * position in f32, then cos/sin in f32.
      const float angle = inv_freq[(size_t)i] * (float)(p0 + r);
      cos[(size_t)(r * half + i)] = (float)std::cos((double)angle) * scale;
      sin[(size_t)(r * half + i)] = (float)std::sin((double)angle) * scale;
    }
}

std::unique_ptr<LlamaBackend> make_backend(int device, const LlamaConfig& config, const LinearOptions& cpu_linears,
                                           DType activations) {
  require(activations == DType::F32 || activations == DType::F16 || activations == DType::BF16, "E_DTYPE",
          "the forward pass computes in 'f32', 'f16' or 'bf16'");
  if (device < 0) {
    require(activations == DType::F32, "E_UNSUPPORTED",
            std::string("dtype: the CPU forward pass computes in f32, not ") + dtype_name(activations));
    return make_cpu_backend(config, cpu_linears);
  }
  const BackendFactory factory = g_cuda_factory.load();
  require(factory != nullptr, "E_CUDA_UNAVAILABLE", "this build of lowbit has no CUDA forward pass");
  return factory(device, config, activations);
}

void register_cuda_backend(BackendFactory factory) { g_cuda_factory.store(factory); }

}  // namespace model
}  // namespace lowbit

#include "backend.hpp"

#include <atomic>
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
  const int64_t K = linear_in(config_, which), N = linear_out(config_, which);
  const std::string name = linear_name(which);
  if (w.packed) {
    require(w.q.K == K && w.q.N == N, "E_SHAPE",
            name + ": packed weight is " + str(w.q.N) + " x " + str(w.q.K) + ", the model needs " + str(N) + " x " + str(K));
    require(w.q.qweight && w.q.qzeros && w.q.scales, "E_BUFFER", name + ": packed weight has no data");
  } else {
    require(w.data != nullptr, "E_BUFFER", name + ": dense weight has no data");
    require(w.dtype == DType::F32 || w.dtype == DType::F16 || w.dtype == DType::BF16, "E_DTYPE",
            name + ": dense weights must be f32, f16 or bf16");
  }
}

std::unique_ptr<LlamaBackend> make_backend(int device, const LlamaConfig& config) {
  if (device < 0) return make_cpu_backend(config);
  const BackendFactory factory = g_cuda_factory.load();
  require(factory != nullptr, "E_CUDA_UNAVAILABLE", "this build of lowbit has no CUDA forward pass");
  return factory(device, config);
}

void register_cuda_backend(BackendFactory factory) { g_cuda_factory.store(factory); }

}  // namespace model
}  // namespace lowbit

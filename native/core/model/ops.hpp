// The CPU building blocks of the Llama forward pass. Every op works in f32 and runs either an AVX2
// path or a plain one (chosen through active_simd(), so tests can force the plain one); the loops
// that are worth it fan out on global_pool().
#pragma once

#include <cstdint>
#include <functional>
#include <vector>

#include "../dtype.hpp"
#include "rope.hpp"

namespace lowbit {
namespace model {
namespace cpu {

bool use_avx2();

// Runs fn(begin, end) over [0, n) on global_pool(), or inline on this thread inside a SerialScope.
void parallel(int64_t n, int64_t grain, const std::function<void(int64_t, int64_t)>& fn);

// While one lives on a thread, the ops it calls run on that thread only: for small models the
// caller parallelizes over whole sequences instead, which costs no synchronization per op.
class SerialScope {
 public:
  SerialScope();
  ~SerialScope();
  SerialScope(const SerialScope&) = delete;
  SerialScope& operator=(const SerialScope&) = delete;

 private:
  bool previous_;
};

// A dense weight W [N, K] (out x in) kept in its own dtype (f32, f16 or bf16) and rearranged once
// into panels of kWidth output channels: panel p holds W[p*kWidth + c, k] at [k][c]. The product
// then streams one panel while it broadcasts inputs, the usual register-blocked GEMM layout.
// N is padded with zero channels to a multiple of kWidth.
class DensePanels {
 public:
  static constexpr int64_t kWidth = 16;

  DensePanels() = default;
  DensePanels(const void* W, DType dtype, int64_t N, int64_t K);

  DType dtype() const { return dtype_; }
  int64_t N() const { return N_; }
  int64_t K() const { return K_; }
  int64_t panels() const { return (N_ + kWidth - 1) / kWidth; }
  int64_t bytes() const { return (int64_t)(f32_.size() * 4 + u16_.size() * 2); }
  bool empty() const { return N_ == 0; }
  // Start of panel p (f32 or 16-bit elements by dtype()).
  const void* panel(int64_t p) const;
  // Row n of W as f32 (for embedding lookups from a tied matrix).
  void row(int64_t n, float* out) const;

 private:
  DType dtype_ = DType::F32;
  int64_t N_ = 0, K_ = 0;
  std::vector<float> f32_;
  std::vector<uint16_t> u16_;
};

// Y [M, N] = X [M, K] · Wᵀ (+ bias [N] when given).
void dense_linear(const float* X, int64_t M, const DensePanels& W, const float* bias, float* Y);

// Y = weight ⊙ X / sqrt(mean(X²) + eps), row by row (transformers' LlamaRMSNorm). Y may equal X.
void rms_norm(const float* X, int64_t rows, int64_t dim, const float* weight, float eps, float* Y);

using model::RopeTable;  // rope.hpp: the cos/sin table every backend builds the same way

// Rotates each head of each row in place (HF half-split form); row r uses table row r.
// X: rows of `stride` floats holding `heads` heads of head_dim = 2 * table.half values.
void apply_rope(float* X, int64_t rows, int64_t stride, int64_t heads, const RopeTable& table);

// The keys and values of one sequence, transposed for the attention loops: [kv_heads][head_dim][cap]
// (cap a multiple of 32; unused positions hold zeros or finite stale values, never read as weights).
struct KvBlock {
  int64_t kv_heads = 0, head_dim = 0, cap = 0;
  std::vector<float> kt, vt;
  void resize(int64_t kv_heads, int64_t head_dim, int64_t capacity);
  float* k_row(int64_t h, int64_t d) { return kt.data() + (h * head_dim + d) * cap; }
  float* v_row(int64_t h, int64_t d) { return vt.data() + (h * head_dim + d) * cap; }
  const float* k_row(int64_t h, int64_t d) const { return kt.data() + (h * head_dim + d) * cap; }
  const float* v_row(int64_t h, int64_t d) const { return vt.data() + (h * head_dim + d) * cap; }
  int64_t bytes() const { return (int64_t)(kt.size() + vt.size()) * 4; }
};

// Writes n rows of keys and values ([n, kv_heads*head_dim] each) at positions p0.. of the cache.
void store_kv(const float* K, const float* V, int64_t n, int64_t p0, KvBlock& kv);

// Causal grouped-query attention of n queries at positions p0..p0+n-1 against the cache's positions
// 0..p0+n-1. Q: [n, heads*head_dim]; out: [n, heads*head_dim]. Query head h reads kv head
// h / (heads / kv_heads). Scores are scaled by `scale` before the softmax.
void causal_attention(const float* Q, int64_t n, int64_t p0, int64_t heads, const KvBlock& kv, float scale,
                      float* out);

// out = silu(gate) ⊙ up, elementwise over n values. out may equal gate.
void swiglu(const float* gate, const float* up, int64_t n, float* out);

// y += x over n values.
void add_inplace(float* y, const float* x, int64_t n);

// -log softmax(logits)[target] for one row of `vocab` logits.
float row_nll(const float* logits, int64_t vocab, int32_t target);

}  // namespace cpu
}  // namespace model
}  // namespace lowbit

// The Llama-family forward pass as one interface that every backend implements: the CPU one here
// (cpu_llama.cpp) and the CUDA one in cuda/. The binding (native/binding/model.cpp) only talks to
// LlamaBackend, so a model behaves the same whichever device holds it.
//
// Contract shared by all backends:
// - Every pointer argument is HOST memory, checked for length by the caller (the binding); results
//   are written to host buffers the caller owns. A backend keeps its own copy of every weight it is
//   given (the caller's buffers may be freed after the call returns).
// - Activations are f32, row-major, [rows, features]; a batch of B sequences of S tokens is B*S rows,
//   sequence-major. Each sequence of a batch starts at position 0 (no KV state crosses sequences).
// - Accumulation is f32 (or wider). A backend computes in f32 unless it was made with 16-bit
//   activations (make_backend's `activations`, CUDA only): then the linears' inputs and outputs, the
//   KV cache and attention's inputs are f16 or bf16 on the device, while the residual stream, the
//   softmax and RMSNorm statistics and the logits stay f32; the host interface is f32 either way.
// - Dense weights may be f32, f16 or bf16; any linear may instead be
//   in a packed format (LinearWeights, weights/linear.hpp), so a partially quantized model runs.
//   Each backend turns a linear into the operator it runs through its device's factory
//   (make_cpu_linear, cuda::make_device_linear), which may repack the weight once at load time.
// - A backend is not thread-safe: the caller serializes calls on one backend (the binding holds a
//   lock per model). Errors are CoreError with a code from src/errors.ts.
// - Only the blocks a call touches need weights: run_block(i) needs block i, whole-model calls need
//   every block and the globals. Missing weights throw E_MISSING_TENSOR.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "../dtype.hpp"
#include "../packed_matrix.hpp"
#include "../weights/linear.hpp"

namespace lowbit {
namespace model {

struct LlamaConfig {
  int64_t dim = 0;       // hidden_size
  int64_t hidden = 0;    // intermediate_size (MLP)
  int64_t layers = 0;    // num_hidden_layers
  int64_t heads = 0;     // num_attention_heads (query heads)
  int64_t kv_heads = 0;  // num_key_value_heads (grouped-query attention: heads % kv_heads == 0)
  int64_t head_dim = 0;  // even
  int64_t vocab = 0;
  int64_t max_seq = 0;   // the longest sequence a call or KV cache may hold (max_position_embeddings)
  float norm_eps = 1e-5f;
  // Rotary embedding, HF half-split form (dimension i pairs with i + head_dim/2). inv_freq holds the
  // head_dim/2 frequencies with any rope scaling already applied (src/model computes them from the
  // config, in f32 as transformers does); angle = f32(inv_freq[i] * position), cos and sin of it
  // are rounded to f32 and multiplied by rope_scale (transformers' "attention_scaling", 1 unless YaRN).
  std::vector<float> inv_freq;
  float rope_scale = 1.0f;
  bool tie_embeddings = false;  // lm_head = the embedding matrix

  // Throws E_CONFIG when the numbers do not describe a model.
  void validate() const;
};

// The linears of a block, in the order HF names them, plus the output head.
enum class Linear : int { Q = 0, K = 1, V = 2, O = 3, Gate = 4, Up = 5, Down = 6, Head = 7 };
constexpr int kBlockLinears = 7;
const char* linear_name(Linear which);  // "q", "k", "v", "o", "gate", "up", "down", "head"
int64_t linear_in(const LlamaConfig& c, Linear which);   // K: input features
int64_t linear_out(const LlamaConfig& c, Linear which);  // N: output features

// One linear layer's weight (dense or in a packed format): weights/linear.hpp.
using lowbit::LinearWeights;

struct BlockWeights {
  const float* attn_norm = nullptr;  // [dim] input_layernorm.weight
  const float* mlp_norm = nullptr;   // [dim] post_attention_layernorm.weight
  LinearWeights linears[kBlockLinears];  // indexed by Linear (Q..Down)
};

struct GlobalWeights {
  DType embed_dtype = DType::F32;
  const void* embed = nullptr;        // [vocab, dim] embed_tokens.weight
  const float* final_norm = nullptr;  // [dim] norm.weight
  LinearWeights head;                 // lm_head [vocab, dim]; ignored when config.tie_embeddings
};

// The inputs of a block's linears, in the order the block computes them. q/k/v share one input, and
// so do gate/up; these are what GPTQ accumulates its Hessians from.
enum class CapturePoint : int { Qkv = 0, O = 1, GateUp = 2, Down = 3 };
constexpr int kCapturePoints = 4;
const char* capture_name(CapturePoint p);  // "qkv", "o", "gateUp", "down"

struct Activations {
  const float* data;  // [rows, cols] row-major; valid only during the callback (null: see device_data)
  int64_t rows;       // tokens
  int64_t cols;       // input features of the linears fed from this point
  int64_t row0;       // index of the first row within the whole run_block batch (B*S rows)
  // Only with BlockRun::device_captures on a GPU backend: the same [rows, cols] in that GPU's memory,
  // in `device_dtype` (the backend's activations: F32, F16 or BF16), the work that wrote them
  // finished; `data` is then null.
  const void* device_data = nullptr;
  DType device_dtype = DType::F32;
};
using CaptureFn = std::function<void(CapturePoint, const Activations&)>;

struct BlockRun {
  // Called with the inputs of each capture point; a backend may call it several times per point
  // (in row chunks, e.g. one sequence of the batch at a time), covering every row exactly once.
  const CaptureFn* capture = nullptr;
  // Stop right after this point's capture (e.g. GPTQ's true-sequential stages need only the inputs
  // of the linears they quantize next). -1: run the whole block. `hidden` is left unchanged when
  // the run stops early.
  int stop_after = -1;
  // Captures may stay in device memory (Activations::device_data) on a backend that computes on a
  // GPU, e.g. for Hessian accumulators on that GPU; a host backend ignores it.
  bool device_captures = false;
};

// The calibration samples' hidden states [rows, dim] (f32, the residual stream) held where the
// backend computes, so that GPTQ's many passes over them cross no bus (a GPU's memory for CUDA; a
// host copy by default). Made by LlamaBackend::new_states; used only with the backend that made it.
class HiddenStates {
 public:
  virtual ~HiddenStates() = default;
  int64_t rows = 0;
  const void* owner = nullptr;  // the backend that made it
};

// The KV cache memory of a backend, for a scheduler to plan with. The 16-bit CUDA backend keeps
// every sequence's keys and values in one pool of fixed-size pages (page_tokens tokens of every
// layer's K and V each): a sequence takes pages as it grows and gives them back when freed, so
// memory does not fragment, and a step that needs a page when none is left fails with E_KV_FULL
// (no sequence changed). The pool grows in slabs up to `limit_pages`, set by
// set_kv_cache_tokens (default: as much as device memory allows, keeping 1 GiB free). The CPU and
// the f32 CUDA backends keep one contiguous cache per sequence, allocated at new_sequence for its
// whole capacity (paged = false; the counts are 0).
struct KvCacheInfo {
  bool paged = false;
  int64_t page_tokens = 0;  // tokens per page
  int64_t page_bytes = 0;   // device bytes of one page (every layer's K and V)
  int64_t pages_total = 0;  // pages allocated so far (held by sequences or free)
  int64_t pages_free = 0;   // of those, not held by a sequence
  int64_t limit_pages = 0;  // the most the pool may hold (0: bounded by device memory only)
};

// A KV cache for incremental decoding, made by the backend that uses it.
class Sequence {
 public:
  virtual ~Sequence() = default;
  int64_t length = 0;    // tokens held
  int64_t capacity = 0;  // tokens it can hold
  const void* owner = nullptr;  // the backend that made it (LlamaBackend::new_sequence sets it)
};

// The calls every caller makes are the public, non-virtual ones: they check their arguments and
// the weights they need (the checks every device shares), then call the device's protected do_*
// implementation. Errors are CoreError (E_ARGUMENT, E_SHAPE, E_MISSING_TENSOR, ...).
class LlamaBackend {
 public:
  explicit LlamaBackend(LlamaConfig config) : config_(std::move(config)) { config_.validate(); }
  virtual ~LlamaBackend() = default;
  LlamaBackend(const LlamaBackend&) = delete;
  LlamaBackend& operator=(const LlamaBackend&) = delete;

  const LlamaConfig& config() const { return config_; }
  virtual int device() const = 0;  // -1 for the CPU, else the CUDA device index
  virtual DType activations() const { return DType::F32; }  // F32, or F16/BF16 (see the contract above)

  // --- weights: set, replace (one linear at a time, e.g. after quantizing it) and drop
  void set_globals(const GlobalWeights& w);
  void set_block(int64_t block, const BlockWeights& w);
  void set_linear(int64_t block, Linear which, const LinearWeights& w);  // Q..Down; the block must be set
  void drop_block(int64_t block);
  virtual bool has_block(int64_t block) const = 0;
  virtual bool has_globals() const = 0;
  virtual int64_t weight_bytes() const = 0;  // memory held for weights (host for CPU, device for CUDA)

  // --- one block at a time (calibration)
  // hidden [n, dim] = embedding rows of ids [n]. Needs the globals.
  void embed(const int32_t* ids, int64_t n, float* hidden);
  // hidden [batch*seq, dim] in, block's output out (in place).
  void run_block(int64_t block, float* hidden, int64_t batch, int64_t seq, const BlockRun& run);
  // The same over rows [row0, row0 + batch*seq) of resident hidden states (in place), which cross
  // to the host only through read_states.
  std::unique_ptr<HiddenStates> new_states(const float* hidden, int64_t rows);  // copies hidden [rows, dim]
  void read_states(const HiddenStates& states, int64_t row0, int64_t rows, float* out) const;  // out [rows, dim]
  void run_block_states(int64_t block, HiddenStates& states, int64_t row0, int64_t batch, int64_t seq,
                        const BlockRun& run);
  // Device memory the resident states of `rows` rows take (0 where they live on the host).
  virtual int64_t states_device_bytes(int64_t rows) const {
    (void)rows;
    return 0;
  }
  // logits [rows, vocab] = lm_head(final_norm(hidden [rows, dim])).
  void head(const float* hidden, int64_t rows, float* logits);

  // --- the whole model (every block resident)
  // logits [batch*seq, vocab] of ids [batch, seq].
  void logits(const int32_t* ids, int64_t batch, int64_t seq, float* out);
  // out [batch, seq-1]: -log softmax(logits[b, t])[ids[b, t+1]] for t < seq-1 (perplexity).
  void nll(const int32_t* ids, int64_t batch, int64_t seq, float* out);
  // KV-cached decoding: appends ids [n] to the sequence and writes the logits [vocab] of its last token.
  std::unique_ptr<Sequence> new_sequence(int64_t capacity);
  void decode(Sequence& seq, const int32_t* ids, int64_t n, float* last_logits);
  // One decode step for `count` distinct sequences at once: sequence i appends ids[i] (any lengths),
  // logits [count, vocab] row i for sequence i; the same results as decode() of each alone (to
  // rounding: the linears run at M = count). All or none advance (E_KV_FULL leaves every one as it was).
  void decode_batch(Sequence* const* seqs, int64_t count, const int32_t* ids, float* logits);
  // Greedy decoding of `steps` tokens for `count` distinct sequences without handing back logits:
  // step 0 appends ids[i] to sequence i, each later step appends the token the step before chose for
  // it. tokens [steps, count]: row s holds, for each sequence, argmax_first of the logits after step
  // s (the token step s + 1 appends; the last row's is appended by no step). Each sequence advances by
  // `steps`, so each needs room for that many tokens. The same tokens as decode_batch one step at a
  // time with argmax_first on its logits (a GPU backend chooses and feeds them on the device).
  void decode_greedy(Sequence* const* seqs, int64_t count, const int32_t* ids, int64_t steps, int32_t* tokens);

  // The KV cache memory (KvCacheInfo); set_kv_cache_tokens bounds a paged pool (others ignore it).
  virtual KvCacheInfo kv_cache() const { return {}; }
  virtual void set_kv_cache_tokens(int64_t tokens) { (void)tokens; }

  // Throws E_ARGUMENT unless every id is in [0, vocab). Callers check before any call that takes ids.
  void check_ids(const int32_t* ids, int64_t n) const;

 protected:
  // The device's implementations, called with checked arguments: indices in range, the weights
  // they read present (require_all_blocks), linears of the model's shapes, ids in the vocabulary,
  // sequences made by this backend with room for the new tokens.
  virtual void do_set_globals(const GlobalWeights& w) = 0;
  virtual void do_set_block(int64_t block, const BlockWeights& w) = 0;
  virtual void do_set_linear(int64_t block, Linear which, const LinearWeights& w) = 0;
  virtual void do_drop_block(int64_t block) = 0;
  virtual void do_embed(const int32_t* ids, int64_t n, float* hidden) = 0;
  virtual void do_run_block(int64_t block, float* hidden, int64_t batch, int64_t seq, const BlockRun& run) = 0;
  virtual void do_head(const float* hidden, int64_t rows, float* logits) = 0;
  // Resident hidden states: by default a host copy run through do_run_block. A GPU backend that keeps
  // them in its memory overrides all three (the defaults take only states of their own making).
  // Called with checked rows.
  virtual std::unique_ptr<HiddenStates> do_new_states(const float* hidden, int64_t rows);
  virtual void do_read_states(const HiddenStates& states, int64_t row0, int64_t rows, float* out) const;
  virtual void do_run_block_states(int64_t block, HiddenStates& states, int64_t row0, int64_t batch, int64_t seq,
                                   const BlockRun& run);
  virtual void do_logits(const int32_t* ids, int64_t batch, int64_t seq, float* out) = 0;
  virtual void do_nll(const int32_t* ids, int64_t batch, int64_t seq, float* out) = 0;
  virtual std::unique_ptr<Sequence> do_new_sequence(int64_t capacity) = 0;
  virtual void do_decode(Sequence& seq, const int32_t* ids, int64_t n, float* last_logits) = 0;
  // The default runs do_decode on each sequence in turn (the f32 CUDA backend keeps it: its linears
  // are not the fast path; an error part way leaves the earlier sequences advanced); it advances
  // each sequence's length itself. Overrides leave the lengths
  // to the caller (decode_batch adds one to each after the call).
  virtual void do_decode_batch(Sequence* const* seqs, int64_t count, const int32_t* ids, float* logits);
  // decode_batch's and decode_greedy's checks of their arguments (E_SHAPE, E_ARGUMENT, E_TOKEN).
  void check_batch(Sequence* const* seqs, int64_t count, const int32_t* ids, int64_t steps, const char* what);
  // The default runs decode_batch step by step, choosing each token on the host; lengths are the
  // caller's (decode_greedy sets each to its length before plus steps after the call).
  virtual void do_decode_greedy(Sequence* const* seqs, int64_t count, const int32_t* ids, int64_t steps,
                                int32_t* tokens);

  void check_block_index(int64_t block) const;
  void check_batch(int64_t batch, int64_t seq) const;
  void check_linear(Linear which, const LinearWeights& w) const;
  void require_block(int64_t block) const;  // E_MISSING_TENSOR unless set
  void require_globals() const;
  void require_all_blocks() const;
  LlamaConfig config_;
};

// The index of the largest of x [n] (n >= 1), the first on ties; NaN is never larger than anything
// (and x[0] NaN gives 0): the sequential scan `x[i] > x[best]`, as src/model/sampling.ts's argmax.
int32_t argmax_first(const float* x, int64_t n);

// Creates the backend for a device: -1 the CPU, else a CUDA device through the registered factory.
// `cpu_linears`: how the CPU backend makes its linears' operators (make_cpu_linear's options, e.g.
// int8 or f32 activations in packed products); the CUDA backend ignores it. `activations`: F32
// everywhere; F16 or BF16 on CUDA only (E_UNSUPPORTED on the CPU).
std::unique_ptr<LlamaBackend> make_backend(int device, const LlamaConfig& config, const LinearOptions& cpu_linears = {},
                                           DType activations = DType::F32);
std::unique_ptr<LlamaBackend> make_cpu_backend(const LlamaConfig& config, const LinearOptions& linears = {});

// The CUDA backend registers its factory at load time (a static initializer in cuda/), so that
// CPU-only builds and the core need no CUDA symbol. Without one, make_backend(d >= 0) throws
// E_CUDA_UNAVAILABLE.
using BackendFactory = std::unique_ptr<LlamaBackend> (*)(int device, const LlamaConfig& config, DType activations);
void register_cuda_backend(BackendFactory factory);

}  // namespace model
}  // namespace lowbit

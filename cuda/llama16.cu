// The Llama forward pass on one GPU with fp16 or bf16 activations (make_backend's `activations`):
// the linears' inputs and outputs, q/k/v, attention's output and the KV cache in 16 bits; the
// residual stream, the RMSNorm and softmax statistics, every accumulation and the logits in f32.
// Dense linears (and the head) run on the tensor cores through cuBLAS (gemm16, weights converted
// once at load time), packed linears through the CUDA table's 16-bit kernels (gptq-tc), any other
// format through its f32 operator with the activations widened and narrowed around it. The block
// is block_recipe's, as in the f32 pass (llama.cu); the ops are llama16_ops.cu's, with the residual
// add fused into the next RMSNorm.
#include <cuda_runtime.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <initializer_list>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "../native/core/model/backend.hpp"
#include "../native/core/model/block_recipe.hpp"
#include "../native/core/packed_matrix.hpp"
#include "cuda_api.hpp"
#include "cuda_check.cuh"
#include "linalg.cuh"
#include "linear_ops.cuh"
#include "llama16_ops.cuh"
#include "llama_ops.cuh"

namespace lowbit {
namespace cuda {

namespace {

using model::BlockRun;
using model::BlockWeights;
using model::CapturePoint;
using model::GlobalWeights;
using model::kBlockLinears;
using model::Linear;
using model::LlamaBackend;
using model::LlamaConfig;

// n f32, f16 or bf16 host values converted to `t` into dst (device) there.
void upload_into(uint16_t* dst, const void* src, DType from, DType t, int64_t n) {
  const size_t bytes = (size_t)n * dtype_size(from);
  DeviceBuffer<uint8_t> staging(bytes);
  staging.upload(static_cast<const uint8_t*>(src), bytes);
  ops16::convert(from, staging.get(), t, n, dst, nullptr);
  check(cudaStreamSynchronize(nullptr), "weight conversion");
}

// A 16-bit copy on the device of f32, f16 or bf16 host values, converted to `t` there.
std::unique_ptr<DeviceBuffer<uint16_t>> upload_as(const void* src, DType from, DType t, int64_t n) {
  auto out = std::make_unique<DeviceBuffer<uint16_t>>((size_t)n);
  upload_into(out->get(), src, from, t, n);
  return out;
}

std::unique_ptr<DeviceBuffer<float>> upload_floats(const float* src, int64_t n) {
  auto b = std::make_unique<DeviceBuffer<float>>((size_t)n);
  b->upload(src, (size_t)n);
  return b;
}

// A dense weight in the activations' 16-bit type, multiplied through gemm16 (cuBLAS tensor cores).
// Either owns its weight, or views rows of a DenseGroup's (which outlives it: the block holds both).
class DenseHalfOp : public DeviceLinearOp {
 public:
  DenseHalfOp(int device, const LinearWeights& w, DType t)
      : DeviceLinearOp(device, w.N(), w.K()),
        t_(t),
        owned_(upload_as(w.dense()->data, w.dense()->dtype, t, w.N() * w.K())),
        owned_bias_(w.bias ? upload_floats(w.bias, w.N()) : nullptr),
        weight_(owned_->get()),
        bias_(owned_bias_ ? owned_bias_->get() : nullptr) {}
  DenseHalfOp(int device, int64_t N, int64_t K, DType t, const uint16_t* weight, const float* bias)
      : DeviceLinearOp(device, N, K), t_(t), weight_(weight), bias_(bias) {}
  void apply(const float*, int64_t, float*, DeviceScratch&, void*) const override {
    fail("E_UNSUPPORTED", "this operator takes 16-bit activations");
  }
  bool has_half(DType dtype) const override { return dtype == t_; }
  void apply_half(const uint16_t* X, DType dtype, int64_t M, uint16_t* Y, DeviceScratch&, void* stream) const override {
    require(dtype == t_, "E_DTYPE", "activations of another type than the weight's");
    product(X, M, Y, false, static_cast<cudaStream_t>(stream));
  }
  // Y [M, N] in f32 (the head: logits keep f32).
  void apply_f32_out(const uint16_t* X, int64_t M, float* Y, cudaStream_t s) const { product(X, M, Y, true, s); }
  int64_t bytes() const override { return owned_ ? N() * K() * 2 + (bias_ ? N() * 4 : 0) : 0; }  // views: the group's
  const char* kernel() const override { return "dense-gemm16"; }

 private:
  void product(const uint16_t* X, int64_t M, void* Y, bool y_f32, cudaStream_t s) const {
    gemm16(s, t_ == DType::BF16, M, N(), K(), X, weight_, Y, y_f32);
    if (bias_) ops16::add_bias(t_, Y, y_f32, M, N(), bias_, s);
  }
  DType t_;
  std::unique_ptr<DeviceBuffer<uint16_t>> owned_;
  std::unique_ptr<DeviceBuffer<float>> owned_bias_;
  const uint16_t* weight_;
  const float* bias_;
};

// Linears that share their input (q/k/v, gate/up) as one product of N = ΣN, whose output row is
// theirs laid end to end: a decode step runs one product instead of one each. Dense members are
// stored as one [ΣN, K] matrix whose rows each member's operator views (a prefill runs them one by
// one); packed members (GPTQ with equal bits, groups and act-order permutation) as one packed
// matrix, which every product runs whole (members' operators are column views of it). A member
// replaced by another format leaves the group (valid = false); the others keep their views.
struct LinearGroup {
  std::unique_ptr<DeviceBuffer<uint16_t>> weight;  // dense: the [ΣN, K] matrix; null when packed
  std::unique_ptr<DeviceBuffer<float>> bias;       // dense: zeros where a member has none; null when none has
  std::unique_ptr<DeviceLinearOp> all;             // the whole [ΣN, K] product
  std::vector<int64_t> row0;                       // first row (output column) of each member
  bool valid = false;
  bool dense() const { return weight != nullptr; }
  int64_t bytes() const {
    if (!all) return 0;
    return dense() ? all->N() * all->K() * 2 + (bias ? all->N() * 4 : 0) : all->bytes();
  }
};

// Builds `group` over the linears `which` of w (all dense, one K) and their view operators.
void make_group(int device, DType t, const BlockWeights& w, std::initializer_list<Linear> which, LinearGroup& group,
                std::unique_ptr<DeviceLinearOp>* ops) {
  int64_t N = 0, K = 0;
  bool any_bias = false;
  for (Linear l : which) {
    const LinearWeights& lw = w.linears[(int)l];
    if (!lw.dense() || (K && lw.K() != K)) return;
    K = lw.K();
    N += lw.N();
    any_bias = any_bias || lw.bias;
  }
  group.weight = std::make_unique<DeviceBuffer<uint16_t>>((size_t)(N * K));
  std::vector<float> bias(any_bias ? (size_t)N : 0, 0.f);
  int64_t r = 0;
  for (Linear l : which) {
    const LinearWeights& lw = w.linears[(int)l];
    upload_into(group.weight->get() + r * K, lw.dense()->data, lw.dense()->dtype, t, lw.N() * K);
    if (lw.bias) std::copy(lw.bias, lw.bias + lw.N(), bias.begin() + r);
    group.row0.push_back(r);
    r += lw.N();
  }
  if (any_bias) group.bias = upload_floats(bias.data(), N);
  const float* b = group.bias ? group.bias->get() : nullptr;
  group.all = std::make_unique<DenseHalfOp>(device, N, K, t, group.weight->get(), b);
  size_t i = 0;
  for (Linear l : which) {
    const int64_t r0 = group.row0[i++];
    ops[(int)l] = std::make_unique<DenseHalfOp>(device, w.linears[(int)l].N(), K, t, group.weight->get() + r0 * K,
                                                b ? b + r0 : nullptr);
  }
  group.valid = true;
}

// Columns col0 .. col0+N-1 of a packed group's product: the whole product into scratch, then the
// member's columns copied out (used only where the group does not run whole: a replaced member's
// siblings). Shares the group's weights and their scratch: run on the main stream only.
class ColumnViewOp : public DeviceLinearOp {
 public:
  ColumnViewOp(const DeviceLinearOp& all, int64_t col0, int64_t N)
      : DeviceLinearOp(all.device(), N, all.K()), all_(all), col0_(col0) {}
  void apply(const float*, int64_t, float*, DeviceScratch&, void*) const override {
    fail("E_UNSUPPORTED", "this operator takes 16-bit activations");
  }
  bool has_half(DType dtype) const override { return all_.has_half(dtype); }
  void apply_half(const uint16_t* X, DType dtype, int64_t M, uint16_t* Y, DeviceScratch& scratch,
                  void* stream) const override {
    uint16_t* whole = static_cast<uint16_t*>(whole_.get(M * all_.N() * 2));
    all_.apply_half(X, dtype, M, whole, scratch, stream);
    ops16::copy_columns(whole, M, all_.N(), col0_, N(), Y, static_cast<cudaStream_t>(stream));
  }
  int64_t bytes() const override { return 0; }  // the group's
  const char* kernel() const override { return all_.kernel(); }

 private:
  const DeviceLinearOp& all_;
  int64_t col0_;
  mutable DeviceScratch whole_;
};

// Builds `group` over the linears `which` of w when all are GPTQ matrices that can run as one
// (concat_packed_columns: same bits, K, groups and act-order permutation) with a 16-bit kernel,
// and their column-view operators; leaves group empty otherwise.
void make_packed_group(int device, DType t, const BlockWeights& w, std::initializer_list<Linear> which,
                       LinearGroup& group, std::unique_ptr<DeviceLinearOp>* ops) {
  std::vector<const PackedMatrix*> parts;
  bool any_bias = false;
  for (Linear l : which) {
    const LinearWeights& lw = w.linears[(int)l];
    if (!lw.gptq()) return;
    parts.push_back(lw.gptq());
    any_bias = any_bias || lw.bias;
  }
  PackedColumns joined;
  if (!concat_packed_columns(parts, joined)) return;
  std::vector<float> bias(any_bias ? (size_t)joined.matrix.N : 0, 0.f);
  std::vector<int64_t> row0;
  int64_t r = 0;
  for (Linear l : which) {
    const LinearWeights& lw = w.linears[(int)l];
    if (lw.bias) std::copy(lw.bias, lw.bias + lw.N(), bias.begin() + r);
    row0.push_back(r);
    r += lw.N();
  }
  LinearWeights whole;
  whole.matrix = joined.matrix;
  whole.bias = any_bias ? bias.data() : nullptr;
  auto all = make_device_linear_half(device, whole, t);
  if (!all) return;
  group.all = std::move(all);
  group.row0 = row0;
  size_t i = 0;
  for (Linear l : which) ops[(int)l] = std::make_unique<ColumnViewOp>(*group.all, group.row0[i++], w.linears[(int)l].N());
  group.valid = true;
}

// Any format without a 16-bit kernel: its f32 operator, with X widened and Y narrowed around it.
class WidenedOp : public DeviceLinearOp {
 public:
  explicit WidenedOp(std::unique_ptr<DeviceLinearOp> op)
      : DeviceLinearOp(op->device(), op->N(), op->K()), op_(std::move(op)) {}
  void apply(const float* X, int64_t M, float* Y, DeviceScratch& scratch, void* stream) const override {
    op_->apply(X, M, Y, scratch, stream);
  }
  bool has_half(DType dtype) const override { return dtype == DType::F16 || dtype == DType::BF16; }
  void apply_half(const uint16_t* X, DType dtype, int64_t M, uint16_t* Y, DeviceScratch& scratch,
                  void* stream) const override {
    const cudaStream_t s = static_cast<cudaStream_t>(stream);
    float* x = static_cast<float*>(x_.get(M * K() * 4));
    float* y = static_cast<float*>(y_.get(M * N() * 4));
    ops16::widen(dtype, X, M * K(), x, s);
    op_->apply(x, M, y, scratch, stream);
    ops16::narrow(dtype, y, M * N(), Y, s);
  }
  int64_t bytes() const override { return op_->bytes(); }
  const char* kernel() const override { return op_->kernel(); }

 private:
  std::unique_ptr<DeviceLinearOp> op_;
  mutable DeviceScratch x_, y_;  // one product at a time: the backend runs one stream
};

std::unique_ptr<DeviceLinearOp> make_linear16(int device, const LinearWeights& w, DType t) {
  if (w.dense()) return std::make_unique<DenseHalfOp>(device, w, t);
  if (auto op = make_device_linear_half(device, w, t)) return op;
  return std::make_unique<WidenedOp>(make_device_linear(device, w));
}

struct Block16 {
  std::unique_ptr<DeviceBuffer<float>> attn_norm, mlp_norm;
  std::unique_ptr<DeviceLinearOp> linears[kBlockLinears];
  LinearGroup qkv, gate_up;  // what the grouped members of `linears` view (used only while the block lives)
  int64_t bytes(int64_t dim) const {
    int64_t b = 2 * dim * 4 + qkv.bytes() + gate_up.bytes();
    for (const auto& l : linears) b += l->bytes();
    return b;
  }
};

// The paged KV cache of one model (model::KvCacheInfo): pages of ops16::kPageTokens tokens of every
// layer's keys and values, carved from slabs allocated as needed (never moved, so page pointers stay
// valid for captured graphs) up to limit_pages, or while device memory keeps kReserve free. Thread-
// safe: a sequence freed on the main thread gives its pages back while a worker takes others.
class PagePool {
 public:
  PagePool(int64_t page_elems, int64_t slab_pages) : page_elems_(page_elems), slab_pages_(slab_pages) {}
  ~PagePool() {
    for (void* slab : slabs_) cudaFree(slab);
  }
  int64_t page_bytes() const { return page_elems_ * 2; }

  // A free page (growing the pool by a slab when none is); E_KV_FULL when the limit or device memory is reached.
  uint16_t* take() {
    std::lock_guard<std::mutex> lock(mu_);
    if (free_.empty()) grow();
    uint16_t* page = free_.back();
    free_.pop_back();
    return page;
  }
  void give(uint16_t* page) {
    std::lock_guard<std::mutex> lock(mu_);
    free_.push_back(page);
  }
  void set_limit(int64_t pages) {
    std::lock_guard<std::mutex> lock(mu_);
    limit_ = pages;
  }
  model::KvCacheInfo info() const {
    std::lock_guard<std::mutex> lock(mu_);
    model::KvCacheInfo k;
    k.paged = true;
    k.page_tokens = ops16::kPageTokens;
    k.page_bytes = page_bytes();
    k.pages_total = total_;
    k.pages_free = (int64_t)free_.size();
    k.limit_pages = limit_;
    return k;
  }

 private:
  static constexpr int64_t kReserve = int64_t(1) << 30;  // device memory left free when the pool has no limit

  void grow() {
    int64_t n = slab_pages_;
    if (limit_ > 0) n = std::min(n, limit_ - total_);
    if (n > 0 && limit_ == 0) {
      size_t free_bytes = 0, total_bytes = 0;
      check(cudaMemGetInfo(&free_bytes, &total_bytes), "cudaMemGetInfo");
      n = std::min<int64_t>(n, ((int64_t)free_bytes - kReserve) / page_bytes());
    }
    void* slab = nullptr;
    if (n <= 0 || cudaMalloc(&slab, (size_t)(n * page_bytes())) != cudaSuccess) {
      cudaGetLastError();  // (clear a failed allocation's error)
      fail("E_KV_FULL", "the KV cache pool is full: its " + std::to_string(total_) + " pages of " +
                            std::to_string(ops16::kPageTokens) + " tokens are held by sequences" +
                            (limit_ > 0 ? " (the kvCacheTokens limit)" : " and device memory is exhausted") +
                            "; close sessions or open the model with a larger kvCacheTokens");
    }
    slabs_.push_back(slab);
    for (int64_t i = n - 1; i >= 0; --i) free_.push_back(static_cast<uint16_t*>(slab) + i * page_elems_);
    total_ += n;
  }

  const int64_t page_elems_, slab_pages_;
  mutable std::mutex mu_;
  std::vector<void*> slabs_;
  std::vector<uint16_t*> free_;
  int64_t total_ = 0, limit_ = 0;
};

// Calibration hidden states kept in this GPU's memory (f32 residual stream, [rows, dim]).
class DeviceStates : public model::HiddenStates {
 public:
  explicit DeviceStates(int64_t n) : data((size_t)n) {}
  DeviceBuffer<float> data;
};

// A sequence's KV cache: the pages it holds, in token order (token p in pages[p / kPageTokens]).
class Sequence16 : public model::Sequence {
 public:
  explicit Sequence16(std::shared_ptr<PagePool> pool) : pool_(std::move(pool)) {}
  ~Sequence16() override {
    for (uint16_t* page : pages) pool_->give(page);
  }
  // Takes pages until `tokens` fit; returns how many it took (for give_back on a failed step).
  int64_t reserve(int64_t tokens) {
    const int64_t before = (int64_t)pages.size();
    while ((int64_t)pages.size() * ops16::kPageTokens < tokens) pages.push_back(pool_->take());
    return (int64_t)pages.size() - before;
  }
  void give_back(int64_t n) {
    for (; n > 0; --n) {
      pool_->give(pages.back());
      pages.pop_back();
    }
  }
  std::vector<uint16_t*> pages;

 private:
  std::shared_ptr<PagePool> pool_;
};

// A captured decode step over a batch bucket: valid while the backend's epoch is `epoch`.
struct StepGraph {
  cudaGraphExec_t exec = nullptr;
  uint64_t epoch = 0;
};

class CudaLlama16 : public LlamaBackend {
 public:
  CudaLlama16(int device, const LlamaConfig& config, DType t)
      : LlamaBackend(config), device_(device), t_(t), blocks_((size_t)config.layers) {
    use_device(device);
    check(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking), "cudaStreamCreate");
    for (auto& s : side_) check(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking), "cudaStreamCreate");
    check(cudaEventCreateWithFlags(&fork_, cudaEventDisableTiming), "cudaEventCreate");
    for (auto& e : join_) check(cudaEventCreateWithFlags(&e, cudaEventDisableTiming), "cudaEventCreate");
    check(cudaDeviceGetAttribute(&multiprocessors_, cudaDevAttrMultiProcessorCount, device), "device attribute");
    inv_freq_ = upload_floats(config_.inv_freq.data(), (int64_t)config_.inv_freq.size());
    pos_ = std::make_unique<DeviceBuffer<int32_t>>((size_t)kMaxRows);
    // the KV pages: slabs of about 256 MiB, at least a whole longest sequence's pages (or 64)
    const int64_t kw = config_.kv_heads * config_.head_dim;
    const int64_t page_elems = checked_product({config_.layers, 2, ops16::kPageTokens, kw}, "KV page size");
    table_stride_ = (config_.max_seq + ops16::kPageTokens - 1) / ops16::kPageTokens;
    const int64_t slab_pages = std::max<int64_t>(
        1, std::min<int64_t>((int64_t(256) << 20) / (page_elems * 2), std::max<int64_t>(64, table_stride_)));
    pool_ = std::make_shared<PagePool>(page_elems, slab_pages);
    tables_ = std::make_unique<DeviceBuffer<uint16_t*>>((size_t)(kMaxRows * table_stride_));
    host_tables_.assign((size_t)(kMaxRows * table_stride_), nullptr);
    host_positions_.assign((size_t)kMaxRows, 0);
    pad_page_ = std::make_unique<DeviceBuffer<uint16_t>>((size_t)page_elems);
    const char* graphs = std::getenv("LOWBIT_CUDA_GRAPHS");
    graphs_ = !(graphs && std::string(graphs) == "0");
    const char* timing = std::getenv("LOWBIT_CUDA_STEP_TIMING");
    if (timing && std::string(timing) == "1") {
      timing_.on = true;
      check(cudaEventCreate(&timing_.start), "cudaEventCreate");
      check(cudaEventCreate(&timing_.stop), "cudaEventCreate");
    }
    const char* groups = std::getenv("LOWBIT_CUDA_GROUPS");
    groups_ = !(groups && std::string(groups) == "0");
    const char* fused = std::getenv("LOWBIT_CUDA_FUSED_DECODE");
    fused_decode_ = !(fused && std::string(fused) == "0");
    // the fused decode attention's merge counters: one per (row, head), zero between launches
    merge_counters_ = std::make_unique<DeviceBuffer<uint32_t>>((size_t)(kMaxRows * config_.heads));
    check(cudaMemsetAsync(merge_counters_->get(), 0, (size_t)(kMaxRows * config_.heads) * 4, stream_), "cudaMemset");
    sync();
  }
  ~CudaLlama16() override {
    for (auto& g : steps_)
      if (g.second.exec) cudaGraphExecDestroy(g.second.exec);
    cudaStreamDestroy(stream_);
    for (auto s : side_) cudaStreamDestroy(s);
    cudaEventDestroy(fork_);
    for (auto e : join_) cudaEventDestroy(e);
    if (timing_.start) cudaEventDestroy(timing_.start);
    if (timing_.stop) cudaEventDestroy(timing_.stop);
    if (staged_) cudaFreeHost(staged_);
  }

  int device() const override { return device_; }
  DType activations() const override { return t_; }
  model::KvCacheInfo kv_cache() const override { return pool_->info(); }
  void set_kv_cache_tokens(int64_t tokens) override {
    pool_->set_limit((tokens + ops16::kPageTokens - 1) / ops16::kPageTokens);
  }
  bool has_block(int64_t i) const override { return i >= 0 && i < config_.layers && blocks_[(size_t)i] != nullptr; }
  bool has_globals() const override { return embed_ != nullptr; }

  int64_t weight_bytes() const override {
    int64_t b = embed_ ? config_.vocab * config_.dim * 2 + config_.dim * 4 : 0;
    if (head_) b += head_->bytes();
    for (const auto& blk : blocks_)
      if (blk) b += blk->bytes(config_.dim);
    return b;
  }

 protected:
  void do_set_globals(const GlobalWeights& w) override {
    begin_eager();
    embed_ = upload_as(w.embed, w.embed_dtype, t_, config_.vocab * config_.dim);
    final_norm_ = upload_floats(w.final_norm, config_.dim);
    head_.reset();
    if (!config_.tie_embeddings) head_ = make_linear16(device_, w.head, t_);
  }

  void do_set_block(int64_t i, const BlockWeights& w) override {
    begin_eager();
    auto b = std::make_unique<Block16>();
    b->attn_norm = upload_floats(w.attn_norm, config_.dim);
    b->mlp_norm = upload_floats(w.mlp_norm, config_.dim);
    make_group(device_, t_, w, {Linear::Q, Linear::K, Linear::V}, b->qkv, b->linears);
    make_group(device_, t_, w, {Linear::Gate, Linear::Up}, b->gate_up, b->linears);
    if (!b->qkv.valid && groups_) make_packed_group(device_, t_, w, {Linear::Q, Linear::K, Linear::V}, b->qkv, b->linears);
    if (!b->gate_up.valid && groups_) make_packed_group(device_, t_, w, {Linear::Gate, Linear::Up}, b->gate_up, b->linears);
    for (int l = 0; l < kBlockLinears; ++l)
      if (!b->linears[l]) b->linears[l] = make_linear16(device_, w.linears[l], t_);
    blocks_[(size_t)i] = std::move(b);
  }

  void do_set_linear(int64_t i, Linear which, const LinearWeights& w) override {
    begin_eager();
    Block16& b = *blocks_[(size_t)i];
    LinearGroup& group = (which == Linear::Gate || which == Linear::Up) ? b.gate_up : b.qkv;
    const bool grouped = group.all && which != Linear::O && which != Linear::Down;
    if (grouped && group.valid && group.dense() && w.dense() && !w.bias == !group.bias) {
      // a dense replacement (no bias where the group has none): rewritten in place, the group stays
      const int index = which == Linear::Up ? 1 : which == Linear::Gate ? 0 : (int)which;
      const int64_t r0 = group.row0[(size_t)index], K = group.all->K();
      upload_into(group.weight->get() + r0 * K, w.dense()->data, w.dense()->dtype, t_, w.N() * K);
      if (w.bias) check(memcpy_to_device(group.bias->get() + r0, w.bias, (size_t)w.N() * 4), "bias");
      return;
    }
    if (grouped) group.valid = false;  // the other members keep viewing the group's rows
    b.linears[(int)which] = make_linear16(device_, w, t_);
  }

  void do_drop_block(int64_t i) override {
    begin_eager();
    blocks_[(size_t)i].reset();
  }

  void do_embed(const int32_t* ids, int64_t n, float* hidden) override {
    begin_eager();
    float* x = embed_device(ids, n);
    download(hidden, x, n * config_.dim);
  }

  void do_run_block(int64_t i, float* hidden, int64_t batch, int64_t seq, const BlockRun& run) override {
    begin_eager();
    const int64_t rows = batch * seq;
    float* x = floats(x_, rows * config_.dim);
    upload(x, hidden, rows * config_.dim);
    pending_add_ = nullptr;
    set_position(0);
    if (block_forward(block(i), x, rows, seq, seq, nullptr, 0, &run)) {
      flush_add(rows);
      download(hidden, x, rows * config_.dim);
    } else {
      pending_add_ = nullptr;  // stopped early: hidden is left as it was
      sync();
    }
  }

  int64_t states_device_bytes(int64_t rows) const override { return rows * config_.dim * 4; }

  std::unique_ptr<model::HiddenStates> do_new_states(const float* hidden, int64_t rows) override {
    select();
    auto s = std::make_unique<DeviceStates>(rows * config_.dim);
    s->data.upload(hidden, (size_t)(rows * config_.dim));
    return s;
  }

  void do_read_states(const model::HiddenStates& states, int64_t row0, int64_t rows, float* out) const override {
    select();
    const auto& s = static_cast<const DeviceStates&>(states);
    check(cudaMemcpy(out, s.data.get() + row0 * config_.dim, (size_t)(rows * config_.dim) * 4, cudaMemcpyDeviceToHost),
          "cudaMemcpy D2H");
  }

  // As do_run_block, over rows of the resident states: copied into the block's residual buffer and
  // back (device to device), so the block runs exactly as it does on host rows.
  void do_run_block_states(int64_t i, model::HiddenStates& states, int64_t row0, int64_t batch, int64_t seq,
                           const BlockRun& run) override {
    begin_eager();
    const int64_t rows = batch * seq;
    float* h = static_cast<DeviceStates&>(states).data.get() + row0 * config_.dim;
    float* x = floats(x_, rows * config_.dim);
    const size_t bytes = (size_t)(rows * config_.dim) * 4;
    check(cudaMemcpyAsync(x, h, bytes, cudaMemcpyDeviceToDevice, stream_), "cudaMemcpy D2D");
    pending_add_ = nullptr;
    set_position(0);
    if (block_forward(block(i), x, rows, seq, seq, nullptr, 0, &run)) {
      flush_add(rows);
      check(cudaMemcpyAsync(h, x, bytes, cudaMemcpyDeviceToDevice, stream_), "cudaMemcpy D2D");
    } else {
      pending_add_ = nullptr;  // stopped early: the states are left as they were
    }
    sync();
  }

  void do_head(const float* hidden, int64_t rows, float* logits) override {
    begin_eager();
    float* x = floats(x_, rows * config_.dim);
    upload(x, hidden, rows * config_.dim);
    pending_add_ = nullptr;
    float* out = floats(logits_, rows * config_.vocab);
    head_rows(x, rows, out);
    download(logits, out, rows * config_.vocab);
  }

  void do_logits(const int32_t* ids, int64_t batch, int64_t seq, float* out) override {
    begin_eager();
    const int64_t rows = batch * seq;
    float* x = forward(ids, batch, seq);
    constexpr int64_t kChunk = 1024;
    for (int64_t r0 = 0; r0 < rows; r0 += kChunk) {
      const int64_t n = std::min(kChunk, rows - r0);
      float* lg = floats(logits_, n * config_.vocab);
      head_rows(x + r0 * config_.dim, n, lg);
      download(out + r0 * config_.vocab, lg, n * config_.vocab);
    }
  }

  void do_nll(const int32_t* ids, int64_t batch, int64_t seq, float* out) override {
    begin_eager();
    float* x = forward(ids, batch, seq);
    // Positions 0 .. seq-2 of each sequence predict ids[t + 1].
    const int32_t* ids_dev = static_cast<const int32_t*>(ids_.get(batch * seq * 4));
    float* nll_dev = floats(nll_, batch * (seq - 1));
    for (int64_t b = 0; b < batch; ++b) {
      float* lg = floats(logits_, (seq - 1) * config_.vocab);
      head_rows(x + b * seq * config_.dim, seq - 1, lg);
      ops::row_nll(lg, seq - 1, config_.vocab, ids_dev + b * seq + 1, nll_dev + b * (seq - 1), stream_);
    }
    download(out, nll_dev, batch * (seq - 1));
  }

  // A sequence takes its pages as it grows (reserve, at each call).
  std::unique_ptr<model::Sequence> do_new_sequence(int64_t capacity) override {
    (void)capacity;
    return std::make_unique<Sequence16>(pool_);
  }

  // One token goes through the batched step (a batch of one: a replayed CUDA graph); several run
  // eagerly, attention reading the sequence's keys gathered from its pages.
  void do_decode(model::Sequence& sequence, const int32_t* ids, int64_t n, float* last_logits) override {
    auto* s = static_cast<Sequence16*>(&sequence);  // the base checked that this backend made it
    if (n == 1) {
      model::Sequence* one = s;
      do_decode_batch(&one, 1, ids, last_logits);
      return;
    }
    begin_eager();
    const int64_t taken = s->reserve(s->length + n);
    try {
      float* x = embed_device(ids, n);
      set_position(s->length);
      std::copy(s->pages.begin(), s->pages.end(), host_tables_.begin());
      upload(tables_->get(), host_tables_.data(), table_stride_);
      KvTarget kv{KvTarget::Prefill, s->length + n};
      for (int64_t i = 0; i < config_.layers; ++i) block_forward(block(i), x, n, n, s->length + n, &kv, i, nullptr);
      flush_add(n);
      float* lg = floats(logits_, config_.vocab);
      head_rows(x + (n - 1) * config_.dim, 1, lg);
      download(last_logits, lg, config_.vocab);
    } catch (...) {
      s->give_back(taken);
      throw;
    }
  }

  // One token for each sequence, kMaxRows at a time: the rows padded to a bucket (1, 2, 4, ... kMaxRows)
  // whose step is one CUDA graph, captured after an eager step and replayed while nothing could have
  // moved a buffer it uses (epoch_). Padding rows write to and read from pad_page_ only.
  void do_decode_batch(model::Sequence* const* seqs, int64_t count, const int32_t* ids, float* logits) override {
    for (int64_t r0 = 0; r0 < count; r0 += kMaxRows)
      decode_rows(seqs + r0, std::min(kMaxRows, count - r0), ids + r0, logits + r0 * config_.vocab);
  }

 private:
  static constexpr int64_t kMaxRows = 256;  // the largest batch bucket

  // What block_forward does with the keys and values: use them in place (no cache), append them to
  // one sequence's pages and attend over all its keys (Prefill: `length` tokens after the call), or
  // append each row to its own sequence (Rows: one token each, positions pos_[r]).
  struct KvTarget {
    enum Kind { Prefill, Rows } kind;
    int64_t length;
  };

  void decode_rows(model::Sequence* const* seqs, int64_t count, const int32_t* ids, float* logits) {
    const auto host_start = std::chrono::steady_clock::now();
    const Staged st = stage_rows(seqs, count, ids, 1);
    float* lg = floats(logits_, st.bucket * config_.vocab);  // (grown by stage_rows)
    const bool replayed = run_step(st, lg, timing_.on);
    download_staged(logits, lg, count * config_.vocab);
    if (replayed && timing_.on) timing_.add(st.bucket, host_start, 1);
  }

  // Greedy steps chained on the device: each step's graph (or eager body) reads ids_ and pos_, then
  // argmax_feed writes the chosen tokens into ids_ (and tokens_), advances pos_, and the next step
  // is enqueued behind it without the host; the tokens come back once, after the last step. Every
  // page the steps need is reserved (and its table uploaded) before the first.
  void do_decode_greedy(model::Sequence* const* seqs, int64_t count, const int32_t* ids, int64_t steps,
                        int32_t* tokens) override {
    if (count > kMaxRows) {  // more rows than one bucket: step by step through the host
      LlamaBackend::do_decode_greedy(seqs, count, ids, steps, tokens);
      return;
    }
    const auto host_start = std::chrono::steady_clock::now();
    const Staged st = stage_rows(seqs, count, ids, steps);
    try {
      float* lg = floats(logits_, st.bucket * config_.vocab);
      auto* chosen = static_cast<int32_t*>(tokens_.get(checked_product({steps, count, 4}, "greedy tokens")));
      bool replayed = true;
      for (int64_t s = 0; s < steps; ++s) {
        replayed = run_step(st, lg, timing_.on && s == 0) && replayed;
        ops16::argmax_feed(lg, count, config_.vocab, st.ids_dev, pos_->get(), chosen + s * count, stream_);
      }
      if (timing_.on) check(cudaEventRecord(timing_.stop, stream_), "event");
      download(tokens, chosen, steps * count);
      if (replayed && timing_.on) timing_.add(st.bucket, host_start, steps);
    } catch (...) {
      for (int64_t r = 0; r < count; ++r) static_cast<Sequence16*>(seqs[r])->give_back(st.taken[(size_t)r]);
      throw;
    }
  }

  // A batch step's inputs on the device: the bucket (count padded to a power of two), ids_dev (the
  // step's ids, in ids_), the pages each sequence took.
  struct Staged {
    int64_t bucket;
    int32_t* ids_dev;
    std::vector<int64_t> taken;
  };

  // Reserves each sequence's pages for `ahead` new tokens (all or none: a full pool leaves each as it
  // was) and uploads the ids, positions and page tables of a step over `count` rows.
  Staged stage_rows(model::Sequence* const* seqs, int64_t count, const int32_t* ids, int64_t ahead) {
    select();
    Staged st{1, nullptr, std::vector<int64_t>((size_t)count, 0)};
    while (st.bucket < count) st.bucket *= 2;
    try {
      for (int64_t r = 0; r < count; ++r) {
        auto* s = static_cast<Sequence16*>(seqs[r]);
        st.taken[(size_t)r] = s->reserve(s->length + ahead);
      }
    } catch (...) {
      for (int64_t r = 0; r < count; ++r) static_cast<Sequence16*>(seqs[r])->give_back(st.taken[(size_t)r]);
      throw;
    }
    for (int64_t r = 0; r < st.bucket; ++r) {
      uint16_t** row = host_tables_.data() + r * table_stride_;
      if (r < count) {
        const auto* s = static_cast<const Sequence16*>(seqs[r]);
        std::copy(s->pages.begin(), s->pages.end(), row);
        host_positions_[(size_t)r] = (int32_t)s->length;
        host_ids_[(size_t)r] = ids[r];
      } else {
        std::fill(row, row + table_stride_, pad_page_->get());
        host_positions_[(size_t)r] = 0;
        host_ids_[(size_t)r] = 0;
      }
    }
    StepGraph& graph = steps_[st.bucket];
    if (!(graphs_ && graph.exec && graph.epoch == epoch_)) begin_eager();  // the first step may grow buffers
    st.ids_dev = static_cast<int32_t*>(ids_.get(st.bucket * 4));
    (void)floats(logits_, st.bucket * config_.vocab);  // grown here, before any capture reads it
    upload(st.ids_dev, host_ids_.data(), st.bucket);
    upload(pos_->get(), host_positions_.data(), st.bucket);
    upload(tables_->get(), host_tables_.data(), st.bucket * table_stride_);
    return st;
  }

  // One step of the staged rows, logits to lg: the bucket's graph replayed when it is current, else
  // the body run eagerly (and captured as the bucket's graph). Returns whether it replayed; `timed`
  // records timing_.start before it (and, for one step, timing_.stop after).
  bool run_step(const Staged& st, float* lg, bool timed) {
    StepGraph& graph = steps_[st.bucket];
    const bool replay = graphs_ && graph.exec && graph.epoch == epoch_;
    if (timed) check(cudaEventRecord(timing_.start, stream_), "event");
    if (replay) {
      check(cudaGraphLaunch(graph.exec, stream_), "cudaGraphLaunch");
    } else {
      float* x = floats(x_, st.bucket * config_.dim);
      rows_body(st.ids_dev, x, st.bucket, lg);
      if (graphs_) capture_rows(st.ids_dev, x, st.bucket, lg, graph);
    }
    if (timed) check(cudaEventRecord(timing_.stop, stream_), "event");
    return replay;
  }

  // LOWBIT_CUDA_STEP_TIMING=1 (diagnostics for benchmarks): the GPU time of each replayed decode
  // step's graph and the host time of the whole call (uploads, replay, logits copied back), their
  // means per step printed to stderr every 32 steps. A greedy call of n chained steps counts n steps
  // (GPU: all of them with their argmax, host: the whole call, both divided by n).
  struct StepTiming {
    bool on = false;
    cudaEvent_t start = nullptr, stop = nullptr;
    int64_t steps = 0;
    double gpu_us = 0, host_us = 0;
    void add(int64_t bucket, std::chrono::steady_clock::time_point host_start, int64_t n) {
      float ms = 0;
      check(cudaEventElapsedTime(&ms, start, stop), "cudaEventElapsedTime");
      gpu_us += 1000.0 * ms;
      host_us += std::chrono::duration<double, std::micro>(std::chrono::steady_clock::now() - host_start).count();
      steps += n;
      if (steps < 32) return;
      std::fprintf(stderr, "lowbit decode step, bucket %lld%s: graph %.1f us on the GPU, call %.1f us on the host\n",
                   (long long)bucket, n > 1 ? " (greedy, chained)" : "", gpu_us / steps, host_us / steps);
      steps = 0;
      gpu_us = host_us = 0;
    }
  } timing_;

  // The blocks and the head over one new token of each of `rows` sequences (ids on the device; their
  // positions, pages in pos_ and tables_), logits [rows, vocab] to lg. Attention splits its keys as
  // for the model's longest sequence, so one graph serves every length.
  void rows_body(const int32_t* ids_dev, float* x, int64_t rows, float* lg) {
    ops16::gather_rows(t_, embed_->get(), ids_dev, rows, config_.dim, x, stream_);
    pending_add_ = nullptr;
    KvTarget kv{KvTarget::Rows, 0};
    for (int64_t i = 0; i < config_.layers; ++i) block_forward(block(i), x, rows, 1, config_.max_seq, &kv, i, nullptr);
    flush_add(rows);
    head_rows(x, rows, lg);
  }

  // Records rows_body as the bucket's graph (the eager step just run grew every buffer it needs).
  void capture_rows(const int32_t* ids_dev, float* x, int64_t rows, float* lg, StepGraph& g) {
    if (g.exec) cudaGraphExecDestroy(g.exec);
    g.exec = nullptr;
    cudaGraph_t graph = nullptr;
    check(cudaStreamBeginCapture(stream_, cudaStreamCaptureModeThreadLocal), "cudaStreamBeginCapture");
    try {
      rows_body(ids_dev, x, rows, lg);
    } catch (...) {
      cudaStreamEndCapture(stream_, &graph);
      if (graph) cudaGraphDestroy(graph);
      graphs_ = false;  // something in the step cannot be captured: stay eager
      return;
    }
    check(cudaStreamEndCapture(stream_, &graph), "cudaStreamEndCapture");
    const cudaError_t made = cudaGraphInstantiate(&g.exec, graph, 0);
    cudaGraphDestroy(graph);
    check(made, "cudaGraphInstantiate");
    g.epoch = epoch_;
  }

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
  // The same through pinned memory kept by the backend (grown when too small): the copy engine
  // writes pinned memory straight, where a copy into pageable memory goes through the driver's own
  // staging in pieces (the decode step's logits: B x vocab floats every step).
  void download_staged(float* dst, const float* src, int64_t n) {
    if (n > staged_count_) {
      if (staged_) cudaFreeHost(staged_);
      staged_ = nullptr;
      staged_count_ = 0;
      check(cudaMallocHost(reinterpret_cast<void**>(&staged_), (size_t)n * sizeof(float)), "cudaMallocHost");
      staged_count_ = n;
    }
    download(staged_, src, n);
    std::memcpy(dst, staged_, (size_t)n * sizeof(float));
  }
  static float* floats(DeviceScratch& s, int64_t n) { return static_cast<float*>(s.get(n * 4)); }
  static uint16_t* halves(DeviceScratch& s, int64_t n) { return static_cast<uint16_t*>(s.get(n * 2)); }

  const Block16& block(int64_t i) const { return *blocks_[(size_t)i]; }  // present: the base checked

  // A call that may grow (move) scratch buffers: captured decode steps must be captured again.
  void begin_eager() {
    select();
    ++epoch_;
  }

  // The position of the first row of this call, read on the device by RoPE, the KV append and attention.
  void set_position(int64_t p) {
    host_pos_ = (int32_t)p;
    upload(pos_->get(), &host_pos_, 1);
  }

  // ids (host) -> the f32 residual rows x_ on the device; ids stay in ids_ for nll.
  float* embed_device(const int32_t* ids, int64_t n) {
    int32_t* ids_dev = static_cast<int32_t*>(ids_.get(n * 4));
    upload(ids_dev, ids, n);
    float* x = floats(x_, n * config_.dim);
    ops16::gather_rows(t_, embed_->get(), ids_dev, n, config_.dim, x, stream_);
    pending_add_ = nullptr;
    return x;
  }

  // The whole model over a batch; returns the last block's residual stream (device, f32; the last
  // residual add still pending, for head_rows to fuse).
  float* forward(const int32_t* ids, int64_t batch, int64_t seq) {
    float* x = embed_device(ids, batch * seq);
    set_position(0);
    for (int64_t i = 0; i < config_.layers; ++i) block_forward(block(i), x, batch * seq, seq, seq, nullptr, 0, nullptr);
    flush_add(batch * seq);
    return x;
  }

  // Adds the pending residual (the last linear's output) into x_ over `rows` rows.
  void flush_add(int64_t rows) {
    if (!pending_add_) return;
    ops16::add(t_, floats(x_, 0), pending_add_, rows * config_.dim, stream_);
    pending_add_ = nullptr;
  }

  // final norm + lm_head of rows of x (device, f32, nothing pending), logits in f32.
  void head_rows(const float* x, int64_t rows, float* out) {
    uint16_t* normed = halves(head_norm_, rows * config_.dim);
    ops16::add_rms_norm(t_, const_cast<float*>(x), nullptr, rows, config_.dim, final_norm_->get(), config_.norm_eps,
                        normed, stream_);
    if (!head_) {  // tied: the embedding is the head's weight
      gemm16(stream_, t_ == DType::BF16, rows, config_.vocab, config_.dim, normed, embed_->get(), out, true);
    } else if (auto* dense = dynamic_cast<const DenseHalfOp*>(head_.get())) {
      dense->apply_f32_out(normed, rows, out, stream_);
    } else {
      uint16_t* lg16 = halves(head_out_, rows * config_.vocab);
      head_->apply_half(normed, t_, rows, lg16, wide_[0], stream_);
      ops16::widen(t_, lg16, rows * config_.vocab, out, stream_);
    }
  }

  // One block over `rows` rows of the residual stream x (device, f32): sequences of S rows each at
  // positions *pos_.., keys from this call (kv null) or appended to kv's cache of `layer`; `longest`
  // bounds the keys a row attends to (attention's split heuristic). The block's
  // last residual add is left pending (pending_add_) for the next norm to fuse. Returns false when
  // the run stopped early at a capture point.
  bool block_forward(const Block16& blk, float* x, int64_t rows, int64_t S, int64_t longest, const KvTarget* kv,
                     int64_t layer, const BlockRun* run) {
    const LlamaConfig& c = config_;
    const int64_t qw = c.heads * c.head_dim, kw = c.kv_heads * c.head_dim;
    struct Ops {
      CudaLlama16& m;
      const Block16& blk;
      int64_t rows, S, longest, kw;
      const KvTarget* kv;
      int64_t layer;
      const BlockRun* run;
      void rms_norm(const float* in, const float* w, uint16_t* out) {
        m.fused_norm(const_cast<float*>(in), rows, w, out);
      }
      bool skip[kBlockLinears] = {};  // done by their group's one product
      bool joins[2] = {};              // side streams whose work the main stream must wait for
      uint16_t* v = nullptr;           // v's buffer (rows of kw): with q and k, what the recipe names
      // Where a group's product left q/k/v (row stride qkv_stride, each row q | k | v) or gate/up
      // (gu, row stride gu_stride); 0: each in its own [rows, width] array.
      int64_t qkv_stride = 0, gu_stride = 0;
      const uint16_t* gu = nullptr;
      bool appended = false;  // this step's keys and values are in the pages already
      // Decode rows whose RoPE and KV append run inside attention (one fused launch): where the
      // product left this step's keys and values, and their row strides.
      bool fresh = false;
      const uint16_t *fresh_k = nullptr, *fresh_v = nullptr;
      int64_t fresh_q_stride = 0, fresh_k_stride = 0, fresh_v_stride = 0;
      bool decode_rows() const { return kv && kv->kind == KvTarget::Rows && m.groups_; }
      // Q and Gate run on the main stream (after marking where side streams may start); K, V and Up
      // run on side streams when they are not dense and small (cuBLAS keeps to one stream), else in turn.
      // A valid group runs as one product for one row, for decode rows (whose consumers read the
      // rows laid end to end) and always when packed (its members' columns then copied apart).
      void linear(Linear which, const uint16_t* in, uint16_t* out) {
        if (skip[(int)which]) return;
        const LinearGroup* group = which == Linear::Q ? &blk.qkv : which == Linear::Gate ? &blk.gate_up : nullptr;
        if (which == Linear::Q || which == Linear::Gate) check(cudaEventRecord(m.fork_, m.stream_), "event");
        if (group && group->valid && (rows == 1 || decode_rows() || !group->dense())) {
          grouped(which, *group, in, out);
          return;
        }
        const DeviceLinearOp& op = *blk.linears[(int)which];
        const int side = which == Linear::K || which == Linear::Up ? 0 : which == Linear::V ? 1 : -1;
        // Side streams only for small products (decode), where one product leaves the GPU idle: a
        // large packed product may go through cuBLAS (gptq-tc's dequantize path), which keeps to one
        // stream; column views share their group's weights and scratch.
        if (side < 0 || dynamic_cast<const DenseHalfOp*>(&op) || dynamic_cast<const ColumnViewOp*>(&op) ||
            rows > 16) {
          op.apply_half(in, m.t_, rows, out, m.wide_[0], m.stream_);
          return;
        }
        check(cudaStreamWaitEvent(m.side_[side], m.fork_, 0), "event");
        op.apply_half(in, m.t_, rows, out, m.wide_[1 + side], m.side_[side]);
        check(cudaEventRecord(m.join_[side], m.side_[side]), "event");
        joins[side] = true;
      }
      // One product for the group whose first member is `which` (Q or Gate); out is that member's
      // buffer, which holds the whole group's rows (the recipe's buffers are laid end to end).
      void grouped(Linear which, const LinearGroup& group, const uint16_t* in, uint16_t* out) {
        const int64_t N = group.all->N();
        const bool qkv = which == Linear::Q;
        if (qkv) skip[(int)Linear::K] = skip[(int)Linear::V] = true;
        else skip[(int)Linear::Up] = true;
        // one row, or decode rows for q/k/v: straight into the buffer (for one row, each member's
        // output is where the recipe expects it); else into scratch, then apart
        uint16_t* dst = rows == 1 || (qkv && decode_rows()) ? out : halves(m.group_out_, rows * N);
        group.all->apply_half(in, m.t_, rows, dst, m.wide_[0], m.stream_);
        if (!qkv) {
          gu = dst;
          gu_stride = N;  // SwiGLU reads gate and up from each row
        } else if (rows > 1 && decode_rows()) {
          qkv_stride = N;  // RoPE, the KV append and attention read each row's q | k | v
        } else if (rows > 1) {
          uint16_t* parts[3] = {out, out + rows * group.row0[1], v};
          for (int i = 0; i < 3; ++i) {
            const int64_t width = (i == 2 ? N : group.row0[(size_t)i + 1]) - group.row0[(size_t)i];
            ops16::copy_columns(dst, rows, N, group.row0[(size_t)i], width, parts[i], m.stream_);
          }
        }
      }
      void join() {
        for (int i = 0; i < 2; ++i)
          if (joins[i]) check(cudaStreamWaitEvent(m.stream_, m.join_[i], 0), "event");
        joins[0] = joins[1] = false;
      }
      void rope(uint16_t* q, uint16_t* k) {
        join();
        const LlamaConfig& c = m.config_;
        if (decode_rows()) {  // with the KV append: keys and values go straight to the pages
          const int64_t qw = c.heads * c.head_dim, page_off = 2 * layer * ops16::kPageTokens * kw;
          const uint16_t* kk = qkv_stride ? q + qw : k;
          const uint16_t* vv = qkv_stride ? q + qw + kw : v;
          if (m.fused_decode_ && ops16::decode_attention_fusable(c.head_dim)) {
            fresh = true;
            fresh_k = kk;
            fresh_v = vv;
            fresh_q_stride = qkv_stride ? qkv_stride : qw;
            fresh_k_stride = fresh_v_stride = qkv_stride ? qkv_stride : kw;
            return;
          }
          ops16::rope_append_rows(m.t_, q, qkv_stride ? qkv_stride : qw, kk, qkv_stride ? qkv_stride : kw, vv,
                                  qkv_stride ? qkv_stride : kw, rows, m.pos_->get(), c.heads, c.kv_heads,
                                  c.head_dim / 2, m.inv_freq_->get(), c.rope_scale, m.tables_->get(), m.table_stride_,
                                  page_off, m.stream_);
          appended = true;
          return;
        }
        const int64_t pos_stride = kv && kv->kind == KvTarget::Rows ? 1 : 0;
        ops16::rope_qk(m.t_, q, k, rows, S, m.pos_->get(), c.heads, c.kv_heads, c.head_dim / 2, m.inv_freq_->get(),
                       c.rope_scale, m.stream_, pos_stride);
      }
      void attention(const uint16_t* q, const uint16_t* k, const uint16_t* v, uint16_t* out) {
        const LlamaConfig& c = m.config_;
        const uint16_t* keys = k;
        const uint16_t* values = v;
        int64_t key_stride = S;
        const float scale = (float)(1.0 / std::sqrt((double)c.head_dim));
        const int splits = ops16::attention_splits(rows, c.heads, longest, m.multiprocessors_);
        float* partial = floats(m.partial_, ops16::attention_partial_floats(rows, c.heads, c.head_dim, splits));
        if (kv) {  // append to the pages, then attend over all of the sequence's keys
          const int64_t page_off = 2 * layer * ops16::kPageTokens * kw;
          const bool own_rows = kv->kind == KvTarget::Rows;
          if (fresh) {
            ops16::attention_decode_fused(m.t_, q, fresh_q_stride, fresh_k, fresh_k_stride, fresh_v, fresh_v_stride,
                                          rows, m.pos_->get(), c.heads, c.kv_heads, c.head_dim, m.inv_freq_->get(),
                                          c.rope_scale, scale, m.tables_->get(), m.table_stride_, page_off, splits,
                                          partial, m.merge_counters_->get(), kMaxRows * c.heads, out, m.stream_);
            return;
          }
          if (!appended)
            ops16::append_kv_paged(k, v, rows, S, kw, m.pos_->get(), own_rows ? 1 : 0, m.tables_->get(),
                                   m.table_stride_, page_off, m.stream_);
          if (own_rows) {
            ops16::attention_paged(m.t_, q, rows, m.pos_->get(), m.tables_->get(), m.table_stride_, page_off, c.heads,
                                   c.kv_heads, c.head_dim, scale, splits, partial, out, m.stream_, qkv_stride);
            return;
          }
          uint16_t* kc = halves(m.keys_, kv->length * kw);
          uint16_t* vc = halves(m.values_, kv->length * kw);
          ops16::gather_kv(m.tables_->get(), kv->length, kw, page_off, kc, vc, m.stream_);
          keys = kc;
          values = vc;
          key_stride = 0;
        }
        ops16::attention(m.t_, q, rows, S, m.pos_->get(), keys, values, key_stride, c.heads, c.kv_heads, c.head_dim, scale, splits,
                         partial, out, m.stream_);
      }
      void add(float* y, const uint16_t* x, int64_t cols) {
        (void)cols;  // always dim: the residual stream
        (void)y;
        m.flush_add(rows);
        m.pending_add_ = x;  // fused into the next rms_norm (or flushed)
      }
      void swiglu(const uint16_t* gate, const uint16_t* up, uint16_t* out) {
        join();
        if (gu) ops16::swiglu_rows(m.t_, gu, rows, m.config_.hidden, gu_stride, out, m.stream_);
        else ops16::swiglu(m.t_, gate, up, rows * m.config_.hidden, out, m.stream_);
      }
      bool emit(CapturePoint p, const uint16_t* data, int64_t cols) {
        const model::CaptureFn* capture = run ? run->capture : nullptr;
        if (capture && *capture && run->device_captures) {
          m.sync();  // the capture's reader (e.g. a Hessian on its own stream) sees finished values
          model::Activations a{nullptr, rows, cols, 0};
          a.device_data = data;
          a.device_dtype = m.t_;
          (*capture)(p, a);
        } else if (capture && *capture) {
          float* wide = floats(m.capture_, rows * cols);
          ops16::widen(m.t_, data, rows * cols, wide, m.stream_);
          m.host_capture_.resize((size_t)(rows * cols));
          m.download(m.host_capture_.data(), wide, rows * cols);
          (*capture)(p, model::Activations{m.host_capture_.data(), rows, cols, 0});
        }
        return run && run->stop_after == (int)p;
      }
    } recipe_ops{*this, blk, rows, S, longest, kw, kv, layer, run};
    // q, k, v end to end (and gate, up): for one row, what a group's single product writes
    uint16_t* qkv = halves(qkv_, rows * (qw + 2 * kw));
    uint16_t* gate_up = halves(gate_up_, rows * 2 * c.hidden);
    const model::BlockBuffersOf<uint16_t> b{x,
                                            halves(norm_, rows * c.dim),
                                            qkv,
                                            qkv + rows * qw,
                                            qkv + rows * (qw + kw),
                                            halves(att_, rows * qw),
                                            halves(proj_, rows * c.dim),
                                            gate_up,
                                            gate_up + rows * c.hidden};
    recipe_ops.v = b.v;
    return model::block_recipe(c, b, blk.attn_norm->get(), blk.mlp_norm->get(), recipe_ops);
  }

  // x += pending (if any), then out = rms_norm(x) * w, in one pass.
  void fused_norm(float* x, int64_t rows, const float* w, uint16_t* out) {
    ops16::add_rms_norm(t_, x, pending_add_, rows, config_.dim, w, config_.norm_eps, out, stream_);
    pending_add_ = nullptr;
  }

  int device_;
  DType t_;
  cudaStream_t stream_ = nullptr;
  int multiprocessors_ = 1;
  std::vector<std::unique_ptr<Block16>> blocks_;
  std::unique_ptr<DeviceBuffer<uint16_t>> embed_;
  std::unique_ptr<DeviceBuffer<float>> final_norm_, inv_freq_;
  // Positions read on the device: pos_[0] the call's first row's (set_position), or (batched decode)
  // pos_[r] row r's; tables_ [kMaxRows, table_stride_]: the page tables of the batch's sequences.
  std::unique_ptr<DeviceBuffer<int32_t>> pos_;
  std::shared_ptr<PagePool> pool_;  // shared with the sequences, which may outlive the backend
  int64_t table_stride_ = 0;        // pages of the longest sequence
  std::unique_ptr<DeviceBuffer<uint16_t*>> tables_;
  std::unique_ptr<DeviceBuffer<uint16_t>> pad_page_;  // where a batch's padding rows write and read
  std::vector<uint16_t*> host_tables_;
  std::vector<int32_t> host_positions_, host_ids_ = std::vector<int32_t>((size_t)kMaxRows);
  std::map<int64_t, StepGraph> steps_;  // by bucket
  int32_t host_pos_ = 0;
  bool graphs_ = true;   // decode steps replayed as CUDA graphs (LOWBIT_CUDA_GRAPHS=0: never)
  // Packed groups and decode rows through one group product with RoPE + KV append in one launch
  // (LOWBIT_CUDA_GROUPS=0: the linears one by one, dense groups at one row only, for comparisons)
  bool groups_ = true;
  // Decode rows' RoPE, KV append, attention and split merge in one launch (LOWBIT_CUDA_FUSED_DECODE=0:
  // three, for comparisons), for the head sizes the fused kernel takes.
  bool fused_decode_ = true;
  std::unique_ptr<DeviceBuffer<uint32_t>> merge_counters_;
  uint64_t epoch_ = 1;   // bumped by every call that may move a buffer a captured step uses
  std::unique_ptr<DeviceLinearOp> head_;
  // The block's last output (proj_), not yet added into x_: the next block's first norm adds it in
  // the same pass (proj_ is next written by that block's o projection, after the norm).
  const uint16_t* pending_add_ = nullptr;
  // Scratch (a backend is used by one thread at a time). wide_: what a linear's operator needs.
  DeviceScratch x_, norm_, qkv_, att_, proj_, gate_up_, group_out_, logits_, nll_, ids_, partial_, capture_, head_norm_,
      head_out_, keys_, values_, tokens_;
  DeviceScratch wide_[3];  // per stream: main, side_[0], side_[1]
  cudaStream_t side_[2] = {nullptr, nullptr};
  cudaEvent_t fork_ = nullptr, join_[2] = {nullptr, nullptr};
  std::vector<float> host_capture_;
  float* staged_ = nullptr;  // pinned host memory for the decode step's logits (download_staged)
  int64_t staged_count_ = 0;
};

}  // namespace

std::unique_ptr<LlamaBackend> make_cuda_llama16(int device, const LlamaConfig& config, DType activations) {
  require(activations == DType::F16 || activations == DType::BF16, "E_DTYPE", "16-bit activations are f16 or bf16");
  return std::make_unique<CudaLlama16>(device, config, activations);
}

}  // namespace cuda
}  // namespace lowbit

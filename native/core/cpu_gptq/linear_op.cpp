#include "linear_op.hpp"

#include <atomic>
#include <vector>

#include "repack.hpp"
#include "spqr_panels.hpp"

namespace lowbit {
namespace cpu_gptq {
namespace {

std::atomic<int64_t> g_products{0}, g_spqr_products{0};
std::atomic<const char*> g_last_kernel{"none"}, g_spqr_last_kernel{"none"};

class Int8LinearOp : public LinearOp {
 public:
  explicit Int8LinearOp(const LinearWeights& w)
      : LinearOp(w.N(), w.K()), weights_(repack(*w.gptq())), bias_(copy_host_bias(w)) {}

  void apply(const float* X, int64_t M, float* Y) const override {
    g_last_kernel.store(gemm(weights_, X, M, Y), std::memory_order_relaxed);
    g_products.fetch_add(1, std::memory_order_relaxed);
    add_host_bias(Y, M, N(), bias_);
  }
  int64_t bytes() const override {
    return weights_.bytes() + (int64_t)weights_.source.size() * 4 + (int64_t)bias_.size() * 4;
  }
  const char* kernel() const override { return "gptq-int8"; }

 private:
  CpuGptqWeights weights_;
  std::vector<float> bias_;
};

class SpqrInt8LinearOp : public LinearOp {
 public:
  explicit SpqrInt8LinearOp(const LinearWeights& w)
      : LinearOp(w.N(), w.K()), weights_(repack_spqr(*w.spqr())), bias_(copy_host_bias(w)) {}

  void apply(const float* X, int64_t M, float* Y) const override {
    g_spqr_last_kernel.store(spqr_gemm_int8(weights_, X, M, Y), std::memory_order_relaxed);
    g_spqr_products.fetch_add(1, std::memory_order_relaxed);
    add_host_bias(Y, M, N(), bias_);
  }
  int64_t bytes() const override { return weights_.bytes() + (int64_t)bias_.size() * 4; }
  const char* kernel() const override { return "spqr-int8"; }

 private:
  SpqrPanels weights_;
  std::vector<float> bias_;
};

}  // namespace

bool accepts_int8_linear(const LinearWeights& w, const LinearOptions& options) {
  return options.cpu_activations == LinearOptions::CpuActivations::Int8 && w.gptq() && supports(*w.gptq());
}

std::unique_ptr<LinearOp> make_int8_linear(const LinearWeights& w, const LinearOptions&) {
  return std::make_unique<Int8LinearOp>(w);
}

bool accepts_spqr_int8_linear(const LinearWeights& w, const LinearOptions& options) {
  return options.cpu_activations == LinearOptions::CpuActivations::Int8 && w.spqr() && supports_spqr(*w.spqr());
}

std::unique_ptr<LinearOp> make_spqr_int8_linear(const LinearWeights& w, const LinearOptions&) {
  return std::make_unique<SpqrInt8LinearOp>(w);
}

Int8LinearStats int8_linear_stats() {
  return {g_products.load(std::memory_order_relaxed), g_last_kernel.load(std::memory_order_relaxed),
          g_spqr_products.load(std::memory_order_relaxed), g_spqr_last_kernel.load(std::memory_order_relaxed)};
}

}  // namespace cpu_gptq
}  // namespace lowbit

#include "linear_op.hpp"

#include <atomic>
#include <vector>

#include "repack.hpp"

namespace lowbit {
namespace cpu_gptq {
namespace {

std::atomic<int64_t> g_products{0};
std::atomic<const char*> g_last_kernel{"none"};

class Int8LinearOp : public LinearOp {
 public:
  explicit Int8LinearOp(const LinearWeights& w)
      : LinearOp(w.N(), w.K()), weights_(repack(*w.gptq())),
        bias_(w.bias ? std::vector<float>(w.bias, w.bias + w.N()) : std::vector<float>()) {}

  void apply(const float* X, int64_t M, float* Y) const override {
    gemm(weights_, X, M, Y);
    g_last_kernel.store(last_kernel(), std::memory_order_relaxed);
    g_products.fetch_add(1, std::memory_order_relaxed);
    if (bias_.empty()) return;
    const int64_t n_out = N();
    for (int64_t m = 0; m < M; ++m)
      for (int64_t n = 0; n < n_out; ++n) Y[m * n_out + n] += bias_[(size_t)n];
  }
  int64_t bytes() const override {
    return weights_.bytes() + (int64_t)weights_.source.size() * 4 + (int64_t)bias_.size() * 4;
  }
  const char* kernel() const override { return "gptq-int8"; }

 private:
  CpuGptqWeights weights_;
  std::vector<float> bias_;
};

}  // namespace

bool accepts_int8_linear(const LinearWeights& w, const LinearOptions& options) {
  return options.cpu_activations == LinearOptions::CpuActivations::Int8 && w.gptq() && supports(*w.gptq());
}

std::unique_ptr<LinearOp> make_int8_linear(const LinearWeights& w, const LinearOptions&) {
  return std::make_unique<Int8LinearOp>(w);
}

Int8LinearStats int8_linear_stats() {
  return {g_products.load(std::memory_order_relaxed), g_last_kernel.load(std::memory_order_relaxed)};
}

}  // namespace cpu_gptq
}  // namespace lowbit

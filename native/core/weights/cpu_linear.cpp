// The CPU's operators for each weight format and the table the CPU backend picks them from.
// A new CPU kernel is a LinearOp subclass in a file of its own, plus one entry in kCpuKernels.
#include <algorithm>
#include <vector>

#include "../cpu_gptq/linear_op.hpp"
#include "../model/ops.hpp"
#include "../packed_gemm.hpp"
#include "../spqr_gemm.hpp"
#include "linear.hpp"

namespace lowbit {

void check_linear_weights(const LinearWeights& w, const std::string& name, int64_t N, int64_t K) {
  auto str = [](int64_t v) { return std::to_string(v); };
  if (const DenseMatrix* d = w.dense()) {
    require(d->data != nullptr, "E_BUFFER", name + ": dense weight has no data");
    require(d->dtype == DType::F32 || d->dtype == DType::F16 || d->dtype == DType::BF16, "E_DTYPE",
            name + ": dense weights must be f32, f16 or bf16");
  } else if (const PackedMatrix* q = w.gptq()) {
    require(q->qweight && q->qzeros && q->scales, "E_BUFFER", name + ": packed weight has no data");
  } else if (const SpqrMatrix* q = w.spqr()) {
    require(q->qweight && q->scale_codes && q->zero_codes && q->scale_stats && q->zero_stats && q->outlier_rowptr,
            "E_BUFFER", name + ": SpQR weight has no data");
  }
  require(w.N() > 0 && w.K() > 0, "E_SHAPE", name + ": N and K must be positive");
  if (N > 0 || K > 0)
    require(w.N() == N && w.K() == K, "E_SHAPE",
            name + ": " + kFormatNames[(int)w.format()] + " weight is " + str(w.N()) + " x " + str(w.K()) +
                ", the model needs " + str(N) + " x " + str(K));
}

namespace {

// Dense weights rearranged into panels of 16 output channels in their own dtype (model/ops.hpp).
class DensePanelsOp : public LinearOp {
 public:
  explicit DensePanelsOp(const LinearWeights& w)
      : LinearOp(w.N(), w.K()),
        panels_(w.dense()->data, w.dense()->dtype, w.N(), w.K()),
        bias_(copy_host_bias(w)) {}
  void apply(const float* X, int64_t M, float* Y) const override {
    model::cpu::dense_linear(X, M, panels_, bias_.empty() ? nullptr : bias_.data(), Y);
  }
  int64_t bytes() const override { return panels_.bytes() + (int64_t)bias_.size() * 4; }
  const char* kernel() const override { return "dense-panels"; }

 private:
  model::cpu::DensePanels panels_;
  std::vector<float> bias_;
};

// GPTQ weights kept as the checkpoint packs them (own copies of the buffers), multiplied by
// lowbit::packed_gemm (one kernel source for scalar/AVX2/AVX-512, chosen at run time).
class GptqPackedOp : public LinearOp {
 public:
  explicit GptqPackedOp(const LinearWeights& w) : LinearOp(w.N(), w.K()), bias_(copy_host_bias(w)) {
    const PackedMatrix& src = *w.gptq();
    qweight_.assign(src.qweight, src.qweight + src.qweight_words());
    qzeros_.assign(src.qzeros, src.qzeros + src.qzeros_words());
    scales_.assign(src.scales, src.scales + src.groups * src.N);
    if (src.g_idx) g_idx_.assign(src.g_idx, src.g_idx + src.K);
    view_ = src;
    view_.qweight = qweight_.data();
    view_.qzeros = qzeros_.data();
    view_.scales = scales_.data();
    view_.g_idx = src.g_idx ? g_idx_.data() : nullptr;
  }
  void apply(const float* X, int64_t M, float* Y) const override {
    packed_gemm(X, M, view_, Y);
    add_host_bias(Y, M, N(), bias_);
  }
  int64_t bytes() const override {
    return (int64_t)(qweight_.size() * 4 + qzeros_.size() * 4 + g_idx_.size() * 4 + scales_.size() * 2 +
                     bias_.size() * 4);
  }
  const char* kernel() const override { return "gptq-packed"; }

 private:
  std::vector<int32_t> qweight_, qzeros_, g_idx_;
  std::vector<uint16_t> scales_;
  PackedMatrix view_;
  std::vector<float> bias_;
};

// SpQR weights repacked once (SpqrCpuWeights: byte-aligned code rows, decoded second-level grids),
// multiplied by spqr_gemm without materialising W (dense part decoded row by row, plus CSR outliers).
class SpqrCpuOp : public LinearOp {
 public:
  explicit SpqrCpuOp(const LinearWeights& w)
      : LinearOp(w.N(), w.K()), weights_(SpqrCpuWeights::from(*w.spqr())), bias_(copy_host_bias(w)) {}
  void apply(const float* X, int64_t M, float* Y) const override {
    spqr_gemm(X, M, weights_, Y);
    add_host_bias(Y, M, N(), bias_);
  }
  int64_t bytes() const override {
    const SpqrCpuWeights& c = weights_;
    return (int64_t)(c.codes.size() + c.scale_code.size() + c.zero_code.size() +
                     4 * (c.s_off.size() + c.s_step.size() + c.z_off.size() + c.z_step.size() + c.perm.size() +
                          c.rowptr.size() + c.cols.size() + c.values.size() + bias_.size()));
  }
  const char* kernel() const override { return "spqr-cpu"; }

 private:
  SpqrCpuWeights weights_;
  std::vector<float> bias_;
};

template <class Op>
std::unique_ptr<LinearOp> make(const LinearWeights& w, const LinearOptions&) {
  return std::make_unique<Op>(w);
}

// Tried in order: put a specialised kernel before the general one of its format.
const std::vector<CpuKernel>& cpu_kernels() {
  static const std::vector<CpuKernel> table = {
      {"dense-panels", Format::Dense, nullptr, &make<DensePanelsOp>},
      // 2/3/4-bit GPTQ with int8 activations (options.cpu_activations): repacked at load time.
      {"gptq-int8", Format::Gptq, &cpu_gptq::accepts_int8_linear, &cpu_gptq::make_int8_linear},
      {"gptq-packed", Format::Gptq, nullptr, &make<GptqPackedOp>},
      // SpQR with int8 activations and 16-multiple groups: repacked at load time into int8 units.
      {"spqr-int8", Format::Spqr, &cpu_gptq::accepts_spqr_int8_linear, &cpu_gptq::make_spqr_int8_linear},
      {"spqr-cpu", Format::Spqr, nullptr, &make<SpqrCpuOp>},
  };
  return table;
}

}  // namespace

std::unique_ptr<LinearOp> make_cpu_linear(const LinearWeights& w, const LinearOptions& options) {
  check_linear_weights(w, "weight");
  return pick_kernel(cpu_kernels(), w, options, options).make(w, options);
}

std::vector<std::string> cpu_linear_kernels() {
  std::vector<std::string> names;
  for (const auto& e : cpu_kernels()) names.push_back(e.name);
  return names;
}

}  // namespace lowbit

// One linear layer's weight in any format (LinearWeights), and the operator a device runs for it
// (LinearOp). The three seams of docs/ARCHITECTURE.md meet here:
//  - the format: what the checkpoint holds (format.hpp's table; the view structs below);
//  - the operator: a LinearOp made once per weight by a device's factory, the one place where a
//    device may rearrange the weight into a layout of its own (like vLLM's
//    process_weights_after_loading); every later product reuses it;
//  - the kernel table: per device, a list of operators with the weights each one takes (format,
//    bits, shape, processor); the first entry that takes a weight makes its operator.
// The CPU's factory and table are here (cpu_linear.cpp); CUDA's are in cuda/ (cuda_api.hpp).
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <variant>
#include <vector>

#include "../dtype.hpp"
#include "../packed_matrix.hpp"
#include "../spqr.hpp"
#include "format.hpp"

namespace lowbit {

// A dense weight W [N, K] row-major (out x in, the HF layout) in f32, f16 or bf16. A view.
struct DenseMatrix {
  DType dtype = DType::F32;
  const void* data = nullptr;
  int64_t N = 0;
  int64_t K = 0;
};

// One linear layer's weight as the caller holds it (views; operators copy what they keep).
// The variant's alternatives are in Format's order; GPTQ's view is PackedMatrix (packed_matrix.hpp),
// SpQR's SpqrMatrix (spqr.hpp; whoever builds one runs validate_spqr on it first, as the binding's
// reader does).
struct LinearWeights {
  std::variant<DenseMatrix, PackedMatrix, SpqrMatrix> matrix;
  const float* bias = nullptr;  // [N] or null (qwen2 has q/k/v biases)

  Format format() const { return (Format)matrix.index(); }
  const DenseMatrix* dense() const { return std::get_if<DenseMatrix>(&matrix); }
  const PackedMatrix* gptq() const { return std::get_if<PackedMatrix>(&matrix); }
  const SpqrMatrix* spqr() const { return std::get_if<SpqrMatrix>(&matrix); }
  int64_t N() const {
    return std::visit([](const auto& m) { return m.N; }, matrix);
  }
  int64_t K() const {
    return std::visit([](const auto& m) { return m.K; }, matrix);
  }
};

// Throws E_BUFFER / E_DTYPE unless the weight has data of a type some operator takes, E_SHAPE
// unless it is `N` x `K` (pass N = K = 0 to skip that check). `name` starts the messages.
void check_linear_weights(const LinearWeights& w, const std::string& name, int64_t N = 0, int64_t K = 0);

// How to build an operator. Empty `kernel`: the device table's choice; else that entry by name
// (benchmarks and tests compare kernels this way; E_ARGUMENT when it does not take the weight).
struct LinearOptions {
  std::string kernel;
  // The precision of the activations inside the CPU's packed GPTQ products (dense weights and the
  // CUDA kernels ignore it). F32: exact to f32 rounding (gptq-packed). Int8: each row quantized per
  // 128-input segment for integer dot products on the repacked layout (gptq-int8: faster, error per
  // output ≤ ‖x‖∞ · ‖w_n‖₁ / 254, see cpu_gptq/repack.hpp). F32 by default: callers that want the
  // fast path ask for it (the model's inference calls do; calibration and reference checks do not).
  enum class CpuActivations { F32, Int8 };
  CpuActivations cpu_activations = CpuActivations::F32;
};

// Y = X · Wᵀ + bias for one weight, as one device runs it, with host f32 activations
// (a CUDA operator made by cuda::make_cuda_linear copies them to the device and back).
//   X [M, K] and Y [M, N] row-major, Y overwritten, accumulation in f32 or wider.
// apply() is const and may run on several threads at once (the CPU backend runs the sequences of a
// batch in parallel): keep per-call state on the stack or in thread-local storage.
class LinearOp {
 public:
  LinearOp(int64_t N, int64_t K) : N_(N), K_(K) {}
  virtual ~LinearOp() = default;
  LinearOp(const LinearOp&) = delete;
  LinearOp& operator=(const LinearOp&) = delete;

  virtual void apply(const float* X, int64_t M, float* Y) const = 0;
  virtual int64_t bytes() const = 0;          // memory held for the weight (host, or the device's)
  virtual const char* kernel() const = 0;     // the table entry that made it
  int64_t N() const { return N_; }
  int64_t K() const { return K_; }

 private:
  int64_t N_, K_;
};

// The bias a host operator keeps: a copy of w.bias, empty when the weight has none.
inline std::vector<float> copy_host_bias(const LinearWeights& w) {
  return w.bias ? std::vector<float>(w.bias, w.bias + w.N()) : std::vector<float>();
}
// Adds that bias [N] to every row of Y [M, N] (nothing when it is empty).
inline void add_host_bias(float* Y, int64_t M, int64_t N, const std::vector<float>& bias) {
  if (bias.empty()) return;
  for (int64_t m = 0; m < M; ++m)
    for (int64_t n = 0; n < N; ++n) Y[m * N + n] += bias[(size_t)n];
}

// One entry of a device's kernel table.
template <class Op, class... Context>
struct KernelEntry {
  const char* name;
  Format format;
  // Whether this kernel takes these weights (bits, shape, act-order, processor...); null: every
  // weight of `format`.
  bool (*accepts)(const LinearWeights& w, Context... context);
  std::unique_ptr<Op> (*make)(const LinearWeights& w, Context... context);
};
// The CPU's entries see the caller's options (e.g. cpu_activations picks the int8 or the f32 path).
using CpuKernel = KernelEntry<LinearOp, const LinearOptions&>;

// The CPU's operator for `w` (checked with check_linear_weights first): the first entry of the
// CPU kernel table that takes it, or options.kernel.
std::unique_ptr<LinearOp> make_cpu_linear(const LinearWeights& w, const LinearOptions& options = {});
// The CPU table's entry names, in the order they are tried.
std::vector<std::string> cpu_linear_kernels();

// Picks the entry of `table` for `w`: options.kernel by name (E_ARGUMENT when unknown or when it
// does not take w), else the first that takes it (E_UNSUPPORTED when none does). `context` is what
// the table's accepts() takes after the weight (the device, for CUDA).
template <class Entry, class... Context>
const Entry& pick_kernel(const std::vector<Entry>& table, const LinearWeights& w, const LinearOptions& options,
                         const Context&... context) {
  auto takes = [&](const Entry& e) { return e.format == w.format() && (!e.accepts || e.accepts(w, context...)); };
  for (const auto& e : table) {
    if (!options.kernel.empty() && options.kernel != e.name) continue;
    if (takes(e)) return e;
    require(options.kernel.empty(), "E_ARGUMENT",
            "kernel '" + options.kernel + "' does not take this " + kFormatNames[(int)w.format()] + " weight");
  }
  require(options.kernel.empty(), "E_ARGUMENT", "no kernel named '" + options.kernel + "'");
  fail("E_UNSUPPORTED", std::string("no kernel takes this ") + kFormatNames[(int)w.format()] + " weight");
}

}  // namespace lowbit

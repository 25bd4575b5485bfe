// The CPU kernel table's "gptq-int8" entry (weights/cpu_linear.cpp): a LinearOp that repacks 2/3/4-bit
// GPTQ weights once (repack.hpp) and runs every product with int8 activations, GEMV for one row
// (decode) and the row-tiled GEMM for many (prefill, perplexity).
#pragma once

#include <cstdint>
#include <memory>

#include "../weights/linear.hpp"

namespace lowbit {
namespace cpu_gptq {

// Takes GPTQ weights of 2, 3 or 4 bits when the caller asked for int8 activations.
bool accepts_int8_linear(const LinearWeights& w, const LinearOptions& options);
std::unique_ptr<LinearOp> make_int8_linear(const LinearWeights& w, const LinearOptions& options);

// The "spqr-int8" entry: SpQR weights that spqr_panels.hpp's layout takes (β1, β2 multiples of 16,
// statistics of ≤ 4 bits), when the caller asked for int8 activations.
bool accepts_spqr_int8_linear(const LinearWeights& w, const LinearOptions& options);
std::unique_ptr<LinearOp> make_spqr_int8_linear(const LinearWeights& w, const LinearOptions& options);

// Products run by gptq-int8 operators since the process started (any thread), and the kernel family
// (repack.hpp's last_kernel) the latest one ran: tests check that a forward pass really went through
// them, at the SIMD level they forced.
struct Int8LinearStats {
  int64_t products = 0;
  const char* last_kernel = "none";
  int64_t spqr_products = 0;  // the same for spqr-int8 operators
  const char* spqr_last_kernel = "none";
};
Int8LinearStats int8_linear_stats();

}  // namespace cpu_gptq
}  // namespace lowbit

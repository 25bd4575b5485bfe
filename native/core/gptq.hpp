// GPTQ (Frantar et al., 2022): quantize one linear layer's weight W [N, K] (out x in) so as to
// minimise ||W X - Q X||^2 over calibration inputs X, using the Hessian H = (2/n) sum x x^T
// (hessian.hpp accumulates it). See shared METHODS.md "GPTQ" and docs/GPTQ.md.
//
// This header is the contract both backends implement: the CPU one in gptq.cpp and the CUDA one
// behind cuda/cuda_api.hpp take the same GptqOptions, fill the same GptqOutput buffers and return the
// same GptqReport. Keep it stable.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "quant_grid.hpp"

namespace lowbit {

struct GptqOptions {
  int bits = 4;                  // 2, 3, 4 or 8
  int64_t group_size = -1;       // columns per group along K; -1 (or >= K): one group per output channel
  bool sym = false;              // symmetric grid (zero = 2^(bits-1))
  bool mse = false;              // grid search over shrunken ranges (quant_grid.hpp)
  bool act_order = false;        // sweep columns by descending diag(H)
  bool static_groups = false;    // fit every group's grid on the original W before the sweep
  double damp_percent = 0.01;    // lambda = damp_percent * mean(diag H)
  int max_damp_raises = 3;       // on Cholesky failure: damp_percent *= 10, at most this many times
  int64_t block_size = 128;      // columns per lazy-batch block
  // Smallest zero point the grid may use. 1 for checkpoints in the "gptq" v1 layout, which stores
  // zero - 1 and so cannot hold a zero of 0 (pack.hpp); 0 for "gptq_v2". RTN uses the same rule.
  int min_zero = 0;
};

// Output buffers, owned by the caller. G = group_count(K, group_size) (rtn.hpp).
struct GptqOutput {
  uint8_t* q = nullptr;       // [N, K] integer codes in [0, 2^bits), ORIGINAL column order
  float* scales = nullptr;    // [G, N] fp16-exact scales
  int32_t* zeros = nullptr;   // [G, N] integer zero points
  int32_t* g_idx = nullptr;   // [K] group of each original input column
};

struct GptqReport {
  double damp_percent = 0;   // the dampening actually used (after any raises)...
  double damp = 0;           // ...and the lambda it gave, added to diag(H)
  int damp_raises = 0;       // how many times the Cholesky failed and lambda was raised
  int64_t dead_inputs = 0;   // columns with H_ii = 0 (their weights are zeroed)
  // 1/2 sum_{n,i} (w_ni - q_ni)^2 / Hinv_ii^2: the GPTQ objective, equal to the mean over calibration
  // tokens of ||(W - Q) x||^2 measured with the dampened Hessian.
  double loss = 0;
  std::vector<std::string> warnings;
};

// W: [N, K] f32 row-major; H: [K, K] f32 symmetric (both only read). Errors (CoreError codes):
// E_BITS / E_GROUP_SIZE / E_ARGUMENT for bad options, E_NAN for NaN or infinity in W or H,
// E_HESSIAN_SINGULAR when the Cholesky factorization still fails after max_damp_raises raises
// (or H has a negative diagonal entry).
GptqReport gptq_quantize(const float* W, int64_t N, int64_t K, const float* H, const GptqOptions& opt,
                         const GptqOutput& out);

// --- steps shared with the CUDA backend (plain host code) ---

// Checks options against K; throws E_BITS / E_GROUP_SIZE / E_ARGUMENT.
void validate_gptq_options(const GptqOptions& opt, int64_t K);

// The grid options that GPTQ's options imply (the same grid RTN uses).
GridOptions gptq_grid_options(const GptqOptions& opt);

// diag(H) entry i with dead inputs (0) counted as 1, as step 1 leaves them: diag[i * stride]
// (stride K + 1 for a full H [K, K], 1 for a vector of the diagonal).
inline double live_diag(const float* diag, int64_t stride, int64_t i) {
  const float d = diag[i * stride];
  return d == 0.f ? 1.0 : (double)d;
}

// Step 2's column order: by descending live diagonal with act_order (stable: ties keep their
// order), else 0..K-1. perm[p] = the original column swept p-th.
std::vector<int32_t> sweep_order(const float* diag, int64_t stride, int64_t K, bool act_order);
// The same from a full H [K, K].
inline std::vector<int32_t> sweep_order(const float* H, int64_t K, bool act_order) {
  return sweep_order(H, K + 1, K, act_order);
}

// g_idx[k] for each original column k: k / group_size, except with act_order and no static groups,
// where groups follow the sweep order: g_idx[perm[p]] = p / group_size.
void write_g_idx(const std::vector<int32_t>& perm, int64_t K, const GptqOptions& opt, int32_t* g_idx);

// The dampening schedule: after the Cholesky factorization failed at damp_percent `percent` (which
// gave `lambda`) on try `attempt`, records the raise in `report` (a warning, damp_raises) and returns
// the next damp_percent (x10; from 0 to 0.01), or throws E_HESSIAN_SINGULAR once opt.max_damp_raises
// raises are spent.
double raise_damp_after_failure(double percent, double lambda, int attempt, const GptqOptions& opt,
                                GptqReport& report);

// E_NAN naming `what` and the element when x[0..n) holds NaN or infinity.
void require_finite(const float* x, int64_t n, const char* what);

// Step 1 of the sweep: returns the dead-input mask (H_ii = 0) and zeroes those columns of W [N, K];
// E_HESSIAN_SINGULAR for a negative diagonal entry.
std::vector<uint8_t> zero_dead_inputs(const float* H, float* W, int64_t N, int64_t K, GptqReport& report);

// Step 4: the upper triangular Hinv [K, K] in sweep order `perm`, (H + lambda I)^-1 = Hinv^T Hinv,
// with lambda = damp_percent * mean(diag H) raised on Cholesky failure (raise_damp_after_failure).
// Reads opt.damp_percent and opt.max_damp_raises; records the dampening used in `report`.
std::vector<float> inverse_hessian_factor(const float* H, int64_t K, const std::vector<int32_t>& perm,
                                          const std::vector<uint8_t>& dead, const GptqOptions& opt,
                                          GptqReport& report);

// Step 4's dampening, the same on every device: lambda = damp_percent x the mean live diagonal, and
// factor(lambda) -> bool (H + lambda I factorized?) is retried with damp_percent raised by
// raise_damp_after_failure until it succeeds. Records the damp used in `report`.
template <class Factor>
void factor_dampened(const float* diag, int64_t stride, int64_t K, const GptqOptions& opt, GptqReport& report,
                     Factor&& factor) {
  double mean_diag = 0;
  for (int64_t i = 0; i < K; ++i) mean_diag += live_diag(diag, stride, i);
  mean_diag /= (double)K;
  double percent = opt.damp_percent;
  for (int attempt = 0;; ++attempt) {
    const double lambda = percent * mean_diag;
    if (factor(lambda)) {
      report.damp_percent = percent;
      report.damp = lambda;
      return;
    }
    percent = raise_damp_after_failure(percent, lambda, attempt, opt, report);
  }
}

}  // namespace lowbit

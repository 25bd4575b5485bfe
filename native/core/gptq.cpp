// GPTQ on the CPU, step by step as in the paper (Algorithm 1) and the reference gptq.py:
//   1. dead inputs        H_ii = 0 -> H_ii = 1, W[:, i] = 0
//   2. static groups      (option) every group's grid fitted on the original W
//   3. act-order          permute the columns of W and H by descending diag(H)
//   4. Hinv               upper Cholesky factor of (H + lambda I)^-1, raising lambda on failure
//   5. the sweep          blocks of B columns: quantize column by column with error feedback inside
//                         the block, then the lazy batch update of every later column
//   6. un-permute         q back to the original column order, g_idx
#include "gptq.hpp"

#include <algorithm>
#include <cmath>
#include <numeric>
#include <sstream>

#include "common.hpp"
#include "linalg.hpp"
#include "rtn.hpp"
#include "thread_pool.hpp"
#include "weight_format.hpp"

namespace lowbit {

void validate_gptq_options(const GptqOptions& opt, int64_t K) {
  weight_format(opt.bits);  // E_BITS
  require(K > 0, "E_SHAPE", "GPTQ needs a positive input dimension, got " + std::to_string(K));
  require(opt.group_size == -1 || opt.group_size > 0, "E_GROUP_SIZE",
          "group_size must be -1 (per channel) or positive, got " + std::to_string(opt.group_size));
  require(std::isfinite(opt.damp_percent) && opt.damp_percent >= 0, "E_ARGUMENT",
          "damp_percent must be a finite number >= 0");
  require(opt.max_damp_raises >= 0 && opt.max_damp_raises <= 20, "E_ARGUMENT", "max_damp_raises must be in [0, 20]");
  require(opt.block_size > 0, "E_ARGUMENT", "block_size must be positive");
  require(opt.min_zero == 0 || opt.min_zero == 1, "E_ARGUMENT", "min_zero must be 0 or 1");
}

GridOptions gptq_grid_options(const GptqOptions& opt) {
  GridOptions g;
  g.bits = opt.bits;
  g.sym = opt.sym;
  g.mse = opt.mse;
  g.min_zero = opt.min_zero;
  return g;
}

std::vector<int32_t> sweep_order(const float* diag, int64_t stride, int64_t K, bool act_order) {
  std::vector<int32_t> perm((size_t)K);
  std::iota(perm.begin(), perm.end(), 0);
  if (act_order)
    std::stable_sort(perm.begin(), perm.end(), [&](int32_t a, int32_t b) {
      return live_diag(diag, stride, a) > live_diag(diag, stride, b);
    });
  return perm;
}

void write_g_idx(const std::vector<int32_t>& perm, int64_t K, const GptqOptions& opt, int32_t* g_idx) {
  const int64_t gs = effective_group_size(K, opt.group_size);
  if (opt.act_order && !opt.static_groups) {
    for (int64_t p = 0; p < K; ++p) g_idx[perm[p]] = (int32_t)(p / gs);
  } else {
    for (int64_t k = 0; k < K; ++k) g_idx[k] = (int32_t)(k / gs);
  }
}

double raise_damp_after_failure(double percent, double lambda, int attempt, const GptqOptions& opt,
                                GptqReport& report) {
  const double next = percent > 0 ? percent * 10 : 0.01;
  if (attempt >= opt.max_damp_raises) {
    std::ostringstream msg;
    msg << "the Cholesky factorization of the Hessian failed even with damp_percent " << percent << " (lambda "
        << lambda << ", after " << attempt << " raises): H is not positive definite; check the calibration "
        << "inputs or raise damp";
    fail("E_HESSIAN_SINGULAR", msg.str());
  }
  std::ostringstream warn;
  warn << "Cholesky factorization failed with damp_percent " << percent << "; raised to " << next;
  report.warnings.push_back(warn.str());
  ++report.damp_raises;
  return next;
}

namespace {

// One group's grid: the grid RTN uses (quant_grid.hpp, including v1's minimum zero point).
Grid fit_group_grid(const float* w, int64_t n, const GridOptions& grid_opt) { return fit_grid(w, n, 1, grid_opt); }

}  // namespace

void require_finite(const float* x, int64_t n, const char* what) {
  for (int64_t i = 0; i < n; ++i)
    if (!std::isfinite(x[i]))
      fail("E_NAN", std::string(what) + " holds " + (std::isnan(x[i]) ? "NaN" : "infinity") + " at element " +
                        std::to_string(i));
}

// Step 1. Returns the dead-input mask and zeroes those columns of W [N, K].
std::vector<uint8_t> zero_dead_inputs(const float* H, float* W, int64_t N, int64_t K, GptqReport& report) {
  std::vector<uint8_t> dead((size_t)K, 0);
  for (int64_t i = 0; i < K; ++i) {
    const float d = H[i * K + i];
    require(d >= 0.f, "E_HESSIAN_SINGULAR",
            "the Hessian has a negative diagonal entry H[" + std::to_string(i) + "][" + std::to_string(i) +
                "] = " + std::to_string(d) + ": it is not positive semi-definite");
    if (d == 0.f) {
      dead[i] = 1;
      ++report.dead_inputs;
    }
  }
  if (report.dead_inputs > 0)
    for (int64_t n = 0; n < N; ++n)
      for (int64_t i = 0; i < K; ++i)
        if (dead[i]) W[n * K + i] = 0.f;
  return dead;
}

// Step 4. Hinv [K, K] (float, upper triangular, sweep order) with (H + lambda I)^-1 = Hinv^T Hinv.
//
// Instead of the reference's chol(H) -> H^-1 -> chol(H^-1), which forms the inverse explicitly, this
// uses an identity: with J the order-reversing permutation and J H J = L L^T (ordinary Cholesky),
// H = V V^T with V = J L J upper triangular, so H^-1 = (V^-1)^T V^-1 and Hinv = V^-1 = J L^-1 J.
// One factorization and one triangular inverse (2/3 K^3 flops instead of ~4/3 K^3), in double.
std::vector<float> inverse_hessian_factor(const float* H, int64_t K, const std::vector<int32_t>& perm,
                                          const std::vector<uint8_t>& dead, const GptqOptions& opt,
                                          GptqReport& report) {
  std::vector<double> P((size_t)(K * K));
  factor_dampened(H, K + 1, K, opt, report, [&](double lambda) {
    // P = J (H permuted into sweep order, dead fixed, dampened) J; only its lower triangle is read.
    global_pool()->parallel_for(K, 16, [&](int64_t a0, int64_t a1) {
      for (int64_t a = a0; a < a1; ++a) {
        const int64_t i = perm[(size_t)(K - 1 - a)];
        for (int64_t b = 0; b <= a; ++b) {
          const int64_t j = perm[(size_t)(K - 1 - b)];
          P[a * K + b] = (double)H[i * K + j];
        }
        P[a * K + a] = (dead[i] ? 1.0 : (double)H[i * K + i]) + lambda;
      }
    });
    return cholesky_lower(P.data(), K, K);
  });
  invert_lower(P.data(), K, K);
  std::vector<float> Hinv((size_t)(K * K), 0.f);
  global_pool()->parallel_for(K, 16, [&](int64_t p0, int64_t p1) {
    for (int64_t p = p0; p < p1; ++p)
      for (int64_t q = p; q < K; ++q) Hinv[p * K + q] = (float)P[(K - 1 - p) * K + (K - 1 - q)];
  });
  return Hinv;
}

namespace {

// What the sweep works on, all in sweep order.
struct SweepState {
  int64_t N, K, group_size;  // group_size: effective (K when per channel)
  int maxq;
  float* W;                  // [N, K] weights, updated by the lazy batch updates of earlier blocks only
  const float* Hinv;         // [K, K] upper
  uint8_t* Q;                // [N, K] codes
  Grid* grids;               // [N] the current group's grid of each row
  double* row_loss;          // [N]
};

// Step 5a. One block [i1, i2) of the sweep for rows [n0, n1): Algorithm 1's inner loop. Rows are
// independent given Hinv, so each row runs the whole block on its own; Err1 [N, i2 - i1] receives the
// scaled errors the lazy update needs.
template <class FitGroup>
void sweep_block_rows(const SweepState& s, int64_t i1, int64_t i2, int64_t n0, int64_t n1, float* Err1,
                      const FitGroup& fit_group) {
  const int64_t count = i2 - i1;
  std::vector<float> W1((size_t)count);
  for (int64_t n = n0; n < n1; ++n) {
    // W1: this row's block, to be updated column by column. Grids are fitted on s.W (which this block
    // does not touch), as the reference does: a group starting inside the block sees the weights as
    // the earlier blocks left them.
    std::copy(s.W + n * s.K + i1, s.W + n * s.K + i2, W1.begin());
    float* err_row = Err1 + n * count;
    double loss = 0;
    for (int64_t i = 0; i < count; ++i) {
      const int64_t col = i1 + i;
      fit_group(n, col);
      const Grid& g = s.grids[n];
      const float w = W1[i];
      const int32_t q = quantize_value(w, g, s.maxq);
      const float w_hat = dequantize_value(q, g);
      const float d = s.Hinv[col * s.K + col];
      s.Q[n * s.K + col] = (uint8_t)q;
      const float err = (w - w_hat) / d;
      loss += (double)err * (double)err;
      // Error feedback to the rest of the block: W1[:, i:] -= err * Hinv[col, col:].
      const float* h_row = s.Hinv + col * s.K + i1;
      for (int64_t j = i + 1; j < count; ++j) W1[j] -= err * h_row[j];
      err_row[i] = err;
    }
    s.row_loss[n] += loss;
  }
}

// Step 5b. The lazy batch update: W[:, i2:] -= Err1 Hinv[i1:i2, i2:].
void lazy_batch_update(const SweepState& s, int64_t i1, int64_t i2, const float* Err1) {
  if (i2 >= s.K) return;
  gemm<float>(false, false, s.N, s.K - i2, i2 - i1, -1.f, Err1, i2 - i1, s.Hinv + i1 * s.K + i2, s.K, s.W + i2, s.K,
              true);
}

}  // namespace

GptqReport gptq_quantize(const float* W_in, int64_t N, int64_t K, const float* H, const GptqOptions& opt,
                         const GptqOutput& out) {
  validate_gptq_options(opt, K);
  require(N > 0, "E_SHAPE", "GPTQ needs a positive output dimension, got " + std::to_string(N));
  require(out.q && out.scales && out.zeros && out.g_idx, "E_ARGUMENT", "gptq_quantize: missing output buffer");
  require(N * K <= ((int64_t)1 << 40), "E_SHAPE", "weight too large");
  require_finite(W_in, N * K, "W");
  require_finite(H, K * K, "H");

  GptqReport report;
  const int maxq = weight_format(opt.bits).maxq();
  const int64_t gs = effective_group_size(K, opt.group_size);
  const GridOptions grid_opt = gptq_grid_options(opt);

  // 1. Dead inputs.
  std::vector<float> W0(W_in, W_in + N * K);
  const std::vector<uint8_t> dead = zero_dead_inputs(H, W0.data(), N, K, report);

  // 2. Static groups: every group's grid from the original (dead-zeroed) W, in original column order.
  std::vector<Grid> static_grids;
  if (opt.static_groups) {
    const int64_t G = group_count(K, opt.group_size);
    static_grids.resize((size_t)(G * N));
    global_pool()->parallel_for(N, 8, [&](int64_t n0, int64_t n1) {
      for (int64_t n = n0; n < n1; ++n)
        for (int64_t g = 0; g < G; ++g) {
          const int64_t k0 = g * gs, len = std::min(gs, K - k0);
          static_grids[g * N + n] = fit_group_grid(W0.data() + n * K + k0, len, grid_opt);
        }
    });
    for (int64_t g = 0; g < G; ++g)
      for (int64_t n = 0; n < N; ++n) {
        out.scales[g * N + n] = static_grids[g * N + n].scale;
        out.zeros[g * N + n] = static_grids[g * N + n].zero;
      }
  }

  // 3. Act-order: W's columns in sweep order (H is permuted while it is factored).
  const std::vector<int32_t> perm = sweep_order(H, K, opt.act_order);
  std::vector<float> W((size_t)(N * K));
  global_pool()->parallel_for(N, 16, [&](int64_t n0, int64_t n1) {
    for (int64_t n = n0; n < n1; ++n)
      for (int64_t p = 0; p < K; ++p) W[n * K + p] = W0[n * K + perm[p]];
  });
  W0 = std::vector<float>();

  // 4. Hinv.
  const std::vector<float> Hinv = inverse_hessian_factor(H, K, perm, dead, opt, report);

  // 5. The sweep.
  std::vector<uint8_t> Q((size_t)(N * K));
  std::vector<Grid> grids((size_t)N);
  std::vector<double> row_loss((size_t)N, 0.0);
  SweepState s{N, K, gs, maxq, W.data(), Hinv.data(), Q.data(), grids.data(), row_loss.data()};
  // The grid of row n when the sweep reaches sweep position col: a new group starts every gs
  // positions (fitted then, over the next gs columns of s.W), or the static grid of col's original group.
  auto fit_group = [&](int64_t n, int64_t col) {
    if (opt.static_groups) {
      grids[n] = static_grids[(perm[col] / gs) * N + n];
    } else if (col % gs == 0) {
      const int64_t len = std::min(gs, K - col);
      grids[n] = fit_group_grid(s.W + n * K + col, len, grid_opt);
      out.scales[(col / gs) * N + n] = grids[n].scale;
      out.zeros[(col / gs) * N + n] = grids[n].zero;
    }
  };
  const int64_t B = opt.block_size;
  std::vector<float> Err1((size_t)(N * std::min(B, K)));
  for (int64_t i1 = 0; i1 < K; i1 += B) {
    const int64_t i2 = std::min(K, i1 + B);
    global_pool()->parallel_for(N, 4, [&](int64_t n0, int64_t n1) { sweep_block_rows(s, i1, i2, n0, n1, Err1.data(), fit_group); });
    lazy_batch_update(s, i1, i2, Err1.data());
  }
  report.loss = 0.5 * std::accumulate(row_loss.begin(), row_loss.end(), 0.0);

  // 6. Back to the original column order.
  global_pool()->parallel_for(N, 16, [&](int64_t n0, int64_t n1) {
    for (int64_t n = n0; n < n1; ++n)
      for (int64_t p = 0; p < K; ++p) out.q[n * K + perm[p]] = Q[n * K + p];
  });
  write_g_idx(perm, K, opt, out.g_idx);
  return report;
}

}  // namespace lowbit

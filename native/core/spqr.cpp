// SpQR on the CPU (docs/SPQR.md):
//   1. dead inputs, act-order and Hinv exactly as GPTQ (gptq.hpp's shared steps)
//   2. the layer's typical error  mean_p var_n(W[:, p]) / Hinv_pp²; threshold T = τ · typical
//   3. the sweep, column by column over all rows, in lazy-batch blocks (a multiple of β1):
//      at a group start: each row's first-level grid (min–max, real zero) fitted on the group's
//      current weights without the leave-one-out outlier candidates, then the scales and zeros of
//      every β2 rows quantized to stat_bits on their own min–max grid (fp16 offset and step);
//      per column: quantize with the decoded statistics; a weight whose scaled error exceeds T is an
//      outlier (within the budget, shared group by group) and keeps an fp16 residual; error
//      feedback as GPTQ.
//   4. pack codes and statistics into bit streams, outliers into CSR.
#include "spqr.hpp"

#include <algorithm>
#include <cmath>
#include <numeric>

#include "common.hpp"
#include "dtype.hpp"
#include "gptq.hpp"
#include "linalg.hpp"
#include "thread_pool.hpp"

namespace lowbit {

int64_t bitstream_bytes(int64_t count, int bits) { return ceil_div(count * bits, 8); }

uint32_t bitstream_get(const uint8_t* stream, int64_t i, int bits) {
  const int64_t bit = i * bits;
  uint32_t v = 0;
  for (int b = 0; b < bits; ++b) {
    const int64_t j = bit + b;
    v |= (uint32_t)((stream[j >> 3] >> (j & 7)) & 1u) << b;
  }
  return v;
}

void bitstream_put(uint8_t* stream, int64_t i, int bits, uint32_t value) {
  const int64_t bit = i * bits;
  for (int b = 0; b < bits; ++b) {
    const int64_t j = bit + b;
    const uint8_t mask = (uint8_t)(1u << (j & 7));
    if ((value >> b) & 1u)
      stream[j >> 3] |= mask;
    else
      stream[j >> 3] &= (uint8_t)~mask;
  }
}

namespace {

// Column indices and the permutation are 16-bit in the file where they fit.
int index_bits(int64_t K) { return K <= 65536 ? 16 : 32; }
// So are the outlier row pointers (unsigned, each at most nnz).
int rowptr_bits(int64_t outliers) { return outliers <= 65535 ? 16 : 32; }

}  // namespace

SpqrBits spqr_storage_bits(int bits, int stat_bits, int64_t N, int64_t K, int64_t beta1, int64_t beta2,
                           bool has_perm, int64_t outliers) {
  const int64_t G = ceil_div(K, beta1), NB = ceil_div(N, beta2);
  SpqrBits b;
  b.weights = 8 * bitstream_bytes(N * K, bits);
  b.first_level = 2 * 8 * bitstream_bytes(N * G, stat_bits);
  b.second_level = 2 * G * NB * 2 * 16;
  b.permutation = has_perm ? K * index_bits(K) : 0;
  // a linear without outliers stores no outlier tensors at all (not even its row pointers)
  b.outliers = outliers == 0 ? 0 : outliers * (16 + index_bits(K)) + (N + 1) * rowptr_bits(outliers);
  return b;
}

void validate_spqr_options(const SpqrOptions& opt, int64_t K) {
  require(opt.bits >= 2 && opt.bits <= 4, "E_BITS", "SpQR bits must be 2, 3 or 4, got " + std::to_string(opt.bits));
  require(K > 0, "E_SHAPE", "SpQR needs a positive input dimension, got " + std::to_string(K));
  require(opt.beta1 >= 2 && opt.beta1 <= 65536, "E_GROUP_SIZE",
          "beta1 (first-level group) must be in [2, 65536], got " + std::to_string(opt.beta1));
  require(opt.beta2 >= 1 && opt.beta2 <= 65536, "E_GROUP_SIZE",
          "beta2 (second-level group) must be in [1, 65536], got " + std::to_string(opt.beta2));
  require(opt.stat_bits >= 1 && opt.stat_bits <= 8, "E_BITS",
          "stat_bits must be in [1, 8], got " + std::to_string(opt.stat_bits));
  require(opt.outlier_threshold > 0, "E_ARGUMENT", "the outlier threshold tau must be > 0 (+inf: no outliers)");
  require(opt.outlier_budget > 0 && opt.outlier_budget < 1, "E_ARGUMENT", "the outlier budget must be in (0, 1)");
  require(std::isfinite(opt.damp_percent) && opt.damp_percent >= 0, "E_ARGUMENT", "damp_percent must be a finite number >= 0");
  require(opt.max_damp_raises >= 0 && opt.max_damp_raises <= 20, "E_ARGUMENT", "max_damp_raises must be in [0, 20]");
  require(opt.block_size > 0, "E_ARGUMENT", "block_size must be positive");
  require(!opt.stat_search || opt.grid_search, "E_ARGUMENT",
          "stat_search (the second-level search) works on the searched first-level fits: it needs grid_search");
}

SpqrMatrix SpqrResult::view() const {
  SpqrMatrix m;
  m.bits = bits;
  m.stat_bits = stat_bits;
  m.N = N;
  m.K = K;
  m.beta1 = beta1;
  m.beta2 = beta2;
  m.qweight = qweight.data();
  m.scale_codes = scale_codes.data();
  m.zero_codes = zero_codes.data();
  m.scale_stats = scale_stats.data();
  m.zero_stats = zero_stats.data();
  m.perm = perm.empty() ? nullptr : perm.data();
  m.outlier_rowptr = outlier_rowptr.data();
  m.outlier_cols = outlier_cols.data();
  m.outlier_values = outlier_values.data();
  return m;
}

void validate_spqr(const SpqrMatrix& W, const SpqrLengths& len) {
  require(W.bits >= 2 && W.bits <= 4, "E_BITS", "SpQR bits must be 2, 3 or 4, got " + std::to_string(W.bits));
  require(W.stat_bits >= 1 && W.stat_bits <= 8, "E_BITS", "SpQR stat_bits must be in [1, 8], got " + std::to_string(W.stat_bits));
  require(W.N > 0 && W.K > 0 && W.N <= ((int64_t)1 << 31) && W.K <= ((int64_t)1 << 31) && W.N * W.K <= ((int64_t)1 << 40),
          "E_SHAPE", "SpQR weight shape out of range: N " + std::to_string(W.N) + ", K " + std::to_string(W.K));
  require(W.beta1 >= 2 && W.beta1 <= 65536 && W.beta2 >= 1 && W.beta2 <= 65536, "E_GROUP_SIZE",
          "SpQR group sizes out of range: beta1 " + std::to_string(W.beta1) + ", beta2 " + std::to_string(W.beta2));
  require(W.qweight && W.scale_codes && W.zero_codes && W.scale_stats && W.zero_stats && W.outlier_rowptr,
          "E_ARGUMENT", "SpQR weights: missing buffer");
  const int64_t G = W.groups(), NB = W.row_blocks();
  auto need = [](int64_t have, int64_t want, const char* what) {
    require(have == want, "E_BUFFER",
            std::string("SpQR ") + what + " holds " + std::to_string(have) + " elements, expected " + std::to_string(want));
  };
  need(len.qweight, bitstream_bytes(W.N * W.K, W.bits), "qweight");
  need(len.scale_codes, bitstream_bytes(W.N * G, W.stat_bits), "scale_codes");
  need(len.zero_codes, bitstream_bytes(W.N * G, W.stat_bits), "zero_codes");
  need(len.scale_stats, G * NB * 2, "scale_stats");
  need(len.zero_stats, G * NB * 2, "zero_stats");
  need(len.outlier_rowptr, W.N + 1, "outlier_rowptr");
  if (W.perm) {
    need(len.perm, W.K, "perm");
    std::vector<uint8_t> seen((size_t)W.K, 0);
    for (int64_t p = 0; p < W.K; ++p) {
      const int32_t k = W.perm[p];
      require(k >= 0 && k < W.K && !seen[(size_t)k], "E_SPQR_FORMAT",
              "SpQR perm is not a permutation of [0, K): entry " + std::to_string(p) + " = " + std::to_string(k));
      seen[(size_t)k] = 1;
    }
  }
  require(W.outlier_rowptr[0] == 0, "E_SPQR_FORMAT", "SpQR outlier_rowptr must start at 0");
  for (int64_t n = 0; n < W.N; ++n)
    require(W.outlier_rowptr[n + 1] >= W.outlier_rowptr[n], "E_SPQR_FORMAT",
            "SpQR outlier_rowptr decreases at row " + std::to_string(n));
  const int64_t nnz = W.outlier_rowptr[W.N];
  need(len.outlier_cols, nnz, "outlier_cols");
  need(len.outlier_values, nnz, "outlier_values");
  require(nnz == 0 || (W.outlier_cols && W.outlier_values), "E_ARGUMENT", "SpQR weights: missing outlier buffers");
  for (int64_t n = 0; n < W.N; ++n)
    for (int64_t i = W.outlier_rowptr[n]; i < W.outlier_rowptr[n + 1]; ++i) {
      const int32_t c = W.outlier_cols[i];
      require(c >= 0 && c < W.K && (i == W.outlier_rowptr[n] || c > W.outlier_cols[i - 1]), "E_SPQR_FORMAT",
              "SpQR outlier columns of row " + std::to_string(n) + " must be ascending sweep positions in [0, K)");
    }
}

namespace {

// The decoded value of a second-level group's code: offset + step · code, in f32.
inline float decode_stat(const uint16_t* stats, int64_t at, uint32_t code) {
  return f16_to_f32(stats[2 * at]) + f16_to_f32(stats[2 * at + 1]) * (float)code;
}

// Smallest first-level scale: keeps the fp16 offset of a second-level group positive.
constexpr float kMinScale = 1e-7f;

struct RealGrid {
  float scale, zero;  // w ≈ scale · (q − zero), q in [0, maxq]; zero need not be an integer
};

// Min–max grid of the values w[i] with keep[i] (all when keep is null). A group that is (nearly)
// constant gets its range widened to include 0, so its zero stays small.
RealGrid fit_real_grid(const float* w, int64_t n, const uint8_t* keep, int maxq) {
  float lo = INFINITY, hi = -INFINITY;
  for (int64_t i = 0; i < n; ++i)
    if (!keep || keep[i]) {
      lo = std::min(lo, w[i]);
      hi = std::max(hi, w[i]);
    }
  if (!(lo <= hi)) lo = hi = 0.f;
  if (hi - lo <= 1e-3f * std::max(std::fabs(lo), std::fabs(hi))) {
    lo = std::min(lo, 0.f);
    hi = std::max(hi, 0.f);
  }
  RealGrid g;
  g.scale = std::max((hi - lo) / (float)maxq, kMinScale);
  g.zero = -lo / g.scale;
  return g;
}

inline float quantize_real(float w, float scale, float zero, int maxq, int32_t* code) {
  float q = std::nearbyint(w / scale + zero);
  q = q < 0.f ? 0.f : (q > (float)maxq ? (float)maxq : q);
  *code = (int32_t)q;
  return scale * (q - zero);
}

// The scaled squared error Σ c[i] (w[i] − ŵ[i])² of the values with keep[i] (all when keep is null)
// on the grid (scale, zero): the group's share of GPTQ's objective, c[i] = 1 / Hinv_pp².
double grid_error(const float* w, const float* c, int64_t n, const uint8_t* keep, float scale, float zero, int maxq) {
  double e = 0;
  int32_t code;
  for (int64_t i = 0; i < n; ++i)
    if (!keep || keep[i]) {
      const double d = (double)w[i] - (double)quantize_real(w[i], scale, zero, maxq, &code);
      e += d * d * (double)c[i];
    }
  return e;
}

// The grid search over shrunken ranges: each end of [lo, hi] moves inward by 0..kShrinkSteps steps of
// kShrinkStep · (hi − lo), independently (at 2 bits a range that clips the extremes is usually better).
constexpr int kShrinkSteps = 12;
constexpr float kShrinkStep = 0.03f;
// Rounds of alternating refinement after the range search.
constexpr int kRefineRounds = 4;
// Every choice of the search (range, refinement, statistic codes, second-level grid) takes a
// candidate only if it lowers the error by more than this fraction: candidates that are the same
// grid up to rounding (common: the refinement converges to one optimum from many ranges) then never
// swap on f32 noise, so the choice is stable (and a float64 reference makes the same one).
constexpr double kMinGain = 1e-4;
inline bool better(double e, double best) { return e < best * (1.0 - kMinGain); }
// The second-level search (stat_search): each end of the rows' range of fitted scales (or zeros)
// moves inward by 0..kStatShrinkSteps steps of kStatShrinkStep · range; up to kStatRounds rounds.
constexpr int kStatShrinkSteps = 6;
constexpr float kStatShrinkStep = 0.05f;
constexpr int kStatRounds = 2;

// The grid of the kept w[i] with the lowest grid_error: the best shrunken range (the min–max grid is
// the unshrunken candidate, so never worse), then rounds that alternate the codes' optimal values
// (nearest level) with the weighted least-squares (scale, zero) for those codes, each kept only if
// it lowers the error. Returns the grid and writes its error.
RealGrid search_real_grid(const float* w, const float* c, int64_t n, const uint8_t* keep, int maxq, double* error_out) {
  const RealGrid minmax = fit_real_grid(w, n, keep, maxq);
  RealGrid best = minmax;
  double best_e = grid_error(w, c, n, keep, best.scale, best.zero, maxq);
  const float lo = -minmax.zero * minmax.scale, range = minmax.scale * (float)maxq;
  for (int a = 0; a <= kShrinkSteps; ++a)
    for (int b = 0; b <= kShrinkSteps; ++b) {
      if (a == 0 && b == 0) continue;
      const float l = lo + (float)a * kShrinkStep * range, h = lo + range - (float)b * kShrinkStep * range;
      RealGrid g;
      g.scale = std::max((h - l) / (float)maxq, kMinScale);
      g.zero = -l / g.scale;
      const double e = grid_error(w, c, n, keep, g.scale, g.zero, maxq);
      if (better(e, best_e)) best = g, best_e = e;
    }
  for (int round = 0; round < kRefineRounds; ++round) {
    // w ≈ s·q + m by weighted least squares over the current codes q; zero = −m / s
    double sc = 0, sq = 0, sw = 0, sqq = 0, sqw = 0;
    int32_t q;
    for (int64_t i = 0; i < n; ++i)
      if (!keep || keep[i]) {
        quantize_real(w[i], best.scale, best.zero, maxq, &q);
        sc += c[i], sq += c[i] * (double)q, sw += c[i] * (double)w[i];
        sqq += c[i] * (double)q * q, sqw += c[i] * (double)q * w[i];
      }
    const double det = sc * sqq - sq * sq;
    if (!(det > 1e-12 * sc * sqq)) break;  // one code only: no slope to fit
    const double s = (sc * sqw - sq * sw) / det, m = (sw - s * sq) / sc;
    if (!(s >= (double)kMinScale)) break;
    RealGrid g;
    g.scale = (float)s;
    g.zero = (float)(-m / s);
    const double e = grid_error(w, c, n, keep, g.scale, g.zero, maxq);
    if (!better(e, best_e)) break;
    best = g, best_e = e;
  }
  *error_out = best_e;
  return best;
}

// Leave-one-out: for each i, how much the group's Hinv-scaled squared error drops when w[i] is left
// out of the fit (and not quantized at all). Returns the weight with the largest drop if that drop
// exceeds `threshold` (else -1), and the drop.
int64_t leave_one_out(const float* w, const float* inv_d2, int64_t n, int maxq, double threshold, double* drop_out) {
  auto group_error = [&](const RealGrid& g, int64_t skip) {
    double e = 0;
    int32_t code;
    for (int64_t j = 0; j < n; ++j) {
      if (j == skip) continue;
      const double d = (double)w[j] - (double)quantize_real(w[j], g.scale, g.zero, maxq, &code);
      e += d * d * inv_d2[j];
    }
    return e;
  };
  const double base = group_error(fit_real_grid(w, n, nullptr, maxq), -1);
  std::vector<uint8_t> keep((size_t)n, 1);
  int64_t best = -1;
  double best_drop = threshold;
  for (int64_t i = 0; i < n; ++i) {
    keep[(size_t)i] = 0;
    const double drop = base - group_error(fit_real_grid(w, n, keep.data(), maxq), i);
    keep[(size_t)i] = 1;
    if (drop > best_drop) {
      best_drop = drop;
      best = i;
    }
  }
  *drop_out = best_drop;
  return best;
}

// The fp16 (offset, step) of a stat_bits grid from lo to hi: offset = fp16(lo), step = fp16((hi − offset)
// / maxc), 0 when hi is not above the offset.
void stat_grid(float lo, float hi, int stat_bits, uint16_t* offset_step) {
  const int maxc = (1 << stat_bits) - 1;
  const auto f16 = [](float x) { return f32_to_f16(std::min(std::max(x, -65504.f), 65504.f)); };
  const uint16_t off = f16(lo);
  const float off32 = f16_to_f32(off);
  offset_step[0] = off;
  offset_step[1] = hi > off32 ? f16((hi - off32) / (float)maxc) : (uint16_t)0;
}

// The nearest code of v on a grid (offset, step).
inline uint8_t stat_code(float v, const uint16_t* offset_step, int stat_bits) {
  const int maxc = (1 << stat_bits) - 1;
  const float off32 = f16_to_f32(offset_step[0]), step32 = f16_to_f32(offset_step[1]);
  const float c = step32 > 0.f ? std::nearbyint((v - off32) / step32) : 0.f;
  return (uint8_t)(c < 0.f ? 0.f : (c > (float)maxc ? (float)maxc : c));
}

// Quantizes values v[0..m) on a stat_bits min–max grid: writes codes and the fp16 (offset, step).
void quantize_stats(const float* v, int64_t m, int stat_bits, uint8_t* codes, uint16_t* offset_step) {
  float lo = v[0], hi = v[0];
  for (int64_t i = 1; i < m; ++i) {
    lo = std::min(lo, v[i]);
    hi = std::max(hi, v[i]);
  }
  stat_grid(lo, hi, stat_bits, offset_step);
  for (int64_t i = 0; i < m; ++i) codes[i] = stat_code(v[i], offset_step, stat_bits);
}

// One row's (scale code, zero code) under its block's second-level grids (offset, step pairs) with
// the lowest grid_error: every pair within kCodeRadius of the given codes (all pairs at ≤ 3 statistic
// bits); the given pair is kept unless another is strictly better. Returns the error.
constexpr int kCodeRadius = 4;
double search_stat_codes(const float* w, const float* c, int64_t n, const uint8_t* keep, const uint16_t* s_stats,
                         const uint16_t* z_stats, int stat_bits, int maxq, uint8_t* sc, uint8_t* zc) {
  const int maxc = (1 << stat_bits) - 1, radius = stat_bits <= 3 ? maxc : kCodeRadius;
  const int s0 = *sc, z0 = *zc;
  double best_e = grid_error(w, c, n, keep, decode_stat(s_stats, 0, s0), decode_stat(z_stats, 0, z0), maxq);
  for (int s = std::max(0, s0 - radius); s <= std::min(maxc, s0 + radius); ++s)
    for (int z = std::max(0, z0 - radius); z <= std::min(maxc, z0 + radius); ++z) {
      if (s == s0 && z == z0) continue;
      const double e = grid_error(w, c, n, keep, decode_stat(s_stats, 0, (uint32_t)s), decode_stat(z_stats, 0, (uint32_t)z), maxq);
      if (better(e, best_e)) best_e = e, *sc = (uint8_t)s, *zc = (uint8_t)z;
    }
  return best_e;
}

}  // namespace

SpqrResult spqr_quantize(const float* W_in, int64_t N, int64_t K, const float* H, const SpqrOptions& opt) {
  validate_spqr_options(opt, K);
  require(N > 0, "E_SHAPE", "SpQR needs a positive output dimension, got " + std::to_string(N));
  require(N * K <= ((int64_t)1 << 40) && K <= ((int64_t)1 << 31) && N <= ((int64_t)1 << 31), "E_SHAPE", "weight too large");
  require_finite(W_in, N * K, "W");
  require_finite(H, K * K, "H");

  const int maxq = (1 << opt.bits) - 1;
  const int64_t beta1 = opt.beta1, beta2 = opt.beta2;
  const int64_t G = ceil_div(K, beta1), NB = ceil_div(N, beta2);
  SpqrResult r;
  r.bits = opt.bits;
  r.stat_bits = opt.stat_bits;
  r.N = N;
  r.K = K;
  r.beta1 = beta1;
  r.beta2 = beta2;
  SpqrReport& report = r.report;

  // 1. GPTQ's steps: dead inputs, sweep order, Hinv.
  GptqOptions gopt;
  gopt.damp_percent = opt.damp_percent;
  gopt.max_damp_raises = opt.max_damp_raises;
  GptqReport greport;
  std::vector<float> W0(W_in, W_in + N * K);
  const std::vector<uint8_t> dead = zero_dead_inputs(H, W0.data(), N, K, greport);
  const std::vector<int32_t> perm = sweep_order(H, K, opt.act_order);
  std::vector<float> W((size_t)(N * K));
  global_pool()->parallel_for(N, 16, [&](int64_t n0, int64_t n1) {
    for (int64_t n = n0; n < n1; ++n)
      for (int64_t p = 0; p < K; ++p) W[n * K + p] = W0[n * K + perm[p]];
  });
  W0 = std::vector<float>();
  const std::vector<float> Hinv = inverse_hessian_factor(H, K, perm, dead, gopt, greport);
  report.damp_percent = greport.damp_percent;
  report.damp = greport.damp;
  report.damp_raises = greport.damp_raises;
  report.dead_inputs = greport.dead_inputs;
  report.warnings = greport.warnings;
  std::vector<float> inv_d2((size_t)K);
  for (int64_t p = 0; p < K; ++p) {
    const double d = Hinv[p * K + p];
    inv_d2[p] = (float)(1.0 / (d * d));
  }

  // 2. The typical error and the outlier threshold.
  double typical = 0;
  for (int64_t p = 0; p < K; ++p) {
    double mean = 0, sq = 0;
    for (int64_t n = 0; n < N; ++n) mean += W[n * K + p];
    mean /= (double)N;
    for (int64_t n = 0; n < N; ++n) sq += (W[n * K + p] - mean) * (W[n * K + p] - mean);
    typical += sq / (double)N * inv_d2[p];
  }
  typical /= (double)K;
  const bool outliers_on = std::isfinite(opt.outlier_threshold);
  const double threshold = outliers_on ? opt.outlier_threshold * typical : INFINITY;
  report.typical_error = typical;
  report.outlier_threshold = threshold;

  // 3. The sweep.
  std::vector<uint8_t> Q((size_t)(N * K)), scode((size_t)(N * G)), zcode((size_t)(N * G));
  r.scale_stats.assign((size_t)(G * NB * 2), 0);
  r.zero_stats.assign((size_t)(G * NB * 2), 0);
  std::vector<float> row_scale((size_t)N), row_zero((size_t)N);  // the current group's decoded statistics
  std::vector<float> fit_scale((size_t)N), fit_zero((size_t)N);  // ... their min–max fit
  std::vector<float> search_scale((size_t)N), search_zero((size_t)N);  // ... their searched fit
  // The two candidate second-level grids of each block ((offset, step) of the scales, then of the
  // zeros), each row's codes under them and its error (grid_search only).
  std::vector<uint16_t> stats_a((size_t)(NB * 4)), stats_b((size_t)(NB * 4));
  std::vector<uint8_t> sc_a((size_t)N), zc_a((size_t)N), sc_b((size_t)N), zc_b((size_t)N);
  std::vector<double> err_a((size_t)N), err_b((size_t)N);
  // Each row's chosen statistic codes and error for the current group, and a candidate's (stat_search).
  std::vector<uint8_t> cur_sc((size_t)N), cur_zc((size_t)N), try_sc((size_t)N), try_zc((size_t)N);
  std::vector<double> cur_err((size_t)N), try_err((size_t)N);
  std::vector<std::vector<std::pair<int32_t, uint16_t>>> row_outliers((size_t)N);
  std::vector<double> row_loss((size_t)N, 0.0);
  std::vector<int32_t> col_code((size_t)N);
  std::vector<float> col_what((size_t)N), col_err2((size_t)N);
  std::vector<uint8_t> col_outlier((size_t)N);
  std::vector<int32_t> candidates;
  const int64_t B = ceil_div(opt.block_size, beta1) * beta1;
  std::vector<float> Err1((size_t)(N * std::min(B, ceil_div(K, beta1) * beta1)));
  int64_t used = 0;

  // The budget through group g: floor(budget · N · min(K, (g + 1) · β1)) outliers. Each group gets its
  // share plus whatever earlier groups left unused.
  auto allowance = [&](int64_t g) {
    return (int64_t)std::floor(opt.outlier_budget * (double)N * (double)std::min(K, (g + 1) * beta1));
  };
  std::vector<int64_t> reserved((size_t)N, -1);  // sweep position of each row's reserved outlier in this group
  std::vector<double> loo_drop((size_t)N);
  int64_t pending = 0;                           // reserved outliers not yet swept

  // keep[i]: weight p0 + i of row n is fitted (not the row's reserved outlier)
  auto group_keep = [&](int64_t n, int64_t p0, int64_t len, uint8_t* keep) {
    std::fill(keep, keep + len, (uint8_t)1);
    if (reserved[n] >= 0) keep[reserved[n] - p0] = 0;
  };

  // The second-level search (stat_search) of the block of rows [n0, n0 + m) in the group at p0,
  // starting from its grids st (scale offset, step, zero offset, step) and each row's codes and error
  // in cur_*: for the scales' grid, then the zeros', every range [lo + a·δ·R, hi − b·δ·R] of the rows'
  // searched fits (a, b in 0..kStatShrinkSteps), then the least-squares (offset, step) of the fits on
  // their current codes; each candidate scored by the block's total error with every row re-taking
  // its best code pair under it, kept only if better. Up to kStatRounds rounds, while one helps.
  auto search_second_level = [&](int64_t p0, int64_t len, int64_t n0, int64_t m, uint16_t* st) {
    double best_e = 0;
    for (int64_t n = n0; n < n0 + m; ++n) best_e += cur_err[n];
    // The block's total error with component `comp` (0: scales, 1: zeros) on grid cand; rows start
    // from the nearest code of their fit on it and their current code of the other component.
    auto score = [&](int comp, const uint16_t* cand) {
      uint16_t trial[4];
      std::copy_n(st, 4, trial);
      std::copy_n(cand, 2, trial + 2 * comp);
      global_pool()->parallel_for(m, 8, [&](int64_t i0, int64_t i1) {
        std::vector<uint8_t> keep((size_t)len);
        for (int64_t n = n0 + i0; n < n0 + i1; ++n) {
          group_keep(n, p0, len, keep.data());
          uint8_t sc = comp == 0 ? stat_code(search_scale[n], trial, opt.stat_bits) : cur_sc[n];
          uint8_t zc = comp == 1 ? stat_code(search_zero[n], trial + 2, opt.stat_bits) : cur_zc[n];
          try_err[n] = search_stat_codes(W.data() + n * K + p0, inv_d2.data() + p0, len, keep.data(), trial, trial + 2,
                                         opt.stat_bits, maxq, &sc, &zc);
          try_sc[n] = sc;
          try_zc[n] = zc;
        }
      });
      double e = 0;
      for (int64_t n = n0; n < n0 + m; ++n) e += try_err[n];
      return e;
    };
    auto take = [&](int comp, const uint16_t* cand, double e) {
      std::copy_n(cand, 2, st + 2 * comp);
      best_e = e;
      for (int64_t n = n0; n < n0 + m; ++n) cur_sc[n] = try_sc[n], cur_zc[n] = try_zc[n], cur_err[n] = try_err[n];
    };
    // a decoded scale must stay positive: the scales' offset (code 0) at least kMinScale
    auto usable = [&](int comp, const uint16_t* cand) { return comp == 1 || f16_to_f32(cand[0]) >= kMinScale; };
    for (int round = 0; round < kStatRounds; ++round) {
      const double start = best_e;
      for (int comp = 0; comp < 2; ++comp) {
        const float* fit = (comp == 0 ? search_scale : search_zero).data();
        float lo = fit[n0], hi = fit[n0];
        for (int64_t n = n0 + 1; n < n0 + m; ++n) lo = std::min(lo, fit[n]), hi = std::max(hi, fit[n]);
        const float range = hi - lo;
        uint16_t cand[2];
        for (int a = 0; a <= kStatShrinkSteps; ++a)
          for (int bb = 0; bb <= kStatShrinkSteps; ++bb) {
            const float l = lo + (float)a * kStatShrinkStep * range, h = hi - (float)bb * kStatShrinkStep * range;
            if (h < l) continue;
            stat_grid(l, h, opt.stat_bits, cand);
            if (!usable(comp, cand)) continue;
            const double e = score(comp, cand);
            if (better(e, best_e)) take(comp, cand, e);
          }
        // least squares fit ≈ offset + step · code over the current codes
        double s1 = 0, sc = 0, sf = 0, scc = 0, scf = 0;
        for (int64_t n = n0; n < n0 + m; ++n) {
          const double c = comp == 0 ? cur_sc[n] : cur_zc[n];
          s1 += 1, sc += c, sf += fit[n], scc += c * c, scf += c * fit[n];
        }
        const double det = s1 * scc - sc * sc;
        if (det > 0) {
          const double step = (s1 * scf - sc * sf) / det, off = (sf - step * sc) / s1;
          if (step > 0 && std::fabs(off) <= 65504 && step <= 65504) {
            cand[0] = f32_to_f16((float)off);
            cand[1] = f32_to_f16((float)step);
            if (f16_to_f32(cand[1]) > 0.f && usable(comp, cand)) {
              const double e = score(comp, cand);
              if (better(e, best_e)) take(comp, cand, e);
            }
          }
        }
      }
      if (!better(best_e, start)) break;
    }
  };

  auto fit_group = [&](int64_t p0) {
    const int64_t g = p0 / beta1, len = std::min(beta1, K - p0);
    // a. each row's leave-one-out candidate; the largest drops, within the group's budget, are
    //    reserved as outliers and left out of the fit
    std::fill(reserved.begin(), reserved.end(), -1);
    pending = 0;
    if (outliers_on) {
      global_pool()->parallel_for(N, 8, [&](int64_t n0, int64_t n1) {
        for (int64_t n = n0; n < n1; ++n) {
          const int64_t i = leave_one_out(W.data() + n * K + p0, inv_d2.data() + p0, len, maxq, threshold, &loo_drop[n]);
          reserved[n] = i < 0 ? -1 : p0 + i;
        }
      });
      candidates.clear();
      for (int64_t n = 0; n < N; ++n)
        if (reserved[n] >= 0) candidates.push_back((int32_t)n);
      const int64_t room = std::max<int64_t>(0, allowance(g) - used);
      if ((int64_t)candidates.size() > room) {
        std::stable_sort(candidates.begin(), candidates.end(), [&](int32_t a, int32_t b) { return loo_drop[a] > loo_drop[b]; });
        for (size_t i = (size_t)room; i < candidates.size(); ++i) reserved[candidates[i]] = -1;
      }
      pending = std::min<int64_t>((int64_t)candidates.size(), room);
    }
    // b. first-level grids without the reserved weights: min–max, and the searched grid
    global_pool()->parallel_for(N, 16, [&](int64_t n0, int64_t n1) {
      std::vector<uint8_t> keep((size_t)len);
      for (int64_t n = n0; n < n1; ++n) {
        group_keep(n, p0, len, keep.data());
        const float* w = W.data() + n * K + p0;
        const RealGrid mm = fit_real_grid(w, len, keep.data(), maxq);
        fit_scale[n] = mm.scale;
        fit_zero[n] = mm.zero;
        if (opt.grid_search) {
          double e;
          const RealGrid sg = search_real_grid(w, inv_d2.data() + p0, len, keep.data(), maxq, &e);
          search_scale[n] = sg.scale;
          search_zero[n] = sg.zero;
        }
      }
    });
    // c. second-level statistics of every β2 rows, quantized on their own min–max grid. With the
    //    search: from the min–max fits and from the searched fits, each row then taking the pair of
    //    statistic codes with the lowest error under them; the block keeps whichever of the two gives
    //    the lower total error (so never more than min–max with rounded codes).
    for (int64_t b = 0; b < NB; ++b) {
      const int64_t n0 = b * beta2, m = std::min(beta2, N - n0);
      quantize_stats(fit_scale.data() + n0, m, opt.stat_bits, sc_a.data() + n0, stats_a.data() + b * 4);
      quantize_stats(fit_zero.data() + n0, m, opt.stat_bits, zc_a.data() + n0, stats_a.data() + b * 4 + 2);
      if (opt.grid_search) {
        quantize_stats(search_scale.data() + n0, m, opt.stat_bits, sc_b.data() + n0, stats_b.data() + b * 4);
        quantize_stats(search_zero.data() + n0, m, opt.stat_bits, zc_b.data() + n0, stats_b.data() + b * 4 + 2);
      }
    }
    if (opt.grid_search)
      global_pool()->parallel_for(N, 8, [&](int64_t n0, int64_t n1) {
        std::vector<uint8_t> keep((size_t)len);
        for (int64_t n = n0; n < n1; ++n) {
          group_keep(n, p0, len, keep.data());
          const float *w = W.data() + n * K + p0, *c = inv_d2.data() + p0;
          const uint16_t *a = stats_a.data() + n / beta2 * 4, *bb = stats_b.data() + n / beta2 * 4;
          err_a[n] = search_stat_codes(w, c, len, keep.data(), a, a + 2, opt.stat_bits, maxq, &sc_a[n], &zc_a[n]);
          err_b[n] = search_stat_codes(w, c, len, keep.data(), bb, bb + 2, opt.stat_bits, maxq, &sc_b[n], &zc_b[n]);
        }
      });
    for (int64_t b = 0; b < NB; ++b) {
      const int64_t n0 = b * beta2, m = std::min(beta2, N - n0);
      bool use_b = false;
      if (opt.grid_search) {
        double ea = 0, eb = 0;
        for (int64_t n = n0; n < n0 + m; ++n) ea += err_a[n], eb += err_b[n];
        use_b = better(eb, ea);
      }
      uint16_t st[4];
      std::copy_n((use_b ? stats_b : stats_a).data() + b * 4, 4, st);
      for (int64_t n = n0; n < n0 + m; ++n) {
        cur_sc[n] = use_b ? sc_b[n] : sc_a[n];
        cur_zc[n] = use_b ? zc_b[n] : zc_a[n];
        cur_err[n] = use_b ? err_b[n] : err_a[n];
      }
      if (opt.stat_search) search_second_level(p0, len, n0, m, st);
      std::copy(st, st + 2, r.scale_stats.data() + (g * NB + b) * 2);
      std::copy(st + 2, st + 4, r.zero_stats.data() + (g * NB + b) * 2);
      for (int64_t n = n0; n < n0 + m; ++n) {
        scode[n * G + g] = cur_sc[n];
        zcode[n * G + g] = cur_zc[n];
        row_scale[n] = decode_stat(st, 0, cur_sc[n]);
        row_zero[n] = decode_stat(st + 2, 0, cur_zc[n]);
      }
    }
  };

  for (int64_t i1 = 0; i1 < K; i1 += B) {
    const int64_t i2 = std::min(K, i1 + B), count = i2 - i1;
    for (int64_t p = i1; p < i2; ++p) {
      if (p % beta1 == 0) fit_group(p);
      const float d = Hinv[p * K + p];
      // a. every row's code and scaled error at column p
      global_pool()->parallel_for(N, 64, [&](int64_t n0, int64_t n1) {
        for (int64_t n = n0; n < n1; ++n) {
          const float w = W[n * K + p];
          col_what[n] = quantize_real(w, row_scale[n], row_zero[n], maxq, &col_code[n]);
          const float e = (w - col_what[n]) / d;
          col_err2[n] = e * e;
          col_outlier[n] = outliers_on && (reserved[n] == p || (double)col_err2[n] > threshold);
        }
      });
      // b. reserved outliers stay outliers; the other candidates share what is left of the
      //    group's budget (after the reserved ones still to come), largest scaled error first
      if (outliers_on) {
        candidates.clear();
        int64_t forced = 0;
        for (int64_t n = 0; n < N; ++n) {
          if (reserved[n] == p) ++forced;
          else if (col_outlier[n]) candidates.push_back((int32_t)n);
        }
        used += forced;
        pending -= forced;
        report.outlier_candidates += forced + (int64_t)candidates.size();
        const int64_t room = std::max<int64_t>(0, allowance(p / beta1) - used - pending);
        if ((int64_t)candidates.size() > room) {
          std::stable_sort(candidates.begin(), candidates.end(), [&](int32_t a, int32_t b) { return col_err2[a] > col_err2[b]; });
          for (size_t i = (size_t)room; i < candidates.size(); ++i) col_outlier[candidates[i]] = 0;
          candidates.resize((size_t)room);
        }
        used += (int64_t)candidates.size();
      }
      // c. outlier residuals, the error and its feedback to the rest of the block
      global_pool()->parallel_for(N, 64, [&](int64_t n0, int64_t n1) {
        for (int64_t n = n0; n < n1; ++n) {
          float* row = W.data() + n * K;
          const float w = row[p];
          float w_hat = col_what[n];
          if (col_outlier[n]) {
            const uint16_t residual = f32_to_f16(w - w_hat);
            w_hat += f16_to_f32(residual);
            row_outliers[n].emplace_back((int32_t)p, residual);
          }
          Q[n * K + p] = (uint8_t)col_code[n];
          const float err = (w - w_hat) / d;
          row_loss[n] += (double)err * (double)err;
          const float* h_row = Hinv.data() + p * K;
          for (int64_t j = p + 1; j < i2; ++j) row[j] -= err * h_row[j];
          Err1[n * count + (p - i1)] = err;
        }
      });
    }
    // The lazy batch update: W[:, i2:] -= Err1 Hinv[i1:i2, i2:].
    if (i2 < K)
      gemm<float>(false, false, N, K - i2, count, -1.f, Err1.data(), count, Hinv.data() + i1 * K + i2, K, W.data() + i2, K, true);
  }
  report.loss = 0.5 * std::accumulate(row_loss.begin(), row_loss.end(), 0.0);

  // 4. Pack.
  r.qweight.assign((size_t)bitstream_bytes(N * K, opt.bits), 0);
  for (int64_t i = 0; i < N * K; ++i) bitstream_put(r.qweight.data(), i, opt.bits, Q[i]);
  r.scale_codes.assign((size_t)bitstream_bytes(N * G, opt.stat_bits), 0);
  r.zero_codes.assign((size_t)bitstream_bytes(N * G, opt.stat_bits), 0);
  for (int64_t i = 0; i < N * G; ++i) {
    bitstream_put(r.scale_codes.data(), i, opt.stat_bits, scode[i]);
    bitstream_put(r.zero_codes.data(), i, opt.stat_bits, zcode[i]);
  }
  if (opt.act_order) r.perm = perm;
  r.outlier_rowptr.assign((size_t)(N + 1), 0);
  for (int64_t n = 0; n < N; ++n) {
    r.outlier_rowptr[n + 1] = r.outlier_rowptr[n] + (int32_t)row_outliers[n].size();
    for (const auto& [col, value] : row_outliers[n]) {
      r.outlier_cols.push_back(col);
      r.outlier_values.push_back(value);
    }
  }
  report.bits = spqr_storage_bits(opt.bits, opt.stat_bits, N, K, beta1, beta2, opt.act_order, r.outlier_rowptr[N]);
  return r;
}

void spqr_dequantize(const SpqrMatrix& W, float* out) {
  const int64_t G = W.groups(), NB = W.row_blocks();
  global_pool()->parallel_for(W.N, 8, [&](int64_t n0, int64_t n1) {
    for (int64_t n = n0; n < n1; ++n) {
      const int64_t b = n / W.beta2;
      for (int64_t p = 0; p < W.K; ++p) {
        const int64_t g = p / W.beta1;
        const float scale = decode_stat(W.scale_stats, g * NB + b, bitstream_get(W.scale_codes, n * G + g, W.stat_bits));
        const float zero = decode_stat(W.zero_stats, g * NB + b, bitstream_get(W.zero_codes, n * G + g, W.stat_bits));
        const float q = (float)bitstream_get(W.qweight, n * W.K + p, W.bits);
        out[n * W.K + (W.perm ? W.perm[p] : p)] = scale * (q - zero);
      }
      for (int64_t i = W.outlier_rowptr[n]; i < W.outlier_rowptr[n + 1]; ++i) {
        const int64_t p = W.outlier_cols[i];
        out[n * W.K + (W.perm ? W.perm[p] : p)] += f16_to_f32(W.outlier_values[i]);
      }
    }
  });
}

}  // namespace lowbit

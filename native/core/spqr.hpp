// SpQR (Dettmers et al., 2023): GPTQ's sweep with tiny first-level groups whose statistics are
// themselves quantized (bilevel), plus a sparse set of fp16 outliers. See shared METHODS.md "SpQR",
// docs/SPQR.md (the algorithm step by step) and docs/FORMATS.md "SpQR" (the stored layout).
//
// Everything lives in SWEEP ORDER: column p of the codes is original input column perm[p]; groups
// are β1 consecutive sweep positions; a product gathers x[perm] once per input row.
//
// One weight (row n, sweep column p, group g = p / β1, row block b = n / β2) decodes as
//   scale = s_off[g, b] + s_step[g, b] · scale_code[n, g]         (f32 arithmetic)
//   zero  = z_off[g, b] + z_step[g, b] · zero_code[n, g]
//   w     = scale · (code[n, p] − zero)  (+ the outlier residual at (n, p), if any)
// with s_off, s_step, z_off, z_step stored in fp16 and every code an unsigned integer.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace lowbit {

struct SpqrOptions {
  int bits = 3;                     // weight codes: 2, 3 or 4
  int64_t beta1 = 16;               // first-level group: sweep columns sharing one scale and zero
  int64_t beta2 = 16;               // second-level group: rows whose first-level statistics share one grid
  int stat_bits = 3;                // bits of each quantized first-level scale and zero (1..8)
  double outlier_threshold = 0.2;   // τ, relative to the layer's typical error; +inf: no outliers
  double outlier_budget = 0.01;     // at most this fraction of the weights become outliers, in (0, 1)
  double damp_percent = 0.01;       // lambda = damp_percent * mean(diag H), raised on failure as GPTQ's
  int max_damp_raises = 3;
  bool act_order = true;            // sweep columns by descending diag(H)
  // Fit each first-level group's scale and zero by search (lowest scaled error over shrunken
  // ranges, then over the quantized statistics' codes) instead of plain min–max.
  bool grid_search = true;
  // With grid_search: also search each block's second-level grids (the statistics' own offset and
  // step) for the lowest total scaled error instead of keeping min–max ones (docs/SPQR.md).
  bool stat_search = true;
  int64_t block_size = 128;         // lazy-batch block, rounded up to a multiple of beta1
};

// A view of one linear's SpQR weights (not owning), the unit the kernels and validation work on.
struct SpqrMatrix {
  int bits = 3, stat_bits = 3;
  int64_t N = 0, K = 0, beta1 = 16, beta2 = 16;
  const uint8_t* qweight = nullptr;       // bit stream of N·K codes, row-major in sweep order
  const uint8_t* scale_codes = nullptr;   // bit stream of N·G codes [N, G]
  const uint8_t* zero_codes = nullptr;    // bit stream of N·G codes [N, G]
  const uint16_t* scale_stats = nullptr;  // fp16 [G, NB, 2]: (offset, step) of each second-level group
  const uint16_t* zero_stats = nullptr;   // fp16 [G, NB, 2]
  const int32_t* perm = nullptr;          // [K] original column of each sweep position, or null (identity)
  const int32_t* outlier_rowptr = nullptr;  // [N + 1]
  const int32_t* outlier_cols = nullptr;    // [nnz] sweep positions, ascending within a row
  const uint16_t* outlier_values = nullptr; // fp16 [nnz]: w − (the dense part's value) at that position

  int64_t groups() const { return (K + beta1 - 1) / beta1; }
  int64_t row_blocks() const { return (N + beta2 - 1) / beta2; }
  int64_t outliers() const { return outlier_rowptr ? outlier_rowptr[N] : 0; }
};

// Byte length of a bit stream of `count` values of `bits` bits each (LSB-first, the last byte padded).
int64_t bitstream_bytes(int64_t count, int bits);
// Value i of a bit stream: bits [i·bits, (i+1)·bits), bit j being bit j % 8 of byte j / 8.
uint32_t bitstream_get(const uint8_t* stream, int64_t i, int bits);
void bitstream_put(uint8_t* stream, int64_t i, int bits, uint32_t value);

// The exact storage of one linear in the checkpoint layout (docs/FORMATS.md), in bits.
struct SpqrBits {
  int64_t weights = 0, first_level = 0, second_level = 0, permutation = 0, outliers = 0;
  int64_t total() const { return weights + first_level + second_level + permutation + outliers; }
};
SpqrBits spqr_storage_bits(int bits, int stat_bits, int64_t N, int64_t K, int64_t beta1, int64_t beta2,
                           bool has_perm, int64_t outliers);

// Checks a view against the lengths of the buffers behind it (elements) and every index in it:
// perm a permutation, row pointers monotone from 0, columns ascending and < K. Throws E_SHAPE /
// E_BUFFER / E_BITS / E_GROUP_SIZE / E_FORMAT.
struct SpqrLengths {
  int64_t qweight = 0, scale_codes = 0, zero_codes = 0, scale_stats = 0, zero_stats = 0, perm = 0, outlier_rowptr = 0,
          outlier_cols = 0, outlier_values = 0;
};
void validate_spqr(const SpqrMatrix& W, const SpqrLengths& len);

struct SpqrReport {
  double damp_percent = 0, damp = 0;
  int damp_raises = 0;
  int64_t dead_inputs = 0;
  double loss = 0;                 // 1/2 Σ (w − ŵ)² / Hinv_pp², as GPTQ's report
  double typical_error = 0;        // mean over columns of var_n(W[:, p]) / Hinv_pp²
  double outlier_threshold = 0;    // τ · typical_error, against which (w − ŵ)² / Hinv_pp² is compared
  int64_t outlier_candidates = 0;  // weights over the threshold before the budget cut
  SpqrBits bits;
  std::vector<std::string> warnings;
};

// The whole quantized linear, owning its buffers.
struct SpqrResult {
  int bits = 3, stat_bits = 3;
  int64_t N = 0, K = 0, beta1 = 16, beta2 = 16;
  std::vector<uint8_t> qweight, scale_codes, zero_codes;
  std::vector<uint16_t> scale_stats, zero_stats;
  std::vector<int32_t> perm;  // empty without act-order
  std::vector<int32_t> outlier_rowptr, outlier_cols;
  std::vector<uint16_t> outlier_values;
  SpqrReport report;

  SpqrMatrix view() const;
};

void validate_spqr_options(const SpqrOptions& opt, int64_t K);

// W: [N, K] f32 row-major, H: [K, K] f32 (both only read). Errors as gptq_quantize's, and
// E_ARGUMENT / E_BITS / E_GROUP_SIZE for bad options.
SpqrResult spqr_quantize(const float* W, int64_t N, int64_t K, const float* H, const SpqrOptions& opt);

// Expands W to f32 [N, K] in ORIGINAL column order (outliers included).
void spqr_dequantize(const SpqrMatrix& W, float* out);

}  // namespace lowbit

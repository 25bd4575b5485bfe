// Y = X · Wᵀ with W in SpQR form (spqr.hpp), on the CPU, without materialising W. Each thread takes
// one output row at a time: its first-level scales and zero points, decoded for all its groups at
// once (the second-level grids transposed at load time, so a row's are contiguous), then
//  - with groups of a multiple of 16 inputs (the default β1 = 16) and up to 4 rows of x: each 16
//    codes decoded straight into registers (16 codes of b ≤ 4 bits are 2b whole bytes: one 64-bit
//    load and per-lane shifts), scaled, and multiplied into the rows' sums without a buffer;
//  - else (more rows of x, or groups that split 16-code blocks): the row decoded into a buffer once,
//    then one dot product per gathered input row x[perm].
// The row's sparse outliers are added last.
//
// The checkpoint's bit streams are repacked once at load time (SpqrCpuWeights::from) so that every
// row of codes starts on a byte and every 8 codes start on a byte (spqr_gemm_avx2/avx512.cpp).
#pragma once

#include <cstdint>
#include <vector>

#include "spqr.hpp"

namespace lowbit {

struct SpqrCpuWeights {
  int bits = 3;
  int64_t N = 0, K = 0, beta1 = 16, beta2 = 16, G = 0, NB = 0;
  int64_t row_bytes = 0;               // ceil(K / 8) · bits: whole chunks of 8 codes (padding codes are 0)
  std::vector<uint8_t> codes;          // [N, row_bytes] + 8 bytes of tail padding for wide loads
  std::vector<uint8_t> scale_code, zero_code;  // [N, G]
  std::vector<float> s_off, s_step, z_off, z_step;  // [NB, G] the second-level grids, decoded
  std::vector<int32_t> perm;           // [K] or empty (identity)
  std::vector<int32_t> rowptr, cols;   // CSR outliers, sweep positions
  std::vector<float> values;

  // Repacks a validated view (validate_spqr) into the kernel layout.
  static SpqrCpuWeights from(const SpqrMatrix& W);
  int64_t padded_K() const { return (K + 15) / 16 * 16; }
};

// X: [M, K] f32 row-major (original column order), Y: [M, N] f32 (overwritten).
void spqr_gemm(const float* X, int64_t M, const SpqrCpuWeights& W, float* Y);

// The per-SIMD-level kernels (spqr_gemm_impl.hpp): rows [n0, n1) of Y from the gathered inputs
// Xp [M, padded_K] (zero beyond K). qf and w are scratch of padded_K floats, stats of 2·G.
#define LOWBIT_DECLARE_SPQR_KERNELS(ns)                                                                  \
  namespace ns {                                                                                         \
  void spqr_rows(const SpqrCpuWeights& W, const float* Xp, int64_t M, int64_t n0, int64_t n1, float* qf, \
                 float* w, float* stats, float* Y);                                                      \
  }
LOWBIT_DECLARE_SPQR_KERNELS(spqr_scalar)
LOWBIT_DECLARE_SPQR_KERNELS(spqr_avx2)
LOWBIT_DECLARE_SPQR_KERNELS(spqr_avx512)
#undef LOWBIT_DECLARE_SPQR_KERNELS

}  // namespace lowbit

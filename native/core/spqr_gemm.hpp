// Y = X · Wᵀ with W in SpQR form (spqr.hpp), on the CPU, without materialising W: each thread
// decodes one output row at a time (codes → f32 with its group's decoded statistics) into a row
// buffer, takes its dot product with every gathered input row x[perm], and adds the row's sparse
// outliers. Batch 1 and batched share the path; a row is decoded once per call whatever M is.
//
// The checkpoint's bit streams are repacked once at load time (SpqrCpuWeights::from) so that every
// row of codes starts on a byte and every 8 codes start on a byte: 8 codes of b bits are then one
// unaligned 32-bit load, a broadcast, a per-lane shift and a mask (spqr_gemm_avx2/avx512.cpp).
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
  std::vector<float> s_off, s_step, z_off, z_step;  // [G, NB] the second-level grids, decoded
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
// Xp [M, padded_K] (zero beyond K). qf and w are scratch of padded_K floats.
#define LOWBIT_DECLARE_SPQR_KERNELS(ns)                                                                  \
  namespace ns {                                                                                         \
  void spqr_rows(const SpqrCpuWeights& W, const float* Xp, int64_t M, int64_t n0, int64_t n1, float* qf, \
                 float* w, float* Y);                                                                    \
  }
LOWBIT_DECLARE_SPQR_KERNELS(spqr_scalar)
LOWBIT_DECLARE_SPQR_KERNELS(spqr_avx2)
LOWBIT_DECLARE_SPQR_KERNELS(spqr_avx512)
#undef LOWBIT_DECLARE_SPQR_KERNELS

}  // namespace lowbit

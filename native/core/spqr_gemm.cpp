#include "spqr_gemm.hpp"

#include <algorithm>

#include "dtype.hpp"
#include "packed_gemm.hpp"
#include "thread_pool.hpp"

namespace lowbit {

SpqrCpuWeights SpqrCpuWeights::from(const SpqrMatrix& W) {
  SpqrCpuWeights c;
  c.bits = W.bits;
  c.N = W.N;
  c.K = W.K;
  c.beta1 = W.beta1;
  c.beta2 = W.beta2;
  c.G = W.groups();
  c.NB = W.row_blocks();
  c.row_bytes = ceil_div(W.K, 8) * W.bits;
  c.codes.assign((size_t)(c.N * c.row_bytes + 8), 0);
  global_pool()->parallel_for(c.N, 16, [&](int64_t n0, int64_t n1) {
    for (int64_t n = n0; n < n1; ++n)
      for (int64_t p = 0; p < W.K; ++p)
        bitstream_put(c.codes.data() + n * c.row_bytes, p, W.bits, bitstream_get(W.qweight, n * W.K + p, W.bits));
  });
  c.scale_code.resize((size_t)(c.N * c.G));
  c.zero_code.resize((size_t)(c.N * c.G));
  for (int64_t i = 0; i < c.N * c.G; ++i) {
    c.scale_code[i] = (uint8_t)bitstream_get(W.scale_codes, i, W.stat_bits);
    c.zero_code[i] = (uint8_t)bitstream_get(W.zero_codes, i, W.stat_bits);
  }
  const int64_t S = c.G * c.NB;
  c.s_off.resize((size_t)S);
  c.s_step.resize((size_t)S);
  c.z_off.resize((size_t)S);
  c.z_step.resize((size_t)S);
  // [G, NB] in the checkpoint, [NB, G] here: a row's grids are then contiguous along its groups.
  for (int64_t g = 0; g < c.G; ++g)
    for (int64_t b = 0; b < c.NB; ++b) {
      const int64_t i = g * c.NB + b, t = b * c.G + g;
      c.s_off[t] = f16_to_f32(W.scale_stats[2 * i]);
      c.s_step[t] = f16_to_f32(W.scale_stats[2 * i + 1]);
      c.z_off[t] = f16_to_f32(W.zero_stats[2 * i]);
      c.z_step[t] = f16_to_f32(W.zero_stats[2 * i + 1]);
    }
  if (W.perm) c.perm.assign(W.perm, W.perm + W.K);
  c.rowptr.assign(W.outlier_rowptr, W.outlier_rowptr + W.N + 1);
  const int64_t nnz = W.outliers();
  c.cols.assign(W.outlier_cols, W.outlier_cols + nnz);
  c.values.resize((size_t)nnz);
  for (int64_t i = 0; i < nnz; ++i) c.values[i] = f16_to_f32(W.outlier_values[i]);
  return c;
}

void spqr_gemm(const float* X, int64_t M, const SpqrCpuWeights& W, float* Y) {
  const int64_t K = W.K, Kp = W.padded_K();
  std::vector<float> Xp((size_t)(M * Kp), 0.f);
  for (int64_t m = 0; m < M; ++m)
    for (int64_t p = 0; p < K; ++p) Xp[m * Kp + p] = X[m * K + (W.perm.empty() ? p : W.perm[p])];
  const SimdLevel level = active_simd();
  global_pool()->parallel_for(W.N, std::max<int64_t>(1, 4096 / std::max<int64_t>(1, K)), [&](int64_t n0, int64_t n1) {
    std::vector<float> qf((size_t)Kp, 0.f), w((size_t)Kp, 0.f), stats((size_t)(2 * W.G), 0.f);
    switch (level) {
      case SimdLevel::Avx512:
        spqr_avx512::spqr_rows(W, Xp.data(), M, n0, n1, qf.data(), w.data(), stats.data(), Y);
        break;
      case SimdLevel::Avx2: spqr_avx2::spqr_rows(W, Xp.data(), M, n0, n1, qf.data(), w.data(), stats.data(), Y); break;
      default: spqr_scalar::spqr_rows(W, Xp.data(), M, n0, n1, qf.data(), w.data(), stats.data(), Y); break;
    }
  });
}

}  // namespace lowbit

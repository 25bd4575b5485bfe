// The SpQR row kernel, compiled once per SIMD level like packed_gemm_impl.hpp: the including file
// defines LOWBIT_SPQR_NS, LOWBIT_TARGET and `struct SpqrVec` (W lanes: zero, set1, load, store,
// fma, mul, hsum, and codes8(p, bits): the 8 codes of one byte-aligned chunk as floats into out[0..8)).
#include <cstdint>
#include <cstring>

#include "spqr_gemm.hpp"

namespace lowbit {
namespace LOWBIT_SPQR_NS {

LOWBIT_TARGET void spqr_rows(const SpqrCpuWeights& W, const float* Xp, int64_t M, int64_t n0, int64_t n1, float* qf,
                             float* w, float* Y) {
  using V = SpqrVec;
  const int64_t K = W.K, Kp = W.padded_K(), chunks = (K + 7) / 8;
  for (int64_t n = n0; n < n1; ++n) {
    // 1. codes → floats (chunks of 8, each starting on a byte of the repacked row)
    const uint8_t* row = W.codes.data() + n * W.row_bytes;
    for (int64_t c = 0; c < chunks; ++c) V::codes8(row + c * W.bits, W.bits, qf + 8 * c);
    // 2. w = scale · (q − zero), group by group (w beyond K stays 0)
    const int64_t b = n / W.beta2;
    for (int64_t g = 0; g < W.G; ++g) {
      const int64_t at = g * W.NB + b;
      const float scale = W.s_off[at] + W.s_step[at] * (float)W.scale_code[n * W.G + g];
      const float zero = W.z_off[at] + W.z_step[at] * (float)W.zero_code[n * W.G + g];
      const float shift = -scale * zero;
      const int64_t p1 = g * W.beta1 + W.beta1 < K ? g * W.beta1 + W.beta1 : K;
      int64_t p = g * W.beta1;
      const typename V::F vs = V::set1(scale), vz = V::set1(shift);
      for (; p + V::W <= p1; p += V::W) V::store(w + p, V::fma(V::load(qf + p), vs, vz));
      for (; p < p1; ++p) w[p] = qf[p] * scale + shift;
    }
    // 3. one dot product per input row, plus the row's outliers
    for (int64_t m = 0; m < M; ++m) {
      const float* x = Xp + m * Kp;
      typename V::F acc0 = V::zero(), acc1 = V::zero();
      int64_t p = 0;
      for (; p + 2 * V::W <= Kp; p += 2 * V::W) {
        acc0 = V::fma(V::load(w + p), V::load(x + p), acc0);
        acc1 = V::fma(V::load(w + p + V::W), V::load(x + p + V::W), acc1);
      }
      for (; p + V::W <= Kp; p += V::W) acc0 = V::fma(V::load(w + p), V::load(x + p), acc0);
      float y = V::hsum(V::add(acc0, acc1));
      for (; p < Kp; ++p) y += w[p] * x[p];
      for (int32_t i = W.rowptr[n]; i < W.rowptr[n + 1]; ++i) y += W.values[i] * x[W.cols[i]];
      Y[m * W.N + n] = y;
    }
  }
}

}  // namespace LOWBIT_SPQR_NS
}  // namespace lowbit

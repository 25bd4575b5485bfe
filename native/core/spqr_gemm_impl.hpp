// The SpQR row kernel, compiled once per SIMD level like packed_gemm_impl.hpp: the including file
// defines LOWBIT_SPQR_NS, LOWBIT_TARGET and `struct SpqrVec` (W lanes: zero, set1, load, store,
// fma, fms (a·b − c), mul, hsum; bytes(p): W bytes as floats; codes8(p, bits): the 8 codes of one
// byte-aligned chunk as floats into out[0..8); codes16(p, bits, q): the 16 codes of 2·bits bytes as
// 16 / W vectors).
#include <cstdint>
#include <cstring>

#include "spqr_gemm.hpp"

namespace lowbit {
namespace LOWBIT_SPQR_NS {

using V = SpqrVec;
constexpr int kPer = 16 / V::W;  // vectors per 16 codes

// Row n's first-level statistics for all its groups: scale[g] and zs[g] = scale · zero, so that a
// weight is code · scale − zs.
LOWBIT_TARGET inline void row_stats(const SpqrCpuWeights& W, int64_t n, float* scale, float* zs) {
  const int64_t G = W.G, at = (n / W.beta2) * G;
  const uint8_t* sc = W.scale_code.data() + n * G;
  const uint8_t* zc = W.zero_code.data() + n * G;
  int64_t g = 0;
  for (; g + V::W <= G; g += V::W) {
    const typename V::F s = V::fma(V::load(W.s_step.data() + at + g), V::bytes(sc + g), V::load(W.s_off.data() + at + g));
    const typename V::F z = V::fma(V::load(W.z_step.data() + at + g), V::bytes(zc + g), V::load(W.z_off.data() + at + g));
    V::store(scale + g, s);
    V::store(zs + g, V::mul(s, z));
  }
  for (; g < G; ++g) {
    const float s = W.s_off[at + g] + W.s_step[at + g] * (float)sc[g];
    scale[g] = s;
    zs[g] = s * (W.z_off[at + g] + W.z_step[at + g] * (float)zc[g]);
  }
}

// Row n's weights 16 at a time for groups of a multiple of 16: f(blk, w) with w[kPer] the weight
// vectors of positions blk·16 .. blk·16 + 15. Positions past K hold codes of the next row or padding.
template <typename F>
LOWBIT_TARGET inline void for_each_block(const SpqrCpuWeights& W, int64_t n, const float* scale, const float* zs,
                                         F&& f) {
  const int64_t blocks = W.padded_K() / 16, per_group = W.beta1 / 16;
  const uint8_t* row = W.codes.data() + n * W.row_bytes;
  for (int64_t g = 0, blk = 0; blk < blocks; ++g) {
    const typename V::F s = V::set1(scale[g]), z = V::set1(zs[g]);
    for (const int64_t end = blk + per_group < blocks ? blk + per_group : blocks; blk < end; ++blk) {
      typename V::F q[kPer];
      V::codes16(row + blk * 2 * W.bits, W.bits, q);
      for (int v = 0; v < kPer; ++v) q[v] = V::fms(q[v], s, z);
      f(blk, q);
    }
  }
}

// y plus row n's outliers against one row of x (in the original input order), added one by one onto
// y: the quantizer's calibration passes run on this product, so its rounding is part of the
// checkpoints (a sum of the outliers alone, added at the end, moved a 3-bit stories260K checkpoint's
// perplexity by 2.4%).
inline float add_outliers(const SpqrCpuWeights& W, int64_t n, const float* x, float y) {
  for (int32_t i = W.rowptr[n]; i < W.rowptr[n + 1]; ++i) y += W.values[i] * x[W.cols[i]];
  return y;
}

// Up to 4 rows of x (MT), groups of a multiple of 16: each 16-code block decoded into registers
// and multiplied into the MT sums. x is zero past K (Xp is padded), so the positions past K add
// nothing.
template <int MT>
LOWBIT_TARGET void fused_rows(const SpqrCpuWeights& W, const float* Xp, int64_t n0, int64_t n1, float* scale,
                              float* zs, float* Y) {
  const int64_t Kp = W.padded_K();
  for (int64_t n = n0; n < n1; ++n) {
    row_stats(W, n, scale, zs);
    typename V::F acc[MT][kPer];
    for (int m = 0; m < MT; ++m)
      for (int v = 0; v < kPer; ++v) acc[m][v] = V::zero();
    for_each_block(W, n, scale, zs, [&](int64_t blk, const typename V::F* w) LOWBIT_TARGET {
      for (int v = 0; v < kPer; ++v)
        for (int m = 0; m < MT; ++m) acc[m][v] = V::fma(w[v], V::load(Xp + m * Kp + blk * 16 + v * V::W), acc[m][v]);
    });
    for (int m = 0; m < MT; ++m) {
      typename V::F sum = acc[m][0];
      for (int v = 1; v < kPer; ++v) sum = V::add(sum, acc[m][v]);
      Y[m * W.N + n] = add_outliers(W, n, Xp + m * Kp, V::hsum(sum));
    }
  }
}

// Row n's weights into w [padded_K] (zero past K), group by group.
LOWBIT_TARGET inline void decode_row(const SpqrCpuWeights& W, int64_t n, const float* scale, const float* zs, float* qf,
                                     float* w) {
  const int64_t K = W.K, chunks = (K + 7) / 8;
  if (W.beta1 % 16 == 0) {
    for_each_block(W, n, scale, zs, [&](int64_t blk, const typename V::F* q) LOWBIT_TARGET {
      for (int v = 0; v < kPer; ++v) V::store(w + blk * 16 + v * V::W, q[v]);
    });
    for (int64_t p = K; p < W.padded_K(); ++p) w[p] = 0.f;  // the block past K decoded the next row's codes
    return;
  }
  const uint8_t* row = W.codes.data() + n * W.row_bytes;
  for (int64_t c = 0; c < chunks; ++c) V::codes8(row + c * W.bits, W.bits, qf + 8 * c);
  for (int64_t g = 0; g < W.G; ++g) {
    const int64_t p1 = g * W.beta1 + W.beta1 < K ? g * W.beta1 + W.beta1 : K;
    int64_t p = g * W.beta1;
    const typename V::F vs = V::set1(scale[g]), vz = V::set1(zs[g]);
    for (; p + V::W <= p1; p += V::W) V::store(w + p, V::fms(V::load(qf + p), vs, vz));
    for (; p < p1; ++p) w[p] = qf[p] * scale[g] - zs[g];
  }
}

LOWBIT_TARGET void spqr_rows(const SpqrCpuWeights& W, const float* Xp, int64_t M, int64_t n0, int64_t n1, float* qf,
                             float* w, float* stats, float* Y) {
  const int64_t Kp = W.padded_K();
  float* scale = stats;
  float* zs = stats + W.G;
  if (W.beta1 % 16 == 0 && M <= 4) {
    switch (M) {
      case 1: return fused_rows<1>(W, Xp, n0, n1, scale, zs, Y);
      case 2: return fused_rows<2>(W, Xp, n0, n1, scale, zs, Y);
      case 3: return fused_rows<3>(W, Xp, n0, n1, scale, zs, Y);
      default: return fused_rows<4>(W, Xp, n0, n1, scale, zs, Y);
    }
  }
  for (int64_t n = n0; n < n1; ++n) {
    row_stats(W, n, scale, zs);
    decode_row(W, n, scale, zs, qf, w);
    // one dot product per input row, plus the row's outliers
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
      Y[m * W.N + n] = add_outliers(W, n, x, y);
    }
  }
}

}  // namespace LOWBIT_SPQR_NS
}  // namespace lowbit

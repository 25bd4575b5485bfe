#include "spqr_panels.hpp"

#include <algorithm>
#include <cstring>
#include <numeric>
#include <string>

#include "../dtype.hpp"
#include "../packed_gemm.hpp"
#include "../thread_pool.hpp"
#include "activations.hpp"
#include "kernels.hpp"

namespace lowbit {
namespace cpu_gptq {

bool supports_spqr(const SpqrMatrix& W) {
  // A segment (whole groups and whole units) must fit kSegmentK: β1 in {16, 32, 48, 64, 96, 128}.
  // Outlier columns are 16-bit: K ≤ 65535 (kNoColumn marks padding).
  return W.bits >= 2 && W.bits <= 4 && W.beta1 % 16 == 0 && std::lcm(W.beta1, kUnitK) <= kSegmentK &&
         W.beta2 % 16 == 0 && W.stat_bits <= 4 && W.K <= kNoColumn;
}

SpqrPanels repack_spqr(const SpqrMatrix& W) {
  require(supports_spqr(W), "E_ARGUMENT",
          "the SpQR int8 layout takes 2-4 bit codes, beta1 of 16, 32, 48, 64, 96 or 128, beta2 a multiple of 16 and "
          "statistics of at most 4 bits, K up to 65535");
  SpqrPanels R;
  R.bits = W.bits;
  R.N = W.N;
  R.K = W.K;
  R.beta1 = W.beta1;
  R.groups = W.groups();
  R.blocks = ceil_div(ceil_div(W.N, kBlockCols), kPanelBlocks) * kPanelBlocks;
  R.units = ceil_div(W.K, kUnitK);
  R.unit_bytes = kBlockCols * kUnitK * W.bits / 8;
  // The stream of a panel: per unit, the headers of the groups that start in it, then its data. Every
  // part is a multiple of 64 bytes (headers 128, units 128, 192 or 256), so chunks stay aligned.
  R.unit_offset.resize((size_t)R.units);
  R.group_offset.resize((size_t)R.groups);
  int64_t offset = 0;
  for (int64_t u = 0, g = 0; u < R.units; ++u) {
    for (; g < R.groups && g * W.beta1 < (u + 1) * kUnitK; ++g) {
      R.group_offset[(size_t)g] = offset;
      offset = checked_add(offset, kSpqrHeaderBytes, "SpQR int8 layout");
    }
    R.unit_offset[(size_t)u] = offset;
    offset = checked_add(offset, kPanelBlocks * R.unit_bytes, "SpQR int8 layout");
  }
  R.panel_bytes = offset;
  R.data.allocate(checked_mul(R.blocks / kPanelBlocks, R.panel_bytes, "SpQR int8 layout"));
  // Activation segments: whole groups and whole units, about 128 positions (one int8 scale each).
  const int64_t step = std::lcm(W.beta1, kUnitK), seg_len = step * (kSegmentK / step);
  for (int64_t p0 = 0; p0 < R.padded_k(); p0 += seg_len)
    R.segments.push_back({p0 / kUnitK, std::min(seg_len, R.padded_k() - p0) / kUnitK, p0 / W.beta1, 0});
  R.source.assign((size_t)R.padded_k(), -1);
  for (int64_t p = 0; p < W.K; ++p) {
    R.source[(size_t)p] = W.perm ? W.perm[p] : (int32_t)p;
    if (R.source[(size_t)p] != p) R.permuted = true;
  }
  // One block per task: its record in every group header and its slot of every unit.
  const int64_t G = R.groups, NB2 = W.row_blocks();
  global_pool()->parallel_for(R.blocks, 1, [&](int64_t b0, int64_t b1) {
    for (int64_t b = b0; b < b1; ++b) {
      const int64_t cols = std::min(kBlockCols, W.N - b * kBlockCols);  // ≤ 0 for padding blocks
      if (cols <= 0) continue;
      uint8_t* panel = R.data.data() + (b / kPanelBlocks) * R.panel_bytes;
      const int64_t slot = b % kPanelBlocks, rb = b * kBlockCols / W.beta2;  // the block's second-level group
      for (int64_t g = 0; g < G; ++g) {
        uint8_t* rec = panel + R.group_offset[(size_t)g] + slot * kSpqrRecordBytes;
        const size_t i = (size_t)(2 * (g * NB2 + rb));
        const float grid[4] = {f16_to_f32(W.scale_stats[i]), f16_to_f32(W.scale_stats[i + 1]),
                               f16_to_f32(W.zero_stats[i]), f16_to_f32(W.zero_stats[i + 1])};
        std::memcpy(rec, grid, sizeof grid);
        for (int64_t c = 0; c < cols; ++c) {
          const int64_t n = b * kBlockCols + c;
          rec[16 + c] = (uint8_t)(bitstream_get(W.scale_codes, n * G + g, W.stat_bits) |
                                  bitstream_get(W.zero_codes, n * G + g, W.stat_bits) << 4);
        }
      }
      for (int64_t u = 0; u < R.units; ++u) {
        uint8_t* unit = panel + R.unit_offset[(size_t)u] + slot * R.unit_bytes;
        for (int64_t p = 0; p < kUnitK && u * kUnitK + p < W.K; ++p)
          for (int64_t c = 0; c < cols; ++c) {
            const int64_t n = b * kBlockCols + c;
            put_code(unit, W.bits, c, p, bitstream_get(W.qweight, n * W.K + u * kUnitK + p, W.bits));
          }
      }
    }
  });
  R.out_start.resize((size_t)W.N + 1);
  R.out_count.resize((size_t)W.N);
  int64_t padded = 0;
  for (int64_t n = 0; n < W.N; ++n) {
    R.out_start[(size_t)n] = (int32_t)padded;
    R.out_count[(size_t)n] = W.outlier_rowptr[n + 1] - W.outlier_rowptr[n];
    padded = checked_add(padded, ceil_div(R.out_count[(size_t)n], 16) * 16, "SpQR outliers");
    require(padded < ((int64_t)1 << 31), "E_SHAPE", "too many SpQR outliers for the int8 layout");
  }
  R.out_start[(size_t)W.N] = (int32_t)padded;
  R.out_cols.assign((size_t)padded, kNoColumn);
  R.out_values.assign((size_t)padded, 0);
  for (int64_t n = 0; n < W.N; ++n)
    for (int32_t i = 0; i < R.out_count[(size_t)n]; ++i) {
      const int32_t src = W.outlier_rowptr[n] + i, p = W.outlier_cols[src];
      R.out_cols[(size_t)(R.out_start[(size_t)n] + i)] = (uint16_t)(W.perm ? W.perm[p] : p);
      R.out_values[(size_t)(R.out_start[(size_t)n] + i)] = W.outlier_values[src];
    }
  return R;
}

namespace {

// The int8 activations plus what SpQR's kernels add: each row's sums over the first-level groups,
// and for M > 1 x transposed for the outliers.
void prepare(const SpqrPanels& W, const float* X, int64_t M, SimdLevel level, ActivationBuffers& P) {
  const int64_t Kp = W.padded_k(), G = W.groups;
  fit(P.gsum, M * G);
  quantize_activations(W, X, M, level, P, [&](int64_t m0, int64_t m1) {
    for (int64_t m = m0; m < m1; ++m) {
      const int8_t* q = P.xq.data() + m * Kp;
      for (int64_t g = 0; g < G; ++g) {
        int32_t s = 0;
        for (int64_t p = g * W.beta1; p < std::min((g + 1) * W.beta1, W.K); ++p) s += q[p];
        P.gsum[(size_t)(m * G + g)] = (float)s;
      }
    }
  });
  P.view.groups = G;
  P.view.gsum = P.gsum.data();
  if (M > 1) {  // x transposed, [K][round_up(M, 16)] (zero past M), for the outliers
    const int64_t Mp = ceil_div(M, 16) * 16;
    fit(P.xt, W.K * Mp);
    for (int64_t k = 0; k < W.K; ++k)
      for (int64_t m = 0; m < Mp; ++m) P.xt[(size_t)(k * Mp + m)] = m < M ? X[m * W.K + k] : 0.f;
    P.view.xt = P.xt.data();
  }
}

}  // namespace

const char* spqr_gemm_int8(const SpqrPanels& W, const float* X, int64_t M, float* Y) {
  if (M <= 0 || W.N == 0) return "none";
  ActivationBuffers fresh;
  ActivationBuffers& P = buffers_for(M, fresh);
  const SimdLevel level = active_simd();
  prepare(W, X, M, level, P);
  switch (level) {
    case SimdLevel::Avx512: return kernels_avx512::gemm_spqr_int8(W, P.view, X, Y);
    case SimdLevel::Avx2: return kernels_avx2::gemm_spqr_int8(W, P.view, X, Y);
    default: return kernels_scalar::gemm_spqr_int8(W, P.view, X, Y);
  }
}

}  // namespace cpu_gptq
}  // namespace lowbit

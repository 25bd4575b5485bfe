#include "repack.hpp"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstring>
#include <string>

#if defined(__linux__)
#include <sys/mman.h>
#endif

#include "../pack.hpp"
#include "../packed_gemm.hpp"
#include "../thread_pool.hpp"
#include "../weight_format.hpp"
#include "activations.hpp"
#include "kernels.hpp"

namespace lowbit {
namespace cpu_gptq {

void AlignedBytes::allocate(int64_t bytes) {
  // Buffers of 2 MiB and more start on a 2 MiB boundary and ask for transparent huge pages (Linux,
  // best effort: where THP is "madvise", the default of many distributions, 4 KiB pages are the rule
  // otherwise): a GEMV streams many MiB, and with 4 KiB pages every 4 KiB costs a TLB miss.
  constexpr int64_t kHuge = int64_t(2) << 20;
  const int64_t align = bytes >= kHuge ? kHuge : 64;
  const int64_t rounded = std::max<int64_t>(64, ceil_div(bytes, align) * align);
  void* p = std::aligned_alloc((size_t)align, (size_t)rounded);
  require(p != nullptr, "E_ALLOC", "cannot allocate " + std::to_string(rounded) + " bytes for repacked weights");
#if defined(__linux__)
  if (align == kHuge) madvise(p, (size_t)rounded, MADV_HUGEPAGE);
#endif
  std::memset(p, 0, (size_t)rounded);
  ptr.reset(static_cast<uint8_t*>(p));
  size = bytes;
}

bool supports(const PackedMatrix& W) { return W.bits == 2 || W.bits == 3 || W.bits == 4; }

void put_code(uint8_t* unit, int bits, int64_t c, int64_t p, uint32_t q) {
  const int64_t s = p / 4, j = p % 4, lane = 4 * c + j;
  if (bits == 4) {
    unit[64 * (s / 2) + lane] |= (uint8_t)(q << (4 * (s % 2)));
  } else if (bits == 2) {
    unit[64 * (s / 4) + lane] |= (uint8_t)(q << (2 * (s % 4)));
  } else {  // 3: per slice, the chunk and bit offset of its whole value, or of its low 2 bits and high bit
    static constexpr int kChunk[6] = {0, 0, 1, 1, 2, 2}, kShift[6] = {0, 5, 0, 5, 0, 3};
    if (s < 6) {
      unit[64 * kChunk[s] + lane] |= (uint8_t)(q << kShift[s]);
    } else {  // slice 6: b0 bits 3-4 and b2 bit 6; slice 7: b1 bits 3-4 and b2 bit 7
      unit[64 * (s - 6) + lane] |= (uint8_t)((q & 3u) << 3);
      unit[128 + lane] |= (uint8_t)((q >> 2) << s);
    }
  }
}

CpuGptqWeights repack(const PackedMatrix& W) {
  require(supports(W), "E_BITS", "the CPU repacked layout takes 2-, 3- or 4-bit weights, got " + std::to_string(W.bits));
  CpuGptqWeights R;
  R.bits = W.bits;
  R.N = W.N;
  R.K = W.K;
  R.groups = W.groups;
  R.blocks = ceil_div(ceil_div(W.N, kBlockCols), kPanelBlocks) * kPanelBlocks;
  R.unit_bytes = kBlockCols * kUnitK * W.bits / 8;

  // Input positions ordered by group (stable: increasing k inside a group), then cut into segments.
  std::vector<int64_t> count((size_t)W.groups + 1, 0);
  for (int64_t k = 0; k < W.K; ++k) ++count[(size_t)W.group_of(k) + 1];
  for (int64_t g = 0; g < W.groups; ++g) count[(size_t)g + 1] += count[(size_t)g];
  std::vector<int64_t> order((size_t)W.K), next(count.begin(), count.end() - 1);
  for (int64_t k = 0; k < W.K; ++k) order[(size_t)next[(size_t)W.group_of(k)]++] = k;
  std::vector<std::pair<int64_t, int64_t>> runs;  // per segment: first index into `order`, length
  int64_t units = 0;
  for (int64_t g = 0; g < W.groups; ++g)
    for (int64_t i = count[(size_t)g]; i < count[(size_t)g + 1]; i += kSegmentK) {
      const int64_t len = std::min(kSegmentK, count[(size_t)g + 1] - i);
      R.segments.push_back({units, ceil_div(len, kUnitK), g, 0});
      runs.emplace_back(i, len);
      units += ceil_div(len, kUnitK);
    }
  R.units = units;
  R.source.assign((size_t)(units * kUnitK), -1);
  for (size_t s = 0; s < runs.size(); ++s)
    for (int64_t i = 0; i < runs[s].second; ++i)
      R.source[(size_t)(R.segments[s].unit0 * kUnitK + i)] = (int32_t)order[(size_t)(runs[s].first + i)];
  for (int64_t p = 0, k = 0; p < (int64_t)R.source.size(); ++p)
    if (R.source[(size_t)p] >= 0 && R.source[(size_t)p] != k++) R.permuted = true;

  // Each panel: per segment, its header and then its units (repack.hpp). Every part is a multiple of
  // 64 bytes (unit_bytes is 128, 192 or 256), so every chunk stays 64-byte aligned.
  int64_t offset = 0;
  for (Segment& seg : R.segments) {
    seg.offset = offset;
    offset = checked_add(offset, checked_mul(seg.units, kPanelBlocks * R.unit_bytes, "repacked weights"), "repacked weights");
    offset = checked_add(offset, kHeaderBytes, "repacked weights");
  }
  R.panel_bytes = offset;
  R.data.allocate(checked_mul(R.blocks / kPanelBlocks, R.panel_bytes, "repacked weights"));

  // One block per task: its columns of every header, and its slot of every unit (disjoint bytes).
  const int64_t zwords = packed_words(W.bits, W.N);
  const WeightFormat& f = weight_format(W.bits);
  global_pool()->parallel_for(R.blocks, 1, [&](int64_t b0, int64_t b1) {
    for (int64_t b = b0; b < b1; ++b) {
      const int64_t cols = std::min(kBlockCols, W.N - b * kBlockCols);  // ≤ 0 for padding blocks
      for (const Segment& seg : R.segments) {
        uint8_t* header = R.header(b, seg);
        uint16_t* scales = CpuGptqWeights::scales_of(header, b);
        uint8_t* zeros = CpuGptqWeights::zeros_of(header, b);
        for (int64_t c = 0; c < cols; ++c) {
          const int64_t n = b * kBlockCols + c;
          scales[c] = W.scales[seg.group * W.N + n];
          zeros[c] = (uint8_t)((int)read_packed(W.qzeros + seg.group * zwords, 1, W.bits, n) + W.zero_offset);
        }
        for (int64_t u = seg.unit0; u < seg.unit0 + seg.units; ++u) {
          uint8_t* unit = R.unit(b, seg, u);
          for (int64_t p = 0; p < kUnitK; ++p) {
            const int32_t k = R.source[(size_t)(u * kUnitK + p)];
            if (k < 0) continue;  // padding: weight 0 against activation 0
            const int32_t* words = W.qweight + (k / f.values_per_unit) * f.words_per_unit * W.N;
            for (int64_t c = 0; c < cols; ++c)
              put_code(unit, W.bits, c, p, read_packed(words + b * kBlockCols + c, W.N, W.bits, k % f.values_per_unit));
          }
        }
      }
    }
  });
  return R;
}

namespace {
std::atomic<int> g_prefetch_near{Prefetch{}.near_kib}, g_prefetch_far{Prefetch{}.far_kib},
    g_prefetch_scales{Prefetch{}.scale_segments};
}  // namespace

void set_prefetch(const Prefetch& p) {
  const auto ok = [](int v) { return v >= 0 && v <= 64; };
  require(ok(p.near_kib) && ok(p.far_kib) && ok(p.scale_segments), "E_ARGUMENT",
          "prefetch distances must be in [0, 64]");
  g_prefetch_near.store(p.near_kib, std::memory_order_relaxed);
  g_prefetch_far.store(p.far_kib, std::memory_order_relaxed);
  g_prefetch_scales.store(p.scale_segments, std::memory_order_relaxed);
}

Prefetch prefetch() {
  return {g_prefetch_near.load(std::memory_order_relaxed), g_prefetch_far.load(std::memory_order_relaxed),
          g_prefetch_scales.load(std::memory_order_relaxed)};
}

CpuGptqWeights copy_of(const CpuGptqWeights& W) {
  CpuGptqWeights R;
  R.bits = W.bits;
  R.N = W.N;
  R.K = W.K;
  R.blocks = W.blocks;
  R.units = W.units;
  R.groups = W.groups;
  R.unit_bytes = W.unit_bytes;
  R.panel_bytes = W.panel_bytes;
  R.data.allocate(W.data.size);
  std::memcpy(R.data.data(), W.data.data(), (size_t)W.data.size);
  R.segments = W.segments;
  R.source = W.source;
  R.permuted = W.permuted;
  return R;
}

namespace {
// The exact path: rows of X gathered into the padded order as f32.
void gather_f32(const CpuGptqWeights& W, const float* X, int64_t M, ActivationBuffers& P) {
  const int64_t Kp = W.padded_k();
  fit(P.xf, M * Kp);
  for (int64_t m = 0; m < M; ++m)
    for (int64_t p = 0; p < Kp; ++p) {
      const int32_t k = W.source[(size_t)p];
      P.xf[(size_t)(m * Kp + p)] = k >= 0 ? X[m * W.K + k] : 0.f;
    }
  reset_view(W, M, P);
  P.view.xf = P.xf.data();
}
}  // namespace

const char* gemm(const CpuGptqWeights& W, const float* X, int64_t M, float* Y, const Options& options) {
  if (M <= 0 || W.N == 0) return "none";
  ActivationBuffers fresh;
  ActivationBuffers& P = buffers_for(M, fresh);
  const bool exact = options.exact_activations;
  const SimdLevel level = active_simd();
  if (exact) gather_f32(W, X, M, P);
  else quantize_activations(W, X, M, level, P, [](int64_t, int64_t) {});
  switch (level) {
    case SimdLevel::Avx512: return exact ? kernels_avx512::gemm_f32(W, P.view, Y) : kernels_avx512::gemm_int8(W, P.view, Y);
    case SimdLevel::Avx2: return exact ? kernels_avx2::gemm_f32(W, P.view, Y) : kernels_avx2::gemm_int8(W, P.view, Y);
    default: return exact ? kernels_scalar::gemm_f32(W, P.view, Y) : kernels_scalar::gemm_int8(W, P.view, Y);
  }
}

}  // namespace cpu_gptq
}  // namespace lowbit

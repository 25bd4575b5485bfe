// What the SpQR product kernels share (gemm.cu's for every GPU, gemm_wgmma.cu's for sm_90a): the
// kernel arguments, a lane's share of a record and its decoding into A fragments (both levels of
// statistics, then code · scale + shift per pair of weights), the outliers added from X transposed,
// and the result writing of a block whose warps each own one 16-row tile. Included by those two only.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>
#include <type_traits>

#include "../split_k.cuh"
#include "../gptq_kernels/tile_math.cuh"
#include "spqr_kernels.hpp"

namespace lowbit {
namespace cuda {
namespace spqr_tile {

using namespace spqr_layout;
using namespace gptq_tile;  // the magic-number fields, tile words and mma shared with the GPTQ kernels

struct Args {
  const uint8_t* records;
  const int32_t* rowptr;
  const uint32_t* outliers;
  const void* xs;   // [Mp, Kp] gathered, or (GEMV, xst null) the caller's X [M, K] itself
  const void* xst;  // [Kp, Mp], or null: X read in place
  int64_t ldx;      // elements between rows of xs (Kp, or K in place)
  int64_t kx;       // columns of xs that hold data (Kp, or K in place: the rest reads as zero)
  const float* bias;
  void* y;
  int M, Mp, N, Np, Kp, chunks, splits;
  float* partial;
  int32_t* counters;
};

__device__ __forceinline__ float2 to_float2(uint32_t u, __half) { return __half22float2(as_t2<__half2>(u)); }
__device__ __forceinline__ float2 to_float2(uint32_t u, __nv_bfloat16) {
  return __bfloat1622float2(as_t2<__nv_bfloat162>(u));
}
__device__ __forceinline__ float to_float(__half v) { return __half2float(v); }
__device__ __forceinline__ float to_float(__nv_bfloat16 v) { return __bfloat162float(v); }
template <class T> __device__ __forceinline__ typename Dtype<T>::T2 pair_of(float v);
template <> __device__ __forceinline__ __half2 pair_of<__half>(float v) { return __float2half2_rn(v); }
template <> __device__ __forceinline__ __nv_bfloat162 pair_of<__nv_bfloat16>(float v) { return __float2bfloat162_rn(v); }

// The codes of A-fragment register r (both halves) as exact fp16/bf16 integers.
template <class T, int BITS>
__device__ __forceinline__ typename Dtype<T>::T2 codes_of(uint32_t word, int r) {
  using T2 = typename Dtype<T>::T2;
  constexpr uint32_t mask = BITS == 4 ? 0x000f000fu : BITS == 3 ? 0x00070007u : 0x00030003u;
  constexpr int step = BITS == 2 ? 2 : 4;
  const T2 biased = as_t2<T2>(and_or(word >> (step * r), mask, Dtype<T>::magic));
  return __hsub2(biased, as_t2<T2>(Dtype<T>::magic));
}

// 2^e in both halves of an fp16 pair (e in [-14, 15]), as bits: constants without a conversion.
__host__ __device__ constexpr uint32_t half_pow2(int e) { return ((uint32_t)(e + 15) << 10) * 0x10001u; }

// Tile word `word`'s four A-fragment registers as weights code · scale + shift, register R in row
// h = R & 1 (scale[h], shift[h]). fp16 masks the fields in place where they lie (1024 + μ·code,
// μ = 1, 4, 16 or 64: GPTQ's biased_field), and one fma by 1/μ takes off the bias exactly (the
// values are small integers); bf16 shifts each field down (codes_of).
template <class T, int BITS, int R>
__device__ __forceinline__ uint32_t weight_pair(uint32_t word, typename Dtype<T>::T2 scale, typename Dtype<T>::T2 shift) {
  using T2 = typename Dtype<T>::T2;
  T2 code;
  if constexpr (std::is_same<T, __half>::value) {
    const T2 raw = as_t2<T2>(biased_field<T, BITS>(word, R));
    constexpr int mu_log2 = BITS == 2 ? 2 * R : (R & 1) ? 4 : 0;  // μ = 2^mu_log2
    static_assert(1 << mu_log2 == TileConsts<T, BITS, false>::multiplier(R), "μ of register R");
    if constexpr (mu_log2 == 0) code = __hsub2(raw, as_t2<T2>(Dtype<T>::magic));
    else code = __hfma2(raw, as_t2<T2>(half_pow2(-mu_log2)), as_t2<T2>(0x80008000u | half_pow2(10 - mu_log2)));
  } else {
    code = codes_of<T, BITS>(word, R);
  }
  return as_u32(__hfma2(code, scale, shift));
}
template <class T, int BITS>
__device__ __forceinline__ void weights_of(uint32_t word, const typename Dtype<T>::T2 (&scale)[2],
                                           const typename Dtype<T>::T2 (&shift)[2], uint32_t (&af)[4]) {
  af[0] = weight_pair<T, BITS, 0>(word, scale[0], shift[0]);
  af[1] = weight_pair<T, BITS, 1>(word, scale[1], shift[1]);
  af[2] = weight_pair<T, BITS, 2>(word, scale[0], shift[0]);
  af[3] = weight_pair<T, BITS, 3>(word, scale[1], shift[1]);
}

// The low 4 bits of v as a float, through the magic number 2^23 (an or and a subtraction instead of
// the slower integer conversion).
__device__ __forceinline__ float small_float(uint32_t v) { return __uint_as_float(0x4b000000u | (v & 15u)) - 8388608.f; }

// The scale and shift of rows g (h = 0) and g + 8 (h = 1) of a lane's two units 2t (u = 0) and
// 2t + 1, from its word of first-level codes and the units' second-level (offset, step) pairs.
template <class T>
__device__ __forceinline__ void unit_stats(uint32_t codes, uint4 second, typename Dtype<T>::T2 (&scale)[2][2],
                                           typename Dtype<T>::T2 (&shift)[2][2]) {
#pragma unroll
  for (int u = 0; u < 2; ++u) {
    const uint32_t sp = u ? second.z : second.x, zp = u ? second.w : second.y;
    const float2 sv = __half22float2(as_t2<__half2>(sp)), zv = __half22float2(as_t2<__half2>(zp));
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const float sc = fmaf(sv.y, small_float(codes >> (4 * stat_field(u, 0, h))), sv.x);
      const float ze = fmaf(zv.y, small_float(codes >> (4 * stat_field(u, 1, h))), zv.x);
      scale[u][h] = pair_of<T>(sc);
      shift[u][h] = pair_of<T>(-sc * ze);
    }
  }
}

// A lane's share of one record (16 rows × 128 sweep positions): the code words, its word of
// first-level codes and the second-level pairs of its two units.
template <int BITS>
struct RecordShare {
  static constexpr int CB = code_bytes(BITS);
  uint32_t w[8];
  uint32_t codes;
  uint4 second;  // units 2t and 2t+1: (scale offset, step, zero offset, step) each

  __device__ __forceinline__ void load(const uint8_t* rec, int lane) {
    load_words<BITS>(rec, lane, w);
    codes = __ldcs(reinterpret_cast<const uint32_t*>(rec + CB) + lane);
    second = __ldcs(reinterpret_cast<const uint4*>(rec + CB + 128) + (lane & 3));
  }
};

// This lane's sum of outliers of row `row` of its 16-row tile over entries [e_begin, e_end) stepping
// `step`, for the BM rows of X at xst (XsT shifted to the block's first row), handed through shared
// memory `osum` (this warp's [16][BM + 1]) to the lanes that hold those outputs and added to acc.
// Lanes r and r + 16 take the same row (alternate entries) and meet by a shuffle first.
// In place (xst null): x from the caller's X [M, K] (xs shifted to the block's first row, rows apart
// by ldx), `rows` of them valid.
template <class T, int MT>
__device__ __forceinline__ void add_outliers(const uint32_t* __restrict__ outliers, const T* xst, int Mp, const T* xs,
                                             int64_t ldx, int rows, int e_begin, int e_end, int step,
                                             float (*osum)[8 * MT + 1], float (&acc)[MT][4]) {
  constexpr int BM = 8 * MT;
  const int lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
  float part[BM];
#pragma unroll
  for (int i = 0; i < BM; ++i) part[i] = 0.f;
#pragma unroll 4
  for (int e = e_begin; e < e_end; e += step) {
    const uint32_t entry = __ldg(outliers + e);
    const float v = __half2float(__ushort_as_half((unsigned short)(entry & 0xffff)));
    if (!xst) {
#pragma unroll
      for (int i = 0; i < BM; ++i) {
        if (i >= rows) break;
        part[i] = fmaf(v, to_float(xs[(int64_t)i * ldx + (entry >> 16)]), part[i]);
      }
      continue;
    }
    const uint4* xc = reinterpret_cast<const uint4*>(xst + (int64_t)(entry >> 16) * Mp);
#pragma unroll
    for (int mt = 0; mt < MT; ++mt) {
      const uint4 xv = __ldg(xc + mt);
      const uint32_t u[4] = {xv.x, xv.y, xv.z, xv.w};
#pragma unroll
      for (int q = 0; q < 4; ++q) {
        const float2 f = to_float2(u[q], T());
        part[8 * mt + 2 * q] = fmaf(v, f.x, part[8 * mt + 2 * q]);
        part[8 * mt + 2 * q + 1] = fmaf(v, f.y, part[8 * mt + 2 * q + 1]);
      }
    }
  }
#pragma unroll
  for (int i = 0; i < BM; ++i) part[i] += __shfl_xor_sync(0xffffffffu, part[i], 16);
  if (lane < 16)
#pragma unroll
    for (int i = 0; i < BM; ++i) osum[lane][i] = part[i];
  __syncwarp();
#pragma unroll
  for (int mt = 0; mt < MT; ++mt)
#pragma unroll
    for (int i = 0; i < 4; ++i) acc[mt][i] += osum[g + 8 * (i >> 1)][8 * mt + 2 * t + (i & 1)];
}

__device__ __forceinline__ split_k::Output output_of(const Args& a) {
  return {a.y, a.bias, a.M, a.N, a.Np, a.partial, a.counters};
}

// Writes the block's results (+ bias; split_k.cuh, the block's grid tile counting one of a.splits).
// acc[mt][i]: output row n = tile·16 + g + 8·(i >= 2), row of X m = m0 + 8·mt + 2t + (i & 1).
template <class T, int MT>
__device__ __forceinline__ void write_result(const Args& a, const float (&acc)[MT][4], int ntile0, int m0) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, g = lane >> 2, t = lane & 3;
  auto each_output = [&](auto&& f) {
#pragma unroll
    for (int mt = 0; mt < MT; ++mt)
#pragma unroll
      for (int i = 0; i < 4; ++i)
        f((ntile0 + warp) * kTileN + g + 8 * (i >> 1), m0 + mt * 8 + 2 * t + (i & 1), acc[mt][i]);
  };
  split_k::write_tile<T, true>(output_of(a), each_output, a.splits == 1, blockIdx.y * gridDim.x + blockIdx.x, 1,
                               a.splits, m0, ntile0 * kTileN, 8 * MT, 128);
}

}  // namespace spqr_tile
}  // namespace cuda
}  // namespace lowbit

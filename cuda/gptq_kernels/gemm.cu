// The GPTQ product on the tensor cores, for every batch size: Y [M, N] = X [M, K] · Wᵀ with W in
// the repacked layout (layout.hpp), fp16 or bf16 X and Y, fp32 accumulation.
//
// gptq_mm_kernel, for every M: a block owns BN = 16·NT·WN output columns and BM = 8·MT·WM rows of X, and a
// range of K (split-K over the grid's z when the (N, M) tiles alone would leave the GPU idle). Each
// 128-wide chunk of K is one stage of a cp.async pipeline: X's tile, the block's weight records and
// each lane's scale/zero record go to shared memory STAGES-1 chunks ahead of use. Each warp then
// dequantizes its 16-column tiles in registers (magic-number conversion: the packed integers OR'd
// into the mantissa of 1024.0 (fp16) or 128.0 (bf16), one subtraction removes bias and zero point)
// and multiplies with mma.sync m16n8k16, weights as operand A, X as operand B, so one row of X costs
// no more than 8 do.
//
// Scales: when every chunk lies in one group (groups of 128 or more, the usual case) and a warp holds
// few rows of X (MT <= 2), the mma accumulates (q - zero) · x exactly per chunk and the fp16 scale is
// applied once per chunk in fp32 ("deferred"); otherwise each weight is scaled in fp16/bf16 before
// the mma ("inline").
//
// gptq_gemv_kernel, for up to 8 rows of X on matrices below 8192²: the same per-warp arithmetic with
// the weights loaded straight into registers (no shared memory, no block barrier in the loop).
// gptq_gemv_fold_kernel, for up to 8 rows when groups hold whole chunks: the same, with the zero point
// taken out of the per-weight work (an fp16 subnormal or bf16 magic-number code per weight, the zero
// point subtracted by a second mma per tile), for the large decode products.
//
// The direct-load kernels (gemv, fold) are launched overlapped with the kernel before them on sm_90
// (../overlap.cuh): their first chunks' weights are requested before they wait for X, which saved
// ~1 µs a product (4096² M = 1: 5.8 → 4.8 µs; 8192²: 13.2 → 11.5). The staged kernel is not: it ran
// slower so.
//
// Split-K: the partial sums go to an fp32 buffer with atomics; the last block of a tile (a counter per
// tile) writes Y and zeroes the buffer and its counter again, so one launch does it all and the product
// can be captured in a CUDA graph.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <algorithm>
#include <cstdint>
#include <string>
#include <type_traits>

#include "../../native/core/common.hpp"
#include "../cuda_check.cuh"
#include "../overlap.cuh"
#include "../packed_memory.cuh"
#include "../split_k.cuh"
#include "gemm_wgmma.hpp"
#include "gptq_kernels.hpp"
#include "layout.hpp"
#include "product.cuh"
#include "tile_math.cuh"

namespace lowbit {
namespace cuda {

using namespace gptq_layout;
using namespace gptq_tile;
using namespace gptq_product;

namespace {


template <int BITS, class T, int MT, int NT, int WM, int WN, bool DEFER>
struct Config {
  static constexpr int threads = 32 * WM * WN;
  static constexpr int BM = 8 * MT * WM;
  static constexpr int stages = BM >= 64 ? 3 : 4;
  static constexpr int rec = record_bytes(BITS);
  static constexpr int x_bytes = BM * kChunk * 2;
  static constexpr int w_bytes = NT * WN * rec;
  static constexpr int s_bytes = WM * WN * NT * 32 * 8;
  static constexpr int stage_bytes = x_bytes + w_bytes + s_bytes;
  static constexpr int smem = stages * stage_bytes;
};

template <int BITS, class T, int MT, int NT, int WM, int WN, bool DEFER>
__global__ void __launch_bounds__(32 * WM * WN) gptq_mm_kernel(KernelArgs a) {
  using Cfg = Config<BITS, T, MT, NT, WM, WN, DEFER>;
  constexpr int THREADS = Cfg::threads, BM = Cfg::BM, STAGES = Cfg::stages;
  constexpr int REC = Cfg::rec;
  extern __shared__ uint4 smem_u4[];
  char* smem = reinterpret_cast<char*>(smem_u4);

  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int wn = warp % WN, wm = warp / WN, g = lane >> 2, t = lane & 3;
  const int ntiles = a.Np / kTileN;
  // x: row block (fastest, so blocks that share weights run together and hit L2), y: column block.
  const int ntile0 = blockIdx.y * (NT * WN);
  const int m0 = blockIdx.x * BM;
  const int c_begin = (int)((int64_t)blockIdx.z * a.chunks / a.splits);
  const int c_end = (int)((int64_t)(blockIdx.z + 1) * a.chunks / a.splits);
  const T* X = static_cast<const T*>(a.x);

  // Copy assignments fixed for the whole K loop; a chunk only moves the sources. X: BM rows of 16
  // units of 8 inputs; unit u (slot u/4, part u%4) is stored at part*4 + slot, XOR 4 on odd rows, so
  // that the 8 lanes of one 16-byte shared load hit distinct banks. THREADS is a multiple of 32, so a
  // thread keeps its unit u and the parity of its rows.
  constexpr int X_UNITS = BM * 16, X_ITERS = (X_UNITS + THREADS - 1) / THREADS, X_ROW_STEP = THREADS / 16;
  constexpr int W_UNITS = NT * WN * REC / 16, W_ITERS = (W_UNITS + THREADS - 1) / THREADS;
  const int x_u = tid & 15, x_row0 = tid >> 4;
  const int x_dst = x_row0 * 16 + (((x_u & 3) * 4 + (x_u >> 2)) ^ ((x_row0 & 1) << 2));
  const T* x_src0 = X + (int64_t)(m0 + x_row0) * a.ldx + x_u * 8;
  const uint8_t* w_src0 = a.weights + record_index(ntile0, 0, a.chunks) * REC + tid * 16;
  const uint16_t* s_src0 = a.scale_zero + ((int64_t)(ntile0 + wn * NT) * 8 + g) * 4;

  auto load_stage = [&](int c, int st) {
    char* base = smem + st * Cfg::stage_bytes;
    const int64_t left0 = a.kx - ((int64_t)c * kChunk + x_u * 8);
    const int x_bytes = left0 >= 8 ? 16 : left0 > 0 ? (int)left0 * 2 : 0;
#pragma unroll
    for (int it = 0; it < X_ITERS; ++it) {
      if (X_UNITS % THREADS == 0 || tid + it * THREADS < X_UNITS) {
        const bool row_ok = m0 + x_row0 + it * X_ROW_STEP < a.M;
        const T* src = x_src0 + (int64_t)it * X_ROW_STEP * a.ldx + (int64_t)c * kChunk;
        cp_async16(base + (x_dst + it * X_ROW_STEP * 16) * 16, row_ok && x_bytes ? src : X, row_ok ? x_bytes : 0);
      }
    }
    char* wbase = base + Cfg::x_bytes;
#pragma unroll
    for (int it = 0; it < W_ITERS; ++it) {
      if (W_UNITS % THREADS == 0 || tid + it * THREADS < W_UNITS)
        cp_async16(wbase + (tid + it * THREADS) * 16, w_src0 + (int64_t)c * 8 * REC + it * THREADS * 16, 16);
    }
    char* sbase = wbase + Cfg::w_bytes;
    const int grp = __ldg(a.slot_group + c * 4 + t);
#pragma unroll
    for (int nt = 0; nt < NT; ++nt)
      cp_async8(sbase + ((warp * NT + nt) * 32 + lane) * 8, s_src0 + ((int64_t)grp * ntiles + nt) * 32);
  };

  float acc[NT][MT][4];
#pragma unroll
  for (int nt = 0; nt < NT; ++nt)
#pragma unroll
    for (int mt = 0; mt < MT; ++mt)
#pragma unroll
      for (int i = 0; i < 4; ++i) acc[nt][mt][i] = 0.f;

#pragma unroll
  for (int s = 0; s < STAGES - 1; ++s) {
    if (c_begin + s < c_end) load_stage(c_begin + s, s);
    cp_async_commit();
  }

  for (int c = c_begin; c < c_end; ++c) {
    cp_async_wait<STAGES - 2>();
    __syncthreads();
    {
      const int cn = c + STAGES - 1;
      if (cn < c_end) load_stage(cn, (cn - c_begin) % STAGES);
      cp_async_commit();
    }
    const char* base = smem + ((c - c_begin) % STAGES) * Cfg::stage_bytes;
    const char* wbase = base + Cfg::x_bytes;
    const char* sbase = wbase + Cfg::w_bytes;

    TileConsts<T, BITS, DEFER> consts[NT];
    uint32_t words[NT][8];
#pragma unroll
    for (int nt = 0; nt < NT; ++nt) {
      consts[nt].init(*reinterpret_cast<const uint2*>(sbase + ((warp * NT + nt) * 32 + lane) * 8));
      const char* rec = wbase + (wn * NT + nt) * REC;
      const uint4 w0 = *reinterpret_cast<const uint4*>(rec + lane * 16);
      words[nt][0] = w0.x, words[nt][1] = w0.y, words[nt][2] = w0.z, words[nt][3] = w0.w;
      if constexpr (BITS == 4) {
        const uint4 w1 = *reinterpret_cast<const uint4*>(rec + 512 + lane * 16);
        words[nt][4] = w1.x, words[nt][5] = w1.y, words[nt][6] = w1.z, words[nt][7] = w1.w;
      } else if constexpr (BITS == 3) {
        const uint2 w1 = *reinterpret_cast<const uint2*>(rec + 512 + lane * 8);
        words[nt][4] = w1.x, words[nt][5] = w1.y, words[nt][6] = 0, words[nt][7] = 0;
      } else {
        words[nt][4] = words[nt][5] = words[nt][6] = words[nt][7] = 0;
      }
    }

    float cacc[DEFER ? NT : 1][DEFER ? MT : 1][4];
    if constexpr (DEFER) {
#pragma unroll
      for (int nt = 0; nt < NT; ++nt)
#pragma unroll
        for (int mt = 0; mt < MT; ++mt)
#pragma unroll
          for (int i = 0; i < 4; ++i) cacc[nt][mt][i] = 0.f;
    }

#pragma unroll
    for (int v = 0; v < 4; ++v) {
      uint4 xv[MT];
#pragma unroll
      for (int mt = 0; mt < MT; ++mt) {
        const int row = wm * MT * 8 + mt * 8 + g;
        const int unit = row * 16 + ((v * 4 + t) ^ ((row & 1) << 2));
        xv[mt] = *reinterpret_cast<const uint4*>(base + unit * 16);
      }
#pragma unroll
      for (int nt = 0; nt < NT; ++nt)
#pragma unroll
        for (int jj = 0; jj < 2; ++jj) {
          uint32_t af[4];
          dequant<T, BITS, DEFER>(tile_word<BITS>(words[nt], 2 * v + jj), consts[nt], af);
#pragma unroll
          for (int mt = 0; mt < MT; ++mt) {
            const uint32_t b0 = jj ? xv[mt].z : xv[mt].x, b1 = jj ? xv[mt].w : xv[mt].y;
            if constexpr (DEFER) mma<T>(cacc[nt][mt], af, b0, b1);
            else mma<T>(acc[nt][mt], af, b0, b1);
          }
        }
    }
    if constexpr (DEFER) {
#pragma unroll
      for (int nt = 0; nt < NT; ++nt)
#pragma unroll
        for (int mt = 0; mt < MT; ++mt) {
          acc[nt][mt][0] = fmaf(consts[nt].scale_f[0], cacc[nt][mt][0], acc[nt][mt][0]);
          acc[nt][mt][1] = fmaf(consts[nt].scale_f[0], cacc[nt][mt][1], acc[nt][mt][1]);
          acc[nt][mt][2] = fmaf(consts[nt].scale_f[1], cacc[nt][mt][2], acc[nt][mt][2]);
          acc[nt][mt][3] = fmaf(consts[nt].scale_f[1], cacc[nt][mt][3], acc[nt][mt][3]);
        }
    }
  }
  cp_async_wait<0>();
  write_result<T, MT, NT, WM, WN>(a, acc, ntile0, m0);
}

// Up to 8 rows of X (decode): no shared memory. Each warp owns one 16-column tile and streams its
// weight records straight from global memory into registers, DEPTH chunks ahead of use (the records
// are read once, so staging them in shared memory only added copies and waits); X, which every warp
// of the block reads, comes through the L1 cache. Same layout, dequantization and result writing as
// gptq_mm_kernel; blocks of 8 warps cover 128 columns, split-K over the grid's z.
//
// KSPLIT: the block's 8 warps share one 16-column tile and take every 8th chunk of K each, their sums
// added in shared memory at the end: 8-way parallelism along K without split-K's atomics and
// last-block pass (a second trip through memory that costs most on small matrices); splits must be 1.
template <int BITS, class T, bool DEFER, int DEPTH, bool KSPLIT>
__global__ void __launch_bounds__(256) gptq_gemv_kernel(KernelArgs a) {
  constexpr int REC = record_bytes(BITS);
  constexpr int CSTEP = KSPLIT ? 8 : 1;  // chunk stride of one warp
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int g = lane >> 2, t = lane & 3;
  const int ntiles = a.Np / kTileN;
  const int ntile0 = KSPLIT ? blockIdx.y : blockIdx.y * 8, ntile = KSPLIT ? ntile0 : ntile0 + warp;
  const int c_begin = (int)((int64_t)blockIdx.z * a.chunks / a.splits) + (KSPLIT ? warp : 0);
  const int c_end = (int)((int64_t)(blockIdx.z + 1) * a.chunks / a.splits);
  const bool has_row = g < a.M;
  const T* X = static_cast<const T*>(a.x) + (int64_t)(has_row ? g : 0) * a.ldx + t * kSlot;
  const uint8_t* wrec = a.weights + (record_index(ntile, 0, a.chunks)) * REC;
  const uint16_t* srec = a.scale_zero + ((int64_t)ntile * 8 + g) * 4;

  struct Stage {
    uint32_t w[8];
    uint2 sz;
    uint4 x[4];
  };
  auto load_w = [&](Stage& st, int c) {
    load_words<BITS>(wrec + (int64_t)c * 8 * REC, lane, st.w);
    const int grp = __ldg(a.slot_group + c * 4 + t);
    st.sz = __ldg(reinterpret_cast<const uint2*>(srec + (int64_t)grp * ntiles * 32));
  };
  auto load_x = [&](Stage& st, int c) {
    const int64_t k0 = (int64_t)c * kChunk + t * kSlot;
#pragma unroll
    for (int v = 0; v < 4; ++v) {
      // a unit of 8 inputs is whole or absent (kx is a multiple of 8 on the direct path, Kp otherwise)
      const bool ok = has_row && k0 + 8 * v + 8 <= a.kx;
      st.x[v] = ok ? __ldg(reinterpret_cast<const uint4*>(X + (int64_t)c * kChunk + 8 * v)) : make_uint4(0, 0, 0, 0);
    }
  };

  auto load = [&](Stage& st, int c) {
    load_w(st, c);
    load_x(st, c);
  };

  float acc[1][1][4] = {{{0.f, 0.f, 0.f, 0.f}}};
  Stage st[DEPTH];
  // The first chunks' weights before the previous kernel has finished (overlap.cuh); X after.
#pragma unroll
  for (int s = 0; s < DEPTH; ++s)
    if (c_begin + s * CSTEP < c_end) load_w(st[s], c_begin + s * CSTEP);
  wait_for_previous();
  let_next_launch();
#pragma unroll
  for (int s = 0; s < DEPTH; ++s)
    if (c_begin + s * CSTEP < c_end) load_x(st[s], c_begin + s * CSTEP);

  for (int c0 = c_begin; c0 < c_end; c0 += DEPTH * CSTEP) {
#pragma unroll
    for (int s = 0; s < DEPTH; ++s) {
      const int c = c0 + s * CSTEP;
      if (c < c_end) {
        TileConsts<T, BITS, DEFER> consts;
        consts.init(st[s].sz);
        float cacc[4] = {0.f, 0.f, 0.f, 0.f};
#pragma unroll
        for (int j = 0; j < 8; ++j) {
          uint32_t af[4];
          dequant<T, BITS, DEFER>(tile_word<BITS>(st[s].w, j), consts, af);
          const uint4& xv = st[s].x[j >> 1];
          const uint32_t b0 = (j & 1) ? xv.z : xv.x, b1 = (j & 1) ? xv.w : xv.y;
          if constexpr (DEFER) mma<T>(cacc, af, b0, b1);
          else mma<T>(acc[0][0], af, b0, b1);
        }
        if constexpr (DEFER) {
          acc[0][0][0] = fmaf(consts.scale_f[0], cacc[0], acc[0][0][0]);
          acc[0][0][1] = fmaf(consts.scale_f[0], cacc[1], acc[0][0][1]);
          acc[0][0][2] = fmaf(consts.scale_f[1], cacc[2], acc[0][0][2]);
          acc[0][0][3] = fmaf(consts.scale_f[1], cacc[3], acc[0][0][3]);
        }
        if (c + DEPTH * CSTEP < c_end) load(st[s], c + DEPTH * CSTEP);
      }
    }
  }
  if constexpr (KSPLIT) {
    __shared__ float part[8][32][4];
#pragma unroll
    for (int i = 0; i < 4; ++i) part[warp][lane][i] = acc[0][0][i];
    __syncthreads();
    if (warp != 0) return;
#pragma unroll
    for (int w = 1; w < 8; ++w)
#pragma unroll
      for (int i = 0; i < 4; ++i) acc[0][0][i] += part[w][lane][i];
    write_result<T, 1, 1, 1, 1>(a, acc, ntile0, 0);  // splits == 1: no barrier inside
  } else {
    write_result<T, 1, 1, 1, 8>(a, acc, ntile0, 0);
  }
}

// ---- the decode GEMV with the zero point folded out of the dequantization ----
//
// For up to 8·MT rows of X when every chunk lies in one group (groups of 128 or more): each weight enters
// the mma as its bare code (FoldTile, tile_math.cuh), without the per-weight subtraction of the
// kernels above. A second mma per tile, of a constant A holding −(bias + μ·z) per output column with
// the same X, subtracts the zero point (and bias) as −(bias + μ·z)·Σx, exactly, in the fp32 sum; the
// scale (with 2^24/μ) is applied to each chunk's sum. Per 16 × 16 tile and lane: 4 masks (+ 1–3
// shifts) and 2 mma, against 4 masks, 4 subtractions and 1 mma before.
//
// The block is 8 warps on one 16-column tile, each warp taking every 8th chunk of K (of the block's
// split of K, when the grid's z splits it), with DEPTH chunks of weights in flight per warp in
// registers; X (read by every block) comes through L1 when its chunk is used, not staged, which keeps
// the registers for the weights. With MT = 2 each dequantized tile feeds two 8-row mma.

// X of chunk c for this lane (X[mt]: row g of X tile mt at this lane's slot): whole, or (the last
// chunk of a K that is not a multiple of 128) whole units of 8 inputs up to kx and zeros past it
// (0 · x must not meet garbage there).
template <class T, int MT>
__device__ __forceinline__ void fold_x(const T* const (&X)[MT], int c, int64_t kx, int t, uint4 (&xv)[MT][4]) {
  const bool whole = (int64_t)(c + 1) * kChunk <= kx;
  const int64_t k0 = (int64_t)c * kChunk + t * kSlot;
#pragma unroll
  for (int mt = 0; mt < MT; ++mt) {
    const T* xc = X[mt] + (int64_t)c * kChunk;
    if (whole) {
#pragma unroll
      for (int v = 0; v < 4; ++v) xv[mt][v] = __ldg(reinterpret_cast<const uint4*>(xc + 8 * v));
    } else {
#pragma unroll
      for (int v = 0; v < 4; ++v)
        xv[mt][v] = k0 + 8 * v + 8 <= kx ? __ldg(reinterpret_cast<const uint4*>(xc + 8 * v)) : make_uint4(0, 0, 0, 0);
    }
  }
}

// Adds one tile's chunk to acc (the mma C fragments of MT 8-row tiles of X), X of the chunk in xv.
template <int BITS, class T, int MT>
__device__ __forceinline__ void fold_tile(const FoldStage& st, const uint4 (&xv)[MT][4], float (&acc)[MT][4]) {
  using F = FoldTile<T, BITS>;
  uint32_t zc[4];
  float scale[2];
  F::consts(st.sz, zc, scale);
  // Two sums per row tile (even and odd tiles): two chains of dependent mma instead of one of 16
  // (four would spill at 64 registers).
  float cacc[MT][2][4] = {};
#pragma unroll
  for (int j = 0; j < 8; ++j) {
    uint32_t af[4];
    F::fields(tile_word<BITS>(st.w, j), af);
#pragma unroll
    for (int mt = 0; mt < MT; ++mt) {
      const uint4& xj = xv[mt][j >> 1];
      const uint32_t b0 = (j & 1) ? xj.z : xj.x, b1 = (j & 1) ? xj.w : xj.y;
      mma<T>(cacc[mt][j & 1], af, b0, b1);
      mma<T>(cacc[mt][j & 1], zc, b0, b1);
    }
  }
#pragma unroll
  for (int mt = 0; mt < MT; ++mt)
#pragma unroll
    for (int i = 0; i < 4; ++i) acc[mt][i] = fmaf(scale[i >> 1], cacc[mt][0][i] + cacc[mt][1][i], acc[mt][i]);
}

// Row g of each 8-row tile of X (MT tiles) at lane slot t; lanes of rows past M read row 0: their
// mma columns are results nobody writes.
template <class T, int MT>
__device__ __forceinline__ void fold_rows(const KernelArgs& a, int g, int t, const T* (&X)[MT]) {
#pragma unroll
  for (int mt = 0; mt < MT; ++mt)
    X[mt] = static_cast<const T*>(a.x) + (int64_t)(8 * mt + g < a.M ? 8 * mt + g : 0) * a.ldx + t * kSlot;
}

// NT adjacent tiles per block (the same chunk of each in one pass, so X, its bounds and the group
// lookup are paid once for NT records).
template <int BITS, class T, int MT, int NT, int DEPTH, int MINB>
__global__ void __launch_bounds__(256, MINB) gptq_gemv_fold_kernel(KernelArgs a) {
  constexpr int REC = record_bytes(BITS);
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int g = lane >> 2, t = lane & 3;
  const int ntile0 = blockIdx.y * NT;
  // Split-K over the grid's z: this block's chunks are [c_begin, c_end).
  const int c_begin = (int)((int64_t)blockIdx.z * a.chunks / a.splits);
  const int c_end = (int)((int64_t)(blockIdx.z + 1) * a.chunks / a.splits);
  const T* X[MT];
  fold_rows<T, MT>(a, g, t, X);
  // This warp's chunks are c_begin + warp, + 8, ...: loaded in that order, 8 records apart each (the
  // NT tiles' records of a chunk are adjacent: NT divides 8).
  const uint8_t* wnext = a.weights + record_index(ntile0, c_begin + warp, a.chunks) * REC;
  const uint16_t* srec = a.scale_zero + ((int64_t)ntile0 * 8 + g) * 4;
  const int64_t s_stride = (int64_t)(a.Np / kTileN) * 32;  // fp16 values between groups
  auto load = [&](FoldStage (&st)[NT], int c) {
    const uint16_t* sz = srec + __ldg(a.slot_group + c * 4) * s_stride;
#pragma unroll
    for (int nt = 0; nt < NT; ++nt) fold_load<BITS>(st[nt], wnext + nt * REC, sz + nt * 32, lane);
    wnext += 64 * REC;
  };

  float acc[NT][MT][4] = {};
  FoldStage st[DEPTH][NT];
  // The first chunks' weights before the previous kernel has finished (overlap.cuh); X is read in
  // the loop, after the wait.
#pragma unroll
  for (int s = 0; s < DEPTH; ++s)
    if (c_begin + warp + 8 * s < c_end) load(st[s], c_begin + warp + 8 * s);
  wait_for_previous();
  let_next_launch();

  for (int c0 = c_begin + warp; c0 < c_end; c0 += 8 * DEPTH) {
#pragma unroll
    for (int s = 0; s < DEPTH; ++s) {
      const int c = c0 + 8 * s;
      if (c < c_end) {
        uint4 xv[MT][4];
        fold_x<T, MT>(X, c, a.kx, t, xv);
#pragma unroll
        for (int nt = 0; nt < NT; ++nt) fold_tile<BITS, T, MT>(st[s][nt], xv, acc[nt]);
        if (c + 8 * DEPTH < c_end) load(st[s], c + 8 * DEPTH);
      }
    }
  }
  __shared__ float part[8][NT * MT * 4][32];  // [warp][accumulator][lane]: no bank conflicts
#pragma unroll
  for (int nt = 0; nt < NT; ++nt)
#pragma unroll
    for (int mt = 0; mt < MT; ++mt)
#pragma unroll
      for (int i = 0; i < 4; ++i) part[warp][(nt * MT + mt) * 4 + i][lane] = acc[nt][mt][i];
  __syncthreads();
  if (warp >= NT) return;
  // Warp nt sums and writes tile ntile0 + nt.
  float sum[MT][4];
#pragma unroll
  for (int mt = 0; mt < MT; ++mt)
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      float v = 0.f;
#pragma unroll
      for (int w = 0; w < 8; ++w) v += part[w][(warp * MT + mt) * 4 + i][lane];
      sum[mt][i] = v;
    }
  const int ntile = ntile0 + warp;
  auto each_output = [&](auto&& f) {
#pragma unroll
    for (int mt = 0; mt < MT; ++mt)
#pragma unroll
      for (int i = 0; i < 4; ++i) f(ntile * kTileN + g + 8 * (i >> 1), 8 * mt + 2 * t + (i & 1), sum[mt][i]);
  };
  // Split-K by this warp alone (split_k.cuh; a counter per tile).
  split_k::write_tile<T, false>(output_of(a), each_output, a.splits == 1, ntile, 1, a.splits, 0, ntile * kTileN, 8 * MT,
                                kTileN);
}

// The column of X that repacked input kp reads: perm[kp] with act-order, else kp itself; -1 (a zero)
// for the padding past K.
__device__ __forceinline__ int64_t source_column(int64_t kp, int64_t K, const int32_t* perm) {
  return perm ? perm[kp] : (kp < K ? kp : -1);
}

// X gathered into the repacked order of K (act-order), or copied with zero padding to Kp columns
// when its rows are not 16-byte aligned.
template <class T>
__global__ void gather_x(const T* __restrict__ X, int64_t K, int64_t Kp, int64_t M, const int32_t* __restrict__ perm,
                         T* __restrict__ out) {
  let_next_launch();  // the product may start fetching its weights (it waits for X)
  const int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= M * Kp) return;
  const int64_t m = i / Kp, k = source_column(i % Kp, K, perm);
  out[i] = k >= 0 ? X[m * K + k] : from_float<T>(0.f);
}

// X prepared for the warpgroup kernel (gemm_wgmma.cu): [chunk][row][128 inputs], the inputs of each
// chunk in the order its shared memory holds them (wgmma_input), act-order applied, zeros past K and
// in the rows from M to `rows` (a whole number of the kernel's blocks). The kernel then copies a
// pipeline stage as one contiguous run of 16-byte pieces, without masks or per-piece address
// arithmetic. One thread per 16-byte piece of the output. (Launched overlapped, waiting for the kernel
// before it, it made the products after it 5-10% slower at 16-32 rows: H200, 2026-12-02.)
template <class T>
__global__ void prepare_x_wgmma(const T* __restrict__ X, int64_t K, int64_t M, int64_t rows, int64_t chunks,
                                const int32_t* __restrict__ perm, T* __restrict__ out) {
  let_next_launch();  // the product may start fetching its weights (it waits for X)
  const int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= chunks * rows * 16) return;
  const int unit = (int)(i & 15);
  const int64_t m = (i >> 4) % rows, c = (i >> 4) / rows;
  alignas(16) T v[8];
#pragma unroll
  for (int e = 0; e < 8; ++e) {
    const int64_t k = source_column(c * kChunk + wgmma_input(unit * 8 + e), K, perm);
    v[e] = m < M && k >= 0 ? X[m * K + k] : from_float<T>(0.f);
  }
  reinterpret_cast<uint4*>(out)[i] = *reinterpret_cast<const uint4*>(v);
}

// ---- the table of kernel configurations ----


template <int BITS, class T, int MT, int NT, int WM, int WN, bool DEFER>
void launch_kernel(const KernelArgs& a, dim3 grid, cudaStream_t stream) {
  using Cfg = Config<BITS, T, MT, NT, WM, WN, DEFER>;
  set_smem_attribute<gptq_mm_kernel<BITS, T, MT, NT, WM, WN, DEFER>>(Cfg::smem);
  // Not overlapped: the staged tiles ran slower so (H200, 8192 x 28672 2-bit M = 16: 114 against 84 us).
  gptq_mm_kernel<BITS, T, MT, NT, WM, WN, DEFER><<<grid, Cfg::threads, Cfg::smem, stream>>>(a);
}

template <int BITS, class T, int MT, int NT, int WM, int WN, bool DEFER>
int occupancy() {
  using Cfg = Config<BITS, T, MT, NT, WM, WN, DEFER>;
  return occupancy_of<gptq_mm_kernel<BITS, T, MT, NT, WM, WN, DEFER>>(Cfg::threads, Cfg::smem);
}

template <int BITS, class T, bool DEFER, int DEPTH, bool KSPLIT>
void launch_gemv(const KernelArgs& a, dim3 grid, cudaStream_t stream) {
  launch_maybe_overlapped(gptq_gemv_kernel<BITS, T, DEFER, DEPTH, KSPLIT>, grid, dim3(256), 0, stream,
                          overlap_enabled(current_device()), "GPTQ product launch", a);
}

template <int BITS, class T, bool DEFER, int DEPTH, bool KSPLIT>
int occupancy_gemv() {
  return occupancy_of<gptq_gemv_kernel<BITS, T, DEFER, DEPTH, KSPLIT>>(256, 0);
}

struct ConfigInfo {
  const char* name;
  int MT, NT, WM, WN;
  int max_m;    // the most rows of X the kernel takes (0: any)
  bool folded;  // the zero-point-folded GEMV (gptq_gemv_fold_kernel)
};
// Row tiles of 8, 16, 32, 64 and 128 rows of X (name: rows × columns per block, w = warps), and the
// direct-load kernels for up to 8 rows (v; k8: one tile per block, its 8 warps splitting K; f: the
// same with the zero point folded out, for 8 or 16 rows; d: deeper; n32 and n64: 2 or 4 adjacent
// tiles per block, which read X once for all). The direct-load kernels keep 2
// chunks in flight per warp (with 4, X prefetched too, it held one block per multiprocessor and ran
// 1.5-1.8x slower); f8n16k8d keeps 4 (3 at 4-bit) with 3 blocks per multiprocessor. (Earlier sweeps
// also had m8n64, m32n128w8 and m128n128 with 8 warps: rarely or never the best; and a GEMV
// streaming all tiles through a grid of resident blocks, per warp or per block, split-K at tile
// boundaries: 1.3-1.6x slower than f8n16k8 on every shape, 2026-12-02.) w: the sm_90a warpgroup
// kernel (gemm_wgmma.cu), rows of X × columns per block.
constexpr ConfigInfo kConfigs[] = {
    {"m8n128", 1, 1, 1, 8, 0, false},     {"m16n128", 2, 2, 1, 4, 0, false},    {"m32n128", 4, 2, 1, 4, 0, false},
    {"m64n128w4", 4, 4, 2, 2, 0, false},  {"m16n128w8", 2, 1, 1, 8, 0, false},  {"m64n128w8", 8, 1, 1, 8, 0, false},
    {"v8n128", 1, 1, 1, 8, 8, false},     {"v8n16k8", 1, 1, 1, 1, 8, false},    {"f8n16k8", 1, 1, 1, 1, 8, true},
    {"f16n16k8", 2, 1, 1, 1, 16, true},   {"f8n16k8d", 1, 1, 1, 1, 8, true},    {"f8n32k8", 1, 2, 1, 1, 8, true},
    {"w16n64", 2, 1, 1, 4, 0, false},     {"w32n64", 4, 1, 1, 4, 0, false},     {"w64n64", 8, 1, 1, 4, 0, false},
    {"w128n64", 16, 1, 1, 4, 0, false},   {"w16n128", 2, 1, 1, 8, 0, false},    {"w32n128", 4, 1, 1, 8, 0, false},
    {"w64n128", 8, 1, 1, 8, 0, false},    {"w128n128", 16, 1, 1, 8, 0, false},  {"f16n32k8", 2, 2, 1, 1, 16, true},
    {"f8n64k8", 1, 4, 1, 1, 8, true},
};
constexpr int kConfigCount = sizeof(kConfigs) / sizeof(kConfigs[0]);
constexpr int kGemv = 6, kGemvK = 7;  // the direct-load kernels: 8 tiles a block, or one tile split 8 ways along K
constexpr int kFold = 8, kFold16 = 9;  // the zero-point-folded GEMV for 8 and 16 rows
constexpr int kFoldDeep = 10;  // the folded GEMV with 4 chunks in flight per warp (3 at 4-bit), 3 blocks per SM
constexpr int kFoldWide = 11;  // the folded GEMV on 2 tiles (32 columns) per block
// kWgmma..kWgmma + 7: the sm_90a warpgroup kernel (gemm_wgmma.cu), 16-128 rows of X per block, one
// or two warpgroups (64 or 128 columns)
constexpr int kWgmma = 12;
constexpr int kWgmma16 = 16, kWgmma32 = 17, kWgmma64 = 18, kWgmma128 = 19;  // two warpgroups, 16-128 rows
constexpr int kWgmma64n64 = 14;  // one warpgroup (64 columns), 64 rows
constexpr bool is_wgmma(int config) { return config >= kWgmma && config < kWgmma + 8; }
constexpr int kFold16Wide = 20;  // the folded GEMV's 16-row form on 2 tiles per block
constexpr int kFoldWide4 = 21;   // the folded GEMV on 4 tiles (64 columns) per block, 8 rows
constexpr bool is_fold(int config) { return config >= 0 && config < kConfigCount && kConfigs[config].folded; }
static_assert(is_fold(kFold) && is_fold(kFold16) && is_fold(kFoldDeep) && is_fold(kFoldWide) && is_fold(kFold16Wide) &&
                  is_fold(kFoldWide4) && !is_fold(kGemvK) && !is_fold(kWgmma16),
              "the folded forms are marked in kConfigs");


template <int BITS, class T, int MT, int NT, int WM, int WN, bool DEFER>
Kernel kernel_of() {
  return {launch_kernel<BITS, T, MT, NT, WM, WN, DEFER>, occupancy<BITS, T, MT, NT, WM, WN, DEFER>};
}

template <int BITS, class T, int DEPTH, bool KSPLIT>
Kernel gemv_of(bool defer) {
  if (defer) return {launch_gemv<BITS, T, true, DEPTH, KSPLIT>, occupancy_gemv<BITS, T, true, DEPTH, KSPLIT>};
  return {launch_gemv<BITS, T, false, DEPTH, KSPLIT>, occupancy_gemv<BITS, T, false, DEPTH, KSPLIT>};
}

template <int BITS, class T, int MT, int NT, int DEPTH, int MINB>
void launch_fold(const KernelArgs& a, dim3 grid, cudaStream_t stream) {
  launch_maybe_overlapped(gptq_gemv_fold_kernel<BITS, T, MT, NT, DEPTH, MINB>, grid, dim3(256), 0, stream,
                          overlap_enabled(current_device()), "GPTQ product launch", a);
}

template <int BITS, class T, int MT, int NT, int DEPTH, int MINB>
int occupancy_fold() {
  return occupancy_of<gptq_gemv_fold_kernel<BITS, T, MT, NT, DEPTH, MINB>>(256, 0);
}

template <int BITS, class T, int MT, int NT, int DEPTH, int MINB>
Kernel fold_of() {
  return {launch_fold<BITS, T, MT, NT, DEPTH, MINB>, occupancy_fold<BITS, T, MT, NT, DEPTH, MINB>};
}

template <int BITS, class T>
Kernel pick_kernel(int config, bool defer) {
  switch (config) {
    case 0: return defer ? kernel_of<BITS, T, 1, 1, 1, 8, true>() : kernel_of<BITS, T, 1, 1, 1, 8, false>();
    case 1: return defer ? kernel_of<BITS, T, 2, 2, 1, 4, true>() : kernel_of<BITS, T, 2, 2, 1, 4, false>();
    case 2: return kernel_of<BITS, T, 4, 2, 1, 4, false>();
    case 3: return kernel_of<BITS, T, 4, 4, 2, 2, false>();
    case 4: return defer ? kernel_of<BITS, T, 2, 1, 1, 8, true>() : kernel_of<BITS, T, 2, 1, 1, 8, false>();
    case 5: return kernel_of<BITS, T, 8, 1, 1, 8, false>();
    case kGemv: return gemv_of<BITS, T, 2, false>(defer);
    case kGemvK: return gemv_of<BITS, T, 2, true>(defer);
    case kFold: return fold_of<BITS, T, 1, 1, 2, 4>();
    case kFold16: return fold_of<BITS, T, 2, 1, 2, 2>();
    case kFoldDeep: return fold_of<BITS, T, 1, 1, BITS == 4 ? 3 : 4, 3>();
    case kFoldWide: return fold_of<BITS, T, 1, 2, 2, BITS == 4 ? 2 : 3>();
    // 4-bit records take one chunk in flight per warp on 2 and 4 tiles: two spilled 128-156 bytes
    case kFold16Wide: return fold_of<BITS, T, 2, 2, BITS == 4 ? 1 : 2, 2>();
    case kFoldWide4: return fold_of<BITS, T, 1, 4, BITS == 4 ? 1 : 2, 2>();
  }
  return {};
}

// Whether the warpgroup kernel of this configuration reads X prepared by prepare_x_wgmma (its own
// launch) rather than in place (4-byte copies, each with its address and row test: half the kernel's
// instructions at 128 rows). H200, 4-bit, prepared against in place (2026-12-02 15:17):
// 8192 x 28672 M = 64 75.4 against 101.6 us, M = 128 104.0 against 191.9; M = 32 65.0 against 75.8;
// on matrices up to 8192² at 16-32 rows the extra launch costs more than it saves (4096² M = 32:
// 18.2 against 16.5; 8192² level).
bool wgmma_prepares_x(const GptqDeviceWeights& W, int config) {
  return is_wgmma(config) && (8 * kConfigs[config].MT > 32 || W.K * W.N > (int64_t)8192 * 8192);
}

Kernel pick(GptqDtype dtype, int bits, int config, bool defer, bool prepared) {
  if (is_wgmma(config))
    return wgmma_kernel(dtype, bits, 8 * kConfigs[config].MT, kConfigs[config].WN / 4, defer, prepared);
  if (dtype == GptqDtype::f16) {
    switch (bits) {
      case 2: return pick_kernel<2, __half>(config, defer);
      case 3: return pick_kernel<3, __half>(config, defer);
      case 4: return pick_kernel<4, __half>(config, defer);
    }
  } else {
    switch (bits) {
      case 2: return pick_kernel<2, __nv_bfloat16>(config, defer);
      case 3: return pick_kernel<3, __nv_bfloat16>(config, defer);
      case 4: return pick_kernel<4, __nv_bfloat16>(config, defer);
    }
  }
  return {};
}

int multiprocessors(int device) {
  static int cached[64] = {0};
  if (device < 0 || device >= 64) return 132;
  if (!cached[device]) check(cudaDeviceGetAttribute(&cached[device], cudaDevAttrMultiProcessorCount, device), "SM count");
  return cached[device];
}

int64_t grid_tiles(const ConfigInfo& ci, int64_t M, int64_t Np) {
  const int64_t bn = kTileN * ci.NT * ci.WN, bm = 8 * ci.MT * ci.WM;
  return ((M + bm - 1) / bm) * (Np / bn);
}

bool capturing(cudaStream_t stream) {
  cudaStreamCaptureStatus st = cudaStreamCaptureStatusNone;
  check(cudaStreamIsCapturing(stream, &st), "cudaStreamIsCapturing");
  return st != cudaStreamCaptureStatusNone;
}

}  // namespace

int gptq_config_count() { return kConfigCount; }
const char* gptq_config_name(int config) { return config >= 0 && config < kConfigCount ? kConfigs[config].name : "?"; }
bool gptq_config_defers(const GptqDeviceWeights& W, int config) {
  if (config < 0 || config >= kConfigCount || !W.uniform_chunks) return false;
  return is_wgmma(config) ? wgmma_folds(8 * kConfigs[config].MT, kConfigs[config].WN / 4) : kConfigs[config].MT <= 2;
}

void gptq_choose(const GptqDeviceWeights& W, int64_t M, int* config, int* splits) {
  // The table, from the H200 sweeps (bench/cuda-gemm.cu sweep; bench/RESULTS.md). Up to 8 rows, with
  // groups of 128 or more: the zero-point-folded GEMV at 3 and 2 bits everywhere, and at 4 bits on
  // matrices from 8192² and wide ones from 4096 x 11008 (2026-12-02, the GEMVs launched overlapped:
  // 4096² 3-bit M = 8 5.8 against 7.0 us for the K-split direct-load kernel, 11008 x 4096 3-bit M = 1
  // 11.2 against 13.0; 4-bit 4096² 4.8 against 5.3 and 11008 x 4096 10.6 against 11.4 the other way),
  // on two tiles per block (f8n32k8: half the blocks, X and the group lookup shared by two records)
  // at 3/2-bit on wide K <= 4096 matrices (4096 x 11008 M = 1 3-bit 8.9 against 10.7 us, 2-bit 7.5
  // against 9.8: 344 blocks fit one wave where 688 took two), at 2-bit on wide ones from 8192² (8192 x
  // 28672: 31.8 against 36.2) and at 4-bit from 8192² where K >= N or from 4 rows (28672 x 8192 M = 1
  // 33.6 against 35.3; 8192 x 28672 M = 8 44.1 against 50.0); at 4-bit with 4 chunks in flight per
  // warp (3 blocks per SM) on wide K <= 4096 matrices from 4 rows (4096 x 11008 M = 8: 12.7 against
  // 14.2). Elsewhere one tile per block was ahead (8192² 3-bit: 12.4 against 15.7, its 256 blocks of
  // two tiles underfilling the GPU). Else the direct-load
  // kernel with its warps splitting K inside the block, except on matrices above 8192² with K > N,
  // where the staged 8-row tiles stay ahead (28672 x 8192 g128 before the folded kernel: 43 against
  // 45). 9-16 rows: the folded GEMV's 16-row form with groups of 128 or more (4096² M = 16: 9.3
  // against 14.4 us; 8192²: 27.1 against 29.4), except 3/2-bit on 28672 x 8192-like matrices (K > N
  // above 8192²: staged 16-row tiles, 66 against 75 us at 2-bit); 16-row tiles (one tile per warp, 8
  // warps, except on the largest matrices, where 2 × 2 tiles per warp with 4 warps win); 32-row
  // tiles up to 32; 64-row tiles with 8 warps up to 64 rows above 8192² and up to 128 rows on 8192²
  // (32-row tiles on smaller ones); above that 64-row tiles of 4 warps of 32 × 64 (2026-12-01).
  // On compute capability 9.0 (sm_90a) the warpgroup kernel takes 17 rows and more, and 9-16 rows
  // from 8192² and on wide matrices from 4096 x 11008 (its folded 16-row form; session 9: 28672 x
  // 8192 M = 16 63.3 against 77.4 us, 8192² 25.5 against 26.7), and since session 15 on 4096² and
  // 11008 x 4096 too (in 8 splits: 11008 x 4096 4-bit M = 16 14.7 against 17.2 for f16n16k8).
  // Session 15 (H200 2026-12-03, bench/RESULTS.md "Twelfth round") added the folded GEMV on more
  // tiles per block, X read once for all of them:
  //  - 9-16 rows on two tiles (f16n32k8) where that sweep had it ahead, measured on sm_90 only (so
  //    only where the warpgroup kernel is available): matrices from 8192² except 3-bit and wide
  //    2-bit ones above it (8192² 4-bit 17.2 against 19.6 us; 28672 x 8192 53.0 against 57.8), and
  //    K <= 4096 ones with N >= 3K at 4 and 2 bits (4096 x 22016 4-bit 25.5 against 32.4);
  //  - up to 8 rows on four tiles (f8n64k8) at 3/2 bits on K > N matrices (28672 x 8192 2-bit M = 8
  //    32.5 against 41.6 us, in 2 splits; 11008 x 4096 2-bit M = 1 9.5 against 10.7, in 4) and from
  //    5 rows above 8192² (8192 x 28672 3-bit M = 8 42.5 against 49.3); at 4 bits from 5 rows above
  //    8192² with N > K and on K <= 4096 matrices whose 64-column blocks fit one wave (4096 x 12288
  //    M = 8 12.3 against 13.6).
  // Its blocks, from the 4-bit sweep of all its forms and
  // splits (H200 2026-12-02 18:10, session 12, bench/RESULTS.md "Eleventh round"):
  //  - up to 32 rows: 16/32 rows by 128 columns;
  //  - up to 64: 32 x 128 on matrices up to 4096² (M = 64 14.2 us against 22.2 for dequantizing),
  //    64 x 64 with K up to 4096 and N above 8192 (4096 x 12288 27.8 against 28.8 for 64 x 128,
  //    4096 x 22016 35.3 against 39.9), else 64 x 128 (8192² 30.7, 11008 x 4096 25.1);
  //  - up to 128: 128 x 128 above 8192²; 64 x 64 with K up to 4096 and N above 8192 (4096 x 11008
  //    34.2 against 39.5 for 64 x 128); else 64 x 128 (4096² 21.8 against 26.5 for dequantizing,
  //    11008 x 4096 36.7, 8192² 47.0 against 63.1 for 64 x 64);
  //  - beyond: 128 x 128 (8192² M = 256 72.9 against 81.3 for 128 x 64; 11008 x 4096 56.9 against
  //    71.6 for dequantizing), 4096² dequantizes (gptq_dequant_wins).
  // Above 32 rows K is split for one wave of resident blocks, at least 8 chunks a split: since the
  // split-K finish reads its sums 4 columns at a time (split_k.cuh) that fills the GPU for less than
  // it costs (4096² M = 64 on 32 x 128 tiles: 14.2 us in 4 splits; 4096 x 11008 M = 64 on 64 x 128:
  // 25.0 in 3 against 33.5 in one; 28672 x 8192 M = 128: 115.0 in 4), and where the tiles already
  // fill most of a wave a second split only adds the finish (4096 x 22016 M = 128: 52.4 us in one,
  // 67.6 in three). The GEMV and the staged tiles below split K until the grid fills one wave,
  // keeping at least 4 chunks a split and, above 64 rows, the partial sums (8·M·Np bytes per split)
  // under the weight bytes (4096² M = 128 on 32-row tiles: 49 us in 3 splits, 34 in one).
  check(cudaSetDevice(W.device), "cudaSetDevice");
  const int64_t size = W.K * W.N;
  const bool large = size >= (int64_t)8192 * 8192, huge = size > (int64_t)8192 * 8192;
  int c;
  const bool fold = W.uniform_chunks && (W.bits < 4 || large || (W.N > W.K && size >= (int64_t)4096 * 11008));
  const bool wide_short = W.N > W.K && W.K <= 4096;
  const bool two_tiles = W.bits < 4 ? wide_short || (W.bits == 2 && large && W.N > W.K)
                                    : large && (W.K >= W.N || M >= 4);
  const bool deep = W.bits == 4 && wide_short && M >= 4;
  const bool wgmma = wgmma_available(W.device);
  const int64_t blocks4 = W.Np / (4 * kTileN);
  // (wide_short matrices go by their own rule: 4096 x 22016 is "huge" by size, but on 4 tiles at 8
  // rows it ran 22.1 us against 18.7 on two.)
  const bool four_tiles = wide_short ? W.bits == 4 && blocks4 <= 2 * multiprocessors(W.device)
                          : W.bits < 4 ? (huge && (W.K > W.N || M > 4)) || (W.K > W.N && !large)
                                       : huge && W.N > W.K && M > 4;
  const bool wide16 = wide_short ? W.N >= 3 * W.K && W.bits != 3
                                 : large && (!huge || W.bits == 4 || (W.bits == 2 && W.K > W.N));
  if (M <= 8)
    c = !fold        ? (huge && W.K > W.N ? 0 : kGemvK)
        : four_tiles ? kFoldWide4
        : two_tiles  ? kFoldWide
        : deep       ? kFoldDeep
                     : kFold;
  else if (wgmma && M <= 16 && W.uniform_chunks && wide16) c = kFold16Wide;
  else if (wgmma) {
    const bool short_wide = W.K <= 4096 && W.N > 8192;
    if (M <= 16) c = kWgmma16;
    else if (M <= 32) c = kWgmma32;
    else if (M <= 64) c = size <= (int64_t)4096 * 4096 ? kWgmma32 : short_wide ? kWgmma64n64 : kWgmma64;
    else if (M <= 128) c = huge ? kWgmma128 : short_wide ? kWgmma64n64 : kWgmma64;
    else c = kWgmma128;
  } else if (M <= 16) c = W.uniform_chunks && !(huge && W.bits < 4 && W.K > W.N) ? kFold16 : huge ? 1 : 4;
  else if (M <= 32) c = 2;
  else if (M <= 64) c = huge ? 5 : 2;
  else if (M <= 128) c = large && !huge ? 5 : large ? 3 : 2;
  else c = large ? 3 : 2;
  const ConfigInfo& ci = kConfigs[c];
  const int64_t tiles = grid_tiles(ci, M, W.Np), chunks = W.Kp / kChunk;
  const Kernel k = pick(GptqDtype::f16, W.bits, c, gptq_config_defers(W, c), wgmma_prepares_x(W, c));
  const int64_t target = (int64_t)k.occupancy() * multiprocessors(W.device);
  const int64_t by_traffic = M > 64 ? W.weight_bytes / (8 * M * W.Np) : chunks;
  *config = c;
  // The folded GEMV: split-K (its z) made 8192 x 28672 slower (2 splits: 52.8 against 38.9 us).
  *splits = c == kGemvK || is_fold(c) ? 1 : (int)std::max<int64_t>(1, std::min({target / tiles, chunks / 4, by_traffic}));
  // ... except on four tiles per block, whose blocks are few enough on K > N matrices to leave the GPU
  // idle (11008 x 4096 2-bit M = 1: 9.5 us in 4 splits, 10.7 for one tile per block unsplit).
  if (c == kFoldWide4) *splits = (int)std::max<int64_t>(1, std::min(target / tiles, chunks / 8));
  if (is_wgmma(c) && M > 32) *splits = (int)std::max<int64_t>(1, std::min(target / tiles, chunks / 8));
  // The warpgroup kernel at up to 16 rows with more tiles than half a wave, where the rule above gives
  // one split: the split count (at most two waves) that fills its last wave best, the fewest among
  // equals. 4096 x 22016 3-bit: 172 tiles, 264 blocks a wave; 3 splits fill 98% of two waves (26.6
  // us), 1 and 2 splits 65% (29.3, 32.1); 8192 x 28672 (224 tiles) stays at one (54.8 against 59.3).
  if (c == kWgmma16 && 2 * tiles > target) {
    const int64_t most = std::max<int64_t>(1, std::min(2 * target / tiles, chunks / 4));
    double best_fill = 0.0;
    for (int64_t s = 1; s <= most; ++s) {
      const int64_t blocks = tiles * s, waves = (blocks + target - 1) / target;
      const double fill = (double)blocks / (double)(waves * target);
      if (fill > best_fill + 0.02) best_fill = fill, *splits = (int)s;
    }
  }
}

// The weights' scratch for X, at least `need` bytes (grown outside graph capture only).
void* x_scratch(const GptqDeviceWeights& W, int64_t need, cudaStream_t stream) {
  auto& Wm = const_cast<GptqDeviceWeights&>(W);  // scratch grows on demand
  if (Wm.xperm_bytes < need) {
    require(!capturing(stream), "E_CUDA", "GPTQ product: scratch for X must grow outside graph capture (run once first)");
    if (Wm.xperm) cudaFree(Wm.xperm);
    Wm.xperm = nullptr;
    Wm.xperm_bytes = 0;
    check(cudaMalloc(&Wm.xperm, (size_t)need), "cudaMalloc (GPTQ X scratch)");
    Wm.xperm_bytes = need;
  }
  return Wm.xperm;
}

// X prepared for the warpgroup kernel (prepare_x_wgmma) for `rows` rows, in the weights' scratch.
const void* gptq_prepare_x(const GptqDeviceWeights& W, const void* X, GptqDtype dtype, int64_t M, int64_t rows,
                         cudaStream_t stream) {
  const int64_t chunks = W.Kp / kChunk;
  void* out = x_scratch(W, checked_mul(checked_mul(rows, W.Kp), 2), stream);
  const unsigned blocks = (unsigned)((chunks * rows * 16 + 255) / 256);
  if (dtype == GptqDtype::f16)
    prepare_x_wgmma<__half><<<blocks, 256, 0, stream>>>(static_cast<const __half*>(X), W.K, M, rows, chunks, W.perm,
                                                        static_cast<__half*>(out));
  else
    prepare_x_wgmma<__nv_bfloat16><<<blocks, 256, 0, stream>>>(static_cast<const __nv_bfloat16*>(X), W.K, M, rows,
                                                               chunks, W.perm, static_cast<__nv_bfloat16*>(out));
  check(cudaGetLastError(), "GPTQ X preparation launch");
  return out;
}

const void* gptq_activations(const GptqDeviceWeights& W, const void* X, GptqDtype dtype, int64_t M, void* stream_ptr,
                             int64_t* ld) {
  cudaStream_t stream = static_cast<cudaStream_t>(stream_ptr);
  // X straight from the caller when its rows are 16-byte aligned in the original order; else gathered.
  if (W.identity_k && W.K % 8 == 0 && (reinterpret_cast<uintptr_t>(X) & 15) == 0) {
    *ld = W.K;
    return X;
  }
  const int64_t total = checked_mul(M, W.Kp);
  void* out = x_scratch(W, checked_mul(total, 2), stream);
  const unsigned blocks = (unsigned)((total + 255) / 256);
  if (dtype == GptqDtype::f16)
    gather_x<__half><<<blocks, 256, 0, stream>>>(static_cast<const __half*>(X), W.K, W.Kp, M, W.perm,
                                                 static_cast<__half*>(out));
  else
    gather_x<__nv_bfloat16><<<blocks, 256, 0, stream>>>(static_cast<const __nv_bfloat16*>(X), W.K, W.Kp, M, W.perm,
                                                        static_cast<__nv_bfloat16*>(out));
  check(cudaGetLastError(), "GPTQ gather launch");
  *ld = W.Kp;
  return out;
}

bool gptq_matmul_config(const GptqDeviceWeights& W, const void* X, GptqDtype dtype, int64_t M, void* Y,
                        void* stream_ptr, int config, int splits) {
  require(M >= 1 && M <= (int64_t)1 << 30, "E_SHAPE", "M must be in [1, 2^30]");
  if (config < 0 || config >= kConfigCount || splits < 1) return false;
  const ConfigInfo& ci = kConfigs[config];
  if (ci.max_m && M > ci.max_m) return false;
  if (config == kGemvK && splits != 1) return false;  // its warps split K inside the block instead
  if (is_fold(config) && !W.uniform_chunks) return false;  // the folded zero point is one per chunk
  if (is_wgmma(config) && !wgmma_available(W.device)) return false;
  const int64_t chunks = W.Kp / kChunk;
  if (splits > chunks) return false;
  if (is_fold(config) && splits > 1 && chunks / splits < 8) return false;  // a chunk for each warp
  const bool defer = gptq_config_defers(W, config);
  cudaStream_t stream = static_cast<cudaStream_t>(stream_ptr);
  check(cudaSetDevice(W.device), "cudaSetDevice");
  auto& Wm = const_cast<GptqDeviceWeights&>(W);  // scratch grows on demand

  KernelArgs a{};
  a.weights = static_cast<const uint8_t*>(W.weights);
  a.scale_zero = static_cast<const uint16_t*>(W.scale_zero);
  a.slot_group = W.slot_group;
  a.M = (int)M;
  a.y = Y;
  a.N = (int)W.N;
  a.Np = (int)W.Np;
  a.chunks = (int)chunks;
  a.splits = splits;

  const int64_t bn = kTileN * ci.NT * ci.WN, bm = 8 * ci.MT * ci.WM;
  const dim3 grid((unsigned)((M + bm - 1) / bm), (unsigned)(W.Np / bn), (unsigned)splits);
  const bool prepared = wgmma_prepares_x(W, config);
  if (prepared) {
    a.ldx = (int64_t)grid.x * bm;  // prepared: rows per chunk
    a.x = gptq_prepare_x(W, X, dtype, M, a.ldx, stream);
    a.kx = W.Kp;
  } else {
    int64_t ldx = 0;
    a.x = gptq_activations(W, X, dtype, M, stream, &ldx);
    a.ldx = ldx;
    a.kx = ldx;
  }
  if (splits > 1) {
    // The weights' own scratch (one product at a time per weights object; gptq_kernels.hpp): a
    // scratch per device would let two streams' products add into one buffer.
    // A counter per grid tile (the staged kernels), or per 16-column tile (the folded GEMV's warps).
    grow_split_k(Wm.partial, Wm.counters, Wm.partial_floats, Wm.counter_count, M * W.Np,
                 std::max<int64_t>(grid_tiles(ci, M, W.Np), W.Np / kTileN), stream, "GPTQ product");
    a.partial = Wm.partial;
    a.counters = Wm.counters;
  }

  const Kernel k = pick(dtype, W.bits, config, defer, prepared);
  require(k.launch != nullptr, "E_BITS", "GPTQ product: no kernel for these bits");
  k.launch(a, grid, stream);
  check(cudaGetLastError(), "GPTQ product launch");
  return true;
}

bool gptq_dequant_wins(const GptqDeviceWeights& W, int64_t M) {
  // Dequantizing runs at ~80% of DRAM bandwidth (the packed weights read, 2 bytes per weight written:
  // 42 us for 8192², 148 us for 8192 x 28672) before cuBLAS's product. Without the warpgroup kernel it
  // pays from 128 rows on every shape (8192²: 84 against 124 us on the staged tiles) and from 64 with
  // K up to 4096 (4096²: 22 against 33 us; H200 2026-12-01). With it (compute capability 9.0), only
  // past 128 rows on matrices up to 4096² (M = 256: 27.7 against 30.3 us for 64 x 128 blocks in 2
  // splits; H200 2026-12-02 18:10): everywhere else the fused product is ahead up to 256 rows
  // (11008 x 4096 M = 256: 56.9 against 71.6; 8192 x 28672: 237.6 against 343.4).
  const int64_t size = W.K * W.N;
  if (wgmma_available(W.device)) return M > 128 && size <= (int64_t)4096 * 4096;
  if (M >= 128) return true;
  return M >= 64 && W.K <= 4096;
}

void gptq_matmul(const GptqDeviceWeights& W, const void* X, GptqDtype dtype, int64_t M, void* Y, void* stream,
                 void* scratch) {
  if (scratch && gptq_dequant_wins(W, M) && gptq_matmul_dequant(W, X, dtype, M, Y, stream, scratch)) return;
  int config = 0, splits = 1;
  gptq_choose(W, M, &config, &splits);
  gptq_matmul_config(W, X, dtype, M, Y, stream, config, splits);
}

}  // namespace cuda
}  // namespace lowbit

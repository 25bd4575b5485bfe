// The GPTQ product on Hopper's warpgroup tensor-core instructions (wgmma, sm_90a), for 17 to 256 rows
// of X (and 9-16 on the widest matrices; gemm.cu's gptq_choose says where): Y [M, N] = X [M, K] · Wᵀ
// with W in the repacked layout (layout.hpp). Compiled for sm_90a alone (CMakeLists.txt); the host
// side offers it only on devices of compute capability 9.0.
//
// A block is WG warpgroups of 4 warps on 64·WG output columns (each warp's 16-column tile; a warpgroup's
// 64 columns are wgmma's M) and BN rows of X (wgmma's N), over a range of K (split-K over the grid's z). The
// repacked layout already gives each lane its A fragments: the register A operand of wgmma
// m64nNk16 holds, per warp, what mma.sync m16n8k16's A does, so every warp streams its own weight
// records from global memory into registers (DEPTH chunks ahead, as the folded GEMV does),
// dequantizes them in registers (magic-number conversion, scales applied per weight), and issues
// 8 wgmma per 128-input chunk. X is staged once per block in shared memory through a cp.async ring,
// in the 128-byte-swizzled K-major form wgmma reads B in, its inputs reordered inside each chunk to
// the order the A fragments hold them in (below). Against the mma.sync kernels, X is read from shared
// memory by the tensor cores once per warpgroup instead of into registers by every warp, and the
// zero point costs no second product.
//
// The order of X in shared memory. Register r (half h) of a lane (g = lane/4, t = lane%4) of tile j
// holds input 32t + 4j + 2·(r >> 1) + h, and the A fragment puts it at position kk = 2t + h + 8·(r >> 1)
// of the 16 the instruction sums over. So row kk of tile j's B must hold input 32t + 4j + 2·(kk >> 3)
// + (kk & 1) with t = (kk >> 1) & 3. A row of X in one stage is two 128-byte atoms of 64 positions
// (tiles 0-3, then 4-7); position kk of tile j is at half 16·(j & 3) + kk of its atom (layout.hpp's
// wgmma_input). Above 32 rows, and on matrices above 8192², X comes prepared in that order by a launch
// of its own (gemm.cu's prepare_x_wgmma), so a stage is copied in 16-byte pieces at fixed offsets.
// Else the copy reads X in place in 4-byte pieces: piece q (0..63) of a row is inputs 32t + 4j + 2h,
// + 1 with h = q & 1, t = (q >> 3) & 3, j = ((q >> 1) & 3) + 4·(q >> 5), to position kk = 2t + 8h of
// tile j: the 32 lanes of a warp write the 32 banks once (8 16-byte units × 4 words of one atom) and
// read four 32-byte runs of X.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>
#include <type_traits>

#include "../cuda_check.cuh"
#include "../overlap.cuh"
#include "gemm_wgmma.hpp"
#include "layout.hpp"
#include "product.cuh"
#include "tile_math.cuh"
#include "wgmma.cuh"

namespace lowbit {
namespace cuda {

using namespace gptq_layout;
using namespace gptq_tile;
using namespace gptq_product;
using namespace wgmma_ops;

namespace {

// Stands in for a variable one form of a kernel does not use.
struct Unused {};

template <int BN>
struct WgmmaShape {
  static constexpr int atom = BN * 128;       // BN rows × 64 positions of 2 bytes
  static constexpr int stage = 2 * atom;      // one chunk of 128 inputs
  static constexpr int stages = BN >= 128 ? 3 : 4;  // X 1-2 chunks ahead
  static constexpr int depth = BN >= 128 ? 2 : 3;   // chunks of weights in flight per warp
  static constexpr int smem = stages * stage + 1024;  // + room to align the ring to 1024 bytes
  static constexpr int min_warps = BN <= 32 ? 20 : 16;  // per SM: ≤ 96 or 128 registers
};

// FOLD (groups holding whole chunks; gemm_wgmma.hpp's wgmma_folds says for which blocks): the weights
// enter the wgmma as bare codes (FoldTile), each chunk's products are summed apart with the zero
// point's (a second wgmma per step, of a constant A holding −(bias + μ·z) per output column, as the
// folded GEMV does), and the scale is applied to those f32 sums: per chunk and thread BN/2 fmas,
// instead of a subtraction and a scaling per pair of weights.
// PREPARED: X comes prepared by gemm.cu's prepare_x_wgmma ([chunk][a.ldx rows][128 inputs in
// shared-memory order, zero-padded]), and a stage is copied as BN·256 contiguous bytes in 16-byte pieces.
template <int BITS, class T, int BN, int WG, bool FOLD, bool PREPARED>
__global__ void __launch_bounds__(128 * WG, WgmmaShape<BN>::min_warps / (4 * WG)) gptq_wgmma_kernel(KernelArgs a) {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
  using S = WgmmaShape<BN>;
  // (FOLD: 2 chunks of weights in flight; 3 spilled at 4 bits)
  constexpr int REC = record_bytes(BITS), DEPTH = FOLD ? 2 : S::depth, STAGES = S::stages;
  extern __shared__ uint4 smem_u4[];
  uint8_t* smem = reinterpret_cast<uint8_t*>(smem_u4);
  smem += (1024 - (smem_addr(smem) & 1023)) & 1023;  // the swizzle repeats every 1024 bytes of address
  const uint32_t smem_base = smem_addr(smem);

  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5, g = lane >> 2, t = lane & 3;
  const int ntiles = a.Np / kTileN;
  const int ntile0 = blockIdx.y * 4 * WG, ntile = ntile0 + warp;
  const int m0 = blockIdx.x * BN;
  const int c_begin = (int)((int64_t)blockIdx.z * a.chunks / a.splits);
  const int c_end = (int)((int64_t)(blockIdx.z + 1) * a.chunks / a.splits);

  // Per-thread addresses are computed once and kept (opaque: otherwise the compiler recomputes them
  // from the thread index at every chunk, ~40 instructions); each load takes the next chunk (the
  // loads of weights and of X each go through the chunks in order), so its pointers just advance.
  // Weights: this warp's record of the next chunk, the lane's slot's group index, and its scale/zero
  // record of that group.
  const uint8_t* w_next = a.weights + (record_index(ntile, 0, a.chunks) + (int64_t)c_begin * 8) * REC;
  const uint16_t* srec = a.scale_zero + ((int64_t)ntile * 8 + g) * 4;
  const uint32_t s_stride = (uint32_t)ntiles * 32;
  const int32_t* slot_next = a.slot_group + t + 4 * c_begin;
  keep(w_next), keep(srec), keep(slot_next);
  auto load_w = [&](FoldStage& st) {
    fold_load<BITS>(st, w_next, srec + (uint64_t)(uint32_t)__ldg(slot_next) * s_stride, lane);
    w_next += 8 * REC;
    slot_next += 4;
  };

  // X: this thread copies piece q of rows xr0, xr0 + XROWS, ... (XROWS rows of 64 pieces at a time).
  // Row r's piece sits at unit (its unit) ^ (r & 7) of its 128-byte row, and r & 7 = xr0 ^ (XROWS·i & 7)
  // (xr0 < XROWS, a power of 2), so every row's address is x_base's with a constant XOR'd and added.
  constexpr int XROWS = 2 * WG;
  const T* X = static_cast<const T*>(a.x);
  const int q = tid & 63, xr0 = tid >> 6;
  const int qh = q & 1, qt = (q >> 3) & 3, qj = ((q >> 1) & 3) + 4 * (q >> 5), unit = (qj & 3) * 2 + qh;
  const int piece_k = 32 * qt + 4 * qj + 2 * qh;  // its first input in the chunk
  uint32_t x_base = smem_base + (qj >> 2) * S::atom + qt * 4 + xr0 * 128 + ((unit ^ xr0) << 4);
  const int rows_left = a.M - m0 - xr0;  // this thread's rows xr0 + XROWS·i exist for XROWS·i < rows_left
  // Bit i: row xr0 + XROWS·i exists. 32 bits where they are enough (a 64-bit mask cost the 32- to
  // 128-row products 5-15% on the H200: its shifts and tests take two instructions each).
  static_assert(BN / XROWS <= 64, "a bit of row_mask per row of the thread");
  using RowMask = std::conditional_t<(BN / XROWS > 32), uint64_t, uint32_t>;
  RowMask row_mask = 0;
#pragma unroll
  for (int i = 0; i < BN / XROWS; ++i) row_mask |= (RowMask)(XROWS * i < rows_left) << i;
  // The piece is whole in chunks below x_chunks (kx is even: a piece is whole or absent).
  int x_chunks = a.kx >= piece_k + 2 ? (int)((a.kx - piece_k - 2) / kChunk) + 1 : 0;
  const T* x_next = X + (int64_t)(rows_left > 0 ? m0 + xr0 : 0) * a.ldx + piece_k + (int64_t)c_begin * kChunk;
  int64_t x_step = XROWS * a.ldx;
  // (kept only by the form that uses them: the other's setup is then dead code, dropped)
  if constexpr (!PREPARED) keep(x_base), keep(row_mask), keep(x_chunks), keep(x_next), keep(x_step);
  // PREPARED: this thread's pieces are tid + 128·WG·i of a stage: row tid / 16 + 8·WG·i, 16-byte unit
  // tid % 16 (atom unit / 8, swizzled by the row's low 3 bits, the same for all its rows).
  constexpr int PIECES = BN * 16 / (128 * WG), PROW = 8 * WG;
  static_assert(PIECES * 128 * WG == BN * 16, "whole pieces per thread");
  const int pr = tid >> 4, pu = tid & 15;
  uint32_t xs_dst = smem_base + (pu >> 3) * S::atom + pr * 128 + (((pu & 7) ^ (pr & 7)) << 4);
  const T* xs_next = X + ((int64_t)c_begin * a.ldx + m0 + pr) * kChunk + pu * 8;
  const int64_t xs_step = a.ldx * kChunk;
  if constexpr (PREPARED) keep(xs_dst), keep(xs_next);
  auto load_x = [&](int c, int stage) {
    if constexpr (PREPARED) {
      const uint32_t dst = xs_dst + stage * S::stage;
#pragma unroll
      for (int i = 0; i < PIECES; ++i)
        asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(dst + i * PROW * 128),
                     "l"(xs_next + i * PROW * kChunk));
      xs_next += xs_step;
      return;
    }
    const uint32_t base = x_base + stage * S::stage;
    const RowMask ok_rows = c < x_chunks ? row_mask : (RowMask)0;
    const T* src = x_next;
#pragma unroll
    for (int i = 0; i < BN / XROWS; ++i) {
      const bool ok = (ok_rows >> i) & 1u;
      cp_async4(((base ^ (((XROWS * i) & 7) << 4)) + XROWS * i * 128), ok ? src : X, ok ? 4 : 0);
      src += x_step;
    }
    x_next += kChunk;
  };

  float acc[BN / 8][4];
#pragma unroll
  for (int i = 0; i < BN / 8; ++i)
#pragma unroll
    for (int e = 0; e < 4; ++e) acc[i][e] = 0.f;

  // FOLD: the running chunk's sums, the zero point's constant A of its records, and the scales of the
  // chunk whose sums are waiting to be folded into acc (column g + 8(e >> 1) of the warp's tile).
  float cacc[FOLD ? BN / 8 : 1][4];
  uint32_t zc[4];
  float fold_scale[2];
  bool waiting = false;
  auto fold = [&]() {
#pragma unroll
    for (int i = 0; i < BN / 8; ++i)
#pragma unroll
      for (int e = 0; e < 4; ++e) acc[i][e] = fmaf(fold_scale[e >> 1], cacc[i][e], acc[i][e]);
  };

  FoldStage st[DEPTH];
  // The first chunks' weights before the previous kernel has finished (overlap.cuh); X after.
#pragma unroll
  for (int s = 0; s < DEPTH; ++s)
    if (c_begin + s < c_end) load_w(st[s]);
  wait_for_previous();
  let_next_launch();
  // X runs STAGES - 2 chunks ahead: the stage refilled at chunk c is chunk c - 2's, whose last
  // wgmma may still be in flight at chunk c - 1 but not at c (the waits below).
#pragma unroll
  for (int s = 0; s < STAGES - 2; ++s) {
    if (c_begin + s < c_end) load_x(c_begin + s, s);
    cp_async_commit();
  }

  // Two A fragments in registers: step j's is written once step j - 2's wgmma has finished, so the
  // dequantization of one step overlaps the product of the one before.
  uint32_t af[2][4];
  // B's descriptors: the ring's, plus the offset of a stage and a step (in 16-byte units, within the
  // 14-bit start address field: shared memory ends below 256 KB).
  const uint64_t desc0 = b_descriptor(smem_base);
  const uint32_t desc_lo = (uint32_t)desc0, desc_hi = (uint32_t)(desc0 >> 32);
  int stage = 0;  // (c - c_begin) % STAGES, kept by counting
  for (int c0 = c_begin; c0 < c_end; c0 += DEPTH) {
#pragma unroll
    for (int s = 0; s < DEPTH; ++s) {
      const int c = c0 + s;
      if (c >= c_end) break;  // the same for the whole block
      cp_async_wait<STAGES - 3>();
      fence_async_shared();
      __syncthreads();  // chunk c's X is in, from every thread
      {
        const int cn = c + STAGES - 2;  // into the stage of chunk c - 2
        if (cn < c_end) load_x(cn, stage >= 2 ? stage - 2 : stage + STAGES - 2);
        cp_async_commit();
      }
      if constexpr (FOLD) {
        if (waiting) {
          wgmma_wait<0>();
#pragma unroll
          for (int i = 0; i < BN / 8; ++i)
#pragma unroll
            for (int e = 0; e < 4; ++e) hold(cacc[i][e]);
#pragma unroll
          for (int r = 0; r < 4; ++r) hold(zc[r]);
          fold();
        }
        FoldTile<T, BITS>::consts(st[s].sz, zc, fold_scale);
        waiting = true;
      }
      // The unfolded form's scales and zeros of the chunk (the folded form took its own above).
      std::conditional_t<FOLD, Unused, TileConsts<T, BITS, false>> consts;
      if constexpr (!FOLD) consts.init(st[s].sz);
      uint32_t w[8];
#pragma unroll
      for (int j = 0; j < 8; ++j) w[j] = tile_word<BITS>(st[s].w, j);
      if (c + DEPTH < c_end) load_w(st[s]);
      const uint32_t stage_lo = desc_lo + (uint32_t)(stage * S::stage >> 4);
#pragma unroll
      for (int j = 0; j < 8; ++j) {
        wgmma_wait<1>();
#pragma unroll
        for (int r = 0; r < 4; ++r) hold(af[j & 1][r]);
        if constexpr (FOLD) FoldTile<T, BITS>::fields(w[j], af[j & 1]);
        else dequant<T, BITS, false>(w[j], consts, af[j & 1]);
        wgmma_fence();
        const uint32_t lo = stage_lo + (uint32_t)(((j >> 2) * S::atom + (j & 3) * 32) >> 4);
        if constexpr (FOLD) {
          wgmma<T, BN>(cacc, af[j & 1], (uint64_t)desc_hi << 32 | lo, j != 0);
          wgmma<T, BN>(cacc, zc, (uint64_t)desc_hi << 32 | lo);
        } else {
          wgmma<T, BN>(acc, af[j & 1], (uint64_t)desc_hi << 32 | lo);
        }
        wgmma_commit();
      }
      stage = stage + 1 == STAGES ? 0 : stage + 1;
    }
  }
  wgmma_wait<0>();
#pragma unroll
  for (int i = 0; i < BN / 8; ++i)
#pragma unroll
    for (int e = 0; e < 4; ++e) {
      hold(acc[i][e]);
      if constexpr (FOLD) hold(cacc[i][e]);
    }
  if constexpr (FOLD)
    if (waiting) fold();
  cp_async_wait<0>();
  const float(&out)[1][BN / 8][4] = *reinterpret_cast<const float(*)[1][BN / 8][4]>(&acc);
  write_result<T, BN / 8, 1, 1, 4 * WG>(a, out, ntile0, m0);
#endif
}

template <int BITS, class T, int BN, int WG, bool FOLD, bool PREPARED>
void launch_wgmma(const KernelArgs& a, dim3 grid, cudaStream_t stream) {
  set_smem_attribute<gptq_wgmma_kernel<BITS, T, BN, WG, FOLD, PREPARED>>(WgmmaShape<BN>::smem);
  launch_maybe_overlapped(gptq_wgmma_kernel<BITS, T, BN, WG, FOLD, PREPARED>, grid, dim3(128 * WG), WgmmaShape<BN>::smem,
                          stream, overlap_enabled(current_device()), "GPTQ product launch (wgmma)", a);
}

template <int BITS, class T, int BN, int WG, bool FOLD, bool PREPARED>
int occupancy_wgmma() {
  return occupancy_of<gptq_wgmma_kernel<BITS, T, BN, WG, FOLD, PREPARED>>(128 * WG, WgmmaShape<BN>::smem);
}

template <int BITS, class T, int BN, int WG, bool FOLD, bool PREPARED>
Kernel wgmma_entry() {
  return {launch_wgmma<BITS, T, BN, WG, FOLD, PREPARED>, occupancy_wgmma<BITS, T, BN, WG, FOLD, PREPARED>};
}

template <int BITS, class T, int BN, bool PREPARED>
Kernel wgmma_of(int warpgroups) {
  if (warpgroups == 2) return wgmma_entry<BITS, T, BN, 2, false, PREPARED>();
  return wgmma_entry<BITS, T, BN, 1, false, PREPARED>();
}

// X in place only up to 32 rows (gemm.cu's wgmma_prepares_x: never chosen above).
template <int BITS, class T, bool PREPARED>
Kernel wgmma_of(int bn, int warpgroups, bool fold) {
  switch (bn) {
    case 16: return fold ? wgmma_entry<BITS, T, 16, 2, true, PREPARED>() : wgmma_of<BITS, T, 16, PREPARED>(warpgroups);
    case 32: return wgmma_of<BITS, T, 32, PREPARED>(warpgroups);
  }
  if constexpr (PREPARED) {
    if (bn == 64) return wgmma_of<BITS, T, 64, true>(warpgroups);
    if (bn == 128) return wgmma_of<BITS, T, 128, true>(warpgroups);
  }
  return {};
}

template <int BITS, class T>
Kernel wgmma_of(int bn, int warpgroups, bool fold, bool prepared) {
  return prepared ? wgmma_of<BITS, T, true>(bn, warpgroups, fold) : wgmma_of<BITS, T, false>(bn, warpgroups, fold);
}

}  // namespace

bool wgmma_available(int device) { return compute_capability(device) == 90; }  // sm_90a code runs on exactly 9.0

Kernel wgmma_kernel(GptqDtype dtype, int bits, int bn, int warpgroups, bool fold, bool prepared) {
  if (warpgroups != 1 && warpgroups != 2) return {};
  if (fold && !wgmma_folds(bn, warpgroups)) return {};
  const bool half = dtype == GptqDtype::f16;
  switch (bits) {
    case 2: return half ? wgmma_of<2, __half>(bn, warpgroups, fold, prepared) : wgmma_of<2, __nv_bfloat16>(bn, warpgroups, fold, prepared);
    case 3: return half ? wgmma_of<3, __half>(bn, warpgroups, fold, prepared) : wgmma_of<3, __nv_bfloat16>(bn, warpgroups, fold, prepared);
    case 4: return half ? wgmma_of<4, __half>(bn, warpgroups, fold, prepared) : wgmma_of<4, __nv_bfloat16>(bn, warpgroups, fold, prepared);
  }
  return {};
}

}  // namespace cuda
}  // namespace lowbit

// The SpQR product on the tensor cores (records: spqr_kernels.hpp): Y [M, N] = X [M, K] · Wᵀ + bias,
// fp16 or bf16 X and Y, fp32 accumulation, for every M.
//
// gather_kernel writes X in sweep order twice: Xs [Mp, Kp] for the dense loop (zero padded) and
// XsT [Kp, Mp] for the outliers. Then one of two products (both launched with a programmatic
// dependency on the gather, so that their first records are requested while it runs):
//
// spqr_gemv_kernel (up to 16 rows of X, the decode products): a block of 8 warps owns NT (one or two)
// adjacent 16-row tiles and BM = 8·MT rows of X; its warps split K among themselves (warp w takes
// every 8th chunk of the block's range, as gptq_gemv_fold_kernel does), so a tile's records are read
// by 8 warps at once and the sums meet in shared memory, without split-K's atomics and last-block
// pass. With two tiles a warp loads each chunk's X once for both. Each warp
//  1. requests its outlier row pointers and its first DEPTH chunks of records, straight from global
//     memory into registers, and keeps DEPTH chunks in flight;
//  2. per chunk decodes its 8 (scale, zero) pairs from the first-level codes and the second-level
//     (offset, step) pairs in f32, then each weight as code · scale + shift (shift = −scale · zero)
//     with one fp16/bf16 fma per pair of weights (the code read exactly through a magic-number
//     conversion; fp16 reads the fields in place where it can: GPTQ's biased_field), loads X of that
//     chunk (L1/L2: every block reads it) and multiplies with mma.sync m16n8k16 (weights as operand A,
//     X as operand B, MT mma per decoded tile);
//  3. adds its share of the tile's outliers (16 streams per row over the block's 8 warps × 2 halves,
//     each lane one row; summed through shared memory into the lanes that hold the outputs), before
//     the dense loop or after it;
//  4. the block's 8 partial sums are added in shared memory and warp 0 writes Y (+ bias), or with a
//     split of K over the grid's z adds into fp32 partial sums whose last block writes Y and zeroes
//     them again (one launch, graph-capturable).
//
// spqr_tc_kernel (every M; the default above 16 rows): a block of 8 warps owns 128 output rows (a warp
// one 16-row tile) and BM = 8·MT rows of X, and a range of K (split-K over the grid's z), with the same
// per-chunk arithmetic, X prefetched with the records, and the outliers after the dense loop; split-K
// through atomics and a last-block pass, as the GPTQ kernels do.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <algorithm>
#include <type_traits>

#include "../../native/core/common.hpp"
#include "../cuda_check.cuh"
#include "../overlap.cuh"
#include "../packed_memory.cuh"
#include "../split_k.cuh"
#include "../gptq_kernels/tile_math.cuh"
#include "../gptq_kernels/layout.hpp"
#include "gemm_wgmma.hpp"
#include "spqr_kernels.hpp"
#include "tile.cuh"

namespace lowbit {
namespace cuda {

using namespace spqr_layout;
using namespace gptq_tile;  // the magic-number fields, tile words and mma shared with the GPTQ kernels
using namespace spqr_tile;

namespace {

// DEPTH: chunks in flight per warp; MINB: blocks per SM the registers are capped for; LATE: the
// outliers summed after the dense loop rather than before.
template <int BITS, class T, int MT, int DEPTH, int MINB, bool LATE>
__global__ void __launch_bounds__(256, MINB) spqr_tc_kernel(Args a) {
  using T2 = typename Dtype<T>::T2;
  constexpr int BM = 8 * MT, REC = record_bytes(BITS);
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5, g = lane >> 2, t = lane & 3;
  const int ntile0 = blockIdx.y * 8, ntile = ntile0 + warp;
  const int m0 = blockIdx.x * BM;
  const int z = blockIdx.z;
  const int c_begin = (int)((int64_t)z * a.chunks / a.splits), c_end = (int)((int64_t)(z + 1) * a.chunks / a.splits);

  // This lane's outlier entries (row ntile·16 + lane % 16): requested before anything else.
  int e_begin = 0, e_end = 0;
  {
    const int64_t n = (int64_t)ntile * kTileN + (lane & 15);
    if (n < a.N) e_begin = __ldg(a.rowptr + n) + 2 * z + (lane >> 4), e_end = __ldg(a.rowptr + n + 1);
  }
  const T* X = static_cast<const T*>(a.xs);
  const uint8_t* wrec = a.records + record_index(ntile, 0, a.chunks) * REC;
  struct Stage {
    RecordShare<BITS> r;
    uint4 x[MT][4];
  };
  auto load_x = [&](Stage& st, int c) {
#pragma unroll
    for (int mt = 0; mt < MT; ++mt) {
      const int row = m0 + 8 * mt + g;
      const uint4* xp = reinterpret_cast<const uint4*>(X + (int64_t)row * a.Kp + (int64_t)c * kChunk + 32 * t);
#pragma unroll
      for (int v = 0; v < 4; ++v) st.x[mt][v] = row < a.M ? __ldg(xp + v) : make_uint4(0, 0, 0, 0);
    }
  };

  Stage st[DEPTH];
#pragma unroll
  for (int s = 0; s < DEPTH; ++s)
    if (c_begin + s < c_end) st[s].r.load(wrec + (int64_t)(c_begin + s) * 8 * REC, lane);
  // Launched overlapped (overlap.cuh): everything above overlapped the previous kernel (the gather
  // or the previous product); from here on X is read, so wait until it has completed. Then the next
  // product may start fetching its records (after the wait: one product ahead at most).
  wait_for_previous();
  let_next_launch();
#pragma unroll
  for (int s = 0; s < DEPTH; ++s)
    if (c_begin + s < c_end) load_x(st[s], c_begin + s);

  // This split's share of the tile's outliers: lane r (and r + 16) takes row r's entries
  // z·2 + (lane ≥ 16), stepping 2·splits. LATE: after the dense loop (the row pointers were
  // requested first thing, so only the loads of the entries and of x remain on the warp's path),
  // else before it.
  __shared__ float osum[8][kTileN][BM + 1];
  float acc[MT][4];
#pragma unroll
  for (int mt = 0; mt < MT; ++mt)
#pragma unroll
    for (int i = 0; i < 4; ++i) acc[mt][i] = 0.f;
  const T* xst = static_cast<const T*>(a.xst) + m0;
  if constexpr (!LATE) add_outliers<T, MT>(a.outliers, xst, a.Mp, nullptr, 0, 0, e_begin, e_end, 2 * a.splits, osum[warp], acc);

  for (int c0 = c_begin; c0 < c_end; c0 += DEPTH) {
#pragma unroll
    for (int s = 0; s < DEPTH; ++s) {
      const int c = c0 + s;
      if (c >= c_end) break;
      T2 scale[2][2], shift[2][2];
      unit_stats<T>(st[s].r.codes, st[s].r.second, scale, shift);
#pragma unroll
      for (int j = 0; j < 8; ++j) {
        uint32_t af[4];
        weights_of<T, BITS>(tile_word<BITS>(st[s].r.w, j), scale[j >> 2], shift[j >> 2], af);
#pragma unroll
        for (int mt = 0; mt < MT; ++mt) {
          const uint4& xv = st[s].x[mt][j >> 1];
          mma<T>(acc[mt], af, (j & 1) ? xv.z : xv.x, (j & 1) ? xv.w : xv.y);
        }
      }
      if (c + DEPTH < c_end) {
        st[s].r.load(wrec + (int64_t)(c + DEPTH) * 8 * REC, lane);
        load_x(st[s], c + DEPTH);
      }
    }
  }
  if constexpr (LATE) add_outliers<T, MT>(a.outliers, xst, a.Mp, nullptr, 0, 0, e_begin, e_end, 2 * a.splits, osum[warp], acc);
  write_result<T, MT>(a, acc, ntile0, m0);
}

// DEPTH: chunks of records in flight per warp; MINB: blocks per SM the registers are capped for;
// LATE: the outliers summed after the dense loop rather than before; WARPS: warps per block (8 or 16),
// which split K among themselves. Grid: (Mp / BM, Np / (16·NT), splits).
template <int BITS, class T, int MT, int NT, int DEPTH, int MINB, bool LATE, int WARPS = 8>
__global__ void __launch_bounds__(32 * WARPS, MINB) spqr_gemv_kernel(Args a) {
  using T2 = typename Dtype<T>::T2;
  constexpr int BM = 8 * MT, REC = record_bytes(BITS);
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5, g = lane >> 2, t = lane & 3;
  const int ntile0 = blockIdx.y * NT, m0 = blockIdx.x * BM, z = blockIdx.z;
  if (ntile0 * kTileN >= a.N) return;  // padding tiles only (the whole block: no counter to keep)
  const int c_begin = (int)((int64_t)z * a.chunks / a.splits), c_end = (int)((int64_t)(z + 1) * a.chunks / a.splits);

  // Outliers of row (ntile0 + nt)·16 + lane % 16: 2·WARPS streams per row (warp, lane ≥ 16), then the splits.
  const int stream = 2 * warp + (lane >> 4), e_step = 2 * WARPS * a.splits;
  int e_begin[NT], e_end[NT];
#pragma unroll
  for (int nt = 0; nt < NT; ++nt) {
    e_begin[nt] = e_end[nt] = 0;
    const int64_t n = (int64_t)(ntile0 + nt) * kTileN + (lane & 15);
    if (n < a.N) e_begin[nt] = __ldg(a.rowptr + n) + 2 * WARPS * z + stream, e_end[nt] = __ldg(a.rowptr + n + 1);
  }
  // This warp's chunks: c_begin + warp, + WARPS, ... (8 records apart per chunk). The NT tiles of a
  // block lie in one group of 8 (Np is a multiple of 128), their records side by side.
  const uint8_t* wrec = a.records + record_index(ntile0, 0, a.chunks) * REC;
  RecordShare<BITS> st[DEPTH][NT];
#pragma unroll
  for (int s = 0; s < DEPTH; ++s) {
    const int c = c_begin + warp + WARPS * s;
    if (c < c_end)
#pragma unroll
      for (int nt = 0; nt < NT; ++nt) st[s][nt].load(wrec + ((int64_t)c * 8 + nt) * REC, lane);
  }
  // X is read from here on: wait for the previous kernel (the gather or another product; overlap.cuh),
  // then let the next product start fetching its records (one product ahead at most).
  wait_for_previous();
  let_next_launch();
  __shared__ float osum[WARPS][kTileN][BM + 1];
  float acc[NT][MT][4];
#pragma unroll
  for (int nt = 0; nt < NT; ++nt)
#pragma unroll
    for (int mt = 0; mt < MT; ++mt)
#pragma unroll
      for (int i = 0; i < 4; ++i) acc[nt][mt][i] = 0.f;
  // Gathered (Xs and XsT, zero padded to Mp rows and Kp columns) or in place (the caller's X).
  const T* xs = static_cast<const T*>(a.xs);
  const T* xst = a.xst ? static_cast<const T*>(a.xst) + m0 : nullptr;
  const int rows = a.M - m0;
  auto outliers = [&]() {
#pragma unroll
    for (int nt = 0; nt < NT; ++nt) {
      if (nt > 0) __syncwarp();  // osum[warp] is read by the previous tile's lanes
      add_outliers<T, MT>(a.outliers, xst, a.Mp, xs + (int64_t)m0 * a.ldx, a.ldx, rows, e_begin[nt], e_end[nt],
                          e_step, osum[warp], acc[nt]);
    }
  };
  if constexpr (!LATE) outliers();

  // Row g of each 8-row tile of X at this lane's 32 positions of its first chunk, WARPS chunks apart
  // per step; in place, rows past M read row 0 (their results are never written) and columns past K read
  // as zero (only the last chunk can hold them). Each chunk's X serves the block's NT tiles.
  const uint4* X[MT];
#pragma unroll
  for (int mt = 0; mt < MT; ++mt) {
    const int row = m0 + 8 * mt + g;
    X[mt] = reinterpret_cast<const uint4*>(xs + (int64_t)(xst || row < a.M ? row : 0) * a.ldx +
                                           (int64_t)(c_begin + warp) * kChunk + 32 * t);
  }
  constexpr int X_STEP = WARPS * kChunk / 8;  // uint4 between a warp's consecutive chunks
  const int c_whole = (int)(a.kx / kChunk);  // chunks below this one are whole
  // One tile: two sums per row tile (even and odd tiles), two chains of dependent mma instead of one
  // of 8; with more tiles the tiles' chains interleave already.
  constexpr int CHAINS = NT == 1 ? 2 : 1;
  float acc2[NT][MT][4] = {};
  for (int c0 = c_begin + warp; c0 < c_end; c0 += WARPS * DEPTH) {
#pragma unroll
    for (int s = 0; s < DEPTH; ++s) {
      const int c = c0 + WARPS * s;
      if (c >= c_end) break;
      uint4 xv[MT][4];
      if (c < c_whole) {
#pragma unroll
        for (int mt = 0; mt < MT; ++mt)
#pragma unroll
          for (int v = 0; v < 4; ++v) xv[mt][v] = __ldg(X[mt] + v);
      } else {
        const int64_t k0 = (int64_t)c * kChunk + 32 * t;
#pragma unroll
        for (int mt = 0; mt < MT; ++mt)
#pragma unroll
          for (int v = 0; v < 4; ++v) xv[mt][v] = k0 + 8 * v + 8 <= a.kx ? __ldg(X[mt] + v) : make_uint4(0, 0, 0, 0);
      }
#pragma unroll
      for (int mt = 0; mt < MT; ++mt) X[mt] += X_STEP;
#pragma unroll
      for (int nt = 0; nt < NT; ++nt) {
        T2 scale[2][2], shift[2][2];
        unit_stats<T>(st[s][nt].codes, st[s][nt].second, scale, shift);
#pragma unroll
        for (int j = 0; j < 8; ++j) {
          uint32_t af[4];
          weights_of<T, BITS>(tile_word<BITS>(st[s][nt].w, j), scale[j >> 2], shift[j >> 2], af);
#pragma unroll
          for (int mt = 0; mt < MT; ++mt) {
            const uint4& xj = xv[mt][j >> 1];
            mma<T>((CHAINS == 2 && (j & 1)) ? acc2[nt][mt] : acc[nt][mt], af, (j & 1) ? xj.z : xj.x,
                   (j & 1) ? xj.w : xj.y);
          }
        }
        if (c + WARPS * DEPTH < c_end)
          st[s][nt].load(wrec + ((int64_t)(c + WARPS * DEPTH) * 8 + nt) * REC, lane);
      }
    }
  }
  if constexpr (CHAINS == 2)
#pragma unroll
    for (int nt = 0; nt < NT; ++nt)
#pragma unroll
      for (int mt = 0; mt < MT; ++mt)
#pragma unroll
        for (int i = 0; i < 4; ++i) acc[nt][mt][i] += acc2[nt][mt][i];
  if constexpr (LATE) outliers();

  // The warps' sums meet in shared memory ([warp][accumulator][lane]: no bank conflicts); warp 0 writes.
  __shared__ float part[WARPS][NT * MT * 4][32];
#pragma unroll
  for (int nt = 0; nt < NT; ++nt)
#pragma unroll
    for (int mt = 0; mt < MT; ++mt)
#pragma unroll
      for (int i = 0; i < 4; ++i) part[warp][(nt * MT + mt) * 4 + i][lane] = acc[nt][mt][i];
  __syncthreads();
  if (warp != 0) return;
#pragma unroll
  for (int w = 1; w < WARPS; ++w)
#pragma unroll
    for (int nt = 0; nt < NT; ++nt)
#pragma unroll
      for (int mt = 0; mt < MT; ++mt)
#pragma unroll
        for (int i = 0; i < 4; ++i) acc[nt][mt][i] += part[w][(nt * MT + mt) * 4 + i][lane];
  auto each_output = [&](auto&& f) {
#pragma unroll
    for (int nt = 0; nt < NT; ++nt)
#pragma unroll
      for (int mt = 0; mt < MT; ++mt)
#pragma unroll
        for (int i = 0; i < 4; ++i)
          f((ntile0 + nt) * kTileN + g + 8 * (i >> 1), m0 + 8 * mt + 2 * t + (i & 1), acc[nt][mt][i]);
  };
  // Split-K by warp 0 alone (split_k.cuh; the block's grid tile counts one of a.splits).
  split_k::write_tile<T, false>(output_of(a), each_output, a.splits == 1, blockIdx.y * gridDim.x + blockIdx.x, 1,
                                a.splits, m0, ntile0 * kTileN, 8 * MT, NT * kTileN);
}

// X [M, K] → Xs [Mp, Kp] in sweep order (zero padded) and its transpose XsT [Kp, Mp]. WGMMA: Xs is
// instead [Kp / 128 chunks][Mp rows][128], each chunk's inputs in the order the warpgroup kernel
// stages them (gptq_layout::wgmma_input).
template <class T, bool WGMMA>
__global__ void gather_kernel(const T* __restrict__ X, int64_t M, int64_t K, int64_t Mp, int64_t Kp,
                              const int32_t* __restrict__ perm, T* __restrict__ xs, T* __restrict__ xst) {
  let_next_launch();  // the product may start (it waits for X)
  const int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= Mp * Kp) return;
  const int64_t m = WGMMA ? i / kChunk % Mp : i / Kp;
  const int64_t p = WGMMA ? i / (Mp * kChunk) * kChunk + gptq_layout::wgmma_input((int)(i % kChunk)) : i % Kp;
  const T v = m < M && p < K ? X[m * K + (perm ? perm[p] : p)] : from_float<T>(0.f);
  xs[i] = v;
  xst[p * Mp + m] = v;
}

bool capturing(cudaStream_t stream) {
  cudaStreamCaptureStatus st = cudaStreamCaptureStatusNone;
  check(cudaStreamIsCapturing(stream, &st), "cudaStreamIsCapturing");
  return st != cudaStreamCaptureStatusNone;
}

int multiprocessors(int device) {
  static int cached[64] = {0};
  if (device < 0 || device >= 64) return 132;
  if (!cached[device]) check(cudaDeviceGetAttribute(&cached[device], cudaDevAttrMultiProcessorCount, device), "SM count");
  return cached[device];
}

template <auto KERNEL, int THREADS>
int occupancy() {
  static int blocks[64] = {};
  const int device = current_device(), slot = device >= 0 && device < 64 ? device : 0;
  if (!blocks[slot]) {
    int b = 0;
    check(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&b, KERNEL, THREADS, 0),
          "cudaOccupancyMaxActiveBlocksPerMultiprocessor (SpQR)");
    blocks[slot] = b < 1 ? 1 : b;
  }
  return blocks[slot];
}

using Launch = SpqrLaunch;
struct Kernel {
  Launch launch;
  int (*occupancy)();
  bool gemv;  // spqr_gemv_kernel: NT 16-row tiles per block, at least one chunk per warp and split
  int cols;   // output rows per block (grid y = Np / cols): 16·NT for the GEMV, 128 for the others
  bool wgmma_order = false;  // X gathered in the warpgroup kernel's order
  int warps = 8;
};
// overlap: launched overlapped with the previous kernel in the stream (overlap.cuh), so that its
// blocks start and request their records while the gather or the previous product finishes.
template <auto KERNEL, int THREADS>
void launch(const Args& a, dim3 grid, cudaStream_t s, bool overlap) {
  launch_maybe_overlapped(KERNEL, grid, dim3(THREADS), 0, s, overlap, "SpQR product launch", a);
}
template <auto KERNEL, int WARPS = 8>
Kernel kernel_of(bool gemv, int cols) {
  return {launch<KERNEL, 32 * WARPS>, occupancy<KERNEL, 32 * WARPS>, gemv, cols, false, WARPS};
}
// The variants (bench/cuda-spqr.cu times each; the check runs each):
//  0: spqr_tc_kernel, 2 chunks in flight, outliers after the dense loop, 16-row tiles capped at 128
//     registers (2 blocks per SM). The sweeps of 2026-12-01 chose these over outliers first (1.5-5%
//     slower at M = 1) and uncapped 16-row tiles (146 registers, 1 block per SM: 9-38% slower at
//     M = 16); 3 and 4 chunks in flight were never faster.
//  1: spqr_gemv_kernel, 2 chunks in flight per warp, outliers before the dense loop;
//  2: the same with the outliers after it;
//  3: 8 rows of X: 2 chunks in flight, outliers after, registers capped for 3 blocks per SM (85)
//     instead of 4 (64: spills 20-40 bytes); 16 rows: 3 chunks in flight, outliers after. (4 chunks
//     in flight for 8 rows, capped for 2 blocks per SM, ran 5-22% slower on 11008 x 4096 and 8192²,
//     4% faster on 4096², H200 2026-12-02.)
//  4: two 16-row tiles per block (each chunk's X applied to both), 2 chunks in flight, outliers
//     after, registers capped for 2 blocks per SM;
//  5: the same with 1 chunk in flight;
//  6: on compute capability 9.0, the warpgroup kernel (gemm_wgmma.cu: 128 output rows and 16, 32 or
//     64 rows of X a block, X staged in shared memory for the tensor cores; X gathered in its
//     order). Elsewhere variant 5 (9+ rows) or 2 runs instead;
//  7: variant 2 with 16 warps a block (each a chunk in 16), registers capped for 2 blocks per SM
//     (8 rows of X; 1 for 16).
constexpr int kVariants = 8;
constexpr int kWgmmaVariant = 6;
template <int BITS, class T, int MT>
Kernel kernel_for(int variant) {
  constexpr int CAP = MT == 1 ? 1 : 2, GCAP = MT == 1 ? 4 : 2, DEEP = MT == 1 ? 2 : 3, DEEP_CAP = MT == 1 ? 3 : 2;
  switch (variant) {
    case 1: return kernel_of<spqr_gemv_kernel<BITS, T, MT, 1, 2, GCAP, false>>(true, kTileN);
    case 2: return kernel_of<spqr_gemv_kernel<BITS, T, MT, 1, 2, GCAP, true>>(true, kTileN);
    case 3: return kernel_of<spqr_gemv_kernel<BITS, T, MT, 1, DEEP, DEEP_CAP, true>>(true, kTileN);
    case 4: return kernel_of<spqr_gemv_kernel<BITS, T, MT, 2, 2, 2, true>>(true, 2 * kTileN);
    case 5: return kernel_of<spqr_gemv_kernel<BITS, T, MT, 2, 1, 2, true>>(true, 2 * kTileN);
    case 7: return kernel_of<spqr_gemv_kernel<BITS, T, MT, 1, 2, MT == 1 ? 2 : 1, true, 16>, 16>(true, kTileN);
    default: return kernel_of<spqr_tc_kernel<BITS, T, MT, 2, CAP, true>>(false, 128);
  }
}
template <class T>
Kernel kernel_for(int bits, int mt, int variant) {
  switch (bits * 2 + (mt - 1)) {
    case 4: return kernel_for<2, T, 1>(variant);
    case 5: return kernel_for<2, T, 2>(variant);
    case 6: return kernel_for<3, T, 1>(variant);
    case 7: return kernel_for<3, T, 2>(variant);
    case 8: return kernel_for<4, T, 1>(variant);
    default: return kernel_for<4, T, 2>(variant);
  }
}
// Whether the variant runs the warpgroup kernel here (else its stand-in, kernel_for says which).
bool runs_wgmma(int variant) { return variant == kWgmmaVariant && spqr_wgmma_available(current_device()); }

// rows: of X per block, rows_for's.
Kernel kernel_for(SpqrDtype dtype, int bits, int rows, int variant) {
  if (variant == kWgmmaVariant) {
    if (runs_wgmma(variant)) {
      const SpqrWgmmaKernel w = spqr_wgmma_kernel(dtype, bits, rows);
      return {w.launch, w.occupancy, false, 128, true};
    }
    variant = rows == 16 ? 5 : 2;
  }
  const int mt = rows / 8;
  return dtype == SpqrDtype::f16 ? kernel_for<__half>(bits, mt, variant) : kernel_for<__nv_bfloat16>(bits, mt, variant);
}

// The variant a product runs by default (bench/RESULTS.md, "SpQR products on the H200"):
//  - up to 8 rows of X, the K-splitting GEMV, with 16 warps a block where its grid fits one wave of
//    resident blocks (4096², M = 1: 7.3 → 6.7 µs at 4 bits), else 8 (twice the blocks in flight:
//    16 warps were 1.1-1.2× slower on 11008 × 4096 and 8192²);
//  - 9-16 rows, the GEMV with two tiles per block (each chunk's X read once for both) where that grid
//    still gives every multiprocessor a block (H200, M = 16: 8192² 36.2 → 29.3 µs, while on 4096²,
//    128 blocks, it was 1.3× slower), else with one; but the warpgroup kernel where the GEMV's grid
//    needs more than one wave of resident blocks (11008 × 4096: 29.4 → 23.3 µs at 4 bits; where the
//    GEMV fits one wave it was as fast or faster: 4096², 8192²);
//  - above 16 rows, the warpgroup kernel (the weights decoded once for 32 or 64 rows of X), else the
//    tile kernel.
int default_variant(const SpqrDeviceWeights& W, int64_t M) {
  check(cudaSetDevice(W.device), "cudaSetDevice");  // (the occupancies below are the current device's)
  const bool wgmma = spqr_wgmma_available(W.device);
  if (M > 16) return wgmma ? kWgmmaVariant : 0;
  if (M <= 8) {
    const Kernel k16 = kernel_for(SpqrDtype::f16, W.bits, 8, 7);
    return W.Np / kTileN <= (int64_t)k16.occupancy() * multiprocessors(W.device) ? 7 : 2;
  }
  const int gemv = W.Np / (2 * kTileN) >= multiprocessors(W.device) ? 5 : 2;
  if (wgmma) {
    const Kernel k = kernel_for(SpqrDtype::f16, W.bits, 16, gemv);
    if (W.Np / k.cols > (int64_t)k.occupancy() * multiprocessors(W.device)) return kWgmmaVariant;
  }
  return gemv;
}

// Rows of X per block: 8 up to 8 rows, else 16; the warpgroup kernel 16, 32 or 64 (its wgmma's N:
// the weights are decoded once for that many rows).
int rows_for(int64_t M, int variant) {
  if (runs_wgmma(variant)) return M <= 16 ? 16 : M <= 32 ? 32 : 64;
  return M <= 8 ? 8 : 16;
}

}  // namespace

void spqr_choose(const SpqrDeviceWeights& W, int64_t M, int* rows_per_block, int* splits, int variant) {
  // Rows of X per block: rows_for's. The tile and warpgroup kernels split K until the grid fills one
  // wave of resident blocks, keeping at least 4 chunks of K per split (as the GPTQ kernels choose);
  // the GEMV, whose blocks already split K among their warps, only until every multiprocessor has a
  // block, keeping at least one chunk per warp and split.
  check(cudaSetDevice(W.device), "cudaSetDevice");
  if (variant < 0 || variant >= kVariants) variant = default_variant(W, M);
  const int mt = rows_for(M, variant) / 8;
  const Kernel k = kernel_for(SpqrDtype::f16, W.bits, 8 * mt, variant);
  const int64_t chunks = W.Kp / kChunk, row_blocks = ceil_div(M, 8 * mt);
  *rows_per_block = 8 * mt;
  if (k.gemv) {
    const int64_t tiles = row_blocks * ceil_div(W.N, (int64_t)k.cols);
    *splits = (int)std::max<int64_t>(1, std::min(multiprocessors(W.device) / tiles, chunks / k.warps));
  } else {
    const int64_t tiles = row_blocks * (W.Np / k.cols), target = (int64_t)k.occupancy() * multiprocessors(W.device);
    *splits = (int)std::max<int64_t>(1, std::min(target / tiles, chunks / 4));
  }
}

int spqr_variant_count() { return kVariants; }
int spqr_default_variant(const SpqrDeviceWeights& W, int64_t M) { return default_variant(W, M); }

void spqr_gather(const SpqrDeviceWeights& W, const void* X, SpqrDtype dtype, int64_t M, void* stream_ptr, int variant) {
  require(M >= 1 && M <= (int64_t)1 << 24, "E_SHAPE", "M must be in [1, 2^24]");
  if (variant < 0 || variant >= kVariants) variant = default_variant(W, M);
  const cudaStream_t stream = static_cast<cudaStream_t>(stream_ptr);
  auto& Wm = const_cast<SpqrDeviceWeights&>(W);  // scratch grows on demand
  const int rows = rows_for(M, variant);
  const int64_t Mp = ceil_div(M, rows) * rows;
  const int64_t xs_need = checked_product({2, Mp, W.Kp, 2}, "SpQR X scratch");
  check(cudaSetDevice(W.device), "cudaSetDevice");
  if (Wm.xs_bytes < xs_need) {
    require(!capturing(stream), "E_CUDA", "SpQR product: scratch for X must grow outside graph capture (run once first)");
    check(cudaStreamSynchronize(stream), "cudaStreamSynchronize");
    if (Wm.xs) cudaFree(Wm.xs);
    Wm.xs = nullptr;
    Wm.xs_bytes = 0;
    check(cudaMalloc(&Wm.xs, (size_t)xs_need), "cudaMalloc (SpQR X scratch)");
    Wm.xs_bytes = xs_need;
  }
  void* xs = Wm.xs;
  void* xst = static_cast<char*>(Wm.xs) + Mp * W.Kp * 2;
  const int64_t total = Mp * W.Kp;
  const unsigned blocks = (unsigned)ceil_div(total, 256);
  const bool wgmma_order = kernel_for(dtype, W.bits, rows, variant).wgmma_order;
  auto run = [&](auto kernel, auto* x) {
    using T = std::remove_const_t<std::remove_pointer_t<decltype(x)>>;
    kernel<<<blocks, 256, 0, stream>>>(x, M, W.K, Mp, W.Kp, W.perm, static_cast<T*>(xs), static_cast<T*>(xst));
  };
  if (dtype == SpqrDtype::f16) {
    const auto* x = static_cast<const __half*>(X);
    wgmma_order ? run(gather_kernel<__half, true>, x) : run(gather_kernel<__half, false>, x);
  } else {
    const auto* x = static_cast<const __nv_bfloat16*>(X);
    wgmma_order ? run(gather_kernel<__nv_bfloat16, true>, x) : run(gather_kernel<__nv_bfloat16, false>, x);
  }
  check(cudaGetLastError(), "SpQR gather launch");
  Wm.xs_wgmma_order = wgmma_order;
}

namespace {

// The product from the gathered X in W's scratch (x_in_place null) or from the caller's X itself
// (the GEMV only; rows 16-byte aligned, in sweep order: no permutation).
void run_product(const SpqrDeviceWeights& W, const void* x_in_place, SpqrDtype dtype, int64_t M, void* Y,
                 const float* bias, cudaStream_t stream, int splits, bool overlap, int variant) {
  require(M >= 1 && M <= (int64_t)1 << 24, "E_SHAPE", "M must be in [1, 2^24]");
  int rows = 8, chosen = 1;
  if (variant < 0 || variant >= kVariants) variant = default_variant(W, M);
  spqr_choose(W, M, &rows, &chosen, variant);
  if (splits < 1) splits = chosen;
  const int64_t chunks = W.Kp / kChunk;
  splits = (int)std::min<int64_t>(splits, chunks);
  auto& Wm = const_cast<SpqrDeviceWeights&>(W);  // scratch grows on demand
  const int64_t Mp = ceil_div(M, rows) * rows;
  const Kernel k = kernel_for(dtype, W.bits, rows, variant);
  require(!x_in_place || (k.gemv && !W.perm), "E_INTERNAL", "SpQR product: X in place needs the GEMV and no permutation");
  require(x_in_place || (W.xs != nullptr && W.xs_bytes >= checked_product({2, Mp, W.Kp, 2})), "E_INTERNAL",
          "SpQR product: X not gathered (spqr_gather first)");
  require(x_in_place || W.xs_wgmma_order == k.wgmma_order, "E_INTERNAL",
          "SpQR product: X gathered for another kernel variant (spqr_gather with the same variant first)");

  const dim3 grid((unsigned)(Mp / rows), (unsigned)(W.Np / k.cols), (unsigned)splits);
  Args a{};
  a.records = W.records;
  a.rowptr = W.rowptr;
  a.outliers = W.outliers;
  if (x_in_place) {
    a.xs = x_in_place;
    a.xst = nullptr;
    a.ldx = W.K;
    a.kx = W.K;
  } else {
    a.xs = W.xs;
    a.xst = static_cast<const char*>(W.xs) + Mp * W.Kp * 2;
    a.ldx = W.Kp;
    a.kx = W.Kp;
  }
  a.bias = bias;
  a.y = Y;
  a.M = (int)M;
  a.Mp = (int)Mp;
  a.N = (int)W.N;
  a.Np = (int)W.Np;
  a.Kp = (int)W.Kp;
  a.chunks = (int)chunks;
  a.splits = splits;
  if (splits > 1) {
    grow_split_k(Wm.partial, Wm.counters, Wm.partial_floats, Wm.counter_count, M * W.Np, (int64_t)grid.x * grid.y,
                 stream, "SpQR product");
    a.partial = Wm.partial;
    a.counters = Wm.counters;
  }
  k.launch(a, grid, stream, overlap && overlap_enabled(W.device));
  check(cudaGetLastError(), "SpQR product launch");
}

}  // namespace

void spqr_product(const SpqrDeviceWeights& W, SpqrDtype dtype, int64_t M, void* Y, const float* bias,
                  void* stream_ptr, int splits, bool overlap, int variant) {
  run_product(W, nullptr, dtype, M, Y, bias, static_cast<cudaStream_t>(stream_ptr), splits, overlap, variant);
}

bool spqr_reads_x_in_place(const SpqrDeviceWeights& W, const void* X, int64_t M, int variant) {
  // Up to 8 rows: from 9 the outliers' 16 scattered loads of X per entry (one per row, where the
  // gathered XsT gives them in two 16-byte loads) cost more than the gather saves (H200, 2026-12-02:
  // 8192² M = 16, 47 us in place against 36 gathered).
  if (variant < 0 || variant >= kVariants) variant = default_variant(W, M);
  return M <= 8 && !W.perm && W.K % 8 == 0 && (reinterpret_cast<uintptr_t>(X) & 15) == 0 &&
         kernel_for(SpqrDtype::f16, W.bits, rows_for(M, variant), variant).gemv;
}

void spqr_matmul_splits(const SpqrDeviceWeights& W, const void* X, SpqrDtype dtype, int64_t M, void* Y,
                        const float* bias, void* stream, int splits, bool overlap, int variant) {
  // Without a permutation the GEMV reads X where it is (one launch); else X is gathered first.
  if (spqr_reads_x_in_place(W, X, M, variant)) {
    run_product(W, X, dtype, M, Y, bias, static_cast<cudaStream_t>(stream), splits, overlap, variant);
    return;
  }
  spqr_gather(W, X, dtype, M, stream, variant);
  spqr_product(W, dtype, M, Y, bias, stream, splits, overlap, variant);
}

void spqr_matmul(const SpqrDeviceWeights& W, const void* X, SpqrDtype dtype, int64_t M, void* Y, const float* bias,
                 void* stream) {
  spqr_matmul_splits(W, X, dtype, M, Y, bias, stream, 0, true, -1);
}

}  // namespace cuda
}  // namespace lowbit

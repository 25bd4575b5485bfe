// The SpQR product on Hopper's warpgroup tensor-core instructions (wgmma, sm_90a), for 9 and more
// rows of X: Y [M, N] = X [M, K] · Wᵀ + bias with W in the SpQR records (spqr_kernels.hpp).
//
// A block is two warpgroups (8 warps) on 128 output rows, each warp one 16-row tile (a warpgroup's 64
// rows are wgmma's M), and BN = 16, 32 or 64 rows of X (wgmma's N; the records are decoded once for
// all of them), over a range of K (split-K over the grid's z).
// The records already give each lane its A fragments in the layout the register A operand of
// wgmma m64nNk16 takes (per warp, what mma.sync m16n8k16's A holds), so every warp streams its own
// records from global memory into registers, DEPTH chunks ahead, decodes the statistics and the
// weights in registers exactly as the mma.sync kernels do (tile.cuh), and issues 8 wgmma per chunk.
// X, gathered beforehand in the order the A fragments hold the inputs (gemm.cu's gather with the
// warpgroup order, the GPTQ kernel's wgmma_input), is staged once per block in shared memory through
// a cp.async ring of 128-byte-swizzled atoms and read from there by the tensor cores: against the
// mma.sync GEMV, no warp loads X into registers, and the decoding of one step overlaps the product of
// the step before. The outliers are added after the dense loop from X transposed, as the tile kernel
// adds them (the accumulators of wgmma m64n16k16 are, per warp, mma.sync's C of two n8 tiles).
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "../cuda_check.cuh"
#include "../overlap.cuh"
#include "../gptq_kernels/product.cuh"
#include "../gptq_kernels/wgmma.cuh"
#include "gemm_wgmma.hpp"
#include "tile.cuh"

namespace lowbit {
namespace cuda {

using namespace spqr_tile;
using namespace wgmma_ops;
namespace gp = gptq_product;

namespace {

template <int BN>
struct Shape {
  static constexpr int atom = BN * 128;              // BN rows × 64 positions of 2 bytes
  static constexpr int stage = 2 * atom;             // one chunk of 128 inputs
  static constexpr int stages = 4;                   // X two chunks ahead
  static constexpr int smem = stages * stage + 1024;  // + room to align the ring to 1024 bytes
};
constexpr int kDepth = 2;  // chunks of records in flight per warp

// Registers capped for 2 blocks per multiprocessor (3 at 16 rows of X, 80 registers, was 2-10%
// slower on 4096² and 11008 × 4096, H200 2026-12-03).
template <int BITS, class T, int BN>
__global__ void __launch_bounds__(256, 2) spqr_wgmma_kernel(Args a) {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
  using T2 = typename Dtype<T>::T2;
  using S = Shape<BN>;
  constexpr int kAtom = S::atom, kStage = S::stage, kStages = S::stages;
  constexpr int MT = BN / 8, REC = record_bytes(BITS);
  extern __shared__ uint4 smem_u4[];
  uint8_t* smem = reinterpret_cast<uint8_t*>(smem_u4);
  smem += (1024 - (gp::smem_addr(smem) & 1023)) & 1023;  // the swizzle repeats every 1024 bytes of address
  const uint32_t smem_base = gp::smem_addr(smem);

  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int ntile0 = blockIdx.y * 8, ntile = ntile0 + warp;
  const int m0 = blockIdx.x * BN, z = blockIdx.z;
  const int c_begin = (int)((int64_t)z * a.chunks / a.splits), c_end = (int)((int64_t)(z + 1) * a.chunks / a.splits);

  // This lane's outlier entries (row ntile·16 + lane % 16), requested first: entries z·2 + (lane ≥ 16)
  // of the row, stepping 2·splits.
  int e_begin = 0, e_end = 0;
  {
    const int64_t n = (int64_t)ntile * kTileN + (lane & 15);
    if (n < a.N) e_begin = __ldg(a.rowptr + n) + 2 * z + (lane >> 4), e_end = __ldg(a.rowptr + n + 1);
  }
  // This warp's record of the next chunk to load (chunks follow each other 8 records apart).
  const uint8_t* w_next = a.records + (record_index(ntile, 0, a.chunks) + (int64_t)c_begin * 8) * REC;
  keep(w_next);
  RecordShare<BITS> st[kDepth];
#pragma unroll
  for (int s = 0; s < kDepth; ++s)
    if (c_begin + s < c_end) st[s].load(w_next, lane), w_next += 8 * REC;

  // X staged: a stage is BN rows × 256 bytes of the gathered X ([chunk][Mp rows][128 inputs in the
  // warpgroup order]), BN / 16 pieces of 16 bytes per thread: rows tid / 16 + 16·i, unit tid % 16
  // (atom unit / 8, swizzled by the row's low 3 bits, the same for all of them).
  const int pr = tid >> 4, pu = tid & 15;
  uint32_t xs_dst = smem_base + (pu >> 3) * kAtom + pr * 128 + (((pu & 7) ^ (pr & 7)) << 4);
  const T* xs_next = static_cast<const T*>(a.xs) + ((int64_t)c_begin * a.Mp + m0 + pr) * kChunk + pu * 8;
  const int64_t xs_step = (int64_t)a.Mp * kChunk;
  keep(xs_dst), keep(xs_next);
  auto load_x = [&](int stage) {
#pragma unroll
    for (int i = 0; i < BN / 16; ++i)
      asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(xs_dst + stage * kStage + i * 16 * 128),
                   "l"(xs_next + i * 16 * kChunk));
    xs_next += xs_step;
  };

  // X is read from here on: wait for the gather (overlap.cuh), then let the next product start
  // fetching its records (one product ahead at most).
  wait_for_previous();
  let_next_launch();
  // X runs kStages - 2 chunks ahead: the stage refilled at chunk c is chunk c - 2's, whose last
  // wgmma may still be in flight at chunk c - 1 but not at c (the waits below).
#pragma unroll
  for (int s = 0; s < kStages - 2; ++s) {
    if (c_begin + s < c_end) load_x(s);
    gp::cp_async_commit();
  }

  float acc[MT][4];
#pragma unroll
  for (int i = 0; i < MT; ++i)
#pragma unroll
    for (int e = 0; e < 4; ++e) acc[i][e] = 0.f;
  // Two A fragments: step j's is written once step j - 2's wgmma has finished, so the decoding of one
  // step overlaps the product of the one before.
  uint32_t af[2][4];
  const uint64_t desc0 = b_descriptor(smem_base);
  const uint32_t desc_lo = (uint32_t)desc0, desc_hi = (uint32_t)(desc0 >> 32);
  int stage = 0;  // (c - c_begin) % kStages, kept by counting
  for (int c0 = c_begin; c0 < c_end; c0 += kDepth) {
#pragma unroll
    for (int s = 0; s < kDepth; ++s) {
      const int c = c0 + s;
      if (c >= c_end) break;  // the same for the whole block
      gp::cp_async_wait<kStages - 3>();
      fence_async_shared();
      __syncthreads();  // chunk c's X is in, from every thread
      if (c + kStages - 2 < c_end) load_x(stage >= 2 ? stage - 2 : stage + kStages - 2);
      gp::cp_async_commit();
      T2 scale[2][2], shift[2][2];
      unit_stats<T>(st[s].codes, st[s].second, scale, shift);
      uint32_t w[8];
#pragma unroll
      for (int j = 0; j < 8; ++j) w[j] = tile_word<BITS>(st[s].w, j);
      if (c + kDepth < c_end) st[s].load(w_next, lane), w_next += 8 * REC;
      const uint32_t stage_lo = desc_lo + (uint32_t)(stage * kStage >> 4);
#pragma unroll
      for (int j = 0; j < 8; ++j) {
        wgmma_wait<1>();
#pragma unroll
        for (int r = 0; r < 4; ++r) hold(af[j & 1][r]);
        weights_of<T, BITS>(w[j], scale[j >> 2], shift[j >> 2], af[j & 1]);
        wgmma_fence();
        const uint32_t lo = stage_lo + (uint32_t)(((j >> 2) * kAtom + (j & 3) * 32) >> 4);
        wgmma<T, BN>(acc, af[j & 1], (uint64_t)desc_hi << 32 | lo);
        wgmma_commit();
      }
      stage = stage + 1 == kStages ? 0 : stage + 1;
    }
  }
  wgmma_wait<0>();
#pragma unroll
  for (int i = 0; i < MT; ++i)
#pragma unroll
    for (int e = 0; e < 4; ++e) hold(acc[i][e]);
  gp::cp_async_wait<0>();

  // The outliers, for 32 rows of X at a time (registers: one sum per row and lane).
  constexpr int MO = MT < 4 ? MT : 4;
  __shared__ float osum[8][kTileN][8 * MO + 1];
#pragma unroll
  for (int h = 0; h < MT / MO; ++h) {
    if (h > 0) __syncwarp();  // osum[warp] is read by the previous half's lanes
    add_outliers<T, MO>(a.outliers, static_cast<const T*>(a.xst) + m0 + 8 * MO * h, a.Mp, nullptr, 0, 0, e_begin,
                        e_end, 2 * a.splits, osum[warp], *reinterpret_cast<float(*)[MO][4]>(&acc[MO * h]));
  }
  write_result<T, MT>(a, acc, ntile0, m0);
#endif
}

template <int BITS, class T, int BN>
void launch(const Args& a, dim3 grid, cudaStream_t stream, bool overlap) {
  gp::set_smem_attribute<spqr_wgmma_kernel<BITS, T, BN>>(Shape<BN>::smem);
  launch_maybe_overlapped(spqr_wgmma_kernel<BITS, T, BN>, grid, dim3(256), Shape<BN>::smem, stream, overlap,
                          "SpQR product launch (wgmma)", a);
}

template <int BITS, class T, int BN>
int occupancy() {
  return gp::occupancy_of<spqr_wgmma_kernel<BITS, T, BN>>(256, Shape<BN>::smem);
}

template <int BITS, class T>
SpqrWgmmaKernel entry(int rows) {
  switch (rows) {
    case 16: return {launch<BITS, T, 16>, occupancy<BITS, T, 16>};
    case 32: return {launch<BITS, T, 32>, occupancy<BITS, T, 32>};
    case 64: return {launch<BITS, T, 64>, occupancy<BITS, T, 64>};
  }
  return {};
}

template <class T>
SpqrWgmmaKernel entry(int bits, int rows) {
  switch (bits) {
    case 2: return entry<2, T>(rows);
    case 3: return entry<3, T>(rows);
    case 4: return entry<4, T>(rows);
  }
  return {};
}

}  // namespace

bool spqr_wgmma_available(int device) { return compute_capability(device) == 90; }  // sm_90a code runs on 9.0 alone

SpqrWgmmaKernel spqr_wgmma_kernel(SpqrDtype dtype, int bits, int rows) {
  return dtype == SpqrDtype::f16 ? entry<__half>(bits, rows) : entry<__nv_bfloat16>(bits, rows);
}

}  // namespace cuda
}  // namespace lowbit

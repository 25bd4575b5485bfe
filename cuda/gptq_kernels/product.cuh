// What every GPTQ product kernel shares (gemm.cu's kernels for every GPU, gemm_wgmma.cu's for sm_90a):
// the kernel arguments, cp.async, the result writing (split-K included), the direct load of a
// warp's weight record, and the host-side launch table helpers. Included by those two files only.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "../cuda_check.cuh"
#include "../split_k.cuh"
#include "layout.hpp"
#include "tile_math.cuh"

namespace lowbit {
namespace cuda {
namespace gptq_product {

using namespace gptq_layout;
using namespace gptq_tile;

struct KernelArgs {
  const uint8_t* weights;
  const uint16_t* scale_zero;
  const int32_t* slot_group;
  const void* x;
  int64_t ldx;  // elements between rows of x
  int64_t kx;   // columns of x that hold data (the rest reads as zero)
  int M;
  void* y;
  int N;
  int Np;
  int chunks;
  int splits;
  float* partial;
  int32_t* counters;
};

// ---- cp.async helpers ----

__device__ __forceinline__ uint32_t smem_addr(const void* p) { return (uint32_t)__cvta_generic_to_shared(p); }

__device__ __forceinline__ void cp_async16(void* dst, const void* src, int src_bytes) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(smem_addr(dst)), "l"(src), "r"(src_bytes));
}
__device__ __forceinline__ void cp_async8(void* dst, const void* src) {
  asm volatile("cp.async.ca.shared.global [%0], [%1], 8;\n" ::"r"(smem_addr(dst)), "l"(src));
}
// 4 bytes to the shared-memory address dst, src_bytes of them read (0: zeros), through L1 (the
// 16-byte form is L2 only)
__device__ __forceinline__ void cp_async4(uint32_t dst, const void* src, int src_bytes) {
  asm volatile("cp.async.ca.shared.global [%0], [%1], 4, %2;\n" ::"r"(dst), "l"(src), "r"(src_bytes));
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }
template <int N>
__device__ __forceinline__ void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N));
}

__device__ __forceinline__ split_k::Output output_of(const KernelArgs& a) { return {a.y, nullptr, a.M, a.N, a.Np, a.partial, a.counters}; }

// Writes a block's results (split_k.cuh; the block's grid tile counts one of a.splits).
// acc[nt][mt][i]: output column n = tile + g + 8·(i >= 2), row m = 2t + (i & 1).
template <class T, int MT, int NT, int WM, int WN>
__device__ __forceinline__ void write_result(const KernelArgs& a, const float (&acc)[NT][MT][4], int ntile0, int m0) {
  constexpr int BM = 8 * MT * WM, BN = kTileN * NT * WN;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int wn = warp % WN, wm = warp / WN, g = lane >> 2, t = lane & 3;
  // Each of this thread's accumulators with its output column n and row m of Y.
  auto each_output = [&](auto&& f) {
#pragma unroll
    for (int nt = 0; nt < NT; ++nt)
#pragma unroll
      for (int mt = 0; mt < MT; ++mt)
#pragma unroll
        for (int i = 0; i < 4; ++i)
          f((ntile0 + wn * NT + nt) * kTileN + g + 8 * (i >> 1), m0 + wm * MT * 8 + mt * 8 + 2 * t + (i & 1),
            acc[nt][mt][i]);
  };
  split_k::write_tile<T, true>(output_of(a), each_output, a.splits == 1, blockIdx.y * gridDim.x + blockIdx.x, 1,
                               a.splits, m0, ntile0 * kTileN, BM, BN);
}

// One warp's share of one (tile, chunk) for the folded GEMVs: the lane's weight words and its
// scale/zero record, loaded ahead of use.
struct FoldStage {
  uint32_t w[8];
  uint2 sz;
};

// Loads the record of one (tile, chunk) into st: rec the record, sz the lane's scale/zero record of
// the chunk's group.
template <int BITS>
__device__ __forceinline__ void fold_load(FoldStage& st, const uint8_t* rec, const uint16_t* sz, int lane) {
  load_words<BITS>(rec, lane, st.w);
  st.sz = __ldg(reinterpret_cast<const uint2*>(sz));
}

// ---- host side: the launch table ----

using Launch = void (*)(const KernelArgs&, dim3, cudaStream_t);
using Occupancy = int (*)();

// The shared-memory limit is an attribute of a kernel on one device: set on each device once.
template <auto KERNEL>
void set_smem_attribute(int smem) {
  static bool done[64] = {};
  const int device = current_device();
  if (device >= 0 && device < 64 && done[device]) return;
  check(cudaFuncSetAttribute(KERNEL, cudaFuncAttributeMaxDynamicSharedMemorySize, smem),
        "cudaFuncSetAttribute (GPTQ kernel)");
  if (device >= 0 && device < 64) done[device] = true;
}

// Blocks of a kernel that fit on one multiprocessor (registers and shared memory), per device.
template <auto KERNEL>
int occupancy_of(int threads, int smem) {
  static int blocks[64] = {};
  const int device = current_device();
  const int slot = device >= 0 && device < 64 ? device : 0;
  if (!blocks[slot]) {
    set_smem_attribute<KERNEL>(smem);
    int b = 0;
    check(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&b, KERNEL, threads, smem),
          "cudaOccupancyMaxActiveBlocksPerMultiprocessor");
    blocks[slot] = b < 1 ? 1 : b;
  }
  return blocks[slot];
}

struct Kernel {
  Launch launch = nullptr;
  Occupancy occupancy = nullptr;
};

}  // namespace gptq_product
}  // namespace cuda
}  // namespace lowbit

// Hopper's warpgroup tensor-core primitives (wgmma, sm_90a), shared by the packed products that use
// them (gptq_kernels/gemm_wgmma.cu, spqr_kernels/gemm_wgmma.cu): the m64nNk16 product with A from
// registers and B from shared memory, its fences and waits, and the shared-memory descriptor of a
// K-major B operand in 128-byte-swizzled atoms. Compiled to nothing outside sm_90a.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>
#include <type_traits>

namespace lowbit {
namespace cuda {
namespace wgmma_ops {

#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
// d += A · B for one k16 step: A from registers (this warp's 16 rows of the 64), B from shared memory
// through its descriptor, BN columns (rows of X); d[i][0..3] as mma.sync's C of n8 tile i.
#define LOWBIT_WGMMA_N16(TY)                                                                     \
  asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %13, 0;\n"                                          \
               "wgmma.mma_async.sync.aligned.m64n16k16.f32." TY "." TY " {"                          \
               "%0, %1, %2, %3, %4, %5, %6, %7"  \
               "}, {%8, %9, %10, %11}, %12, p, 1, 1, 0;\n}\n"                                   \
               : "+f"(d[0][0]), "+f"(d[0][1]), "+f"(d[0][2]), "+f"(d[0][3]), "+f"(d[1][0]), "+f"(d[1][1]), "+f"(d[1][2]), "+f"(d[1][3]) \
               : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(desc), "r"(accumulate))

#define LOWBIT_WGMMA_N32(TY)                                                                     \
  asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %21, 0;\n"                                          \
               "wgmma.mma_async.sync.aligned.m64n32k16.f32." TY "." TY " {"                          \
               "%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15"  \
               "}, {%16, %17, %18, %19}, %20, p, 1, 1, 0;\n}\n"                                   \
               : "+f"(d[0][0]), "+f"(d[0][1]), "+f"(d[0][2]), "+f"(d[0][3]), "+f"(d[1][0]), "+f"(d[1][1]), "+f"(d[1][2]), "+f"(d[1][3]), \
                 "+f"(d[2][0]), "+f"(d[2][1]), "+f"(d[2][2]), "+f"(d[2][3]), "+f"(d[3][0]), "+f"(d[3][1]), "+f"(d[3][2]), "+f"(d[3][3]) \
               : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(desc), "r"(accumulate))

#define LOWBIT_WGMMA_N64(TY)                                                                     \
  asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %37, 0;\n"                                          \
               "wgmma.mma_async.sync.aligned.m64n64k16.f32." TY "." TY " {"                          \
               "%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, "  \
               "%16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31"  \
               "}, {%32, %33, %34, %35}, %36, p, 1, 1, 0;\n}\n"                                   \
               : "+f"(d[0][0]), "+f"(d[0][1]), "+f"(d[0][2]), "+f"(d[0][3]), "+f"(d[1][0]), "+f"(d[1][1]), "+f"(d[1][2]), "+f"(d[1][3]), \
                 "+f"(d[2][0]), "+f"(d[2][1]), "+f"(d[2][2]), "+f"(d[2][3]), "+f"(d[3][0]), "+f"(d[3][1]), "+f"(d[3][2]), "+f"(d[3][3]), \
                 "+f"(d[4][0]), "+f"(d[4][1]), "+f"(d[4][2]), "+f"(d[4][3]), "+f"(d[5][0]), "+f"(d[5][1]), "+f"(d[5][2]), "+f"(d[5][3]), \
                 "+f"(d[6][0]), "+f"(d[6][1]), "+f"(d[6][2]), "+f"(d[6][3]), "+f"(d[7][0]), "+f"(d[7][1]), "+f"(d[7][2]), "+f"(d[7][3]) \
               : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(desc), "r"(accumulate))

#define LOWBIT_WGMMA_N128(TY)                                                                     \
  asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %69, 0;\n"                                          \
               "wgmma.mma_async.sync.aligned.m64n128k16.f32." TY "." TY " {"                          \
               "%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, "  \
               "%16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, "  \
               "%32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, "  \
               "%48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63"  \
               "}, {%64, %65, %66, %67}, %68, p, 1, 1, 0;\n}\n"                                   \
               : "+f"(d[0][0]), "+f"(d[0][1]), "+f"(d[0][2]), "+f"(d[0][3]), "+f"(d[1][0]), "+f"(d[1][1]), "+f"(d[1][2]), "+f"(d[1][3]), \
                 "+f"(d[2][0]), "+f"(d[2][1]), "+f"(d[2][2]), "+f"(d[2][3]), "+f"(d[3][0]), "+f"(d[3][1]), "+f"(d[3][2]), "+f"(d[3][3]), \
                 "+f"(d[4][0]), "+f"(d[4][1]), "+f"(d[4][2]), "+f"(d[4][3]), "+f"(d[5][0]), "+f"(d[5][1]), "+f"(d[5][2]), "+f"(d[5][3]), \
                 "+f"(d[6][0]), "+f"(d[6][1]), "+f"(d[6][2]), "+f"(d[6][3]), "+f"(d[7][0]), "+f"(d[7][1]), "+f"(d[7][2]), "+f"(d[7][3]), \
                 "+f"(d[8][0]), "+f"(d[8][1]), "+f"(d[8][2]), "+f"(d[8][3]), "+f"(d[9][0]), "+f"(d[9][1]), "+f"(d[9][2]), "+f"(d[9][3]), \
                 "+f"(d[10][0]), "+f"(d[10][1]), "+f"(d[10][2]), "+f"(d[10][3]), "+f"(d[11][0]), "+f"(d[11][1]), "+f"(d[11][2]), "+f"(d[11][3]), \
                 "+f"(d[12][0]), "+f"(d[12][1]), "+f"(d[12][2]), "+f"(d[12][3]), "+f"(d[13][0]), "+f"(d[13][1]), "+f"(d[13][2]), "+f"(d[13][3]), \
                 "+f"(d[14][0]), "+f"(d[14][1]), "+f"(d[14][2]), "+f"(d[14][3]), "+f"(d[15][0]), "+f"(d[15][1]), "+f"(d[15][2]), "+f"(d[15][3]) \
               : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(desc), "r"(accumulate))
#endif

// accumulate = 0: d = A · B (the accumulators' old values ignored).
template <class T, int BN>
__device__ __forceinline__ void wgmma(float (&d)[BN / 8][4], const uint32_t (&a)[4], uint64_t desc, int accumulate = 1) {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
  constexpr bool half = std::is_same<T, __half>::value;
  if constexpr (BN == 16) {
    if constexpr (half) LOWBIT_WGMMA_N16("f16"); else LOWBIT_WGMMA_N16("bf16");
  } else if constexpr (BN == 32) {
    if constexpr (half) LOWBIT_WGMMA_N32("f16"); else LOWBIT_WGMMA_N32("bf16");
  } else if constexpr (BN == 64) {
    if constexpr (half) LOWBIT_WGMMA_N64("f16"); else LOWBIT_WGMMA_N64("bf16");
  } else {
    static_assert(BN == 128, "wgmma: BN is 16, 32, 64 or 128");
    if constexpr (half) LOWBIT_WGMMA_N128("f16"); else LOWBIT_WGMMA_N128("bf16");
  }
#endif
}

__device__ __forceinline__ void wgmma_fence() { asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory"); }
__device__ __forceinline__ void wgmma_commit() { asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory"); }
template <int N>
__device__ __forceinline__ void wgmma_wait() {
  asm volatile("wgmma.wait_group.sync.aligned %0;\n" ::"n"(N) : "memory");
}
// The cp.async writes of this thread made visible to the tensor cores' (async proxy) reads.
__device__ __forceinline__ void fence_async_shared() { asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory"); }
// Keeps the compiler from moving reads or writes of v across this point (the wgmma in flight owns it).
__device__ __forceinline__ void hold(float& v) { asm volatile("" : "+f"(v)::"memory"); }
__device__ __forceinline__ void hold(uint32_t& v) { asm volatile("" : "+r"(v)::"memory"); }
// Makes v opaque to the compiler, so that it is kept in a register rather than recomputed at each use.
__device__ __forceinline__ void keep(uint32_t& v) { asm volatile("" : "+r"(v)); }
__device__ __forceinline__ void keep(int& v) { asm volatile("" : "+r"(v)); }
__device__ __forceinline__ void keep(int64_t& v) { asm volatile("" : "+l"(v)); }
template <class P>
__device__ __forceinline__ void keep(P*& p) { asm volatile("" : "+l"(p)); }

// The shared-memory descriptor of a K-major B operand in 128-byte-swizzled atoms: start address,
// leading offset unused (1), 1024 bytes between groups of 8 rows, swizzle mode 1 (128 bytes).
__device__ __forceinline__ uint64_t b_descriptor(uint32_t addr) {
  return (uint64_t)((addr & 0x3FFFF) >> 4) | ((uint64_t)1 << 16) | ((uint64_t)(1024 >> 4) << 32) | ((uint64_t)1 << 62);
}

}  // namespace wgmma_ops
}  // namespace cuda
}  // namespace lowbit

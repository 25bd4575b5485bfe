// The SpQR product on Hopper's warpgroup instructions (gemm_wgmma.cu, compiled for sm_90a only), as
// gemm.cu's variant table sees it.
#pragma once

#include <cuda_runtime.h>

#include "spqr_kernels.hpp"

namespace lowbit {
namespace cuda {
namespace spqr_tile {
struct Args;
}

// A kernel's launch (grid, stream, overlapped or not) and its resident blocks per multiprocessor.
using SpqrLaunch = void (*)(const spqr_tile::Args&, dim3, cudaStream_t, bool);
struct SpqrWgmmaKernel {
  SpqrLaunch launch = nullptr;
  int (*occupancy)() = nullptr;
};

#ifndef LOWBIT_NO_WGMMA
// Whether the sm_90a kernel runs on `device` (compute capability exactly 9.0).
bool spqr_wgmma_available(int device);
// 128 output rows and `rows` (16, 32 or 64) rows of X per block, X gathered in the warpgroup order
// (gemm.cu's gather); empty for other rows.
SpqrWgmmaKernel spqr_wgmma_kernel(SpqrDtype dtype, int bits, int rows);
#else
// Built by an nvcc without sm_90a (older than 12.0): the mma.sync kernels serve every GPU.
inline bool spqr_wgmma_available(int) { return false; }
inline SpqrWgmmaKernel spqr_wgmma_kernel(SpqrDtype, int, int) { return {}; }
#endif

}  // namespace cuda
}  // namespace lowbit

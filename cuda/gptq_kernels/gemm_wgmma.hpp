// The wgmma GPTQ product (gemm_wgmma.cu, compiled for sm_90a only), as gemm.cu's table sees it.
#pragma once

#include "gptq_kernels.hpp"
#include "product.cuh"

namespace lowbit {
namespace cuda {

#ifndef LOWBIT_NO_WGMMA
// Whether the sm_90a kernels run on `device` (compute capability exactly 9.0).
bool wgmma_available(int device);
// The launch and occupancy of the kernel for these weights' bits, BN rows of X per block (16, 32, 64
// or 128) and 1 or 2 warpgroups (64 or 128 output columns) per block; empty for anything else.
gptq_product::Kernel wgmma_kernel(GptqDtype dtype, int bits, int bn, int warpgroups);
#else
// Built by an nvcc without sm_90a (older than 12.0): the mma.sync kernels serve every GPU.
inline bool wgmma_available(int) { return false; }
inline gptq_product::Kernel wgmma_kernel(GptqDtype, int, int, int) { return {}; }
#endif

}  // namespace cuda
}  // namespace lowbit

// The wgmma GPTQ product (gemm_wgmma.cu, compiled for sm_90a only), as gemm.cu's table sees it.
#pragma once

#include "gptq_kernels.hpp"
#include "product.cuh"

namespace lowbit {
namespace cuda {

#ifndef LOWBIT_NO_WGMMA
// Whether the sm_90a kernels run on `device` (compute capability exactly 9.0).
bool wgmma_available(int device);
// Whether the kernel of BN rows of X per block and `warpgroups` warpgroups has the folded form (scale
// and zero point applied to each chunk's f32 sums; weights whose groups hold whole chunks): measured
// faster at 16 rows and two warpgroups (H200, 8192 x 28672 4-bit M = 16: 76.1 -> 72.6 us), slower
// at 32 rows (3-5% at 4 and 3 bits: its BN/2 fmas a chunk cost more than they save).
constexpr bool wgmma_folds(int bn, int warpgroups) { return bn == 16 && warpgroups == 2; }
// The launch and occupancy of the kernel for these weights' bits, BN rows of X per block (16, 32, 64
// or 128), 1 or 2 warpgroups (64 or 128 output columns) per block, folded or not, X prepared by
// gemm.cu's prepare_x_wgmma or read in place (up to 32 rows); empty for anything else.
gptq_product::Kernel wgmma_kernel(GptqDtype dtype, int bits, int bn, int warpgroups, bool fold, bool prepared);
#else
// Built by an nvcc without sm_90a (older than 12.0): the mma.sync kernels serve every GPU.
inline bool wgmma_available(int) { return false; }
constexpr bool wgmma_folds(int, int) { return false; }
inline gptq_product::Kernel wgmma_kernel(GptqDtype, int, int, int, bool, bool) { return {}; }
#endif

}  // namespace cuda
}  // namespace lowbit

// The per-SIMD-level kernels behind cpu_gptq::gemm (repack.cpp dispatches). Each level lives in its
// own file (kernels_scalar.cpp, kernels_avx2.cpp, kernels_avx512.cpp), all compiled from the one
// source kernels_impl.hpp with a different vector type. Callers check the processor first.
#pragma once

#include <cstdint>

#include "repack.hpp"
#include "spqr_panels.hpp"

namespace lowbit {
namespace cpu_gptq {

// Activations prepared once per call, in the weights' padded (permuted) input order.
struct Activations {
  int64_t M = 0;
  int64_t padded_k = 0;       // row stride of xq / xf
  int64_t segments = 0;       // row stride of dx / xsum
  const int8_t* xq = nullptr;   // [M][padded_k] int8 (int8 path)
  const float* dx = nullptr;    // [M][segments] the segment's scale: x ≈ dx · xq
  const float* xsum = nullptr;  // [M][segments] Σ xq over the segment (an integer, as float)
  const float* xf = nullptr;    // [M][padded_k] f32 (exact path)
  // SpQR (spqr_panels.hpp): Σ xq over each first-level group, [M][groups] (integers, as floats),
  // and for M > 1 x transposed, [K][M rounded up to 16] (zero past M)
  int64_t groups = 0;
  const float* gsum = nullptr;
  const float* xt = nullptr;
};

#define LOWBIT_DECLARE_GPTQ_KERNELS(ns)                                                  \
  namespace ns {                                                                         \
  /* Y [M, N] from int8 activations; returns the kernel family's name */                 \
  const char* gemm_int8(const CpuGptqWeights& W, const Activations& A, float* Y);        \
  const char* gemm_f32(const CpuGptqWeights& W, const Activations& A, float* Y);         \
  /* rows [m0, m1) of X into A's layout: xq, dx, xsum (see kernels_impl.hpp) */          \
  void quantize_rows(const CpuGptqWeights& W, const float* X, int64_t m0, int64_t m1,    \
                     const Activations& A, int8_t* xq, float* dx, float* xsum);          \
  /* SpQR (spqr_panels.hpp): Y [M, N] from int8 activations, outliers from X itself */   \
  const char* gemm_spqr_int8(const SpqrPanels& W, const Activations& A, const float* X,  \
                             float* Y);                                                  \
  void quantize_rows(const SpqrPanels& W, const float* X, int64_t m0, int64_t m1,        \
                     const Activations& A, int8_t* xq, float* dx, float* xsum);          \
  }

LOWBIT_DECLARE_GPTQ_KERNELS(kernels_scalar)
LOWBIT_DECLARE_GPTQ_KERNELS(kernels_avx2)
LOWBIT_DECLARE_GPTQ_KERNELS(kernels_avx512)

#undef LOWBIT_DECLARE_GPTQ_KERNELS

}  // namespace cpu_gptq
}  // namespace lowbit

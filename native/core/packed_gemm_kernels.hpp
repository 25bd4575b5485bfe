// The per-SIMD-level entry points behind packed_gemm.cpp's dispatch. Each level lives in its own
// file (packed_gemm_scalar.cpp, packed_gemm_avx2.cpp, packed_gemm_avx512.cpp), all compiled from
// the one kernel source packed_gemm_impl.hpp with a different vector type and target attribute.
// Callers must check the processor first (detected_simd()): the AVX functions fault without it.
#pragma once

#include <cstdint>

#include "packed_matrix.hpp"

namespace lowbit {

#define LOWBIT_DECLARE_KERNELS(ns)                                                                    \
  namespace ns {                                                                                      \
  void packed_gemm(const float* X, int64_t M, const PackedMatrix& W, float* Y);                       \
  void dense_gemm(const float* X, int64_t M, const float* W, int64_t N, int64_t K, float* Y);         \
  }

LOWBIT_DECLARE_KERNELS(kernels_scalar)
LOWBIT_DECLARE_KERNELS(kernels_avx2)
LOWBIT_DECLARE_KERNELS(kernels_avx512)

#undef LOWBIT_DECLARE_KERNELS

}  // namespace lowbit

// Packed products without SIMD: the fallback for processors without AVX2/FMA/F16C (and for tests
// that force it). The kernels are those of packed_gemm_impl.hpp with one-lane vectors.
#define LOWBIT_KERNEL_NS kernels_scalar
#define LOWBIT_TARGET
#define LOWBIT_VEC_IS_SCALAR 1  // Vec = the impl's own one-lane ScalarVec
#include "packed_gemm_impl.hpp"

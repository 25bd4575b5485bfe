// Y = X · Wᵀ with W packed (GPTQ layout), f32 activations and accumulation, on the CPU.
// One entry point; it dispatches at run time to the widest SIMD the processor has.
#pragma once

#include <cstdint>

#include "packed_matrix.hpp"

namespace lowbit {

enum class SimdLevel : int { Scalar = 0, Avx2 = 1, Avx512 = 2 };

SimdLevel detected_simd();                // what this processor supports
SimdLevel active_simd();                  // what the kernels use (detected, unless forced lower)
void force_simd(SimdLevel level);         // for tests and benchmarks: cap the level used
const char* simd_name(SimdLevel level);

// X: [M, K] row-major f32, Y: [M, N] row-major f32 (overwritten). M = 1 is the GEMV path.
void packed_gemm(const float* X, int64_t M, const PackedMatrix& W, float* Y);

// The level the last packed_gemm call (on any thread) ran at: tests check that forcing a level
// really changes the kernels they compare, instead of comparing one path with itself.
SimdLevel last_packed_gemm_level();

// Dense reference product for benchmarks and unquantized layers: Y = X · Wᵀ, W [N, K] f32.
void dense_gemm(const float* X, int64_t M, const float* W, int64_t N, int64_t K, float* Y);

// Expands W to f32 [N, K] (dequantize).
void dequantize(const PackedMatrix& W, float* out);

}  // namespace lowbit

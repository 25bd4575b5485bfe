// Dense linear algebra on the GPU for GPTQ: row-major f32 GEMM, the Hessian's rank-m update, and
// the upper Cholesky factor of the inverse. cuBLAS and cuSOLVER are used when their shared
// libraries can be opened at run time (dlopen: the addon never links them, so it loads without
// them); otherwise built-in kernels (GEMM) and the CPU's blocked factorization (linalg.hpp) stand in.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>
#include <string>

namespace lowbit {
namespace cuda {

// "cuBLAS <version> + cuSOLVER <version> (dlopen)", or what is missing and the fallback in use.
std::string linalg_backend_description();
bool have_cublas();
bool have_cusolver();

// Row-major C[M, N] = alpha · op(A) · op(B) + beta · C, op(A) [M, Kd], op(B) [Kd, N]. trans_a: A is
// stored [Kd, M]; trans_b: B is stored [N, Kd]. Enqueued on `stream`.
void sgemm(cudaStream_t stream, bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t Kd, float alpha,
           const float* A, int64_t lda, const float* B, int64_t ldb, float beta, float* C, int64_t ldc);

// Row-major Y [M, N] = X [M, K] · W [N, K]ᵀ with X and W fp16 (bf16 = false) or bf16, f32 accumulation
// on the tensor cores (cublasGemmEx; a plain built-in kernel without cuBLAS); Y in the operands' type,
// or f32 when y_f32. Enqueued on `stream`.
void gemm16(cudaStream_t stream, bool bf16, int64_t M, int64_t N, int64_t K, const void* X, const void* W, void* Y,
            bool y_f32);

// The lower triangle (row-major) of C [K, K] = alpha · Xᵀ X + beta · C for X [m, K] row-major in fp16
// (bf16 = false) or bf16, f32 accumulation on the tensor cores: a strip of rows at a time, each strip
// only up to the diagonal, so about half the full product's work. Entries above the diagonal are left
// undefined (the caller mirrors). Needs cublasGemmEx (have_gemm16_tc()). Enqueued on `stream`.
void syrk16_lower(cudaStream_t stream, bool bf16, int64_t K, int64_t m, float alpha, const void* X, float beta,
                  float* C);
bool have_gemm16_tc();

// In place on the device: P [n, n] (double, symmetric positive definite, full matrix) becomes its
// lower Cholesky factor L (P = L Lᵀ, row-major lower triangle; the rest is scratch). Returns false
// when the factorization fails (a pivot not positive). Needs cuSOLVER.
bool cholesky_lower_device(cudaStream_t stream, double* P, int64_t n);

// On the device: out [n, n] = L⁻¹ (row-major, lower triangular; zeros above) for lower-triangular
// L [n, n] (row-major; only the lower triangle read). Needs cuBLAS.
void invert_lower_device(cudaStream_t stream, const double* L, double* out, int64_t n);

}  // namespace cuda
}  // namespace lowbit

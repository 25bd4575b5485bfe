// Dense linear algebra GPTQ needs on the CPU: a blocked, packed GEMM (float and double; AVX2+FMA
// when the processor has it), a symmetric rank-k update, Cholesky factorization and triangular
// inverse. All matrices are row-major with an explicit leading dimension (elements between rows).
#pragma once

#include <cstdint>

namespace lowbit {

// C[M, N] += alpha * op(A) * op(B), op(A) [M, Kd], op(B) [Kd, N]; trans_a: A is stored [Kd, M],
// trans_b: B is stored [N, Kd]. `parallel`: split the work over global_pool() (never from inside a
// parallel_for body).
template <class T>
void gemm(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t Kd, T alpha, const T* A, int64_t lda,
          const T* B, int64_t ldb, T* C, int64_t ldc, bool parallel = true);

// Lower triangle (including the diagonal) of C[N, N] += alpha * A^T A, A [Kd, N]. Multithreaded.
template <class T>
void syrk_lower_tn(int64_t N, int64_t Kd, T alpha, const T* A, int64_t lda, T* C, int64_t ldc);

// In place: the lower triangle of A [n, n] (symmetric positive definite, lower triangle read)
// becomes L with A = L L^T. Returns false (A partly overwritten) when a pivot is not positive and
// finite. The strict upper triangle is not touched. Blocked and multithreaded.
bool cholesky_lower(double* A, int64_t n, int64_t lda);

// In place: lower-triangular L [n, n] (non-zero diagonal) becomes L^-1. The strict upper triangle
// is not touched. Blocked and multithreaded.
void invert_lower(double* L, int64_t n, int64_t lda);

}  // namespace lowbit

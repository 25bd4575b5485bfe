#include "linalg.hpp"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

#include "common.hpp"
#include "packed_gemm.hpp"
#include "thread_pool.hpp"

namespace lowbit {
namespace {

// --- GEMM: the classic packed scheme. op(B) is copied panel by panel into strips NR columns wide,
// op(A) into strips MR rows tall, and an MR x NR tile of C is kept in registers while the kernel walks
// the shared dimension. Packing also absorbs the transposes, so one kernel serves every case.

// 32-byte vectors through GCC/Clang vector extensions: one kernel source for float and double that
// compiles to AVX2+FMA in the avx2 variant and to SSE2 pairs in the generic one.
template <class T>
struct Vec;
template <>
struct Vec<float> {
  typedef float type __attribute__((vector_size(32)));
  static constexpr int lanes = 8;
};
template <>
struct Vec<double> {
  typedef double type __attribute__((vector_size(32)));
  static constexpr int lanes = 4;
};

constexpr int kMR = 6;                              // rows of the register tile
template <class T>
constexpr int kNR = 2 * Vec<T>::lanes;              // columns of the register tile (two vectors)
constexpr int64_t kKC = 256;                        // shared-dimension block (A strip + B strip fit in L1/L2)
constexpr int64_t kMC = 120;                        // rows of A packed at once (a multiple of kMR)
constexpr int64_t kNC = 1024;                       // columns of B packed at once (L2/L3)
constexpr int64_t kNSub = 256;                      // columns of a B panel one task covers

template <class T>
inline T elem(bool trans, const T* X, int64_t ld, int64_t r, int64_t c) {
  return trans ? X[c * ld + r] : X[r * ld + c];
}

// op(A)[i0:i0+mc, k0:k0+kc] -> strips of kMR rows: for each k, kMR consecutive values (zero padded).
template <class T>
void pack_a(bool trans, const T* A, int64_t lda, int64_t i0, int64_t mc, int64_t k0, int64_t kc, T* out) {
  for (int64_t s = 0; s < mc; s += kMR) {
    const int64_t rows = std::min<int64_t>(kMR, mc - s);
    for (int64_t k = 0; k < kc; ++k)
      for (int r = 0; r < kMR; ++r) *out++ = r < rows ? elem(trans, A, lda, i0 + s + r, k0 + k) : T(0);
  }
}

// op(B)[k0:k0+kc, j0:j0+nc] -> strips of kNR columns: for each k, kNR consecutive values (zero padded).
template <class T>
void pack_b(bool trans, const T* B, int64_t ldb, int64_t k0, int64_t kc, int64_t j0, int64_t nc, T* out) {
  constexpr int NR = kNR<T>;
  for (int64_t s = 0; s < nc; s += NR) {
    const int64_t cols = std::min<int64_t>(NR, nc - s);
    for (int64_t k = 0; k < kc; ++k) {
      if (!trans && cols == NR) {
        std::memcpy(out, B + (k0 + k) * ldb + j0 + s, sizeof(T) * NR);
        out += NR;
      } else {
        for (int c = 0; c < NR; ++c) *out++ = c < cols ? elem(trans, B, ldb, k0 + k, j0 + s + c) : T(0);
      }
    }
  }
}

// C[mc, nc] += alpha * (packed A block) * (packed B strips): every register tile of the block.
template <class T>
inline __attribute__((always_inline)) void macro_kernel_body(int64_t mc, int64_t nc, int64_t kc, T alpha,
                                                              const T* Ap, const T* Bp, T* C, int64_t ldc) {
  using V = typename Vec<T>::type;
  constexpr int L = Vec<T>::lanes, NR = kNR<T>;
  for (int64_t js = 0; js < nc; js += NR) {
    const T* b_strip = Bp + (js / NR) * kc * NR;
    const int cols = (int)std::min<int64_t>(NR, nc - js);
    for (int64_t is = 0; is < mc; is += kMR) {
      const T* a = Ap + (is / kMR) * kc * kMR;
      const T* b = b_strip;
      const int rows = (int)std::min<int64_t>(kMR, mc - is);
      V acc[kMR][2];
      for (int r = 0; r < kMR; ++r) acc[r][0] = acc[r][1] = V{};
      for (int64_t k = 0; k < kc; ++k) {
        V b0, b1;
        std::memcpy(&b0, b, sizeof(V));
        std::memcpy(&b1, b + L, sizeof(V));
        for (int r = 0; r < kMR; ++r) {
          acc[r][0] += a[r] * b0;
          acc[r][1] += a[r] * b1;
        }
        a += kMR;
        b += NR;
      }
      T tile[kMR][NR];
      for (int r = 0; r < kMR; ++r) {
        std::memcpy(&tile[r][0], &acc[r][0], sizeof(V));
        std::memcpy(&tile[r][L], &acc[r][1], sizeof(V));
      }
      for (int r = 0; r < rows; ++r) {
        T* c = C + (is + r) * ldc + js;
        for (int j = 0; j < cols; ++j) c[j] += alpha * tile[r][j];
      }
    }
  }
}

__attribute__((target("avx2,fma"))) void macro_kernel_avx2(int64_t mc, int64_t nc, int64_t kc, float alpha,
                                                            const float* Ap, const float* Bp, float* C, int64_t ldc) {
  macro_kernel_body<float>(mc, nc, kc, alpha, Ap, Bp, C, ldc);
}
__attribute__((target("avx2,fma"))) void macro_kernel_avx2(int64_t mc, int64_t nc, int64_t kc, double alpha,
                                                            const double* Ap, const double* Bp, double* C,
                                                            int64_t ldc) {
  macro_kernel_body<double>(mc, nc, kc, alpha, Ap, Bp, C, ldc);
}
template <class T>
void macro_kernel_generic(int64_t mc, int64_t nc, int64_t kc, T alpha, const T* Ap, const T* Bp, T* C, int64_t ldc) {
  macro_kernel_body<T>(mc, nc, kc, alpha, Ap, Bp, C, ldc);
}

template <class T>
void macro_kernel(int64_t mc, int64_t nc, int64_t kc, T alpha, const T* Ap, const T* Bp, T* C, int64_t ldc) {
  if (active_simd() >= SimdLevel::Avx2) macro_kernel_avx2(mc, nc, kc, alpha, Ap, Bp, C, ldc);
  else macro_kernel_generic<T>(mc, nc, kc, alpha, Ap, Bp, C, ldc);
}

template <class T>
std::vector<T>& scratch(int which) {
  thread_local std::vector<T> buffers[2];
  return buffers[which];
}

// Lower tiles of C[n, n] += alpha * op(A) op(B), with op(A) [n, kd] and op(B) [kd, n]: tiles strictly
// above the diagonal are skipped, tiles on it are computed in full. Parallel over tiles.
template <class T>
void lower_tiles_gemm(int64_t n, int64_t kd, T alpha, bool trans_a, const T* A, int64_t lda, bool trans_b,
                      const T* B, int64_t ldb, T* C, int64_t ldc) {
  constexpr int64_t kTile = 192;
  const int64_t t = ceil_div(n, kTile);
  std::vector<std::pair<int64_t, int64_t>> tiles;
  for (int64_t bi = 0; bi < t; ++bi)
    for (int64_t bj = 0; bj <= bi; ++bj) tiles.emplace_back(bi, bj);
  global_pool()->parallel_for((int64_t)tiles.size(), 1, [&](int64_t a, int64_t b) {
    for (int64_t x = a; x < b; ++x) {
      const int64_t i0 = tiles[x].first * kTile, j0 = tiles[x].second * kTile;
      const int64_t mi = std::min(kTile, n - i0), nj = std::min(kTile, n - j0);
      const T* Ai = trans_a ? A + i0 : A + i0 * lda;
      const T* Bj = trans_b ? B + j0 * ldb : B + j0;
      gemm<T>(trans_a, trans_b, mi, nj, kd, alpha, Ai, lda, Bj, ldb, C + i0 * ldc + j0, ldc, false);
    }
  });
}

}  // namespace

template <class T>
void gemm(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t Kd, T alpha, const T* A, int64_t lda,
          const T* B, int64_t ldb, T* C, int64_t ldc, bool parallel) {
  if (M <= 0 || N <= 0 || Kd <= 0) return;
  constexpr int NR = kNR<T>;
  std::vector<T> b_panel;
  for (int64_t j0 = 0; j0 < N; j0 += kNC) {
    const int64_t nc = std::min(kNC, N - j0);
    for (int64_t k0 = 0; k0 < Kd; k0 += kKC) {
      const int64_t kc = std::min(kKC, Kd - k0);
      b_panel.resize((size_t)(ceil_div(nc, NR) * NR * kc));
      pack_b(trans_b, B, ldb, k0, kc, j0, nc, b_panel.data());
      // Tasks: blocks of kMC rows x kNSub columns of this panel.
      const int64_t mblocks = ceil_div(M, kMC), nsubs = ceil_div(nc, kNSub);
      auto run = [&](int64_t t0, int64_t t1) {
        std::vector<T>& a_block = scratch<T>(0);
        a_block.resize((size_t)(kMC * kc));
        int64_t packed_for = -1;
        for (int64_t task = t0; task < t1; ++task) {
          const int64_t mb = task / nsubs, ns = task % nsubs;
          const int64_t i0 = mb * kMC, mc = std::min(kMC, M - i0);
          if (packed_for != mb) {
            pack_a(trans_a, A, lda, i0, mc, k0, kc, a_block.data());
            packed_for = mb;
          }
          const int64_t js = ns * kNSub, ncs = std::min(kNSub, nc - js);
          macro_kernel<T>(mc, ncs, kc, alpha, a_block.data(), b_panel.data() + (js / NR) * kc * NR,
                          C + i0 * ldc + j0 + js, ldc);
        }
      };
      const int64_t tasks = mblocks * nsubs;
      if (parallel && tasks > 1 && (double)M * nc * kc > 2e6) global_pool()->parallel_for(tasks, 1, run);
      else run(0, tasks);
    }
  }
}

template void gemm<float>(bool, bool, int64_t, int64_t, int64_t, float, const float*, int64_t, const float*, int64_t,
                          float*, int64_t, bool);
template void gemm<double>(bool, bool, int64_t, int64_t, int64_t, double, const double*, int64_t, const double*,
                           int64_t, double*, int64_t, bool);

template <class T>
void syrk_lower_tn(int64_t N, int64_t Kd, T alpha, const T* A, int64_t lda, T* C, int64_t ldc) {
  lower_tiles_gemm<T>(N, Kd, alpha, true, A, lda, false, A, lda, C, ldc);
}
template void syrk_lower_tn<float>(int64_t, int64_t, float, const float*, int64_t, float*, int64_t);
template void syrk_lower_tn<double>(int64_t, int64_t, double, const double*, int64_t, double*, int64_t);

namespace {

// Unblocked Cholesky of the nb x nb diagonal block at A (row-major, lower triangle). `orig_diag` holds
// the block's diagonal before any update: a pivot that has lost all but 1e-12 of it counts as
// singular, since its inverse would be dominated by rounding.
bool cholesky_unblocked(double* A, int64_t nb, int64_t lda, const double* orig_diag) {
  for (int64_t j = 0; j < nb; ++j) {
    double* row_j = A + j * lda;
    double d = row_j[j];
    for (int64_t k = 0; k < j; ++k) d -= row_j[k] * row_j[k];
    if (!(d > 1e-12 * std::fabs(orig_diag[j])) || !std::isfinite(d)) return false;
    const double ljj = std::sqrt(d);
    row_j[j] = ljj;
    for (int64_t i = j + 1; i < nb; ++i) {
      double* row_i = A + i * lda;
      double s = row_i[j];
      for (int64_t k = 0; k < j; ++k) s -= row_i[k] * row_j[k];
      row_i[j] = s / ljj;
    }
  }
  return true;
}

constexpr int64_t kFactorBlock = 128;

}  // namespace

bool cholesky_lower(double* A, int64_t n, int64_t lda) {
  std::vector<double> diag((size_t)n);
  for (int64_t i = 0; i < n; ++i) diag[i] = A[i * lda + i];
  for (int64_t j0 = 0; j0 < n; j0 += kFactorBlock) {
    const int64_t j1 = std::min(n, j0 + kFactorBlock), nb = j1 - j0;
    double* L11 = A + j0 * lda + j0;
    if (!cholesky_unblocked(L11, nb, lda, diag.data() + j0)) return false;
    if (j1 == n) break;
    // Panel below the diagonal block: A21 <- A21 L11^-T (each row solves x L11^T = a).
    global_pool()->parallel_for(n - j1, 16, [&](int64_t r0, int64_t r1) {
      for (int64_t r = j1 + r0; r < j1 + r1; ++r) {
        double* x = A + r * lda + j0;
        for (int64_t c = 0; c < nb; ++c) {
          const double* l_row = L11 + c * lda;
          double s = x[c];
          for (int64_t k = 0; k < c; ++k) s -= x[k] * l_row[k];
          x[c] = s / l_row[c];
        }
      }
    });
    // Trailing matrix: A22 <- A22 - A21 A21^T (lower tiles).
    const double* A21 = A + j1 * lda + j0;
    lower_tiles_gemm<double>(n - j1, nb, -1.0, false, A21, lda, true, A21, lda, A + j1 * lda + j1, lda);
  }
  return true;
}

void invert_lower(double* L, int64_t n, int64_t lda) {
  // The products below run over whole rows, so the strict upper triangle must hold zeros.
  global_pool()->parallel_for(n, 64, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) std::fill(L + r * lda + r + 1, L + r * lda + n, 0.0);
  });
  // Block row by block row, top to bottom: with X = L^-1 known above row block I,
  //   X_II = L_II^-1  and  X_I,0:i0 = -X_II (L_I,0:i0 X_0:i0,0:i0).
  std::vector<double> Xii, T;
  for (int64_t i0 = 0; i0 < n; i0 += kFactorBlock) {
    const int64_t i1 = std::min(n, i0 + kFactorBlock), nb = i1 - i0;
    // X_II by substitution, in a dense nb x nb buffer.
    Xii.assign((size_t)(nb * nb), 0.0);
    for (int64_t i = 0; i < nb; ++i) {
      const double* l_row = L + (i0 + i) * lda + i0;
      Xii[i * nb + i] = 1.0 / l_row[i];
      for (int64_t j = 0; j < i; ++j) {
        double s = 0;
        for (int64_t k = j; k < i; ++k) s += l_row[k] * Xii[k * nb + j];
        Xii[i * nb + j] = -s / l_row[i];
      }
    }
    if (i0 > 0) {
      // T = L_I,0:i0 X_0:i0,0:i0, one column block at a time: X's rows above its own block are zero.
      T.assign((size_t)(nb * i0), 0.0);
      const int64_t jblocks = ceil_div(i0, kFactorBlock);
      global_pool()->parallel_for(jblocks, 1, [&](int64_t b0, int64_t b1) {
        for (int64_t b = b0; b < b1; ++b) {
          const int64_t j0 = b * kFactorBlock, nj = std::min(kFactorBlock, i0 - j0);
          gemm<double>(false, false, nb, nj, i0 - j0, 1.0, L + i0 * lda + j0, lda, L + j0 * lda + j0, lda,
                       T.data() + j0, i0, false);
        }
      });
      // X_I,0:i0 = -X_II T, written over L_I,0:i0 (no longer needed).
      for (int64_t r = 0; r < nb; ++r) std::fill(L + (i0 + r) * lda, L + (i0 + r) * lda + i0, 0.0);
      gemm<double>(false, false, nb, i0, nb, -1.0, Xii.data(), nb, T.data(), i0, L + i0 * lda, lda, true);
    }
    for (int64_t r = 0; r < nb; ++r)
      for (int64_t c = 0; c <= r; ++c) L[(i0 + r) * lda + i0 + c] = Xii[r * nb + c];
  }
}

}  // namespace lowbit

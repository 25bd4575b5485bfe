// GPU linear algebra for GPTQ (see linalg.cuh). cuBLAS and cuSOLVER are reached through dlopen with
// our own declarations of the handful of entry points used (their C ABI is stable within a major
// version), so the addon has no link-time dependency on them and loads where they are absent.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <dlfcn.h>

#include <algorithm>
#include <cstdlib>
#include <mutex>
#include <string>

#include "../native/core/common.hpp"
#include "cuda_check.cuh"
#include "linalg.cuh"
#include "tiled_gemm.cuh"

namespace lowbit {
namespace cuda {
namespace {

// --- the few cuBLAS / cuSOLVER declarations we need (values from their public headers) ---
using Handle = void*;
constexpr int kOpN = 0, kOpT = 1;               // cublasOperation_t
constexpr int kFillUpper = 1;                   // cublasFillMode_t (lower is 0)
constexpr int kSideLeft = 0, kDiagNonUnit = 0;  // cublasSideMode_t, cublasDiagType_t

struct CublasApi {
  int (*create)(Handle*) = nullptr;
  int (*set_stream)(Handle, cudaStream_t) = nullptr;
  int (*get_version)(Handle, int*) = nullptr;
  int (*sgemm)(Handle, int, int, int, int, int, const float*, const float*, int, const float*, int, const float*,
               float*, int) = nullptr;
  int (*dtrsm)(Handle, int, int, int, int, int, int, const double*, const double*, int, double*, int) = nullptr;
  // cublasGemmEx: 16-bit operands on the tensor cores, f32 compute (optional: older libraries lack it)
  int (*gemm_ex)(Handle, int, int, int, int, int, const void*, const void*, int, int, const void*, int, int,
                 const void*, void*, int, int, int, int) = nullptr;
  Handle handle = nullptr;
  int version = 0;
};

struct CusolverApi {
  int (*create)(Handle*) = nullptr;
  int (*set_stream)(Handle, cudaStream_t) = nullptr;
  int (*potrf_buffer_size)(Handle, int, int, double*, int, int*) = nullptr;
  int (*potrf)(Handle, int, int, double*, int, double*, int, int*) = nullptr;
  Handle handle = nullptr;
};

struct Libraries {
  CublasApi blas;
  CusolverApi solver;
  bool blas_ok = false, solver_ok = false;
  std::string why;  // what could not be opened
  // One handle serves every thread: setting its stream and enqueuing a call must not interleave with
  // another thread's (two models, or a prepared linear beside a model, on worker threads).
  std::mutex call_lock;
};

void* open_first(const char* const* names, std::string* tried) {
  for (const char* const* n = names; *n; ++n) {
    if (void* h = dlopen(*n, RTLD_NOW | RTLD_LOCAL)) return h;
    *tried += std::string(tried->empty() ? "" : "; ") + *n + ": " + dlerror();
  }
  return nullptr;
}

template <class F>
bool bind(void* lib, const char* name, F& fn) {
  fn = reinterpret_cast<F>(dlsym(lib, name));
  return fn != nullptr;
}

// Opened once per process, on first use (handles are tied to the device current at that time:
// GPTQ selects its device before calling in, and lowbit uses one device per process for GPTQ).
Libraries& libraries() {
  static Libraries libs;
  static std::once_flag once;
  std::call_once(once, [] {
    if (const char* off = std::getenv("LOWBIT_CUDA_NO_VENDOR_LIBS"); off && *off && std::string(off) != "0") {
      libs.why = "disabled by LOWBIT_CUDA_NO_VENDOR_LIBS";
      return;
    }
    static const char* const blas_names[] = {"libcublas.so.13", "libcublas.so.12", "libcublas.so", nullptr};
    static const char* const solver_names[] = {"libcusolver.so.12", "libcusolver.so.11", "libcusolver.so", nullptr};
    std::string tried;
    if (void* lib = open_first(blas_names, &tried)) {
      CublasApi& b = libs.blas;
      libs.blas_ok = bind(lib, "cublasCreate_v2", b.create) && bind(lib, "cublasSetStream_v2", b.set_stream) &&
                     bind(lib, "cublasGetVersion_v2", b.get_version) && bind(lib, "cublasSgemm_v2", b.sgemm) &&
                     bind(lib, "cublasDtrsm_v2", b.dtrsm) && b.create(&b.handle) == 0;
      if (libs.blas_ok) b.get_version(b.handle, &b.version);
      if (libs.blas_ok && !bind(lib, "cublasGemmEx", b.gemm_ex)) b.gemm_ex = nullptr;
      else tried += "; cuBLAS opened but its entry points or handle failed";
    }
    if (void* lib = open_first(solver_names, &tried)) {
      CusolverApi& s = libs.solver;
      libs.solver_ok = bind(lib, "cusolverDnCreate", s.create) && bind(lib, "cusolverDnSetStream", s.set_stream) &&
                       bind(lib, "cusolverDnDpotrf_bufferSize", s.potrf_buffer_size) &&
                       bind(lib, "cusolverDnDpotrf", s.potrf) && s.create(&s.handle) == 0;
      if (!libs.solver_ok) tried += "; cuSOLVER opened but its entry points or handle failed";
    }
    libs.why = tried;
  });
  return libs;
}

void blas_check(int status, const char* what) {
  if (status != 0) fail("E_CUDA", std::string(what) + " failed with status " + std::to_string(status));
}

// --- built-in row-major SGEMM: tiled_gemm.cuh's tiles ---

__global__ void __launch_bounds__(kTileThreads)
    sgemm_tiles(bool ta, bool tb, int64_t M, int64_t N, int64_t Kd, float alpha, const float* __restrict__ A,
                int64_t lda, const float* __restrict__ B, int64_t ldb, float beta, float* __restrict__ C, int64_t ldc) {
  const int tid = threadIdx.x;
  tiled_product(
      M, N, Kd,
      [&](TileA& as, int64_t m0, int64_t k0) {
        for (int e = tid; e < kTileM * kTileK; e += kTileThreads) {
          // Consecutive threads walk the stored matrix's contiguous dimension.
          const int kk = ta ? e / kTileM : e % kTileK, mm = ta ? e % kTileM : e / kTileK;
          const int64_t m = m0 + mm, k = k0 + kk;
          as[kk][mm] = (m < M && k < Kd) ? (ta ? A[k * lda + m] : A[m * lda + k]) : 0.f;
        }
      },
      [&](TileB& bs, int64_t n0, int64_t k0) {
        for (int e = tid; e < kTileN * kTileK; e += kTileThreads) {
          const int kk = tb ? e % kTileK : e / kTileN, nn = tb ? e / kTileK : e % kTileN;
          const int64_t n = n0 + nn, k = k0 + kk;
          bs[kk][nn] = (n < N && k < Kd) ? (tb ? B[n * ldb + k] : B[k * ldb + n]) : 0.f;
        }
      },
      [&](int64_t m, int64_t n, float acc) {
        float* c = C + m * ldc + n;
        *c = beta == 0.f ? alpha * acc : alpha * acc + beta * *c;
      });
}

// Built-in stand-in for cublasGemmEx: Y [M, N] = X [M, K] · W [N, K]ᵀ with 16-bit X and W, f32
// accumulation; one warp per output, lanes over K. Correct, not fast (only without cuBLAS).
template <class T>
__global__ void gemm16_warps(int64_t M, int64_t N, int64_t K, const T* X, const T* W, void* Y, bool y_f32) {
  const int64_t out = (blockIdx.x * (int64_t)blockDim.x + threadIdx.x) / 32;
  const int lane = threadIdx.x % 32;
  if (out >= M * N) return;
  const int64_t m = out / N, n = out % N;
  float acc = 0.f;
  for (int64_t k = lane; k < K; k += 32) acc += float(X[m * K + k]) * float(W[n * K + k]);
  for (int off = 16; off; off >>= 1) acc += __shfl_xor_sync(0xffffffffu, acc, off);
  if (lane != 0) return;
  if (y_f32) static_cast<float*>(Y)[out] = acc;
  else static_cast<T*>(Y)[out] = T(acc);
}

__global__ void set_identity(double* out, int64_t n) {
  const int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x;
  if (i < n * n) out[i] = (i / n == i % n) ? 1.0 : 0.0;
}

}  // namespace

std::string linalg_backend_description() {
  Libraries& l = libraries();
  std::lock_guard<std::mutex> guard(l.call_lock);
  std::string s;
  if (l.blas_ok) s += "cuBLAS " + std::to_string(l.blas.version) + " (dlopen)";
  else s += "built-in GEMM kernels (no cuBLAS)";
  s += l.solver_ok && l.blas_ok ? ", cuSOLVER Cholesky (dlopen)" : ", CPU Cholesky (no cuSOLVER/cuBLAS)";
  if (!(l.blas_ok && l.solver_ok) && !l.why.empty()) s += " [" + l.why + "]";
  return s;
}

bool have_cublas() { return libraries().blas_ok; }
bool have_cusolver() { return libraries().solver_ok; }

void sgemm(cudaStream_t stream, bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t Kd, float alpha,
           const float* A, int64_t lda, const float* B, int64_t ldb, float beta, float* C, int64_t ldc) {
  if (M == 0 || N == 0) return;
  Libraries& l = libraries();
  std::lock_guard<std::mutex> guard(l.call_lock);
  const int64_t kIntMax = 2147483647;
  if (l.blas_ok && M <= kIntMax && N <= kIntMax && Kd <= kIntMax && lda <= kIntMax && ldb <= kIntMax &&
      ldc <= kIntMax) {
    // Row-major C = op(A) op(B) is column-major Cᵀ = op(B)ᵀ op(A)ᵀ: swap the operands.
    blas_check(l.blas.set_stream(l.blas.handle, stream), "cublasSetStream");
    blas_check(l.blas.sgemm(l.blas.handle, trans_b ? kOpT : kOpN, trans_a ? kOpT : kOpN, (int)N, (int)M, (int)Kd,
                            &alpha, B, (int)ldb, A, (int)lda, &beta, C, (int)ldc),
               "cublasSgemm");
    return;
  }
  const dim3 grid((unsigned)ceil_div(N, kTileN), (unsigned)ceil_div(M, kTileM));
  sgemm_tiles<<<grid, kTileThreads, 0, stream>>>(trans_a, trans_b, M, N, Kd, alpha, A, lda, B, ldb, beta, C, ldc);
  check(cudaGetLastError(), "sgemm launch");
}

void gemm16(cudaStream_t stream, bool bf16, int64_t M, int64_t N, int64_t K, const void* X, const void* W, void* Y,
            bool y_f32) {
  if (M == 0 || N == 0) return;
  Libraries& l = libraries();
  std::lock_guard<std::mutex> guard(l.call_lock);
  const int64_t kIntMax = 2147483647;
  if (l.blas_ok && l.blas.gemm_ex && M <= kIntMax && N <= kIntMax && K <= kIntMax) {
    // cudaDataType_t: R_32F 0, R_16F 2, R_16BF 14; cublasComputeType_t COMPUTE_32F 68; GEMM_DEFAULT -1.
    const int ab = bf16 ? 14 : 2, c = y_f32 ? 0 : ab;
    const float one = 1.f, zero = 0.f;
    // Row-major Y = X Wᵀ is column-major Yᵀ [N, M] = W Xᵀ: W (stored [N, K], column-major [K, N]) transposed.
    blas_check(l.blas.set_stream(l.blas.handle, stream), "cublasSetStream");
    blas_check(l.blas.gemm_ex(l.blas.handle, kOpT, kOpN, (int)N, (int)M, (int)K, &one, W, ab, (int)K, X, ab, (int)K,
                              &zero, Y, c, (int)N, 68, -1),
               "cublasGemmEx");
    return;
  }
  const unsigned blocks = (unsigned)ceil_div(M * N * 32, 256);
  if (bf16)
    gemm16_warps<<<blocks, 256, 0, stream>>>(M, N, K, static_cast<const __nv_bfloat16*>(X),
                                             static_cast<const __nv_bfloat16*>(W), Y, y_f32);
  else
    gemm16_warps<<<blocks, 256, 0, stream>>>(M, N, K, static_cast<const __half*>(X), static_cast<const __half*>(W), Y,
                                             y_f32);
  check(cudaGetLastError(), "gemm16 launch");
}

bool have_gemm16_tc() {
  Libraries& l = libraries();
  return l.blas_ok && l.blas.gemm_ex != nullptr;
}

void syrk16_lower(cudaStream_t stream, bool bf16, int64_t K, int64_t m, float alpha, const void* X, float beta,
                  float* C) {
  Libraries& l = libraries();
  require(have_gemm16_tc(), "E_INTERNAL", "syrk16_lower needs cublasGemmEx");
  require(K <= 2147483647 && m <= 2147483647, "E_SHAPE", "matrix too large for cuBLAS's 32-bit interface");
  if (K == 0 || m == 0) return;
  const int ab = bf16 ? 14 : 2;  // R_16BF, R_16F (C is R_32F = 0, compute COMPUTE_32F = 68)
  const size_t elem = 2;
  std::lock_guard<std::mutex> guard(l.call_lock);  // (the handle's stream and the calls, together)
  blas_check(l.blas.set_stream(l.blas.handle, stream), "cublasSetStream");
  // Strips of rows [r0, r1) of C, each against columns [0, r1): with T strips the work is (T+1)/2T
  // of the full product. Column-major, row-major C's strip is Cc [r1, r1 - r0] (ld K) at C + r0 K,
  // Cc = Xc[0:r1, :] · Xc[r0:r1, :]ᵀ where Xc is X read column-major ([K, m], ld K).
  const int64_t strips = std::min<int64_t>(8, std::max<int64_t>(1, K / 512));
  const int64_t strip = (K + strips - 1) / strips;
  for (int64_t r0 = 0; r0 < K; r0 += strip) {
    const int64_t r1 = std::min(K, r0 + strip);
    const void* B = static_cast<const uint8_t*>(X) + (size_t)r0 * elem;
    blas_check(l.blas.gemm_ex(l.blas.handle, kOpN, kOpT, (int)r1, (int)(r1 - r0), (int)m, &alpha, X, ab, (int)K, B,
                              ab, (int)K, &beta, C + r0 * K, 0, (int)K, 68, -1),
               "cublasGemmEx (Hessian)");
  }
}

bool cholesky_lower_device(cudaStream_t stream, double* P, int64_t n) {
  Libraries& l = libraries();
  std::lock_guard<std::mutex> guard(l.call_lock);
  require(l.solver_ok, "E_INTERNAL", "cholesky_lower_device needs cuSOLVER");
  require(n <= 2147483647, "E_SHAPE", "matrix too large for cuSOLVER's 32-bit interface");
  // Row-major lower L with P = L Lᵀ is, read column-major, the upper U = Lᵀ with P = Uᵀ U.
  blas_check(l.solver.set_stream(l.solver.handle, stream), "cusolverDnSetStream");
  int lwork = 0;
  blas_check(l.solver.potrf_buffer_size(l.solver.handle, kFillUpper, (int)n, P, (int)n, &lwork),
             "cusolverDnDpotrf_bufferSize");
  DeviceBuffer<double> work((size_t)std::max(lwork, 1));
  DeviceBuffer<int> info(1);
  blas_check(l.solver.potrf(l.solver.handle, kFillUpper, (int)n, P, (int)n, work.get(), lwork, info.get()),
             "cusolverDnDpotrf");
  int host_info = 0;
  check(cudaMemcpyAsync(&host_info, info.get(), sizeof(int), cudaMemcpyDeviceToHost, stream), "cudaMemcpy info");
  check(cudaStreamSynchronize(stream), "cusolverDnDpotrf");
  require(host_info >= 0, "E_INTERNAL", "cusolverDnDpotrf: bad argument " + std::to_string(-host_info));
  return host_info == 0;
}

void invert_lower_device(cudaStream_t stream, const double* L, double* out, int64_t n) {
  Libraries& l = libraries();
  std::lock_guard<std::mutex> guard(l.call_lock);
  require(l.blas_ok, "E_INTERNAL", "invert_lower_device needs cuBLAS");
  // Read column-major, L is U = Lᵀ (upper). Solving U X = I gives X = U⁻¹ = (L⁻¹)ᵀ column-major,
  // whose memory read row-major is L⁻¹: the answer, in place in `out`.
  set_identity<<<(unsigned)ceil_div(n * n, 256), 256, 0, stream>>>(out, n);
  check(cudaGetLastError(), "set_identity launch");
  const double one = 1.0;
  blas_check(l.blas.set_stream(l.blas.handle, stream), "cublasSetStream");
  blas_check(l.blas.dtrsm(l.blas.handle, kSideLeft, kFillUpper, kOpN, kDiagNonUnit, (int)n, (int)n, &one, L, (int)n,
                          out, (int)n),
             "cublasDtrsm");
  check(cudaStreamSynchronize(stream), "invert_lower_device");
}

}  // namespace cuda
}  // namespace lowbit

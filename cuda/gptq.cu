// GPTQ on the GPU, the same steps as native/core/gptq.cpp (read that first; this file follows it):
//   1. dead inputs        H_ii = 0 -> H_ii = 1, W[:, i] = 0
//   2. static groups      (option) every group's grid fitted on the original W
//   3. act-order          permute the columns of W by descending diag(H) (H is permuted when factored)
//   4. Hinv               upper Cholesky factor of (H + lambda I)^-1 in double: cuSOLVER's Cholesky of
//                         J H J and cuBLAS's triangular solve for its inverse (Hinv = J L^-1 J, as
//                         gptq.cpp explains), or the CPU's blocked routines where those libraries are absent
//   5. the sweep          per block of B columns one kernel: a warp per row runs Algorithm 1's inner
//                         loop in shared memory; then the lazy batch update as one GEMM
//   6. un-permute         q back to the original column order
// The per-column arithmetic is written with explicit roundings (__fmul_rn, __fsub_rn) so that it is
// the CPU's, operation for operation; only the lazy-update GEMM sums in a different order.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <algorithm>
#include <cmath>
#include <numeric>
#include <vector>

#include "../native/core/gptq.hpp"
#include "../native/core/linalg.hpp"
#include "../native/core/rtn.hpp"
#include "../native/core/thread_pool.hpp"
#include "../native/core/weight_format.hpp"
#include "cuda_api.hpp"
#include "cuda_check.cuh"
#include "linalg.cuh"

namespace lowbit {
namespace cuda {
namespace {

// A stream of our own for one call, destroyed on scope exit.
class Stream {
 public:
  Stream() { check(cudaStreamCreateWithFlags(&s_, cudaStreamNonBlocking), "cudaStreamCreate"); }
  ~Stream() { cudaStreamDestroy(s_); }
  Stream(const Stream&) = delete;
  Stream& operator=(const Stream&) = delete;
  operator cudaStream_t() const { return s_; }
  void sync() const { check(cudaStreamSynchronize(s_), "cudaStreamSynchronize"); }

 private:
  cudaStream_t s_ = nullptr;
};

template <class T>
void upload_async(T* dst, const T* src, int64_t n, cudaStream_t s) {
  if (n) check(cudaMemcpyAsync(dst, src, (size_t)n * sizeof(T), cudaMemcpyHostToDevice, s), "cudaMemcpy H2D");
}
template <class T>
void download_async(T* dst, const T* src, int64_t n, cudaStream_t s) {
  if (n) check(cudaMemcpyAsync(dst, src, (size_t)n * sizeof(T), cudaMemcpyDeviceToHost, s), "cudaMemcpy D2H");
}

unsigned blocks_for(int64_t n, int threads) { return (unsigned)ceil_div(n, threads); }

// --- small kernels ---

// The smallest index of a non-finite element (or n when all are finite) into *first.
__global__ void find_nonfinite(const float* x, int64_t n, unsigned long long* first) {
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x)
    if (!isfinite(x[i])) atomicMin(first, (unsigned long long)i);
}

// The same over 16-bit values (T: __half or __nv_bfloat16).
template <class T>
__global__ void find_nonfinite16(const T* x, int64_t n, unsigned long long* first) {
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x)
    if (!isfinite(static_cast<float>(x[i]))) atomicMin(first, (unsigned long long)i);
}

__global__ void widen16(const uint16_t* x, bool bf16, int64_t n, float* y) {
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x)
    y[i] = bf16 ? __bfloat162float(reinterpret_cast<const __nv_bfloat16*>(x)[i])
                : __half2float(reinterpret_cast<const __half*>(x)[i]);
}

// H's upper triangle from its lower one, so that H is exactly symmetric as on the CPU.
__global__ void mirror_lower(float* H, int64_t K) {
  const int64_t r = blockIdx.y * (int64_t)blockDim.y + threadIdx.y, c = blockIdx.x * (int64_t)blockDim.x + threadIdx.x;
  if (r < K && c < K && c > r) H[r * K + c] = H[c * K + r];
}

__global__ void get_diag(const float* H, int64_t K, float* diag) {
  const int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x;
  if (i < K) diag[i] = H[i * K + i];
}

__global__ void zero_columns(float* W, int64_t N, int64_t K, const uint8_t* dead) {
  const int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x;
  if (i < N * K && dead[i % K]) W[i] = 0.f;
}

// Wp[n, p] = W[n, perm[p]].
__global__ void permute_columns(const float* W, float* Wp, int64_t N, int64_t K, const int32_t* perm) {
  const int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x;
  if (i < N * K) Wp[i] = W[(i / K) * K + perm[i % K]];
}

// out[n, perm[p]] = Q[n, p].
__global__ void unpermute_codes(const uint8_t* Q, uint8_t* out, int64_t N, int64_t K, const int32_t* perm) {
  const int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x;
  if (i < N * K) out[(i / K) * K + perm[i % K]] = Q[i];
}

// P = J (H in sweep order, dead inputs fixed, dampened) J, full symmetric, in double.
__global__ void build_reversed_hessian(const float* H, int64_t K, const int32_t* perm, const uint8_t* dead,
                                       double lambda, double* P) {
  const int64_t e = blockIdx.x * (int64_t)blockDim.x + threadIdx.x;
  if (e >= K * K) return;
  const int64_t a = e / K, b = e % K;
  const int64_t i = perm[K - 1 - a], j = perm[K - 1 - b];
  P[a * K + b] = a == b ? (dead[i] ? 1.0 : (double)H[i * K + i]) + lambda : (double)H[i * K + j];
}

// Hinv[p, q] = L⁻¹[K-1-p, K-1-q] for q >= p (upper), 0 below: from the reversed problem's inverse factor.
__global__ void reversed_to_upper(const double* Linv, int64_t K, float* Hinv) {
  const int64_t e = blockIdx.x * (int64_t)blockDim.x + threadIdx.x;
  if (e >= K * K) return;
  const int64_t p = e / K, q = e % K;
  Hinv[p * K + q] = q >= p ? (float)Linv[(K - 1 - p) * K + (K - 1 - q)] : 0.f;
}

// --- the grid: quant_grid.hpp's grid_from_range (host and device code), without the MSE search ---

struct GridParams {
  int maxq, min_zero;
  bool sym;
};

// One warp per (row n, group g): fits the grid of W[n, g·gs : g·gs + len) (row stride K) into
// scales/zeros[g, n]. Groups g0 .. g0 + groups - 1.
__global__ void fit_groups(const float* W, int64_t N, int64_t K, int64_t gs, int64_t g0, int64_t groups, GridParams gp,
                           float* scales, int32_t* zeros) {
  const int64_t warp = (blockIdx.x * (int64_t)blockDim.x + threadIdx.x) / 32;
  const int lane = threadIdx.x % 32;
  if (warp >= N * groups) return;
  const int64_t n = warp % N, g = g0 + warp / N;
  const int64_t k0 = g * gs, len = min(gs, K - k0);
  const float* w = W + n * K + k0;
  float lo = 0.f, hi = 0.f;  // the range always includes 0
  for (int64_t i = lane; i < len; i += 32) {
    lo = fminf(lo, w[i]);
    hi = fmaxf(hi, w[i]);
  }
  for (int off = 16; off; off >>= 1) {
    lo = fminf(lo, __shfl_xor_sync(0xffffffffu, lo, off));
    hi = fmaxf(hi, __shfl_xor_sync(0xffffffffu, hi, off));
  }
  if (lane == 0) {
    const Grid grid = grid_from_range(lo, hi, gp.maxq, gp.sym, gp.min_zero);
    scales[g * N + n] = grid.scale;
    zeros[g * N + n] = grid.zero;
  }
}

// --- the sweep of one block [i1, i1 + count): Algorithm 1's inner loop, a warp per row ---
//
// The row's block lives in shared memory; lane l owns columns l, l + 32, ... For each column i every
// lane computes the same q and error (a broadcast read), lane 0 writes them, and the lanes apply
// the error feedback to their later columns. Grids come from scales/zeros[colgroup[col], n].
__global__ void sweep_block(const float* __restrict__ W, const float* __restrict__ Hinv, int64_t N, int64_t K,
                            int64_t i1, int64_t count, int maxq, const int32_t* __restrict__ colgroup,
                            const float* __restrict__ scales, const int32_t* __restrict__ zeros, uint8_t* Q,
                            float* Err1, double* row_loss) {
  extern __shared__ float rows[];
  const int warps = blockDim.x / 32, w_in_block = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int64_t n = (int64_t)blockIdx.x * warps + w_in_block;
  if (n >= N) return;  // whole warps only: no block-wide barrier below
  float* w1 = rows + (int64_t)w_in_block * count;
  for (int64_t j = lane; j < count; j += 32) w1[j] = W[n * K + i1 + j];
  __syncwarp();
  int64_t group = -1;
  Grid grid{1.f, 0};
  double loss = 0;
  for (int64_t i = 0; i < count; ++i) {
    const int64_t col = i1 + i;
    const int64_t g = colgroup[col];
    if (g != group) {
      group = g;
      grid = Grid{scales[g * N + n], zeros[g * N + n]};
    }
    const float w = w1[i];
    const int q = quantize_value(w, grid, maxq);
    const float w_hat = dequantize_value(q, grid);
    const float err = __fdiv_rn(__fsub_rn(w, w_hat), Hinv[col * K + col]);
    if (lane == 0) {
      Q[n * K + col] = (uint8_t)q;
      Err1[n * count + i] = err;
      loss += (double)err * (double)err;
    }
    const float* h_row = Hinv + col * K + i1;
    for (int64_t j = i + 1 + lane; j < count; j += 32) w1[j] = __fsub_rn(w1[j], __fmul_rn(err, h_row[j]));
    __syncwarp();
  }
  if (lane == 0) row_loss[n] += loss;
}

// --- host side ---


void require_finite_device(const float* x, int64_t n, const char* what, cudaStream_t s) {
  DeviceBuffer<unsigned long long> first(1);
  const unsigned long long none = (unsigned long long)n;
  upload_async(first.get(), &none, 1, s);
  find_nonfinite<<<std::min<unsigned>(blocks_for(n, 256), 4096), 256, 0, s>>>(x, n, first.get());
  check(cudaGetLastError(), "find_nonfinite launch");
  unsigned long long at = 0;
  download_async(&at, first.get(), 1, s);
  check(cudaStreamSynchronize(s), "find_nonfinite");
  if (at < (unsigned long long)n) {
    float v = 0;
    download_async(&v, x + at, 1, s);
    check(cudaStreamSynchronize(s), "find_nonfinite");
    fail("E_NAN", std::string(what) + " holds " + (std::isnan(v) ? "NaN" : "infinity") + " at element " +
                      std::to_string(at));
  }
}

// Fits groups [g0, g0 + count) of the rows of W (device, [N, K]) into the device tables: on the GPU,
// or with the MSE search on the host (quant_grid.cpp's fit_grid itself).
void fit_group_range(const float* W, int64_t N, int64_t K, int64_t gs, int64_t g0, int64_t count,
                     const GptqOptions& opt, float* scales, int32_t* zeros, cudaStream_t s) {
  if (count <= 0) return;
  if (!opt.mse) {
    const GridParams gp{weight_format(opt.bits).maxq(), opt.min_zero, opt.sym};
    const int64_t threads = N * count * 32;
    fit_groups<<<blocks_for(threads, 256), 256, 0, s>>>(W, N, K, gs, g0, count, gp, scales, zeros);
    check(cudaGetLastError(), "fit_groups launch");
    return;
  }
  const int64_t c0 = g0 * gs, c1 = std::min(K, (g0 + count) * gs), width = c1 - c0;
  std::vector<float> cols((size_t)(N * width));
  check(cudaMemcpy2DAsync(cols.data(), (size_t)width * 4, W + c0, (size_t)K * 4, (size_t)width * 4, (size_t)N,
                          cudaMemcpyDeviceToHost, s),
        "cudaMemcpy2D D2H");
  check(cudaStreamSynchronize(s), "fit_group_range");
  std::vector<float> hs((size_t)(count * N));
  std::vector<int32_t> hz((size_t)(count * N));
  const GridOptions grid_opt = gptq_grid_options(opt);
  global_pool()->parallel_for(N, 8, [&](int64_t n0, int64_t n1) {
    for (int64_t n = n0; n < n1; ++n)
      for (int64_t g = 0; g < count; ++g) {
        const int64_t k0 = (g0 + g) * gs, len = std::min(gs, K - k0);
        const Grid grid = fit_grid(cols.data() + n * width + (k0 - c0), len, 1, grid_opt);
        hs[g * N + n] = grid.scale;
        hz[g * N + n] = grid.zero;
      }
  });
  upload_async(scales + g0 * N, hs.data(), count * N, s);
  upload_async(zeros + g0 * N, hz.data(), count * N, s);
  check(cudaStreamSynchronize(s), "fit_group_range upload");
}

// Step 4: Hinv [K, K] float upper on the device, raising lambda on failure as gptq.cpp does.
void inverse_hessian_factor(const float* H, int64_t K, const DeviceBuffer<int32_t>& perm,
                            const DeviceBuffer<uint8_t>& dead, const std::vector<float>& diag, const GptqOptions& opt,
                            GptqReport& report, float* Hinv, cudaStream_t s) {
  const bool on_gpu = have_cusolver() && have_cublas();
  DeviceBuffer<double> P((size_t)(K * K));
  std::vector<double> host_P;
  factor_dampened(diag.data(), 1, K, opt, report, [&](double lambda) {
    build_reversed_hessian<<<blocks_for(K * K, 256), 256, 0, s>>>(H, K, perm.get(), dead.get(), lambda, P.get());
    check(cudaGetLastError(), "build_reversed_hessian launch");
    if (on_gpu) return cholesky_lower_device(s, P.get(), K);
    host_P.resize((size_t)(K * K));
    download_async(host_P.data(), P.get(), K * K, s);
    check(cudaStreamSynchronize(s), "download P");
    return cholesky_lower(host_P.data(), K, K);
  });
  DeviceBuffer<double> Linv((size_t)(K * K));
  if (on_gpu) {
    invert_lower_device(s, P.get(), Linv.get(), K);
  } else {
    invert_lower(host_P.data(), K, K);
    upload_async(Linv.get(), host_P.data(), K * K, s);  // only the lower triangle is read below
  }
  reversed_to_upper<<<blocks_for(K * K, 256), 256, 0, s>>>(Linv.get(), K, Hinv);
  check(cudaGetLastError(), "reversed_to_upper launch");
  check(cudaStreamSynchronize(s), "inverse_hessian_factor");
}

// Everything after the Hessian is on the device: H_dev [K, K] full symmetric.
GptqReport quantize_on_device(int device, const float* W_in, int64_t N, int64_t K, const float* H_dev,
                              const GptqOptions& opt, const GptqOutput& out) {
  validate_gptq_options(opt, K);
  require(N > 0, "E_SHAPE", "GPTQ needs a positive output dimension, got " + std::to_string(N));
  require(out.q && out.scales && out.zeros && out.g_idx, "E_ARGUMENT", "gptq_quantize: missing output buffer");
  require(N * K <= ((int64_t)1 << 40), "E_SHAPE", "weight too large");
  use_device(device);
  const Stream s;
  GptqReport report;
  const int maxq = weight_format(opt.bits).maxq();
  const int64_t gs = effective_group_size(K, opt.group_size);
  const int64_t G = group_count(K, opt.group_size);

  DeviceBuffer<float> W0((size_t)(N * K));
  upload_async(W0.get(), W_in, N * K, s);
  require_finite_device(W0.get(), N * K, "W", s);
  require_finite_device(H_dev, K * K, "H", s);

  // 1. Dead inputs.
  std::vector<float> diag((size_t)K);
  {
    DeviceBuffer<float> d((size_t)K);
    get_diag<<<blocks_for(K, 256), 256, 0, s>>>(H_dev, K, d.get());
    check(cudaGetLastError(), "get_diag launch");
    download_async(diag.data(), d.get(), K, s);
    check(cudaStreamSynchronize(s), "get_diag");
  }
  std::vector<uint8_t> dead((size_t)K, 0);
  for (int64_t i = 0; i < K; ++i) {
    require(diag[i] >= 0.f, "E_HESSIAN_SINGULAR",
            "the Hessian has a negative diagonal entry H[" + std::to_string(i) + "][" + std::to_string(i) +
                "] = " + std::to_string(diag[i]) + ": it is not positive semi-definite");
    if (diag[i] == 0.f) {
      dead[i] = 1;
      ++report.dead_inputs;
    }
  }
  DeviceBuffer<uint8_t> dead_dev((size_t)K);
  upload_async(dead_dev.get(), dead.data(), K, s);
  if (report.dead_inputs > 0) {
    zero_columns<<<blocks_for(N * K, 256), 256, 0, s>>>(W0.get(), N, K, dead_dev.get());
    check(cudaGetLastError(), "zero_columns launch");
  }

  // Grid tables [G, N] and each sweep position's group.
  DeviceBuffer<float> scales((size_t)(G * N));
  DeviceBuffer<int32_t> zeros((size_t)(G * N));
  const std::vector<int32_t> perm = sweep_order(diag.data(), 1, K, opt.act_order);
  std::vector<int32_t> colgroup((size_t)K);
  for (int64_t p = 0; p < K; ++p) colgroup[p] = (int32_t)((opt.static_groups ? perm[p] : p) / gs);

  // 2. Static groups, on the original (dead-zeroed) W.
  if (opt.static_groups) fit_group_range(W0.get(), N, K, gs, 0, G, opt, scales.get(), zeros.get(), s);

  // 3. Act-order.
  DeviceBuffer<int32_t> perm_dev((size_t)K), colgroup_dev((size_t)K);
  upload_async(perm_dev.get(), perm.data(), K, s);
  upload_async(colgroup_dev.get(), colgroup.data(), K, s);
  DeviceBuffer<float> W((size_t)(N * K));
  permute_columns<<<blocks_for(N * K, 256), 256, 0, s>>>(W0.get(), W.get(), N, K, perm_dev.get());
  check(cudaGetLastError(), "permute_columns launch");

  // 4. Hinv.
  DeviceBuffer<float> Hinv((size_t)(K * K));
  inverse_hessian_factor(H_dev, K, perm_dev, dead_dev, diag, opt, report, Hinv.get(), s);

  // 5. The sweep.
  const int64_t B = std::min(opt.block_size, K);
  DeviceBuffer<uint8_t> Q((size_t)(N * K));
  DeviceBuffer<float> Err1((size_t)(N * B));
  DeviceBuffer<double> row_loss((size_t)N);
  check(cudaMemsetAsync(row_loss.get(), 0, (size_t)N * sizeof(double), s), "cudaMemset");
  for (int64_t i1 = 0; i1 < K; i1 += B) {
    const int64_t i2 = std::min(K, i1 + B), count = i2 - i1;
    if (!opt.static_groups) {
      // The groups that start in this block, fitted on W as the earlier blocks left it.
      const int64_t g0 = ceil_div(i1, gs), g1 = ceil_div(i2, gs);
      fit_group_range(W.get(), N, K, gs, g0, g1 - g0, opt, scales.get(), zeros.get(), s);
    }
    const int64_t row_bytes = count * (int64_t)sizeof(float);
    const int warps = (int)std::max<int64_t>(1, std::min<int64_t>(8, 49152 / row_bytes));
    const size_t smem = (size_t)(warps * row_bytes);
    if (smem > 49152)
      check(cudaFuncSetAttribute(sweep_block, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem),
            "cudaFuncSetAttribute");
    sweep_block<<<blocks_for(N, warps), warps * 32, smem, s>>>(W.get(), Hinv.get(), N, K, i1, count, maxq,
                                                              colgroup_dev.get(), scales.get(), zeros.get(), Q.get(),
                                                              Err1.get(), row_loss.get());
    check(cudaGetLastError(), "sweep_block launch");
    // Lazy batch update: W[:, i2:] -= Err1 · Hinv[i1:i2, i2:].
    if (i2 < K)
      sgemm(s, false, false, N, K - i2, count, -1.f, Err1.get(), count, Hinv.get() + i1 * K + i2, K, 1.f,
            W.get() + i2, K);
  }

  // 6. Back to the original column order; results to the host.
  DeviceBuffer<uint8_t> q_out((size_t)(N * K));
  unpermute_codes<<<blocks_for(N * K, 256), 256, 0, s>>>(Q.get(), q_out.get(), N, K, perm_dev.get());
  check(cudaGetLastError(), "unpermute_codes launch");
  std::vector<double> losses((size_t)N);
  download_async(out.q, q_out.get(), N * K, s);
  download_async(out.scales, scales.get(), G * N, s);
  download_async(out.zeros, zeros.get(), G * N, s);
  download_async(losses.data(), row_loss.get(), N, s);
  s.sync();
  report.loss = 0.5 * std::accumulate(losses.begin(), losses.end(), 0.0);
  write_g_idx(perm, K, opt, out.g_idx);
  return report;
}

}  // namespace

// --- the Hessian ---

HessianAccumulatorDevice::HessianAccumulatorDevice(int device, int64_t K) : device_(device), K_(K) {
  require(K > 0, "E_SHAPE", "a Hessian needs a positive input dimension, got " + std::to_string(K));
  use_device(device);
  check(cudaMalloc(&H_, (size_t)(K * K) * sizeof(float)), "cudaMalloc (Hessian)");
  if (cudaMalloc(&flag_, sizeof(unsigned long long)) != cudaSuccess) {
    cudaFree(H_);
    fail("E_CUDA", "cudaMalloc (Hessian flag) failed");
  }
  reset();
}

HessianAccumulatorDevice::~HessianAccumulatorDevice() {
  cudaFree(H_);
  cudaFree(staging_);
  cudaFree(flag_);
}

void HessianAccumulatorDevice::reset() {
  check(cudaSetDevice(device_), "cudaSetDevice");
  check(cudaMemset(H_, 0, (size_t)(K_ * K_) * sizeof(float)), "cudaMemset");
  // cudaMemset of device memory returns before it has run, on the legacy default stream, which the
  // non-blocking stream of add_batch does not wait for: it could clear H after a product there.
  check(cudaStreamSynchronize(cudaStreamLegacy), "cudaMemset (Hessian reset)");
  samples_ = 0;
}

void HessianAccumulatorDevice::add_batch(const float* X, int64_t m) {
  require(m >= 0, "E_SHAPE", "add_batch: bad sizes");
  if (m == 0) return;
  check(cudaSetDevice(device_), "cudaSetDevice");
  if (m > staging_rows_) {
    cudaFree(staging_);
    staging_ = nullptr;
    staging_rows_ = 0;
    check(cudaMalloc(&staging_, (size_t)(m * K_) * sizeof(float)), "cudaMalloc (Hessian batch)");
    staging_rows_ = m;
  }
  check(memcpy_to_device(staging_, X, (size_t)(m * K_) * sizeof(float)), "cudaMemcpy H2D");
  add_batch_device(staging_, m);
}

void HessianAccumulatorDevice::add_batch_device(const float* X, int64_t m) {
  add_batch_device(X, DType::F32, m);
}

void HessianAccumulatorDevice::add_batch_device(const void* X, DType dtype, int64_t m) {
  require(m >= 0, "E_SHAPE", "add_batch: bad sizes");
  require(dtype == DType::F32 || dtype == DType::F16 || dtype == DType::BF16, "E_DTYPE",
          "Hessian inputs are f32, f16 or bf16");
  if (m == 0) return;
  check(cudaSetDevice(device_), "cudaSetDevice");
  const Stream s;
  const bool half = dtype != DType::F32, bf16 = dtype == DType::BF16;
  const int64_t n = m * K_;
  // Same message as the CPU: the token and the feature of the first bad value.
  {
    auto* first = reinterpret_cast<unsigned long long*>(flag_);
    const unsigned long long none = (unsigned long long)n;
    upload_async(first, &none, 1, s);
    const unsigned grid = std::min<unsigned>(blocks_for(n, 256), 4096);
    if (!half) find_nonfinite<<<grid, 256, 0, s>>>(static_cast<const float*>(X), n, first);
    else if (bf16) find_nonfinite16<<<grid, 256, 0, s>>>(static_cast<const __nv_bfloat16*>(X), n, first);
    else find_nonfinite16<<<grid, 256, 0, s>>>(static_cast<const __half*>(X), n, first);
    check(cudaGetLastError(), "find_nonfinite launch");
    unsigned long long at = 0;
    download_async(&at, first, 1, s);
    s.sync();
    if (at < none) {
      float v = 0;
      if (!half) {
        download_async(&v, static_cast<const float*>(X) + at, 1, s);
      } else {
        uint16_t h = 0;
        download_async(&h, static_cast<const uint16_t*>(X) + at, 1, s);
        s.sync();
        v = bf16 ? bf16_to_f32(h) : f16_to_f32(h);
      }
      s.sync();
      fail("E_NAN", "calibration inputs hold " + std::string(std::isnan(v) ? "NaN" : "infinity") + " at token " +
                        std::to_string(at / K_) + ", feature " + std::to_string(at % K_));
    }
  }
  const double total = (double)samples_ + (double)m;
  const float keep = (float)((double)samples_ / total);
  const float alpha = (float)(2.0 / total);
  // H = keep · H + alpha · Xᵀ X on the lower half, then mirrored: exactly symmetric as on the CPU.
  if (!half) {
    sgemm(s, true, false, K_, K_, m, alpha, static_cast<const float*>(X), K_, static_cast<const float*>(X), K_, keep,
          H_, K_);
  } else if (have_gemm16_tc()) {
    syrk16_lower(s, bf16, K_, m, alpha, X, keep, H_);
  } else {  // no cublasGemmEx: widen, then the f32 product
    if (m > staging_rows_) {
      cudaFree(staging_);
      staging_ = nullptr;
      staging_rows_ = 0;
      check(cudaMalloc(&staging_, (size_t)n * sizeof(float)), "cudaMalloc (Hessian batch)");
      staging_rows_ = m;
    }
    widen16<<<std::min<unsigned>(blocks_for(n, 256), 4096), 256, 0, s>>>(static_cast<const uint16_t*>(X), bf16, n,
                                                                         staging_);
    check(cudaGetLastError(), "widen launch");
    sgemm(s, true, false, K_, K_, m, alpha, staging_, K_, staging_, K_, keep, H_, K_);
  }
  const dim3 block(32, 8), grid(blocks_for(K_, 32), blocks_for(K_, 8));
  mirror_lower<<<grid, block, 0, s>>>(H_, K_);
  check(cudaGetLastError(), "mirror launch");
  s.sync();
  samples_ += m;
}

void HessianAccumulatorDevice::download(float* H) const {
  check(cudaSetDevice(device_), "cudaSetDevice");
  check(cudaMemcpy(H, H_, (size_t)(K_ * K_) * sizeof(float), cudaMemcpyDeviceToHost), "cudaMemcpy D2H");
}

// --- GPTQ ---

GptqReport gptq_quantize(int device, const float* W, int64_t N, int64_t K, const float* H, const GptqOptions& opt,
                         const GptqOutput& out) {
  validate_gptq_options(opt, K);
  use_device(device);
  DeviceBuffer<float> H_dev((size_t)(K * K));
  H_dev.upload(H, (size_t)(K * K));
  return quantize_on_device(device, W, N, K, H_dev.get(), opt, out);
}

GptqReport gptq_quantize(const HessianAccumulatorDevice& H, const float* W, int64_t N, const GptqOptions& opt,
                         const GptqOutput& out) {
  return quantize_on_device(H.device(), W, N, H.K(), H.data(), opt, out);
}

std::string gptq_linalg_backend() { return linalg_backend_description(); }

}  // namespace cuda
}  // namespace lowbit

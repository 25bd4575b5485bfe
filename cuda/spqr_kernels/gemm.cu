// The SpQR product on the tensor cores (records: spqr_kernels.hpp): Y [M, N] = X [M, K] · Wᵀ + bias,
// fp16 or bf16 X and Y, fp32 accumulation, for every M (blocks of 8 or 16 rows of X).
//
// gather_kernel writes X in sweep order twice: Xs [Mp, Kp] for the dense loop (zero padded) and
// XsT [Kp, Mp] for the outliers. spqr_tc_kernel: a block of 8 warps owns 128 output rows (a warp one
// 16-row tile) and BM = 8·MT rows of X, and a range of K (split-K over the grid's z). Each warp
//  1. requests its outlier row pointers and its first records;
//  2. streams its records straight from global memory into registers, two chunks ahead of use,
//     decodes per chunk its 8 (scale, zero) pairs from the first-level codes and the second-level
//     (offset, step) pairs in f32, then each weight as code · scale + shift (shift = −scale · zero)
//     with one fp16/bf16 fma per pair of weights (the code read exactly through a magic-number
//     conversion), and multiplies with mma.sync m16n8k16 (weights as operand A, X as operand B);
//  3. adds its tile's outliers (each lane one row, alternate entries; this split's share; summed
//     through shared memory into the lanes that hold the outputs), before the dense loop or after
//     it (the default: only the loads of entries and x remain on the warp's path by then);
//  4. writes Y, or with split-K adds into fp32 partial sums whose last block writes Y and zeroes
//     them again (one launch, graph-capturable), as the GPTQ kernels do.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <algorithm>
#include <type_traits>

#include "../../native/core/common.hpp"
#include "../cuda_check.cuh"
#include "../packed_memory.cuh"
#include "../gptq_kernels/tile_math.cuh"
#include "spqr_kernels.hpp"

namespace lowbit {
namespace cuda {

using namespace spqr_layout;
using namespace gptq_tile;  // the magic-number fields, tile words and mma shared with the GPTQ kernels

namespace {

struct Args {
  const uint8_t* records;
  const int32_t* rowptr;
  const uint32_t* outliers;
  const void* xs;   // [Mp, Kp]
  const void* xst;  // [Kp, Mp]
  const float* bias;
  void* y;
  int M, Mp, N, Np, Kp, chunks, splits;
  float* partial;
  int32_t* counters;
};

__device__ __forceinline__ float2 to_float2(uint32_t u, __half) { return __half22float2(as_t2<__half2>(u)); }
__device__ __forceinline__ float2 to_float2(uint32_t u, __nv_bfloat16) {
  return __bfloat1622float2(as_t2<__nv_bfloat162>(u));
}
template <class T> __device__ __forceinline__ typename Dtype<T>::T2 pair_of(float v);
template <> __device__ __forceinline__ __half2 pair_of<__half>(float v) { return __float2half2_rn(v); }
template <> __device__ __forceinline__ __nv_bfloat162 pair_of<__nv_bfloat16>(float v) { return __float2bfloat162_rn(v); }

// The codes of A-fragment register r (both halves) as exact fp16/bf16 integers.
template <class T, int BITS>
__device__ __forceinline__ typename Dtype<T>::T2 codes_of(uint32_t word, int r) {
  using T2 = typename Dtype<T>::T2;
  constexpr uint32_t mask = BITS == 4 ? 0x000f000fu : BITS == 3 ? 0x00070007u : 0x00030003u;
  constexpr int step = BITS == 2 ? 2 : 4;
  const T2 biased = as_t2<T2>(and_or(word >> (step * r), mask, Dtype<T>::magic));
  return __hsub2(biased, as_t2<T2>(Dtype<T>::magic));
}

// Writes the block's results: straight to Y (+ bias), or with split-K into the partial sums, the
// last block of the tile writing Y and leaving the sums and its counter at zero.
// acc[mt][i]: output row n = tile·16 + g + 8·(i >= 2), row of X m = m0 + 8·mt + 2t + (i & 1).
template <class T, int MT>
__device__ __forceinline__ void write_result(const Args& a, const float (&acc)[MT][4], int ntile0, int m0) {
  constexpr int BM = 8 * MT, BN = 128;
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5, g = lane >> 2, t = lane & 3;
  T* Y = static_cast<T*>(a.y);
  auto each_output = [&](auto&& f) {
#pragma unroll
    for (int mt = 0; mt < MT; ++mt)
#pragma unroll
      for (int i = 0; i < 4; ++i)
        f((ntile0 + warp) * kTileN + g + 8 * (i >> 1), m0 + mt * 8 + 2 * t + (i & 1), acc[mt][i]);
  };
  if (a.splits == 1) {
    each_output([&](int n, int m, float v) {
      if (m < a.M && n < a.N) Y[(int64_t)m * a.N + n] = from_float<T>(a.bias ? v + a.bias[n] : v);
    });
    return;
  }
  each_output([&](int n, int m, float v) {
    if (m < a.M) atomicAdd(a.partial + (int64_t)m * a.Np + n, v);
  });
  __threadfence();
  __syncthreads();
  __shared__ int last;
  int32_t* counter = a.counters + blockIdx.y * gridDim.x + blockIdx.x;
  if (tid == 0) last = atomicAdd(counter, 1) == a.splits - 1;
  __syncthreads();
  if (!last) return;
  __threadfence();
  const int n0 = ntile0 * kTileN;
  for (int i = tid; i < BM * BN; i += blockDim.x) {
    const int m = m0 + i / BN, n = n0 + i % BN;
    if (m >= a.M) break;
    float* p = a.partial + (int64_t)m * a.Np + n;
    const float v = __ldcg(p);
    *p = 0.f;
    if (n < a.N) Y[(int64_t)m * a.N + n] = from_float<T>(a.bias ? v + a.bias[n] : v);
  }
  if (tid == 0) *counter = 0;
}

// DEPTH: chunks in flight per warp; MINB: blocks per SM the registers are capped for; LATE: the
// outliers summed after the dense loop rather than before.
template <int BITS, class T, int MT, int DEPTH, int MINB, bool LATE>
__global__ void __launch_bounds__(256, MINB) spqr_tc_kernel(Args a) {
  using T2 = typename Dtype<T>::T2;
  constexpr int BM = 8 * MT, CB = code_bytes(BITS), REC = record_bytes(BITS);
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5, g = lane >> 2, t = lane & 3;
  const int ntile0 = blockIdx.y * 8, ntile = ntile0 + warp;
  const int m0 = blockIdx.x * BM;
  const int z = blockIdx.z;
  const int c_begin = (int)((int64_t)z * a.chunks / a.splits), c_end = (int)((int64_t)(z + 1) * a.chunks / a.splits);

  // This lane's outlier entries (row ntile·16 + lane % 16): requested before anything else.
  int e_begin = 0, e_end = 0;
  {
    const int64_t n = (int64_t)ntile * kTileN + (lane & 15);
    if (n < a.N) e_begin = __ldg(a.rowptr + n) + 2 * z + (lane >> 4), e_end = __ldg(a.rowptr + n + 1);
  }
  const T* X = static_cast<const T*>(a.xs);
  const uint8_t* wrec = a.records + record_index(ntile, 0, a.chunks) * REC;
  struct Stage {
    uint32_t w[8];
    uint32_t codes;
    uint4 second;  // units 2t and 2t+1: (scale offset, step, zero offset, step) each
    uint4 x[MT][4];
  };
  auto load_w = [&](Stage& st, int c) {
    const uint8_t* rec = wrec + (int64_t)c * 8 * REC;
    const uint4 w0 = __ldcs(reinterpret_cast<const uint4*>(rec + lane * 16));
    st.w[0] = w0.x, st.w[1] = w0.y, st.w[2] = w0.z, st.w[3] = w0.w;
    if constexpr (BITS == 4) {
      const uint4 w1 = __ldcs(reinterpret_cast<const uint4*>(rec + 512 + lane * 16));
      st.w[4] = w1.x, st.w[5] = w1.y, st.w[6] = w1.z, st.w[7] = w1.w;
    } else if constexpr (BITS == 3) {
      const uint2 w1 = __ldcs(reinterpret_cast<const uint2*>(rec + 512 + lane * 8));
      st.w[4] = w1.x, st.w[5] = w1.y, st.w[6] = 0, st.w[7] = 0;
    } else {
      st.w[4] = st.w[5] = st.w[6] = st.w[7] = 0;
    }
    st.codes = __ldcs(reinterpret_cast<const uint32_t*>(rec + CB) + lane);
    st.second = __ldcs(reinterpret_cast<const uint4*>(rec + CB + 128) + t);
  };
  auto load_x = [&](Stage& st, int c) {
#pragma unroll
    for (int mt = 0; mt < MT; ++mt) {
      const int row = m0 + 8 * mt + g;
      const uint4* xp = reinterpret_cast<const uint4*>(X + (int64_t)row * a.Kp + (int64_t)c * kChunk + 32 * t);
#pragma unroll
      for (int v = 0; v < 4; ++v) st.x[mt][v] = row < a.M ? __ldg(xp + v) : make_uint4(0, 0, 0, 0);
    }
  };

  Stage st[DEPTH];
#pragma unroll
  for (int s = 0; s < DEPTH; ++s)
    if (c_begin + s < c_end) load_w(st[s], c_begin + s);
  // Launched with programmatic dependency on the gather (sm_90): everything above overlapped it;
  // from here on X is read, so wait until the gather has completed (a no-op otherwise).
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.wait;\n" ::: "memory");
#endif
#pragma unroll
  for (int s = 0; s < DEPTH; ++s)
    if (c_begin + s < c_end) load_x(st[s], c_begin + s);

  // This split's share of the tile's outliers: lane r (and r + 16) takes row r's entries
  // z·2 + (lane ≥ 16), stepping 2·splits; the two halves meet by a shuffle, then shared memory hands
  // each sum to the lane that holds that output. LATE: after the dense loop (the row pointers were
  // requested first thing, so only the loads of the entries and of x remain on the warp's path),
  // else before it.
  __shared__ float osum[8][kTileN][BM + 1];
  float acc[MT][4];
#pragma unroll
  for (int mt = 0; mt < MT; ++mt)
#pragma unroll
    for (int i = 0; i < 4; ++i) acc[mt][i] = 0.f;
  auto add_outliers = [&]() {
    float part[BM];
#pragma unroll
    for (int i = 0; i < BM; ++i) part[i] = 0.f;
    const T* xst = static_cast<const T*>(a.xst) + m0;
#pragma unroll 4
    for (int e = e_begin; e < e_end; e += 2 * a.splits) {
      const uint32_t entry = __ldg(a.outliers + e);
      const float v = __half2float(__ushort_as_half((unsigned short)(entry & 0xffff)));
      const uint4* xc = reinterpret_cast<const uint4*>(xst + (int64_t)(entry >> 16) * a.Mp);
#pragma unroll
      for (int mt = 0; mt < MT; ++mt) {
        const uint4 xv = __ldg(xc + mt);
        const uint32_t u[4] = {xv.x, xv.y, xv.z, xv.w};
#pragma unroll
        for (int q = 0; q < 4; ++q) {
          const float2 f = to_float2(u[q], T());
          part[8 * mt + 2 * q] = fmaf(v, f.x, part[8 * mt + 2 * q]);
          part[8 * mt + 2 * q + 1] = fmaf(v, f.y, part[8 * mt + 2 * q + 1]);
        }
      }
    }
#pragma unroll
    for (int i = 0; i < BM; ++i) part[i] += __shfl_xor_sync(0xffffffffu, part[i], 16);
    if (lane < 16)
#pragma unroll
      for (int i = 0; i < BM; ++i) osum[warp][lane][i] = part[i];
    __syncwarp();
#pragma unroll
    for (int mt = 0; mt < MT; ++mt)
#pragma unroll
      for (int i = 0; i < 4; ++i) acc[mt][i] += osum[warp][g + 8 * (i >> 1)][8 * mt + 2 * t + (i & 1)];
  };
  if constexpr (!LATE) add_outliers();

  for (int c0 = c_begin; c0 < c_end; c0 += DEPTH) {
#pragma unroll
    for (int s = 0; s < DEPTH; ++s) {
      const int c = c0 + s;
      if (c >= c_end) break;
      // Scale and shift of rows g (h = 0) and g + 8 (h = 1) in units 2t (u = 0) and 2t + 1.
      T2 scale[2][2], shift[2][2];
#pragma unroll
      for (int u = 0; u < 2; ++u) {
        const uint32_t sp = u ? st[s].second.z : st[s].second.x, zp = u ? st[s].second.w : st[s].second.y;
        const float2 sv = __half22float2(as_t2<__half2>(sp)), zv = __half22float2(as_t2<__half2>(zp));
#pragma unroll
        for (int h = 0; h < 2; ++h) {
          const float sc = fmaf(sv.y, (float)((st[s].codes >> (4 * stat_field(u, 0, h))) & 15u), sv.x);
          const float ze = fmaf(zv.y, (float)((st[s].codes >> (4 * stat_field(u, 1, h))) & 15u), zv.x);
          scale[u][h] = pair_of<T>(sc);
          shift[u][h] = pair_of<T>(-sc * ze);
        }
      }
#pragma unroll
      for (int j = 0; j < 8; ++j) {
        const uint32_t word = tile_word<BITS>(st[s].w, j);
        uint32_t af[4];
#pragma unroll
        for (int r = 0; r < 4; ++r)
          af[r] = as_u32(__hfma2(codes_of<T, BITS>(word, r), scale[j >> 2][r & 1], shift[j >> 2][r & 1]));
#pragma unroll
        for (int mt = 0; mt < MT; ++mt) {
          const uint4& xv = st[s].x[mt][j >> 1];
          mma<T>(acc[mt], af, (j & 1) ? xv.z : xv.x, (j & 1) ? xv.w : xv.y);
        }
      }
      if (c + DEPTH < c_end) {
        load_w(st[s], c + DEPTH);
        load_x(st[s], c + DEPTH);
      }
    }
  }
  if constexpr (LATE) add_outliers();
  write_result<T, MT>(a, acc, ntile0, m0);
}

// X [M, K] → Xs [Mp, Kp] in sweep order (zero padded) and its transpose XsT [Kp, Mp].
template <class T>
__global__ void gather_kernel(const T* __restrict__ X, int64_t M, int64_t K, int64_t Mp, int64_t Kp,
                              const int32_t* __restrict__ perm, T* __restrict__ xs, T* __restrict__ xst) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.launch_dependents;\n" ::: "memory");  // the product may start (it waits for X)
#endif
  const int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= Mp * Kp) return;
  const int64_t m = i / Kp, p = i % Kp;
  const T v = m < M && p < K ? X[m * K + (perm ? perm[p] : p)] : from_float<T>(0.f);
  xs[i] = v;
  xst[p * Mp + m] = v;
}

int current_device() {
  int device = 0;
  check(cudaGetDevice(&device), "cudaGetDevice");
  return device;
}

bool capturing(cudaStream_t stream) {
  cudaStreamCaptureStatus st = cudaStreamCaptureStatusNone;
  check(cudaStreamIsCapturing(stream, &st), "cudaStreamIsCapturing");
  return st != cudaStreamCaptureStatusNone;
}

int multiprocessors(int device) {
  static int cached[64] = {0};
  if (device < 0 || device >= 64) return 132;
  if (!cached[device]) check(cudaDeviceGetAttribute(&cached[device], cudaDevAttrMultiProcessorCount, device), "SM count");
  return cached[device];
}

template <int BITS, class T, int MT, int DEPTH, int MINB, bool LATE>
int occupancy() {
  static int blocks[64] = {};
  const int device = current_device(), slot = device >= 0 && device < 64 ? device : 0;
  if (!blocks[slot]) {
    int b = 0;
    check(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&b, spqr_tc_kernel<BITS, T, MT, DEPTH, MINB, LATE>, 256, 0),
          "cudaOccupancyMaxActiveBlocksPerMultiprocessor (SpQR)");
    blocks[slot] = b < 1 ? 1 : b;
  }
  return blocks[slot];
}

using Launch = void (*)(const Args&, dim3, cudaStream_t, bool);
struct Kernel {
  Launch launch;
  int (*occupancy)();
};
// overlap: launched with a programmatic dependency on the previous launch in the stream (the gather),
// so that its blocks start and request their records while the gather runs (sm_90 and newer).
template <int BITS, class T, int MT, int DEPTH, int MINB, bool LATE>
void launch(const Args& a, dim3 grid, cudaStream_t s, bool overlap) {
  cudaLaunchConfig_t config{};
  config.gridDim = grid;
  config.blockDim = dim3(256);
  config.stream = s;
  cudaLaunchAttribute attr[1];
  attr[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
  attr[0].val.programmaticStreamSerializationAllowed = 1;
  config.attrs = attr;
  config.numAttrs = overlap ? 1 : 0;
  check(cudaLaunchKernelEx(&config, spqr_tc_kernel<BITS, T, MT, DEPTH, MINB, LATE>, a), "SpQR product launch");
}
// The variants: registers capped (3 blocks per SM for 8-row tiles, 2 for 16-row tiles) or not,
// outliers before or after the dense loop: 0 (no cap, before), 1 (cap, before), 2 (no cap, after),
// 3 (cap, after); two chunks in flight per warp. The H200 sweep of 2026-12-01 (bench/cuda-spqr.cu;
// bench/RESULTS.md) also timed 3 and 4 chunks in flight: never faster.
constexpr int kVariants = 4;
template <int BITS, class T, int MT>
Kernel kernel_for(int variant) {
  constexpr int CAP = MT == 1 ? 3 : 2;
  switch (variant) {
    case 1: return {launch<BITS, T, MT, 2, CAP, false>, occupancy<BITS, T, MT, 2, CAP, false>};
    case 2: return {launch<BITS, T, MT, 2, 1, true>, occupancy<BITS, T, MT, 2, 1, true>};
    case 3: return {launch<BITS, T, MT, 2, CAP, true>, occupancy<BITS, T, MT, 2, CAP, true>};
    default: return {launch<BITS, T, MT, 2, 1, false>, occupancy<BITS, T, MT, 2, 1, false>};
  }
}
template <class T>
Kernel kernel_for(int bits, int mt, int variant) {
  switch (bits * 2 + (mt - 1)) {
    case 4: return kernel_for<2, T, 1>(variant);
    case 5: return kernel_for<2, T, 2>(variant);
    case 6: return kernel_for<3, T, 1>(variant);
    case 7: return kernel_for<3, T, 2>(variant);
    case 8: return kernel_for<4, T, 1>(variant);
    default: return kernel_for<4, T, 2>(variant);
  }
}
Kernel kernel_for(SpqrDtype dtype, int bits, int mt, int variant) {
  return dtype == SpqrDtype::f16 ? kernel_for<__half>(bits, mt, variant) : kernel_for<__nv_bfloat16>(bits, mt, variant);
}

// The variant a product runs by default, per row tile, from the H200 sweeps of 2026-12-01: the
// outliers after the dense loop (1.5-5% faster at M = 1, up to 3% at M = 16), and for 16-row tiles
// the registers capped at 128 for 2 blocks per SM instead of 1 (146 registers; 9-38% faster at
// M = 16). Capping 8-row tiles for 3 blocks was as often slower as faster.
int default_variant(int mt) { return mt == 1 ? 2 : 3; }

int rows_for(int64_t M) { return M <= 8 ? 8 : 16; }

// Programmatic dependent launch needs compute capability 9.0.
bool overlap_supported(int device) {
  static int major[64] = {};
  if (device < 0 || device >= 64) return false;
  if (!major[device]) check(cudaDeviceGetAttribute(&major[device], cudaDevAttrComputeCapabilityMajor, device), "compute capability");
  return major[device] >= 9;
}

}  // namespace

void spqr_choose(const SpqrDeviceWeights& W, int64_t M, int* rows_per_block, int* splits, int variant) {
  // 8 rows of X per block up to 8 rows, else 16. K is split until the grid fills one wave of
  // resident blocks, keeping at least 4 chunks of K per split (as the GPTQ kernels choose).
  check(cudaSetDevice(W.device), "cudaSetDevice");
  const int mt = rows_for(M) / 8;
  if (variant < 0 || variant >= kVariants) variant = default_variant(mt);
  const int64_t tiles = ceil_div(M, 8 * mt) * (W.Np / 128), chunks = W.Kp / kChunk;
  const int64_t target =
      (int64_t)kernel_for(SpqrDtype::f16, W.bits, mt, variant).occupancy() * multiprocessors(W.device);
  *rows_per_block = 8 * mt;
  *splits = (int)std::max<int64_t>(1, std::min(target / tiles, chunks / 4));
}

int spqr_variant_count() { return kVariants; }

void spqr_gather(const SpqrDeviceWeights& W, const void* X, SpqrDtype dtype, int64_t M, void* stream_ptr) {
  require(M >= 1 && M <= (int64_t)1 << 24, "E_SHAPE", "M must be in [1, 2^24]");
  const cudaStream_t stream = static_cast<cudaStream_t>(stream_ptr);
  auto& Wm = const_cast<SpqrDeviceWeights&>(W);  // scratch grows on demand
  const int rows = rows_for(M);
  const int64_t Mp = ceil_div(M, rows) * rows;
  const int64_t xs_need = checked_product({2, Mp, W.Kp, 2}, "SpQR X scratch");
  check(cudaSetDevice(W.device), "cudaSetDevice");
  if (Wm.xs_bytes < xs_need) {
    require(!capturing(stream), "E_CUDA", "SpQR product: scratch for X must grow outside graph capture (run once first)");
    check(cudaStreamSynchronize(stream), "cudaStreamSynchronize");
    if (Wm.xs) cudaFree(Wm.xs);
    Wm.xs = nullptr;
    Wm.xs_bytes = 0;
    check(cudaMalloc(&Wm.xs, (size_t)xs_need), "cudaMalloc (SpQR X scratch)");
    Wm.xs_bytes = xs_need;
  }
  void* xs = Wm.xs;
  void* xst = static_cast<char*>(Wm.xs) + Mp * W.Kp * 2;
  const int64_t total = Mp * W.Kp;
  const unsigned blocks = (unsigned)ceil_div(total, 256);
  if (dtype == SpqrDtype::f16)
    gather_kernel<__half><<<blocks, 256, 0, stream>>>(static_cast<const __half*>(X), M, W.K, Mp, W.Kp, W.perm,
                                                      static_cast<__half*>(xs), static_cast<__half*>(xst));
  else
    gather_kernel<__nv_bfloat16><<<blocks, 256, 0, stream>>>(static_cast<const __nv_bfloat16*>(X), M, W.K, Mp, W.Kp,
                                                             W.perm, static_cast<__nv_bfloat16*>(xs),
                                                             static_cast<__nv_bfloat16*>(xst));
  check(cudaGetLastError(), "SpQR gather launch");
}

void spqr_product(const SpqrDeviceWeights& W, SpqrDtype dtype, int64_t M, void* Y, const float* bias,
                  void* stream_ptr, int splits, bool overlap, int variant) {
  require(M >= 1 && M <= (int64_t)1 << 24, "E_SHAPE", "M must be in [1, 2^24]");
  int rows = 8, chosen = 1;
  if (variant < 0 || variant >= kVariants) variant = default_variant(rows_for(M) / 8);
  spqr_choose(W, M, &rows, &chosen, variant);
  if (splits < 1) splits = chosen;
  const int64_t chunks = W.Kp / kChunk;
  splits = (int)std::min<int64_t>(splits, chunks);
  const cudaStream_t stream = static_cast<cudaStream_t>(stream_ptr);
  auto& Wm = const_cast<SpqrDeviceWeights&>(W);  // scratch grows on demand
  const int64_t Mp = ceil_div(M, rows) * rows;
  require(W.xs != nullptr && W.xs_bytes >= checked_product({2, Mp, W.Kp, 2}), "E_INTERNAL",
          "SpQR product: X not gathered (spqr_gather first)");

  const dim3 grid((unsigned)(Mp / rows), (unsigned)(W.Np / 128), (unsigned)splits);
  Args a{};
  a.records = W.records;
  a.rowptr = W.rowptr;
  a.outliers = W.outliers;
  a.xs = W.xs;
  a.xst = static_cast<const char*>(W.xs) + Mp * W.Kp * 2;
  a.bias = bias;
  a.y = Y;
  a.M = (int)M;
  a.Mp = (int)Mp;
  a.N = (int)W.N;
  a.Np = (int)W.Np;
  a.Kp = (int)W.Kp;
  a.chunks = (int)chunks;
  a.splits = splits;
  if (splits > 1) {
    grow_split_k(Wm.partial, Wm.counters, Wm.partial_floats, Wm.counter_count, M * W.Np, (int64_t)grid.x * grid.y,
                 stream, "SpQR product");
    a.partial = Wm.partial;
    a.counters = Wm.counters;
  }
  kernel_for(dtype, W.bits, rows / 8, variant).launch(a, grid, stream, overlap && overlap_supported(W.device));
  check(cudaGetLastError(), "SpQR product launch");
}

void spqr_matmul_splits(const SpqrDeviceWeights& W, const void* X, SpqrDtype dtype, int64_t M, void* Y,
                        const float* bias, void* stream, int splits, bool overlap, int variant) {
  spqr_gather(W, X, dtype, M, stream);
  spqr_product(W, dtype, M, Y, bias, stream, splits, overlap, variant);
}

void spqr_matmul(const SpqrDeviceWeights& W, const void* X, SpqrDtype dtype, int64_t M, void* Y, const float* bias,
                 void* stream) {
  spqr_matmul_splits(W, X, dtype, M, Y, bias, stream, 0, true, -1);
}

}  // namespace cuda
}  // namespace lowbit

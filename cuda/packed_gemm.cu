// Packed low-bit products on the GPU: Y = X · Wᵀ, W in the GPTQ layout (see native/core/pack.hpp).
//
// Two kernels, both accumulating in f32 and dequantizing exactly as the CPU does
// (w = scale · (q − zero), the integer difference converted exactly):
//  - packed_gemv: batches of up to 8 rows (token generation). Memory-bound: every weight byte is
//    read once, with 16-byte loads of 4 neighbouring output columns, coalesced along N (qweight is
//    [words along K, N]). A block owns 16 columns and splits K over 64 slices, reduced in shared memory.
//  - packed_gemm_tiles: larger batches. Each block dequantizes a 16 × 64 tile of W into shared
//    memory and reuses it for 64 rows of X (a plain f32 tiled product).
#include <cuda_fp16.h>

#include <algorithm>
#include <type_traits>
#include <utility>

#include "../native/core/pack.hpp"
#include "../native/core/weight_format.hpp"
#include "cuda_api.hpp"
#include "cuda_check.cuh"
#include "tiled_gemm.cuh"

namespace lowbit {
namespace cuda {
namespace {

// A width's pack unit from the one table (native/core/weights/format.hpp), as compile-time constants.
template <int BITS>
struct Unit {
  static constexpr int values = gptq_pack_unit(BITS).values_per_unit;
  static constexpr int words = gptq_pack_unit(BITS).words_per_unit;
  static_assert(values > 0, "not a GPTQ bit width");
};

__device__ __forceinline__ uint32_t read_bits(const int32_t* words, int64_t stride, int bits, int64_t i) {
  const int64_t bit = i * bits;
  const int64_t w = bit >> 5;
  const int sh = (int)(bit & 31);
  uint64_t v = (uint32_t)__ldg(words + w * stride);
  if (sh + bits > 32) v |= (uint64_t)(uint32_t)__ldg(words + (w + 1) * stride) << 32;
  return (uint32_t)(v >> sh) & ((1u << bits) - 1u);
}

// Value i (a compile-time constant after unrolling) of one unit held in registers.
template <int BITS, int I>
__device__ __forceinline__ uint32_t unit_value(const uint32_t (&w)[Unit<BITS>::words]) {
  constexpr int bit = I * BITS, word = bit / 32, shift = bit % 32;
  constexpr uint32_t mask = (1u << BITS) - 1u;
  if constexpr (shift + BITS > 32) {
    return ((w[word] >> shift) | (w[word + 1] << (32 - shift))) & mask;
  } else {
    return (w[word] >> shift) & mask;
  }
}

// Calls f(std::integral_constant<int, I>) for each I: a loop unrolled with compile-time indices.
template <class F, int... I>
__device__ __forceinline__ void for_each_index(std::integer_sequence<int, I...>, F& f) {
  (f(std::integral_constant<int, I>{}), ...);
}

// An integer q (0..255) as an exact float: 2^23 + q read as f32 bits, minus 2^23. With the zero
// point folded into the subtracted constant, (q - zero) comes out exact in one add.
__device__ __forceinline__ float biased(uint32_t q) { return __int_as_float(0x4B000000 | (int)q); }
constexpr float kBias = 8388608.f;

struct PackedArgs {
  const int32_t* qweight;
  const int32_t* qzeros;
  const __half* scales;
  const int32_t* g_idx;
  int64_t K, N, group_size, zcols;
  int zero_offset;
};

constexpr int kGemvThreads = 256;
constexpr int kGemvLanesN = 4;                            // lanes along N in a block
constexpr int kGemvSlices = kGemvThreads / kGemvLanesN;  // slices of K in a block

// V: output columns per thread (4 with 16-byte loads when N % 4 == 0, else 1). MR: rows of X.
template <int BITS, int V, int MR, bool GIDX>
__global__ void __launch_bounds__(kGemvThreads) packed_gemv(PackedArgs W, const float* __restrict__ X, int64_t M,
                                                           float* __restrict__ Y) {
  using U = Unit<BITS>;
  const int lane_n = threadIdx.x % kGemvLanesN, slice = threadIdx.x / kGemvLanesN;
  const int64_t n0 = ((int64_t)blockIdx.x * kGemvLanesN + lane_n) * V;
  const int64_t m0 = (int64_t)blockIdx.y * MR;
  const bool active = n0 < W.N;
  const float* xrow[MR];
#pragma unroll
  for (int r = 0; r < MR; ++r) xrow[r] = X + min(m0 + r, M - 1) * W.K;  // rows past M are computed, not stored

  float acc[MR][V];
#pragma unroll
  for (int r = 0; r < MR; ++r)
#pragma unroll
    for (int c = 0; c < V; ++c) acc[r][c] = 0.f;

  float scale[V], zero_biased[V];
  int64_t group = -1, boundary = 0;
  auto load_group = [&](int64_t g) {
    group = g;
#pragma unroll
    for (int c = 0; c < V; ++c) {
      scale[c] = __half2float(W.scales[g * W.N + n0 + c]);
      const int z = (int)read_bits(W.qzeros + g * W.zcols, 1, BITS, n0 + c) + W.zero_offset;
      zero_biased[c] = kBias + (float)z;
    }
  };

  const int64_t units = (W.K + U::values - 1) / U::values;
  // Each pass loads kUnroll units (spaced kGemvSlices apart) before using any, so several 16-byte
  // loads per thread are in flight: with few threads per SM, that is what keeps memory busy.
  constexpr int kUnroll = (MR >= 8 || BITS == 3) ? 2 : 4;
  if (active) {
    for (int64_t u0 = slice; u0 < units; u0 += (int64_t)kGemvSlices * kUnroll) {
      uint32_t words[kUnroll][V][U::words];
#pragma unroll
      for (int t = 0; t < kUnroll; ++t) {
        const int64_t u = min(u0 + (int64_t)t * kGemvSlices, units - 1);  // past the end: re-read, unused
#pragma unroll
        for (int j = 0; j < U::words; ++j) {
          const int32_t* p = W.qweight + (u * U::words + j) * W.N + n0;
          if constexpr (V == 4) {
            const int4 v = __ldg(reinterpret_cast<const int4*>(p));
            words[t][0][j] = v.x, words[t][1][j] = v.y, words[t][2][j] = v.z, words[t][3][j] = v.w;
          } else {
            words[t][0][j] = (uint32_t)__ldg(p);
          }
        }
      }
#pragma unroll
      for (int t = 0; t < kUnroll; ++t) {
        const int64_t u = u0 + (int64_t)t * kGemvSlices;
        if (u >= units) break;
        const int64_t k0 = u * U::values;
        if (!GIDX) {
          const int64_t g = k0 / W.group_size;
          if (g != group) load_group(g);
          boundary = (g + 1) * W.group_size;
        }
        auto step = [&](auto I) {
          constexpr int i = decltype(I)::value;
          const int64_t k = k0 + i;
          if (k >= W.K) return;
          if constexpr (GIDX) {
            const int64_t g = __ldg(W.g_idx + k);
            if (g != group) load_group(g);
          } else {
            if (k == boundary) {
              load_group(group + 1);
              boundary += W.group_size;
            }
          }
          float w[V];
#pragma unroll
          for (int c = 0; c < V; ++c) w[c] = (biased(unit_value<BITS, i>(words[t][c])) - zero_biased[c]) * scale[c];
#pragma unroll
          for (int r = 0; r < MR; ++r) {
            const float x = __ldg(xrow[r] + k);
#pragma unroll
            for (int c = 0; c < V; ++c) acc[r][c] = fmaf(x, w[c], acc[r][c]);
          }
        };
        for_each_index(std::make_integer_sequence<int, U::values>{}, step);
      }
    }
  }

  // Sum the slices: partial[slice][lane_n][r][c], then one thread per output adds its 64 slices in order.
  constexpr int kOut = kGemvLanesN * MR * V;
  __shared__ float partial[kGemvSlices][kOut];
#pragma unroll
  for (int r = 0; r < MR; ++r)
#pragma unroll
    for (int c = 0; c < V; ++c) partial[slice][(lane_n * MR + r) * V + c] = acc[r][c];
  __syncthreads();
  for (int o = threadIdx.x; o < kOut; o += kGemvThreads) {
    const int ln = o / (MR * V), r = (o / V) % MR, c = o % V;
    const int64_t n = ((int64_t)blockIdx.x * kGemvLanesN + ln) * V + c, m = m0 + r;
    if (n >= W.N || m >= M) continue;
    float sum = 0.f;
    for (int s = 0; s < kGemvSlices; ++s) sum += partial[s][o];
    Y[m * W.N + n] = sum;
  }
}

// The tiled product for larger batches (tiled_gemm.cuh), the W tile dequantized as it is loaded.
__global__ void __launch_bounds__(kTileThreads) packed_gemm_tiles(PackedArgs W, int bits, const float* __restrict__ X,
                                                                  int64_t M, float* __restrict__ Y) {
  const int tid = threadIdx.x;
  tiled_product(
      M, W.N, W.K,
      [&](TileA& xs, int64_t m0, int64_t k0) {
        // Consecutive threads read consecutive k of one row.
        for (int e = tid; e < kTileM * kTileK; e += kTileThreads) {
          const int kk = e % kTileK, mm = e / kTileK;
          const int64_t m = m0 + mm, k = k0 + kk;
          xs[kk][mm] = (m < M && k < W.K) ? __ldg(X + m * W.K + k) : 0.f;
        }
      },
      [&](TileB& ws, int64_t n0, int64_t k0) {
        // Consecutive threads read consecutive output columns (coalesced qweight).
        for (int e = tid; e < kTileN * kTileK; e += kTileThreads) {
          const int nn = e % kTileN, kk = e / kTileN;
          const int64_t n = n0 + nn, k = k0 + kk;
          float w = 0.f;
          if (n < W.N && k < W.K) {
            const int64_t g = W.g_idx ? __ldg(W.g_idx + k) : k / W.group_size;
            const float s = __half2float(W.scales[g * W.N + n]);
            const int z = (int)read_bits(W.qzeros + g * W.zcols, 1, bits, n) + W.zero_offset;
            const uint32_t q = read_bits(W.qweight + n, W.N, bits, k);
            w = (biased(q) - (kBias + (float)z)) * s;
          }
          ws[kk][nn] = w;
        }
      },
      [&](int64_t m, int64_t n, float acc) { Y[m * W.N + n] = acc; });
}

template <int BITS, int V, bool GIDX>
void launch_gemv_rows(const PackedArgs& a, const float* X, int64_t M, float* Y, cudaStream_t stream) {
  const unsigned gx = (unsigned)ceil_div(a.N, (int64_t)kGemvLanesN * V);
  // Rows in chunks of 8; a remainder of 1, 2 or 4 gets its own narrower launch.
  int64_t m = 0;
  auto launch = [&](auto MRc, int64_t rows) {
    constexpr int MR = decltype(MRc)::value;
    const dim3 grid(gx, (unsigned)(rows / MR));
    packed_gemv<BITS, V, MR, GIDX><<<grid, kGemvThreads, 0, stream>>>(a, X + m * a.K, rows, Y + m * a.N);
    m += rows;
  };
  const int64_t full = (M / 8) * 8;
  if (full) launch(std::integral_constant<int, 8>{}, full);
  int64_t rest = M - m;
  if (rest >= 4) launch(std::integral_constant<int, 4>{}, 4), rest -= 4;
  if (rest >= 2) launch(std::integral_constant<int, 2>{}, 2), rest -= 2;
  if (rest >= 1) launch(std::integral_constant<int, 1>{}, 1);
}

template <int BITS>
void launch_gemv(const PackedArgs& a, const float* X, int64_t M, float* Y, cudaStream_t stream) {
  const bool vec4 = a.N % 4 == 0;  // rows of qweight are then 16-byte aligned (allocations are 256-byte aligned)
  if (a.g_idx) {
    if (vec4) launch_gemv_rows<BITS, 4, true>(a, X, M, Y, stream);
    else launch_gemv_rows<BITS, 1, true>(a, X, M, Y, stream);
  } else {
    if (vec4) launch_gemv_rows<BITS, 4, false>(a, X, M, Y, stream);
    else launch_gemv_rows<BITS, 1, false>(a, X, M, Y, stream);
  }
}

// Rows up to which the GEMV kernel (weights read once per 8 rows) beats the tiled one.
constexpr int64_t kGemvMaxRows = 8;

void enqueue_packed_gemm(const PackedMatrix& W, const float* X, int64_t M, float* Y, cudaStream_t stream) {
  const PackedArgs a{W.qweight, W.qzeros, reinterpret_cast<const __half*>(W.scales), W.g_idx,
                     W.K,       W.N,      W.group_size,                               packed_words(W.bits, W.N),
                     W.zero_offset};
  if (M <= kGemvMaxRows) {
    const bool known = dispatch_gptq_bits(W.bits, [&](auto bits) { launch_gemv<decltype(bits)::value>(a, X, M, Y, stream); });
    if (!known) weight_format(W.bits);  // throws E_BITS
  } else {
    const dim3 grid((unsigned)ceil_div(W.N, kTileN), (unsigned)ceil_div(M, kTileM));
    packed_gemm_tiles<<<grid, kTileThreads, 0, stream>>>(a, W.bits, X, M, Y);
  }
  check(cudaGetLastError(), "packed_gemm launch");
}

int64_t align_up(int64_t bytes) { return (bytes + 255) / 256 * 256; }

}  // namespace

PackedMatrixDevice::PackedMatrixDevice(int device, const PackedMatrix& host) : device_(device), view_(host) {
  use_device(device);
  const int64_t qw = host.qweight_words() * 4, qz = host.qzeros_words() * 4, sc = host.groups * host.N * 2,
                gi = host.g_idx ? host.K * 4 : 0;
  bytes_ = align_up(qw) + align_up(qz) + align_up(sc) + align_up(gi);
  check(cudaMalloc(&storage_, (size_t)bytes_), "cudaMalloc (packed matrix)");
  char* base = static_cast<char*>(storage_);
  auto place = [&](const void* src, int64_t n) {
    char* dst = base;
    if (n) {
      const cudaError_t err = memcpy_to_device(dst, src, (size_t)n);
      if (err != cudaSuccess) {
        cudaFree(storage_);
        check(err, "cudaMemcpy H2D (packed matrix)");
      }
    }
    base += align_up(n);
    return dst;
  };
  view_.qweight = reinterpret_cast<const int32_t*>(place(host.qweight, qw));
  view_.qzeros = reinterpret_cast<const int32_t*>(place(host.qzeros, qz));
  view_.scales = reinterpret_cast<const uint16_t*>(place(host.scales, sc));
  view_.g_idx = host.g_idx ? reinterpret_cast<const int32_t*>(place(host.g_idx, gi)) : nullptr;
}

PackedMatrixDevice::~PackedMatrixDevice() {
  if (storage_) cudaFree(storage_);
}

void packed_gemm_device(const PackedMatrixDevice& W, const float* X, int64_t M, float* Y, void* stream) {
  require(M >= 1, "E_SHAPE", "M must be at least 1");
  check(cudaSetDevice(W.device()), "cudaSetDevice");
  enqueue_packed_gemm(W.view(), X, M, Y, static_cast<cudaStream_t>(stream));
}

void packed_gemm(int device, const float* X, int64_t M, const PackedMatrix& W, float* Y) {
  const PackedMatrixDevice dW(device, W);
  DeviceBuffer<float> dX((size_t)(M * W.K)), dY((size_t)(M * W.N));
  dX.upload(X, (size_t)(M * W.K));
  packed_gemm_device(dW, dX.get(), M, dY.get(), nullptr);
  check(cudaDeviceSynchronize(), "packed_gemm");
  dY.download(Y, (size_t)(M * W.N));
}

}  // namespace cuda
}  // namespace lowbit

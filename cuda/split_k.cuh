// How the packed products (gptq_kernels/, spqr_kernels/) write a tile of results: straight to Y, or,
// when K is split across blocks (or warps), added into fp32 partial sums with atomics, the last
// contributor to the tile (a counter per tile) writing Y and leaving the sums and its counter at
// zero again, so that a product is one launch and can be captured in a CUDA graph. Device code.
#pragma once

#include <cstdint>

#include "gptq_kernels/tile_math.cuh"

namespace lowbit {
namespace cuda {
namespace split_k {

// Where a product's results go: Y [M, N] of T (+ bias [N] f32, or null), and with split-K the
// partial sums [M, ld] and the tile counters.
struct Output {
  void* y;
  const float* bias;
  int M, N;
  int64_t ld;
  float* partial;
  int32_t* counters;
};

// Writes the tile's results that this thread holds: each_output(f) calls f(n, m, v) for each
// (output column n, row of X m, value v). whole: the tile is complete here (no split of K). Else the
// values go into the partial sums and this contribution counts `count` of the tile's `total`; the
// contributor that completes the tile writes the region rows × cols at (m0, n0) from the sums.
// BLOCK: the contributor is the whole block (every thread calls this); else one warp. o.ld, n0 and
// cols are multiples of 4 and o.partial 16-byte aligned.
template <class T, bool BLOCK, class EachOutput>
__device__ __forceinline__ void write_tile(const Output& o, EachOutput&& each_output, bool whole, int tile, int count,
                                           int total, int m0, int n0, int rows, int cols) {
  T* Y = static_cast<T*>(o.y);
  if (whole) {
    each_output([&](int n, int m, float v) {
      if (m < o.M && n < o.N) Y[(int64_t)m * o.N + n] = gptq_tile::from_float<T>(o.bias ? v + o.bias[n] : v);
    });
    return;
  }
  each_output([&](int n, int m, float v) {
    if (m < o.M) atomicAdd(o.partial + (int64_t)m * o.ld + n, v);
  });
  __threadfence();
  int32_t* counter = o.counters + tile;
  const int member = BLOCK ? (int)threadIdx.x : (int)(threadIdx.x & 31), members = BLOCK ? (int)blockDim.x : 32;
  int last;
  if constexpr (BLOCK) {
    __shared__ int block_last;
    __syncthreads();
    if (member == 0) block_last = atomicAdd(counter, count) + count == total;
    __syncthreads();
    last = block_last;
  } else {
    __syncwarp();
    last = 0;
    if (member == 0) last = atomicAdd(counter, count) + count == total;
    last = __shfl_sync(0xffffffffu, last, 0);
  }
  if (!last) return;
  __threadfence();
  // The tile's sums 4 columns at a time (o.ld, n0 and cols are multiples of 4), UNROLL loads in
  // flight per thread: one load at a time left a round trip to L2 per element in the kernel's tail
  // (4096 x 11008 M = 64 on the H200: 48.4 µs with 2 splits against 32.5 with none).
  constexpr int UNROLL = 4;
  const int quads = rows * cols / 4;
  for (int q0 = member; q0 < quads; q0 += UNROLL * members) {
    float4 v[UNROLL];
    int mu[UNROLL], nu[UNROLL];
#pragma unroll
    for (int u = 0; u < UNROLL; ++u) {
      const int q = q0 + u * members;
      mu[u] = q < quads ? m0 + 4 * q / cols : o.M;
      nu[u] = n0 + 4 * q % cols;
      if (mu[u] < o.M) v[u] = __ldcg(reinterpret_cast<const float4*>(o.partial + (int64_t)mu[u] * o.ld + nu[u]));
    }
#pragma unroll
    for (int u = 0; u < UNROLL; ++u) {
      if (mu[u] >= o.M) continue;
      *reinterpret_cast<float4*>(o.partial + (int64_t)mu[u] * o.ld + nu[u]) = make_float4(0.f, 0.f, 0.f, 0.f);
      const float e[4] = {v[u].x, v[u].y, v[u].z, v[u].w};
#pragma unroll
      for (int j = 0; j < 4; ++j) {
        const int n = nu[u] + j;
        if (n < o.N) Y[(int64_t)mu[u] * o.N + n] = gptq_tile::from_float<T>(o.bias ? e[j] + o.bias[n] : e[j]);
      }
    }
  }
  if (member == 0) *counter = 0;
}

}  // namespace split_k
}  // namespace cuda
}  // namespace lowbit

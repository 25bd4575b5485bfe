// The tiled f32 product shared by the built-in SGEMM (linalg.cu) and the packed GEMM for larger
// batches (packed_gemm.cu): each block computes a 64 x 64 tile of C = A · B, 4 x 4 outputs per
// thread, stepping K by 16 through shared memory. The callers differ only in how a tile of A and B
// is loaded (transposed, or dequantized) and how an output is stored, so they pass those in.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

namespace lowbit {
namespace cuda {

constexpr int kTileM = 64, kTileN = 64, kTileK = 16, kTileThreads = 256;
using TileA = float[kTileK][kTileM + 4];  // a[kk][mm] = A[m0 + mm, k0 + kk]
using TileB = float[kTileK][kTileN + 4];  // b[kk][nn] = B[k0 + kk, n0 + nn]

// Run by all kTileThreads threads of a block, for the tile at (blockIdx.y, blockIdx.x):
//   load_a(TileA& a, m0, k0) and load_b(TileB& b, n0, k0) fill the tiles (zeros outside the matrix);
//   store(m, n, acc) is called for each output inside [M, N).
// The sums run in a fixed order (k ascending, one FMA each), so results do not depend on the caller.
template <class LoadA, class LoadB, class Store>
__device__ __forceinline__ void tiled_product(int64_t M, int64_t N, int64_t K, LoadA&& load_a, LoadB&& load_b,
                                              Store&& store) {
  __shared__ TileA as;
  __shared__ TileB bs;
  const int tid = threadIdx.x;
  const int64_t m0 = (int64_t)blockIdx.y * kTileM, n0 = (int64_t)blockIdx.x * kTileN;
  const int tm = (tid / 16) * 4, tn = (tid % 16) * 4;
  float acc[4][4] = {};
  for (int64_t k0 = 0; k0 < K; k0 += kTileK) {
    load_a(as, m0, k0);
    load_b(bs, n0, k0);
    __syncthreads();
#pragma unroll
    for (int kk = 0; kk < kTileK; ++kk) {
      float a[4], b[4];
#pragma unroll
      for (int i = 0; i < 4; ++i) a[i] = as[kk][tm + i], b[i] = bs[kk][tn + i];
#pragma unroll
      for (int i = 0; i < 4; ++i)
#pragma unroll
        for (int j = 0; j < 4; ++j) acc[i][j] = fmaf(a[i], b[j], acc[i][j]);
    }
    __syncthreads();
  }
#pragma unroll
  for (int i = 0; i < 4; ++i)
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      const int64_t m = m0 + tm + i, n = n0 + tn + j;
      if (m < M && n < N) store(m, n, acc[i][j]);
    }
}

}  // namespace cuda
}  // namespace lowbit

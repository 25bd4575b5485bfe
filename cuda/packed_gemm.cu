// Packed low-bit product on the GPU: Y = X · Wᵀ, W in the GPTQ layout. This first version is the
// straightforward one (one thread per output element, dequantizing on the fly); it is the
// correctness baseline that the fast kernels are checked against.
#include <cuda_fp16.h>

#include "../native/core/pack.hpp"
#include "cuda_api.hpp"
#include "cuda_check.cuh"

namespace lowbit {
namespace cuda {
namespace {

__device__ inline uint32_t read_bits(const int32_t* words, int64_t stride, int bits, int64_t i) {
  const int64_t bit = i * bits;
  const int64_t w = bit >> 5;
  const int sh = (int)(bit & 31);
  uint64_t v = (uint32_t)words[w * stride];
  if (sh + bits > 32) v |= (uint64_t)(uint32_t)words[(w + 1) * stride] << 32;
  return (uint32_t)(v >> sh) & ((1u << bits) - 1u);
}

__global__ void packed_gemm_naive(const float* X, int64_t M, int64_t K, int64_t N, int bits, int64_t group_size,
                                  int zero_offset, const int32_t* qweight, const int32_t* qzeros,
                                  const __half_raw* scales, const int32_t* g_idx, int64_t zcols, float* Y) {
  const int64_t n = blockIdx.x * (int64_t)blockDim.x + threadIdx.x;
  const int64_t m = blockIdx.y;
  if (n >= N || m >= M) return;
  float acc = 0.f;
  for (int64_t k = 0; k < K; ++k) {
    const int64_t g = g_idx ? g_idx[k] : k / group_size;
    __half_raw hr = scales[g * N + n];
    const float s = __half2float(*reinterpret_cast<__half*>(&hr));
    const int32_t z = (int32_t)read_bits(qzeros + g * zcols, 1, bits, n) + zero_offset;
    const int32_t q = (int32_t)read_bits(qweight + n, N, bits, k);
    acc += X[m * K + k] * s * (float)(q - z);
  }
  Y[m * N + n] = acc;
}

}  // namespace

void packed_gemm(int device, const float* X, int64_t M, const PackedMatrix& W, float* Y) {
  use_device(device);
  DeviceBuffer<float> dX((size_t)(M * W.K)), dY((size_t)(M * W.N));
  DeviceBuffer<int32_t> dq((size_t)W.qweight_words()), dz((size_t)W.qzeros_words());
  DeviceBuffer<__half_raw> ds((size_t)(W.groups * W.N));
  DeviceBuffer<int32_t> dg(W.g_idx ? (size_t)W.K : 0);
  dX.upload(X, (size_t)(M * W.K));
  dq.upload(W.qweight, (size_t)W.qweight_words());
  dz.upload(W.qzeros, (size_t)W.qzeros_words());
  ds.upload(reinterpret_cast<const __half_raw*>(W.scales), (size_t)(W.groups * W.N));
  if (W.g_idx) dg.upload(W.g_idx, (size_t)W.K);
  const dim3 block(128), grid((unsigned)ceil_div(W.N, 128), (unsigned)M);
  packed_gemm_naive<<<grid, block>>>(dX.get(), M, W.K, W.N, W.bits, W.group_size, W.zero_offset, dq.get(), dz.get(),
                                     ds.get(), W.g_idx ? dg.get() : nullptr, packed_words(W.bits, W.N), dY.get());
  check(cudaGetLastError(), "packed_gemm launch");
  check(cudaDeviceSynchronize(), "packed_gemm");
  dY.download(Y, (size_t)(M * W.N));
}

}  // namespace cuda
}  // namespace lowbit

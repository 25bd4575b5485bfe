// Times the CUDA packed product (device-resident weights, cuda::packed_gemm_device) against the
// card's measured device-to-device copy bandwidth. A standalone program built with nvcc from the
// same sources as the addon (bench/device.sh builds and runs it); not part of the addon.
//
//   nvcc -O3 -std=c++17 -arch=sm_90 -Icuda bench/cuda-gemm.cu cuda/packed_gemm.cu cuda/device.cu -o cuda-gemm
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdio>
#include <memory>
#include <random>
#include <vector>

#include "../cuda/cuda_api.hpp"
#include "cuda_bench.cuh"
#include "../native/core/weight_format.hpp"

using namespace lowbit;

// Median time in microseconds of `reps` runs of f, each timed with events, after warm-up.
template <class F>
double median_us(F f, int reps = 50) {
  for (int i = 0; i < 5; ++i) f();
  cudaEvent_t a, b;
  CK(cudaEventCreate(&a));
  CK(cudaEventCreate(&b));
  std::vector<float> t;
  for (int i = 0; i < reps; ++i) {
    CK(cudaEventRecord(a));
    f();
    CK(cudaEventRecord(b));
    CK(cudaEventSynchronize(b));
    float ms = 0;
    CK(cudaEventElapsedTime(&ms, a, b));
    t.push_back(ms * 1000.f);
  }
  CK(cudaGetLastError());
  std::sort(t.begin(), t.end());
  return t[t.size() / 2];
}

int main() {
  CK(cudaSetDevice(0));
  cudaDeviceProp prop;
  CK(cudaGetDeviceProperties(&prop, 0));
  std::printf("device: %s, %d SMs, L2 %d MB\n", prop.name, prop.multiProcessorCount, prop.l2CacheSize >> 20);

  // Copy ceiling: 1 GiB device-to-device, bytes read + written.
  const size_t copy_bytes = size_t(1) << 30;
  void *src, *dst;
  CK(cudaMalloc(&src, copy_bytes));
  CK(cudaMalloc(&dst, copy_bytes));
  CK(cudaMemset(src, 1, copy_bytes));
  const double copy_us = median_us([&] { CK(cudaMemcpyAsync(dst, src, copy_bytes, cudaMemcpyDeviceToDevice)); }, 20);
  const double copy_gbs = 2.0 * copy_bytes / copy_us / 1e3;
  std::printf("device-to-device copy: %.0f GB/s (read + write)\n", copy_gbs);
  CK(cudaFree(src));
  CK(cudaFree(dst));

  std::mt19937 gen(1234);
  struct Shape { int64_t K, N; };
  const Shape shapes[] = {{4096, 4096}, {4096, 11008}, {11008, 4096}};
  const int bits_list[] = {4, 3, 2, 8};
  std::printf("\n| bits | K x N | group | M | time (us) | weight GB/s | of copy bw | GFLOP/s |\n");
  std::printf("| --- | --- | --- | --- | --- | --- | --- | --- |\n");
  for (int bits : bits_list)
    for (const Shape& s : shapes) {
      const int64_t gs = 128, G = (s.K + gs - 1) / gs;
      PackedMatrix host;
      host.bits = bits;
      host.K = s.K;
      host.N = s.N;
      host.group_size = gs;
      host.groups = G;
      host.zero_offset = 1;
      std::vector<int32_t> qw((size_t)host.qweight_words()), qz((size_t)host.qzeros_words());
      std::vector<uint16_t> sc((size_t)(G * s.N));
      for (auto& w : qw) w = (int32_t)gen();
      for (auto& w : qz) w = (int32_t)gen();
      for (auto& v : sc) v = (uint16_t)(0x2000 | (gen() & 0x3ff));  // fp16 around 2^-7
      host.qweight = qw.data();
      host.qzeros = qz.data();
      host.scales = sc.data();
      // Enough copies of W to overflow the 50 MB L2, used in turn: each run reads its weights from memory.
      std::vector<std::unique_ptr<cuda::PackedMatrixDevice>> copies;
      copies.emplace_back(new cuda::PackedMatrixDevice(0, host));
      const double weight_bytes = (double)copies[0]->bytes();
      while ((double)copies.size() * weight_bytes < 256e6) copies.emplace_back(new cuda::PackedMatrixDevice(0, host));
      size_t turn = 0;
      for (int64_t M : {1, 8, 256}) {
        if (bits != 4 && M != 1) continue;
        std::vector<float> hx((size_t)(M * s.K));
        std::normal_distribution<float> nd;
        for (auto& v : hx) v = nd(gen);
        float *X, *Y;
        CK(cudaMalloc(&X, hx.size() * 4));
        CK(cudaMalloc(&Y, (size_t)(M * s.N) * 4));
        CK(cudaMemcpy(X, hx.data(), hx.size() * 4, cudaMemcpyHostToDevice));
        const double us = median_us([&] { cuda::packed_gemm_device(*copies[turn++ % copies.size()], X, M, Y, nullptr); });
        const double gbs = weight_bytes / us / 1e3;
        std::printf("| %d | %lld x %lld | %lld | %lld | %.1f | %.0f | %.0f%% | %.0f |\n", bits, (long long)s.K,
                    (long long)s.N, (long long)gs, (long long)M, us, gbs, 100.0 * gbs / copy_gbs,
                    2.0 * M * s.K * s.N / us / 1e3);
        CK(cudaFree(X));
        CK(cudaFree(Y));
      }
    }
  return 0;
}

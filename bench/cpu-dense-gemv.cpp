// Standalone microbenchmark of the forward pass's dense CPU product for one row (decode; the tied
// f32 head): model::cpu::dense_linear at M = 1 against a streaming read of the same bytes, both
// rotating over copies that total more than the last-level cache, so that each reads from DRAM.
// Build and run (from the repository root):
//   g++ -O2 -std=c++17 -pthread -Inative/core bench/cpu-dense-gemv.cpp native/core/model/ops.cpp native/core/stream_read.cpp \
//     native/core/thread_pool.cpp native/core/{dtype,pack,packed_matrix,packed_gemm,packed_gemm_scalar,packed_gemm_avx2,packed_gemm_avx512}.cpp \
//     native/core/cpu_gptq/{repack,kernels_scalar,kernels_avx2,kernels_avx512}.cpp -o /tmp/cpu-dense-gemv
//   /tmp/cpu-dense-gemv [N 32000] [K 2048] [copies 3] [threads 2] [dtype f32|f16|bf16]
// Prints the median over pairs of each; copies × N × K × element size should exceed 2 × L3.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "dtype.hpp"
#include "model/ops.hpp"
#include "stream_read.hpp"
#include "thread_pool.hpp"

using namespace lowbit;

int main(int argc, char** argv) {
  const int64_t N = argc > 1 ? atoll(argv[1]) : 32000, K = argc > 2 ? atoll(argv[2]) : 2048;
  const int copies = argc > 3 ? atoi(argv[3]) : 3, threads = argc > 4 ? atoi(argv[4]) : 2;
  const std::string dt = argc > 5 ? argv[5] : "f32";
  const DType dtype = dt == "f16" ? DType::F16 : dt == "bf16" ? DType::BF16 : DType::F32;
  set_global_threads(threads);
  std::vector<float> W((size_t)(N * K));
  for (size_t i = 0; i < W.size(); ++i) W[i] = (float)((i * 2654435761u) % 1000) * 1e-3f - 0.5f;
  std::vector<uint16_t> W16;
  if (dtype != DType::F32) {
    W16.resize(W.size());
    for (size_t i = 0; i < W.size(); ++i) W16[i] = dtype == DType::F16 ? f32_to_f16(W[i]) : f32_to_bf16(W[i]);
  }
  const void* src = dtype == DType::F32 ? static_cast<const void*>(W.data()) : static_cast<const void*>(W16.data());
  std::vector<model::cpu::DensePanels> panels;
  for (int c = 0; c < copies; ++c) panels.emplace_back(src, dtype, N, K);
  const int64_t bytes = panels[0].bytes();
  StreamReader reader(copies * ((bytes + 63) / 64 * 64));
  std::vector<float> x((size_t)K, 0.5f), y((size_t)N);
  std::vector<double> product, read, ratio;
  for (int i = 0; i < 4 * copies; ++i) {
    const int c = i % copies;
    const auto t0 = std::chrono::steady_clock::now();
    model::cpu::dense_linear(x.data(), 1, panels[(size_t)c], nullptr, y.data());
    const double t = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    const double r = reader.read_seconds(c * ((bytes + 63) / 64 * 64), bytes, threads);
    if (i < copies) continue;  // one untimed pass over every copy
    product.push_back(t);
    read.push_back(r);
    ratio.push_back(r / t);
  }
  auto median = [](std::vector<double> v) {
    std::sort(v.begin(), v.end());
    return v[v.size() / 2];
  };
  std::printf("dense_linear M = 1, %s %lld x %lld (%.1f MB), %d copies, %d threads: %.3f ms, %.1f GB/s; read %.1f GB/s; %.0f%% of the read (median of pairs)\n",
              dt.c_str(), (long long)N, (long long)K, bytes / 1e6, copies, threads, median(product) * 1e3,
              bytes / median(product) / 1e9, bytes / median(read) / 1e9, 100 * median(ratio));
  return 0;
}

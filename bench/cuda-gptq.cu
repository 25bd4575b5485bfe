// GPTQ on the GPU: checks cuda::gptq_quantize and cuda::HessianAccumulatorDevice against the CPU
// implementation (native/core) on small random layers, then times whole linears on the GPU:
// Hessian from 128 × 2048 random tokens, then quantization (4-bit, groups of 128).
// A standalone program (bench/device.sh builds it with nvcc and runs it on the GPU machine).
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <random>
#include <string>
#include <type_traits>
#include <vector>

#include "../cuda/cuda_api.hpp"
#include "cuda_bench.cuh"
#include "../native/core/gptq.hpp"
#include "../native/core/hessian.hpp"
#include "../native/core/rtn.hpp"

using namespace lowbit;

// Correlated random activations: x[t, k] = a_k · z[t, k] + 0.5 · z[t, common], from a counter hash.
__device__ float hashed_normal(uint64_t i) {
  uint64_t z = i * 0x9E3779B97F4A7C15ull + 0x632BE59BD9B4E019ull;
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  z ^= z >> 31;
  const float u1 = ((z >> 40) + 1) * (1.f / 16777217.f), u2 = ((z & 0xffffff) + 0.5f) * (1.f / 16777216.f);
  return sqrtf(-2.f * logf(u1)) * cospif(2.f * u2);
}

// T: float, or __nv_bfloat16 (the activations a bf16 forward pass captures).
template <class T>
__global__ void random_tokens(T* X, int64_t m, int64_t K, uint64_t seed) {
  const int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x;
  if (i >= m * K) return;
  const int64_t t = i / K, k = i % K;
  const float a = 0.25f + (float)(k % 13) / 8.f;
  X[i] = (T)(a * hashed_normal(seed * 0x100000000ull + i) + 0.5f * hashed_normal(~seed * 0x100000000ull + t * 7919));
}

double seconds_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

struct Case {
  const char* name;
  int64_t N, K, tokens;
  GptqOptions opt;
  int dead = 0;  // input columns made dead (never active)
};

// CPU vs GPU on one small layer. Returns false on a real disagreement.
bool check_case(const Case& c, std::mt19937& gen) {
  const int64_t N = c.N, K = c.K, m = c.tokens;
  std::normal_distribution<float> nd;
  std::vector<float> X((size_t)(m * K)), W((size_t)(N * K));
  for (int64_t t = 0; t < m; ++t) {
    const float common = nd(gen);
    for (int64_t k = 0; k < K; ++k)
      X[t * K + k] = k < c.dead ? 0.f : (0.3f + (float)(k % 11) / 5.f) * nd(gen) + 0.7f * common;
  }
  for (auto& w : W) w = 0.05f * nd(gen) + (gen() % 97 == 0 ? 0.3f * nd(gen) : 0.f);

  // Hessians in two batches, CPU and GPU.
  HessianAccumulator Hc(K);
  cuda::HessianAccumulatorDevice Hg(0, K);
  const int64_t half = m / 2;
  Hc.add_batch(X.data(), half);
  Hc.add_batch(X.data() + half * K, m - half);
  Hg.add_batch(X.data(), half);
  Hg.add_batch(X.data() + half * K, m - half);
  std::vector<float> Hgh((size_t)(K * K));
  Hg.download(Hgh.data());
  double num = 0, den = 0;
  bool symmetric = true;
  for (int64_t i = 0; i < K * K; ++i) {
    num += std::pow((double)Hgh[i] - Hc.data()[i], 2);
    den += std::pow((double)Hc.data()[i], 2);
    if (Hgh[i] != Hgh[(i % K) * K + i / K]) symmetric = false;
  }
  const double h_err = std::sqrt(num / den);

  // GPTQ on the same (CPU) Hessian.
  const int64_t G = group_count(K, c.opt.group_size);
  std::vector<uint8_t> qc((size_t)(N * K)), qg((size_t)(N * K));
  std::vector<float> sc((size_t)(G * N)), sg((size_t)(G * N));
  std::vector<int32_t> zc((size_t)(G * N)), zg((size_t)(G * N)), gc((size_t)K), gg((size_t)K);
  const GptqReport rc = gptq_quantize(W.data(), N, K, Hc.data(), c.opt, {qc.data(), sc.data(), zc.data(), gc.data()});
  const GptqReport rg =
      cuda::gptq_quantize(0, W.data(), N, K, Hc.data(), c.opt, {qg.data(), sg.data(), zg.data(), gg.data()});
  int64_t q_diff = 0, grid_diff = 0, gidx_diff = 0;
  for (int64_t i = 0; i < N * K; ++i) q_diff += qc[i] != qg[i];
  for (int64_t i = 0; i < G * N; ++i) grid_diff += sc[i] != sg[i] || zc[i] != zg[i];
  for (int64_t i = 0; i < K; ++i) gidx_diff += gc[i] != gg[i];
  const double loss_rel = std::fabs(rc.loss - rg.loss) / std::max(1e-30, std::fabs(rc.loss));
  // Rare ties may flip a code (and through the error feedback, a few after it); grids fitted on
  // updated weights may then differ too. Anything beyond a small fraction is a bug.
  const bool ok = h_err < 1e-5 && symmetric && q_diff <= N * K / 500 && grid_diff <= G * N / 100 && gidx_diff == 0 &&
                  loss_rel < 1e-3 && rc.damp == rg.damp && rc.damp_raises == rg.damp_raises &&
                  rc.dead_inputs == rg.dead_inputs;
  std::printf("| %s | %lld x %lld | %.1e%s | %lld / %lld | %lld / %lld | %lld | %.2e | %d/%d | %s |\n", c.name,
              (long long)N, (long long)K, h_err, symmetric ? "" : " (asym!)", (long long)q_diff, (long long)(N * K),
              (long long)grid_diff, (long long)(G * N), (long long)gidx_diff, loss_rel, rc.damp_raises, rg.damp_raises,
              ok ? "ok" : "MISMATCH");
  return ok;
}

GptqOptions options(int bits, int64_t gs, bool act, bool stat, bool sym, bool mse, int min_zero) {
  GptqOptions o;
  o.bits = bits;
  o.group_size = gs;
  o.act_order = act;
  o.static_groups = stat;
  o.sym = sym;
  o.mse = mse;
  o.min_zero = min_zero;
  return o;
}

int main(int argc, char** argv) {
  const std::string mode = argc > 1 ? argv[1] : "";  // --check: checks only; --timing: timings only
  const bool timing_only = mode == "--timing";
  CK(cudaSetDevice(0));
  cudaDeviceProp prop;
  CK(cudaGetDeviceProperties(&prop, 0));
  std::printf("device: %s; linear algebra: %s\n", prop.name, cuda::gptq_linalg_backend().c_str());
  bool all_ok = true;
  if (!timing_only) {
    std::mt19937 gen(std::random_device{}());
    const Case cases[] = {
        {"4-bit g32", 100, 172, 600, options(4, 32, false, false, false, false, 1)},
        {"3-bit per-channel act-order", 96, 256, 700, options(3, -1, true, false, false, false, 0)},
        {"2-bit g32 act-order", 120, 300, 700, options(2, 32, true, false, false, false, 1)},
        {"4-bit g32 act-order static", 64, 172, 500, options(4, 32, true, true, false, false, 1)},
        {"4-bit g64 sym", 80, 200, 500, options(4, 64, false, false, true, false, 0)},
        {"3-bit g32 mse", 64, 172, 500, options(3, 32, false, false, false, true, 1)},
        {"8-bit g128 dead inputs", 70, 384, 800, options(8, 128, true, false, false, false, 1), 9},
        {"4-bit g128 K 1000 block 128", 200, 1000, 1500, options(4, 128, false, false, false, false, 1)},
    };
    std::printf("\n| case | N x K | H rel. err | q differing | grids differing | g_idx differing | loss rel. diff | "
                "damp raises cpu/gpu | |\n| --- | --- | --- | --- | --- | --- | --- | --- | --- |\n");
    for (const Case& c : cases) all_ok = check_case(c, gen) && all_ok;
  }

  if (mode == "--check") return all_ok ? 0 : 1;
  // Timings per linear: the Hessian from 128 × 2048 tokens (made on the GPU in batches), from f32
  // inputs (SGEMM) and from bf16 inputs (what the bf16 forward pass captures: tensor cores, f32
  // accumulation, the lower half), then GPTQ 4-bit g128 on the bf16 one. Best of two runs each (the
  // first loads the libraries).
  struct Shape { int64_t N, K; };
  const Shape shapes[] = {{4096, 4096}, {11008, 4096}, {4096, 11008}};
  const int64_t tokens = 128 * 2048, batch = 8192;
  std::printf("\n| linear N x K (out x in) | Hessian f32 inputs, %lld tokens (s) | Hessian bf16 inputs (s) | "
              "quantize 4-bit g128 (s) | total, bf16 Hessian (s) |\n| --- | --- | --- | --- | --- |\n",
              (long long)tokens);
  for (const Shape& s : shapes) {
    void* X;
    CK(cudaMalloc(&X, (size_t)(batch * s.K) * sizeof(float)));
    std::vector<float> W((size_t)(s.N * s.K));
    std::mt19937 gen(7);
    std::normal_distribution<float> nd(0.f, 0.05f);
    for (auto& w : W) w = nd(gen);
    const int64_t G = group_count(s.K, 128);
    std::vector<uint8_t> q((size_t)(s.N * s.K));
    std::vector<float> sc((size_t)(G * s.N));
    std::vector<int32_t> z((size_t)(G * s.N)), gi((size_t)s.K);
    const unsigned blocks = (unsigned)((batch * s.K + 255) / 256);
    // One Hessian from `tokens` tokens with inputs of type T; returns the seconds it took.
    auto time_hessian = [&](auto zero, cuda::HessianAccumulatorDevice& H) {
      using T = decltype(zero);
      CK(cudaDeviceSynchronize());
      const auto t0 = std::chrono::steady_clock::now();
      for (int64_t t = 0; t < tokens; t += batch) {
        random_tokens<T><<<blocks, 256>>>(static_cast<T*>(X), batch, s.K, (uint64_t)t);
        if constexpr (std::is_same<T, float>::value) H.add_batch_device(static_cast<const float*>(X), batch);
        else H.add_batch_device(X, DType::BF16, batch);
      }
      CK(cudaDeviceSynchronize());
      return seconds_since(t0);
    };
    double best_h32 = 1e30, best_h16 = 1e30, best_q = 1e30;
    for (int rep = 0; rep < 2; ++rep) {
      {
        cuda::HessianAccumulatorDevice H(0, s.K);
        best_h32 = std::min(best_h32, time_hessian(0.f, H));
      }
      cuda::HessianAccumulatorDevice H(0, s.K);
      best_h16 = std::min(best_h16, time_hessian(__nv_bfloat16(0.f), H));
      const auto t0 = std::chrono::steady_clock::now();
      cuda::gptq_quantize(H, W.data(), s.N, options(4, 128, false, false, false, false, 1),
                          {q.data(), sc.data(), z.data(), gi.data()});
      best_q = std::min(best_q, seconds_since(t0));
    }
    std::printf("| %lld x %lld | %.3f | %.3f | %.3f | %.3f |\n", (long long)s.N, (long long)s.K, best_h32, best_h16,
                best_q, best_h16 + best_q);
    std::fflush(stdout);
    CK(cudaFree(X));
  }
  return all_ok ? 0 : 1;
}

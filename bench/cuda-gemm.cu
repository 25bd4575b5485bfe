// The GPTQ GPU products (cuda/gptq_kernels): a correctness check against float64 and the timings.
// A standalone program built with nvcc from the same sources as the addon; not part of the addon.
//
//   bench/device.sh --build-only     (nvcc for sm_90 with the CPU objects of native/core: build-cuda/bench)
//   cuda-gemm check              every kernel configuration against float64 (exit 1 on a failure)
//   cuda-gemm bench [out.json [maxM]]   timings over the issue's shapes (M up to maxM, default 256)
//   cuda-gemm sweep [out.json [maxM]]   the same, with every configuration and split timed too
//     (LOWBIT_SWEEP_CONFIGS=a,b limits the configurations, LOWBIT_SWEEP_BITS=4 the bit width,
//     LOWBIT_SWEEP_MIN_M=16 the smallest M; LOWBIT_SWEEP_VERBOSE=1 prints every timing)
//   cuda-gemm profile [config]   a few launches for ncu (LOWBIT_PROFILE_M, LOWBIT_PROFILE_SPLITS)
//   The wgmma kernels are sm_90a code: bench/device.sh compiles gemm_wgmma.cu apart for it.
//
// Check: random GPTQ checkpoints (2/3/4 bits, odd K and N, groups of 32/64/128/per-channel, shuffled
// g_idx, v1 and v2 zeros), packed with native/core's packer, repacked (and the repack undone: it
// must give back q, zeros and scales exactly), multiplied in fp16 and bf16 by every configuration
// and split and by the dequantize + cuBLAS path, outputs poisoned with NaN before each run and each
// run done twice (the split-K scratch must be left clean), and once more through a captured CUDA graph. Each element must lie within a
// bound derived from the rounding of the weights to fp16/bf16 (inline scaling), of the output, and
// fp32 accumulation: |y - ref| <= 2·u_w·Σ|x·w| + u_out·|ref| + 2^-20·Σ|x·w|.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "../cuda/cuda_api.hpp"
#include "../cuda/gptq_kernels/gptq_kernels.hpp"
#include "../cuda/linalg.cuh"
#include "../native/core/pack.hpp"
#include "../native/core/weight_format.hpp"
#include "cuda_bench.cuh"

using namespace lowbit;
using cuda::GptqDtype;

using bench::Rng;
using bench::f16_value;
using bench::median_us;

namespace {

constexpr int kDequant = -1;  // the bench's name for the dequantize + cuBLAS path

// ---------------------------------------------------------------- check

struct Case {
  int bits;
  int64_t K, N, gs;
  bool shuffled;
  int zero_offset;
  std::vector<int64_t> ms = {};  // the rows of X to check (empty: 1 to 256)
};

struct Checkpoint {
  PackedMatrix W;
  std::vector<uint8_t> q;  // [N, K]
  std::vector<int32_t> zeros, qw, qz, gidx;
  std::vector<uint16_t> scales;
};

void make_checkpoint(const Case& c, Rng& rng, Checkpoint& ck) {
  const int64_t G = (c.K + c.gs - 1) / c.gs, maxq = (1 << c.bits) - 1;
  ck.q.resize((size_t)(c.N * c.K));
  for (auto& v : ck.q) v = (uint8_t)(rng.next() % (uint64_t)(maxq + 1));
  ck.zeros.resize((size_t)(G * c.N));
  for (auto& z : ck.zeros) z = c.zero_offset + (int32_t)(rng.next() % (uint64_t)(maxq + 1 - c.zero_offset));
  ck.scales.resize((size_t)(G * c.N));
  for (auto& s : ck.scales) s = (uint16_t)(((6 + rng.next() % 6) << 10) | (rng.next() % 1024));
  ck.gidx.clear();
  if (c.shuffled) {
    ck.gidx.resize((size_t)c.K);
    for (int64_t k = 0; k < c.K; ++k) ck.gidx[(size_t)k] = (int32_t)(k / c.gs);
    for (int64_t k = c.K - 1; k > 0; --k) std::swap(ck.gidx[(size_t)k], ck.gidx[(size_t)(rng.next() % (uint64_t)(k + 1))]);
  }
  PackedMatrix& W = ck.W;
  W.bits = c.bits;
  W.K = c.K;
  W.N = c.N;
  W.group_size = c.gs;
  W.groups = G;
  W.zero_offset = c.zero_offset;
  ck.qw.assign((size_t)W.qweight_words(), 0);
  ck.qz.assign((size_t)W.qzeros_words(), 0);
  pack_qweight(ck.q.data(), c.N, c.K, c.bits, ck.qw.data());
  pack_qzeros(ck.zeros.data(), G, c.N, c.bits, c.zero_offset, ck.qz.data());
  W.qweight = ck.qw.data();
  W.qzeros = ck.qz.data();
  W.scales = ck.scales.data();
  W.g_idx = c.shuffled ? ck.gidx.data() : nullptr;
}

uint16_t to_bits(float v, GptqDtype dt) { return bench::half_bits(v, dt == GptqDtype::bf16); }
double from_bits(uint16_t h, GptqDtype dt) { return bench::half_value(h, dt == GptqDtype::bf16); }

int failures = 0;

// Compares Y (device, dtype bits) with the float64 product; returns the max error / bound ratio.
double compare(const std::vector<uint16_t>& y, const std::vector<double>& ref, const std::vector<double>& absref,
               GptqDtype dt, bool defer, const char* what) {
  const double u_w = dt == GptqDtype::f16 ? std::ldexp(1.0, -11) : std::ldexp(1.0, -8);
  const double u_out = dt == GptqDtype::f16 ? std::ldexp(1.0, -11) : std::ldexp(1.0, -8);
  double worst = 0;
  size_t bad = 0, first_bad = 0;
  for (size_t i = 0; i < ref.size(); ++i) {
    const double v = from_bits(y[i], dt);
    const double bound = (defer ? 0.0 : 2 * u_w * absref[i]) + u_out * std::fabs(ref[i]) + std::ldexp(absref[i], -20) + 1e-30;
    const double r = std::isfinite(v) ? std::fabs(v - ref[i]) / bound : 1e30;
    if (r > 1.0 && bad++ == 0) first_bad = i;
    worst = std::max(worst, r);
  }
  if (bad) {
    ++failures;
    std::printf("FAIL %s: %zu of %zu elements off (first %zu: got %g want %g), worst error/bound %.3g\n", what, bad,
                ref.size(), first_bad, from_bits(y[first_bad], dt), ref[first_bad], worst);
  }
  return worst;
}

void check_case(const Case& c, Rng& rng) {
  Checkpoint ck;
  make_checkpoint(c, rng, ck);
  const cuda::GptqRepacked R = cuda::repack_gptq_host(ck.W);
  {
    std::vector<uint8_t> q;
    std::vector<int32_t> z;
    std::vector<uint16_t> s;
    cuda::unrepack_gptq_host(R, q, z, s);
    if (q != ck.q || z != ck.zeros || s != ck.scales) {
      ++failures;
      std::printf("FAIL repack round trip: bits %d K %lld N %lld gs %lld\n", c.bits, (long long)c.K, (long long)c.N,
                  (long long)c.gs);
    }
  }
  std::unique_ptr<cuda::GptqDeviceWeights> dW(new cuda::GptqDeviceWeights(R, 0));
  // Dequantized weights, float64, [N, K].
  std::vector<double> w((size_t)(c.N * c.K));
  for (int64_t n = 0; n < c.N; ++n)
    for (int64_t k = 0; k < c.K; ++k) {
      const int64_t g = ck.W.group_of(k);
      w[(size_t)(n * c.K + k)] =
          ((double)ck.q[(size_t)(n * c.K + k)] - ck.zeros[(size_t)(g * c.N + n)]) * f16_value(ck.scales[(size_t)(g * c.N + n)]);
    }
  double worst = 0;
  int runs = 0;
  for (GptqDtype dt : {GptqDtype::f16, GptqDtype::bf16})
    for (int64_t M : c.ms.empty() ? std::vector<int64_t>{1, 3, 8, 13, 16, 29, 64, 100, 256} : c.ms) {
      std::vector<uint16_t> x((size_t)(M * c.K));
      std::vector<double> xd(x.size());
      for (size_t i = 0; i < x.size(); ++i) {
        x[i] = to_bits((float)rng.normal(), dt);
        xd[i] = from_bits(x[i], dt);
      }
      std::vector<double> ref((size_t)(M * c.N)), absref(ref.size());
      for (int64_t m = 0; m < M; ++m)
        for (int64_t n = 0; n < c.N; ++n) {
          double s = 0, a = 0;
          const double* wr = &w[(size_t)(n * c.K)];
          const double* xr = &xd[(size_t)(m * c.K)];
          for (int64_t k = 0; k < c.K; ++k) s += xr[k] * wr[k], a += std::fabs(xr[k] * wr[k]);
          ref[(size_t)(m * c.N + n)] = s;
          absref[(size_t)(m * c.N + n)] = a;
        }
      void *dx, *dy;
      CK(cudaMalloc(&dx, x.size() * 2));
      CK(cudaMalloc(&dy, ref.size() * 2));
      CK(cudaMemcpy(dx, x.data(), x.size() * 2, cudaMemcpyHostToDevice));
      std::vector<uint16_t> y(ref.size());
      for (int config = 0; config < cuda::gptq_config_count(); ++config)
        for (int splits : {1, 3, 16}) {
          for (int rep = 0; rep < 2; ++rep) {
            CK(cudaMemset(dy, 0xff, y.size() * 2));  // NaN in fp16 and bf16
            if (!cuda::gptq_matmul_config(*dW, dx, dt, M, dy, nullptr, config, splits)) break;
            CK(cudaDeviceSynchronize());
            CK(cudaMemcpy(y.data(), dy, y.size() * 2, cudaMemcpyDeviceToHost));
            char what[256];
            std::snprintf(what, sizeof what, "bits %d K %lld N %lld gs %lld%s zo %d %s M %lld %s splits %d run %d",
                          c.bits, (long long)c.K, (long long)c.N, (long long)c.gs, c.shuffled ? " act-order" : "",
                          c.zero_offset, dt == GptqDtype::f16 ? "fp16" : "bf16", (long long)M,
                          cuda::gptq_config_name(config), splits, rep);
            const bool defer = cuda::gptq_config_defers(*dW, config);
            worst = std::max(worst, compare(y, ref, absref, dt, defer, what));
            ++runs;
          }
        }
      // The dequantize + cuBLAS path (scales applied to each weight: the inline bound), its scratch
      // poisoned too so that an unwritten weight shows.
      {
        void* wide;
        const size_t wide_bytes = (size_t)cuda::gptq_dequant_bytes(*dW);
        CK(cudaMalloc(&wide, wide_bytes));
        for (int rep = 0; rep < 2; ++rep) {
          CK(cudaMemset(wide, 0xff, wide_bytes));
          CK(cudaMemset(dy, 0xff, y.size() * 2));
          if (!cuda::gptq_matmul_dequant(*dW, dx, dt, M, dy, nullptr, wide)) {
            ++failures;
            std::printf("FAIL dequantize path: no cuBLAS\n");
            break;
          }
          CK(cudaDeviceSynchronize());
          CK(cudaMemcpy(y.data(), dy, y.size() * 2, cudaMemcpyDeviceToHost));
          char what[256];
          std::snprintf(what, sizeof what, "bits %d K %lld N %lld gs %lld%s zo %d %s M %lld dequant+cuBLAS run %d",
                        c.bits, (long long)c.K, (long long)c.N, (long long)c.gs, c.shuffled ? " act-order" : "",
                        c.zero_offset, dt == GptqDtype::f16 ? "fp16" : "bf16", (long long)M, rep);
          worst = std::max(worst, compare(y, ref, absref, dt, false, what));
          ++runs;
        }
        CK(cudaFree(wide));
      }
      // The default choice, through a captured graph, replayed twice.
      {
        cudaStream_t st;
        CK(cudaStreamCreateWithFlags(&st, cudaStreamNonBlocking));
        void* wide;
        CK(cudaMalloc(&wide, (size_t)cuda::gptq_dequant_bytes(*dW)));
        cuda::gptq_matmul(*dW, dx, dt, M, dy, st, wide);  // grows the scratch outside capture
        CK(cudaStreamSynchronize(st));
        cudaGraph_t graph;
        cudaGraphExec_t exec;
        CK(cudaStreamBeginCapture(st, cudaStreamCaptureModeThreadLocal));
        cuda::gptq_matmul(*dW, dx, dt, M, dy, st, wide);
        CK(cudaStreamEndCapture(st, &graph));
        CK(cudaGraphInstantiate(&exec, graph, 0));
        for (int rep = 0; rep < 2; ++rep) {
          CK(cudaMemsetAsync(dy, 0xff, y.size() * 2, st));
          CK(cudaGraphLaunch(exec, st));
          CK(cudaStreamSynchronize(st));
          CK(cudaMemcpy(y.data(), dy, y.size() * 2, cudaMemcpyDeviceToHost));
          int config, splits;
          cuda::gptq_choose(*dW, M, &config, &splits);
          const bool defer = !cuda::gptq_dequant_wins(*dW, M) && cuda::gptq_config_defers(*dW, config);
          compare(y, ref, absref, dt, defer, "graph replay");
        }
        CK(cudaGraphExecDestroy(exec));
        CK(cudaGraphDestroy(graph));
        CK(cudaStreamDestroy(st));
        CK(cudaFree(wide));
      }
      CK(cudaFree(dx));
      CK(cudaFree(dy));
    }
  std::printf("check bits %d K %5lld N %4lld gs %4lld %-9s zo %d: %s=%d %s=%d, %d runs, worst error/bound %.3f\n",
              c.bits, (long long)c.K, (long long)c.N, (long long)c.gs, c.shuffled ? "act-order" : "", c.zero_offset,
              "identity", (int)R.identity_k, "uniform", (int)R.uniform_chunks, runs, worst);
}

// A dependent chain on one stream, launched back to back: Y1 = W1·X, then Y2 = W2·Y1, each product
// through gptq_matmul's own choice, both outputs poisoned first; three times directly and twice
// through a captured graph. The products are launched overlapped (cuda/overlap.cuh): the second
// may start while the first runs, and must not read Y1 before the first has finished — an early
// read sees the NaN poison or a half-written Y1, and Y2 misses W2 · (the final Y1).
void check_chain(Rng& rng) {
  Checkpoint c1, c2;
  make_checkpoint({4, 8192, 4096, 128, false, 1}, rng, c1);  // the slow first product
  make_checkpoint({2, 4096, 1000, 128, false, 1}, rng, c2);
  const cuda::GptqRepacked R1 = cuda::repack_gptq_host(c1.W), R2 = cuda::repack_gptq_host(c2.W);
  cuda::GptqDeviceWeights W1(R1, 0), W2(R2, 0);
  for (GptqDtype dt : {GptqDtype::f16, GptqDtype::bf16})
    for (int64_t M : {1, 8, 16}) {
      std::vector<uint16_t> x((size_t)(M * 8192));
      for (auto& v : x) v = to_bits((float)rng.normal(), dt);
      void *dx, *dy1, *dy2, *wide;
      CK(cudaMalloc(&dx, x.size() * 2));
      CK(cudaMalloc(&dy1, (size_t)(M * 4096 * 2)));
      CK(cudaMalloc(&dy2, (size_t)(M * 1000 * 2)));
      CK(cudaMalloc(&wide, (size_t)std::max(cuda::gptq_dequant_bytes(W1), cuda::gptq_dequant_bytes(W2))));
      CK(cudaMemcpy(dx, x.data(), x.size() * 2, cudaMemcpyHostToDevice));
      cudaStream_t st;
      CK(cudaStreamCreateWithFlags(&st, cudaStreamNonBlocking));
      auto enqueue = [&] {
        CK(cudaMemsetAsync(dy1, 0xff, (size_t)(M * 4096 * 2), st));
        CK(cudaMemsetAsync(dy2, 0xff, (size_t)(M * 1000 * 2), st));
        cuda::gptq_matmul(W1, dx, dt, M, dy1, st, wide);
        cuda::gptq_matmul(W2, dy1, dt, M, dy2, st, wide);
      };
      auto verify = [&](const char* how, int rep) {
        CK(cudaStreamSynchronize(st));
        std::vector<uint16_t> y1((size_t)(M * 4096)), y2((size_t)(M * 1000));
        CK(cudaMemcpy(y1.data(), dy1, y1.size() * 2, cudaMemcpyDeviceToHost));
        CK(cudaMemcpy(y2.data(), dy2, y2.size() * 2, cudaMemcpyDeviceToHost));
        std::vector<double> ref(y2.size()), absref(y2.size());
        for (int64_t m = 0; m < M; ++m)
          for (int64_t n = 0; n < 1000; ++n) {
            double s = 0, a = 0;
            for (int64_t k = 0; k < 4096; ++k) {
              const int64_t g = c2.W.group_of(k);
              const double w = ((double)c2.q[(size_t)(n * 4096 + k)] - c2.zeros[(size_t)(g * 1000 + n)]) *
                               f16_value(c2.scales[(size_t)(g * 1000 + n)]);
              const double v = w * from_bits(y1[(size_t)(m * 4096 + k)], dt);
              s += v, a += std::fabs(v);
            }
            ref[(size_t)(m * 1000 + n)] = s;
            absref[(size_t)(m * 1000 + n)] = a;
          }
        int config, splits;
        cuda::gptq_choose(W2, M, &config, &splits);
        char what[160];
        std::snprintf(what, sizeof what, "chain %s %s M %lld run %d", how, dt == GptqDtype::f16 ? "fp16" : "bf16",
                      (long long)M, rep);
        compare(y2, ref, absref, dt, cuda::gptq_config_defers(W2, config), what);
      };
      for (int rep = 0; rep < 3; ++rep) {
        enqueue();
        verify("direct", rep);
      }
      cudaGraph_t graph;
      cudaGraphExec_t exec;
      CK(cudaStreamBeginCapture(st, cudaStreamCaptureModeThreadLocal));
      enqueue();
      CK(cudaStreamEndCapture(st, &graph));
      CK(cudaGraphInstantiate(&exec, graph, 0));
      for (int rep = 0; rep < 2; ++rep) {
        CK(cudaGraphLaunch(exec, st));
        verify("graph", rep);
      }
      CK(cudaGraphExecDestroy(exec));
      CK(cudaGraphDestroy(graph));
      CK(cudaStreamDestroy(st));
      for (void* p : {dx, dy1, dy2, wide}) CK(cudaFree(p));
    }
  std::printf("check chain: W1 8192 x 4096 4-bit then W2 4096 x 1000 2-bit, M 1/8/16, fp16/bf16\n");
}

int run_check() {
  Rng rng(20261201);
  const Case cases[] = {
      {4, 1000, 200, 128, false, 1},  // K not a multiple of 128 (partial chunk), N not of 64
      {4, 1003, 77, 32, true, 1},     // act-order, odd K (gathered X), groups of 32 (inline scaling)
      {4, 768, 130, 128, true, 0},    // act-order with whole chunks per group (deferred scaling), v2 zeros
      {4, 1000, 64, 1000, false, 1},  // per-channel
      {4, 996, 96, 64, false, 1},     // K % 8 != 0 (X copied), groups of 64
      {3, 1000, 200, 128, false, 1}, {3, 1003, 77, 32, true, 0}, {3, 768, 130, 128, true, 1},
      {3, 2048, 144, 64, false, 1},
      {2, 1000, 200, 128, false, 1}, {2, 1003, 77, 32, true, 1}, {2, 768, 130, 128, true, 0},
      {2, 2048, 144, 2048, false, 1},
      {4, 4096, 144, 128, false, 1},  // 32 chunks: the folded GEMV split 3 ways (its split-K epilogue)
      // Above 8192² weights: the warpgroup kernel reads X prepared from 9 rows on (gemm.cu's
      // wgmma_prepares_x), its 16- and 32-row blocks included; act-order, partial last chunk.
      {3, 65600, 1030, 128, true, 1, {13, 29}},
  };
  for (const Case& c : cases) check_case(c, rng);
  check_chain(rng);
  std::printf("check: %s (%d failures)\n", failures ? "FAILED" : "passed", failures);
  return failures ? 1 : 0;
}

// ---------------------------------------------------------------- bench

// A repacked matrix filled directly with random bytes (the timing does not depend on what the codes
// are); groups of gs along K in order.
cuda::GptqRepacked random_repacked(int bits, int64_t K, int64_t N, int64_t gs, Rng& rng) {
  cuda::GptqRepacked R;
  R.bits = bits;
  R.K = K;
  R.N = N;
  R.Kp = (K + 127) / 128 * 128;
  R.Np = (N + 127) / 128 * 128;
  R.groups = (K + gs - 1) / gs;
  R.identity_k = true;
  R.uniform_chunks = gs % 128 == 0;
  R.weights.resize((size_t)((R.Np / 16) * (R.Kp / 128) * 256 * bits));
  for (size_t i = 0; i + 8 <= R.weights.size(); i += 8) {
    const uint64_t v = rng.next();
    std::memcpy(&R.weights[i], &v, 8);
  }
  R.scale_zero.resize((size_t)(R.groups * (R.Np / 16) * 32));
  for (size_t i = 0; i < R.scale_zero.size(); i += 4) {
    R.scale_zero[i] = (uint16_t)(0x2000 | (rng.next() & 0x3ff));
    R.scale_zero[i + 1] = (uint16_t)(0x2000 | (rng.next() & 0x3ff));
    R.scale_zero[i + 2] = 0x4000;  // zero point 2
    R.scale_zero[i + 3] = 0x4200;  // 3
  }
  R.slot_group.resize((size_t)(R.Kp / 32));
  for (size_t s = 0; s < R.slot_group.size(); ++s) R.slot_group[s] = (int32_t)std::min<int64_t>((int64_t)s * 32 / gs, R.groups - 1);
  R.perm.resize((size_t)R.Kp);
  for (int64_t i = 0; i < R.Kp; ++i) R.perm[(size_t)i] = i < K ? (int32_t)i : -1;
  return R;
}

// LOWBIT_SWEEP_CONFIGS=name,name,... limits a sweep to those configurations (all when unset).
bool sweep_includes(const char* name) {
  const char* only = std::getenv("LOWBIT_SWEEP_CONFIGS");
  if (!only) return true;
  const std::string list = std::string(",") + only + ",";
  return list.find(std::string(",") + name + ",") != std::string::npos;
}

int run_bench(const char* json_path, bool sweep, int64_t max_m) {
  cudaDeviceProp prop;
  CK(cudaGetDeviceProperties(&prop, 0));
  std::printf("device: %s, %d SMs, L2 %d MB\n", prop.name, prop.multiProcessorCount, prop.l2CacheSize >> 20);
  const double copy_gbs = bench::copy_bandwidth_gbs();
  std::printf("device-to-device copy: %.0f GB/s (read + write)\n", copy_gbs);

  cudaStream_t stream;
  CK(cudaStreamCreate(&stream));
  FILE* js = json_path ? std::fopen(json_path, "w") : nullptr;
  if (js) std::fprintf(js, "{\"device\":\"%s\",\"copy_gbs\":%.1f,\"rows\":[\n", prop.name, copy_gbs);
  bool first_row = true;
  Rng rng(7);
  struct Shape { int64_t K, N; };
  const Shape shapes[] = {{4096, 4096}, {4096, 11008}, {11008, 4096}, {8192, 8192}, {8192, 28672}, {28672, 8192}};
  const int64_t Ms[] = {1, 2, 4, 8, 16, 32, 64, 128, 256};
  std::printf("\n| K x N | bits | group | M | us | GB/s | of copy | TFLOP/s | config | fused us | dequant us | best us (config, splits) |\n");
  std::printf("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |\n");
  struct Job { Shape s; int bits; int64_t gs; };
  std::vector<Job> jobs;
  // LOWBIT_SWEEP_SHAPES=KxN,KxN,... times those shapes (group 128) instead, e.g. the joined q/k/v and
  // gate/up products of a 7B decode step (4096x12288, 4096x22016).
  if (const char* only = std::getenv("LOWBIT_SWEEP_SHAPES")) {
    for (const char* p = only; *p;) {
      char* end = nullptr;
      const long long K = std::strtoll(p, &end, 10);
      if (*end != 'x') break;
      const long long N = std::strtoll(end + 1, &end, 10);
      if (K > 0 && N > 0)
        for (int bits : {4, 3, 2}) jobs.push_back({{K, N}, bits, 128});
      p = *end == ',' ? end + 1 : end;
      if (*end != ',') break;
    }
  } else {
    for (const Shape& s : shapes)
      for (int bits : {4, 3, 2}) jobs.push_back({s, bits, 128});
    for (int bits : {4, 3, 2}) jobs.push_back({{8192, 8192}, bits, 32});
  }
  const char* bits_env = std::getenv("LOWBIT_SWEEP_BITS");  // one bit width alone
  for (const Job& job : jobs) {
    if (bits_env && job.bits != std::atoi(bits_env)) continue;
    const Shape s = job.s;
    const cuda::GptqRepacked R = random_repacked(job.bits, s.K, s.N, job.gs, rng);
    std::vector<std::unique_ptr<cuda::GptqDeviceWeights>> copies;
    copies.emplace_back(new cuda::GptqDeviceWeights(R, 0));
    const double wbytes = (double)copies[0]->weight_bytes;
    while ((double)copies.size() * wbytes < 300e6) copies.emplace_back(new cuda::GptqDeviceWeights(R, 0));
    void *dx, *dy, *wide;
    CK(cudaMalloc(&dx, (size_t)(256 * s.K * 2)));
    CK(cudaMalloc(&dy, (size_t)(256 * s.N * 2)));
    CK(cudaMalloc(&wide, (size_t)cuda::gptq_dequant_bytes(*copies[0])));
    {
      std::vector<uint16_t> hx((size_t)(256 * s.K));
      for (auto& v : hx) v = to_bits((float)rng.normal(), GptqDtype::f16);
      CK(cudaMemcpy(dx, hx.data(), hx.size() * 2, cudaMemcpyHostToDevice));
    }
    const char* min_m_env = std::getenv("LOWBIT_SWEEP_MIN_M");  // sweeps of the larger batches alone
    const int64_t min_m = min_m_env ? std::atoll(min_m_env) : 1;
    for (int64_t M : Ms) {
      if (M > max_m || M < min_m) continue;
      // Time per product inside a CUDA graph of 20 products over rotating weight copies (the way a
      // forward pass would run them), so that launch latency is not counted.
      // config kDequant: the dequantize + cuBLAS path.
      auto run = [&](const cuda::GptqDeviceWeights& c, cudaStream_t st, int config, int splits) {
        if (config == kDequant) return cuda::gptq_matmul_dequant(c, dx, GptqDtype::f16, M, dy, st, wide);
        return cuda::gptq_matmul_config(c, dx, GptqDtype::f16, M, dy, st, config, splits);
      };
      auto time_cfg = [&](int config, int splits) -> double {
        return bench::graph_us(stream, 20,
                               [&](int i) { return run(*copies[i % copies.size()], stream, config, splits); });
      };
      int config, splits;
      cuda::gptq_choose(*copies[0], M, &config, &splits);
      const double fused_us = time_cfg(config, splits);
      const double dequant_us = M >= 16 ? time_cfg(kDequant, 1) : -1.0;
      const bool dequant = cuda::gptq_dequant_wins(*copies[0], M);
      const double us = dequant ? dequant_us : fused_us;
      double best = us;
      int best_c = config, best_s = splits;
      if (sweep) {
        for (int c = 0; c < cuda::gptq_config_count(); ++c)
          for (int sp : {1, 2, 3, 4, 6, 8, 12, 16}) {
            if (!sweep_includes(cuda::gptq_config_name(c))) continue;
            if (!dequant && c == config && sp == splits) continue;
            if (M > 64 && sp > 8) continue;  // large M fills the GPU without deep splits
            const double t = time_cfg(c, sp);
            if (t > 0 && std::getenv("LOWBIT_SWEEP_VERBOSE"))
              std::printf("  %lld x %lld b%d M%lld %s/%d %.2f\n", (long long)s.K, (long long)s.N, job.bits, (long long)M,
                          cuda::gptq_config_name(c), sp, t);
            if (t > 0 && t < best) best = t, best_c = c, best_s = sp;
          }
      }
      const double gbs = wbytes / us / 1e3;
      const char* picked = dequant ? "dequant" : cuda::gptq_config_name(config);
      std::printf("| %lld x %lld | %d | %lld | %lld | %.1f | %.0f | %.0f%% | %.1f | %s/%d | %.1f | %.1f | %.1f (%s, %d) |\n",
                  (long long)s.K, (long long)s.N, job.bits, (long long)job.gs, (long long)M, us, gbs,
                  100.0 * gbs / copy_gbs, 2.0 * M * s.K * s.N / us / 1e6, picked, splits, fused_us, dequant_us, best,
                  cuda::gptq_config_name(best_c), best_s);
      std::fflush(stdout);
      if (js) {
        std::fprintf(js,
                     "%s{\"K\":%lld,\"N\":%lld,\"M\":%lld,\"bits\":%d,\"group\":%lld,\"us\":%.2f,\"weight_bytes\":%.0f,"
                     "\"config\":\"%s\",\"splits\":%d,\"fused_us\":%.2f,\"dequant_us\":%.2f,\"best_us\":%.2f,"
                     "\"best_config\":\"%s\",\"best_splits\":%d}",
                     first_row ? "" : ",\n", (long long)s.K, (long long)s.N, (long long)M, job.bits, (long long)job.gs, us,
                     wbytes, picked, splits, fused_us, dequant_us, best, cuda::gptq_config_name(best_c), best_s);
        first_row = false;
      }
    }
    CK(cudaFree(dx));
    CK(cudaFree(dy));
    CK(cudaFree(wide));
  }
  if (js) {
    std::fprintf(js, "\n]}\n");
    std::fclose(js);
  }
  return 0;
}

// A few launches of one shape per bit width, for a profiler: M = 1, 16 and 256 at 8192 x 28672, each
// through gptq_matmul's own choice; with a configuration name, M = LOWBIT_PROFILE_M (1) through that
// configuration, LOWBIT_PROFILE_SPLITS (1) splits.
int run_profile(const char* config_name) {
  Rng rng(3);
  int config = -1;
  for (int c = 0; config_name && c < cuda::gptq_config_count(); ++c)
    if (std::string(config_name) == cuda::gptq_config_name(c)) config = c;
  for (int bits : {4, 3, 2}) {
    const cuda::GptqRepacked R = random_repacked(bits, 8192, 28672, 128, rng);
    cuda::GptqDeviceWeights W(R, 0);
    void *dx, *dy;
    CK(cudaMalloc(&dx, 256 * 8192 * 2));
    CK(cudaMalloc(&dy, 256 * 28672 * 2));
    CK(cudaMemset(dx, 0x3c, 256 * 8192 * 2));
    const char* m_env = std::getenv("LOWBIT_PROFILE_M");  // rows of X for a named configuration (1)
    const char* s_env = std::getenv("LOWBIT_PROFILE_SPLITS");
    if (config >= 0)
      cuda::gptq_matmul_config(W, dx, GptqDtype::f16, m_env ? std::atoll(m_env) : 1, dy, nullptr, config,
                               s_env ? std::atoi(s_env) : 1);
    else
      for (int64_t M : {1, 16, 256}) cuda::gptq_matmul(W, dx, GptqDtype::f16, M, dy, nullptr);
    CK(cudaDeviceSynchronize());
    CK(cudaFree(dx));
    CK(cudaFree(dy));
  }
  return 0;
}

// The dequantize + cuBLAS path's two parts timed apart (events, warm), for a profiler too:
// 4-bit 8192 x 28672, M = 64.
int run_dequant_profile() {
  Rng rng(5);
  const cuda::GptqRepacked R = random_repacked(4, 8192, 28672, 128, rng);
  cuda::GptqDeviceWeights W(R, 0);
  void *dx, *dy, *wide;
  CK(cudaMalloc(&dx, 256 * 8192 * 2));
  CK(cudaMalloc(&dy, 256 * 28672 * 2));
  CK(cudaMalloc(&wide, (size_t)cuda::gptq_dequant_bytes(W)));
  CK(cudaMemset(dx, 0x3c, 256 * 8192 * 2));
  for (int64_t M : {64, 256}) {
    const double whole = median_us([&] { cuda::gptq_matmul_dequant(W, dx, GptqDtype::f16, M, dy, nullptr, wide); }, 10);
    const double gemm = median_us([&] { cuda::gemm16(nullptr, false, M, W.N, W.K, dx, wide, dy, false); }, 10);
    std::printf("dequant path M %lld: whole %.1f us, cuBLAS alone %.1f us, dequantize %.1f us\n", (long long)M, whole,
                gemm, whole - gemm);
  }
  CK(cudaDeviceSynchronize());
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  CK(cudaSetDevice(0));
  const std::string mode = argc > 1 ? argv[1] : "check";
  try {
    if (mode == "check") return run_check();
    if (mode == "bench") return run_bench(argc > 2 ? argv[2] : nullptr, false, argc > 3 ? std::atoll(argv[3]) : 256);
    if (mode == "profile") return run_profile(argc > 2 ? argv[2] : nullptr);
    if (mode == "dequant-profile") return run_dequant_profile();
    if (mode == "sweep") return run_bench(argc > 2 ? argv[2] : nullptr, true, argc > 3 ? std::atoll(argv[3]) : 256);
  } catch (const std::exception& e) {
    std::printf("error: %s\n", e.what());
    return 1;
  }
  std::printf("usage: cuda-gemm check | bench [out.json [maxM]] | sweep [out.json [maxM]] | profile [config] | dequant-profile\n");
  return 2;
}

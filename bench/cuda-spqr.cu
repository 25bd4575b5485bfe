// The SpQR tensor-core product (cuda/spqr_kernels): a correctness check against float64 and the
// timings beside the GPTQ kernel of the same width and cuBLAS fp16, in one standalone program built
// with nvcc from the same sources as the addon; not part of the addon.
//
//   nvcc -O3 -std=c++17 -gencode arch=compute_90,code=sm_90 --expt-relaxed-constexpr bench/cuda-spqr.cu \
//     cuda/spqr_kernels/gemm.cu cuda/spqr_kernels/repack.cu cuda/gptq_kernels/gemm.cu \
//     cuda/gptq_kernels/dequant.cu cuda/gptq_kernels/repack.cu cuda/linalg.cu cuda/device.cu \
//     $(ls native/core/*.cpp native/core/cpu_gptq/*.cpp) -o cuda-spqr -ldl   (or bench/device.sh --build-only)
//   cuda-spqr one N K bits M  three products of one shape, then three of GPTQ g128 (for ncu)
//   cuda-spqr repack          the repack round trip alone (no GPU needed)
//   cuda-spqr check           every bit width, dtype, row tile and split against float64 (exit 1 on a failure)
//   cuda-spqr bench [out.json] SpQR vs gptq-tc (same bits, groups of 128; both without and with an
//                             act-order permutation) vs cuBLAS fp16, M = 1 and 16
//
// Check: random SpQR weights (2/3/4 bits, 3- and 4-bit statistics, β1/β2 of 16 and 32, odd N, K not a
// multiple of 128, a random permutation, ~2% planted outliers with one row full of them), repacked
// (the repack undone must give back every stored array exactly), multiplied in fp16 and bf16 with a
// bias, M from 1 to 40, default and forced splits of K, outputs poisoned with NaN before each run,
// each run twice (the split-K scratch must be left clean), and once through a captured CUDA graph; every
// kernel variant (tile kernel, GEMV) at every M; without a permutation X read in place by the GEMV,
// and gathered when it is not 16-byte aligned.
// Each element must lie within the bound of the kernel's arithmetic: the scale and shift of each
// weight rounded to the dtype and one fma (2·u·Σ|x|·(|q·scale| + |shift|)), the output rounded
// once (u·|y|), fp32 accumulation (2^-20·Σ|x|·(|q·scale| + |shift| + |outlier|)).
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

#include "../cuda/gptq_kernels/gptq_kernels.hpp"
#include "../cuda/linalg.cuh"
#include "../cuda/spqr_kernels/spqr_kernels.hpp"
#include "../native/core/spqr.hpp"
#include "cuda_bench.cuh"

using namespace lowbit;
using cuda::SpqrDtype;

using bench::Rng;
using bench::f16_value;
using bench::median_us;

namespace {


uint16_t f16_bits(float v) { return bench::half_bits(v, false); }
uint16_t to_bits(float v, SpqrDtype dt) { return bench::half_bits(v, dt == SpqrDtype::bf16); }
double from_bits(uint16_t h, SpqrDtype dt) { return bench::half_value(h, dt == SpqrDtype::bf16); }


// SpQR weights owning their arrays (the checkpoint layout of native/core/spqr.hpp).
struct Weights {
  SpqrResult r;
  SpqrMatrix view() const { return r.view(); }
};

Weights random_weights(Rng& rng, int bits, int stat_bits, int64_t N, int64_t K, int64_t beta1, int64_t beta2,
                       double outlier_rate, bool perm, bool dense_row) {
  Weights w;
  SpqrResult& r = w.r;
  r.bits = bits, r.stat_bits = stat_bits, r.N = N, r.K = K, r.beta1 = beta1, r.beta2 = beta2;
  const int64_t G = (K + beta1 - 1) / beta1, NB = (N + beta2 - 1) / beta2;
  r.qweight.assign((size_t)bitstream_bytes(N * K, bits), 0);
  for (int64_t i = 0; i < N * K; ++i) bitstream_put(r.qweight.data(), i, bits, (uint32_t)(rng.next() % (1u << bits)));
  r.scale_codes.assign((size_t)bitstream_bytes(N * G, stat_bits), 0);
  r.zero_codes.assign((size_t)bitstream_bytes(N * G, stat_bits), 0);
  for (int64_t i = 0; i < N * G; ++i) {
    bitstream_put(r.scale_codes.data(), i, stat_bits, (uint32_t)(rng.next() % (1u << stat_bits)));
    bitstream_put(r.zero_codes.data(), i, stat_bits, (uint32_t)(rng.next() % (1u << stat_bits)));
  }
  const double maxq = (1 << bits) - 1, maxs = (1 << stat_bits) - 1;
  r.scale_stats.resize((size_t)(G * NB * 2));
  r.zero_stats.resize((size_t)(G * NB * 2));
  for (int64_t i = 0; i < G * NB; ++i) {
    const double s_off = 0.002 + 0.02 * rng.uniform();
    r.scale_stats[(size_t)(2 * i)] = f16_bits((float)s_off);
    r.scale_stats[(size_t)(2 * i + 1)] = f16_bits((float)(s_off * rng.uniform() / maxs));
    // zeros anywhere in [-maxq/2, 1.5·maxq]: the shift is not always the group's minimum
    const double z_off = -0.5 * maxq + maxq * rng.uniform();
    r.zero_stats[(size_t)(2 * i)] = f16_bits((float)z_off);
    r.zero_stats[(size_t)(2 * i + 1)] = f16_bits((float)(maxq * rng.uniform() / maxs));
  }
  if (perm) {
    r.perm.resize((size_t)K);
    for (int64_t k = 0; k < K; ++k) r.perm[(size_t)k] = (int32_t)k;
    for (int64_t k = K - 1; k > 0; --k) std::swap(r.perm[(size_t)k], r.perm[(size_t)(rng.next() % (uint64_t)(k + 1))]);
  }
  r.outlier_rowptr.assign((size_t)(N + 1), 0);
  for (int64_t n = 0; n < N; ++n) {
    const bool full = dense_row && n == N / 2;
    for (int64_t p = 0; p < K; ++p)
      if (full ? rng.uniform() < 0.5 : rng.uniform() < outlier_rate) {
        r.outlier_cols.push_back((int32_t)p);
        r.outlier_values.push_back(f16_bits((float)(0.05 * rng.normal())));
      }
    r.outlier_rowptr[(size_t)(n + 1)] = (int32_t)r.outlier_cols.size();
  }
  return w;
}

// Float64 decode, [N, K] in sweep order: the dense part q·scale + shift and its magnitude
// |q·scale| + |shift| (for the bound), and the outliers separately.
void decode(const SpqrMatrix& m, std::vector<double>& dense, std::vector<double>& mag, std::vector<double>& outl) {
  const int64_t G = m.groups(), NB = m.row_blocks();
  dense.assign((size_t)(m.N * m.K), 0);
  mag.assign(dense.size(), 0);
  outl.assign(dense.size(), 0);
  for (int64_t n = 0; n < m.N; ++n)
    for (int64_t p = 0; p < m.K; ++p) {
      const int64_t g = p / m.beta1, i = g * NB + n / m.beta2;
      const double scale = (double)((float)f16_value(m.scale_stats[2 * i]) +
                                    (float)f16_value(m.scale_stats[2 * i + 1]) *
                                        (float)bitstream_get(m.scale_codes, n * G + g, m.stat_bits));
      const double zero = (double)((float)f16_value(m.zero_stats[2 * i]) +
                                   (float)f16_value(m.zero_stats[2 * i + 1]) *
                                       (float)bitstream_get(m.zero_codes, n * G + g, m.stat_bits));
      const double q = bitstream_get(m.qweight, n * m.K + p, m.bits);
      dense[(size_t)(n * m.K + p)] = scale * (q - zero);
      mag[(size_t)(n * m.K + p)] = std::fabs(q * scale) + std::fabs(scale * zero);
    }
  for (int64_t n = 0; n < m.N; ++n)
    for (int32_t e = m.outlier_rowptr[n]; e < m.outlier_rowptr[n + 1]; ++e)
      outl[(size_t)(n * m.K + m.outlier_cols[e])] += f16_value(m.outlier_values[e]);
}

int failures = 0;

bool host_only = false;  // 'repack' mode: the round trip alone (no GPU needed)

void check_case(Rng& rng, int bits, int stat_bits, int64_t N, int64_t K, int64_t beta1, int64_t beta2, bool perm) {
  const Weights w = random_weights(rng, bits, stat_bits, N, K, beta1, beta2, 0.02, perm, true);
  const SpqrMatrix m = w.view();
  char what[160];
  std::snprintf(what, sizeof what, "%d-bit stat %d N %lld K %lld beta %lldx%lld perm %d", bits, stat_bits, (long long)N,
                (long long)K, (long long)beta1, (long long)beta2, perm ? 1 : 0);
  const cuda::SpqrRepacked R = cuda::repack_spqr_host(m);
  {
    const cuda::SpqrUnpacked U = cuda::unrepack_spqr_host(R, beta1, beta2);
    const int64_t G = m.groups();
    bool same = U.rowptr == w.r.outlier_rowptr && U.cols == w.r.outlier_cols && U.values == w.r.outlier_values &&
                U.scale_stats == w.r.scale_stats && U.zero_stats == w.r.zero_stats;
    for (int64_t i = 0; i < N * K && same; ++i) same = U.codes[(size_t)i] == bitstream_get(m.qweight, i, bits);
    for (int64_t i = 0; i < N * G && same; ++i)
      same = U.scale_codes[(size_t)i] == bitstream_get(m.scale_codes, i, stat_bits) &&
             U.zero_codes[(size_t)i] == bitstream_get(m.zero_codes, i, stat_bits);
    if (!same) {
      ++failures;
      std::printf("FAIL repack round trip: %s\n", what);
    }
  }
  if (host_only) {
    std::printf("round trip %s\n", what);
    return;
  }
  cuda::SpqrDeviceWeights W(R, 0);
  std::vector<double> dense, mag, outl;
  decode(m, dense, mag, outl);
  std::vector<float> bias((size_t)N);
  for (auto& b : bias) b = (float)rng.normal();
  float* dbias;
  CK(cudaMalloc(&dbias, (size_t)N * 4));
  CK(cudaMemcpy(dbias, bias.data(), (size_t)N * 4, cudaMemcpyHostToDevice));
  cudaStream_t st;
  CK(cudaStreamCreate(&st));
  double worst = 0;
  for (SpqrDtype dt : {SpqrDtype::f16, SpqrDtype::bf16})
    for (int64_t M : {1, 3, 8, 9, 16, 17, 40}) {
      const double u = dt == SpqrDtype::f16 ? std::ldexp(1.0, -11) : std::ldexp(1.0, -8);
      std::vector<uint16_t> x((size_t)(M * K));
      std::vector<double> xd(x.size());
      for (size_t i = 0; i < x.size(); ++i) {
        x[i] = to_bits((float)rng.normal(), dt);
        xd[i] = from_bits(x[i], dt);
      }
      const bool with_bias = M % 2 == 1;
      std::vector<double> ref((size_t)(M * N)), bound((size_t)(M * N));
      for (int64_t mm = 0; mm < M; ++mm)
        for (int64_t n = 0; n < N; ++n) {
          double s = with_bias ? bias[(size_t)n] : 0.0, sm = 0, so = 0;
          for (int64_t p = 0; p < K; ++p) {
            const double xv = xd[(size_t)(mm * K + (perm ? w.r.perm[(size_t)p] : p))];
            const size_t i = (size_t)(n * K + p);
            s += xv * (dense[i] + outl[i]);
            sm += std::fabs(xv) * mag[i];
            so += std::fabs(xv * outl[i]);
          }
          ref[(size_t)(mm * N + n)] = s;
          bound[(size_t)(mm * N + n)] = 2 * u * sm + u * std::fabs(s) + std::ldexp(sm + so, -20) + 1e-30;
        }
      void *dx, *dy;
      CK(cudaMalloc(&dx, x.size() * 2));
      CK(cudaMalloc(&dy, (size_t)(M * N) * 2));
      CK(cudaMemcpy(dx, x.data(), x.size() * 2, cudaMemcpyHostToDevice));
      auto compare = [&](const char* how) {
        std::vector<uint16_t> y((size_t)(M * N));
        CK(cudaMemcpy(y.data(), dy, y.size() * 2, cudaMemcpyDeviceToHost));
        size_t bad = 0, first = 0;
        for (size_t i = 0; i < y.size(); ++i) {
          const double v = from_bits(y[i], dt);
          const double r = std::isfinite(v) ? std::fabs(v - ref[i]) / bound[i] : 1e30;
          if (r > 1.0 && bad++ == 0) first = i;
          worst = std::max(worst, r);
        }
        if (bad) {
          ++failures;
          std::printf("FAIL %s %s M %lld %s: %zu of %zu off (first m %zu n %zu: got %g want %g)\n", what,
                      dt == SpqrDtype::f16 ? "f16" : "bf16", (long long)M, how, bad, y.size(), first / N, first % N,
                      from_bits(y[first], dt), ref[first]);
        }
      };
      for (int variant = 0; variant < cuda::spqr_variant_count(); ++variant)
        for (int splits : {0, 1, 3})
          for (int rep = 0; rep < 2; ++rep) {
            CK(cudaMemset(dy, 0xff, (size_t)(M * N) * 2));  // NaN in fp16 and bf16
            cuda::spqr_matmul_splits(W, dx, dt, M, dy, with_bias ? dbias : nullptr, st, splits, rep == 0, variant);
            CK(cudaStreamSynchronize(st));
            char how[96];
            std::snprintf(how, sizeof how, "variant %d splits %d run %d (overlap %d, X %s)", variant, splits, rep,
                          rep == 0, cuda::spqr_reads_x_in_place(W, dx, M, variant) ? "in place" : "gathered");
            compare(how);
          }
      {  // X at an address that is not 16-byte aligned: gathered, never read in place
        void* dx2;
        CK(cudaMalloc(&dx2, x.size() * 2 + 16));
        void* xo = static_cast<char*>(dx2) + 2;
        CK(cudaMemcpy(xo, x.data(), x.size() * 2, cudaMemcpyHostToDevice));
        if (cuda::spqr_reads_x_in_place(W, xo, M)) {
          ++failures;
          std::printf("FAIL %s: misaligned X would be read in place\n", what);
        }
        CK(cudaMemset(dy, 0xff, (size_t)(M * N) * 2));
        cuda::spqr_matmul(W, xo, dt, M, dy, with_bias ? dbias : nullptr, st);
        CK(cudaStreamSynchronize(st));
        compare("misaligned X");
        CK(cudaFree(dx2));
      }
      {  // through a captured graph (scratch already grown by the runs above)
        cudaGraph_t graph;
        cudaGraphExec_t exec;
        CK(cudaStreamBeginCapture(st, cudaStreamCaptureModeThreadLocal));
        cuda::spqr_matmul(W, dx, dt, M, dy, with_bias ? dbias : nullptr, st);
        CK(cudaStreamEndCapture(st, &graph));
        CK(cudaGraphInstantiate(&exec, graph, 0));
        CK(cudaMemset(dy, 0xff, (size_t)(M * N) * 2));
        CK(cudaGraphLaunch(exec, st));
        CK(cudaStreamSynchronize(st));
        compare("graph");
        CK(cudaGraphExecDestroy(exec));
        CK(cudaGraphDestroy(graph));
      }
      CK(cudaFree(dx));
      CK(cudaFree(dy));
    }
  CK(cudaFree(dbias));
  CK(cudaStreamDestroy(st));
  std::printf("checked %s: worst error/bound %.3f\n", what, worst);
}

int run_check() {
  Rng rng(11);
  struct C {
    int bits, stat_bits;
    int64_t N, K, beta1, beta2;
    bool perm;
  };
  const C cases[] = {
      {2, 3, 37, 172, 16, 16, true},   {3, 3, 64, 300, 16, 16, false}, {4, 3, 129, 1000, 16, 16, true},
      {3, 4, 300, 1000, 32, 16, true}, {4, 4, 50, 260, 16, 32, true},  {2, 2, 200, 513, 48, 32, true},
      {3, 3, 257, 2048, 16, 16, true}, {4, 3, 33, 4100, 16, 16, true},
      // No permutation, K a multiple of 8: the GEMV reads X in place (a partial last chunk, rows past M).
      {4, 3, 100, 1000, 16, 16, false}, {2, 3, 45, 2056, 32, 16, false}, {3, 4, 130, 4096, 16, 16, false},
  };
  for (const C& c : cases) check_case(rng, c.bits, c.stat_bits, c.N, c.K, c.beta1, c.beta2, c.perm);
  std::printf(failures ? "check: %d FAILURES\n" : "check: passed\n", failures);
  return failures ? 1 : 0;
}

// ---------------------------------------------------------------- bench

cuda::GptqRepacked random_gptq(Rng& rng, int bits, int64_t K, int64_t N) {
  cuda::GptqRepacked R;
  R.bits = bits, R.K = K, R.N = N, R.Kp = (K + 127) / 128 * 128, R.Np = (N + 127) / 128 * 128;
  R.groups = (K + 127) / 128;
  R.weights.resize((size_t)((R.Np / 16) * (R.Kp / 128) * 256 * bits));
  for (size_t i = 0; i + 8 <= R.weights.size(); i += 8) {
    const uint64_t v = rng.next();
    std::memcpy(&R.weights[i], &v, 8);
  }
  R.scale_zero.resize((size_t)(R.groups * (R.Np / 16) * 32));
  for (size_t i = 0; i < R.scale_zero.size(); i += 4) {
    R.scale_zero[i] = (uint16_t)(0x2000 | (rng.next() & 0x3ff));
    R.scale_zero[i + 1] = (uint16_t)(0x2000 | (rng.next() & 0x3ff));
    R.scale_zero[i + 2] = 0x4000;
    R.scale_zero[i + 3] = 0x4200;
  }
  R.slot_group.resize((size_t)(R.Kp / 32));
  for (size_t s = 0; s < R.slot_group.size(); ++s) R.slot_group[s] = (int32_t)((int64_t)s * 32 / 128);
  R.perm.resize((size_t)R.Kp);
  for (int64_t i = 0; i < R.Kp; ++i) R.perm[(size_t)i] = i < K ? (int32_t)i : -1;
  return R;
}

int run_bench(const char* json_path, std::vector<int64_t> batches) {
  cudaDeviceProp prop;
  CK(cudaGetDeviceProperties(&prop, 0));
  std::printf("device: %s, %d SMs, L2 %d MB; %s\n", prop.name, prop.multiProcessorCount, prop.l2CacheSize >> 20,
              cuda::linalg_backend_description().c_str());
  const double copy_gbs = bench::copy_bandwidth_gbs();
  std::printf("device-to-device copy: %.0f GB/s (read + write)\n", copy_gbs);
  cudaStream_t stream;
  CK(cudaStreamCreate(&stream));
  FILE* js = json_path ? std::fopen(json_path, "w") : nullptr;
  if (js)
    std::fprintf(js,
                 "{\"device\":\"%s\",\"copy_gbs\":%.1f,\"cublas\":%s,\"timing\":\"%s\",\"note\":\"%s\",\"variants\":[%s],"
                 "\"rows\":[\n",
                 prop.name, copy_gbs, cuda::have_cublas() ? "true" : "false",
                 "median per product inside a CUDA graph of 20 products over rotating weight copies (>= 300 MB), 10 "
                 "replays",
                 "us, pct_copy, tflops, spqr_vs_gptq (gptq_tc_us / us), x_cublas_fp16: SpQR without a permutation (X "
                 "read in place where the config says so) against GPTQ g128 without act-order (gptq_tc_us, its "
                 "config gptq_config/splits). act_order_us: the same SpQR weights with a random permutation (X "
                 "gathered first, two launches), against GPTQ g128 with one (gptq_act_order_us; "
                 "spqr_vs_gptq_act_order = gptq_act_order_us / act_order_us); product_only_us, no_overlap_us, "
                 "best_us/best_splits (splits 0: the default was best), variant_us/best_variant: of the act-order "
                 "product; noperm_variant_us: each variant without the permutation",
                 "\"0: tile kernel (8 tiles a block, split-K through atomics)\",\"1: GEMV (one tile a block, warps "
                 "split K), 2 chunks in flight, outliers first\",\"2: GEMV, 2 chunks in flight, outliers last\",\"3: "
                 "GEMV, 2 chunks in flight capped for 3 blocks per SM (16 rows: 3 chunks), outliers last\",\"4: "
                 "GEMV, two tiles per block, 2 chunks in flight, capped for 2 blocks per SM\",\"5: the same, 1 chunk "
                 "in flight\",\"6: warpgroup kernel (wgmma, sm_90a: 128 output rows and 16, 32 or 64 rows of X a block, X "
                 "staged in shared memory; without sm_90a variant 5 or 2 runs)\",\"7: variant 2 with 16 warps a block\"");
  bool first_row = true;
  Rng rng(5);
  struct Shape { int64_t N, K; };
  const Shape shapes[] = {{4096, 4096}, {11008, 4096}, {8192, 8192}};
  std::printf("\n| N x K | bits | M | SpQR us | GPTQ us | GPTQ/SpQR | SpQR act-order us | GPTQ act-order us | GPTQ/SpQR act-order | act-order no overlap | act-order product only | act-order best (splits) | act-order variants us (best) | SpQR of copy | SpQR config | GPTQ config | cuBLAS fp16 us | SpQR x cuBLAS |\n");
  std::printf("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |\n");
  for (const Shape& s : shapes) {
    // cuBLAS fp16 on rotating dense copies.
    std::vector<void*> dense;
    const size_t dense_bytes = (size_t)(s.N * s.K * 2);
    {
      std::vector<uint16_t> h((size_t)(s.N * s.K));
      for (auto& v : h) v = f16_bits((float)(0.02 * rng.normal()));
      while (dense.size() * dense_bytes < 300e6 || dense.size() < 2) {
        void* p;
        CK(cudaMalloc(&p, dense_bytes));
        CK(cudaMemcpy(p, h.data(), dense_bytes, cudaMemcpyHostToDevice));
        dense.push_back(p);
      }
    }
    void *dx, *dy;
    const int64_t max_m = *std::max_element(batches.begin(), batches.end());
    CK(cudaMalloc(&dx, (size_t)(max_m * s.K * 2)));
    CK(cudaMalloc(&dy, (size_t)(max_m * s.N * 2)));
    {
      std::vector<uint16_t> hx((size_t)(max_m * s.K));
      for (auto& v : hx) v = f16_bits((float)rng.normal());
      CK(cudaMemcpy(dx, hx.data(), hx.size() * 2, cudaMemcpyHostToDevice));
    }
    std::vector<double> cublas_us(batches.size());
    for (size_t mi = 0; mi < batches.size(); ++mi) {
      const int64_t M = batches[mi];
      cublas_us[mi] = bench::graph_us(stream, 20, [&](int i) {
        cuda::gemm16(stream, false, M, s.N, s.K, dx, dense[(size_t)i % dense.size()], dy, false);
      });
    }
    for (void* p : dense) CK(cudaFree(p));
    for (int bits : {4, 3, 2}) {
      // SpQR with a permutation (act-order: X gathered first) and the same weights without one
      // (X read in place up to 16 rows); GPTQ g128 likewise.
      const Weights w = random_weights(rng, bits, 3, s.N, s.K, 16, 16, 0.01, true, false);
      const cuda::SpqrRepacked R = cuda::repack_spqr_host(w.view());
      cuda::SpqrRepacked Rn = R;
      Rn.perm.clear();
      std::vector<std::unique_ptr<cuda::SpqrDeviceWeights>> copies, ncopies;
      copies.emplace_back(new cuda::SpqrDeviceWeights(R, 0));
      const double wbytes = (double)copies[0]->weight_bytes;
      while ((double)copies.size() * wbytes < 300e6) copies.emplace_back(new cuda::SpqrDeviceWeights(R, 0));
      while ((double)ncopies.size() * wbytes < 300e6) ncopies.emplace_back(new cuda::SpqrDeviceWeights(Rn, 0));
      const cuda::GptqRepacked G = random_gptq(rng, bits, s.K, s.N);
      cuda::GptqRepacked Ga = G;
      Ga.identity_k = false;
      for (int64_t k = s.K - 1; k > 0; --k) std::swap(Ga.perm[(size_t)k], Ga.perm[(size_t)(rng.next() % (uint64_t)(k + 1))]);
      std::vector<std::unique_ptr<cuda::GptqDeviceWeights>> gcopies, gacopies;
      gcopies.emplace_back(new cuda::GptqDeviceWeights(G, 0));
      while ((double)gcopies.size() * gcopies[0]->weight_bytes < 300e6) gcopies.emplace_back(new cuda::GptqDeviceWeights(G, 0));
      while ((double)gacopies.size() * gcopies[0]->weight_bytes < 300e6) gacopies.emplace_back(new cuda::GptqDeviceWeights(Ga, 0));
      const double rate = (double)R.outliers.size() / (double)(s.N * s.K);
      const double stored_bits = (double)SpqrBits(spqr_storage_bits(bits, 3, s.N, s.K, 16, 16, true,
                                                                    (int64_t)R.outliers.size())).total() /
                                 (double)(s.N * s.K);
      for (size_t mi = 0; mi < batches.size(); ++mi) {
        const int64_t M = batches[mi];
        auto spqr_us = [&](int splits, bool overlap, int variant = -1) {
          return bench::graph_us(stream, 20, [&](int i) {
            cuda::spqr_matmul_splits(*copies[(size_t)i % copies.size()], dx, SpqrDtype::f16, M, dy, nullptr, stream,
                                     splits, overlap, variant);
          });
        };
        const double us = spqr_us(0, true);
        const double serial_us = spqr_us(0, false);  // the two launches one after the other
        const double noperm_us = bench::graph_us(stream, 20, [&](int i) {
          cuda::spqr_matmul(*ncopies[(size_t)i % ncopies.size()], dx, SpqrDtype::f16, M, dy, nullptr, stream);
        });
        const bool in_place = cuda::spqr_reads_x_in_place(*ncopies[0], dx, M);
        // The product alone (X gathered beforehand), and the best split of K.
        for (auto& c : copies) cuda::spqr_gather(*c, dx, SpqrDtype::f16, M, stream);
        const double product_us = bench::graph_us(stream, 20, [&](int i) {
          cuda::spqr_product(*copies[(size_t)i % copies.size()], SpqrDtype::f16, M, dy, nullptr, stream, 0, false, -1);
        });
        double best_us = us;
        int best_splits = 0;
        for (int sp : {1, 2, 4, 8, 16, 32}) {
          const double t = spqr_us(sp, true);
          if (t < best_us) best_us = t, best_splits = sp;
        }
        // Every kernel variant with its own default split.
        std::string variants;
        double best_variant_us = 1e30;
        int best_variant = 0;
        for (int v = 0; v < cuda::spqr_variant_count(); ++v) {
          const double t = spqr_us(0, true, v);
          char b[32];
          std::snprintf(b, sizeof b, "%s%.2f", v ? "," : "", t);
          variants += b;
          if (t < best_variant_us) best_variant_us = t, best_variant = v;
        }
        // The same without the permutation (X in place where the variant reads it so).
        std::string noperm_variants;
        for (int v = 0; v < cuda::spqr_variant_count(); ++v) {
          const double t = bench::graph_us(stream, 20, [&](int i) {
            cuda::spqr_matmul_splits(*ncopies[(size_t)i % ncopies.size()], dx, SpqrDtype::f16, M, dy, nullptr, stream,
                                     0, true, v);
          });
          char b[32];
          std::snprintf(b, sizeof b, "%s%.2f", v ? "," : "", t);
          noperm_variants += b;
        }
        const double gus = bench::graph_us(stream, 20, [&](int i) {
          cuda::gptq_matmul(*gcopies[(size_t)i % gcopies.size()], dx, cuda::GptqDtype::f16, M, dy, stream);
        });
        const double gaus = bench::graph_us(stream, 20, [&](int i) {
          cuda::gptq_matmul(*gacopies[(size_t)i % gacopies.size()], dx, cuda::GptqDtype::f16, M, dy, stream);
        });
        int gconfig = 0, gsplits = 1;
        cuda::gptq_choose(*gcopies[0], M, &gconfig, &gsplits);
        int rows, splits;
        cuda::spqr_choose(*copies[0], M, &rows, &splits);
        const double moved = wbytes + (double)(M * s.K * 2 + M * s.N * 2);
        const double pct = 100.0 * moved / noperm_us / 1e3 / copy_gbs;
        std::printf("| %lld x %lld | %d | %lld | %.1f | %.1f | %.2f | %.1f | %.1f | %.2f | %.1f | %.1f | %.1f (%d) | %s (%d) | %.0f%% | m%d/%d | %s/%d | %.1f | %.2f |\n",
                    (long long)s.N, (long long)s.K, bits, (long long)M, noperm_us, gus, gus / noperm_us, us, gaus,
                    gaus / us, serial_us, product_us, best_us, best_splits, variants.c_str(), best_variant, pct, rows,
                    splits, cuda::gptq_config_name(gconfig), gsplits, cublas_us[mi], cublas_us[mi] / noperm_us);
        std::fflush(stdout);
        if (js) {
          std::fprintf(js,
                       "%s{\"K\":%lld,\"N\":%lld,\"M\":%lld,\"bits\":%d,\"group\":16,\"us\":%.2f,\"pct_copy\":%.1f,"
                       "\"tflops\":%.3f,\"config\":\"spqr m%d splits %d variant %d%s\",\"weight_bytes\":%.0f,"
                       "\"stored_bits_per_weight\":%.3f,\"outlier_rate\":%.5f,\"gptq_tc_us\":%.2f,"
                       "\"gptq_config\":\"%s/%d\",\"gptq_group\":128,\"spqr_vs_gptq\":%.3f,\"cublas_fp16_us\":%.2f,"
                       "\"x_cublas_fp16\":%.3f,\"act_order_us\":%.2f,\"gptq_act_order_us\":%.2f,"
                       "\"spqr_vs_gptq_act_order\":%.3f,\"product_only_us\":%.2f,\"no_overlap_us\":%.2f,"
                       "\"best_us\":%.2f,\"best_splits\":%d,\"variant_us\":[%s],\"best_variant\":%d,"
                       "\"noperm_variant_us\":[%s]}",
                       first_row ? "" : ",\n", (long long)s.K, (long long)s.N, (long long)M, bits, noperm_us, pct,
                       2.0 * M * s.N * s.K / noperm_us / 1e6, rows, splits,
                       cuda::spqr_default_variant(*ncopies[0], M),
                       in_place ? ", X in place" : "", wbytes, stored_bits, rate, gus,
                       cuda::gptq_config_name(gconfig), gsplits, gus / noperm_us, cublas_us[mi],
                       cublas_us[mi] / noperm_us, us, gaus, gaus / us, product_us, serial_us, best_us, best_splits,
                       variants.c_str(), best_variant, noperm_variants.c_str());
          first_row = false;
        }
      }
    }
    CK(cudaFree(dx));
    CK(cudaFree(dy));
  }
  if (js) {
    std::fprintf(js, "\n]}\n");
    std::fclose(js);
  }
  return 0;
}

// One shape, a few products (for ncu): cuda-spqr one N K bits M [variant]
int run_one(int64_t N, int64_t K, int bits, int64_t M, int variant) {
  Rng rng(3);
  const Weights w = random_weights(rng, bits, 3, N, K, 16, 16, 0.01, false, false);
  cuda::SpqrDeviceWeights W(cuda::repack_spqr_host(w.view()), 0);
  cuda::GptqDeviceWeights G(random_gptq(rng, bits, K, N), 0);
  void *dx, *dy;
  CK(cudaMalloc(&dx, (size_t)(M * K * 2)));
  CK(cudaMalloc(&dy, (size_t)(M * N * 2)));
  {
    // Random X, as the bench times (zeros can run faster than real data).
    std::vector<uint16_t> hx((size_t)(M * K));
    for (auto& v : hx) v = f16_bits((float)rng.normal());
    CK(cudaMemcpy(dx, hx.data(), hx.size() * 2, cudaMemcpyHostToDevice));
  }
  for (int i = 0; i < 3; ++i) cuda::spqr_matmul_splits(W, dx, SpqrDtype::f16, M, dy, nullptr, nullptr, 0, true, variant);
  for (int i = 0; i < 3; ++i) cuda::gptq_matmul(G, dx, cuda::GptqDtype::f16, M, dy, nullptr);
  CK(cudaDeviceSynchronize());
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  const std::string mode = argc > 1 ? argv[1] : "check";
  if (mode == "check") return run_check();
  if (mode == "one" && argc > 5)
    return run_one(std::atoll(argv[2]), std::atoll(argv[3]), std::atoi(argv[4]), std::atoll(argv[5]),
                   argc > 6 ? std::atoi(argv[6]) : -1);
  if (mode == "repack") {
    host_only = true;
    return run_check();
  }
  if (mode == "bench") {
    // cuda-spqr bench [out.json [M,M,...]] (default rows of X: 1 and 16)
    std::vector<int64_t> batches;
    for (const char* p = argc > 3 ? argv[3] : "1,16"; *p;) {
      char* end;
      const long long m = std::strtoll(p, &end, 10);
      if (end == p || m < 1 || m > 256) {
        std::fprintf(stderr, "cuda-spqr bench: rows of X are a comma-separated list in [1, 256]\n");
        return 2;
      }
      batches.push_back(m);
      p = *end == ',' ? end + 1 : end;
    }
    return run_bench(argc > 2 ? argv[2] : nullptr, batches);
  }
  std::fprintf(stderr, "usage: cuda-spqr check | bench [out.json [M,M,...]]\n");
  return 2;
}

// Standalone microbenchmark and quick self-check of the repacked CPU GPTQ products
// (native/core/cpu_gptq), for kernel development without the Node binding. Build and run:
//   g++ -O3 -std=c++17 -pthread -Inative/core bench/cpu-gptq.cpp native/core/cpu_gptq/{repack,kernels_*}.cpp \
//     native/core/{dtype,thread_pool,pack,packed_matrix,packed_gemm,packed_gemm_scalar,packed_gemm_avx2,packed_gemm_avx512,stream_read}.cpp -o /tmp/cpu-gptq
//   /tmp/cpu-gptq N K M bits act_order(0|1) [simd: 0 scalar, 1 avx2, 2 avx512] [exact 0|1] [runs] [threads] [kernel]
// Prints the max error against a float64 reference (small shapes) and the median time per product.
// `dram` as the last argument: the product from DRAM (rotating copies) against same-size reads.
// `actpair` as the last argument (M 1, act_order 0): act-order on against off in one process (below).
// `kernel` as the last argument (with threads 1, M 1): the fastest CPU time of the int8 kernel alone,
// activations prepared once, e.g. `256 4096 1 3 0 2 0 400 1 kernel` (0.4 MiB: L2-resident, so the
// figure is the kernel's compute rate, not memory's).
#include <algorithm>
#include <chrono>
#include <ctime>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <numeric>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "cpu_gptq/kernels.hpp"
#include "cpu_gptq/repack.hpp"
#include "dtype.hpp"
#include "pack.hpp"
#include "packed_gemm.hpp"
#include "packed_matrix.hpp"
#include "stream_read.hpp"
#include "thread_pool.hpp"

using namespace lowbit;

// One row of int8 activations for weights R (M = 1) and the active SIMD level's quantizer.
struct OneRow {
  cpu_gptq::Activations A;
  std::vector<int8_t> xq;
  std::vector<float> dx, xsum;
  decltype(&cpu_gptq::kernels_scalar::quantize_rows) quantize;
  explicit OneRow(const cpu_gptq::CpuGptqWeights& R) {
    A.M = 1;
    A.padded_k = R.padded_k();
    A.segments = (int64_t)R.segments.size();
    xq.resize((size_t)A.padded_k);
    dx.resize((size_t)A.segments);
    xsum.resize((size_t)A.segments);
    const SimdLevel level = active_simd();
    quantize = level == SimdLevel::Avx512 ? cpu_gptq::kernels_avx512::quantize_rows
               : level == SimdLevel::Avx2 ? cpu_gptq::kernels_avx2::quantize_rows
                                          : cpu_gptq::kernels_scalar::quantize_rows;
  }
};

int main(int argc, char** argv) {
  if (argc < 6) { std::fprintf(stderr, "usage: N K M bits act_order [simd] [exact] [runs]\n"); return 2; }
  const int64_t N = atoll(argv[1]), K = atoll(argv[2]), M = atoll(argv[3]);
  const int bits = atoi(argv[4]);
  const bool act = atoi(argv[5]) != 0;
  if (argc > 6) force_simd((SimdLevel)atoi(argv[6]));
  const bool exact = argc > 7 && atoi(argv[7]) != 0;
  const int runs = argc > 8 ? atoi(argv[8]) : 21;
  // LOWBIT_PREFETCH=near:far:scales (KiB, KiB, segments ahead) overrides the kernels' software prefetch (cpu_gptq::set_prefetch).
  if (const char* pf = std::getenv("LOWBIT_PREFETCH")) {
    cpu_gptq::Prefetch p;
    std::sscanf(pf, "%d:%d:%d", &p.near_kib, &p.far_kib, &p.scale_segments);
    cpu_gptq::set_prefetch(p);
  }
  // threads = 1: one thread, timed by its CPU time (cycles this thread really ran: steadier than
  // wall time on a machine shared with other work).
  const int threads_arg = argc > 9 ? atoi(argv[9]) : 0;
  if (threads_arg > 0) set_global_threads(threads_arg);
  const int64_t gs = 128, G = (K + gs - 1) / gs;
  std::mt19937 rng(1234);
  std::vector<uint8_t> q((size_t)(N * K));
  for (auto& v : q) v = (uint8_t)(rng() % (1u << bits));
  std::vector<int32_t> qweight((size_t)(packed_words(bits, K) * N)), zeros((size_t)(G * N)),
      qzeros((size_t)(G * packed_words(bits, N)));
  pack_qweight(q.data(), N, K, bits, qweight.data());
  for (auto& z : zeros) z = (int32_t)(rng() % (1u << bits)) + 0;
  for (auto& z : zeros) if (z == 0) z = 1;
  pack_qzeros(zeros.data(), G, N, bits, 1, qzeros.data());
  std::vector<uint16_t> scales((size_t)(G * N));
  std::uniform_real_distribution<float> su(0.005f, 0.02f), xu(-1.f, 1.f);
  for (auto& s : scales) s = f32_to_f16(su(rng));
  std::vector<int32_t> g_idx((size_t)K);
  for (int64_t k = 0; k < K; ++k) g_idx[(size_t)k] = (int32_t)(k / gs);
  if (act) std::shuffle(g_idx.begin(), g_idx.end(), rng);
  PackedMatrix W;
  W.bits = bits; W.K = K; W.N = N; W.group_size = gs; W.groups = G; W.zero_offset = 1;
  W.qweight = qweight.data(); W.qzeros = qzeros.data(); W.scales = scales.data(); W.g_idx = act ? g_idx.data() : nullptr;
  const cpu_gptq::CpuGptqWeights R = cpu_gptq::repack(W);
  std::vector<float> X((size_t)(M * K)), Y((size_t)(M * N));
  for (auto& x : X) x = xu(rng);
  cpu_gptq::Options opt;
  opt.exact_activations = exact;
  cpu_gptq::gemm(R, X.data(), M, Y.data(), opt);
  if ((double)N * K * M <= 4e8) {
    std::vector<float> Wd((size_t)(N * K));
    dequantize(W, Wd.data());
    double maxerr = 0, maxref = 0, maxratio = 0;
    for (int64_t m = 0; m < M; ++m) {
      // the int8 bound: Σ_k |w| · max|x over the segment| / 254 ≤ ‖w‖₁ ‖x‖∞ / 254
      double xmax = 0;
      for (int64_t k = 0; k < K; ++k) xmax = std::max(xmax, (double)std::fabs(X[m * K + k]));
      for (int64_t n = 0; n < N; ++n) {
        double ref = 0, l1 = 0;
        for (int64_t k = 0; k < K; ++k) { ref += (double)X[m * K + k] * Wd[n * K + k]; l1 += std::fabs(Wd[n * K + k]); }
        const double err = std::fabs(ref - Y[m * N + n]);
        maxerr = std::max(maxerr, err);
        maxref = std::max(maxref, std::fabs(ref));
        maxratio = std::max(maxratio, err / (l1 * xmax / 254 + 1e-30));
      }
    }
    std::printf("check %s: max |err| %.3g, max |ref| %.3g, err / int8 bound (global) %.3f\n", cpu_gptq::last_kernel(), maxerr, maxref, maxratio);
  }
  if (argc > 10 && std::string(argv[10]) == "kernel") {
    OneRow row(R);
    cpu_gptq::Activations& A = row.A;
    std::vector<int8_t>& xq = row.xq;
    std::vector<float>&dx = row.dx, &xsum = row.xsum;
    const SimdLevel level = active_simd();
    const auto quantize = row.quantize;
    auto kernel = level == SimdLevel::Avx512 ? cpu_gptq::kernels_avx512::gemm_int8
                  : level == SimdLevel::Avx2 ? cpu_gptq::kernels_avx2::gemm_int8
                                             : cpu_gptq::kernels_scalar::gemm_int8;
    quantize(R, X.data(), 0, 1, A, xq.data(), dx.data(), xsum.data());
    A.xq = xq.data();
    A.dx = dx.data();
    A.xsum = xsum.data();
    double best = 1e30;
    const char* name = "";
    for (int r = 0; r < runs; ++r) {
      timespec t0, t1;
      clock_gettime(CLOCK_THREAD_CPUTIME_ID, &t0);
      name = kernel(R, A, Y.data());
      clock_gettime(CLOCK_THREAD_CPUTIME_ID, &t1);
      best = std::min(best, (t1.tv_sec - t0.tv_sec) + (t1.tv_nsec - t0.tv_nsec) * 1e-9);
    }
    std::printf("kernel only %s N %lld K %lld bits %d: fastest %.2f us (CPU time), %.1f GB/s of %.2f MB\n", name,
                (long long)N, (long long)K, bits, best * 1e6, R.bytes() / best / 1e9, R.bytes() / 1e6);
    return 0;
  }
  // `dram` as the last argument (M 1): the product rotates over copies of the weight totalling
  // LOWBIT_ROTATE_MB (default 640) so each reads from DRAM, each followed by a read of the same byte
  // count from a rotating buffer of that total; prints the median product time, the median read
  // time, and the median over the pairs of read time / product time.
  if (argc > 10 && std::string(argv[10]) == "dram") {
    const int64_t total = (int64_t)(std::getenv("LOWBIT_ROTATE_MB") ? atof(std::getenv("LOWBIT_ROTATE_MB")) : 640) << 20;
    std::vector<cpu_gptq::CpuGptqWeights> copies;
    for (int64_t have = 0; have < total; have += R.bytes()) copies.push_back(cpu_gptq::copy_of(R));
    const int64_t slice = R.bytes() / 64 * 64;
    StreamReader reader(std::max<int64_t>((int64_t)copies.size() * slice, 4096));
    const int threads = global_pool()->size();
    std::vector<double> tp, tr, ratio;
    for (int pass = 0; pass < runs; ++pass)
      for (size_t i = 0; i < copies.size(); ++i) {
        const auto t0 = std::chrono::steady_clock::now();
        cpu_gptq::gemm(copies[i], X.data(), 1, Y.data(), opt);
        const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
        const double r = reader.read_seconds((int64_t)i * slice, slice, threads);
        if (pass == 0) continue;  // warm-up pass
        tp.push_back(s);
        tr.push_back(r);
        ratio.push_back(r / s);
      }
    std::sort(tp.begin(), tp.end());
    std::sort(tr.begin(), tr.end());
    std::sort(ratio.begin(), ratio.end());
    std::printf("dram %s N %lld K %lld bits %d act %d: product %.3f ms, read %.3f ms, %.1f%% of read (pairs), %zu copies\n",
                cpu_gptq::last_kernel(), (long long)N, (long long)K, bits, (int)act, tp[tp.size() / 2] * 1e3,
                tr[tr.size() / 2] * 1e3, 100 * ratio[ratio.size() / 2], copies.size());
    return 0;
  }
  // `actpair` as the last argument (M 1): act-order's cost in one process. The same weights (q,
  // scales, zero points) repacked twice, without g_idx and with a shuffled one (which permutes x
  // and regroups the positions, so the layouts have the same bytes), each rotated over copies of
  // LOWBIT_ROTATE_MB; every pair of products, off and on of the same copy index (order swapped every
  // pass so neither always runs second), is followed by a same-size read. Prints the median over
  // pairs of on / off time, each product's % of read (pairs), and the activation preparation alone
  // (gather + quantize, the only step that differs) for both, fastest of many, one thread.
  if (argc > 10 && std::string(argv[10]) == "actpair") {
    std::vector<int32_t> shuffled((size_t)K);
    for (int64_t k = 0; k < K; ++k) shuffled[(size_t)k] = (int32_t)(k / gs);
    std::shuffle(shuffled.begin(), shuffled.end(), rng);
    PackedMatrix Won = W, Woff = W;
    // LOWBIT_ACTPAIR_CONTROL=1: both sides without act-order (what two sets of copies differ by alone).
    const bool control = std::getenv("LOWBIT_ACTPAIR_CONTROL") && atoi(std::getenv("LOWBIT_ACTPAIR_CONTROL")) != 0;
    Won.g_idx = control ? nullptr : shuffled.data();
    Woff.g_idx = nullptr;
    const cpu_gptq::CpuGptqWeights Roff = cpu_gptq::repack(Woff), Ron = cpu_gptq::repack(Won);
    if (Ron.bytes() != Roff.bytes() || Ron.permuted == control || Roff.permuted) { std::fprintf(stderr, "actpair: layouts differ\n"); return 1; }
    const int64_t total = (int64_t)(std::getenv("LOWBIT_ROTATE_MB") ? atof(std::getenv("LOWBIT_ROTATE_MB")) : 640) << 20;
    std::vector<cpu_gptq::CpuGptqWeights> off, on;
    for (int64_t have = 0; have < total; have += Roff.bytes()) {
      off.push_back(cpu_gptq::copy_of(Roff));
      on.push_back(cpu_gptq::copy_of(Ron));
    }
    const int64_t slice = Roff.bytes() / 64 * 64;
    StreamReader reader(std::max<int64_t>((int64_t)off.size() * slice, 4096));
    const int threads = global_pool()->size();
    std::vector<double> t_off, t_on, ratio, pct_off, pct_on;
    auto timed = [&](const cpu_gptq::CpuGptqWeights& w, size_t i) {
      const auto t0 = std::chrono::steady_clock::now();
      cpu_gptq::gemm(w, X.data(), 1, Y.data(), opt);
      const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
      return std::make_pair(s, reader.read_seconds((int64_t)i * slice, slice, threads));
    };
    for (int pass = 0; pass < runs; ++pass)
      for (size_t i = 0; i < off.size(); ++i) {
        std::pair<double, double> a, b;
        if (pass % 2 == 0) { a = timed(off[i], i); b = timed(on[i], i); }
        else { b = timed(on[i], i); a = timed(off[i], i); }
        if (pass == 0) continue;  // warm-up pass
        t_off.push_back(a.first);
        t_on.push_back(b.first);
        ratio.push_back(b.first / a.first);
        pct_off.push_back(a.second / a.first);
        pct_on.push_back(b.second / b.first);
      }
    auto med = [](std::vector<double> v) { std::sort(v.begin(), v.end()); return v[v.size() / 2]; };
    // The preparation alone, as gemm runs it for M = 1 (one thread).
    OneRow row(Roff);
    auto prep = [&](const cpu_gptq::CpuGptqWeights& w) {
      double best = 1e30;
      for (int r = 0; r < 200; ++r) {
        const auto t0 = std::chrono::steady_clock::now();
        row.quantize(w, X.data(), 0, 1, row.A, row.xq.data(), row.dx.data(), row.xsum.data());
        best = std::min(best, std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
      }
      return best;
    };
    const double prep_off = prep(Roff), prep_on = prep(Ron);
    std::printf("actpair %s N %lld K %lld bits %d: on/off time %.3f (median of %zu pairs; quartiles %.3f-%.3f), "
                "off %.3f ms %.1f%% of read, on %.3f ms %.1f%% of read, prepare off %.2f us on %.2f us, %zu copies each\n",
                cpu_gptq::last_kernel(), (long long)N, (long long)K, bits, med(ratio), ratio.size(),
                [&] { auto v = ratio; std::sort(v.begin(), v.end()); return v[v.size() / 4]; }(),
                [&] { auto v = ratio; std::sort(v.begin(), v.end()); return v[v.size() * 3 / 4]; }(),
                med(t_off) * 1e3, 100 * med(pct_off), med(t_on) * 1e3, 100 * med(pct_on), prep_off * 1e6, prep_on * 1e6,
                off.size());
    return 0;
  }
  // Kernel runs alternate with streaming reads of the same byte count (all threads), so the ratio
  // sees the same background load.
  std::vector<double> t, rd;
  const int threads = global_pool()->size();
  auto now = [&] {
    if (threads == 1) {
      timespec ts;
      clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
      return ts.tv_sec + ts.tv_nsec * 1e-9;
    }
    return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
  };
  const int64_t read_bytes = std::max<int64_t>(R.bytes(), 4096);
  for (int r = 0; r < runs + 3; ++r) {
    double t0 = now();
    cpu_gptq::gemm(R, X.data(), M, Y.data(), opt);
    const double s = now() - t0;
    t0 = now();
    const double bw_wall = stream_read_bandwidth(read_bytes, threads, 1);
    const double bw = bw_wall;
    if (r >= 3) { t.push_back(s); rd.push_back(bw); }
  }
  std::sort(t.begin(), t.end());
  std::sort(rd.begin(), rd.end());
  const double med = t[t.size() / 2], read = rd[rd.size() / 2];
  std::printf("%s N %lld K %lld M %lld bits %d act %d: median %.3f ms (min %.3f), %.1f GB/s of %.2f MB = %.0f%% of read %.1f GB/s, %.1f GFLOP/s\n",
              cpu_gptq::last_kernel(), (long long)N, (long long)K, (long long)M, bits, (int)act, med * 1e3, t[0] * 1e3,
              R.bytes() / med / 1e9, R.bytes() / 1e6, 100.0 * R.bytes() / med / read, read / 1e9, 2.0 * N * K * M / med / 1e9);
  return 0;
}

// Repacked GPTQ products with AVX-512 (F + BW; VNNI's vpdpbusd where present, else vpmaddubsw +
// vpmaddwd). Only these functions carry the target attributes; repack.cpp calls in here only when
// the processor has AVX-512F/BW.
#if defined(__x86_64__) || defined(_M_X64)

#if defined(__GNUC__) && !defined(__clang__)  // GCC 12 intrinsics warnings (bug 105593), as packed_gemm_avx512.cpp
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"
#endif

#include <immintrin.h>

#include <cstdint>
#include <cstring>

#include "spqr_panels.hpp"  // kNoColumn, for the ops' gather_u16

#define LOWBIT_AVX512 "avx512f,avx512bw,avx2,fma,f16c"

// Without VNNI (Skylake-X and the like).
#define LOWBIT_GPTQ_NS kernels_avx512_plain
#define LOWBIT_TARGET __attribute__((target(LOWBIT_AVX512)))
#define LOWBIT_OPS static inline __attribute__((always_inline, target(LOWBIT_AVX512)))
#define LOWBIT_VNNI 0
namespace lowbit {
namespace cpu_gptq {
namespace kernels_avx512_plain {
#include "ops_avx512.hpp"
}  // namespace kernels_avx512_plain
}  // namespace cpu_gptq
}  // namespace lowbit
#include "kernels_impl.hpp"
#undef LOWBIT_GPTQ_NS
#undef LOWBIT_TARGET
#undef LOWBIT_OPS
#undef LOWBIT_VNNI

// With VNNI (vpdpbusd: Ice Lake, Sapphire Rapids, Zen 4 and later).
#define LOWBIT_GPTQ_NS kernels_avx512_vnni
#define LOWBIT_TARGET __attribute__((target(LOWBIT_AVX512 ",avx512vnni")))
#define LOWBIT_OPS static inline __attribute__((always_inline, target(LOWBIT_AVX512 ",avx512vnni")))
#define LOWBIT_VNNI 1
namespace lowbit {
namespace cpu_gptq {
namespace kernels_avx512_vnni {
#include "ops_avx512.hpp"
}  // namespace kernels_avx512_vnni
}  // namespace cpu_gptq
}  // namespace lowbit
#include "kernels_impl.hpp"

namespace lowbit {
namespace cpu_gptq {
namespace kernels_avx512 {
namespace {
bool has_vnni() {
  static const bool yes = __builtin_cpu_supports("avx512vnni");
  return yes;
}
}  // namespace
const char* gemm_int8(const CpuGptqWeights& W, const Activations& A, float* Y) {
  if (has_vnni()) {
    kernels_avx512_vnni::gemm_int8_t<kernels_avx512_vnni::Ops>(W, A, Y);
    return "avx512-vnni";
  }
  kernels_avx512_plain::gemm_int8_t<kernels_avx512_plain::Ops>(W, A, Y);
  return "avx512";
}
const char* gemm_f32(const CpuGptqWeights& W, const Activations& A, float* Y) {
  kernels_avx512_plain::gemm_f32_t<kernels_avx512_plain::Ops>(W, A, Y);
  return "avx512";
}
void quantize_rows(const CpuGptqWeights& W, const float* X, int64_t m0, int64_t m1, const Activations& A, int8_t* xq,
                   float* dx, float* xsum) {
  kernels_avx512_plain::quantize_rows_t<kernels_avx512_plain::Ops>(W, X, m0, m1, A, xq, dx, xsum);
}
const char* gemm_spqr_int8(const SpqrPanels& W, const Activations& A, const float* X, float* Y) {
  if (has_vnni()) {
    kernels_avx512_vnni::gemm_spqr_int8_t<kernels_avx512_vnni::Ops>(W, A, X, Y);
    return "avx512-vnni";
  }
  kernels_avx512_plain::gemm_spqr_int8_t<kernels_avx512_plain::Ops>(W, A, X, Y);
  return "avx512";
}
void quantize_rows(const SpqrPanels& W, const float* X, int64_t m0, int64_t m1, const Activations& A, int8_t* xq,
                   float* dx, float* xsum) {
  kernels_avx512_plain::quantize_rows_t<kernels_avx512_plain::Ops>(W, X, m0, m1, A, xq, dx, xsum);
}
}  // namespace kernels_avx512
}  // namespace cpu_gptq
}  // namespace lowbit

#else  // not x86-64: never selected; keep the symbols so the dispatcher links.
#include "kernels.hpp"
namespace lowbit {
namespace cpu_gptq {
namespace kernels_avx512 {
const char* gemm_int8(const CpuGptqWeights& W, const Activations& A, float* Y) { return kernels_scalar::gemm_int8(W, A, Y); }
const char* gemm_f32(const CpuGptqWeights& W, const Activations& A, float* Y) { return kernels_scalar::gemm_f32(W, A, Y); }
void quantize_rows(const CpuGptqWeights& W, const float* X, int64_t m0, int64_t m1, const Activations& A, int8_t* xq,
                   float* dx, float* xsum) {
  kernels_scalar::quantize_rows(W, X, m0, m1, A, xq, dx, xsum);
}
const char* gemm_spqr_int8(const SpqrPanels& W, const Activations& A, const float* X, float* Y) {
  return kernels_scalar::gemm_spqr_int8(W, A, X, Y);
}
void quantize_rows(const SpqrPanels& W, const float* X, int64_t m0, int64_t m1, const Activations& A, int8_t* xq,
                   float* dx, float* xsum) {
  kernels_scalar::quantize_rows(W, X, m0, m1, A, xq, dx, xsum);
}
}  // namespace kernels_avx512
}  // namespace cpu_gptq
}  // namespace lowbit
#endif

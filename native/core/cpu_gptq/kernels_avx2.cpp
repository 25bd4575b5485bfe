// Repacked GPTQ products with AVX2 (+FMA, F16C; AVX-VNNI's 256-bit vpdpbusd where present, else
// vpmaddubsw + vpmaddwd). Only these functions carry the target attributes; repack.cpp calls in here
// only when the processor has AVX2/FMA/F16C.
#if defined(__x86_64__) || defined(_M_X64)

#include <immintrin.h>

#include <cstdint>
#include <cstring>

#include "spqr_panels.hpp"  // kNoColumn, for the ops' gather_u16

#define LOWBIT_AVX2 "avx2,fma,f16c"

// Without AVX-VNNI (Haswell to Ice Lake, Zen 1-3).
#define LOWBIT_GPTQ_NS kernels_avx2_plain
#define LOWBIT_TARGET __attribute__((target(LOWBIT_AVX2)))
#define LOWBIT_OPS static inline __attribute__((always_inline, target(LOWBIT_AVX2)))
#define LOWBIT_VNNI 0
namespace lowbit {
namespace cpu_gptq {
namespace kernels_avx2_plain {
#include "ops_avx2.hpp"
}  // namespace kernels_avx2_plain
}  // namespace cpu_gptq
}  // namespace lowbit
#include "kernels_impl.hpp"
#undef LOWBIT_GPTQ_NS
#undef LOWBIT_TARGET
#undef LOWBIT_OPS
#undef LOWBIT_VNNI

// With AVX-VNNI (Alder Lake, Sapphire Rapids, Zen 5 and later). GCC learned the `avxvnni` target in
// version 11; the prebuilt's older build root (GCC 10, for its glibc floor) builds the plain kernel only.
#if defined(__clang__) || (defined(__GNUC__) && __GNUC__ >= 11)
#define LOWBIT_HAVE_AVXVNNI 1
#define LOWBIT_GPTQ_NS kernels_avx2_vnni
#define LOWBIT_TARGET __attribute__((target(LOWBIT_AVX2 ",avxvnni")))
#define LOWBIT_OPS static inline __attribute__((always_inline, target(LOWBIT_AVX2 ",avxvnni")))
#define LOWBIT_VNNI 1
namespace lowbit {
namespace cpu_gptq {
namespace kernels_avx2_vnni {
#include "ops_avx2.hpp"
}  // namespace kernels_avx2_vnni
}  // namespace cpu_gptq
}  // namespace lowbit
#include "kernels_impl.hpp"
#else
#define LOWBIT_HAVE_AVXVNNI 0
#endif

namespace lowbit {
namespace cpu_gptq {
namespace kernels_avx2 {
namespace {
bool has_vnni() {
#if LOWBIT_HAVE_AVXVNNI
  static const bool yes = __builtin_cpu_supports("avxvnni");
  return yes;
#else
  return false;
#endif
}
}  // namespace
const char* gemm_int8(const CpuGptqWeights& W, const Activations& A, float* Y) {
#if LOWBIT_HAVE_AVXVNNI
  if (has_vnni()) {
    kernels_avx2_vnni::gemm_int8_t<kernels_avx2_vnni::Ops>(W, A, Y);
    return "avx2-vnni";
  }
#endif
  kernels_avx2_plain::gemm_int8_t<kernels_avx2_plain::Ops>(W, A, Y);
  return "avx2";
}
const char* gemm_f32(const CpuGptqWeights& W, const Activations& A, float* Y) {
  kernels_avx2_plain::gemm_f32_t<kernels_avx2_plain::Ops>(W, A, Y);
  return "avx2";
}
void quantize_rows(const CpuGptqWeights& W, const float* X, int64_t m0, int64_t m1, const Activations& A, int8_t* xq,
                   float* dx, float* xsum) {
  kernels_avx2_plain::quantize_rows_t<kernels_avx2_plain::Ops>(W, X, m0, m1, A, xq, dx, xsum);
}
const char* gemm_spqr_int8(const SpqrPanels& W, const Activations& A, const float* X, float* Y) {
#if LOWBIT_HAVE_AVXVNNI
  if (has_vnni()) {
    kernels_avx2_vnni::gemm_spqr_int8_t<kernels_avx2_vnni::Ops>(W, A, X, Y);
    return "avx2-vnni";
  }
#endif
  kernels_avx2_plain::gemm_spqr_int8_t<kernels_avx2_plain::Ops>(W, A, X, Y);
  return "avx2";
}
void quantize_rows(const SpqrPanels& W, const float* X, int64_t m0, int64_t m1, const Activations& A, int8_t* xq,
                   float* dx, float* xsum) {
  kernels_avx2_plain::quantize_rows_t<kernels_avx2_plain::Ops>(W, X, m0, m1, A, xq, dx, xsum);
}
}  // namespace kernels_avx2
}  // namespace cpu_gptq
}  // namespace lowbit

#else  // not x86-64: never selected; keep the symbols so the dispatcher links.
#include "kernels.hpp"
namespace lowbit {
namespace cpu_gptq {
namespace kernels_avx2 {
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
}  // namespace kernels_avx2
}  // namespace cpu_gptq
}  // namespace lowbit
#endif

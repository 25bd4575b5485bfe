// Repacked GPTQ products without SIMD: the fallback for processors without AVX2 (and the reference
// the SIMD levels are tested against). The kernels are those of kernels_impl.hpp with plain arrays.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>

#include "../dtype.hpp"
#include "spqr_panels.hpp"  // kNoColumn, for the ops' gather_u16

#define LOWBIT_GPTQ_NS kernels_scalar
#define LOWBIT_TARGET
#define LOWBIT_OPS static inline __attribute__((always_inline))

namespace lowbit {
namespace cpu_gptq {
namespace kernels_scalar {

struct Ops {
  static constexpr int GEMV_NB3 = 1, GEMV_NB = 1, GEMV_P = 4, GEMM_MR = 4, GEMM_NB = 1;
  static constexpr bool DOT_ANY_U8 = true;
  struct U { uint8_t b[64]; };
  struct I { int32_t v[16]; };
  struct F { float v[16]; };
  LOWBIT_OPS U load(const uint8_t* p) { U u; std::memcpy(u.b, p, 64); return u; }
  LOWBIT_OPS U and8(U u, uint8_t m) { for (auto& b : u.b) b &= m; return u; }
  template <int S> LOWBIT_OPS U srl16(U u) {
    U r;
    for (int i = 0; i < 64; i += 2) {
      const uint16_t w = (uint16_t)(u.b[i] | (u.b[i + 1] << 8)) >> S;
      r.b[i] = (uint8_t)w; r.b[i + 1] = (uint8_t)(w >> 8);
    }
    return r;
  }
  LOWBIT_OPS U merge3(U lo, U hi) { for (int i = 0; i < 64; ++i) lo.b[i] = (uint8_t)((lo.b[i] & 3) | (hi.b[i] & 4)); return lo; }
  LOWBIT_OPS I dot(I acc, U w, const int8_t* x) {
    for (int c = 0; c < 16; ++c)
      for (int j = 0; j < 4; ++j) acc.v[c] += (int32_t)w.b[4 * c + j] * (int32_t)x[j];
    return acc;
  }
  LOWBIT_OPS I zero_i() { return I{}; }
  LOWBIT_OPS I add_i(I a, I b) { for (int c = 0; c < 16; ++c) a.v[c] += b.v[c]; return a; }
  template <int S> LOWBIT_OPS I srai(I a) { for (auto& v : a.v) v >>= S; return a; }
  LOWBIT_OPS I load_u8_i(const uint8_t* p) { I r; for (int c = 0; c < 16; ++c) r.v[c] = p[c]; return r; }
  LOWBIT_OPS I and_i(I a, int32_t m) { for (auto& v : a.v) v &= m; return a; }
  template <int S> LOWBIT_OPS I srli(I a) { for (auto& v : a.v) v = (int32_t)((uint32_t)v >> S); return a; }
  LOWBIT_OPS F zero_f() { return F{}; }
  LOWBIT_OPS F set1(float x) { F f; for (auto& v : f.v) v = x; return f; }
  LOWBIT_OPS F cvt(I a) { F f; for (int c = 0; c < 16; ++c) f.v[c] = (float)a.v[c]; return f; }
  LOWBIT_OPS F load_f16(const uint16_t* p) { F f; for (int c = 0; c < 16; ++c) f.v[c] = f16_to_f32(p[c]); return f; }
  LOWBIT_OPS F load_u8(const uint8_t* p) { F f; for (int c = 0; c < 16; ++c) f.v[c] = (float)p[c]; return f; }
  LOWBIT_OPS F load(const float* p) { F f; std::memcpy(f.v, p, sizeof f.v); return f; }
  LOWBIT_OPS void store(float* p, F f) { std::memcpy(p, f.v, sizeof f.v); }
  LOWBIT_OPS F add(F a, F b) { for (int c = 0; c < 16; ++c) a.v[c] += b.v[c]; return a; }
  LOWBIT_OPS F sub(F a, F b) { for (int c = 0; c < 16; ++c) a.v[c] -= b.v[c]; return a; }
  LOWBIT_OPS F mul(F a, F b) { for (int c = 0; c < 16; ++c) a.v[c] *= b.v[c]; return a; }
  LOWBIT_OPS F fma(F a, F b, F c) { for (int i = 0; i < 16; ++i) c.v[i] = a.v[i] * b.v[i] + c.v[i]; return c; }
  LOWBIT_OPS F fnma(F a, F b, F c) { for (int i = 0; i < 16; ++i) c.v[i] = c.v[i] - a.v[i] * b.v[i]; return c; }
  template <int J> LOWBIT_OPS F byte(U u) { F f; for (int c = 0; c < 16; ++c) f.v[c] = (float)u.b[4 * c + J]; return f; }
  LOWBIT_OPS F gather(const float* base, const int32_t* idx) {
    F f;
    for (int c = 0; c < 16; ++c) f.v[c] = idx[c] >= 0 ? base[idx[c]] : 0.f;
    return f;
  }
  LOWBIT_OPS F gather_u16(const float* base, const uint16_t* idx) {
    F f;
    for (int c = 0; c < 16; ++c) f.v[c] = idx[c] != kNoColumn ? base[idx[c]] : 0.f;
    return f;
  }
  LOWBIT_OPS float half(uint16_t h) { return f16_to_f32(h); }
  LOWBIT_OPS float reduce_add_f(F a) { float s = 0.f; for (float v : a.v) s += v; return s; }
  LOWBIT_OPS F abs(F a) { for (auto& v : a.v) v = std::fabs(v); return a; }
  LOWBIT_OPS F max(F a, F b) { for (int c = 0; c < 16; ++c) a.v[c] = std::max(a.v[c], b.v[c]); return a; }
  LOWBIT_OPS float reduce_max(F a) { float m = a.v[0]; for (float v : a.v) m = std::max(m, v); return m; }
  LOWBIT_OPS I round_i(F a) { I r; for (int c = 0; c < 16; ++c) r.v[c] = (int32_t)std::lrint(a.v[c]); return r; }
  LOWBIT_OPS void store_i8(int8_t* p, I a) { for (int c = 0; c < 16; ++c) p[c] = (int8_t)std::clamp(a.v[c], -127, 127); }
  LOWBIT_OPS int32_t reduce_add(I a) { int32_t s = 0; for (int32_t v : a.v) s += v; return s; }
};

}  // namespace kernels_scalar
}  // namespace cpu_gptq
}  // namespace lowbit

#include "kernels_impl.hpp"

namespace lowbit {
namespace cpu_gptq {
namespace kernels_scalar {
const char* gemm_int8(const CpuGptqWeights& W, const Activations& A, float* Y) {
  gemm_int8_t<Ops>(W, A, Y);
  return "scalar";
}
const char* gemm_f32(const CpuGptqWeights& W, const Activations& A, float* Y) {
  gemm_f32_t<Ops>(W, A, Y);
  return "scalar";
}
void quantize_rows(const CpuGptqWeights& W, const float* X, int64_t m0, int64_t m1, const Activations& A, int8_t* xq,
                   float* dx, float* xsum) {
  quantize_rows_t<Ops>(W, X, m0, m1, A, xq, dx, xsum);
}
const char* gemm_spqr_int8(const SpqrPanels& W, const Activations& A, const float* X, float* Y) {
  gemm_spqr_int8_t<Ops>(W, A, X, Y);
  return "scalar";
}
void quantize_rows(const SpqrPanels& W, const float* X, int64_t m0, int64_t m1, const Activations& A, int8_t* xq,
                   float* dx, float* xsum) {
  quantize_rows_t<Ops>(W, X, m0, m1, A, xq, dx, xsum);
}
}  // namespace kernels_scalar
}  // namespace cpu_gptq
}  // namespace lowbit

// SpQR row kernel without SIMD (the fallback, and what tests force to compare paths).
#include <cstdint>
#include <cstring>

#define LOWBIT_SPQR_NS spqr_scalar
#define LOWBIT_TARGET

namespace lowbit {
namespace spqr_scalar {
struct SpqrVec {
  static constexpr int W = 1;
  using F = float;
  static F zero() { return 0.f; }
  static F set1(float x) { return x; }
  static F load(const float* p) { return *p; }
  static void store(float* p, F v) { *p = v; }
  static F add(F a, F b) { return a + b; }
  static F fma(F a, F b, F c) { return a * b + c; }
  static F fms(F a, F b, F c) { return a * b - c; }
  static F mul(F a, F b) { return a * b; }
  static F bytes(const uint8_t* p) { return (float)*p; }
  static void codes16(const uint8_t* p, int bits, F (&q)[16]) {
    uint64_t word;
    std::memcpy(&word, p, 8);
    const uint64_t mask = (1u << bits) - 1u;
    for (int i = 0; i < 16; ++i) q[i] = (float)((word >> (i * bits)) & mask);
  }
  static float hsum(F v) { return v; }
  static void codes8(const uint8_t* p, int bits, float* out) {
    uint32_t word;
    std::memcpy(&word, p, 4);
    const uint32_t mask = (1u << bits) - 1u;
    for (int i = 0; i < 8; ++i) out[i] = (float)((word >> (i * bits)) & mask);
  }
};
}  // namespace spqr_scalar
}  // namespace lowbit

#include "spqr_gemm_impl.hpp"

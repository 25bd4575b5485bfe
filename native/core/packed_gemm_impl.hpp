// The CPU kernel source for packed products, compiled once per SIMD level. Not an ordinary header:
// the including file (packed_gemm_scalar.cpp, packed_gemm_avx2.cpp, packed_gemm_avx512.cpp) defines
//   LOWBIT_KERNEL_NS  the namespace of its level (kernels_scalar, kernels_avx2, kernels_avx512),
//   LOWBIT_TARGET     the attribute that enables the level's instructions (empty for scalar),
// and `struct Vec` inside lowbit::LOWBIT_KERNEL_NS (the vector operations; ScalarVec below is the
// one-lane version and lists them all) or LOWBIT_VEC_IS_SCALAR, then includes this file once.
//
// Layout (pack.hpp): qweight [words(K), N] is packed along K, so one word row holds, for N
// consecutive output columns, the next 32/bits input rows (3 bits: 3 word rows hold 32 inputs).
// Every kernel therefore vectorizes along N: a vector of W words is W output columns, and each
// packed value in it is one input row k, multiplied by the broadcast activation x[k].
//
// Two paths:
//  - GEMV (M = 1, groups contiguous and aligned to the pack unit): stream qweight once, in row
//    order; per group accumulate acc[n] = Σ x[k]·q[k,n] and Σ x[k], then
//    y[n] += scale[g,n] · (acc[n] − zero[g,n]·Σx). No dequantized weight is ever stored.
//  - GEMM (M > 1, or g_idx / act-order, or groups that split a pack unit): per tile of output
//    columns, dequantize a block of K rows into a small f32 buffer once and reuse it for every row
//    of X with a register-blocked MR × NR micro-kernel.
// Both accumulate in f32.

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <vector>

#include "common.hpp"
#include "dtype.hpp"
#include "pack.hpp"
#include "packed_gemm_kernels.hpp"
#include "packed_matrix.hpp"
#include "thread_pool.hpp"
#include "weight_format.hpp"

namespace lowbit {
namespace LOWBIT_KERNEL_NS {

#define LOWBIT_KERNEL LOWBIT_TARGET inline __attribute__((always_inline))
// Full unrolling of the short register-array loops, so the accumulators stay in registers.
#if defined(__clang__)
#define LOWBIT_UNROLL _Pragma("unroll")
#elif defined(__GNUC__)
#define LOWBIT_UNROLL _Pragma("GCC unroll 16")
#else
#define LOWBIT_UNROLL
#endif

// One lane: the fallback for the scalar build and for the columns left over after the last full
// vector in the SIMD builds.
struct ScalarVec {
  static constexpr int W = 1;
  using F = float;
  using I = uint32_t;
  static inline __attribute__((always_inline)) F zero() { return 0.f; }
  static inline __attribute__((always_inline)) F set1(float x) { return x; }
  static inline __attribute__((always_inline)) F load(const float* p) { return *p; }
  static inline __attribute__((always_inline)) void store(float* p, F v) { *p = v; }
  static inline __attribute__((always_inline)) F add(F a, F b) { return a + b; }
  static inline __attribute__((always_inline)) F sub(F a, F b) { return a - b; }
  static inline __attribute__((always_inline)) F mul(F a, F b) { return a * b; }
  static inline __attribute__((always_inline)) F fma(F a, F b, F c) { return a * b + c; }  // a·b + c
  static inline __attribute__((always_inline)) I load_i(const int32_t* p) { return (uint32_t)*p; }
  static inline __attribute__((always_inline)) I set1_i(uint32_t x) { return x; }
  static inline __attribute__((always_inline)) I srl(I v, int s) { return v >> s; }
  static inline __attribute__((always_inline)) I sll(I v, int s) { return v << s; }
  static inline __attribute__((always_inline)) I or_(I a, I b) { return a | b; }
  static inline __attribute__((always_inline)) I and_(I a, I b) { return a & b; }
  static inline __attribute__((always_inline)) F to_float(I v) { return (float)(int32_t)v; }
  static inline __attribute__((always_inline)) F load_half(const uint16_t* p) { return f16_to_f32(*p); }
  // W consecutive `bits`-wide values of a packed row, starting at value n (the row has `words` words).
  static inline __attribute__((always_inline)) I load_packed(const int32_t* row, int64_t n, int bits, int64_t words) {
    (void)words;
    return read_packed(row, 1, bits, n);
  }
  static inline __attribute__((always_inline)) float hsum(F v) { return v; }
};

#ifdef LOWBIT_VEC_IS_SCALAR
using Vec = ScalarVec;
#endif

// The pack unit of a width, from the one table (weights/format.hpp).
constexpr int values_per_unit(int bits) { return gptq_pack_unit(bits).values_per_unit; }
constexpr int words_per_unit(int bits) { return gptq_pack_unit(bits).words_per_unit; }

// Value I of a pack unit whose words are w[0..words_per_unit): a little-endian bit stream, so a
// 3-bit value may take its high bits from the next word.
template <int BITS, int I, class V>
LOWBIT_KERNEL typename V::I extract(const typename V::I* w) {
  constexpr int bit = I * BITS, word = bit / 32, shift = bit % 32;
  typename V::I v = V::srl(w[word], shift);
  if constexpr (shift + BITS > 32) v = V::or_(v, V::sll(w[word + 1], 32 - shift));
  if constexpr (shift + BITS != 32) v = V::and_(v, V::set1_i((1u << BITS) - 1u));
  return v;
}

// Value I of a unit as the GEMV reads it: a value that neither straddles words nor reaches a
// word's top bit is only masked in place, giving q·2^shift; the GEMV multiplies it by x·2^−shift
// (prescale below), which is exact and saves the shift. Other values come out as q.
template <int BITS, int I>
constexpr bool masked_in_place() {
  return (I * BITS) % 32 + BITS < 32;
}
template <int BITS>
constexpr float prescale(int i) {
  const int shift = (i * BITS) % 32;
  return shift + BITS < 32 ? 1.f / (float)(1u << shift) : 1.f;
}

// masks[I] = (2^BITS − 1) << shift of value I, built at run time by gemv_columns: as compile-time
// constants, GCC re-materialized each one with three instructions at every use.
template <int BITS, int I, class V>
LOWBIT_KERNEL typename V::I extract_scaled(const typename V::I* w, const typename V::I* masks) {
  if constexpr (masked_in_place<BITS, I>()) {
    return V::and_(w[(I * BITS) / 32], masks[I]);
  } else {
    return extract<BITS, I, V>(w);
  }
}

// acc[I % NACC] += x[I] · q_I for every value of a unit, x prescaled (several accumulators break
// the FMA dependency chain; the recursion unrolls the unit at compile time: every shift is constant).
template <int BITS, int I, int NACC, class V>
LOWBIT_KERNEL void fma_unit(const typename V::I* w, const typename V::I* masks, const float* x, typename V::F* acc) {
  if constexpr (I < values_per_unit(BITS)) {
    acc[I % NACC] = V::fma(V::set1(x[I]), V::to_float(extract_scaled<BITS, I, V>(w, masks)), acc[I % NACC]);
    fma_unit<BITS, I + 1, NACC, V>(w, masks, x, acc);
  }
}

// out[I·ldo] = scale · (q_I − zero) for every value of a unit; row_of[I] selects the value's group
// row in the zero and scale tables.
template <int BITS, int I, class V>
LOWBIT_KERNEL void dequant_unit(const typename V::I* w, const float* zeros, const float* scales,
                                const int64_t* row_of, float* out, int64_t ldo) {
  if constexpr (I < values_per_unit(BITS)) {
    const typename V::F q = V::to_float(extract<BITS, I, V>(w));
    V::store(out + I * ldo, V::mul(V::sub(q, V::load(zeros + row_of[I])), V::load(scales + row_of[I])));
    dequant_unit<BITS, I + 1, V>(w, zeros, scales, row_of, out, ldo);
  }
}

template <int BITS, class V>
LOWBIT_KERNEL void load_unit(const int32_t* p, int64_t N, typename V::I* w) {
  for (int j = 0; j < words_per_unit(BITS); ++j) w[j] = V::load_i(p + j * N);
}

// ---------------------------------------------------------------------------------------------
// GEMV over the groups [g0, g1) and the columns [c0, c1) (a multiple of V::W wide): y[c − c0] =
// Σ over those groups of W·x. xs is x padded with zeros to whole units, xs[k] prescaled by
// prescale<BITS>(k mod VPU); xsum[g] = Σ x over group g (unscaled); acc is scratch of c1 − c0 floats.
template <int BITS, class V>
LOWBIT_TARGET void gemv_columns(const PackedMatrix& Wp, const float* xs, const float* xsum, int64_t g0, int64_t g1,
                                int64_t c0, int64_t c1, float* acc, float* y) {
  constexpr int VPU = values_per_unit(BITS), WPU = words_per_unit(BITS);
  constexpr int NACC = VPU >= 16 ? 4 : 2;
  // Units per pass over acc: at least 16 values, so acc is loaded and stored once per 16 FMAs.
  constexpr int PASS = VPU >= 16 ? 1 : 16 / VPU;
  const int64_t N = Wp.N, width = c1 - c0, zwords = packed_words(BITS, N);
  typename V::I masks[VPU];
  const uint32_t value_mask = (1u << Wp.bits) - 1u;  // = 2^BITS − 1, but opaque to the compiler
  for (int i = 0; i < VPU; ++i) masks[i] = V::set1_i(value_mask << ((i * BITS) % 32));
  for (int64_t c = 0; c < width; c += V::W) V::store(y + c, V::zero());
  for (int64_t g = g0; g < g1; ++g) {
    const int64_t k0 = g * Wp.group_size, k1 = std::min(Wp.K, k0 + Wp.group_size);
    const int64_t u0 = k0 / VPU, u1 = ceil_div(k1, VPU);
    for (int64_t c = 0; c < width; c += V::W) V::store(acc + c, V::zero());
    int64_t u = u0;
    for (; u + PASS <= u1; u += PASS) {
      const int32_t* words = Wp.qweight + u * WPU * N + c0;
      const float* xu = xs + u * VPU;
      for (int64_t c = 0; c < width; c += V::W) {
        typename V::F a[NACC];
        a[0] = V::load(acc + c);
        LOWBIT_UNROLL for (int i = 1; i < NACC; ++i) a[i] = V::zero();
        LOWBIT_UNROLL for (int p = 0; p < PASS; ++p) {
          typename V::I w[WPU];
          load_unit<BITS, V>(words + p * WPU * N + c, N, w);
          fma_unit<BITS, 0, NACC, V>(w, masks, xu + p * VPU, a);
        }
        LOWBIT_UNROLL for (int i = 1; i < NACC; ++i) a[0] = V::add(a[0], a[i]);
        V::store(acc + c, a[0]);
      }
    }
    for (; u < u1; ++u) {  // the units left over when a group is not a whole number of passes
      const int32_t* words = Wp.qweight + u * WPU * N + c0;
      for (int64_t c = 0; c < width; c += V::W) {
        typename V::F a[NACC];
        a[0] = V::load(acc + c);
        LOWBIT_UNROLL for (int i = 1; i < NACC; ++i) a[i] = V::zero();
        typename V::I w[WPU];
        load_unit<BITS, V>(words + c, N, w);
        fma_unit<BITS, 0, NACC, V>(w, masks, xs + u * VPU, a);
        LOWBIT_UNROLL for (int i = 1; i < NACC; ++i) a[0] = V::add(a[0], a[i]);
        V::store(acc + c, a[0]);
      }
    }
    // Apply the group's grid: Σ x·s·(q − z) = s·(Σ x·q − z·Σ x).
    const typename V::F gx = V::set1(xsum[g]), offset = V::set1((float)Wp.zero_offset);
    const int32_t* zrow = Wp.qzeros + g * zwords;
    const uint16_t* srow = Wp.scales + g * N + c0;
    for (int64_t c = 0; c < width; c += V::W) {
      const typename V::F z = V::add(V::to_float(V::load_packed(zrow, c0 + c, BITS, zwords)), offset);
      const typename V::F s = V::load_half(srow + c);
      const typename V::F dot = V::sub(V::load(acc + c), V::mul(z, gx));
      V::store(y + c, V::fma(s, dot, V::load(y + c)));
    }
  }
}

// The GEMV task grid: column tiles as wide as whole rows where possible (each task then reads one
// contiguous run of qweight per slice: the prefetcher stops at page boundaries, and short runs far
// apart left it cold), times slices of whole groups along K, whose partial results are summed.
template <int BITS>
void gemv_grouped(const float* x, const PackedMatrix& Wp, float* Y) {
  constexpr int VPU = values_per_unit(BITS);
  const int64_t K = Wp.K, N = Wp.N, G = Wp.groups;
  const int64_t threads = global_pool()->size();
  auto round64 = [](int64_t v) { return ceil_div(v, 64) * 64; };  // a multiple of every vector width
  int64_t tile = round64(std::min<int64_t>(N, 4096));
  int64_t tiles = ceil_div(N, tile);
  const int64_t slices = std::min(G, std::max<int64_t>(1, ceil_div(2 * threads, tiles)));
  if (tiles * slices < threads) {  // few groups (per channel): split the columns instead
    tile = std::max<int64_t>(64, round64(ceil_div(N, threads)));
    tiles = ceil_div(N, tile);
  }
  std::vector<float> xs((size_t)(ceil_div(K, VPU) * VPU), 0.f);
  for (int64_t k = 0; k < K; ++k) xs[(size_t)k] = x[k] * prescale<BITS>((int)(k % VPU));
  std::vector<float> xsum((size_t)G, 0.f);
  for (int64_t k = 0; k < K; ++k) xsum[(size_t)(k / Wp.group_size)] += x[k];
  // Slice s > 0 writes its partial sums here; slice 0 writes straight into Y.
  std::vector<float> partial((size_t)((slices - 1) * N));
  const float* xp = xs.data();
  const float* sp = xsum.data();
  global_pool()->parallel_for(tiles * slices, 1, [&](int64_t t0, int64_t t1) {
    std::vector<float> scratch((size_t)tile);
    for (int64_t task = t0; task < t1; ++task) {
      const int64_t t = task % tiles, slice = task / tiles;
      const int64_t g0 = G * slice / slices, g1 = G * (slice + 1) / slices;
      const int64_t c0 = t * tile, c1 = std::min(N, c0 + tile);
      const int64_t cv = c0 + (c1 - c0) / Vec::W * Vec::W;  // end of the whole vectors
      float* y = slice == 0 ? Y : partial.data() + (slice - 1) * N;
      if (cv > c0) gemv_columns<BITS, Vec>(Wp, xp, sp, g0, g1, c0, cv, scratch.data(), y + c0);
      if (c1 > cv) gemv_columns<BITS, ScalarVec>(Wp, xp, sp, g0, g1, cv, c1, scratch.data(), y + cv);
    }
  });
  for (int64_t s = 1; s < slices; ++s)
    for (int64_t n = 0; n < N; ++n) Y[n] += partial[(size_t)((s - 1) * N + n)];
}

// ---------------------------------------------------------------------------------------------
// GEMM. The micro-kernel: C[MR × 2W] += X[MR × kc] · B[kc × 2W], C and B row strides ldc and ldb.
template <int MR, class V>
LOWBIT_TARGET void micro_kernel(const float* X, int64_t ldx, const float* B, int64_t ldb, int64_t kc, float* C,
                                int64_t ldc) {
  typename V::F c0[MR], c1[MR];
  LOWBIT_UNROLL for (int r = 0; r < MR; ++r) {
    c0[r] = V::load(C + r * ldc);
    c1[r] = V::load(C + r * ldc + V::W);
  }
  for (int64_t k = 0; k < kc; ++k) {
    const typename V::F b0 = V::load(B + k * ldb), b1 = V::load(B + k * ldb + V::W);
    LOWBIT_UNROLL for (int r = 0; r < MR; ++r) {
      const typename V::F a = V::set1(X[r * ldx + k]);
      c0[r] = V::fma(a, b0, c0[r]);
      c1[r] = V::fma(a, b1, c1[r]);
    }
  }
  LOWBIT_UNROLL for (int r = 0; r < MR; ++r) {
    V::store(C + r * ldc, c0[r]);
    V::store(C + r * ldc + V::W, c1[r]);
  }
}

template <class V>
LOWBIT_TARGET void micro_kernel_rows(int rows, const float* X, int64_t ldx, const float* B, int64_t ldb, int64_t kc,
                                     float* C, int64_t ldc) {
  switch (rows) {
    case 1: micro_kernel<1, V>(X, ldx, B, ldb, kc, C, ldc); break;
    case 2: micro_kernel<2, V>(X, ldx, B, ldb, kc, C, ldc); break;
    case 3: micro_kernel<3, V>(X, ldx, B, ldb, kc, C, ldc); break;
    case 4: micro_kernel<4, V>(X, ldx, B, ldb, kc, C, ldc); break;
    case 5: micro_kernel<5, V>(X, ldx, B, ldb, kc, C, ldc); break;
    default: micro_kernel<6, V>(X, ldx, B, ldb, kc, C, ldc); break;
  }
}

// Group zero points and scales of the columns [c0, c1) as floats: zeros[g·ld + c − c0].
template <int BITS, class V>
LOWBIT_TARGET void group_tables(const PackedMatrix& Wp, int64_t c0, int64_t c1, float* zeros, float* scales,
                                int64_t ld, int64_t col) {
  const int64_t zwords = packed_words(BITS, Wp.N);
  const typename V::F offset = V::set1((float)Wp.zero_offset);
  for (int64_t g = 0; g < Wp.groups; ++g)
    for (int64_t c = c0; c < c1; c += V::W) {
      V::store(zeros + g * ld + col + (c - c0),
               V::add(V::to_float(V::load_packed(Wp.qzeros + g * zwords, c, BITS, zwords)), offset));
      V::store(scales + g * ld + col + (c - c0), V::load_half(Wp.scales + g * Wp.N + c));
    }
}

// Dequantizes rows [u0·VPU, u1·VPU) of the columns [c0, c1) into B (row stride ldb, starting at
// column `col`); row_of[k − u0·VPU] is the group-table offset of row k.
template <int BITS, class V>
LOWBIT_TARGET void dequant_block(const PackedMatrix& Wp, int64_t u0, int64_t u1, int64_t c0, int64_t c1,
                                 const float* zeros, const float* scales, const int64_t* row_of, float* B, int64_t ldb,
                                 int64_t col) {
  constexpr int VPU = values_per_unit(BITS), WPU = words_per_unit(BITS);
  for (int64_t u = u0; u < u1; ++u) {
    const int32_t* words = Wp.qweight + u * WPU * Wp.N;
    const int64_t* rows = row_of + (u - u0) * VPU;
    float* out = B + (u - u0) * VPU * ldb + col;
    for (int64_t c = c0; c < c1; c += V::W) {
      typename V::I w[WPU];
      load_unit<BITS, V>(words + c, Wp.N, w);
      dequant_unit<BITS, 0, V>(w, zeros + col + (c - c0), scales + col + (c - c0), rows, out + (c - c0), ldb);
    }
  }
}

template <int BITS>
void gemm_dequant(const float* X, int64_t M, const PackedMatrix& Wp, float* Y) {
  constexpr int VPU = values_per_unit(BITS);
  constexpr int64_t NR = 2 * Vec::W, MR = 6;
  constexpr int64_t kTile = NR * 4 > 64 ? NR * 4 : 64;  // output columns per task
  constexpr int64_t KB = 256;                          // K rows per dequantized block (a multiple of VPU)
  constexpr int64_t MB = 128;                          // rows of X per pass over a tile
  static_assert(KB % VPU == 0, "K blocks must hold whole pack units");
  const int64_t K = Wp.K, N = Wp.N, G = Wp.groups;
  global_pool()->parallel_for(ceil_div(N, kTile), 1, [&](int64_t t0, int64_t t1) {
    const int64_t ld = kTile;  // row stride of the tables, B and C
    // Group tables with one extra all-zero row G: padding rows past K dequantize to 0.
    std::vector<float> zeros((size_t)((G + 1) * ld), 0.f), scales((size_t)((G + 1) * ld), 0.f);
    std::vector<float> B((size_t)(KB * ld), 0.f), C((size_t)(MB * ld));
    std::vector<int64_t> row_of((size_t)KB);
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t c0 = t * kTile, c1 = std::min(N, c0 + kTile);
      const int64_t cv = c0 + (c1 - c0) / Vec::W * Vec::W;
      const int64_t width = ceil_div(c1 - c0, NR) * NR;  // padded to whole micro-kernel panels
      std::fill(zeros.begin(), zeros.end(), 0.f);
      std::fill(scales.begin(), scales.end(), 0.f);
      std::fill(B.begin(), B.end(), 0.f);
      if (cv > c0) group_tables<BITS, Vec>(Wp, c0, cv, zeros.data(), scales.data(), ld, 0);
      if (c1 > cv) group_tables<BITS, ScalarVec>(Wp, cv, c1, zeros.data(), scales.data(), ld, cv - c0);
      for (int64_t m0 = 0; m0 < M; m0 += MB) {
        const int64_t mb = std::min(MB, M - m0);
        std::fill(C.begin(), C.end(), 0.f);
        for (int64_t k0 = 0; k0 < K; k0 += KB) {
          const int64_t kc = std::min(KB, K - k0);
          const int64_t u0 = k0 / VPU, u1 = ceil_div(k0 + kc, VPU);
          for (int64_t k = k0; k < u1 * VPU; ++k) row_of[(size_t)(k - k0)] = (k < K ? Wp.group_of(k) : G) * ld;
          if (cv > c0) dequant_block<BITS, Vec>(Wp, u0, u1, c0, cv, zeros.data(), scales.data(), row_of.data(),
                                                B.data(), ld, 0);
          if (c1 > cv) dequant_block<BITS, ScalarVec>(Wp, u0, u1, cv, c1, zeros.data(), scales.data(),
                                                      row_of.data(), B.data(), ld, cv - c0);
          for (int64_t r = 0; r < mb; r += MR)
            for (int64_t p = 0; p < width; p += NR)
              micro_kernel_rows<Vec>((int)std::min(MR, mb - r), X + (m0 + r) * K + k0, K, B.data() + p, ld, kc,
                                     C.data() + r * ld + p, ld);
        }
        for (int64_t r = 0; r < mb; ++r)
          std::memcpy(Y + (m0 + r) * N + c0, C.data() + r * ld, (size_t)(c1 - c0) * sizeof(float));
      }
    }
  });
}

// True when g_idx says nothing beyond the group size (g_idx[k] = k / group_size), as in every GPTQ
// checkpoint written without act-order: the product can then take the contiguous-group paths.
inline bool trivial_g_idx(const PackedMatrix& Wp) {
  if (Wp.groups != ceil_div(Wp.K, Wp.group_size)) return false;
  for (int64_t k = 0; k < Wp.K; ++k)
    if (Wp.g_idx[k] != k / Wp.group_size) return false;
  return true;
}

template <int BITS>
void packed_gemm_bits(const float* X, int64_t M, const PackedMatrix& Wp, float* Y) {
  constexpr int VPU = values_per_unit(BITS);
  PackedMatrix W = Wp;
  if (W.g_idx && trivial_g_idx(W)) W.g_idx = nullptr;
  const bool aligned_groups = !W.g_idx && (W.groups == 1 || W.group_size % VPU == 0);
  if (M == 1 && aligned_groups) gemv_grouped<BITS>(X, W, Y);
  else gemm_dequant<BITS>(X, M, W, Y);
}

void packed_gemm(const float* X, int64_t M, const PackedMatrix& Wp, float* Y) {
  const bool known = dispatch_gptq_bits(Wp.bits, [&](auto bits) { packed_gemm_bits<decltype(bits)::value>(X, M, Wp, Y); });
  if (!known) weight_format(Wp.bits);  // throws E_BITS
}

// ---------------------------------------------------------------------------------------------
// Dense f32 product (the honest baseline for the benchmark): R rows of W against one row of x,
// two accumulators per row, streaming W once per row of X.
template <int R, class V>
LOWBIT_TARGET void dense_rows(const float* x, const float* W, int64_t K, float* y) {
  typename V::F a0[R], a1[R];
  LOWBIT_UNROLL for (int r = 0; r < R; ++r) a0[r] = a1[r] = V::zero();
  int64_t k = 0;
  for (; k + 2 * V::W <= K; k += 2 * V::W) {
    const typename V::F x0 = V::load(x + k), x1 = V::load(x + k + V::W);
    LOWBIT_UNROLL for (int r = 0; r < R; ++r) {
      a0[r] = V::fma(x0, V::load(W + r * K + k), a0[r]);
      a1[r] = V::fma(x1, V::load(W + r * K + k + V::W), a1[r]);
    }
  }
  LOWBIT_UNROLL for (int r = 0; r < R; ++r) {
    float s = V::hsum(V::add(a0[r], a1[r]));
    for (int64_t j = k; j < K; ++j) s += x[j] * W[r * K + j];
    y[r] = s;
  }
}

void dense_gemm_impl(const float* X, int64_t M, const float* W, int64_t N, int64_t K, float* Y) {
  constexpr int64_t R = 4;
  global_pool()->parallel_for(ceil_div(N, R), 16, [&](int64_t b0, int64_t b1) {
    float out[R];
    for (int64_t b = b0; b < b1; ++b) {
      const int64_t n0 = b * R, rows = std::min(R, N - n0);
      for (int64_t m = 0; m < M; ++m) {
        if (rows == R) dense_rows<R, Vec>(X + m * K, W + n0 * K, K, out);
        else for (int64_t r = 0; r < rows; ++r) dense_rows<1, Vec>(X + m * K, W + (n0 + r) * K, K, out + r);
        for (int64_t r = 0; r < rows; ++r) Y[m * N + n0 + r] = out[r];
      }
    }
  });
}

void dense_gemm(const float* X, int64_t M, const float* W, int64_t N, int64_t K, float* Y) {
  dense_gemm_impl(X, M, W, N, K, Y);
}

#undef LOWBIT_KERNEL
#undef LOWBIT_UNROLL

}  // namespace LOWBIT_KERNEL_NS
}  // namespace lowbit

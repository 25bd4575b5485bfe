// The per-lane tile arithmetic every kernel over the repacked GPTQ layout (layout.hpp) shares: the
// magic-number dequantization of one lane's share of a 16 × 16 tile into mma.sync A fragments, the
// rebuilding of a tile's word from the packed widths, and the mma itself. Device code only; included
// by gemm.cu (the products) and dequant.cu (the dequantize-once path for large batches).
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>
#include <type_traits>

namespace lowbit {
namespace cuda {
namespace gptq_tile {

// (a & b) | c
__device__ __forceinline__ uint32_t and_or(uint32_t a, uint32_t b, uint32_t c) {
  uint32_t d;
  asm("lop3.b32 %0, %1, %2, %3, 0xEA;\n" : "=r"(d) : "r"(a), "r"(b), "r"(c));
  return d;
}
// (a & 0x33333333) | (b & 0xCCCCCCCC): two low bits from a, two high bits from b, per nibble
__device__ __forceinline__ uint32_t merge_nibbles(uint32_t a, uint32_t b) {
  uint32_t d;
  asm("lop3.b32 %0, %1, %2, %3, 0xE4;\n" : "=r"(d) : "r"(a), "r"(b), "r"(0x33333333u));
  return d;
}

template <class T> struct Dtype;
template <> struct Dtype<__half> {
  using T2 = __half2;
  static constexpr uint32_t magic = 0x64006400u;  // 1024.0 in both halves
  static constexpr float bias = 1024.f;
};
template <> struct Dtype<__nv_bfloat16> {
  using T2 = __nv_bfloat162;
  static constexpr uint32_t magic = 0x43004300u;  // 128.0 in both halves
  static constexpr float bias = 128.f;
};

template <class T2> __device__ __forceinline__ T2 as_t2(uint32_t u) { return *reinterpret_cast<T2*>(&u); }
template <class T2> __device__ __forceinline__ uint32_t as_u32(T2 v) { return *reinterpret_cast<uint32_t*>(&v); }

template <class T> __device__ __forceinline__ void mma(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1);
template <> __device__ __forceinline__ void mma<__half>(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}
template <>
__device__ __forceinline__ void mma<__nv_bfloat16>(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

template <class T> __device__ __forceinline__ T from_float(float v);
template <> __device__ __forceinline__ __half from_float<__half>(float v) { return __float2half_rn(v); }
template <> __device__ __forceinline__ __nv_bfloat16 from_float<__nv_bfloat16>(float v) { return __float2bfloat16_rn(v); }

// ---- dequantization of one lane's share of a 16 × 16 tile into the 4 A-fragment registers ----

// Per lane and 16-column tile: what turns the biased integers into weights. Row g of the tile uses
// index 0, row g + 8 index 1.
template <class T, int BITS, bool DEFER>
struct TileConsts {
  using T2 = typename Dtype<T>::T2;
  T2 sub[4];    // per register r: the constant subtracted after scaling by mult[r]
  T2 scale[2];  // inline scaling
  float scale_f[2];

  __device__ __forceinline__ void init(uint2 rec) {
    const __half s0 = __ushort_as_half((unsigned short)(rec.x & 0xffff));
    const __half s1 = __ushort_as_half((unsigned short)(rec.x >> 16));
    const float z0 = __half2float(__ushort_as_half((unsigned short)(rec.y & 0xffff)));
    const float z1 = __half2float(__ushort_as_half((unsigned short)(rec.y >> 16)));
    scale_f[0] = __half2float(s0);
    scale_f[1] = __half2float(s1);
    if constexpr (!DEFER) {
      scale[0] = as_t2<T2>(pack2(from_float<T>(scale_f[0])));
      scale[1] = as_t2<T2>(pack2(from_float<T>(scale_f[1])));
    }
#pragma unroll
    for (int r = 0; r < 4; ++r) {
      const float z = (r & 1) ? z1 : z0;
      sub[r] = as_t2<T2>(pack2(from_float<T>(Dtype<T>::bias / (float)multiplier(r) + z)));
    }
  }
  // fp16 reads some fields in place (scaled by a power of 2, undone by one fma); bf16 shifts them down.
  static __device__ __forceinline__ constexpr int multiplier(int r) {
    if constexpr (std::is_same<T, __half>::value) {
      if constexpr (BITS == 2) return 1 << (2 * r);
      else return (r & 1) ? 16 : 1;
    } else {
      return 1;
    }
  }
  static __device__ __forceinline__ uint32_t pack2(T v) {
    const uint16_t b = *reinterpret_cast<uint16_t*>(&v);
    return (uint32_t)b | ((uint32_t)b << 16);
  }
};

// The biased field r of the word holding a tile's elements (4- and 3-bit: nibble word; 2-bit: the
// tile's byte pair selected by `shift`).
template <class T, int BITS>
__device__ __forceinline__ uint32_t biased_field(uint32_t w, int r) {
  constexpr uint32_t magic = Dtype<T>::magic;
  if constexpr (BITS == 2) {
    if constexpr (std::is_same<T, __half>::value) return and_or(w, 0x00030003u << (2 * r), magic);
    else return and_or(w >> (2 * r), 0x00030003u, magic);
  } else {
    constexpr uint32_t lo = BITS == 4 ? 0x000f000fu : 0x00070007u;
    if constexpr (std::is_same<T, __half>::value) {
      const uint32_t src = (r >= 2) ? (w >> 8) : w;
      return and_or(src, (r & 1) ? (lo << 4) : lo, magic);
    } else {
      return and_or(w >> (4 * r), lo, magic);
    }
  }
}

template <class T, int BITS, bool DEFER>
__device__ __forceinline__ void dequant(uint32_t w, const TileConsts<T, BITS, DEFER>& c, uint32_t (&a)[4]) {
  using T2 = typename Dtype<T>::T2;
  using C = TileConsts<T, BITS, DEFER>;
#pragma unroll
  for (int r = 0; r < 4; ++r) {
    const T2 raw = as_t2<T2>(biased_field<T, BITS>(w, r));
    T2 v;
    if constexpr (std::is_same<T, __half>::value) {
      if (C::multiplier(r) == 1) v = __hsub2(raw, c.sub[r]);
      else v = __hfma2(raw, __float2half2_rn(1.f / (float)C::multiplier(r)), __hneg2(c.sub[r]));
    } else {
      v = __hsub2(raw, c.sub[r]);
    }
    if constexpr (!DEFER) v = __hmul2(v, c.scale[r & 1]);
    a[r] = as_u32(v);
  }
}

// ---- the folded form: bare codes into the mma, zero point and scale applied to sums ----
//
// For kernels whose every chunk lies in one group (groups of 128 or more): each weight enters the mma
// as its bare code, without a per-weight subtraction or scaling. fp16: the field masked in place is
// an fp16 subnormal, q·2^-24 (or μ·q·2^-24 when it sits μ = 4 or 16 times higher in its half-word),
// so there is no bias at all; bf16: the magic-number value 128 + q. The zero point (and bias) comes
// off a column's fp32 sum as (bias + μ·z)·Σx, through a second mma of a constant A (consts' zc) with
// the same X, and the scale (with 2^24/μ) multiplies the chunk's sum.
// Column g of a lane's tile always has μ = 1, column g + 8 μ = 16 (4/3-bit fp16), 4 (2-bit fp16) or
// 1 (bf16).
template <class T, int BITS>
struct FoldTile {
  static constexpr bool kHalf = std::is_same<T, __half>::value;
  static constexpr int mu_hi = kHalf ? (BITS == 2 ? 4 : 16) : 1;  // μ of column g + 8
  static constexpr float bias = kHalf ? 0.f : 128.f;
  static constexpr float unit = kHalf ? 5.9604644775390625e-08f : 1.f;  // value of code 1 in the mma: 2^-24 or 1

  // A fragment of tile word w (4/3-bit: the nibble word; 2-bit: the tile's byte pair at bits 0-7, 16-23).
  static __device__ __forceinline__ void fields(uint32_t w, uint32_t (&a)[4]) {
    if constexpr (kHalf) {
      if constexpr (BITS == 2) {
        const uint32_t w4 = w >> 4;
        a[0] = w & 0x00030003u, a[1] = w & 0x000c000cu, a[2] = w4 & 0x00030003u, a[3] = w4 & 0x000c000cu;
      } else {
        constexpr uint32_t lo = BITS == 4 ? 0x000f000fu : 0x00070007u;
        const uint32_t w8 = w >> 8;
        a[0] = w & lo, a[1] = w & (lo << 4), a[2] = w8 & lo, a[3] = w8 & (lo << 4);
      }
    } else {
      constexpr uint32_t magic = Dtype<T>::magic;
      constexpr int step = BITS == 2 ? 2 : 4;
      constexpr uint32_t lo = BITS == 4 ? 0x000f000fu : BITS == 3 ? 0x00070007u : 0x00030003u;
#pragma unroll
      for (int r = 0; r < 4; ++r) a[r] = and_or(w >> (step * r), lo, magic);
    }
  }
  // The constant A of the zero-point mma and the per-column factors of the chunk's sum, from the
  // lane's scale/zero record (s(g), s(g+8), z(g), z(g+8)).
  static __device__ __forceinline__ void consts(uint2 rec, uint32_t (&zc)[4], float (&scale)[2]) {
    const float s0 = __half2float(__ushort_as_half((unsigned short)(rec.x & 0xffff)));
    const float s1 = __half2float(__ushort_as_half((unsigned short)(rec.x >> 16)));
    const float z0 = __half2float(__ushort_as_half((unsigned short)(rec.y & 0xffff)));
    const float z1 = __half2float(__ushort_as_half((unsigned short)(rec.y >> 16)));
    const uint32_t c0 = TileConsts<T, BITS, true>::pack2(from_float<T>(-(bias + z0) * unit));
    const uint32_t c1 = TileConsts<T, BITS, true>::pack2(from_float<T>(-(bias + mu_hi * z1) * unit));
    zc[0] = c0, zc[1] = c1, zc[2] = c0, zc[3] = c1;
    scale[0] = s0 / unit;
    scale[1] = s1 / (unit * mu_hi);
  }
};

// A lane's weight words of one record (layout.hpp) from global memory, read once (streaming): rec
// is the record; 4/3-bit words 0-3 at rec + 16·lane, 4-bit words 4-7 at rec + 512 + 16·lane, 3-bit
// words 4-5 at rec + 512 + 8·lane; the words a width does not have are zero.
template <int BITS>
__device__ __forceinline__ void load_words(const uint8_t* rec, int lane, uint32_t (&w)[8]) {
  const uint4 w0 = __ldcs(reinterpret_cast<const uint4*>(rec + lane * 16));
  w[0] = w0.x, w[1] = w0.y, w[2] = w0.z, w[3] = w0.w;
  if constexpr (BITS == 4) {
    const uint4 w1 = __ldcs(reinterpret_cast<const uint4*>(rec + 512 + lane * 16));
    w[4] = w1.x, w[5] = w1.y, w[6] = w1.z, w[7] = w1.w;
  } else if constexpr (BITS == 3) {
    const uint2 w1 = __ldcs(reinterpret_cast<const uint2*>(rec + 512 + lane * 8));
    w[4] = w1.x, w[5] = w1.y, w[6] = 0, w[7] = 0;
  } else {
    w[4] = w[5] = w[6] = w[7] = 0;
  }
}

// Tile j's word: 4-bit word j; 3-bit the rebuilt nibble word; 2-bit word j/2, shifted to tile j's byte pair.
template <int BITS>
__device__ __forceinline__ uint32_t tile_word(const uint32_t (&w)[8], int j) {
  if constexpr (BITS == 4) {
    return w[j];
  } else if constexpr (BITS == 2) {
    return (j & 1) ? (w[j >> 1] >> 8) : w[j >> 1];
  } else {
    const uint32_t lo = w[j >> 1], hi = w[4 + (j >> 2)];
    switch (j & 3) {
      case 0: return merge_nibbles(lo, hi);
      case 1: return merge_nibbles(lo >> 2, hi >> 1);
      case 2: return merge_nibbles(lo, hi << 2);
      default: return merge_nibbles(lo >> 2, hi << 1);
    }
  }
}

}  // namespace gptq_tile
}  // namespace cuda
}  // namespace lowbit

// The one description of lowbit's weight formats, usable from host code and from CUDA device code
// (no exceptions, no std::string here; the throwing host helpers are in ../weight_format.hpp).
//
// A format is what a checkpoint stores for one linear layer; the TypeScript twin of this table is
// src/weights/formats.ts (test/native/weight-formats.test.ts holds the two together through the
// addon's weightFormats()). Adding a format = an entry in Format and kFormatNames, its view struct
// (like PackedMatrix for GPTQ) in LinearWeights (linear.hpp), one binding reader, and one operator
// per device (see docs/ARCHITECTURE.md, "Adding a weight format").
#pragma once

#include <cstdint>
#include <type_traits>

#if defined(__CUDACC__)
#define LOWBIT_HD __host__ __device__
#else
#define LOWBIT_HD
#endif

namespace lowbit {

// The order is LinearWeights' variant order (linear.hpp).
enum class Format : int {
  Dense = 0,  // f32 / f16 / bf16 [N, K]
  Gptq = 1,   // AutoGPTQ/GPTQModel "gptq" and "gptq_v2" (zero offset 1 / 0), docs/FORMATS.md
  Spqr = 2,   // SpQR: bilevel small-group codes + CSR fp16 outliers (native/core/spqr.hpp, docs/FORMATS.md)
};
inline constexpr int kFormatCount = 3;
inline constexpr const char* kFormatNames[kFormatCount] = {"dense", "gptq", "spqr"};

// SpQR's code widths (its bit streams hold any width; the sweep and the kernels take these).
inline constexpr int kSpqrBitWidths = 3;
inline constexpr int kSpqrBits[kSpqrBitWidths] = {2, 3, 4};

// GPTQ packs `values_per_unit` values of `bits` bits into `words_per_unit` int32 words, as one
// little-endian bit stream (3 bits: 32 values in 3 words, values straddle words).
struct PackUnit {
  int bits;
  int values_per_unit;
  int words_per_unit;
  LOWBIT_HD constexpr int maxq() const { return (1 << bits) - 1; }
};

// The GPTQ bit widths, in the order weightFormats() lists them.
inline constexpr int kGptqBitWidths = 4;

// Entry i of the table (i in [0, kGptqBitWidths)).
LOWBIT_HD constexpr PackUnit gptq_pack_unit_at(int i) {
  constexpr PackUnit table[kGptqBitWidths] = {
      {2, 16, 1},
      {3, 32, 3},
      {4, 8, 1},
      {8, 4, 1},
  };
  return table[i];
}

// The unit of a bit width; bits 0 when the width is not one of the table's (the host's
// weight_format() turns that into E_BITS).
LOWBIT_HD constexpr PackUnit gptq_pack_unit(int bits) {
  for (int i = 0; i < kGptqBitWidths; ++i)
    if (gptq_pack_unit_at(i).bits == bits) return gptq_pack_unit_at(i);
  return PackUnit{0, 0, 0};
}

LOWBIT_HD constexpr bool is_gptq_bits(int bits) { return gptq_pack_unit(bits).bits != 0; }

// int32 words that hold `count` values packed along one dimension (a partial last unit is padded).
// bits must be a table entry.
LOWBIT_HD constexpr int64_t gptq_packed_words(int bits, int64_t count) {
  const PackUnit u = gptq_pack_unit(bits);
  return (count + u.values_per_unit - 1) / u.values_per_unit * u.words_per_unit;
}

// Calls f(std::integral_constant<int, BITS>{}) for the table entry whose width is `bits` (kernels
// templated on the width dispatch through this instead of a switch of their own). Returns false
// when no entry has that width. Host code.
template <int I = 0, class F>
bool dispatch_gptq_bits(int bits, F&& f) {
  if constexpr (I == kGptqBitWidths) {
    (void)bits;
    (void)f;
    return false;
  } else {
    constexpr int kBits = gptq_pack_unit_at(I).bits;
    if (bits == kBits) {
      f(std::integral_constant<int, kBits>{});
      return true;
    }
    return dispatch_gptq_bits<I + 1>(bits, static_cast<F&&>(f));
  }
}

}  // namespace lowbit

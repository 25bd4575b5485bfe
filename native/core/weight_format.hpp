// The table of lowbit's packed weight formats. Adding a bit width touches this table and the
// kernels it names, nothing else. Layout: AutoGPTQ/GPTQModel "gptq" (see docs/FORMATS.md).
#pragma once

#include <cstdint>
#include <string>

#include "common.hpp"

namespace lowbit {

struct WeightFormat {
  int bits;
  int values_per_unit;  // values packed together along the packed dimension...
  int words_per_unit;   // ...into this many int32 words (3-bit: 32 values in 3 words)
  int maxq() const { return (1 << bits) - 1; }
};

inline constexpr WeightFormat kWeightFormats[] = {
    {2, 16, 1},
    {3, 32, 3},
    {4, 8, 1},
    {8, 4, 1},
};

inline const WeightFormat& weight_format(int bits) {
  for (const auto& f : kWeightFormats)
    if (f.bits == bits) return f;
  fail("E_BITS", "bits must be 2, 3, 4 or 8, got " + std::to_string(bits));
}

// int32 words needed to pack `count` values along the packed dimension (a partial last unit is padded).
inline int64_t packed_words(int bits, int64_t count) {
  const WeightFormat& f = weight_format(bits);
  return ceil_div(count, f.values_per_unit) * f.words_per_unit;
}

}  // namespace lowbit

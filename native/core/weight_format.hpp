// Host helpers over the weight-format table (weights/format.hpp): the checked lookups that throw
// E_BITS for a width the table does not have.
#pragma once

#include <cstdint>
#include <string>

#include "common.hpp"
#include "weights/format.hpp"

namespace lowbit {

using WeightFormat = PackUnit;

// The pack unit of a GPTQ bit width; E_BITS for a width outside the table.
inline WeightFormat weight_format(int bits) {
  const PackUnit u = gptq_pack_unit(bits);
  if (u.bits == 0) {
    std::string widths;
    for (int i = 0; i < kGptqBitWidths; ++i)
      widths += (i == 0 ? "" : i + 1 == kGptqBitWidths ? " or " : ", ") + std::to_string(gptq_pack_unit_at(i).bits);
    fail("E_BITS", "bits must be " + widths + ", got " + std::to_string(bits));
  }
  return u;
}

// int32 words needed to pack `count` values along the packed dimension; E_BITS for a bad width.
inline int64_t packed_words(int bits, int64_t count) {
  weight_format(bits);
  return gptq_packed_words(bits, count);
}

}  // namespace lowbit

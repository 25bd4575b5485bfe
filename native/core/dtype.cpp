#include "dtype.hpp"

namespace lowbit {

void convert(const void* src, DType from, void* dst, DType to, size_t n) {
  auto is_float = [](DType t) { return t == DType::F32 || t == DType::F16 || t == DType::BF16; };
  require(is_float(from) && is_float(to), "E_DTYPE",
          std::string("cannot convert ") + dtype_name(from) + " to " + dtype_name(to));
  if (from == to) {
    std::memcpy(dst, src, n * dtype_size(from));
    return;
  }
  // Through f32: every f16 and bf16 value is exact in f32.
  auto load = [&](size_t i) -> float {
    switch (from) {
      case DType::F16: return f16_to_f32(static_cast<const uint16_t*>(src)[i]);
      case DType::BF16: return bf16_to_f32(static_cast<const uint16_t*>(src)[i]);
      default: return static_cast<const float*>(src)[i];
    }
  };
  for (size_t i = 0; i < n; ++i) {
    const float v = load(i);
    switch (to) {
      case DType::F16: static_cast<uint16_t*>(dst)[i] = f32_to_f16(v); break;
      case DType::BF16: static_cast<uint16_t*>(dst)[i] = f32_to_bf16(v); break;
      default: static_cast<float*>(dst)[i] = v; break;
    }
  }
}

}  // namespace lowbit

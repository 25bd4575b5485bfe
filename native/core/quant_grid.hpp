// The affine quantization grid every method shares (RTN, GPTQ, SpQR): fitting scale and zero point
// to a group of weights, and quantizing against them. See shared METHODS.md, "Affine quantization".
#pragma once

#include <cmath>
#include <cstdint>

namespace lowbit {

struct GridOptions {
  int bits = 4;
  bool sym = false;
  bool mse = false;         // search shrunken ranges for the lowest ||w - q(w)||^p
  float mse_norm = 2.4f;    // p
  int mse_grid = 100;       // shrink steps
  float mse_maxshrink = 0.8f;
  // Smallest zero point an asymmetric grid may take. "gptq" v1 checkpoints store zero − 1, so they
  // cannot hold 0 (it reads back as 2^bits): writers of v1 pass 1, and a group whose zero would
  // round to 0 gets a grid widened to put its zero at 1 (see docs/FORMATS.md).
  int min_zero = 0;
};

struct Grid {
  float scale;  // rounded to fp16, as it will be stored
  int32_t zero;  // integer zero point in [0, maxq]
};

// Fits a grid to n weights at w[0], w[stride], ... (stride lets a column of a row-major matrix be fitted).
Grid fit_grid(const float* w, int64_t n, int64_t stride, const GridOptions& opt);

inline int32_t quantize_value(float w, const Grid& g, int maxq) {
  const float q = std::nearbyint(w / g.scale) + (float)g.zero;
  return q < 0.f ? 0 : (q > (float)maxq ? maxq : (int32_t)q);
}

inline float dequantize_value(int32_t q, const Grid& g) { return g.scale * (float)(q - g.zero); }

}  // namespace lowbit

// The affine quantization grid every method shares (RTN, GPTQ, SpQR): fitting scale and zero point
// to a group of weights, and quantizing against them. See shared METHODS.md, "Affine quantization".
// The per-value math (grid_from_range, quantize_value, dequantize_value) is host and device code:
// cuda/gptq.cu runs the same functions, so CPU and GPU give the same grids and codes.
#pragma once

#include <cmath>
#include <cstdint>

#if defined(__CUDACC__)
#include <cuda_fp16.h>
#endif

#include "dtype.hpp"
#include "weights/format.hpp"

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

// Products and sums in these functions are written so no compiler fuses them into an FMA (the GPU's
// would otherwise round differently from the CPU's): device code spells the rounding out.

// Scale from a range, rounded to the fp16 value the checkpoint will store (so quantizing against it
// and dequantizing from the file agree exactly). A degenerate range gets a tiny positive scale.
LOWBIT_HD inline float round_scale(float scale) {
  if (!(scale > 0.f)) scale = 1e-5f;  // all-equal (or all-zero) group; also catches NaN
#if defined(__CUDA_ARCH__)
  float s16 = __half2float(__float2half_rn(scale));
#else
  float s16 = f16_to_f32(f32_to_f16(scale));
#endif
  if (!(s16 > 0.f)) s16 = 5.9604645e-08f;  // smallest fp16 subnormal
  if (s16 > 65504.f) s16 = 65504.f;        // rounded up to infinity: the largest fp16
  return s16;
}

// The grid of a range [xmin, xmax] (which includes 0). std::max's semantics, on host and device.
LOWBIT_HD inline Grid grid_from_range(float xmin, float xmax, int maxq, bool sym, int min_zero) {
  auto larger = [](float a, float b) { return a < b ? b : a; };
  Grid g;
  if (sym) {
    const float amax = larger(-xmin, xmax);
    g.scale = round_scale((amax - -amax) / (float)maxq);
    g.zero = (maxq + 1) / 2;
  } else {
    g.scale = round_scale((xmax - xmin) / (float)maxq);
    const float z = rintf(-xmin / g.scale);
    g.zero = (int32_t)(larger(z, 0.f) < (float)maxq ? larger(z, 0.f) : (float)maxq);
    if (g.zero < min_zero) {
      // Put the zero at min_zero and widen the step until the grid still covers [xmin, xmax]:
      // −min_zero·s <= xmin and (maxq − min_zero)·s >= xmax.
      g.scale = round_scale(larger(xmax / (float)(maxq - min_zero), -xmin / (float)min_zero));
      g.zero = min_zero;
    }
  }
  return g;
}

LOWBIT_HD inline int32_t quantize_value(float w, const Grid& g, int maxq) {
  const float q = rintf(w / g.scale) + (float)g.zero;
  return q < 0.f ? 0 : (q > (float)maxq ? maxq : (int32_t)q);
}

LOWBIT_HD inline float dequantize_value(int32_t q, const Grid& g) {
#if defined(__CUDA_ARCH__)
  return __fmul_rn(g.scale, (float)(q - g.zero));
#else
  return g.scale * (float)(q - g.zero);
#endif
}

}  // namespace lowbit

#include "quant_grid.hpp"

#include <algorithm>
#include <limits>

#include "dtype.hpp"
#include "weight_format.hpp"

namespace lowbit {
namespace {

// Scale from a range, rounded to the fp16 value the checkpoint will store (so quantizing against it
// and dequantizing from the file agree exactly). A degenerate range gets a tiny positive scale.
float round_scale(float scale) {
  if (!(scale > 0.f)) scale = 1e-5f;  // all-equal (or all-zero) group; also catches NaN
  float s16 = f16_to_f32(f32_to_f16(scale));
  if (!(s16 > 0.f)) s16 = 5.9604645e-08f;  // smallest fp16 subnormal
  if (std::isinf(s16)) s16 = 65504.f;
  return s16;
}

float grid_scale(float xmin, float xmax, int maxq) { return round_scale((xmax - xmin) / (float)maxq); }

Grid grid_from_range(float xmin, float xmax, int maxq, bool sym, int min_zero) {
  Grid g;
  if (sym) {
    const float amax = std::max(-xmin, xmax);
    g.scale = grid_scale(-amax, amax, maxq);
    g.zero = (maxq + 1) / 2;
  } else {
    g.scale = grid_scale(xmin, xmax, maxq);
    const float z = std::nearbyint(-xmin / g.scale);
    g.zero = (int32_t)std::min<float>(std::max<float>(z, 0.f), (float)maxq);
    if (g.zero < min_zero) {
      // Put the zero at min_zero and widen the step until the grid still covers [xmin, xmax]:
      // −min_zero·s <= xmin and (maxq − min_zero)·s >= xmax.
      g.scale = round_scale(std::max(xmax / (float)(maxq - min_zero), -xmin / (float)min_zero));
      g.zero = min_zero;
    }
  }
  return g;
}

}  // namespace

Grid fit_grid(const float* w, int64_t n, int64_t stride, const GridOptions& opt) {
  const int maxq = weight_format(opt.bits).maxq();
  float xmin = 0.f, xmax = 0.f;  // the range always includes 0
  for (int64_t i = 0; i < n; ++i) {
    const float v = w[i * stride];
    xmin = std::min(xmin, v);
    xmax = std::max(xmax, v);
  }
  Grid best = grid_from_range(xmin, xmax, maxq, opt.sym, opt.min_zero);
  if (!opt.mse) return best;

  // Shrink the range step by step, keeping the grid with the lowest sum |w - q(w)|^p.
  auto err_of = [&](const Grid& g) {
    double e = 0;
    for (int64_t i = 0; i < n; ++i) {
      const float v = w[i * stride];
      const float d = dequantize_value(quantize_value(v, g, maxq), g) - v;
      e += std::pow((double)std::fabs(d), (double)opt.mse_norm);
    }
    return e;
  };
  double best_err = err_of(best);
  // As the reference: shrink factors p = 1 − i/grid for i < maxshrink·grid (i = 0 is `best`).
  const int steps = (int)(opt.mse_maxshrink * (float)opt.mse_grid);
  for (int i = 1; i < steps; ++i) {
    const float p = 1.f - (float)i / (float)opt.mse_grid;
    const Grid g = grid_from_range(p * xmin, p * xmax, maxq, opt.sym, opt.min_zero);
    const double e = err_of(g);
    if (e < best_err) {
      best_err = e;
      best = g;
    }
  }
  return best;
}

}  // namespace lowbit

#include "quant_grid.hpp"

#include <algorithm>

#include "weight_format.hpp"

namespace lowbit {

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

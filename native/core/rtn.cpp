#include "rtn.hpp"

#include <algorithm>

#include "thread_pool.hpp"
#include "weight_format.hpp"

namespace lowbit {

void rtn_quantize(const float* W, int64_t N, int64_t K, int64_t group_size, const GridOptions& opt, uint8_t* q,
                  float* scales, int32_t* zeros) {
  const int maxq = weight_format(opt.bits).maxq();
  const int64_t gs = effective_group_size(K, group_size);
  const int64_t G = group_count(K, group_size);
  global_pool()->parallel_for(N, 16, [&](int64_t n0, int64_t n1) {
    for (int64_t n = n0; n < n1; ++n) {
      const float* row = W + n * K;
      for (int64_t g = 0; g < G; ++g) {
        const int64_t k0 = g * gs, k1 = std::min(K, k0 + gs);
        const Grid grid = fit_grid(row + k0, k1 - k0, 1, opt);
        scales[g * N + n] = grid.scale;
        zeros[g * N + n] = grid.zero;
        for (int64_t k = k0; k < k1; ++k) q[n * K + k] = (uint8_t)quantize_value(row[k], grid, maxq);
      }
    }
  });
}

}  // namespace lowbit

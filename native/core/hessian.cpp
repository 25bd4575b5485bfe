#include "hessian.hpp"

#include <cmath>
#include <string>

#include "common.hpp"
#include "linalg.hpp"
#include "thread_pool.hpp"

namespace lowbit {

void hessian_add_batch(float* H, int64_t K, int64_t n_seen, const float* X, int64_t m) {
  require(K > 0 && m >= 0 && n_seen >= 0, "E_SHAPE", "hessian_add_batch: bad sizes");
  if (m == 0) return;
  for (int64_t i = 0; i < m * K; ++i)
    if (!std::isfinite(X[i]))
      fail("E_NAN", "calibration inputs hold " + std::string(std::isnan(X[i]) ? "NaN" : "infinity") + " at token " +
                        std::to_string(i / K) + ", feature " + std::to_string(i % K));
  const double total = (double)n_seen + (double)m;
  const float keep = (float)((double)n_seen / total);  // weight of the mean so far
  const float alpha = (float)(2.0 / total);            // weight of each new x x^T
  // Scale the lower triangle, add the new tokens' outer products to it, then mirror it upwards.
  global_pool()->parallel_for(K, 32, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r)
      for (int64_t c = 0; c <= r; ++c) H[r * K + c] *= keep;
  });
  syrk_lower_tn<float>(K, m, alpha, X, K, H, K);
  global_pool()->parallel_for(K, 32, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r)
      for (int64_t c = r + 1; c < K; ++c) H[r * K + c] = H[c * K + r];
  });
}

HessianAccumulator::HessianAccumulator(int64_t K) : K_(K) {
  require(K > 0, "E_SHAPE", "a Hessian needs a positive input dimension, got " + std::to_string(K));
  H_.assign((size_t)(K * K), 0.f);
}

void HessianAccumulator::add_batch(const float* X, int64_t m) {
  hessian_add_batch(H_.data(), K_, samples_, X, m);
  samples_ += m;
}

void HessianAccumulator::reset() {
  std::fill(H_.begin(), H_.end(), 0.f);
  samples_ = 0;
}

}  // namespace lowbit

// The Hessian of GPTQ's layer objective, H = (2/n) sum_t x_t x_t^T over the n calibration tokens seen
// so far, accumulated batch by batch as a running mean (so it never grows with n).
//
// Precision: H is stored and accumulated in fp32, like the reference implementation. A double K x K
// matrix costs 8 K^2 bytes (0.97 GB at K = 11008), and the scheduler keeps one Hessian per distinct
// input of a transformer block alive at once (q/k/v share one; o, gate/up and down have their own),
// so fp32 halves the largest memory cost of quantization. The rounding error it brings (~1e-6
// relative after hundreds of batches: each batch's product is summed over at most a few thousand
// tokens in fp32, then blended into the mean) sits four orders of magnitude below the 1% dampening
// added to the diagonal. Where precision does matter, in the factorization of H (condition numbers
// up to ~1e6), gptq.cpp works in double.
#pragma once

#include <cstdint>
#include <vector>

namespace lowbit {

// H [K, K] (full symmetric) <- H * n/(n+m) + (2/(n+m)) X^T X, where X is [m, K] row-major (one token's
// input per row) and n the tokens already folded into H. Multithreaded on global_pool().
// Throws E_NAN if X holds NaN or infinity (H is then left unchanged).
void hessian_add_batch(float* H, int64_t K, int64_t n_seen, const float* X, int64_t m);

class HessianAccumulator {
 public:
  explicit HessianAccumulator(int64_t K);  // zero H; throws E_SHAPE for K <= 0

  // Folds m more tokens (X [m, K] row-major) into the running mean. Not thread-safe: callers serialize.
  void add_batch(const float* X, int64_t m);

  int64_t K() const { return K_; }
  int64_t samples() const { return samples_; }  // tokens seen
  const float* data() const { return H_.data(); }
  float* data() { return H_.data(); }
  void reset();

 private:
  int64_t K_;
  int64_t samples_ = 0;
  std::vector<float> H_;
};

}  // namespace lowbit

// X prepared once per product for the int8 kernels of both layouts (repack.hpp's GPTQ panels and
// spqr_panels.hpp's SpQR panels): each row gathered into the padded input order and quantized per
// segment, at the active SIMD level. Internal to cpu_gptq (repack.cpp and spqr_panels.cpp).
#pragma once

#include <cstdint>
#include <vector>

#include "../packed_gemm.hpp"
#include "../thread_pool.hpp"
#include "kernels.hpp"

namespace lowbit {
namespace cpu_gptq {

// The storage behind an Activations view. Grown, never shrunk.
struct ActivationBuffers {
  std::vector<int8_t> xq;
  std::vector<float> dx, xsum, xf, gsum, xt;
  Activations view;
};

// Decode-sized calls (up to 16 rows) use the calling thread's buffers, so a product allocates
// nothing; larger ones use `fresh`, so a long prefill does not pin its activations to the thread.
inline ActivationBuffers& buffers_for(int64_t M, ActivationBuffers& fresh) {
  constexpr int64_t kReusedRows = 16;
  thread_local ActivationBuffers reused;
  return M <= kReusedRows ? reused : fresh;
}

template <class T>
void fit(std::vector<T>& v, int64_t n) {
  if ((int64_t)v.size() < n) v.resize((size_t)n);
}

// Starts P's view afresh for M rows of W's padded inputs (every pointer null until filled).
template <class Weights>
void reset_view(const Weights& W, int64_t M, ActivationBuffers& P) {
  P.view = Activations{};
  P.view.M = M;
  P.view.padded_k = W.padded_k();
  P.view.segments = (int64_t)W.segments.size();
}

// Quantizes the M rows of X into P (xq, dx, xsum; the view's other pointers left null), in blocks of
// rows over the thread pool when M > 1; after_rows(m0, m1) runs on each block once it is quantized
// (SpQR adds its group sums there, while the rows are in cache).
template <class Weights, class AfterRows>
void quantize_activations(const Weights& W, const float* X, int64_t M, SimdLevel level, ActivationBuffers& P,
                          AfterRows&& after_rows) {
  const int64_t Kp = W.padded_k(), S = (int64_t)W.segments.size();
  fit(P.xq, M * Kp);
  fit(P.dx, M * S);
  fit(P.xsum, M * S);
  reset_view(W, M, P);
  auto rows = [&](int64_t m0, int64_t m1) {
    switch (level) {
      case SimdLevel::Avx512: kernels_avx512::quantize_rows(W, X, m0, m1, P.view, P.xq.data(), P.dx.data(), P.xsum.data()); break;
      case SimdLevel::Avx2: kernels_avx2::quantize_rows(W, X, m0, m1, P.view, P.xq.data(), P.dx.data(), P.xsum.data()); break;
      default: kernels_scalar::quantize_rows(W, X, m0, m1, P.view, P.xq.data(), P.dx.data(), P.xsum.data()); break;
    }
    after_rows(m0, m1);
  };
  if (M == 1) rows(0, 1);  // a few microseconds: not worth waking the pool
  else global_pool()->parallel_for(M, 4, rows);
  P.view.xq = P.xq.data();
  P.view.dx = P.dx.data();
  P.view.xsum = P.xsum.data();
}

}  // namespace cpu_gptq
}  // namespace lowbit

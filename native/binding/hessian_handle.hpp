// The native side of a JavaScript Hessian handle (hessianCreate in gptq.cpp), shared with the model
// binding, whose calibration passes fold captures straight into Hessians.
#pragma once

#include <napi.h>

#include <memory>
#include <mutex>

#include "../../cuda/cuda_api.hpp"
#include "../core/common.hpp"
#include "../core/hessian.hpp"

namespace lowbit {
namespace binding {

// A Hessian accumulator owned by a JavaScript handle ({ [External] }): in host memory (acc) or on a
// CUDA device (dev). The mutex serializes batches (each runs on a libuv worker) and reads; after
// hessianFree both are null and later use is E_CLOSED.
struct HessianHolder {
  std::mutex mutex;
  std::unique_ptr<HessianAccumulator> acc;
  std::unique_ptr<cuda::HessianAccumulatorDevice> dev;
  int64_t K = 0;
  int64_t reported_bytes = 0;  // external memory reported to V8 (host accumulators only)

  void require_open() const { require(acc || dev, "E_CLOSED", "the Hessian accumulator was freed"); }
  int64_t samples() const { return acc ? acc->samples() : dev->samples(); }
};

using HessianPtr = std::shared_ptr<HessianHolder>;

// The holder behind a handle made by hessianCreate (E_ARGUMENT for anything else).
HessianPtr hessian_arg(const Napi::Value& v);

}  // namespace binding
}  // namespace lowbit

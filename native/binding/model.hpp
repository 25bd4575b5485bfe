// Access to a NativeModel's backend for other binding files (e.g. gptq.cpp running a block with its
// Hessian accumulators as the capture callback), without going through JavaScript for activations.
#pragma once

#include <napi.h>

#include <functional>
#include <memory>

#include "../core/model/backend.hpp"

namespace lowbit {
namespace binding {

struct ModelHandle;

// The model behind a NativeModel object; throws E_ARGUMENT when `v` is not one. Keep the returned
// pointer in your work lambda: it stays valid (closed or not) for as long as you hold it.
std::shared_ptr<ModelHandle> model_handle(const Napi::Value& v);

// Call from a worker thread (inside PromiseWorker's work): runs fn with the model's backend while
// holding the model's lock, so it never overlaps another call on the same model. E_CLOSED after close().
void with_backend(ModelHandle& handle, const std::function<void(model::LlamaBackend&)>& fn);

}  // namespace binding
}  // namespace lowbit

// The forward pass: bindings for the model (filled in by the forward-pass work).
#include "napi_util.hpp"

namespace lowbit {
namespace binding {

void InitModel(Napi::Env, Napi::Object) {}

}  // namespace binding
}  // namespace lowbit

// GPTQ: bindings for Hessian accumulation and the quantization sweep (filled in by the GPTQ work).
#include "napi_util.hpp"

namespace lowbit {
namespace binding {

void InitGptq(Napi::Env, Napi::Object) {}

}  // namespace binding
}  // namespace lowbit

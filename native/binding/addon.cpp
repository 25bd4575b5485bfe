// The addon's entry point: each binding file adds its functions to the exports.
#include <napi.h>

#include "napi_util.hpp"

namespace {
Napi::Object Init(Napi::Env env, Napi::Object exports) {
  lowbit::binding::InitInfo(env, exports);
  lowbit::binding::InitQuant(env, exports);
  lowbit::binding::InitModel(env, exports);
  lowbit::binding::InitGptq(env, exports);
  lowbit::binding::InitSpqr(env, exports);
  lowbit::binding::InitLinear(env, exports);
  lowbit::binding::InitCpuGptq(env, exports);
  return exports;
}
}  // namespace

NODE_API_MODULE(lowbit, Init)

// Build and machine facts: version, source hash, SIMD level, threads, CUDA devices.
#include "../../cuda/cuda_api.hpp"
#include "../core/packed_gemm.hpp"
#include "../core/thread_pool.hpp"
#include "napi_util.hpp"

#ifndef LOWBIT_SOURCE_HASH
#define LOWBIT_SOURCE_HASH "unknown"
#endif
#ifndef LOWBIT_BUILD_SYSTEM
#define LOWBIT_BUILD_SYSTEM "unknown"
#endif
#ifndef LOWBIT_CUDA_ARCHS
#define LOWBIT_CUDA_ARCHS ""
#endif

namespace lowbit {
namespace binding {
namespace {

Napi::Value BuildInfo(const Napi::CallbackInfo& info) {
  return guarded(info, [&]() -> Napi::Value {
    Napi::Env env = info.Env();
    Napi::Object o = Napi::Object::New(env);
    o.Set("sourceHash", LOWBIT_SOURCE_HASH);
    o.Set("buildSystem", LOWBIT_BUILD_SYSTEM);
    o.Set("cuda", cuda::compiled());
    o.Set("cudaArchs", LOWBIT_CUDA_ARCHS);
    o.Set("simd", simd_name(detected_simd()));
    o.Set("activeSimd", simd_name(active_simd()));
    o.Set("threads", global_pool()->size());
    o.Set("hardwareThreads", hardware_threads());
    return o;
  });
}

Napi::Value SetThreads(const Napi::CallbackInfo& info) {
  return guarded(info, [&]() -> Napi::Value {
    const int64_t n = integer(info[0], "threads");
    require(n >= 0 && n <= 1024, "E_ARGUMENT", "threads must be in [0, 1024] (0: one per hardware thread)");
    set_global_threads((int)n);
    return Napi::Number::New(info.Env(), global_pool()->size());
  });
}

Napi::Value ForceSimd(const Napi::CallbackInfo& info) {
  return guarded(info, [&]() -> Napi::Value {
    const std::string level = info[0].IsString() ? info[0].As<Napi::String>().Utf8Value() : "";
    if (level == "scalar") force_simd(SimdLevel::Scalar);
    else if (level == "avx2") force_simd(SimdLevel::Avx2);
    else if (level == "avx512" || level == "auto") force_simd(SimdLevel::Avx512);
    else fail("E_ARGUMENT", "simd level must be 'scalar', 'avx2', 'avx512' or 'auto'");
    return Napi::String::New(info.Env(), simd_name(active_simd()));
  });
}

Napi::Value CudaDevices(const Napi::CallbackInfo& info) {
  return guarded(info, [&]() -> Napi::Value {
    Napi::Env env = info.Env();
    std::string why;
    const auto list = cuda::devices(&why);
    Napi::Object result = Napi::Object::New(env);
    Napi::Array arr = Napi::Array::New(env, list.size());
    for (size_t i = 0; i < list.size(); ++i) {
      Napi::Object d = Napi::Object::New(env);
      d.Set("index", list[i].index);
      d.Set("name", list[i].name);
      d.Set("computeCapability", std::to_string(list[i].major) + "." + std::to_string(list[i].minor));
      d.Set("multiprocessors", list[i].multiprocessors);
      d.Set("totalMemory", (double)list[i].total_memory);
      arr.Set((uint32_t)i, d);
    }
    result.Set("devices", arr);
    result.Set("reason", why);
    return result;
  });
}

}  // namespace

void InitInfo(Napi::Env env, Napi::Object exports) {
  exports.Set("buildInfo", Napi::Function::New(env, BuildInfo));
  exports.Set("setThreads", Napi::Function::New(env, SetThreads));
  exports.Set("forceSimd", Napi::Function::New(env, ForceSimd));
  exports.Set("cudaDevices", Napi::Function::New(env, CudaDevices));
}

}  // namespace binding
}  // namespace lowbit

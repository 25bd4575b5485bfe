// The repacked CPU GPTQ operator as a JavaScript handle (until the weight-format seam's prepared
// linears take it over): cpuGptqPrepare repacks once, cpuGptqGemm runs products on the handle.
// Also the streaming-read ceiling the CPU benchmarks compare against.
#include <memory>
#include <string>

#include "../core/cpu_gptq/linear_op.hpp"
#include "../core/cpu_gptq/repack.hpp"
#include "../core/packed_gemm.hpp"
#include "../core/stream_read.hpp"
#include "napi_util.hpp"

namespace lowbit {
namespace binding {
namespace {

using WeightsPtr = std::shared_ptr<const cpu_gptq::CpuGptqWeights>;
constexpr const char* kHandleKey = "__lowbitCpuGptq";

// len ≥ rows · cols, without forming the product (it could overflow).
void check_rows(int64_t len, int64_t rows, int64_t cols, const char* name) {
  require(rows >= 1 && cols >= 1 && rows <= len / cols, "E_BUFFER",
          std::string(name) + " holds " + std::to_string(len) + " elements, needs " + std::to_string(rows) + " x " +
              std::to_string(cols));
}

WeightsPtr weights_arg(const Napi::Value& v) {
  if (!v.IsObject()) throw CoreError("E_ARGUMENT", "expected a handle from cpuGptqPrepare");
  const Napi::Value ext = v.As<Napi::Object>().Get(kHandleKey);
  if (!ext.IsExternal()) throw CoreError("E_ARGUMENT", "expected a handle from cpuGptqPrepare");
  return *ext.As<Napi::External<WeightsPtr>>().Data();
}

// The JavaScript handle { N, K, bits, bytes } owning one reference to the weights.
Napi::Object make_handle(Napi::Env env, WeightsPtr weights) {
  const int64_t bytes = weights->bytes();
  Napi::MemoryManagement::AdjustExternalMemory(env, bytes);
  auto ext = Napi::External<WeightsPtr>::New(env, new WeightsPtr(weights), [bytes](Napi::Env env, WeightsPtr* p) {
    Napi::MemoryManagement::AdjustExternalMemory(env, -bytes);
    delete p;
  });
  Napi::Object handle = Napi::Object::New(env);
  handle.Set(kHandleKey, ext);
  handle.Set("N", Napi::Number::New(env, (double)weights->N));
  handle.Set("K", Napi::Number::New(env, (double)weights->K));
  handle.Set("bits", Napi::Number::New(env, weights->bits));
  handle.Set("bytes", Napi::Number::New(env, (double)bytes));
  return handle;
}

// cpuGptqPrepare(W: packed) -> handle { N, K, bits, bytes }
Napi::Value CpuGptqPrepare(const Napi::CallbackInfo& info) {
  return guarded(info, [&]() -> Napi::Value {
    CallBuffers bufs(false);  // synchronous: repack reads the caller's arrays and copies what it keeps
    const PackedMatrix W = packed_matrix_arg(object_arg(info, 0, "W"), bufs);
    return make_handle(info.Env(), std::make_shared<const cpu_gptq::CpuGptqWeights>(cpu_gptq::repack(W)));
  });
}

// cpuGptqCopy(handle) -> a new handle on a deep copy of the weights (benchmarks: rotate past the cache)
Napi::Value CpuGptqCopy(const Napi::CallbackInfo& info) {
  return guarded(info, [&]() -> Napi::Value {
    const WeightsPtr W = weights_arg(info[0]);
    return make_handle(info.Env(), std::make_shared<const cpu_gptq::CpuGptqWeights>(cpu_gptq::copy_of(*W)));
  });
}

// cpuGptqGemmSync(handle, X [M*K], M, Y [M*N], exact = false) -> name of the kernel family that ran
Napi::Value CpuGptqGemmSync(const Napi::CallbackInfo& info) {
  return guarded(info, [&]() -> Napi::Value {
    const WeightsPtr W = weights_arg(info[0]);
    const auto X = typed_array<float>(info[1], "X");
    const int64_t M = integer(info[2], "M");
    const auto Y = typed_array<float>(info[3], "Y");
    cpu_gptq::Options options;
    options.exact_activations = info.Length() > 4 && !info[4].IsUndefined() && boolean(info[4], "exact");
    require(M >= 1, "E_SHAPE", "M must be at least 1");
    check_rows(X.length, M, W->K, "X");
    check_rows(Y.length, M, W->N, "Y");
    return Napi::String::New(info.Env(), cpu_gptq::gemm(*W, X.data, M, Y.data, options));
  });
}

// streamReadBandwidth(bytes, threads, runs) -> bytes/s (median)
Napi::Value StreamReadBandwidth(const Napi::CallbackInfo& info) {
  return guarded(info, [&]() -> Napi::Value {
    const int64_t bytes = integer(info[0], "bytes");
    const int64_t threads = integer(info[1], "threads"), runs = integer(info[2], "runs");
    require(threads >= 1 && threads <= 1024 && runs >= 1 && runs <= 1000, "E_ARGUMENT", "threads in [1, 1024], runs in [1, 1000]");
    return Napi::Number::New(info.Env(), stream_read_bandwidth(bytes, (int)threads, (int)runs));
  });
}

// cpuGptqSetPrefetch(near, far, scales?) -> previous { near, far, scales } (KiB, KiB, segments ahead;
// benchmarks compare settings)
Napi::Value CpuGptqSetPrefetch(const Napi::CallbackInfo& info) {
  return guarded(info, [&]() -> Napi::Value {
    const cpu_gptq::Prefetch before = cpu_gptq::prefetch();
    const int64_t l1 = integer(info[0], "near"), l2 = integer(info[1], "far");
    const int64_t sc = info.Length() > 2 && !info[2].IsUndefined() ? integer(info[2], "scales") : before.scale_segments;
    const auto ok = [](int64_t v) { return v >= 0 && v <= 64; };
    require(ok(l1) && ok(l2) && ok(sc), "E_ARGUMENT", "near, far and scales must be in [0, 64]");
    cpu_gptq::Prefetch p;
    p.near_kib = (int)l1;
    p.far_kib = (int)l2;
    p.scale_segments = (int)sc;
    cpu_gptq::set_prefetch(p);
    Napi::Object o = Napi::Object::New(info.Env());
    o.Set("near", Napi::Number::New(info.Env(), before.near_kib));
    o.Set("far", Napi::Number::New(info.Env(), before.far_kib));
    o.Set("scales", Napi::Number::New(info.Env(), before.scale_segments));
    return o;
  });
}

using ReaderPtr = std::shared_ptr<const StreamReader>;
constexpr const char* kReaderKey = "__lowbitStreamReader";

// streamReader(bytes) -> reader { bytes }: a filled buffer to time slices of (streamReadSeconds)
Napi::Value StreamReaderNew(const Napi::CallbackInfo& info) {
  return guarded(info, [&]() -> Napi::Value {
    const int64_t bytes = integer(info[0], "bytes");
    ReaderPtr reader = std::make_shared<const StreamReader>(bytes);
    Napi::Env env = info.Env();
    Napi::MemoryManagement::AdjustExternalMemory(env, bytes);
    auto ext = Napi::External<ReaderPtr>::New(env, new ReaderPtr(reader), [bytes](Napi::Env env, ReaderPtr* p) {
      Napi::MemoryManagement::AdjustExternalMemory(env, -bytes);
      delete p;
    });
    Napi::Object o = Napi::Object::New(env);
    o.Set(kReaderKey, ext);
    o.Set("bytes", Napi::Number::New(env, (double)bytes));
    return o;
  });
}

// streamReadSeconds(reader, offset, bytes, threads) -> seconds of one pass over that slice
Napi::Value StreamReadSeconds(const Napi::CallbackInfo& info) {
  return guarded(info, [&]() -> Napi::Value {
    const Napi::Value ext = info[0].IsObject() ? info[0].As<Napi::Object>().Get(kReaderKey) : info.Env().Undefined();
    if (!ext.IsExternal()) throw CoreError("E_ARGUMENT", "expected a reader from streamReader");
    const ReaderPtr reader = *ext.As<Napi::External<ReaderPtr>>().Data();
    const int64_t offset = integer(info[1], "offset"), bytes = integer(info[2], "bytes");
    const int64_t threads = integer(info[3], "threads");
    require(threads >= 1 && threads <= 1024, "E_ARGUMENT", "threads in [1, 1024]");
    return Napi::Number::New(info.Env(), reader->read_seconds(offset, bytes, (int)threads));
  });
}

// lastPackedGemmSimd() -> the SIMD level the last packedGemm ran at ('scalar' | 'avx2' | 'avx512')
Napi::Value LastPackedGemmSimd(const Napi::CallbackInfo& info) {
  return Napi::String::New(info.Env(), simd_name(last_packed_gemm_level()));
}

// cpuGptqInt8Stats() -> {products, lastKernel, spqrProducts, spqrLastKernel}: products run by
// gptq-int8 (spqr-int8) linears (any thread) and the kernel family the latest ran ('avx512-vnni',
// 'avx2', 'scalar', ...; 'none' before the first)
Napi::Value CpuGptqInt8Stats(const Napi::CallbackInfo& info) {
  const cpu_gptq::Int8LinearStats s = cpu_gptq::int8_linear_stats();
  Napi::Object o = Napi::Object::New(info.Env());
  o.Set("products", Napi::Number::New(info.Env(), (double)s.products));
  o.Set("lastKernel", Napi::String::New(info.Env(), s.last_kernel));
  o.Set("spqrProducts", Napi::Number::New(info.Env(), (double)s.spqr_products));
  o.Set("spqrLastKernel", Napi::String::New(info.Env(), s.spqr_last_kernel));
  return o;
}

}  // namespace

void InitCpuGptq(Napi::Env env, Napi::Object exports) {
  exports.Set("cpuGptqPrepare", Napi::Function::New(env, CpuGptqPrepare));
  exports.Set("cpuGptqSetPrefetch", Napi::Function::New(env, CpuGptqSetPrefetch));
  exports.Set("cpuGptqCopy", Napi::Function::New(env, CpuGptqCopy));
  exports.Set("streamReader", Napi::Function::New(env, StreamReaderNew));
  exports.Set("streamReadSeconds", Napi::Function::New(env, StreamReadSeconds));
  exports.Set("cpuGptqGemmSync", Napi::Function::New(env, CpuGptqGemmSync));
  exports.Set("lastPackedGemmSimd", Napi::Function::New(env, LastPackedGemmSimd));
  exports.Set("cpuGptqInt8Stats", Napi::Function::New(env, CpuGptqInt8Stats));
  exports.Set("streamReadBandwidth", Napi::Function::New(env, StreamReadBandwidth));
}

}  // namespace binding
}  // namespace lowbit

// Glue shared by every binding file: argument checks that turn into typed JavaScript errors,
// typed-array views, and PromiseWorker, which runs heavy work off the event loop.
// No math lives here or anywhere in native/binding.
#pragma once

#include <napi.h>

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "../core/common.hpp"

namespace lowbit {
namespace binding {

// A JavaScript Error carrying `code` (src/native.ts re-throws it as a LowbitError).
inline Napi::Error coded_error(Napi::Env env, const char* code, const std::string& message) {
  Napi::Error err = Napi::Error::New(env, message);
  err.Set("code", Napi::String::New(env, code));
  return err;
}

// Runs a synchronous binding body, converting core errors into coded JavaScript errors.
template <class F>
Napi::Value guarded(const Napi::CallbackInfo& info, F&& body) {
  try {
    return body();
  } catch (const Napi::Error&) {
    throw;
  } catch (const CoreError& e) {
    throw coded_error(info.Env(), e.code(), e.what());
  } catch (const std::bad_alloc&) {
    throw coded_error(info.Env(), "E_MEMORY_BUDGET", "out of memory");
  } catch (const std::exception& e) {
    throw coded_error(info.Env(), "E_INTERNAL", e.what());
  }
}

// A view of a typed array argument of element type T, checked for kind; the length is in elements.
template <class T>
struct Span {
  T* data = nullptr;
  int64_t length = 0;
};

template <class T>
constexpr napi_typedarray_type typed_array_kind();
template <> constexpr napi_typedarray_type typed_array_kind<float>() { return napi_float32_array; }
template <> constexpr napi_typedarray_type typed_array_kind<double>() { return napi_float64_array; }
template <> constexpr napi_typedarray_type typed_array_kind<int32_t>() { return napi_int32_array; }
template <> constexpr napi_typedarray_type typed_array_kind<uint32_t>() { return napi_uint32_array; }
template <> constexpr napi_typedarray_type typed_array_kind<uint16_t>() { return napi_uint16_array; }
template <> constexpr napi_typedarray_type typed_array_kind<uint8_t>() { return napi_uint8_array; }

template <class T>
Span<T> typed_array(const Napi::Value& v, const char* name) {
  if (!v.IsTypedArray() || v.As<Napi::TypedArray>().TypedArrayType() != typed_array_kind<T>())
    throw CoreError("E_DTYPE", std::string(name) + " must be a typed array of the expected element type");
  auto arr = v.As<Napi::TypedArray>();
  Span<T> s;
  s.data = reinterpret_cast<T*>(static_cast<uint8_t*>(arr.ArrayBuffer().Data()) + arr.ByteOffset());
  s.length = (int64_t)arr.ElementLength();
  return s;
}

template <class T>
Span<T> optional_typed_array(const Napi::Value& v, const char* name) {
  if (v.IsUndefined() || v.IsNull()) return {};
  return typed_array<T>(v, name);
}

inline int64_t integer(const Napi::Value& v, const char* name) {
  if (!v.IsNumber()) throw CoreError("E_ARGUMENT", std::string(name) + " must be a number");
  const double d = v.As<Napi::Number>().DoubleValue();
  if (d != (double)(int64_t)d) throw CoreError("E_ARGUMENT", std::string(name) + " must be an integer");
  return (int64_t)d;
}

inline bool boolean(const Napi::Value& v, const char* name) {
  if (!v.IsBoolean()) throw CoreError("E_ARGUMENT", std::string(name) + " must be a boolean");
  return v.As<Napi::Boolean>().Value();
}

inline Napi::Object object_arg(const Napi::CallbackInfo& info, size_t i, const char* name) {
  if (info.Length() <= i || !info[i].IsObject()) throw CoreError("E_ARGUMENT", std::string(name) + " must be an object");
  return info[i].As<Napi::Object>();
}

// Runs `work` on a libuv worker thread and settles a Promise: resolved with `done(env)` on the main
// thread, or rejected with a coded error. The JavaScript values in `keep` (the typed arrays the work
// reads and writes) are held alive until the work has finished.
class PromiseWorker : public Napi::AsyncWorker {
 public:
  using Work = std::function<void()>;
  using Done = std::function<Napi::Value(Napi::Env)>;

  static Napi::Value Run(Napi::Env env, Work work, Done done, const std::vector<Napi::Value>& keep) {
    auto* w = new PromiseWorker(env, std::move(work), std::move(done), keep);
    Napi::Promise promise = w->deferred_.Promise();
    w->Queue();
    return promise;
  }

 protected:
  void Execute() override {
    try {
      work_();
    } catch (const CoreError& e) {
      code_ = e.code();
      SetError(e.what());
    } catch (const std::bad_alloc&) {
      code_ = "E_MEMORY_BUDGET";
      SetError("out of memory");
    } catch (const std::exception& e) {
      code_ = "E_INTERNAL";
      SetError(e.what());
    }
  }
  void OnOK() override {
    Napi::Env env = Env();
    try {
      deferred_.Resolve(done_ ? done_(env) : env.Undefined());
    } catch (const Napi::Error& e) {
      deferred_.Reject(e.Value());
    }
  }
  void OnError(const Napi::Error& e) override {
    deferred_.Reject(coded_error(Env(), code_, e.Message()).Value());
  }

 private:
  PromiseWorker(Napi::Env env, Work work, Done done, const std::vector<Napi::Value>& keep)
      : Napi::AsyncWorker(env, "lowbit"), deferred_(Napi::Promise::Deferred::New(env)), work_(std::move(work)),
        done_(std::move(done)) {
    for (const auto& v : keep) keep_.push_back(Napi::Persistent(v));
  }
  Napi::Promise::Deferred deferred_;
  Work work_;
  Done done_;
  std::vector<Napi::Reference<Napi::Value>> keep_;
  const char* code_ = "E_INTERNAL";
};

// Each binding file registers its functions through one of these (called from addon.cpp).
void InitInfo(Napi::Env env, Napi::Object exports);
void InitQuant(Napi::Env env, Napi::Object exports);
void InitModel(Napi::Env env, Napi::Object exports);
void InitGptq(Napi::Env env, Napi::Object exports);

}  // namespace binding
}  // namespace lowbit

#include "../core/packed_matrix.hpp"

namespace lowbit {
namespace binding {

// Reads {bits, K, N, groupSize, groups, zeroOffset, qweight, qzeros, scales, gIdx?} into a checked
// PackedMatrix view; `keep` receives the typed arrays so an async call can hold them alive.
inline PackedMatrix packed_matrix_arg(const Napi::Object& o, std::vector<Napi::Value>* keep) {
  PackedMatrix W;
  W.bits = (int)integer(o.Get("bits"), "bits");
  W.K = integer(o.Get("K"), "K");
  W.N = integer(o.Get("N"), "N");
  W.group_size = integer(o.Get("groupSize"), "groupSize");
  W.groups = integer(o.Get("groups"), "groups");
  W.zero_offset = (int)integer(o.Get("zeroOffset"), "zeroOffset");
  const auto qw = typed_array<int32_t>(o.Get("qweight"), "qweight");
  const auto qz = typed_array<int32_t>(o.Get("qzeros"), "qzeros");
  const auto sc = typed_array<uint16_t>(o.Get("scales"), "scales (fp16 bits as Uint16Array)");
  const auto gi = optional_typed_array<int32_t>(o.Get("gIdx"), "gIdx");
  W.qweight = qw.data;
  W.qzeros = qz.data;
  W.scales = sc.data;
  W.g_idx = gi.data;
  validate_packed(W, qw.length, qz.length, sc.length, gi.length);
  if (keep) {
    for (const char* key : {"qweight", "qzeros", "scales"}) keep->push_back(o.Get(key));
    if (gi.data) keep->push_back(o.Get("gIdx"));
  }
  return W;
}

}  // namespace binding
}  // namespace lowbit

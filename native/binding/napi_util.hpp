// Glue shared by every binding file: argument checks that turn into typed JavaScript errors,
// typed-array views, and PromiseWorker, which runs heavy work off the event loop.
// No math lives here or anywhere in native/binding.
#pragma once

#include <napi.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <type_traits>
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

// The data pointer and length of a typed array, straight from napi_get_typedarray_info: it works for
// arrays over an ArrayBuffer and over a SharedArrayBuffer alike (Napi::TypedArray::ArrayBuffer() does
// not accept the latter). A detached (transferred) buffer is E_DETACHED. Runs no JavaScript.
template <class T>
Span<T> typed_array(const Napi::Value& v, const char* name) {
  if (!v.IsTypedArray() || v.As<Napi::TypedArray>().TypedArrayType() != typed_array_kind<T>())
    throw CoreError("E_DTYPE", std::string(name) + " must be a typed array of the expected element type");
  napi_typedarray_type kind;
  size_t length = 0, offset = 0;
  void* data = nullptr;
  napi_value buffer;
  if (napi_get_typedarray_info(v.Env(), v, &kind, &length, &data, &buffer, &offset) != napi_ok)
    throw CoreError("E_ARGUMENT", std::string(name) + ": cannot read the typed array");
  bool detached = false;
  napi_is_detached_arraybuffer(v.Env(), buffer, &detached);  // false for a SharedArrayBuffer
  if (detached) throw CoreError("E_DETACHED", std::string(name) + "'s buffer was detached (transferred)");
  Span<T> s;
  s.data = static_cast<T*>(data);
  s.length = (int64_t)length;
  return s;
}

template <class T>
Span<T> optional_typed_array(const Napi::Value& v, const char* name) {
  if (v.IsUndefined() || v.IsNull()) return {};
  return typed_array<T>(v, name);
}

// A JavaScript number that is an integer in the safe range (|v| <= 2^53), as int64.
inline int64_t integer(const Napi::Value& v, const char* name) {
  if (!v.IsNumber()) throw CoreError("E_ARGUMENT", std::string(name) + " must be a number");
  const double d = v.As<Napi::Number>().DoubleValue();
  // (the range check first: converting a non-finite or huge double to int64 is undefined)
  if (!(d >= -9007199254740992.0 && d <= 9007199254740992.0) || d != (double)(int64_t)d)
    throw CoreError("E_ARGUMENT", std::string(name) + " must be a safe integer");
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

// Host buffers that outputs written whole (CallBuffers::output with `whole`) borrow for one call
// and give back when the call's buffers go: a decode step's B x vocab logits then land in memory
// already mapped, where a fresh allocation of megabytes is fresh pages from the kernel, faulted in
// and zeroed by it on first touch, every step. At most kKeep buffers of
// at most kKeepBytes together stay between calls; a borrowed buffer is the call's alone until the
// call's CallBuffers is destroyed.
class HostBufferPool {
 public:
  static std::shared_ptr<void> borrow(size_t bytes) {
    HostBufferPool& p = instance();
    std::unique_ptr<unsigned char[]> buf;
    size_t size = 0;
    {
      std::lock_guard<std::mutex> lock(p.mutex_);
      // the smallest free buffer that is large enough
      auto best = p.free_.end();
      for (auto it = p.free_.begin(); it != p.free_.end(); ++it)
        if (it->second >= bytes && (best == p.free_.end() || it->second < best->second)) best = it;
      if (best != p.free_.end()) {
        buf = std::move(best->first);
        size = best->second;
        p.kept_ -= size;
        p.free_.erase(best);
      }
    }
    if (!buf) {
      buf.reset(new unsigned char[bytes ? bytes : 1]);
      size = bytes;
    }
    unsigned char* raw = buf.release();
    return std::shared_ptr<void>(raw, [size](void* q) { instance().give_back(static_cast<unsigned char*>(q), size); });
  }

 private:
  static constexpr size_t kKeep = 4;
  static constexpr size_t kKeepBytes = size_t(64) << 20;
  static HostBufferPool& instance() {
    static HostBufferPool* pool = new HostBufferPool();  // never destroyed: buffers may return at exit
    return *pool;
  }
  void give_back(unsigned char* q, size_t size) {
    std::unique_ptr<unsigned char[]> buf(q);
    std::lock_guard<std::mutex> lock(mutex_);
    if (free_.size() < kKeep && kept_ + size <= kKeepBytes) {
      free_.emplace_back(std::move(buf), size);
      kept_ += size;
    }
  }
  std::mutex mutex_;
  std::vector<std::pair<std::unique_ptr<unsigned char[]>, size_t>> free_;
  size_t kept_ = 0;
};

// The memory a call works on (issue 8). JavaScript may transfer or detach a typed array the moment a
// call returns (structuredClone(buf, {transfer: [buf]}), postMessage), which frees its memory, and a
// SharedArrayBuffer may change under us at any time. So:
// - A synchronous call (async = false) reads and writes the caller's arrays in place: no JavaScript
//   runs until it returns, provided every property (getter) was read before the first pointer was
//   taken. Index arrays are copied even then, so that the values checked are the values used.
// - An asynchronous call (async = true) never lets its worker touch JavaScript memory: inputs are
//   copied into native memory here, on the main thread, before the call returns (one memcpy each,
//   small next to the work); outputs are computed into native buffers and copied into the caller's
//   arrays on completion, on the main thread, after checking that each is still attached and long
//   enough (otherwise the promise rejects with E_DETACHED and nothing is written).
// Arrays the call creates itself and hands over only on completion need none of this.
class CallBuffers {
 public:
  explicit CallBuffers(bool async) : async_(async) {}
  CallBuffers(const CallBuffers&) = delete;
  CallBuffers& operator=(const CallBuffers&) = delete;

  bool async() const { return async_; }

  // An input the call only reads.
  template <class T>
  const T* input(const Span<T>& s) {
    return async_ ? copy(s) : s.data;
  }

  // An input whose values are checked and then used as indices: always a private copy.
  template <class T>
  const T* index(const Span<T>& s) {
    return s.data ? copy(s) : nullptr;
  }

  // An output array of the caller, `array` being the value `s` was read from. With `in_place` the
  // native buffer starts as a copy of the array (the call updates it in place). With `whole` the
  // call writes every element before it succeeds (and nothing is copied back when it fails), so the
  // native buffer need not be zeroed first and is borrowed from HostBufferPool (a decode step's
  // logits: B x vocab floats every step).
  template <class T>
  T* output(const Napi::Value& array, const Span<T>& s, const char* name, bool in_place = false, bool whole = false) {
    if (!async_) return s.data;
    T* buf = in_place ? copy(s) : whole ? uninitialized<T>(s.length) : fresh<T>(s.length);
    targets_.push_back(Target{Napi::Persistent(array), typed_array_kind<T>(), buf, (size_t)s.length * sizeof(T), name});
    return buf;
  }

  // Copies the outputs into the caller's arrays (main thread, on completion). Throws E_DETACHED, with
  // nothing written, when one was detached or shrunk (a resizable ArrayBuffer) meanwhile.
  void write_back() {
    std::vector<void*> dest;
    for (auto& t : targets_) {
      Napi::Value v = t.array.Value();
      napi_typedarray_type kind;
      size_t length = 0;
      void* data = nullptr;
      napi_value buffer;
      bool ok = napi_get_typedarray_info(v.Env(), v, &kind, &length, &data, &buffer, nullptr) == napi_ok;
      bool detached = false;
      if (ok) napi_is_detached_arraybuffer(v.Env(), buffer, &detached);
      if (!ok || detached || kind != t.kind || (data == nullptr && t.bytes > 0) || bytes_of(kind, length) < t.bytes)
        fail("E_DETACHED", std::string(t.name) + " was detached (transferred) or shrunk while the call ran; nothing was written to it");
      dest.push_back(data);
    }
    for (size_t i = 0; i < targets_.size(); ++i)
      if (targets_[i].bytes) std::memcpy(dest[i], targets_[i].src, targets_[i].bytes);
  }

  // Keeps a buffer the call made alive as long as the call.
  template <class T>
  T* fresh(int64_t n) {
    auto buf = std::make_shared<std::vector<T>>((size_t)n);
    owned_.push_back(buf);
    return buf->data();
  }

 private:
  template <class T>
  T* uninitialized(int64_t n) {
    static_assert(std::is_trivial<T>::value, "an uninitialized buffer holds plain values");
    std::shared_ptr<void> buf = HostBufferPool::borrow((size_t)n * sizeof(T));
    owned_.push_back(buf);
    return static_cast<T*>(buf.get());
  }
  template <class T>
  T* copy(const Span<T>& s) {
    auto buf = std::make_shared<std::vector<T>>(s.data, s.data + s.length);
    owned_.push_back(buf);
    return buf->data();
  }
  static size_t bytes_of(napi_typedarray_type kind, size_t length) {
    switch (kind) {
      case napi_int8_array: case napi_uint8_array: case napi_uint8_clamped_array: return length;
      case napi_int16_array: case napi_uint16_array: return length * 2;
      case napi_int32_array: case napi_uint32_array: case napi_float32_array: return length * 4;
      default: return length * 8;
    }
  }
  struct Target {
    Napi::Reference<Napi::Value> array;
    napi_typedarray_type kind;
    const void* src;
    size_t bytes;
    const char* name;
  };
  bool async_;
  std::vector<std::shared_ptr<void>> owned_;
  std::vector<Target> targets_;
};

// Runs `work` on a libuv worker thread and settles a Promise: resolved with `done(env)` on the main
// thread, or rejected with a coded error. `buffers` (see CallBuffers) owns the memory the work touches
// and copies its outputs back before `done` runs; the JavaScript objects in `keep` (handles, the model
// wrapper) are held alive until the work has finished.
class PromiseWorker : public Napi::AsyncWorker {
 public:
  using Work = std::function<void()>;
  using Done = std::function<Napi::Value(Napi::Env)>;

  static Napi::Value Run(Napi::Env env, Work work, Done done, const std::vector<Napi::Value>& keep,
                         std::unique_ptr<CallBuffers> buffers = nullptr) {
    auto* w = new PromiseWorker(env, std::move(work), std::move(done), keep, std::move(buffers));
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
      if (buffers_) buffers_->write_back();
      deferred_.Resolve(done_ ? done_(env) : env.Undefined());
    } catch (const CoreError& e) {
      deferred_.Reject(coded_error(env, e.code(), e.what()).Value());
    } catch (const Napi::Error& e) {
      deferred_.Reject(e.Value());
    }
  }
  void OnError(const Napi::Error& e) override {
    deferred_.Reject(coded_error(Env(), code_, e.Message()).Value());
  }

 private:
  PromiseWorker(Napi::Env env, Work work, Done done, const std::vector<Napi::Value>& keep,
                std::unique_ptr<CallBuffers> buffers)
      : Napi::AsyncWorker(env, "lowbit"), deferred_(Napi::Promise::Deferred::New(env)), work_(std::move(work)),
        done_(std::move(done)), buffers_(std::move(buffers)) {
    for (const auto& v : keep) keep_.push_back(Napi::Persistent(v));
  }
  Napi::Promise::Deferred deferred_;
  Work work_;
  Done done_;
  std::unique_ptr<CallBuffers> buffers_;
  std::vector<Napi::Reference<Napi::Value>> keep_;
  const char* code_ = "E_INTERNAL";
};

// Each binding file registers its functions through one of these (called from addon.cpp).
void InitInfo(Napi::Env env, Napi::Object exports);
void InitQuant(Napi::Env env, Napi::Object exports);
void InitModel(Napi::Env env, Napi::Object exports);
void InitGptq(Napi::Env env, Napi::Object exports);
void InitSpqr(Napi::Env env, Napi::Object exports);
void InitLinear(Napi::Env env, Napi::Object exports);
void InitCpuGptq(Napi::Env env, Napi::Object exports);

}  // namespace binding
}  // namespace lowbit

#include "../core/packed_matrix.hpp"

namespace lowbit {
namespace binding {

// Reads {bits, K, N, groupSize, groups, zeroOffset, qweight, qzeros, scales, gIdx?} into a checked
// PackedMatrix whose buffers `bufs` provides (copies for an async call; g_idx always a copy, so the
// entries validated are the entries the kernels index with). Each property is read exactly once, and
// all of them (getters may run JavaScript) before the first pointer is taken.
inline PackedMatrix packed_matrix_arg(const Napi::Object& o, CallBuffers& bufs) {
  const Napi::Value bits = o.Get("bits"), K = o.Get("K"), N = o.Get("N"), group_size = o.Get("groupSize");
  const Napi::Value groups = o.Get("groups"), zero_offset = o.Get("zeroOffset");
  const Napi::Value qweight = o.Get("qweight"), qzeros = o.Get("qzeros"), scales = o.Get("scales");
  const Napi::Value g_idx = o.Get("gIdx");
  // From here on no JavaScript runs.
  PackedMatrix W;
  W.bits = (int)integer(bits, "bits");
  W.K = integer(K, "K");
  W.N = integer(N, "N");
  W.group_size = integer(group_size, "groupSize");
  W.groups = integer(groups, "groups");
  W.zero_offset = (int)integer(zero_offset, "zeroOffset");
  const auto qw = typed_array<int32_t>(qweight, "qweight");
  const auto qz = typed_array<int32_t>(qzeros, "qzeros");
  const auto sc = typed_array<uint16_t>(scales, "scales (fp16 bit patterns as a Uint16Array)");
  const auto gi = optional_typed_array<int32_t>(g_idx, "gIdx");
  // Sizes first, before any copy: the copies are then of checked sizes (exactly what W uses).
  validate_packed_sizes(W, gi.data != nullptr, qw.length, qz.length, sc.length, gi.length);
  W.qweight = bufs.input(Span<int32_t>{qw.data, W.qweight_words()});
  W.qzeros = bufs.input(Span<int32_t>{qz.data, W.qzeros_words()});
  W.scales = bufs.input(Span<uint16_t>{sc.data, W.scales_count()});
  W.g_idx = bufs.index(Span<int32_t>{gi.data, gi.data ? W.K : 0});
  validate_g_idx(W);
  return W;
}

}  // namespace binding
}  // namespace lowbit

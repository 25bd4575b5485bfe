// Prepared linears (NativeLinear: one weight turned once into a device's operator, then multiplied
// by many times) and the weight-format table the TypeScript twin is checked against. No math.
#include <cstring>
#include <functional>
#include <type_traits>
#include <memory>
#include <vector>

#include "../../cuda/cuda_api.hpp"
#include "../../cuda/linear_half.hpp"
#include "../core/weights/format.hpp"
#include "../core/weights/linear.hpp"
#include "napi_util.hpp"
#include "weights_arg.hpp"

namespace lowbit {
namespace binding {
namespace {

// weightFormats() -> [{name: 'dense'}, {name: 'gptq', packUnits: [{bits, values, words}, ...]}, {name: 'spqr', bits: [2, 3, 4]}]
Napi::Value WeightFormats(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Napi::Array out = Napi::Array::New(env, kFormatCount);
  for (int f = 0; f < kFormatCount; ++f) {
    Napi::Object o = Napi::Object::New(env);
    o.Set("name", kFormatNames[f]);
    if ((Format)f == Format::Gptq) {
      Napi::Array units = Napi::Array::New(env, kGptqBitWidths);
      for (int i = 0; i < kGptqBitWidths; ++i) {
        const PackUnit u = gptq_pack_unit_at(i);
        Napi::Object e = Napi::Object::New(env);
        e.Set("bits", u.bits);
        e.Set("values", u.values_per_unit);
        e.Set("words", u.words_per_unit);
        units.Set(i, e);
      }
      o.Set("packUnits", units);
    } else if ((Format)f == Format::Spqr) {
      Napi::Array bits = Napi::Array::New(env, kSpqrBitWidths);
      for (int i = 0; i < kSpqrBitWidths; ++i) bits.Set(i, kSpqrBits[i]);
      o.Set("bits", bits);
    }
    out.Set(f, o);
  }
  return out;
}

Napi::Array string_array(Napi::Env env, const std::vector<std::string>& v) {
  Napi::Array a = Napi::Array::New(env, v.size());
  for (size_t i = 0; i < v.size(); ++i) a.Set(i, v[i]);
  return a;
}

// linearKernels() -> {cpu: string[], cuda: string[]}: each device's kernel table, in the order tried.
Napi::Value LinearKernels(const Napi::CallbackInfo& info) {
  Napi::Object o = Napi::Object::New(info.Env());
  o.Set("cpu", string_array(info.Env(), cpu_linear_kernels()));
  o.Set("cuda", string_array(info.Env(), cuda::cuda_linear_kernels()));
  return o;
}

class NativeLinear : public Napi::ObjectWrap<NativeLinear> {
 public:
  static Napi::Function Define(Napi::Env env) {
    return DefineClass(env, "NativeLinear",
                       {
                           InstanceAccessor<&NativeLinear::Bytes>("bytes"),
                           InstanceAccessor<&NativeLinear::Kernel>("kernel"),
                           InstanceAccessor<&NativeLinear::Device>("device"),
                           InstanceAccessor<&NativeLinear::Activations>("activations"),
                           InstanceAccessor<&NativeLinear::GetK>("K"),
                           InstanceAccessor<&NativeLinear::GetN>("N"),
                           InstanceMethod<&NativeLinear::Matmul>("matmul"),
                           InstanceMethod<&NativeLinear::MatmulSync>("matmulSync"),
                           InstanceMethod<&NativeLinear::Close>("close"),
                       });
  }

  // new NativeLinear(weights: {format, ...}, {device?: number, kernel?: string, activations?: 'f32' | 'f16' | 'bf16',
  //                   cpuActivations?: 'f32' | 'int8'})
  // The operator copies (and possibly repacks) the weight now, on this thread. f16/bf16
  // activations: x and out are Uint16Arrays of bit patterns (CUDA kernels that take them only).
  NativeLinear(const Napi::CallbackInfo& info) : Napi::ObjectWrap<NativeLinear>(info) {
    guarded(info, [&]() -> Napi::Value {
      CallBuffers bufs(false);  // read in place: the operator copies the weight before this returns
      const LinearWeights w = linear_weights_arg(info[0], 0, 0, "weights", bufs);
      LinearOptions options;
      if (info.Length() > 1 && !info[1].IsUndefined()) {
        const Napi::Object o = object_arg(info, 1, "options");
        const Napi::Value d = o.Get("device"), k = o.Get("kernel"), a = o.Get("activations");
        options.cpu_activations = cpu_activations_arg(o.Get("cpuActivations"), "options.cpuActivations",
                                                      LinearOptions::CpuActivations::F32);
        if (!d.IsUndefined()) device_ = (int)integer(d, "options.device");
        if (!k.IsUndefined()) {
          require(k.IsString(), "E_ARGUMENT", "options.kernel must be a string");
          options.kernel = k.As<Napi::String>().Utf8Value();
        }
        if (!a.IsUndefined()) activations_ = activations_arg(a);
      }
      if (activations_ == DType::F32) {
        op_ = device_ < 0 ? make_cpu_linear(w, options) : cuda::make_cuda_linear(device_, w, options);
      } else {
        require(device_ >= 0, "E_UNSUPPORTED",
                std::string("the CPU's linear operators take f32 activations only, not ") + dtype_name(activations_));
        half_ = cuda::make_cuda_linear_half(device_, w, activations_, options);
        op_ = half_;
      }
      reported_ = op_->bytes();
      Napi::MemoryManagement::AdjustExternalMemory(info.Env(), reported_);
      return info.Env().Undefined();
    });
  }

  ~NativeLinear() override {
    if (reported_) Napi::MemoryManagement::AdjustExternalMemory(Env(), -reported_);
  }

 private:
  static DType activations_arg(const Napi::Value& v) {
    const std::string a = v.IsString() ? v.As<Napi::String>().Utf8Value() : "";
    if (a == "f32") return DType::F32;
    if (a == "f16") return DType::F16;
    if (a == "bf16") return DType::BF16;
    fail("E_ARGUMENT", "options.activations must be 'f32', 'f16' or 'bf16'");
  }

  const LinearOp& op() const {
    require(op_ != nullptr, "E_CLOSED", "the linear was closed");
    return *op_;
  }
  Napi::Value Bytes(const Napi::CallbackInfo& info) { return Napi::Number::New(info.Env(), op_ ? (double)op_->bytes() : 0); }
  Napi::Value Kernel(const Napi::CallbackInfo& info) {
    return guarded(info, [&]() -> Napi::Value { return Napi::String::New(info.Env(), op().kernel()); });
  }
  Napi::Value Device(const Napi::CallbackInfo& info) { return Napi::Number::New(info.Env(), device_); }
  Napi::Value Activations(const Napi::CallbackInfo& info) {
    return Napi::String::New(info.Env(), dtype_name(activations_));
  }
  Napi::Value GetK(const Napi::CallbackInfo& info) {
    return guarded(info, [&]() -> Napi::Value { return Napi::Number::New(info.Env(), (double)op().K()); });
  }
  Napi::Value GetN(const Napi::CallbackInfo& info) {
    return guarded(info, [&]() -> Napi::Value { return Napi::Number::New(info.Env(), (double)op().N()); });
  }

  // Checks x [M*K] and out [M*N] of element T (or makes out), returning M; x and the Values are read
  // once. T is float for f32 activations, uint16_t (bit patterns) for f16/bf16.
  template <class T>
  int64_t rows_arg(const Napi::CallbackInfo& info, Span<T>* x, Napi::Value* out) const {
    const Napi::Value x_value = info[0], m_value = info[1];
    *out = info.Length() > 2 ? info[2] : info.Env().Undefined();
    const int64_t M = integer(m_value, "M");
    require(M >= 1, "E_SHAPE", "M must be at least 1");
    const int64_t need_x = checked_mul(M, op().K(), "x"), need_y = checked_mul(M, op().N(), "out");
    const bool f32 = std::is_same<T, float>::value;
    *x = typed_array<T>(x_value, f32 ? "x (Float32Array)" : "x (Uint16Array of 16-bit patterns)");
    require(x->length == need_x, "E_SHAPE",
            "x holds " + std::to_string(x->length) + " values, M x K needs " + std::to_string(need_x));
    if (out->IsUndefined())
      *out = f32 ? Napi::Value(Napi::Float32Array::New(info.Env(), (size_t)need_y))
                 : Napi::Value(Napi::Uint16Array::New(info.Env(), (size_t)need_y));
    const auto y = typed_array<T>(*out, f32 ? "out (Float32Array)" : "out (Uint16Array of 16-bit patterns)");
    require(y.length == need_y, "E_SHAPE",
            "out holds " + std::to_string(y.length) + " values, M x N needs " + std::to_string(need_y));
    return M;
  }

  // matmulSync(x, M, out?) -> out (in place; blocks the thread). x and out: Float32Array [M*K] and
  // [M*N] for f32 activations, Uint16Array for f16/bf16.
  Napi::Value MatmulSync(const Napi::CallbackInfo& info) {
    return guarded(info, [&]() -> Napi::Value {
      Napi::Value out;
      if (!half_) {
        Span<float> x;
        const int64_t M = rows_arg(info, &x, &out);
        op().apply(x.data, M, typed_array<float>(out, "out").data);
      } else {
        Span<uint16_t> x;
        const int64_t M = rows_arg(info, &x, &out);
        half_->apply_half(x.data, M, typed_array<uint16_t>(out, "out").data);
      }
      return out;
    });
  }

  // matmul(x, M, out?) -> Promise<out>. The worker never touches JavaScript memory (CallBuffers): x
  // is copied here, Y computed natively and copied into out on completion (E_DETACHED if out was
  // transferred meanwhile).
  Napi::Value Matmul(const Napi::CallbackInfo& info) {
    return guarded(info, [&]() -> Napi::Value {
      op();  // E_CLOSED
      return half_ ? run_async<uint16_t>(info) : run_async<float>(info);
    });
  }

  template <class T>
  Napi::Value run_async(const Napi::CallbackInfo& info) {
    Span<T> x;
    Napi::Value out;
    const int64_t M = rows_arg(info, &x, &out);
    auto bufs = std::make_unique<CallBuffers>(true);
    const T* xp = bufs->input(x);
    T* yp = bufs->output(out, typed_array<T>(out, "out"), "out");
    auto target = std::make_shared<Napi::Reference<Napi::Value>>(Napi::Persistent(out));
    std::function<void()> work;
    if constexpr (std::is_same<T, float>::value) {
      std::shared_ptr<const LinearOp> op = op_;  // a close() meanwhile leaves it to this call
      work = [op, xp, yp, M] { op->apply(xp, M, yp); };
    } else {
      std::shared_ptr<const cuda::HalfLinearOp> op = half_;
      work = [op, xp, yp, M] { op->apply_half(xp, M, yp); };
    }
    return PromiseWorker::Run(
        info.Env(), std::move(work), [target](Napi::Env) -> Napi::Value { return target->Value(); }, {info.This()},
        std::move(bufs));
  }

  // close(): frees the weight now (a product still running keeps it until it ends).
  Napi::Value Close(const Napi::CallbackInfo& info) {
    op_.reset();
    half_.reset();
    if (reported_) Napi::MemoryManagement::AdjustExternalMemory(info.Env(), -reported_);
    reported_ = 0;
    return info.Env().Undefined();
  }

  int device_ = -1;
  DType activations_ = DType::F32;
  std::shared_ptr<const LinearOp> op_;
  std::shared_ptr<const cuda::HalfLinearOp> half_;  // op_ itself, with f16/bf16 activations
  int64_t reported_ = 0;
};

// linearCreate(weights, options?) -> NativeLinear
Napi::Value LinearCreate(const Napi::CallbackInfo& info) {
  auto* ctor = static_cast<Napi::FunctionReference*>(info.Data());
  return ctor->New({info[0], info.Length() > 1 ? info[1] : info.Env().Undefined()});
}

}  // namespace

void InitLinear(Napi::Env env, Napi::Object exports) {
  exports.Set("weightFormats", Napi::Function::New(env, WeightFormats));
  exports.Set("linearKernels", Napi::Function::New(env, LinearKernels));
  auto* ctor = new Napi::FunctionReference(Napi::Persistent(NativeLinear::Define(env)));
  env.AddCleanupHook([ctor] { delete ctor; });
  exports.Set("linearCreate", Napi::Function::New(env, LinearCreate, "linearCreate", ctor));
}

}  // namespace binding
}  // namespace lowbit

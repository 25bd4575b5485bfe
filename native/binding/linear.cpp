// Prepared linears (NativeLinear: one weight turned once into a device's operator, then multiplied
// by many times) and the weight-format table the TypeScript twin is checked against. No math.
#include <cstring>
#include <memory>
#include <vector>

#include "../../cuda/cuda_api.hpp"
#include "../core/weights/format.hpp"
#include "../core/weights/linear.hpp"
#include "napi_util.hpp"
#include "weights_arg.hpp"

namespace lowbit {
namespace binding {
namespace {

// weightFormats() -> [{name: 'dense'}, {name: 'gptq', packUnits: [{bits, values, words}, ...]}]
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
                           InstanceAccessor<&NativeLinear::GetK>("K"),
                           InstanceAccessor<&NativeLinear::GetN>("N"),
                           InstanceMethod<&NativeLinear::Matmul>("matmul"),
                           InstanceMethod<&NativeLinear::MatmulSync>("matmulSync"),
                           InstanceMethod<&NativeLinear::Close>("close"),
                       });
  }

  // new NativeLinear(weights: {format, ...}, {device?: number, kernel?: string})
  // The operator copies (and possibly repacks) the weight now, on this thread.
  NativeLinear(const Napi::CallbackInfo& info) : Napi::ObjectWrap<NativeLinear>(info) {
    guarded(info, [&]() -> Napi::Value {
      CallBuffers bufs(false);  // read in place: the operator copies the weight before this returns
      const LinearWeights w = linear_weights_arg(info[0], 0, 0, "weights", bufs);
      LinearOptions options;
      if (info.Length() > 1 && !info[1].IsUndefined()) {
        const Napi::Object o = object_arg(info, 1, "options");
        const Napi::Value d = o.Get("device"), k = o.Get("kernel");
        if (!d.IsUndefined()) device_ = (int)integer(d, "options.device");
        if (!k.IsUndefined()) {
          require(k.IsString(), "E_ARGUMENT", "options.kernel must be a string");
          options.kernel = k.As<Napi::String>().Utf8Value();
        }
      }
      op_ = device_ < 0 ? make_cpu_linear(w, options) : cuda::make_cuda_linear(device_, w, options);
      reported_ = op_->bytes();
      Napi::MemoryManagement::AdjustExternalMemory(info.Env(), reported_);
      return info.Env().Undefined();
    });
  }

  ~NativeLinear() override {
    if (reported_) Napi::MemoryManagement::AdjustExternalMemory(Env(), -reported_);
  }

 private:
  const LinearOp& op() const {
    require(op_ != nullptr, "E_CLOSED", "the linear was closed");
    return *op_;
  }
  Napi::Value Bytes(const Napi::CallbackInfo& info) { return Napi::Number::New(info.Env(), op_ ? (double)op_->bytes() : 0); }
  Napi::Value Kernel(const Napi::CallbackInfo& info) {
    return guarded(info, [&]() -> Napi::Value { return Napi::String::New(info.Env(), op().kernel()); });
  }
  Napi::Value Device(const Napi::CallbackInfo& info) { return Napi::Number::New(info.Env(), device_); }
  Napi::Value GetK(const Napi::CallbackInfo& info) {
    return guarded(info, [&]() -> Napi::Value { return Napi::Number::New(info.Env(), (double)op().K()); });
  }
  Napi::Value GetN(const Napi::CallbackInfo& info) {
    return guarded(info, [&]() -> Napi::Value { return Napi::Number::New(info.Env(), (double)op().N()); });
  }

  // Checks x [M*K] and out [M*N] (or makes out), returning M; x and the Values are read once.
  int64_t rows_arg(const Napi::CallbackInfo& info, Span<float>* x, Napi::Value* out) const {
    const Napi::Value x_value = info[0], m_value = info[1];
    *out = info.Length() > 2 ? info[2] : info.Env().Undefined();
    const int64_t M = integer(m_value, "M");
    require(M >= 1, "E_SHAPE", "M must be at least 1");
    const int64_t need_x = checked_mul(M, op().K(), "x"), need_y = checked_mul(M, op().N(), "out");
    *x = typed_array<float>(x_value, "x");
    require(x->length == need_x, "E_SHAPE",
            "x holds " + std::to_string(x->length) + " values, M x K needs " + std::to_string(need_x));
    if (out->IsUndefined()) *out = Napi::Float32Array::New(info.Env(), (size_t)need_y);
    const auto y = typed_array<float>(*out, "out");
    require(y.length == need_y, "E_SHAPE",
            "out holds " + std::to_string(y.length) + " values, M x N needs " + std::to_string(need_y));
    return M;
  }

  // matmulSync(x: Float32Array [M*K], M, out?: Float32Array [M*N]) -> out (in place; blocks the thread)
  Napi::Value MatmulSync(const Napi::CallbackInfo& info) {
    return guarded(info, [&]() -> Napi::Value {
      Span<float> x;
      Napi::Value out;
      const int64_t M = rows_arg(info, &x, &out);
      op().apply(x.data, M, typed_array<float>(out, "out").data);
      return out;
    });
  }

  // matmul(x, M, out?) -> Promise<out>. The worker never touches JavaScript memory (CallBuffers): x
  // is copied here, Y computed natively and copied into out on completion (E_DETACHED if out was
  // transferred meanwhile).
  Napi::Value Matmul(const Napi::CallbackInfo& info) {
    return guarded(info, [&]() -> Napi::Value {
      Span<float> x;
      Napi::Value out;
      const int64_t M = rows_arg(info, &x, &out);
      auto bufs = std::make_unique<CallBuffers>(true);
      const float* xp = bufs->input(x);
      float* yp = bufs->output(out, typed_array<float>(out, "out"), "out");
      std::shared_ptr<const LinearOp> op = op_;  // a close() meanwhile leaves it to this call
      auto target = std::make_shared<Napi::Reference<Napi::Value>>(Napi::Persistent(out));
      return PromiseWorker::Run(
          info.Env(), [op, xp, yp, M] { op->apply(xp, M, yp); },
          [target](Napi::Env) -> Napi::Value { return target->Value(); }, {info.This()}, std::move(bufs));
    });
  }

  // close(): frees the weight now (a product still running keeps it until it ends).
  Napi::Value Close(const Napi::CallbackInfo& info) {
    op_.reset();
    if (reported_) Napi::MemoryManagement::AdjustExternalMemory(info.Env(), -reported_);
    reported_ = 0;
    return info.Env().Undefined();
  }

  int device_ = -1;
  std::shared_ptr<const LinearOp> op_;
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

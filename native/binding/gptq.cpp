// GPTQ: bindings for Hessian accumulation and the quantization sweep. Argument checks and worker
// dispatch only; the math is in native/core/{hessian,gptq}.cpp.
#include <initializer_list>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "../../cuda/cuda_api.hpp"
#include "../core/dtype.hpp"
#include "../core/gptq.hpp"
#include "../core/hessian.hpp"
#include "../core/pack.hpp"
#include "../core/rtn.hpp"
#include "../core/weight_format.hpp"
#include "hessian_handle.hpp"
#include "napi_util.hpp"

namespace lowbit {
namespace binding {
namespace {

using HolderPtr = HessianPtr;

constexpr const char* kHandleKey = "__lowbitHessian";

HolderPtr holder_arg(const Napi::Value& v) {
  if (!v.IsObject()) throw CoreError("E_ARGUMENT", "expected a Hessian handle from hessianCreate");
  const Napi::Value ext = v.As<Napi::Object>().Get(kHandleKey);
  if (!ext.IsExternal()) throw CoreError("E_ARGUMENT", "expected a Hessian handle from hessianCreate");
  return *ext.As<Napi::External<HolderPtr>>().Data();
}

// hessianCreate(K, device = -1) -> handle
Napi::Value HessianCreate(const Napi::CallbackInfo& info) {
  return guarded(info, [&]() -> Napi::Value {
    const int64_t K = integer(info[0], "K");
    require(K > 0 && K <= 65536, "E_SHAPE", "K must be in [1, 65536], got " + std::to_string(K));
    const int64_t device = info.Length() > 1 && !info[1].IsUndefined() ? integer(info[1], "device") : -1;
    require(device >= -1, "E_ARGUMENT", "device must be -1 (CPU) or a CUDA device index");
    auto holder = std::make_shared<HessianHolder>();
    holder->K = K;
    if (device >= 0) {
      holder->dev = std::make_unique<cuda::HessianAccumulatorDevice>((int)device, K);
    } else {
      holder->acc = std::make_unique<HessianAccumulator>(K);
      holder->reported_bytes = K * K * (int64_t)sizeof(float);
    }
    Napi::Env env = info.Env();
    Napi::MemoryManagement::AdjustExternalMemory(env, holder->reported_bytes);
    auto ext = Napi::External<HolderPtr>::New(env, new HolderPtr(holder), [](Napi::Env env, HolderPtr* p) {
      {
        std::lock_guard<std::mutex> lock((*p)->mutex);
        if ((*p)->reported_bytes) Napi::MemoryManagement::AdjustExternalMemory(env, -(*p)->reported_bytes);
        (*p)->reported_bytes = 0;
      }
      delete p;
    });
    Napi::Object handle = Napi::Object::New(env);
    handle.Set(kHandleKey, ext);
    handle.Set("K", Napi::Number::New(env, (double)K));
    handle.Set("device", Napi::Number::New(env, (double)device));
    return handle;
  });
}

// hessianAddBatch(handle, X: Float32Array [rows*K], rows) -> Promise<samples after>
// Ownership (issue 8): X is copied into native memory (O(rows K) next to the batch's O(rows K^2) work).
Napi::Value HessianAddBatch(const Napi::CallbackInfo& info) {
  return guarded(info, [&]() -> Napi::Value {
    HolderPtr holder = holder_arg(info[0]);  // (a getter on the handle runs before X is read)
    const auto X = typed_array<float>(info[1], "X");
    const int64_t rows = integer(info[2], "rows");
    require(rows >= 0, "E_SHAPE", "rows must be non-negative");
    const int64_t need = checked_mul(rows, holder->K, "rows x K");
    require(X.length >= need, "E_BUFFER",
            "X holds " + std::to_string(X.length) + " elements, needs rows x K = " + std::to_string(rows) + " x " +
                std::to_string(holder->K));
    auto bufs = std::make_unique<CallBuffers>(true);
    const float* xp = bufs->input(Span<float>{X.data, need});
    auto samples = std::make_shared<int64_t>(0);
    return PromiseWorker::Run(
        info.Env(),
        [holder, xp, rows, samples] {
          std::lock_guard<std::mutex> lock(holder->mutex);
          holder->require_open();
          if (holder->acc) holder->acc->add_batch(xp, rows);
          else holder->dev->add_batch(xp, rows);
          *samples = holder->samples();
        },
        [samples](Napi::Env env) -> Napi::Value { return Napi::Number::New(env, (double)*samples); },
        {info[0]}, std::move(bufs));
  });
}

// hessianSamples(handle) -> tokens seen
Napi::Value HessianSamples(const Napi::CallbackInfo& info) {
  return guarded(info, [&]() -> Napi::Value {
    HolderPtr holder = holder_arg(info[0]);
    std::lock_guard<std::mutex> lock(holder->mutex);
    holder->require_open();
    return Napi::Number::New(info.Env(), (double)holder->samples());
  });
}

// hessianRead(handle) -> Float32Array [K*K] (a copy)
Napi::Value HessianRead(const Napi::CallbackInfo& info) {
  return guarded(info, [&]() -> Napi::Value {
    HolderPtr holder = holder_arg(info[0]);
    std::lock_guard<std::mutex> lock(holder->mutex);
    holder->require_open();
    const int64_t n = holder->K * holder->K;
    auto out = Napi::Float32Array::New(info.Env(), (size_t)n);
    if (holder->acc) std::copy(holder->acc->data(), holder->acc->data() + n, out.Data());
    else holder->dev->download(out.Data());
    return out;
  });
}

// hessianFree(handle): releases the K x K buffer now (later use: E_CLOSED). Idempotent.
Napi::Value HessianFree(const Napi::CallbackInfo& info) {
  return guarded(info, [&]() -> Napi::Value {
    HolderPtr holder = holder_arg(info[0]);
    std::lock_guard<std::mutex> lock(holder->mutex);
    holder->acc.reset();
    holder->dev.reset();
    if (holder->reported_bytes) Napi::MemoryManagement::AdjustExternalMemory(info.Env(), -holder->reported_bytes);
    holder->reported_bytes = 0;
    return info.Env().Undefined();
  });
}

GptqOptions gptq_options(const Napi::Object& o) {
  GptqOptions g;
  g.bits = (int)integer(o.Get("bits"), "bits");
  weight_format(g.bits);
  g.group_size = integer(o.Get("groupSize"), "groupSize");
  auto opt_bool = [&](const char* key, bool& dst) {
    const Napi::Value v = o.Get(key);  // (each property read once)
    if (!v.IsUndefined()) dst = boolean(v, key);
  };
  opt_bool("sym", g.sym);
  opt_bool("mse", g.mse);
  opt_bool("actOrder", g.act_order);
  opt_bool("staticGroups", g.static_groups);
  const Napi::Value damp = o.Get("dampPercent");
  if (!damp.IsUndefined()) {
    require(damp.IsNumber(), "E_ARGUMENT", "dampPercent must be a number");
    g.damp_percent = damp.As<Napi::Number>().DoubleValue();
  }
  const Napi::Value raises = o.Get("maxDampRaises"), block = o.Get("blockSize"), zero_offset = o.Get("zeroOffset");
  if (!raises.IsUndefined()) g.max_damp_raises = (int)integer(raises, "maxDampRaises");
  if (!block.IsUndefined()) g.block_size = integer(block, "blockSize");
  if (!zero_offset.IsUndefined()) {
    const int64_t off = integer(zero_offset, "zeroOffset");
    require(off == 0 || off == 1, "E_ARGUMENT", "zeroOffset must be 0 or 1");
    g.min_zero = (int)off;  // v1 (offset 1) cannot store a zero point of 0
  } else {
    g.min_zero = 1;
  }
  return g;
}

struct GptqJob {
  GptqReport report;
  int64_t G = 0;
};

// gptqQuantize(W: Float32Array [N*K], N, K, H: Float32Array [K*K] | handle, options)
//   -> Promise<{ q, scales, zeros, gIdx, groups, qweight, qzeros, scalesF16, damp, dampPercent, dampRaises,
//                deadInputs, loss, warnings }>
// Ownership (issue 8): W and a Float32Array H are copied into native memory (O(NK + K^2), small next
// to the O(NK^2) sweep); the outputs are arrays made here and handed out only on completion; a
// Hessian handle's buffer is native already (its holder is kept and locked by the work).
Napi::Value GptqQuantize(const Napi::CallbackInfo& info) {
  return guarded(info, [&]() -> Napi::Value {
    const int64_t N = integer(info[1], "N"), K = integer(info[2], "K");
    require(N > 0 && K > 0, "E_SHAPE", "N and K must be positive");
    const int64_t NK = checked_mul(N, K, "N x K");
    const Napi::Object options = object_arg(info, 4, "options");
    const GptqOptions opt = gptq_options(options);
    validate_gptq_options(opt, K);
    // -1: the CPU; otherwise the CUDA device that runs the factorization and the sweep.
    const Napi::Value device_value = options.Get("device");
    const int64_t device = device_value.IsUndefined() ? -1 : integer(device_value, "device");
    require(device >= -1, "E_ARGUMENT", "device must be -1 (CPU) or a CUDA device index");
    // Every option getter has run; the arrays are read from here on.
    auto bufs = std::make_unique<CallBuffers>(true);
    const auto W = typed_array<float>(info[0], "W");
    require(W.length >= NK, "E_BUFFER",
            "W holds " + std::to_string(W.length) + " elements, needs " + std::to_string(N) + " x " + std::to_string(K));
    const float* wp = bufs->input(Span<float>{W.data, NK});
    const float* hp = nullptr;
    HolderPtr holder;
    if (info[3].IsTypedArray()) {
      const auto H = typed_array<float>(info[3], "H");
      const int64_t KK = checked_mul(K, K, "K x K");
      require(H.length >= KK, "E_BUFFER",
              "H holds " + std::to_string(H.length) + " elements, needs K x K = " + std::to_string(KK));
      hp = bufs->input(Span<float>{H.data, KK});
    } else {
      holder = holder_arg(info[3]);
      require(holder->K == K, "E_SHAPE",
              "the Hessian is " + std::to_string(holder->K) + " x " + std::to_string(holder->K) + ", W has K = " +
                  std::to_string(K));
    }
    const int zero_offset = opt.min_zero;
    const int64_t G = group_count(K, opt.group_size);
    const int64_t GN = checked_mul(G, N, "groups x N");
    Napi::Env env = info.Env();
    auto q = Napi::Uint8Array::New(env, (size_t)NK);
    auto scales = Napi::Float32Array::New(env, (size_t)GN);
    auto zeros = Napi::Int32Array::New(env, (size_t)GN);
    auto g_idx = Napi::Int32Array::New(env, (size_t)K);
    auto qweight = Napi::Int32Array::New(env, (size_t)checked_mul(packed_words(opt.bits, K), N, "qweight words"));
    auto qzeros = Napi::Int32Array::New(env, (size_t)checked_mul(G, packed_words(opt.bits, N), "qzeros words"));
    auto scales16 = Napi::Uint16Array::New(env, (size_t)GN);
    GptqOutput out{q.Data(), scales.Data(), zeros.Data(), g_idx.Data()};
    int32_t* qw = qweight.Data();
    int32_t* qz = qzeros.Data();
    uint16_t* s16 = scales16.Data();
    auto job = std::make_shared<GptqJob>();
    job->G = G;
    // The result arrays, held by reference: a napi_value is only valid in the scope that made it.
    auto results = std::make_shared<std::vector<Napi::Reference<Napi::Value>>>();
    for (Napi::Value v : std::initializer_list<Napi::Value>{q, scales, zeros, g_idx, qweight, qzeros, scales16})
      results->push_back(Napi::Persistent(v));
    return PromiseWorker::Run(
        env,
        [=] {
          auto run = [&](const float* H) {
            job->report = device < 0 ? gptq_quantize(wp, N, K, H, opt, out)
                                     : cuda::gptq_quantize((int)device, wp, N, K, H, opt, out);
          };
          if (holder) {
            std::lock_guard<std::mutex> lock(holder->mutex);
            holder->require_open();
            if (holder->acc) {
              run(holder->acc->data());
            } else if (device >= 0 && device == holder->dev->device()) {
              job->report = cuda::gptq_quantize(*holder->dev, wp, N, opt, out);  // H stays on the GPU
            } else {
              std::vector<float> H((size_t)(K * K));
              holder->dev->download(H.data());
              run(H.data());
            }
          } else {
            run(hp);
          }
          pack_qweight(out.q, N, K, opt.bits, qw);
          pack_qzeros(out.zeros, G, N, opt.bits, zero_offset, qz);
          for (int64_t i = 0; i < GN; ++i) s16[i] = f32_to_f16(out.scales[i]);
        },
        [job, results, zero_offset, G](Napi::Env env) -> Napi::Value {
          Napi::Object r = Napi::Object::New(env);
          const char* names[] = {"q", "scales", "zeros", "gIdx", "qweight", "qzeros", "scalesF16"};
          for (size_t i = 0; i < results->size(); ++i) r.Set(names[i], (*results)[i].Value());
          r.Set("groups", Napi::Number::New(env, (double)G));
          r.Set("zeroOffset", Napi::Number::New(env, zero_offset));
          const GptqReport& rep = job->report;
          r.Set("damp", Napi::Number::New(env, rep.damp));
          r.Set("dampPercent", Napi::Number::New(env, rep.damp_percent));
          r.Set("dampRaises", Napi::Number::New(env, rep.damp_raises));
          r.Set("deadInputs", Napi::Number::New(env, (double)rep.dead_inputs));
          r.Set("loss", Napi::Number::New(env, rep.loss));
          Napi::Array warnings = Napi::Array::New(env, rep.warnings.size());
          for (size_t i = 0; i < rep.warnings.size(); ++i) warnings.Set((uint32_t)i, rep.warnings[i]);
          r.Set("warnings", warnings);
          return r;
        },
        {info[3]}, std::move(bufs));
  });
}

}  // namespace

HessianPtr hessian_arg(const Napi::Value& v) { return holder_arg(v); }

void InitGptq(Napi::Env env, Napi::Object exports) {
  exports.Set("hessianCreate", Napi::Function::New(env, HessianCreate));
  exports.Set("hessianAddBatch", Napi::Function::New(env, HessianAddBatch));
  exports.Set("hessianSamples", Napi::Function::New(env, HessianSamples));
  exports.Set("hessianRead", Napi::Function::New(env, HessianRead));
  exports.Set("hessianFree", Napi::Function::New(env, HessianFree));
  exports.Set("gptqQuantize", Napi::Function::New(env, GptqQuantize));
}

}  // namespace binding
}  // namespace lowbit

// The forward pass: the NativeModel class (one LlamaBackend, CPU or CUDA) and a few sync entry
// points to the CPU ops for tests. Argument checks and worker dispatch only; the math is in
// native/core/model.
#include <napi.h>

#include <chrono>
#include <cmath>
#include <cstring>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <string>

#include "../core/model/backend.hpp"
#include "../core/model/ops.hpp"
#include "hessian_handle.hpp"
#include "napi_util.hpp"
#include "weights_arg.hpp"

namespace lowbit {
namespace binding {
namespace {

struct ModelHandle {
  std::mutex run_mutex;  // held for the whole of each call on the backend
  std::mutex ptr_mutex;  // guards the pointers below (held briefly)
  std::shared_ptr<model::LlamaBackend> backend;
  std::map<int64_t, std::shared_ptr<model::Sequence>> sequences;
  int64_t next_sequence = 1;
  std::map<int64_t, std::shared_ptr<model::HiddenStates>> states;  // resident calibration states
  int64_t next_states = 1;

  std::shared_ptr<model::LlamaBackend> get() {
    std::lock_guard<std::mutex> lock(ptr_mutex);
    require(backend != nullptr, "E_CLOSED", "the model was closed");
    return backend;
  }
  std::shared_ptr<model::Sequence> sequence(int64_t id) {
    std::lock_guard<std::mutex> lock(ptr_mutex);
    auto it = sequences.find(id);
    require(it != sequences.end(), "E_ARGUMENT", "no sequence " + std::to_string(id) + " (freed, or never created)");
    return it->second;
  }
  std::shared_ptr<model::HiddenStates> hidden_states(int64_t id) {
    std::lock_guard<std::mutex> lock(ptr_mutex);
    auto it = states.find(id);
    require(it != states.end(), "E_ARGUMENT", "no hidden states " + std::to_string(id) + " (freed, or never created)");
    return it->second;
  }
};

// Runs fn (on a worker thread) with the model's backend while holding the model's lock, so it never
// overlaps another call on the same model. E_CLOSED after close().
void with_backend(ModelHandle& handle, const std::function<void(model::LlamaBackend&)>& fn) {
  std::lock_guard<std::mutex> lock(handle.run_mutex);
  auto backend = handle.get();
  fn(*backend);
}

using model::Linear;
using model::LinearWeights;

std::vector<float> float_vector(const Napi::Value& v, const char* name) {
  const auto s = typed_array<float>(v, name);
  return std::vector<float>(s.data, s.data + s.length);
}

model::LlamaConfig config_arg(const Napi::Object& o) {
  model::LlamaConfig c;
  c.dim = integer(o.Get("dim"), "dim");
  c.hidden = integer(o.Get("hidden"), "hidden");
  c.layers = integer(o.Get("layers"), "layers");
  c.heads = integer(o.Get("heads"), "heads");
  c.kv_heads = integer(o.Get("kvHeads"), "kvHeads");
  c.head_dim = integer(o.Get("headDim"), "headDim");
  c.vocab = integer(o.Get("vocab"), "vocab");
  c.max_seq = integer(o.Get("maxSeq"), "maxSeq");
  const Napi::Value eps = o.Get("normEps"), rope_scale = o.Get("ropeScale");  // (each read once)
  require(eps.IsNumber(), "E_CONFIG", "normEps must be a number");
  c.norm_eps = eps.As<Napi::Number>().FloatValue();
  c.inv_freq = float_vector(o.Get("invFreq"), "invFreq");
  if (rope_scale.IsNumber()) c.rope_scale = rope_scale.As<Napi::Number>().FloatValue();
  c.tie_embeddings = boolean(o.Get("tieEmbeddings"), "tieEmbeddings");
  c.validate();
  return c;
}

// {dtype, data, bias?} (dense), {packed: PackedWeights, bias?} or {format, ...} for the linear `which`.
LinearWeights linear_arg(const Napi::Value& v, const model::LlamaConfig& c, Linear which, CallBuffers& bufs) {
  return linear_weights_arg(v, model::linear_out(c, which), model::linear_in(c, which), model::linear_name(which), bufs);
}

const float* norm_arg(const Napi::Value& v, int64_t dim, const char* name, CallBuffers& bufs) {
  const auto s = typed_array<float>(v, name);
  check_length(s.length, dim, name);
  return bufs.input(Span<float>{s.data, dim});
}

Linear linear_by_name(const Napi::Value& v) {
  const std::string s = v.IsString() ? v.As<Napi::String>().Utf8Value() : "";
  for (int l = 0; l < model::kBlockLinears; ++l)
    if (s == model::linear_name((Linear)l)) return (Linear)l;
  fail("E_ARGUMENT", "linear must be one of q, k, v, o, gate, up, down; got '" + s + "'");
}

int capture_by_name(const std::string& s) {
  for (int p = 0; p < model::kCapturePoints; ++p)
    if (s == model::capture_name((model::CapturePoint)p)) return p;
  fail("E_ARGUMENT", "capture point must be one of qkv, o, gateUp, down; got '" + s + "'");
}

int64_t capture_cols(const model::LlamaConfig& c, int p) {
  switch ((model::CapturePoint)p) {
    case model::CapturePoint::O: return c.heads * c.head_dim;
    case model::CapturePoint::Down: return c.hidden;
    default: return c.dim;
  }
}

class NativeModel : public Napi::ObjectWrap<NativeModel> {
 public:
  static Napi::Function Define(Napi::Env env) {
    return DefineClass(env, "NativeModel",
                       {
                           InstanceAccessor<&NativeModel::Device>("device"),
                           InstanceAccessor<&NativeModel::Dtype>("dtype"),
                           InstanceMethod<&NativeModel::SetGlobals>("setGlobals"),
                           InstanceMethod<&NativeModel::SetBlock>("setBlock"),
                           InstanceMethod<&NativeModel::SetLinear>("setLinear"),
                           InstanceMethod<&NativeModel::DropBlock>("dropBlock"),
                           InstanceMethod<&NativeModel::WeightBytes>("weightBytes"),
                           InstanceMethod<&NativeModel::Embed>("embed"),
                           InstanceMethod<&NativeModel::RunBlock>("runBlock"),
                           InstanceMethod<&NativeModel::Head>("head"),
                           InstanceMethod<&NativeModel::Logits>("logits"),
                           InstanceMethod<&NativeModel::Nll>("nll"),
                           InstanceMethod<&NativeModel::CreateSequence>("createSequence"),
                           InstanceMethod<&NativeModel::FreeSequence>("freeSequence"),
                           InstanceMethod<&NativeModel::CacheBytes>("cacheBytes"),
                           InstanceMethod<&NativeModel::Decode>("decode"),
                           InstanceMethod<&NativeModel::DecodeBatch>("decodeBatch"),
                           InstanceMethod<&NativeModel::DecodeGreedy>("decodeGreedy"),
                           InstanceMethod<&NativeModel::KvCache>("kvCache"),
                           InstanceMethod<&NativeModel::Close>("close"),
                           InstanceMethod<&NativeModel::CreateStates>("createStates"),
                           InstanceMethod<&NativeModel::ReadStates>("readStates"),
                           InstanceMethod<&NativeModel::RunBlockStates>("runBlockStates"),
                           InstanceMethod<&NativeModel::FreeStates>("freeStates"),
                           InstanceMethod<&NativeModel::StatesDeviceBytes>("statesDeviceBytes"),
                       });
  }

  // new NativeModel(config, device, options?: {cpuActivations?: 'int8' | 'f32', dtype?: 'f32' | 'f16' | 'bf16',
  // kvCacheTokens?: number}): cpuActivations is how the CPU backend's packed GPTQ linears take their
  // inputs (LinearOptions; default 'f32'); dtype what the forward pass computes in (default 'f32';
  // 16-bit on CUDA only); kvCacheTokens the most tokens the paged KV cache pool holds (KvCacheInfo).
  NativeModel(const Napi::CallbackInfo& info) : Napi::ObjectWrap<NativeModel>(info) {
    guarded(info, [&]() -> Napi::Value {
      config_ = config_arg(object_arg(info, 0, "config"));
      device_ = info.Length() > 1 && !info[1].IsUndefined() ? (int)integer(info[1], "device") : -1;
      LinearOptions linears;
      int64_t kv_cache_tokens = 0;
      if (info.Length() > 2 && !info[2].IsUndefined()) {
        const Napi::Object options = object_arg(info, 2, "options");
        linears.cpu_activations =
            cpu_activations_arg(options.Get("cpuActivations"), "options.cpuActivations", linears.cpu_activations);
        const Napi::Value dtype = options.Get("dtype");
        if (!dtype.IsUndefined()) dtype_ = dtype_arg(dtype);
        const Napi::Value kv_tokens = options.Get("kvCacheTokens");
        if (!kv_tokens.IsUndefined()) {
          kv_cache_tokens = integer(kv_tokens, "kvCacheTokens");
          require(kv_cache_tokens >= 1, "E_ARGUMENT", "kvCacheTokens must be a positive integer");
        }
      }
      handle_ = std::make_shared<ModelHandle>();
      handle_->backend = model::make_backend(device_, config_, linears, dtype_);
      if (kv_cache_tokens > 0) handle_->backend->set_kv_cache_tokens(kv_cache_tokens);
      return info.Env().Undefined();
    });
  }

  ~NativeModel() override {
    // The finalizer may run after close(); only what is still reported is given back.
    if (reported_ != 0) Napi::MemoryManagement::AdjustExternalMemory(Env(), -reported_);
    ForgetCaches(Env());
  }


 private:
  Napi::Value Device(const Napi::CallbackInfo& info) { return Napi::Number::New(info.Env(), device_); }
  Napi::Value Dtype(const Napi::CallbackInfo& info) { return Napi::String::New(info.Env(), dtype_name(dtype_)); }

  static DType dtype_arg(const Napi::Value& v) {
    const std::string a = v.IsString() ? v.As<Napi::String>().Utf8Value() : "";
    if (a == "f32") return DType::F32;
    if (a == "f16") return DType::F16;
    if (a == "bf16") return DType::BF16;
    fail("E_DTYPE", "options.dtype must be 'f32', 'f16' or 'bf16'");
  }

  // Runs `work(backend)` on a worker under the model's lock; `done` builds the resolved value. `bufs`
  // owns every buffer the work touches (see CallBuffers: the caller's arrays are copied in, outputs
  // copied out on completion). After work that changes weights, the external memory reported to V8
  // follows weight_bytes().
  Napi::Value Queue(const Napi::CallbackInfo& info, std::function<void(model::LlamaBackend&)> work,
                    std::unique_ptr<CallBuffers> bufs, bool weights_changed, PromiseWorker::Done done = nullptr) {
    std::vector<Napi::Value> keep{info.This()};  // keeps this wrapper alive until the promise settles
    auto handle = handle_;
    auto bytes = std::make_shared<int64_t>(-1);
    return PromiseWorker::Run(
        info.Env(),
        [handle, work, bytes, weights_changed] {
          with_backend(*handle, [&](model::LlamaBackend& b) {
            work(b);
            if (weights_changed) *bytes = b.weight_bytes();
          });
        },
        [this, bytes, done](Napi::Env env) -> Napi::Value {
          if (*bytes >= 0 && handle_->backend) Report(env, *bytes);
          return done ? done(env) : env.Undefined();
        },
        keep, std::move(bufs));
  }

  void Report(Napi::Env env, int64_t bytes) {
    if (bytes != reported_) Napi::MemoryManagement::AdjustExternalMemory(env, bytes - reported_);
    reported_ = bytes;
  }

  // setGlobals({embed: {dtype, data}, finalNorm, head?: linear})
  Napi::Value SetGlobals(const Napi::CallbackInfo& info) {
    return guarded(info, [&]() -> Napi::Value {
      // Ownership (issue 8): every weight is copied into native memory here (the backend copies it
      // again into its own store on the worker); no JavaScript memory is read off the main thread.
      const Napi::Object o = object_arg(info, 0, "globals");
      auto bufs = std::make_unique<CallBuffers>(true);
      model::GlobalWeights w;
      const Napi::Value embed = o.Get("embed");
      require(embed.IsObject(), "E_ARGUMENT", "embed must be an object {dtype, data}");
      w.embed = dense_arg(embed.As<Napi::Object>(), config_.vocab, config_.dim, "embed", &w.embed_dtype, *bufs);
      w.final_norm = norm_arg(o.Get("finalNorm"), config_.dim, "finalNorm", *bufs);
      if (!config_.tie_embeddings) w.head = linear_arg(o.Get("head"), config_, Linear::Head, *bufs);
      return Queue(info, [w](model::LlamaBackend& b) { b.set_globals(w); }, std::move(bufs), true);
    });
  }

  // setBlock(i, {attnNorm, mlpNorm, q, k, v, o, gate, up, down})
  Napi::Value SetBlock(const Napi::CallbackInfo& info) {
    return guarded(info, [&]() -> Napi::Value {
      const int64_t i = block_arg(info[0]);
      const Napi::Object o = object_arg(info, 1, "block weights");
      auto bufs = std::make_unique<CallBuffers>(true);  // (weights copied in: see SetGlobals)
      model::BlockWeights w;
      w.attn_norm = norm_arg(o.Get("attnNorm"), config_.dim, "attnNorm", *bufs);
      w.mlp_norm = norm_arg(o.Get("mlpNorm"), config_.dim, "mlpNorm", *bufs);
      for (int l = 0; l < model::kBlockLinears; ++l)
        w.linears[l] = linear_arg(o.Get(model::linear_name((Linear)l)), config_, (Linear)l, *bufs);
      return Queue(info, [i, w](model::LlamaBackend& b) { b.set_block(i, w); }, std::move(bufs), true);
    });
  }

  // setLinear(i, 'q' | ... | 'down', linear)
  Napi::Value SetLinear(const Napi::CallbackInfo& info) {
    return guarded(info, [&]() -> Napi::Value {
      const int64_t i = block_arg(info[0]);
      const Linear which = linear_by_name(info[1]);
      auto bufs = std::make_unique<CallBuffers>(true);  // (weights copied in: see SetGlobals)
      const LinearWeights w = linear_arg(info[2], config_, which, *bufs);
      return Queue(info, [i, which, w](model::LlamaBackend& b) { b.set_linear(i, which, w); }, std::move(bufs), true);
    });
  }

  // dropBlock(i): frees block i's weights (after work already queued on the model).
  Napi::Value DropBlock(const Napi::CallbackInfo& info) {
    return guarded(info, [&]() -> Napi::Value {
      const int64_t i = block_arg(info[0]);
      return Queue(info, [i](model::LlamaBackend& b) { b.drop_block(i); }, nullptr, true);
    });
  }

  Napi::Value WeightBytes(const Napi::CallbackInfo& info) { return Napi::Number::New(info.Env(), (double)reported_); }

  // Ownership (issue 8) of the calls below: input arrays (ids, hidden) are copied in; output arrays
  // (out, runBlock's in-place hidden) are computed natively and copied into the caller's on
  // completion (E_DETACHED if one was transferred meanwhile); captures are arrays made here.

  // embed(ids: Int32Array [n], out: Float32Array [n*dim])
  Napi::Value Embed(const Napi::CallbackInfo& info) {
    return guarded(info, [&]() -> Napi::Value {
      const auto ids = typed_array<int32_t>(info[0], "ids");
      const auto out = typed_array<float>(info[1], "out");
      const int64_t need = checked_mul(ids.length, config_.dim, "ids x dim");
      check_length(out.length, need, "out");
      auto bufs = std::make_unique<CallBuffers>(true);
      const int32_t* ip = bufs->input(ids);
      float* op = bufs->output(info[1], Span<float>{out.data, need}, "out");
      const int64_t n = ids.length;
      return Queue(info, [=](model::LlamaBackend& b) { b.embed(ip, n, op); }, std::move(bufs), false);
    });
  }

  // runBlock(i, hidden: Float32Array [batch*seq*dim] (in place), batch, seq, {capture?: names[], stopAfter?: name})
  //   -> Promise<{qkv?, o?, gateUp?, down?: Float32Array [batch*seq*cols]}>
  Napi::Value RunBlock(const Napi::CallbackInfo& info) {
    return guarded(info, [&]() -> Napi::Value {
      Napi::Env env = info.Env();
      const int64_t i = block_arg(info[0]);
      const int64_t batch = integer(info[2], "batch"), seq = integer(info[3], "seq");
      require(batch >= 1 && seq >= 1, "E_SHAPE", "batch and seq must be positive");
      const int64_t rows = checked_mul(batch, seq, "batch x seq");
      int stop_after = -1;
      std::vector<Napi::Float32Array> targets(model::kCapturePoints);
      if (info.Length() > 4 && info[4].IsObject()) {
        const Napi::Object opts = info[4].As<Napi::Object>();
        const Napi::Value cap = opts.Get("capture");
        if (!cap.IsUndefined()) {
          require(cap.IsArray(), "E_ARGUMENT", "capture must be an array of capture point names");
          const Napi::Array names = cap.As<Napi::Array>();
          for (uint32_t k = 0; k < names.Length(); ++k) {
            const Napi::Value name = names.Get(k);
            require(name.IsString(), "E_ARGUMENT", "capture point names are strings");
            const int p = capture_by_name(name.As<Napi::String>().Utf8Value());
            if (targets[(size_t)p].IsEmpty())
              targets[(size_t)p] = Napi::Float32Array::New(env, (size_t)checked_mul(rows, capture_cols(config_, p), "capture"));
          }
        }
        const Napi::Value stop = opts.Get("stopAfter");
        if (!stop.IsUndefined()) {
          require(stop.IsString(), "E_ARGUMENT", "stopAfter must be a capture point name");
          stop_after = capture_by_name(stop.As<Napi::String>().Utf8Value());
        }
      }
      // (the options' getters have run: hidden is read after them)
      const auto hidden = typed_array<float>(info[1], "hidden");
      const int64_t need = checked_mul(rows, config_.dim, "batch x seq x dim");
      check_length(hidden.length, need, "hidden");
      auto bufs = std::make_unique<CallBuffers>(true);
      float* hp = bufs->output(info[1], Span<float>{hidden.data, need}, "hidden", /*in_place=*/true);
      float* dest[model::kCapturePoints] = {nullptr};
      for (int p = 0; p < model::kCapturePoints; ++p)
        if (!targets[(size_t)p].IsEmpty()) dest[p] = targets[(size_t)p].Data();
      auto work = [=](model::LlamaBackend& b) {
        model::CaptureFn capture = [dest](model::CapturePoint p, const model::Activations& a) {
          float* d = dest[(int)p];
          if (d) std::memcpy(d + a.row0 * a.cols, a.data, (size_t)(a.rows * a.cols) * 4);
        };
        model::BlockRun run;
        run.capture = &capture;
        run.stop_after = stop_after;
        b.run_block(i, hp, batch, seq, run);
      };
      // napi_values die with this call's handle scope: the result is built from references.
      auto refs = std::make_shared<std::vector<Napi::ObjectReference>>(model::kCapturePoints);
      for (int p = 0; p < model::kCapturePoints; ++p)
        if (!targets[(size_t)p].IsEmpty()) (*refs)[(size_t)p] = Napi::Persistent(targets[(size_t)p].As<Napi::Object>());
      return Queue(info, work, std::move(bufs), false, [refs](Napi::Env env) -> Napi::Value {
        Napi::Object r = Napi::Object::New(env);
        for (int p = 0; p < model::kCapturePoints; ++p)
          if (!(*refs)[(size_t)p].IsEmpty()) r.Set(model::capture_name((model::CapturePoint)p), (*refs)[(size_t)p].Value());
        return r;
      });
    });
  }

  // head(hidden: Float32Array [rows*dim], rows, out: Float32Array [rows*vocab])
  Napi::Value Head(const Napi::CallbackInfo& info) {
    return guarded(info, [&]() -> Napi::Value {
      const auto hidden = typed_array<float>(info[0], "hidden");
      const int64_t rows = integer(info[1], "rows");
      const auto out = typed_array<float>(info[2], "out");
      require(rows >= 1, "E_SHAPE", "rows must be positive");
      const int64_t in = checked_mul(rows, config_.dim, "rows x dim"), outn = checked_mul(rows, config_.vocab, "rows x vocab");
      check_length(hidden.length, in, "hidden");
      check_length(out.length, outn, "out");
      auto bufs = std::make_unique<CallBuffers>(true);
      const float* hp = bufs->input(Span<float>{hidden.data, in});
      float* op = bufs->output(info[2], Span<float>{out.data, outn}, "out", false, true);
      return Queue(info, [=](model::LlamaBackend& b) { b.head(hp, rows, op); }, std::move(bufs), false);
    });
  }

  // logits(ids [batch*seq], batch, seq, out [batch*seq*vocab]) / nll(ids, batch, seq, out [batch*(seq-1)])
  Napi::Value Logits(const Napi::CallbackInfo& info) { return WholeModel(info, false); }
  Napi::Value Nll(const Napi::CallbackInfo& info) { return WholeModel(info, true); }

  Napi::Value WholeModel(const Napi::CallbackInfo& info, bool nll) {
    return guarded(info, [&]() -> Napi::Value {
      const auto ids = typed_array<int32_t>(info[0], "ids");
      const int64_t batch = integer(info[1], "batch"), seq = integer(info[2], "seq");
      const auto out = typed_array<float>(info[3], "out");
      require(batch >= 1 && seq >= (nll ? 2 : 1), "E_SHAPE", nll ? "nll needs batch >= 1 and seq >= 2" : "batch and seq must be positive");
      const int64_t n = checked_mul(batch, seq, "batch x seq");
      const int64_t outn = nll ? checked_mul(batch, seq - 1, "batch x (seq - 1)") : checked_mul(n, config_.vocab, "batch x seq x vocab");
      check_length(ids.length, n, "ids");
      check_length(out.length, outn, "out");
      auto bufs = std::make_unique<CallBuffers>(true);
      const int32_t* ip = bufs->input(Span<int32_t>{ids.data, n});
      float* op = bufs->output(info[3], Span<float>{out.data, outn}, "out");
      auto work = [=](model::LlamaBackend& b) {
        b.check_ids(ip, batch * seq);
        if (nll) b.nll(ip, batch, seq, op);
        else b.logits(ip, batch, seq, op);
      };
      return Queue(info, work, std::move(bufs), false);
    });
  }

  // Bytes of a KV cache of `capacity` tokens: keys and values, f32, every layer (both backends).
  int64_t kv_cache_bytes(int64_t capacity) const {
    return checked_product({2, config_.layers, config_.kv_heads, config_.head_dim, capacity, (int64_t)dtype_size(dtype_)},
                           "KV cache bytes");
  }

  // createSequence(capacity) -> Promise<number>. The cache's memory is reported to V8 (external
  // memory) until freeSequence or close, so that unreferenced sessions add GC pressure.
  Napi::Value CreateSequence(const Napi::CallbackInfo& info) {
    return guarded(info, [&]() -> Napi::Value {
      const int64_t capacity = integer(info[0], "capacity");
      require(capacity >= 1 && capacity <= config_.max_seq, "E_ARGUMENT",
              "sequence capacity must be in [1, " + std::to_string(config_.max_seq) + "], got " + std::to_string(capacity));
      const int64_t bytes = kv_cache_bytes(capacity);
      auto handle = handle_;
      auto id = std::make_shared<int64_t>(0);
      return Queue(
          info,
          [handle, capacity, id](model::LlamaBackend& b) {
            std::shared_ptr<model::Sequence> s = b.new_sequence(capacity);
            std::lock_guard<std::mutex> lock(handle->ptr_mutex);
            *id = handle->next_sequence++;
            handle->sequences[*id] = std::move(s);
          },
          nullptr, false, [this, id, bytes](Napi::Env env) -> Napi::Value {
            if (handle_->backend) {  // (not closed meanwhile)
              kv_bytes_[*id] = bytes;
              kv_reported_ += bytes;
              Napi::MemoryManagement::AdjustExternalMemory(env, bytes);
            }
            return Napi::Number::New(env, (double)*id);
          });
    });
  }

  // freeSequence(id): forgets the sequence (its memory goes when no queued decode holds it).
  Napi::Value FreeSequence(const Napi::CallbackInfo& info) {
    return guarded(info, [&]() -> Napi::Value {
      const int64_t id = integer(info[0], "sequence");
      {
        std::lock_guard<std::mutex> lock(handle_->ptr_mutex);
        handle_->sequences.erase(id);
      }
      auto it = kv_bytes_.find(id);
      if (it != kv_bytes_.end()) {
        Napi::MemoryManagement::AdjustExternalMemory(info.Env(), -it->second);
        kv_reported_ -= it->second;
        kv_bytes_.erase(it);
      }
      return info.Env().Undefined();
    });
  }

  // cacheBytes(): bytes of the KV caches of the sequences not yet freed (as reported to V8).
  Napi::Value CacheBytes(const Napi::CallbackInfo& info) { return Napi::Number::New(info.Env(), (double)kv_reported_); }

  void ForgetCaches(Napi::Env env) {
    if (kv_reported_ != 0) Napi::MemoryManagement::AdjustExternalMemory(env, -kv_reported_);
    kv_reported_ = 0;
    kv_bytes_.clear();
  }

  // decode(sequence, ids: Int32Array [n], out: Float32Array [vocab]) -> Promise<number> (new length)
  Napi::Value Decode(const Napi::CallbackInfo& info) {
    return guarded(info, [&]() -> Napi::Value {
      const int64_t id = integer(info[0], "sequence");
      const auto ids = typed_array<int32_t>(info[1], "ids");
      const auto out = typed_array<float>(info[2], "out");
      require(ids.length >= 1, "E_SHAPE", "decode needs at least one token");
      check_length(out.length, config_.vocab, "out");
      auto seq = handle_->sequence(id);
      auto bufs = std::make_unique<CallBuffers>(true);
      const int32_t* ip = bufs->input(ids);
      float* op = bufs->output(info[2], Span<float>{out.data, config_.vocab}, "out", false, true);
      const int64_t n = ids.length;
      return Queue(
          info,
          [=](model::LlamaBackend& b) {
            b.check_ids(ip, n);
            b.decode(*seq, ip, n, op);
          },
          std::move(bufs), false,
          [seq](Napi::Env env) -> Napi::Value { return Napi::Number::New(env, (double)seq->length); });
    });
  }

  // decodeBatch(sequences: Int32Array [B] of sequence ids, ids: Int32Array [B], out: Float32Array [B*vocab])
  //   -> Promise<Int32Array [B]> (the new lengths). Every sequence distinct, with room for one token.
  Napi::Value DecodeBatch(const Napi::CallbackInfo& info) {
    return guarded(info, [&]() -> Napi::Value {
      const auto out = typed_array<float>(info[2], "out");
      return QueueBatch(info, "decodeBatch", 1, config_.vocab, out, [](model::LlamaBackend& b, model::Sequence* const* seqs,
                                                                   int64_t count, const int32_t* ids, float* logits) {
        b.decode_batch(seqs, count, ids, logits);
      });
    });
  }

  // decodeGreedy(sequences: Int32Array [B] of sequence ids, ids: Int32Array [B], steps, out: Int32Array [steps*B])
  //   -> Promise<Int32Array [B]> (the new lengths): `steps` greedy steps chained (LlamaBackend::decode_greedy),
  //   out row s the tokens chosen after step s. Every sequence distinct, with room for `steps` tokens.
  Napi::Value DecodeGreedy(const Napi::CallbackInfo& info) {
    return guarded(info, [&]() -> Napi::Value {
      const int64_t steps = integer(info[2], "steps");
      require(steps >= 1, "E_SHAPE", "decodeGreedy needs at least one step");
      const auto out = typed_array<int32_t>(info[3], "out");
      return QueueBatch(info, "decodeGreedy", steps, 1, out,
                        [steps](model::LlamaBackend& b, model::Sequence* const* seqs, int64_t count, const int32_t* ids,
                                int32_t* tokens) { b.decode_greedy(seqs, count, ids, steps, tokens); });
    });
  }

  // The batched decodes' common part: sequences (info[0]) and ids (info[1]) of one length B, `out`
  // (info's last argument) of B·per_row·rows values, run(backend, sequences, B, ids, out) queued, and
  // the promise resolved with the sequences' new lengths.
  template <class T, class Run>
  Napi::Value QueueBatch(const Napi::CallbackInfo& info, const char* what, int64_t rows, int64_t per_row,
                         const Span<T>& out, Run run) {
    const auto seq_ids = typed_array<int32_t>(info[0], "sequences");
    const auto ids = typed_array<int32_t>(info[1], "ids");
    const int64_t count = seq_ids.length;
    require(count >= 1, "E_SHAPE", std::string(what) + " needs at least one sequence");
    check_length(ids.length, count, "ids");
    const int64_t outn = checked_mul(checked_mul(rows, count, "steps x sequences"), per_row, "sequences x vocab");
    check_length(out.length, outn, "out");
    auto seqs = std::make_shared<std::vector<std::shared_ptr<model::Sequence>>>();
    for (int64_t i = 0; i < count; ++i) seqs->push_back(handle_->sequence(seq_ids.data[i]));
    auto bufs = std::make_unique<CallBuffers>(true);
    const int32_t* ip = bufs->input(ids);
    T* op = bufs->output(info[info.Length() - 1], Span<T>{out.data, outn}, "out", false, true);
    auto lengths = std::make_shared<std::vector<int32_t>>((size_t)count);
    return Queue(
        info,
        [=](model::LlamaBackend& b) {
          std::vector<model::Sequence*> raw;
          for (const auto& s : *seqs) raw.push_back(s.get());
          run(b, raw.data(), count, ip, op);
          for (int64_t i = 0; i < count; ++i) (*lengths)[(size_t)i] = (int32_t)raw[(size_t)i]->length;
        },
        std::move(bufs), false,
        [lengths](Napi::Env env) -> Napi::Value {
          Napi::Int32Array r = Napi::Int32Array::New(env, lengths->size());
          std::copy(lengths->begin(), lengths->end(), r.Data());
          return r;
        });
  }

  // kvCache() -> {paged, pageTokens, pageBytes, pagesTotal, pagesFree, limitPages} (KvCacheInfo)
  Napi::Value KvCache(const Napi::CallbackInfo& info) {
    return guarded(info, [&]() -> Napi::Value {
      const model::KvCacheInfo k = handle_->get()->kv_cache();  // (the pool's counts are guarded by its own lock)
      Napi::Object r = Napi::Object::New(info.Env());
      r.Set("paged", Napi::Boolean::New(info.Env(), k.paged));
      r.Set("pageTokens", Napi::Number::New(info.Env(), (double)k.page_tokens));
      r.Set("pageBytes", Napi::Number::New(info.Env(), (double)k.page_bytes));
      r.Set("pagesTotal", Napi::Number::New(info.Env(), (double)k.pages_total));
      r.Set("pagesFree", Napi::Number::New(info.Env(), (double)k.pages_free));
      r.Set("limitPages", Napi::Number::New(info.Env(), (double)k.limit_pages));
      return r;
    });
  }

  // --- resident calibration states (LlamaBackend::new_states): GPTQ's passes over the calibration
  // samples without a host round trip of the hidden states or the captures.

  // createStates(hidden: Float32Array [rows*dim], rows) -> Promise<id>
  Napi::Value CreateStates(const Napi::CallbackInfo& info) {
    return guarded(info, [&]() -> Napi::Value {
      const int64_t rows = integer(info[1], "rows");
      require(rows >= 1, "E_SHAPE", "rows must be positive");
      const auto hidden = typed_array<float>(info[0], "hidden");
      const int64_t need = checked_mul(rows, config_.dim, "rows x dim");
      check_length(hidden.length, need, "hidden");
      auto bufs = std::make_unique<CallBuffers>(true);
      const float* hp = bufs->input(Span<float>{hidden.data, need});
      auto handle = handle_;
      auto id = std::make_shared<int64_t>(0);
      return Queue(
          info,
          [handle, hp, rows, id](model::LlamaBackend& b) {
            std::shared_ptr<model::HiddenStates> s = b.new_states(hp, rows);
            std::lock_guard<std::mutex> lock(handle->ptr_mutex);
            *id = handle->next_states++;
            handle->states[*id] = std::move(s);
          },
          std::move(bufs), false, [id](Napi::Env env) -> Napi::Value { return Napi::Number::New(env, (double)*id); });
    });
  }

  // readStates(id, row0, rows, out: Float32Array [rows*dim]) -> Promise<void>
  Napi::Value ReadStates(const Napi::CallbackInfo& info) {
    return guarded(info, [&]() -> Napi::Value {
      auto states = handle_->hidden_states(integer(info[0], "states"));
      const int64_t row0 = integer(info[1], "row0"), rows = integer(info[2], "rows");
      require(row0 >= 0 && rows >= 0, "E_SHAPE", "row0 and rows must be non-negative");
      const auto out = typed_array<float>(info[3], "out");
      const int64_t need = checked_mul(rows, config_.dim, "rows x dim");
      check_length(out.length, need, "out");
      auto bufs = std::make_unique<CallBuffers>(true);
      float* op = bufs->output(info[3], Span<float>{out.data, need}, "out");
      return Queue(
          info, [states, row0, rows, op](model::LlamaBackend& b) { b.read_states(*states, row0, rows, op); },
          std::move(bufs), false);
    });
  }

  // runBlockStates(id, block, row0, batch, seq, {hessians?: {qkv?, o?, gateUp?, down?: Hessian handle},
  //   stopAfter?: name}) -> Promise<number>: block `block` over rows [row0, row0 + batch*seq) of the
  // states (in place unless it stops early), each capture point's inputs folded into its Hessian
  // where they are (on the GPU when the Hessian is on the model's GPU). Resolves with the seconds
  // spent in the Hessians.
  Napi::Value RunBlockStates(const Napi::CallbackInfo& info) {
    return guarded(info, [&]() -> Napi::Value {
      auto states = handle_->hidden_states(integer(info[0], "states"));
      const int64_t i = block_arg(info[1]);
      const int64_t row0 = integer(info[2], "row0");
      const int64_t batch = integer(info[3], "batch"), seq = integer(info[4], "seq");
      require(batch >= 1 && seq >= 1 && row0 >= 0, "E_SHAPE", "batch and seq must be positive, row0 non-negative");
      checked_mul(batch, seq, "batch x seq");
      std::vector<HessianPtr> hessians(model::kCapturePoints);
      int stop_after = -1;
      if (info.Length() > 5 && !info[5].IsUndefined()) {
        const Napi::Object opts = object_arg(info, 5, "options");
        const Napi::Value hs = opts.Get("hessians");
        if (!hs.IsUndefined()) {
          require(hs.IsObject(), "E_ARGUMENT", "hessians must be an object of capture point names to Hessians");
          const Napi::Object ho = hs.As<Napi::Object>();
          for (int p = 0; p < model::kCapturePoints; ++p) {
            const Napi::Value h = ho.Get(model::capture_name((model::CapturePoint)p));
            if (h.IsUndefined()) continue;
            HessianPtr holder = hessian_arg(h);
            const int64_t cols = capture_cols(config_, p);
            require(holder->K == cols, "E_SHAPE",
                    std::string("the Hessian for ") + model::capture_name((model::CapturePoint)p) + " is " +
                        std::to_string(holder->K) + " x " + std::to_string(holder->K) + ", its inputs have " +
                        std::to_string(cols) + " features");
            hessians[(size_t)p] = holder;
          }
        }
        const Napi::Value stop = opts.Get("stopAfter");
        if (!stop.IsUndefined()) {
          require(stop.IsString(), "E_ARGUMENT", "stopAfter must be a capture point name");
          stop_after = capture_by_name(stop.As<Napi::String>().Utf8Value());
        }
      }
      auto seconds = std::make_shared<double>(0.0);
      auto work = [=](model::LlamaBackend& b) {
        // Device captures only when every Hessian can take them where they are.
        bool on_device = b.device() >= 0;
        for (const auto& h : hessians) {
          if (!h) continue;
          std::lock_guard<std::mutex> lock(h->mutex);
          h->require_open();
          on_device = on_device && h->dev && h->dev->device() == b.device();
        }
        model::CaptureFn capture = [&](model::CapturePoint p, const model::Activations& a) {
          const HessianPtr& h = hessians[(size_t)p];
          if (!h) return;
          const auto t0 = std::chrono::steady_clock::now();
          std::lock_guard<std::mutex> lock(h->mutex);
          h->require_open();
          if (a.device_data) h->dev->add_batch_device(a.device_data, a.device_dtype, a.rows);
          else if (h->acc) h->acc->add_batch(a.data, a.rows);
          else h->dev->add_batch(a.data, a.rows);
          *seconds += std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
        };
        model::BlockRun run;
        run.capture = &capture;
        run.stop_after = stop_after;
        run.device_captures = on_device;
        b.run_block_states(i, *states, row0, batch, seq, run);
      };
      return Queue(info, work, nullptr, false,
                   [seconds](Napi::Env env) -> Napi::Value { return Napi::Number::New(env, *seconds); });
    });
  }

  // freeStates(id): forgets the states (their memory goes when no queued call holds them).
  Napi::Value FreeStates(const Napi::CallbackInfo& info) {
    return guarded(info, [&]() -> Napi::Value {
      const int64_t id = integer(info[0], "states");
      std::lock_guard<std::mutex> lock(handle_->ptr_mutex);
      handle_->states.erase(id);
      return info.Env().Undefined();
    });
  }

  // statesDeviceBytes(rows): device memory resident states of `rows` rows take (0 on the host).
  Napi::Value StatesDeviceBytes(const Napi::CallbackInfo& info) {
    return guarded(info, [&]() -> Napi::Value {
      const int64_t rows = integer(info[0], "rows");
      require(rows >= 0, "E_SHAPE", "rows must be non-negative");
      return Napi::Number::New(info.Env(), (double)handle_->get()->states_device_bytes(rows));
    });
  }

  // close(): frees the weights and caches now (after any call already running on the model).
  Napi::Value Close(const Napi::CallbackInfo& info) {
    {
      std::lock_guard<std::mutex> lock(handle_->ptr_mutex);
      handle_->backend.reset();
      handle_->sequences.clear();
      handle_->states.clear();
    }
    Report(info.Env(), 0);
    ForgetCaches(info.Env());
    return info.Env().Undefined();
  }

  int64_t block_arg(const Napi::Value& v) {
    const int64_t i = integer(v, "block");
    require(i >= 0 && i < config_.layers, "E_ARGUMENT",
            "block " + std::to_string(i) + " is outside [0, " + std::to_string(config_.layers) + ")");
    return i;
  }

  model::LlamaConfig config_;
  int device_ = -1;
  DType dtype_ = DType::F32;  // the activations the backend computes in
  std::shared_ptr<ModelHandle> handle_;
  int64_t reported_ = 0;
  std::map<int64_t, int64_t> kv_bytes_;  // sequence id -> KV cache bytes reported (main thread only)
  int64_t kv_reported_ = 0;
};

// ---------------------------------------------------------------- CPU ops, for tests against references

// opRmsNorm(x, rows, dim, weight, eps, out)
Napi::Value OpRmsNorm(const Napi::CallbackInfo& info) {
  return guarded(info, [&]() -> Napi::Value {
    const auto x = typed_array<float>(info[0], "x");
    const int64_t rows = integer(info[1], "rows"), dim = integer(info[2], "dim");
    const auto w = typed_array<float>(info[3], "weight");
    require(info[4].IsNumber(), "E_ARGUMENT", "eps must be a number");
    const float eps = info[4].As<Napi::Number>().FloatValue();
    const auto out = typed_array<float>(info[5], "out");
    require(rows >= 1 && dim >= 1, "E_SHAPE", "rows and dim must be positive");
    check_length(x.length, checked_mul(rows, dim), "x");
    check_length(w.length, dim, "weight");
    check_length(out.length, checked_mul(rows, dim), "out");
    model::cpu::rms_norm(x.data, rows, dim, w.data, eps, out.data);
    return info.Env().Undefined();
  });
}

// opRope(x (in place), rows, heads, headDim, p0, invFreq, scale): row r is at position p0 + r.
Napi::Value OpRope(const Napi::CallbackInfo& info) {
  return guarded(info, [&]() -> Napi::Value {
    const auto x = typed_array<float>(info[0], "x");
    const int64_t rows = integer(info[1], "rows"), heads = integer(info[2], "heads"), hd = integer(info[3], "headDim");
    const int64_t p0 = integer(info[4], "p0");
    const std::vector<float> inv_freq = float_vector(info[5], "invFreq");
    require(info[6].IsNumber(), "E_ARGUMENT", "scale must be a number");
    const float scale = info[6].As<Napi::Number>().FloatValue();
    require(rows >= 1 && heads >= 1 && hd >= 2 && hd % 2 == 0 && p0 >= 0, "E_SHAPE", "bad rope shape");
    require((int64_t)inv_freq.size() == hd / 2, "E_SHAPE", "invFreq must hold headDim/2 values");
    check_length(x.length, checked_product({rows, heads, hd}), "x");
    model::cpu::RopeTable table;
    table.build(inv_freq, scale, p0, rows);
    model::cpu::apply_rope(x.data, rows, heads * hd, heads, table);
    return info.Env().Undefined();
  });
}

// opAttention(q [n*heads*hd], k [n*kvHeads*hd], v, n, heads, kvHeads, headDim, out): causal, positions 0..n-1.
Napi::Value OpAttention(const Napi::CallbackInfo& info) {
  return guarded(info, [&]() -> Napi::Value {
    const auto q = typed_array<float>(info[0], "q");
    const auto k = typed_array<float>(info[1], "k");
    const auto v = typed_array<float>(info[2], "v");
    const int64_t n = integer(info[3], "n"), heads = integer(info[4], "heads"), kvh = integer(info[5], "kvHeads");
    const int64_t hd = integer(info[6], "headDim");
    const auto out = typed_array<float>(info[7], "out");
    require(n >= 1 && heads >= 1 && kvh >= 1 && hd >= 1 && heads % kvh == 0, "E_SHAPE", "bad attention shape");
    check_length(q.length, checked_product({n, heads, hd}), "q");
    check_length(k.length, checked_product({n, kvh, hd}), "k");
    check_length(v.length, checked_product({n, kvh, hd}), "v");
    check_length(out.length, checked_product({n, heads, hd}), "out");
    model::cpu::KvBlock kv;
    kv.resize(kvh, hd, n);
    model::cpu::store_kv(k.data, v.data, n, 0, kv);
    model::cpu::causal_attention(q.data, n, 0, heads, kv, (float)(1.0 / std::sqrt((double)hd)), out.data);
    return info.Env().Undefined();
  });
}

// opSwiglu(gate, up, out)
Napi::Value OpSwiglu(const Napi::CallbackInfo& info) {
  return guarded(info, [&]() -> Napi::Value {
    const auto g = typed_array<float>(info[0], "gate");
    const auto u = typed_array<float>(info[1], "up");
    const auto out = typed_array<float>(info[2], "out");
    check_length(u.length, g.length, "up");
    check_length(out.length, g.length, "out");
    model::cpu::swiglu(g.data, u.data, g.length, out.data);
    return info.Env().Undefined();
  });
}

// opLinear(x [M*K], M, {dtype, data [N*K]}, N, K, bias | null, out [M*N])
Napi::Value OpLinear(const Napi::CallbackInfo& info) {
  return guarded(info, [&]() -> Napi::Value {
    const int64_t M = integer(info[1], "M"), N = integer(info[3], "N"), K = integer(info[4], "K");
    require(M >= 1 && N >= 1 && K >= 1, "E_SHAPE", "M, N and K must be positive");
    CallBuffers bufs(false);  // (synchronous: arrays read in place, after the weight's getters ran)
    DType dtype;
    const void* data = dense_arg(object_arg(info, 2, "weight"), N, K, "weight", &dtype, bufs);
    const auto x = typed_array<float>(info[0], "x");
    const auto bias = optional_typed_array<float>(info[5], "bias");
    const auto out = typed_array<float>(info[6], "out");
    check_length(x.length, checked_mul(M, K), "x");
    if (bias.data) check_length(bias.length, N, "bias");
    check_length(out.length, checked_mul(M, N), "out");
    const model::cpu::DensePanels W(data, dtype, N, K);
    model::cpu::dense_linear(x.data, M, W, bias.data, out.data);
    return info.Env().Undefined();
  });
}

// opNll(logits [rows*vocab], rows, vocab, targets [rows], out [rows])
Napi::Value OpNll(const Napi::CallbackInfo& info) {
  return guarded(info, [&]() -> Napi::Value {
    const auto logits = typed_array<float>(info[0], "logits");
    const int64_t rows = integer(info[1], "rows"), vocab = integer(info[2], "vocab");
    const auto targets = typed_array<int32_t>(info[3], "targets");
    const auto out = typed_array<float>(info[4], "out");
    require(rows >= 1 && vocab >= 1, "E_SHAPE", "rows and vocab must be positive");
    check_length(logits.length, checked_mul(rows, vocab), "logits");
    check_length(targets.length, rows, "targets");
    check_length(out.length, rows, "out");
    for (int64_t r = 0; r < rows; ++r) {
      const int32_t target = targets.data[r];  // read once: a SharedArrayBuffer may change under us
      require(target >= 0 && target < vocab, "E_ARGUMENT", "target outside the vocabulary");
      out.data[r] = model::cpu::row_nll(logits.data + r * vocab, vocab, target);
    }
    return info.Env().Undefined();
  });
}

}  // namespace

void InitModel(Napi::Env env, Napi::Object exports) {
  exports.Set("NativeModel", NativeModel::Define(env));
  exports.Set("opRmsNorm", Napi::Function::New(env, OpRmsNorm));
  exports.Set("opRope", Napi::Function::New(env, OpRope));
  exports.Set("opAttention", Napi::Function::New(env, OpAttention));
  exports.Set("opSwiglu", Napi::Function::New(env, OpSwiglu));
  exports.Set("opLinear", Napi::Function::New(env, OpLinear));
  exports.Set("opNll", Napi::Function::New(env, OpNll));
}

}  // namespace binding
}  // namespace lowbit

// Quantization, packing and packed products: argument checks and worker dispatch only.
#include <memory>
#include <string>
#include <vector>

#include "../../cuda/cuda_api.hpp"
#include "../core/dtype.hpp"
#include "../core/pack.hpp"
#include "../core/packed_gemm.hpp"
#include "../core/rtn.hpp"
#include "../core/weight_format.hpp"
#include "napi_util.hpp"

namespace lowbit {
namespace binding {
namespace {

GridOptions grid_options(const Napi::Object& o) {
  GridOptions g;
  g.bits = (int)integer(o.Get("bits"), "bits");
  weight_format(g.bits);
  const Napi::Value sym = o.Get("sym"), mse = o.Get("mse"), min_zero = o.Get("minZero");  // (each read once)
  if (!sym.IsUndefined()) g.sym = boolean(sym, "sym");
  if (!mse.IsUndefined()) g.mse = boolean(mse, "mse");
  if (!min_zero.IsUndefined()) {
    g.min_zero = (int)integer(min_zero, "minZero");
    require(g.min_zero == 0 || g.min_zero == 1, "E_ARGUMENT", "minZero must be 0 or 1");
  }
  return g;
}

// Checks a [rows, cols] buffer's length; returns rows * cols (overflow-checked: E_SHAPE).
int64_t check_matrix(int64_t len, int64_t rows, int64_t cols, const char* name) {
  require(rows > 0 && cols > 0, "E_SHAPE", std::string(name) + " dimensions must be positive");
  const int64_t need = checked_mul(rows, cols, name);
  require(len >= need, "E_BUFFER",
          std::string(name) + " holds " + std::to_string(len) + " elements, needs " + std::to_string(rows) + " x " +
              std::to_string(cols));
  return need;
}

// rtnQuantize(W: Float32Array [N*K], N, K, {bits, groupSize, sym, mse, minZero, packZeroOffset})
//   -> Promise<{q, scales, zeros, groups} and, with packZeroOffset 0 | 1, {qweight, qzeros, scalesF16}>
// With packZeroOffset the worker also packs the result into the GPTQ layout (qzeros storing
// zero - packZeroOffset), so that no packing runs on the event loop.
// Ownership (issue 8): W is copied into native memory (the worker never reads JavaScript memory);
// the outputs are arrays made here and handed out only on completion.
Napi::Value RtnQuantize(const Napi::CallbackInfo& info) {
  return guarded(info, [&]() -> Napi::Value {
    const int64_t N = integer(info[1], "N"), K = integer(info[2], "K");
    const Napi::Object opts = object_arg(info, 3, "options");
    const GridOptions g = grid_options(opts);
    const int64_t gs = integer(opts.Get("groupSize"), "groupSize");
    require(gs == -1 || gs > 0, "E_GROUP_SIZE", "groupSize must be -1 (per channel) or positive");
    const Napi::Value pack_value = opts.Get("packZeroOffset");
    const bool pack = !pack_value.IsUndefined();
    const int zero_offset = pack ? (int)integer(pack_value, "packZeroOffset") : 0;
    require(zero_offset == 0 || zero_offset == 1, "E_ARGUMENT", "packZeroOffset must be 0 or 1");
    // (every option getter has run: W is read after them)
    const auto W = typed_array<float>(info[0], "W");
    const int64_t NK = check_matrix(W.length, N, K, "W");
    auto bufs = std::make_unique<CallBuffers>(true);
    const float* wp = bufs->input(Span<float>{W.data, NK});
    const int64_t G = group_count(K, gs);
    const int64_t GN = checked_mul(G, N, "groups x N");
    Napi::Env env = info.Env();
    auto q = Napi::Uint8Array::New(env, (size_t)NK);
    auto scales = Napi::Float32Array::New(env, (size_t)GN);
    auto zeros = Napi::Int32Array::New(env, (size_t)GN);
    auto qweight = Napi::Int32Array::New(env, pack ? (size_t)checked_mul(packed_words(g.bits, K), N) : 0);
    auto qzeros = Napi::Int32Array::New(env, pack ? (size_t)checked_mul(G, packed_words(g.bits, N)) : 0);
    auto scales16 = Napi::Uint16Array::New(env, pack ? (size_t)GN : 0);
    uint8_t* qp = q.Data();
    float* sp = scales.Data();
    int32_t* zp = zeros.Data();
    int32_t* qwp = qweight.Data();
    int32_t* qzp = qzeros.Data();
    uint16_t* s16p = scales16.Data();
    // The outputs travel to the completion callback as persistent references: local handles die
    // with this call's scope, and touching them later crashes V8.
    auto outputs = std::make_shared<std::vector<Napi::Reference<Napi::Value>>>();
    for (Napi::Value v : {Napi::Value(q), Napi::Value(scales), Napi::Value(zeros), Napi::Value(qweight),
                          Napi::Value(qzeros), Napi::Value(scales16)})
      outputs->push_back(Napi::Persistent(v));
    return PromiseWorker::Run(
        env,
        [=] {
          rtn_quantize(wp, N, K, gs, g, qp, sp, zp);
          if (!pack) return;
          pack_qweight(qp, N, K, g.bits, qwp);
          pack_qzeros(zp, G, N, g.bits, zero_offset, qzp);
          convert(sp, DType::F32, s16p, DType::F16, (size_t)GN);  // exact: RTN scales are fp16 values
        },
        [outputs, G, pack](Napi::Env env) -> Napi::Value {
          Napi::Object r = Napi::Object::New(env);
          r.Set("q", (*outputs)[0].Value());
          r.Set("scales", (*outputs)[1].Value());
          r.Set("zeros", (*outputs)[2].Value());
          r.Set("groups", Napi::Number::New(env, (double)G));
          if (pack) {
            r.Set("qweight", (*outputs)[3].Value());
            r.Set("qzeros", (*outputs)[4].Value());
            r.Set("scalesF16", (*outputs)[5].Value());
          }
          return r;
        },
        {}, std::move(bufs));
  });
}

// packQweight(q: Uint8Array [N*K], N, K, bits) -> Int32Array [packedWords(bits,K) * N]
Napi::Value PackQweight(const Napi::CallbackInfo& info) {
  return guarded(info, [&]() -> Napi::Value {
    const auto q = typed_array<uint8_t>(info[0], "q");
    const int64_t N = integer(info[1], "N"), K = integer(info[2], "K");
    const int bits = (int)integer(info[3], "bits");
    const int64_t NK = check_matrix(q.length, N, K, "q");
    const int maxq = weight_format(bits).maxq();
    for (int64_t i = 0; i < NK; ++i)  // (the message only on failure: building it per element took seconds)
      if (q.data[i] > maxq)
        fail("E_ARGUMENT", "q[" + std::to_string(i) + "] = " + std::to_string(q.data[i]) + " does not fit in " +
                               std::to_string(bits) + " bits");
    auto out = Napi::Int32Array::New(info.Env(), (size_t)checked_mul(packed_words(bits, K), N, "qweight words"));
    pack_qweight(q.data, N, K, bits, out.Data());
    return out;
  });
}

Napi::Value UnpackQweight(const Napi::CallbackInfo& info) {
  return guarded(info, [&]() -> Napi::Value {
    const auto qw = typed_array<int32_t>(info[0], "qweight");
    const int64_t N = integer(info[1], "N"), K = integer(info[2], "K");
    const int bits = (int)integer(info[3], "bits");
    require(N > 0 && K > 0, "E_SHAPE", "N and K must be positive");
    require(qw.length >= checked_mul(packed_words(bits, K), N, "qweight words"), "E_BUFFER", "qweight is too short for N x K");
    auto out = Napi::Uint8Array::New(info.Env(), (size_t)checked_mul(N, K, "N x K"));
    unpack_qweight(qw.data, N, K, bits, out.Data());
    return out;
  });
}

// packQzeros(zeros: Int32Array [G*N], G, N, bits, zeroOffset) -> Int32Array [G * packedWords(bits,N)]
Napi::Value PackQzeros(const Napi::CallbackInfo& info) {
  return guarded(info, [&]() -> Napi::Value {
    const auto z = typed_array<int32_t>(info[0], "zeros");
    const int64_t G = integer(info[1], "G"), N = integer(info[2], "N");
    const int bits = (int)integer(info[3], "bits");
    const int offset = (int)integer(info[4], "zeroOffset");
    const int64_t GN = check_matrix(z.length, G, N, "zeros");
    require(offset == 0 || offset == 1, "E_ARGUMENT", "zeroOffset must be 0 or 1");
    const int maxq = weight_format(bits).maxq();
    for (int64_t i = 0; i < GN; ++i)
      if (z.data[i] < 0 || z.data[i] > maxq)
        fail("E_ARGUMENT", "zeros[" + std::to_string(i) + "] = " + std::to_string(z.data[i]) + " is outside [0, " +
                               std::to_string(maxq) + "]");
    auto out = Napi::Int32Array::New(info.Env(), (size_t)checked_mul(G, packed_words(bits, N), "qzeros words"));
    pack_qzeros(z.data, G, N, bits, offset, out.Data());
    return out;
  });
}

Napi::Value UnpackQzeros(const Napi::CallbackInfo& info) {
  return guarded(info, [&]() -> Napi::Value {
    const auto qz = typed_array<int32_t>(info[0], "qzeros");
    const int64_t G = integer(info[1], "G"), N = integer(info[2], "N");
    const int bits = (int)integer(info[3], "bits");
    const int offset = (int)integer(info[4], "zeroOffset");
    require(G > 0 && N > 0, "E_SHAPE", "G and N must be positive");
    require(offset == 0 || offset == 1, "E_ARGUMENT", "zeroOffset must be 0 or 1");
    require(qz.length >= checked_mul(G, packed_words(bits, N), "qzeros words"), "E_BUFFER", "qzeros is too short for G x N");
    auto out = Napi::Int32Array::New(info.Env(), (size_t)checked_mul(G, N, "G x N"));
    unpack_qzeros(qz.data, G, N, bits, offset, out.Data());
    return out;
  });
}

// packedGemm(X: Float32Array [M*K], M, W: packed, Y: Float32Array [M*N], device: -1 CPU | CUDA index)
// Ownership (issue 8), async: X and W's buffers are copied into native memory (one memcpy of the
// packed weight, as much memory traffic as the product itself reads for small M; packedGemmSync reads
// them in place); Y is computed natively and copied into the caller's Y on completion (E_DETACHED if
// it was transferred meanwhile). The same for the CUDA path.
Napi::Value PackedGemmImpl(const Napi::CallbackInfo& info, bool async) {
  return guarded(info, [&]() -> Napi::Value {
    auto bufs = std::make_unique<CallBuffers>(async);
    const int64_t M = integer(info[1], "M");
    const int64_t device = info.Length() > 4 && !info[4].IsUndefined() ? integer(info[4], "device") : -1;
    // W's getters run first, inside packed_matrix_arg; X and Y are read after them.
    const PackedMatrix W = packed_matrix_arg(object_arg(info, 2, "W"), *bufs);
    const auto X = typed_array<float>(info[0], "X");
    const auto Y = typed_array<float>(info[3], "Y");
    require(M >= 1, "E_SHAPE", "M must be at least 1");
    const int64_t MK = check_matrix(X.length, M, W.K, "X");
    const int64_t MN = check_matrix(Y.length, M, W.N, "Y");
    const float* xp = bufs->input(Span<float>{X.data, MK});
    float* yp = bufs->output(info[3], Span<float>{Y.data, MN}, "Y");
    auto work = [=] {
      if (device < 0) packed_gemm(xp, M, W, yp);
      else cuda::packed_gemm((int)device, xp, M, W, yp);
    };
    if (!async) {
      work();
      return info.Env().Undefined();
    }
    return PromiseWorker::Run(info.Env(), work, nullptr, {}, std::move(bufs));
  });
}

Napi::Value PackedGemm(const Napi::CallbackInfo& info) { return PackedGemmImpl(info, true); }
Napi::Value PackedGemmSync(const Napi::CallbackInfo& info) { return PackedGemmImpl(info, false); }

// dequantize(W: packed) -> Float32Array [N*K]
Napi::Value Dequantize(const Napi::CallbackInfo& info) {
  return guarded(info, [&]() -> Napi::Value {
    CallBuffers bufs(false);
    const PackedMatrix W = packed_matrix_arg(object_arg(info, 0, "W"), bufs);
    auto out = Napi::Float32Array::New(info.Env(), (size_t)checked_mul(W.N, W.K, "N x K"));
    dequantize(W, out.Data());
    return out;
  });
}

// denseGemm(X [M*K], M, W [N*K], N, K, Y [M*N]) -> Promise<void>
// Ownership (issue 8): X and W copied in, Y computed natively and copied out on completion.
Napi::Value DenseGemm(const Napi::CallbackInfo& info) {
  return guarded(info, [&]() -> Napi::Value {
    const auto X = typed_array<float>(info[0], "X");
    const int64_t M = integer(info[1], "M");
    const auto W = typed_array<float>(info[2], "W");
    const int64_t N = integer(info[3], "N"), K = integer(info[4], "K");
    const auto Y = typed_array<float>(info[5], "Y");
    auto bufs = std::make_unique<CallBuffers>(true);
    const float* xp = bufs->input(Span<float>{X.data, check_matrix(X.length, M, K, "X")});
    const float* wp = bufs->input(Span<float>{W.data, check_matrix(W.length, N, K, "W")});
    float* yp = bufs->output(info[5], Span<float>{Y.data, check_matrix(Y.length, M, N, "Y")}, "Y");
    return PromiseWorker::Run(info.Env(), [=] { dense_gemm(xp, M, wp, N, K, yp); }, nullptr, {}, std::move(bufs));
  });
}

DType dtype_arg(const Napi::Value& v, const char* name) {
  const std::string s = v.IsString() ? v.As<Napi::String>().Utf8Value() : "";
  if (s == "f32") return DType::F32;
  if (s == "f16") return DType::F16;
  if (s == "bf16") return DType::BF16;
  fail("E_DTYPE", std::string(name) + " must be 'f32', 'f16' or 'bf16'");
}

// convert(src: Uint8Array bytes, from, dst: Uint8Array bytes, to, count): float dtype conversion.
Napi::Value Convert(const Napi::CallbackInfo& info) {
  return guarded(info, [&]() -> Napi::Value {
    const auto src = typed_array<uint8_t>(info[0], "src");
    const DType from = dtype_arg(info[1], "from");
    const auto dst = typed_array<uint8_t>(info[2], "dst");
    const DType to = dtype_arg(info[3], "to");
    const int64_t n = integer(info[4], "count");
    require(n >= 0, "E_ARGUMENT", "count must be non-negative");
    require(src.length >= checked_mul(n, (int64_t)dtype_size(from), "count"), "E_BUFFER", "src is too short for count elements");
    require(dst.length >= checked_mul(n, (int64_t)dtype_size(to), "count"), "E_BUFFER", "dst is too short for count elements");
    require(from == DType::F32 || reinterpret_cast<uintptr_t>(src.data) % 2 == 0, "E_BUFFER", "src is misaligned");
    require(reinterpret_cast<uintptr_t>(src.data) % dtype_size(from) == 0, "E_BUFFER", "src is misaligned");
    require(reinterpret_cast<uintptr_t>(dst.data) % dtype_size(to) == 0, "E_BUFFER", "dst is misaligned");
    convert(src.data, from, dst.data, to, (size_t)n);
    return info.Env().Undefined();
  });
}

}  // namespace

void InitQuant(Napi::Env env, Napi::Object exports) {
  exports.Set("rtnQuantize", Napi::Function::New(env, RtnQuantize));
  exports.Set("packQweight", Napi::Function::New(env, PackQweight));
  exports.Set("unpackQweight", Napi::Function::New(env, UnpackQweight));
  exports.Set("packQzeros", Napi::Function::New(env, PackQzeros));
  exports.Set("unpackQzeros", Napi::Function::New(env, UnpackQzeros));
  exports.Set("packedGemm", Napi::Function::New(env, PackedGemm));
  exports.Set("packedGemmSync", Napi::Function::New(env, PackedGemmSync));
  exports.Set("dequantize", Napi::Function::New(env, Dequantize));
  exports.Set("denseGemm", Napi::Function::New(env, DenseGemm));
  exports.Set("convert", Napi::Function::New(env, Convert));
}

}  // namespace binding
}  // namespace lowbit

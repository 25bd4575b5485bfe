// SpQR: bindings for the quantization sweep, dequantization and the CPU product. Argument checks
// and worker dispatch only; the math is in native/core/spqr{,_gemm}.cpp.
#include <cmath>
#include <initializer_list>
#include <memory>
#include <string>
#include <vector>

#include "../core/spqr.hpp"
#include "../core/spqr_gemm.hpp"
#include "napi_util.hpp"
#include "weights_arg.hpp"

namespace lowbit {
namespace binding {
namespace {

double number(const Napi::Value& v, const char* name) {
  if (!v.IsNumber()) throw CoreError("E_ARGUMENT", std::string(name) + " must be a number");
  return v.As<Napi::Number>().DoubleValue();
}

SpqrOptions spqr_options(const Napi::Object& o) {
  SpqrOptions s;
  auto opt_int = [&](const char* key, auto& dst) {
    const Napi::Value v = o.Get(key);  // (each property read once)
    if (!v.IsUndefined()) dst = (std::remove_reference_t<decltype(dst)>)integer(v, key);
  };
  auto opt_num = [&](const char* key, double& dst) {
    const Napi::Value v = o.Get(key);
    if (!v.IsUndefined()) dst = number(v, key);
  };
  opt_int("bits", s.bits);
  opt_int("beta1", s.beta1);
  opt_int("beta2", s.beta2);
  opt_int("statBits", s.stat_bits);
  opt_num("outlierThreshold", s.outlier_threshold);
  opt_num("outlierBudget", s.outlier_budget);
  opt_num("dampPercent", s.damp_percent);
  opt_int("maxDampRaises", s.max_damp_raises);
  opt_int("blockSize", s.block_size);
  const Napi::Value act_order = o.Get("actOrder");
  if (!act_order.IsUndefined()) s.act_order = boolean(act_order, "actOrder");
  const Napi::Value grid_search = o.Get("gridSearch");
  if (!grid_search.IsUndefined()) s.grid_search = boolean(grid_search, "gridSearch");
  const Napi::Value stat_search = o.Get("statSearch");
  if (!stat_search.IsUndefined()) s.stat_search = boolean(stat_search, "statSearch");
  return s;
}

template <class T>
Napi::Value copy_out(Napi::Env env, const std::vector<T>& v);
template <>
Napi::Value copy_out(Napi::Env env, const std::vector<uint8_t>& v) {
  auto a = Napi::Uint8Array::New(env, v.size());
  std::copy(v.begin(), v.end(), a.Data());
  return a;
}
template <>
Napi::Value copy_out(Napi::Env env, const std::vector<uint16_t>& v) {
  auto a = Napi::Uint16Array::New(env, v.size());
  std::copy(v.begin(), v.end(), a.Data());
  return a;
}
template <>
Napi::Value copy_out(Napi::Env env, const std::vector<int32_t>& v) {
  auto a = Napi::Int32Array::New(env, v.size());
  std::copy(v.begin(), v.end(), a.Data());
  return a;
}

// spqrQuantize(W: Float32Array [N*K], N, K, H: Float32Array [K*K], options) -> Promise<{ weights…, report… }>
Napi::Value SpqrQuantize(const Napi::CallbackInfo& info) {
  return guarded(info, [&]() -> Napi::Value {
    const int64_t N = integer(info[1], "N"), K = integer(info[2], "K");
    require(N > 0 && K > 0 && N <= ((int64_t)1 << 31) && K <= 65536, "E_SHAPE", "N must be positive and K in [1, 65536]");
    const int64_t NK = checked_mul(N, K, "N x K"), KK = checked_mul(K, K, "K x K");
    const SpqrOptions opt = spqr_options(object_arg(info, 4, "options"));
    validate_spqr_options(opt, K);
    // Every option getter has run; the arrays are read (and copied: the work runs off the main thread) from here on.
    auto bufs = std::make_unique<CallBuffers>(true);
    const auto W = typed_array<float>(info[0], "W");
    require(W.length >= NK, "E_BUFFER",
            "W holds " + std::to_string(W.length) + " elements, needs " + std::to_string(N) + " x " + std::to_string(K));
    const auto H = typed_array<float>(info[3], "H");
    require(H.length >= KK, "E_BUFFER", "H holds " + std::to_string(H.length) + " elements, needs K x K = " + std::to_string(KK));
    const float* wp = bufs->input(Span<float>{W.data, NK});
    const float* hp = bufs->input(Span<float>{H.data, KK});
    auto result = std::make_shared<SpqrResult>();
    return PromiseWorker::Run(
        info.Env(), [=] { *result = spqr_quantize(wp, N, K, hp, opt); },
        [result](Napi::Env env) -> Napi::Value {
          const SpqrResult& r = *result;
          Napi::Object o = Napi::Object::New(env);
          o.Set("bits", r.bits);
          o.Set("statBits", r.stat_bits);
          o.Set("N", (double)r.N);
          o.Set("K", (double)r.K);
          o.Set("beta1", (double)r.beta1);
          o.Set("beta2", (double)r.beta2);
          o.Set("qweight", copy_out(env, r.qweight));
          o.Set("scaleCodes", copy_out(env, r.scale_codes));
          o.Set("zeroCodes", copy_out(env, r.zero_codes));
          o.Set("scaleStats", copy_out(env, r.scale_stats));
          o.Set("zeroStats", copy_out(env, r.zero_stats));
          if (!r.perm.empty()) o.Set("perm", copy_out(env, r.perm));
          o.Set("outlierRowptr", copy_out(env, r.outlier_rowptr));
          o.Set("outlierCols", copy_out(env, r.outlier_cols));
          o.Set("outlierValues", copy_out(env, r.outlier_values));
          const SpqrReport& rep = r.report;
          Napi::Object report = Napi::Object::New(env);
          report.Set("damp", rep.damp);
          report.Set("dampPercent", rep.damp_percent);
          report.Set("dampRaises", rep.damp_raises);
          report.Set("deadInputs", (double)rep.dead_inputs);
          report.Set("loss", rep.loss);
          report.Set("typicalError", rep.typical_error);
          report.Set("outlierThreshold", std::isfinite(rep.outlier_threshold) ? Napi::Value::From(env, rep.outlier_threshold) : env.Null());
          report.Set("outlierCandidates", (double)rep.outlier_candidates);
          Napi::Object bits = Napi::Object::New(env);
          bits.Set("weights", (double)rep.bits.weights);
          bits.Set("firstLevel", (double)rep.bits.first_level);
          bits.Set("secondLevel", (double)rep.bits.second_level);
          bits.Set("permutation", (double)rep.bits.permutation);
          bits.Set("outliers", (double)rep.bits.outliers);
          bits.Set("total", (double)rep.bits.total());
          report.Set("bits", bits);
          Napi::Array warnings = Napi::Array::New(env, rep.warnings.size());
          for (size_t i = 0; i < rep.warnings.size(); ++i) warnings.Set((uint32_t)i, rep.warnings[i]);
          report.Set("warnings", warnings);
          o.Set("report", report);
          return o;
        },
        {}, std::move(bufs));
  });
}

// spqrDequantize(weights) -> Float32Array [N*K], original column order
Napi::Value SpqrDequantize(const Napi::CallbackInfo& info) {
  return guarded(info, [&]() -> Napi::Value {
    CallBuffers bufs(false);
    const SpqrMatrix m = spqr_matrix_arg(info[0], bufs);
    auto out = Napi::Float32Array::New(info.Env(), (size_t)checked_mul(m.N, m.K, "N x K"));
    spqr_dequantize(m, out.Data());
    return out;
  });
}

// spqrBits(bits, statBits, N, K, beta1, beta2, hasPerm, outliers) -> { weights, …, total }
Napi::Value SpqrStorageBits(const Napi::CallbackInfo& info) {
  return guarded(info, [&]() -> Napi::Value {
    const SpqrBits b = spqr_storage_bits((int)integer(info[0], "bits"), (int)integer(info[1], "statBits"), integer(info[2], "N"),
                                         integer(info[3], "K"), integer(info[4], "beta1"), integer(info[5], "beta2"),
                                         boolean(info[6], "hasPerm"), integer(info[7], "outliers"));
    Napi::Object o = Napi::Object::New(info.Env());
    o.Set("weights", (double)b.weights);
    o.Set("firstLevel", (double)b.first_level);
    o.Set("secondLevel", (double)b.second_level);
    o.Set("permutation", (double)b.permutation);
    o.Set("outliers", (double)b.outliers);
    o.Set("total", (double)b.total());
    return o;
  });
}

// spqrGemm(X: Float32Array [M*K], M, weights) -> Float32Array [M*N]. Repacks on every call: for
// tests and benchmarks; the model repacks once at load.
Napi::Value SpqrGemm(const Napi::CallbackInfo& info) {
  return guarded(info, [&]() -> Napi::Value {
    const int64_t M = integer(info[1], "M");
    CallBuffers bufs(false);
    const SpqrMatrix m = spqr_matrix_arg(info[2], bufs);  // (its getters run before X is read)
    const auto X = typed_array<float>(info[0], "X");
    require(M > 0, "E_SHAPE", "M must be positive");
    const int64_t MK = checked_mul(M, m.K, "M x K");
    require(X.length == MK, "E_BUFFER", "X holds " + std::to_string(X.length) + " elements, needs M x K = " + std::to_string(MK));
    const SpqrCpuWeights w = SpqrCpuWeights::from(m);
    auto Y = Napi::Float32Array::New(info.Env(), (size_t)checked_mul(M, m.N, "M x N"));
    spqr_gemm(X.data, M, w, Y.Data());
    return Y;
  });
}

}  // namespace

void InitSpqr(Napi::Env env, Napi::Object exports) {
  exports.Set("spqrQuantize", Napi::Function::New(env, SpqrQuantize));
  exports.Set("spqrDequantize", Napi::Function::New(env, SpqrDequantize));
  exports.Set("spqrStorageBits", Napi::Function::New(env, SpqrStorageBits));
  exports.Set("spqrGemm", Napi::Function::New(env, SpqrGemm));
}

}  // namespace binding
}  // namespace lowbit

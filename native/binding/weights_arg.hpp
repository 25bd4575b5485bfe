// Reading one linear layer's weight from JavaScript: one reader per weight format
// (native/core/weights/format.hpp), picked by the object's `format` tag. No math.
#pragma once

#include <string>
#include <vector>

#include "../core/weights/linear.hpp"
#include "napi_util.hpp"

namespace lowbit {
namespace binding {

inline DType float_dtype_arg(const Napi::Value& v, const char* name) {
  const std::string s = v.IsString() ? v.As<Napi::String>().Utf8Value() : "";
  if (s == "f32") return DType::F32;
  if (s == "f16") return DType::F16;
  if (s == "bf16") return DType::BF16;
  fail("E_DTYPE", std::string(name) + " must be 'f32', 'f16' or 'bf16'");
}

// 'int8' | 'f32' (LinearOptions::cpu_activations); undefined keeps `fallback`.
inline LinearOptions::CpuActivations cpu_activations_arg(const Napi::Value& v, const char* name,
                                                         LinearOptions::CpuActivations fallback) {
  if (v.IsUndefined()) return fallback;
  const std::string s = v.IsString() ? v.As<Napi::String>().Utf8Value() : "";
  if (s == "int8") return LinearOptions::CpuActivations::Int8;
  if (s == "f32") return LinearOptions::CpuActivations::F32;
  fail("E_ARGUMENT", std::string(name) + " must be 'int8' or 'f32'");
}

inline void check_length(int64_t len, int64_t need, const std::string& name) {
  require(len >= need, "E_BUFFER", name + " holds " + std::to_string(len) + " elements, needs " + std::to_string(need));
}

// A dense [N, K] matrix {dtype, data} checked for length; the data pointer comes from `bufs` (a copy
// for the async weight setters). Each property is read once.
inline const void* dense_arg(const Napi::Object& o, int64_t N, int64_t K, const std::string& name, DType* dtype,
                             CallBuffers& bufs) {
  const Napi::Value dtype_value = o.Get("dtype"), data_value = o.Get("data");
  *dtype = float_dtype_arg(dtype_value, (name + ".dtype").c_str());
  const int64_t need = checked_mul(N, K, name.c_str());
  if (*dtype == DType::F32) {
    const auto s = typed_array<float>(data_value, (name + ".data (Float32Array)").c_str());
    check_length(s.length, need, name + ".data");
    return bufs.input(Span<float>{s.data, need});
  }
  const auto s = typed_array<uint16_t>(data_value, (name + ".data (Uint16Array of 16-bit patterns)").c_str());
  check_length(s.length, need, name + ".data");
  return bufs.input(Span<uint16_t>{s.data, need});
}

// The readers, one per format. N and K: the shape the caller needs, or 0 to read it from the object.
// Like packed_matrix_arg, each reads every property it needs (getters may run JavaScript) before it
// takes the first pointer.
// format 'dense': {dtype, data, N?, K?}
inline LinearWeights read_dense(const Napi::Object& o, int64_t N, int64_t K, const std::string& name, CallBuffers& bufs) {
  DenseMatrix d;
  d.N = N > 0 ? N : integer(o.Get("N"), (name + ".N").c_str());
  d.K = K > 0 ? K : integer(o.Get("K"), (name + ".K").c_str());
  require(d.N > 0 && d.K > 0, "E_SHAPE", name + ": N and K must be positive");
  d.data = dense_arg(o, d.N, d.K, name, &d.dtype, bufs);
  LinearWeights w;
  w.matrix = d;
  return w;
}

// format 'gptq': the PackedWeights fields (src/weights/types.ts) {bits, K, N, groupSize, groups,
// zeroOffset, qweight, qzeros, scales, gIdx?}
inline LinearWeights read_gptq(const Napi::Object& o, int64_t, int64_t, const std::string&, CallBuffers& bufs) {
  LinearWeights w;
  w.matrix = packed_matrix_arg(o, bufs);
  return w;
}

// The SpqrMatrix behind a JavaScript SpqrWeights object (src/quantize/spqr.ts), every length and
// index checked (validate_spqr). Every property is read once, and all of them (getters may run
// JavaScript, e.g. detach another field's buffer) before the first pointer is taken. The arrays
// come from `bufs` (copies for an async call); the index arrays (perm, row pointers, columns) are
// always private copies, so what was checked is what the kernels index with.
inline SpqrMatrix spqr_matrix_arg(const Napi::Value& v, CallBuffers& bufs) {
  require(v.IsObject(), "E_ARGUMENT", "SpQR weights must be an object");
  const Napi::Object o = v.As<Napi::Object>();
  const char* const keys[] = {"bits", "statBits", "N", "K", "beta1", "beta2", "qweight", "scaleCodes", "zeroCodes",
                              "scaleStats", "zeroStats", "perm", "outlierRowptr", "outlierCols", "outlierValues"};
  std::vector<Napi::Value> f;
  for (const char* key : keys) f.push_back(o.Get(key));
  SpqrMatrix m;
  m.bits = (int)integer(f[0], "bits");
  m.stat_bits = (int)integer(f[1], "statBits");
  m.N = integer(f[2], "N");
  m.K = integer(f[3], "K");
  m.beta1 = integer(f[4], "beta1");
  m.beta2 = integer(f[5], "beta2");
  const auto qw = typed_array<uint8_t>(f[6], "qweight");
  const auto sc = typed_array<uint8_t>(f[7], "scaleCodes");
  const auto zc = typed_array<uint8_t>(f[8], "zeroCodes");
  const auto ss = typed_array<uint16_t>(f[9], "scaleStats");
  const auto zs = typed_array<uint16_t>(f[10], "zeroStats");
  const auto perm = optional_typed_array<int32_t>(f[11], "perm");
  const auto rowptr = typed_array<int32_t>(f[12], "outlierRowptr");
  const auto cols = typed_array<int32_t>(f[13], "outlierCols");
  const auto vals = typed_array<uint16_t>(f[14], "outlierValues");
  require(rowptr.length == m.N + 1 || m.N <= 0, "E_BUFFER",
          "outlierRowptr holds " + std::to_string(rowptr.length) + " elements, expected N + 1");
  // (validate_spqr requires every length to be exactly what the shape implies: the copies are of that size)
  m.qweight = bufs.input(qw);
  m.scale_codes = bufs.input(sc);
  m.zero_codes = bufs.input(zc);
  m.scale_stats = bufs.input(ss);
  m.zero_stats = bufs.input(zs);
  m.perm = bufs.index(perm);
  m.outlier_rowptr = bufs.index(rowptr);
  m.outlier_cols = bufs.index(cols);
  m.outlier_values = bufs.input(vals);
  validate_spqr(m, {qw.length, sc.length, zc.length, ss.length, zs.length, perm.length, rowptr.length, cols.length,
                    vals.length});
  return m;
}

// format 'spqr': the SpqrWeights fields (src/weights/types.ts) {bits, statBits, N, K, beta1, beta2,
// qweight, scaleCodes, zeroCodes, scaleStats, zeroStats, perm?, outlierRowptr, outlierCols, outlierValues}
inline LinearWeights read_spqr(const Napi::Object& o, int64_t, int64_t, const std::string&, CallBuffers& bufs) {
  LinearWeights w;
  w.matrix = spqr_matrix_arg(o, bufs);
  return w;
}

using FormatReader = LinearWeights (*)(const Napi::Object&, int64_t, int64_t, const std::string&, CallBuffers&);
// Indexed by Format.
inline constexpr FormatReader kFormatReaders[kFormatCount] = {&read_dense, &read_gptq, &read_spqr};

// One linear's weight {format: 'dense' | 'gptq' | 'spqr', ...the format's fields, bias?: Float32Array [N]}.
// Without a tag: {packed: PackedWeights, bias?} is GPTQ (NativeModel's form), anything else dense.
// Checked (check_linear_weights) against N x K when given (0: any shape).
inline LinearWeights linear_weights_arg(const Napi::Value& v, int64_t N, int64_t K, const std::string& name,
                                        CallBuffers& bufs) {
  require(v.IsObject(), "E_ARGUMENT", name + " must be an object ({format, ...})");
  const Napi::Object o = v.As<Napi::Object>();
  const Napi::Value tag = o.Get("format"), packed = o.Get("packed"), bias = o.Get("bias");
  LinearWeights w;
  if (!tag.IsUndefined()) {
    const std::string f = tag.IsString() ? tag.As<Napi::String>().Utf8Value() : "";
    int index = -1;
    for (int i = 0; i < kFormatCount; ++i)
      if (f == kFormatNames[i]) index = i;
    if (index < 0) {
      std::string names;
      for (int i = 0; i < kFormatCount; ++i) names += (i ? ", '" : "'") + std::string(kFormatNames[i]) + "'";
      fail("E_ARGUMENT", name + ".format must be one of " + names + ", got '" + f + "'");
    }
    w = kFormatReaders[index](o, N, K, name, bufs);
  } else if (!packed.IsUndefined()) {
    require(packed.IsObject(), "E_ARGUMENT", name + ".packed must be an object");
    w = read_gptq(packed.As<Napi::Object>(), N, K, name, bufs);
  } else {
    w = read_dense(o, N, K, name, bufs);
  }
  // (bias was read with the other properties; taking its pointer runs no JavaScript)
  if (!bias.IsUndefined() && !bias.IsNull()) {
    const auto b = typed_array<float>(bias, (name + ".bias").c_str());
    check_length(b.length, w.N(), name + ".bias");
    w.bias = bufs.input(Span<float>{b.data, w.N()});
  }
  check_linear_weights(w, name, N, K);
  return w;
}

}  // namespace binding
}  // namespace lowbit

// The ops of the 16-bit forward pass (see llama16_ops.cuh): fp16/bf16 activations, f32 residual
// stream, statistics and accumulation. Each kernel is a template over the 16-bit type; the
// launchers pick the instance from the DType.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <algorithm>
#include <cmath>

#include "cuda_check.cuh"
#include "linear_ops.cuh"
#include "llama16_ops.cuh"

namespace lowbit {
namespace cuda {
namespace ops16 {
namespace {

__device__ __forceinline__ float to_f32(__half v) { return __half2float(v); }
__device__ __forceinline__ float to_f32(__nv_bfloat16 v) { return __bfloat162float(v); }
template <class T>
__device__ __forceinline__ T from_f32(float v);
template <>
__device__ __forceinline__ __half from_f32<__half>(float v) {
  return __float2half_rn(v);
}
template <>
__device__ __forceinline__ __nv_bfloat16 from_f32<__nv_bfloat16>(float v) {
  return __float2bfloat16_rn(v);
}

template <class T>
__global__ void k_gather_rows(const T* table, const int32_t* ids, int64_t n, int64_t dim, float* out) {
  const int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x;
  if (i < n * dim) out[i] = to_f32(table[(int64_t)ids[i / dim] * dim + i % dim]);
}

// One block per row: x += y (when y), then the f32 mean square and the normed row in 16 bits.
template <class T>
__global__ void k_add_rms_norm(float* X, const T* Yadd, int64_t dim, const float* w, float eps, T* out) {
  __shared__ float part[32];
  float* x = X + blockIdx.x * dim;
  const T* y = Yadd ? Yadd + blockIdx.x * dim : nullptr;
  T* o = out + blockIdx.x * dim;
  float ss = 0.f;
  for (int64_t i = threadIdx.x; i < dim; i += blockDim.x) {
    float v = x[i];
    if (y) {
      v += to_f32(y[i]);
      x[i] = v;
    }
    ss += v * v;
  }
  for (int off = 16; off; off >>= 1) ss += __shfl_xor_sync(0xffffffffu, ss, off);
  if (threadIdx.x % 32 == 0) part[threadIdx.x / 32] = ss;
  __syncthreads();
  if (threadIdx.x < 32) {
    float v = threadIdx.x < blockDim.x / 32 ? part[threadIdx.x] : 0.f;
    for (int off = 16; off; off >>= 1) v += __shfl_xor_sync(0xffffffffu, v, off);
    if (threadIdx.x == 0) part[0] = v;
  }
  __syncthreads();
  const float inv = rsqrtf(part[0] / (float)dim + eps);
  for (int64_t i = threadIdx.x; i < dim; i += blockDim.x) o[i] = from_f32<T>(w[i] * (x[i] * inv));
}

template <class T>
__global__ void k_add(float* x, const T* y, int64_t n) {
  const int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x;
  if (i < n) x[i] += to_f32(y[i]);
}

template <class T>
__global__ void k_rope(T* X, int64_t rows, int64_t S, const int32_t* pos, int64_t stride, int64_t heads, int64_t half,
                       const float* inv_freq, float scale) {
  const int64_t e = blockIdx.x * (int64_t)blockDim.x + threadIdx.x;
  if (e >= rows * heads * half) return;
  const int64_t i = e % half, h = (e / half) % heads, r = e / (half * heads);
  const float angle = inv_freq[i] * (float)(*pos + r % S);
  float sn, cs;
  sincosf(angle, &sn, &cs);
  cs *= scale;
  sn *= scale;
  T* x = X + r * stride + h * 2 * half;
  const float a = to_f32(x[i]), b = to_f32(x[i + half]);
  x[i] = from_f32<T>(a * cs - b * sn);
  x[i + half] = from_f32<T>(b * cs + a * sn);
}

template <class T>
__global__ void k_add_bias(T* Y, int64_t rows, int64_t N, const float* bias) {
  const int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x;
  if (i < rows * N) Y[i] = T(float(Y[i]) + bias[i % N]);
}

__global__ void k_append_kv(const uint16_t* k, const uint16_t* v, int64_t n, int64_t kw, const int32_t* pos,
                            uint16_t* kc, uint16_t* vc) {
  const int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x;
  if (i >= n) return;
  const int64_t at = (int64_t)*pos * kw + i;
  kc[at] = k[i];
  vc[at] = v[i];
}

template <class T>
__global__ void k_swiglu(const T* gate, const T* up, int64_t n, T* out) {
  const int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x;
  if (i >= n) return;
  const float g = to_f32(gate[i]);
  out[i] = from_f32<T>(g / (1.0f + expf(-g)) * to_f32(up[i]));
}

template <class T>
__global__ void k_widen(const T* x, int64_t n, float* y) {
  const int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x;
  if (i < n) y[i] = to_f32(x[i]);
}

template <class T, class S>
__global__ void k_convert(const S* x, int64_t n, T* y) {
  const int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x;
  if (i < n) y[i] = from_f32<T>(float(x[i]));
}

// --- attention

constexpr int kAttnWarps = 4;  // warps per block; each takes groups of kKeysPerStep keys in turn
constexpr int kKeysPerStep = 4;
constexpr float kLog2e = 1.4426950408889634f;

// One block per (query row, head, split of the keys). Lane l holds dims l*DPL .. l*DPL+DPL-1 of q
// and of its share of the output; a warp scores kKeysPerStep keys per step (the dot products
// reduced across lanes), keeping a running max m, sum l and output acc (scores in log2 units).
// The block's warps merge through shared memory; one split writes the output, several write
// (m, l, acc) to `partial` [rows][heads][splits][hd + 2] for k_attention_merge.
template <class T, int DPL>
__global__ void __launch_bounds__(kAttnWarps * 32)
    k_attention(const T* Q, int64_t S, const int32_t* pos, const T* K, const T* V, int64_t key_stride, int64_t heads,
                int64_t kv_heads, int64_t hd, float scale_log2, int splits, float* partial, T* out) {
  __shared__ float sm[kAttnWarps], sl[kAttnWarps];
  __shared__ float sacc[kAttnWarps][32 * DPL];
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int64_t r = blockIdx.x, h = blockIdx.y, split = blockIdx.z;
  const int64_t b = r / S, len = *pos + r % S + 1;
  const int64_t kvh = h / (heads / kv_heads), kw = kv_heads * hd;
  const int64_t chunk = (len + splits - 1) / splits, j0 = split * chunk, j1 = min(len, j0 + chunk);
  const T* q = Q + r * heads * hd + h * hd;
  const T* kbase = K + b * key_stride * kw + kvh * hd;
  const T* vbase = V + b * key_stride * kw + kvh * hd;

  float qv[DPL], acc[DPL];
#pragma unroll
  for (int e = 0; e < DPL; ++e) {
    const int64_t d = lane * DPL + e;
    qv[e] = d < hd ? to_f32(q[d]) * scale_log2 : 0.f;
    acc[e] = 0.f;
  }
  float m = -INFINITY, l = 0.f;
  for (int64_t j = j0 + (int64_t)warp * kKeysPerStep; j < j1; j += kAttnWarps * kKeysPerStep) {
    float s[kKeysPerStep];
#pragma unroll
    for (int u = 0; u < kKeysPerStep; ++u) {
      s[u] = 0.f;
      if (j + u < j1) {
        const T* k = kbase + (j + u) * kw;
#pragma unroll
        for (int e = 0; e < DPL; ++e) {
          const int64_t d = lane * DPL + e;
          if (d < hd) s[u] += qv[e] * to_f32(k[d]);
        }
      }
    }
#pragma unroll
    for (int off = 16; off; off >>= 1)
#pragma unroll
      for (int u = 0; u < kKeysPerStep; ++u) s[u] += __shfl_xor_sync(0xffffffffu, s[u], off);
    float m_new = m;
#pragma unroll
    for (int u = 0; u < kKeysPerStep; ++u)
      if (j + u < j1) m_new = fmaxf(m_new, s[u]);
    const float corr = exp2f(m - m_new);  // 0 on the first step (m = -inf)
    l *= corr;
#pragma unroll
    for (int e = 0; e < DPL; ++e) acc[e] *= corr;
#pragma unroll
    for (int u = 0; u < kKeysPerStep; ++u) {
      if (j + u >= j1) continue;
      const float p = exp2f(s[u] - m_new);
      l += p;
      const T* v = vbase + (j + u) * kw;
#pragma unroll
      for (int e = 0; e < DPL; ++e) {
        const int64_t d = lane * DPL + e;
        if (d < hd) acc[e] += p * to_f32(v[d]);
      }
    }
    m = m_new;
  }
  // Merge the warps: M = max m_w; L = sum l_w 2^(m_w - M); acc likewise.
  if (lane == 0) {
    sm[warp] = m;
    sl[warp] = l;
  }
#pragma unroll
  for (int e = 0; e < DPL; ++e) sacc[warp][lane * DPL + e] = acc[e];
  __syncthreads();
  float M = -INFINITY;
  for (int w = 0; w < kAttnWarps; ++w) M = fmaxf(M, sm[w]);
  float L = 0.f, wscale[kAttnWarps];
  for (int w = 0; w < kAttnWarps; ++w) {
    wscale[w] = sm[w] == -INFINITY ? 0.f : exp2f(sm[w] - M);
    L += sl[w] * wscale[w];
  }
  const size_t rh = (size_t)r * heads + h;
  for (int64_t d = threadIdx.x; d < hd; d += blockDim.x) {
    float o = 0.f;
    for (int w = 0; w < kAttnWarps; ++w) o += sacc[w][d] * wscale[w];
    if (splits == 1) out[rh * hd + d] = from_f32<T>(o / L);
    else partial[(rh * splits + split) * (hd + 2) + 2 + d] = o;
  }
  if (splits > 1 && threadIdx.x == 0) {
    partial[(rh * splits + split) * (hd + 2)] = M;
    partial[(rh * splits + split) * (hd + 2) + 1] = L;
  }
}

// One block per (row, head): merges the splits' (m, l, acc) into the output.
template <class T>
__global__ void k_attention_merge(const float* partial, int64_t heads, int64_t hd, int splits, T* out) {
  const size_t rh = (size_t)blockIdx.x * heads + blockIdx.y;
  const float* p = partial + rh * splits * (hd + 2);
  float M = -INFINITY;
  for (int s = 0; s < splits; ++s) M = fmaxf(M, p[s * (hd + 2)]);
  float L = 0.f;
  for (int s = 0; s < splits; ++s) {
    const float ms = p[s * (hd + 2)];
    if (ms != -INFINITY) L += p[s * (hd + 2) + 1] * exp2f(ms - M);
  }
  for (int64_t d = threadIdx.x; d < hd; d += blockDim.x) {
    float o = 0.f;
    for (int s = 0; s < splits; ++s) {
      const float ms = p[s * (hd + 2)];
      if (ms != -INFINITY) o += p[s * (hd + 2) + 2 + d] * exp2f(ms - M);
    }
    out[rh * hd + d] = from_f32<T>(o / L);
  }
}

template <class T, int DPL>
void attention_t(const T* Q, int64_t rows, int64_t S, const int32_t* pos, const T* K, const T* V, int64_t key_stride,
                 int64_t heads, int64_t kv_heads, int64_t hd, float scale, int splits, float* partial, T* out,
                 cudaStream_t s) {
  const dim3 grid((unsigned)rows, (unsigned)heads, (unsigned)splits);
  k_attention<T, DPL><<<grid, kAttnWarps * 32, 0, s>>>(Q, S, pos, K, V, key_stride, heads, kv_heads, hd,
                                                        scale * kLog2e, splits, partial, out);
  check(cudaGetLastError(), "attention launch");
  if (splits > 1) {
    k_attention_merge<T><<<dim3((unsigned)rows, (unsigned)heads), 128, 0, s>>>(partial, heads, hd, splits, out);
    check(cudaGetLastError(), "attention merge launch");
  }
}

template <class T>
void attention_dispatch(const T* Q, int64_t rows, int64_t S, const int32_t* pos, const T* K, const T* V, int64_t key_stride,
                        int64_t heads, int64_t kv_heads, int64_t hd, float scale, int splits, float* partial, T* out,
                        cudaStream_t s) {
  if (hd <= 32) attention_t<T, 1>(Q, rows, S, pos, K, V, key_stride, heads, kv_heads, hd, scale, splits, partial, out, s);
  else if (hd <= 64)
    attention_t<T, 2>(Q, rows, S, pos, K, V, key_stride, heads, kv_heads, hd, scale, splits, partial, out, s);
  else if (hd <= 128)
    attention_t<T, 4>(Q, rows, S, pos, K, V, key_stride, heads, kv_heads, hd, scale, splits, partial, out, s);
  else attention_t<T, 8>(Q, rows, S, pos, K, V, key_stride, heads, kv_heads, hd, scale, splits, partial, out, s);
}

unsigned grid_for(int64_t n) { return blocks_for(n, 256); }

// Calls f with a null pointer of the 16-bit type t names (to pick a template instance).
template <class F>
void with_type(DType t, F&& f) {
  require(t == DType::F16 || t == DType::BF16, "E_DTYPE", "16-bit activations are f16 or bf16");
  if (t == DType::F16) f((__half*)nullptr);
  else f((__nv_bfloat16*)nullptr);
}

}  // namespace

void gather_rows(DType t, const uint16_t* table, const int32_t* ids, int64_t n, int64_t dim, float* out,
                 cudaStream_t s) {
  with_type(t, [&](auto* tag) {
    using T = std::remove_pointer_t<decltype(tag)>;
    k_gather_rows<<<grid_for(n * dim), 256, 0, s>>>(reinterpret_cast<const T*>(table), ids, n, dim, out);
  });
  check(cudaGetLastError(), "gather_rows launch");
}

void add_rms_norm(DType t, float* x, const uint16_t* y, int64_t rows, int64_t dim, const float* w, float eps,
                  uint16_t* Y, cudaStream_t s) {
  with_type(t, [&](auto* tag) {
    using T = std::remove_pointer_t<decltype(tag)>;
    k_add_rms_norm<<<(unsigned)rows, 256, 0, s>>>(x, reinterpret_cast<const T*>(y), dim, w, eps,
                                                  reinterpret_cast<T*>(Y));
  });
  check(cudaGetLastError(), "rms_norm launch");
}

void add(DType t, float* x, const uint16_t* y, int64_t n, cudaStream_t s) {
  with_type(t, [&](auto* tag) {
    using T = std::remove_pointer_t<decltype(tag)>;
    k_add<<<grid_for(n), 256, 0, s>>>(x, reinterpret_cast<const T*>(y), n);
  });
  check(cudaGetLastError(), "add launch");
}

void rope(DType t, uint16_t* X, int64_t rows, int64_t S, const int32_t* pos, int64_t stride, int64_t heads,
          int64_t half, const float* inv_freq, float scale, cudaStream_t s) {
  with_type(t, [&](auto* tag) {
    using T = std::remove_pointer_t<decltype(tag)>;
    k_rope<<<grid_for(rows * heads * half), 256, 0, s>>>(reinterpret_cast<T*>(X), rows, S, pos, stride, heads, half,
                                                         inv_freq, scale);
  });
  check(cudaGetLastError(), "rope launch");
}

void add_bias(DType t, void* Y, bool y_f32, int64_t rows, int64_t N, const float* bias, cudaStream_t s) {
  if (y_f32) {
    k_add_bias<<<grid_for(rows * N), 256, 0, s>>>(static_cast<float*>(Y), rows, N, bias);
  } else {
    with_type(t, [&](auto* tag) {
      using T = std::remove_pointer_t<decltype(tag)>;
      k_add_bias<<<grid_for(rows * N), 256, 0, s>>>(static_cast<T*>(Y), rows, N, bias);
    });
  }
  check(cudaGetLastError(), "add_bias launch");
}

void append_kv(const uint16_t* k, const uint16_t* v, int64_t rows, int64_t kw, const int32_t* pos, uint16_t* kc,
               uint16_t* vc, cudaStream_t s) {
  k_append_kv<<<grid_for(rows * kw), 256, 0, s>>>(k, v, rows * kw, kw, pos, kc, vc);
  check(cudaGetLastError(), "append_kv launch");
}

void swiglu(DType t, const uint16_t* gate, const uint16_t* up, int64_t n, uint16_t* out, cudaStream_t s) {
  with_type(t, [&](auto* tag) {
    using T = std::remove_pointer_t<decltype(tag)>;
    k_swiglu<<<grid_for(n), 256, 0, s>>>(reinterpret_cast<const T*>(gate), reinterpret_cast<const T*>(up), n,
                                         reinterpret_cast<T*>(out));
  });
  check(cudaGetLastError(), "swiglu launch");
}

void widen(DType t, const uint16_t* x, int64_t n, float* y, cudaStream_t s) {
  with_type(t, [&](auto* tag) {
    using T = std::remove_pointer_t<decltype(tag)>;
    k_widen<<<grid_for(n), 256, 0, s>>>(reinterpret_cast<const T*>(x), n, y);
  });
  check(cudaGetLastError(), "widen launch");
}

void narrow(DType t, const float* x, int64_t n, uint16_t* y, cudaStream_t s) { convert(DType::F32, x, t, n, y, s); }

void convert(DType from, const void* src, DType t, int64_t n, uint16_t* dst, cudaStream_t s) {
  with_type(t, [&](auto* tag) {
    using T = std::remove_pointer_t<decltype(tag)>;
    T* y = reinterpret_cast<T*>(dst);
    if (from == DType::F32) k_convert<<<grid_for(n), 256, 0, s>>>(static_cast<const float*>(src), n, y);
    else if (from == DType::F16) k_convert<<<grid_for(n), 256, 0, s>>>(static_cast<const __half*>(src), n, y);
    else if (from == DType::BF16) k_convert<<<grid_for(n), 256, 0, s>>>(static_cast<const __nv_bfloat16*>(src), n, y);
    else fail("E_DTYPE", "weights to convert must be f32, f16 or bf16");
  });
  check(cudaGetLastError(), "convert launch");
}

int attention_splits(int64_t rows, int64_t heads, int64_t longest, int multiprocessors) {
  // Enough blocks to give every multiprocessor about four, each range at least 64 keys long.
  const int64_t want = ceil_div(4 * (int64_t)std::max(multiprocessors, 1), rows * heads);
  return (int)std::max<int64_t>(1, std::min<int64_t>({want, ceil_div(longest, 64), 64}));
}

int64_t attention_partial_floats(int64_t rows, int64_t heads, int64_t hd, int splits) {
  return splits > 1 ? rows * heads * splits * (hd + 2) : 0;
}

void attention(DType t, const uint16_t* Q, int64_t rows, int64_t S, const int32_t* pos, const uint16_t* K, const uint16_t* V,
               int64_t key_stride, int64_t heads, int64_t kv_heads, int64_t hd, float scale, int splits, float* partial,
               uint16_t* out, cudaStream_t s) {
  require(hd >= 1 && hd <= 256, "E_UNSUPPORTED", "the 16-bit attention kernel takes head_dim up to 256");
  require(splits >= 1 && (splits == 1 || partial != nullptr), "E_INTERNAL", "attention splits need scratch");
  with_type(t, [&](auto* tag) {
    using T = std::remove_pointer_t<decltype(tag)>;
    attention_dispatch<T>(reinterpret_cast<const T*>(Q), rows, S, pos, reinterpret_cast<const T*>(K),
                          reinterpret_cast<const T*>(V), key_stride, heads, kv_heads, hd, scale, splits, partial,
                          reinterpret_cast<T*>(out), s);
  });
}

}  // namespace ops16
}  // namespace cuda
}  // namespace lowbit

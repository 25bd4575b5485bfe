// The ops of the 16-bit forward pass (see llama16_ops.cuh): fp16/bf16 activations, f32 residual
// stream, statistics and accumulation. Each kernel is a template over the 16-bit type; the
// launchers pick the instance from the DType.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <string>
#include <type_traits>

#include "cuda_check.cuh"
#include "linear_ops.cuh"
#include "llama16_ops.cuh"
#include "overlap.cuh"

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

// kernel<<<grid, block, 0, s>>>(args...) with the arguments converted to the kernel's parameter types.
template <class... Params, class... Args>
void launch(void (*kernel)(Params...), dim3 grid, dim3 block, cudaStream_t s, const char* what, Args... args) {
  kernel<<<grid, block, 0, s>>>(static_cast<Params>(args)...);
  check(cudaGetLastError(), what);
}

// The same, launched overlapped with the kernel ahead in the stream (overlap.cuh) where the device
// allows: for the decode step's small kernels between two products, which call wait_for_previous()
// before reading anything the kernel ahead writes. Their launch and first loads then overlap the
// product ahead's last blocks. The norms, SwiGLU and the fused decode attention call
// let_next_launch() first thing: the kernel after each is a product, which reads only its own
// weights before its wait, and that wait returns only once this kernel (so also the one before it)
// has finished; the product's first weight loads then overlap this kernel as well (7B shape, 4-bit,
// H200: +1.5% at batch 1 through generation, +2% at batch 8). Kernels followed by anything else let
// the next start only after their own wait: its early reads could race with the kernel two back.
// Only for up to kOverlapRows rows: at 32 rows of decode (7B shape, H200) it cost 3% where 1 and 8
// rows gained 5% and 3% (bench/RESULTS.md), so from 16 rows on they launch as before.
constexpr int64_t kOverlapRows = 8;
template <class... Params, class... Args>
void launch_dependent(int64_t rows, void (*kernel)(Params...), dim3 grid, dim3 block, cudaStream_t s,
                      const char* what, Args... args) {
  launch_maybe_overlapped(kernel, grid, block, 0, s, rows <= kOverlapRows && overlap_enabled(current_device()), what,
                          static_cast<Params>(args)...);
}

// RoPE at position p for frequency f: cos and sin of f32(f * p), times scale; then one pair (a, b)
// of a head rotated in f32 and rounded once. Every RoPE kernel (and the fused decode attention)
// goes through these two functions, with the roundings spelled out (no contraction into fma), so
// that fused and separate kernels give the same values bit for bit.
__device__ __forceinline__ void rope_cos_sin(float f, int64_t p, float scale, float& cs, float& sn) {
  sincosf(__fmul_rn(f, (float)p), &sn, &cs);
  cs = __fmul_rn(cs, scale);
  sn = __fmul_rn(sn, scale);
}
template <class T>
__device__ __forceinline__ void rotate_by(float a, float b, float cs, float sn, T& x, T& y) {
  x = from_f32<T>(__fsub_rn(__fmul_rn(a, cs), __fmul_rn(b, sn)));
  y = from_f32<T>(__fadd_rn(__fmul_rn(b, cs), __fmul_rn(a, sn)));
}
template <class T>
__device__ __forceinline__ void rotate_pair(float a, float b, float f, int64_t p, float scale, T& x, T& y) {
  float cs, sn;
  rope_cos_sin(f, p, scale, cs, sn);
  rotate_by(a, b, cs, sn, x, y);
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

// The same for rows of up to 1024·CH values (dim a multiple of 4): 256 threads, each loading its
// 4-value pieces of x, y and w once, up front, and keeping them in registers for the second pass, so
// the row costs one trip to memory instead of k_add_rms_norm's two dependent ones (the decode step's
// norms are a single row each: latency, not bandwidth).
constexpr int kNormThreads = 256;
template <class T, int CH>
__global__ void __launch_bounds__(kNormThreads)
    k_add_rms_norm_rows(float* X, const T* Yadd, int64_t dim, const float* w, float eps, T* out) {
  __shared__ float part[kNormThreads / 32];
  const int64_t n4 = dim / 4;
  float4* x = reinterpret_cast<float4*>(X + blockIdx.x * dim);
  const uint2* y = Yadd ? reinterpret_cast<const uint2*>(Yadd + blockIdx.x * dim) : nullptr;
  const float4* w4 = reinterpret_cast<const float4*>(w);
  float4 v[CH], wv[CH];
  uint2 yv[CH];
  let_next_launch();  // the product after it may start fetching its weights (launch_dependent)
  // The norm's weights before the kernel ahead has finished; the rows after.
#pragma unroll
  for (int c = 0; c < CH; ++c) {
    const int64_t i = threadIdx.x + (int64_t)c * kNormThreads;
    if (i < n4) wv[c] = __ldg(w4 + i);
  }
  wait_for_previous();
#pragma unroll
  for (int c = 0; c < CH; ++c) {
    const int64_t i = threadIdx.x + (int64_t)c * kNormThreads;
    if (i < n4) {
      v[c] = x[i];
      if (y) yv[c] = y[i];
    }
  }
  float ss = 0.f;
#pragma unroll
  for (int c = 0; c < CH; ++c) {
    const int64_t i = threadIdx.x + (int64_t)c * kNormThreads;
    if (i >= n4) continue;
    if (y) {
      const T* yt = reinterpret_cast<const T*>(&yv[c]);
      v[c].x += to_f32(yt[0]);
      v[c].y += to_f32(yt[1]);
      v[c].z += to_f32(yt[2]);
      v[c].w += to_f32(yt[3]);
      x[i] = v[c];
    }
    ss += v[c].x * v[c].x + v[c].y * v[c].y + v[c].z * v[c].z + v[c].w * v[c].w;
  }
  for (int off = 16; off; off >>= 1) ss += __shfl_xor_sync(0xffffffffu, ss, off);
  if (threadIdx.x % 32 == 0) part[threadIdx.x / 32] = ss;
  __syncthreads();
  float total = 0.f;
#pragma unroll
  for (int i = 0; i < kNormThreads / 32; ++i) total += part[i];
  const float inv = rsqrtf(total / (float)dim + eps);
  uint2* o = reinterpret_cast<uint2*>(out + blockIdx.x * dim);
#pragma unroll
  for (int c = 0; c < CH; ++c) {
    const int64_t i = threadIdx.x + (int64_t)c * kNormThreads;
    if (i >= n4) continue;
    alignas(8) T r[4] = {from_f32<T>(wv[c].x * (v[c].x * inv)), from_f32<T>(wv[c].y * (v[c].y * inv)),
                         from_f32<T>(wv[c].z * (v[c].z * inv)), from_f32<T>(wv[c].w * (v[c].w * inv))};
    o[i] = *reinterpret_cast<const uint2*>(r);
  }
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
  T* x = X + r * stride + h * 2 * half;
  rotate_pair(to_f32(x[i]), to_f32(x[i + half]), inv_freq[i], *pos + r % S, scale, x[i], x[i + half]);
}

template <class T>
__global__ void k_add_bias(T* Y, int64_t rows, int64_t N, const float* bias) {
  const int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x;
  if (i < rows * N) Y[i] = T(float(Y[i]) + bias[i % N]);
}

// q's heads first, then k's: one thread per rotated pair.
template <class T>
__global__ void k_rope_qk(T* q, T* k, int64_t rows, int64_t S, const int32_t* pos, int64_t pos_stride, int64_t q_heads,
                          int64_t k_heads, int64_t half, const float* inv_freq, float scale) {
  const int64_t heads = q_heads + k_heads;
  const int64_t e = blockIdx.x * (int64_t)blockDim.x + threadIdx.x;
  if (e >= rows * heads * half) return;
  const int64_t i = e % half, hh = (e / half) % heads, r = e / (half * heads);
  T* x = hh < q_heads ? q + (r * q_heads + hh) * 2 * half : k + (r * k_heads + hh - q_heads) * 2 * half;
  rotate_pair(to_f32(x[i]), to_f32(x[i + half]), inv_freq[i], pos[(r / S) * pos_stride] + r % S, scale, x[i],
              x[i + half]);
}

__global__ void k_append_kv(const uint16_t* k, const uint16_t* v, int64_t n, int64_t kw, const int32_t* pos,
                            uint16_t* kc, uint16_t* vc) {
  const int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x;
  if (i >= n) return;
  const int64_t at = (int64_t)*pos * kw + i;
  kc[at] = k[i];
  vc[at] = v[i];
}

// Paged KV cache: row r (of sequence r / S, at position pos[(r / S) * pos_stride] + r % S) goes to
// its page tables[b * table_stride + p / kPageTokens], at page_off + (p % kPageTokens) * kw for the
// key and kPageTokens * kw further for the value.
__global__ void k_append_kv_paged(const uint16_t* k, const uint16_t* v, int64_t rows, int64_t S, int64_t kw,
                                  const int32_t* pos, int64_t pos_stride, uint16_t* const* tables, int64_t table_stride,
                                  int64_t page_off) {
  const int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x;
  if (i >= rows * kw) return;
  const int64_t r = i / kw, c = i % kw, b = r / S;
  const int64_t p = pos[b * pos_stride] + r % S;
  uint16_t* page = tables[b * table_stride + p / kPageTokens];
  const int64_t at = page_off + (p % kPageTokens) * kw + c;
  page[at] = k[i];
  page[at + kPageTokens * kw] = v[i];
}

// Decode rows: a thread per pair (i, i + half) of one head of row r: q's heads rotated in place, k's
// rotated into the key slot of the row's page, v's copied into the value slot. The rotation is
// k_rope_qk's, value for value.
template <class T>
__global__ void k_rope_append_rows(T* q, int64_t q_stride, const T* k, int64_t k_stride, const T* v, int64_t v_stride,
                                   int64_t rows, const int32_t* pos, int64_t q_heads, int64_t k_heads, int64_t half,
                                   const float* inv_freq, float scale, T* const* tables, int64_t table_stride,
                                   int64_t page_off) {
  const int64_t heads = q_heads + 2 * k_heads;
  const int64_t e = blockIdx.x * (int64_t)blockDim.x + threadIdx.x;
  if (e >= rows * heads * half) return;
  const int64_t i = e % half, hh = (e / half) % heads, r = e / (half * heads);
  const int64_t p = pos[r], kw = k_heads * 2 * half;
  T* page = tables[r * table_stride + p / kPageTokens] + page_off + (p % kPageTokens) * kw;
  if (hh >= q_heads + k_heads) {
    const int64_t h = hh - q_heads - k_heads;
    const T* src = v + r * v_stride + h * 2 * half;
    T* dst = page + kPageTokens * kw + h * 2 * half;
    dst[i] = src[i];
    dst[i + half] = src[i + half];
    return;
  }
  const bool is_q = hh < q_heads;
  T* x = is_q ? q + r * q_stride + hh * 2 * half : nullptr;
  const T* src = is_q ? x : k + r * k_stride + (hh - q_heads) * 2 * half;
  T* dst = is_q ? x : page + (hh - q_heads) * 2 * half;
  rotate_pair(to_f32(src[i]), to_f32(src[i + half]), inv_freq[i], p, scale, dst[i], dst[i + half]);
}

// Keys and values 0 .. len-1 of one sequence's pages (table) into contiguous kc, vc [len, kw].
__global__ void k_gather_kv(uint16_t* const* table, int64_t len, int64_t kw, int64_t page_off, uint16_t* kc,
                            uint16_t* vc) {
  const int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x;
  if (i >= len * kw) return;
  const int64_t p = i / kw, c = i % kw;
  const uint16_t* page = table[p / kPageTokens];
  const int64_t at = page_off + (p % kPageTokens) * kw + c;
  kc[i] = page[at];
  vc[i] = page[at + kPageTokens * kw];
}

template <class T>
__global__ void k_swiglu(const T* gate, const T* up, int64_t n, T* out) {
  const int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x;
  if (i >= n) return;
  const float g = to_f32(gate[i]);
  out[i] = from_f32<T>(g / (1.0f + expf(-g)) * to_f32(up[i]));
}

template <class T>
__global__ void k_swiglu_rows(const T* gu, int64_t rows, int64_t hidden, int64_t stride, T* out) {
  let_next_launch();    // the product after it may start fetching its weights (launch_dependent)
  wait_for_previous();
  const int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x;
  if (i >= rows * hidden) return;
  const T* row = gu + (i / hidden) * stride + i % hidden;
  const float g = to_f32(row[0]);
  out[i] = from_f32<T>(g / (1.0f + expf(-g)) * to_f32(row[hidden]));
}

__global__ void k_copy_columns(const uint16_t* src, int64_t rows, int64_t stride, int64_t n, uint16_t* dst) {
  const int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x;
  if (i < rows * n) dst[i] = src[(i / n) * stride + i % n];
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
constexpr int kMaxSplits = 64;  // key ranges per (row, head) at most (attention_splits; the merge's weights)
constexpr float kLog2e = 1.4426950408889634f;
constexpr int64_t kFlashMinRows = 16;  // rows per sequence from which prefill runs on the tensor cores

// One block per (query row, head, split of the keys). Lane l holds dims l*DPL .. l*DPL+DPL-1 of q
// and of its share of the output; a warp scores kKeysPerStep keys per step (the dot products
// reduced across lanes), keeping a running max m, sum l and output acc (scores in log2 units).
// The block's warps merge through shared memory; one split writes the output, several write
// (m, l, acc) to `partial` [rows][heads][splits][hd + 2] for k_attention_merge.
template <class T, int DPL>
__global__ void __launch_bounds__(kAttnWarps * 32)
    k_attention(const T* Q, int64_t S, const int32_t* pos, int64_t pos_stride, const T* K, const T* V, int64_t key_stride,
                const T* const* tables, int64_t table_stride, int64_t page_off, int64_t heads, int64_t kv_heads,
                int64_t hd, float scale_log2, int splits, float* partial, T* out, int64_t q_stride) {
  __shared__ float sm[kAttnWarps], sl[kAttnWarps];
  __shared__ float sacc[kAttnWarps][32 * DPL];
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int64_t r = blockIdx.x, h = blockIdx.y, split = blockIdx.z;
  const int64_t b = r / S, len = pos[b * pos_stride] + r % S + 1;
  const int64_t kvh = h / (heads / kv_heads), kw = kv_heads * hd;
  const int64_t chunk = (len + splits - 1) / splits, j0 = split * chunk, j1 = min(len, j0 + chunk);
  const T* q = Q + r * q_stride + h * hd;
  // Key j of this row's sequence: row j of K (contiguous), or in its page (tables non-null).
  const T* kbase = tables ? nullptr : K + b * key_stride * kw + kvh * hd;
  const T* vbase = tables ? nullptr : V + b * key_stride * kw + kvh * hd;
  const T* const* table = tables ? tables + b * table_stride : nullptr;
  auto key = [&](int64_t j) -> const T* {
    if (!table) return kbase + j * kw;
    return table[j / kPageTokens] + page_off + (j % kPageTokens) * kw + kvh * hd;
  };
  auto value = [&](int64_t j) -> const T* {
    if (!table) return vbase + j * kw;
    return table[j / kPageTokens] + page_off + (kPageTokens + j % kPageTokens) * kw + kvh * hd;
  };

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
        const T* k = key(j + u);
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
      const T* v = value(j + u);
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

// Merges one (row, head)'s splits: p holds each split's (m, l, acc) [splits][hd + 2], out its hd
// outputs; run by a whole block (all its threads call it), `weight` kMaxSplits floats of shared
// memory. The first warp turns each split's (m, l) into its weight 2^(m - M) / L (lanes over the
// splits), then each thread sums its dims' partial outputs with those weights: one pass of
// independent loads (recomputing M and L in every thread, with a loop of dependent steps each, made
// the merge cost more than attention). Loads bypass L1 (__ldcg): in the fused decode kernel other
// blocks wrote p during this kernel.
template <class T>
__device__ __forceinline__ void merge_splits(const float* p, int64_t hd, int splits, T* out, float* weight) {
  if (threadIdx.x < 32) {
    const int lane = threadIdx.x;
    float m[2] = {-INFINITY, -INFINITY}, l[2] = {0.f, 0.f};  // splits lane and lane + 32
#pragma unroll
    for (int u = 0; u < 2; ++u)
      if (lane + 32 * u < splits) {
        m[u] = __ldcg(p + (lane + 32 * u) * (hd + 2));
        l[u] = __ldcg(p + (lane + 32 * u) * (hd + 2) + 1);
      }
    float M = fmaxf(m[0], m[1]);
    for (int off = 16; off; off >>= 1) M = fmaxf(M, __shfl_xor_sync(0xffffffffu, M, off));
    // M is finite: split 0 holds key 0 at least
    const float e0 = m[0] == -INFINITY ? 0.f : exp2f(m[0] - M), e1 = m[1] == -INFINITY ? 0.f : exp2f(m[1] - M);
    float L = l[0] * e0 + l[1] * e1;
    for (int off = 16; off; off >>= 1) L += __shfl_xor_sync(0xffffffffu, L, off);
    if (lane < splits) weight[lane] = e0 / L;
    if (lane + 32 < splits) weight[lane + 32] = e1 / L;
  }
  __syncthreads();
  for (int64_t d = threadIdx.x; d < hd; d += blockDim.x) {
    float o = 0.f;
#pragma unroll 8
    for (int s = 0; s < splits; ++s) o = fmaf(__ldcg(p + s * (hd + 2) + 2 + d), weight[s], o);
    out[d] = from_f32<T>(o);
  }
}

// One block per (row, head): merges the splits' (m, l, acc) into the output.
template <class T>
__global__ void k_attention_merge(const float* partial, int64_t heads, int64_t hd, int splits, T* out) {
  wait_for_previous();  // launched overlapped (launch_dependent)
  let_next_launch();    // the packed product after it may start fetching its weights
  __shared__ float weight[kMaxSplits];
  const size_t rh = (size_t)blockIdx.x * heads + blockIdx.y;
  merge_splits(partial + rh * splits * (hd + 2), hd, splits, out + rh * hd, weight);
}

// Eight 16-bit values (one 16-byte load) as f32.
__device__ __forceinline__ void widen8(const uint4& w, const __half*, float (&f)[8]) {
  const __half2* h = reinterpret_cast<const __half2*>(&w);
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const float2 v = __half22float2(h[i]);
    f[2 * i] = v.x, f[2 * i + 1] = v.y;
  }
}
__device__ __forceinline__ void widen8(const uint4& w, const __nv_bfloat16*, float (&f)[8]) {
  const __nv_bfloat162* h = reinterpret_cast<const __nv_bfloat162*>(&w);
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const float2 v = __bfloat1622float2(h[i]);
    f[2 * i] = v.x, f[2 * i + 1] = v.y;
  }
}

// What the fused decode kernel (FUSED) takes besides k_attention_decode's arguments: this step's
// keys and values as the q/k/v product left them (row r at k + r * k_stride, before RoPE), RoPE's
// frequencies and scale, and one zeroed counter per (row, head) for the split merge.
template <class T>
struct FreshKeys {
  const T* k;
  int64_t k_stride;
  const T* v;
  int64_t v_stride;
  const float* inv_freq;
  float rope_scale;
  uint32_t* counters;
};

// RoPE on 16-bit values as lane t of a key group holds them (x[v]: dims 8(t + 4v) .. +7, v < VPL):
// dim i pairs with i + HD/2, which is the same lane's x[v + VPL/2]. cs, sn: the block's cosines and
// sines (shared memory, HD/2 each). Rounded to T, as the separate kernels store them.
template <class T, int VPL>
__device__ __forceinline__ void rotate_lane(uint4 (&x)[VPL], int t, const float* cs, const float* sn) {
#pragma unroll
  for (int v = 0; v < VPL / 2; ++v) {
    float a[8], b[8];
    widen8(x[v], (const T*)nullptr, a);
    widen8(x[v + VPL / 2], (const T*)nullptr, b);
    alignas(16) T ra[8], rb[8];
#pragma unroll
    for (int e = 0; e < 8; ++e) rotate_by(a[e], b[e], cs[8 * (t + 4 * v) + e], sn[8 * (t + 4 * v) + e], ra[e], rb[e]);
    x[v] = *reinterpret_cast<const uint4*>(ra);
    x[v + VPL / 2] = *reinterpret_cast<const uint4*>(rb);
  }
}

// Decode attention over paged caches for head sizes 32·VPL (64, 128, 256): one block of 4 warps per
// (row, head, split of the keys), as k_attention, but each key is read by a group of 4 lanes with
// 16-byte loads (lane t of the group holds dims 8(t + 4v) .. +7 for v < VPL), so a warp scores 8 keys
// per step and loads each key's and value's row whole, both issued before either is used (k_attention
// loads 2-byte values one by one, each key's reduction across the whole warp: latency-bound at B >= 8).
// The 8 groups of a warp share its running max; each keeps its own sum and output, added up at the end.
// FUSED (a decode step's one launch for what k_rope_append_rows, this kernel and k_attention_merge do
// apart): q is read before RoPE and rotated in registers; this step's key (position pos[r]) is
// taken from the product's row and rotated where it is scored, and the first query head of each KV
// head writes it and its value into the page (no block reads that slot in this launch); with
// several splits, the last block of a (row, head) to finish (a counter per pair, left at zero
// again) merges them.
// (At most 128 registers for head sizes up to 128: 4 blocks per multiprocessor, the grid that
// attention_splits plans; the fused kernel took 154 unbounded, 3 blocks, two waves of them.)
template <class T, int VPL, bool FUSED>
__global__ void __launch_bounds__(kAttnWarps * 32, VPL <= 4 ? 4 : 1)
    k_attention_decode(const T* Q, int64_t q_stride, const int32_t* pos, T* const* tables, int64_t table_stride,
                       int64_t page_off, int64_t heads, int64_t kv_heads, float scale_log2, int splits, float* partial,
                       T* out, FreshKeys<T> fresh) {
  // Launched overlapped (launch_dependent). FUSED, whose kernel ahead is the q/k/v product (it writes
  // no cache page), reads what earlier launches wrote before waiting: the position, the page table,
  // the cached keys and values of each warp's first step, and computes RoPE's table; q and this
  // step's key and value (the product's output) after; the o product after it may launch at once
  // (launch_dependent). Otherwise it waits first (the kernel ahead may have appended keys to the
  // pages), and lets the next launch after that.
  if (!FUSED) wait_for_previous();
  let_next_launch();
  constexpr int HD = 32 * VPL;
  __shared__ float sm[kAttnWarps], sl[kAttnWarps];
  __shared__ float sacc[kAttnWarps][HD];
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, t = lane % 4;
  const int64_t r = blockIdx.x, h = blockIdx.y, split = blockIdx.z;
  const int64_t len = pos[r] + 1;
  const int64_t kvh = h / (heads / kv_heads), kw = kv_heads * HD;
  const int64_t chunk = (len + splits - 1) / splits, j0 = split * chunk, j1 = min(len, j0 + chunk);
  T* const* table = tables + r * table_stride;
  const T* q = Q + r * q_stride + h * HD;
  // Key j's (cached) row and value row.
  auto load_cached = [&](int64_t j, uint4(&kr)[VPL], uint4(&vr)[VPL]) {
    const T* key = table[j / kPageTokens] + page_off + (j % kPageTokens) * kw + kvh * HD;
    const T* value = key + kPageTokens * kw;
#pragma unroll
    for (int v = 0; v < VPL; ++v) {
      kr[v] = __ldg(reinterpret_cast<const uint4*>(key + 8 * (t + 4 * v)));
      vr[v] = __ldg(reinterpret_cast<const uint4*>(value + 8 * (t + 4 * v)));
    }
  };
  // The lane's key of its warp's first step, loaded ahead when it is a cached one (FUSED).
  uint4 kr[VPL], vr[VPL];
  const int64_t j_first = j0 + (int64_t)warp * 8 + lane / 4;
  bool loaded = FUSED && j_first < j1 && j_first != len - 1;
  if (loaded) load_cached(j_first, kr, vr);
  // FUSED: the cosines and sines of this step's position, once per block
  __shared__ float rope_cs[FUSED ? HD / 2 : 1], rope_sn[FUSED ? HD / 2 : 1];
  if (FUSED) {
    for (int i = threadIdx.x; i < HD / 2; i += blockDim.x)
      rope_cos_sin(fresh.inv_freq[i], len - 1, fresh.rope_scale, rope_cs[i], rope_sn[i]);
    __syncthreads();
    wait_for_previous();
  }
  float qv[VPL][8], acc[VPL][8];
  {
    uint4 qr[VPL];
#pragma unroll
    for (int v = 0; v < VPL; ++v) qr[v] = *reinterpret_cast<const uint4*>(q + 8 * (t + 4 * v));
    if (FUSED) rotate_lane<T, VPL>(qr, t, rope_cs, rope_sn);
#pragma unroll
    for (int v = 0; v < VPL; ++v) widen8(qr[v], q, qv[v]);
  }
#pragma unroll
  for (int v = 0; v < VPL; ++v)
#pragma unroll
    for (int e = 0; e < 8; ++e) {
      qv[v][e] *= scale_log2;
      acc[v][e] = 0.f;
    }
  float m = -INFINITY, l = 0.f;
  for (int64_t jb = j0 + (int64_t)warp * 8; jb < j1; jb += kAttnWarps * 8) {
    const int64_t j = jb + lane / 4;
    const bool valid = j < j1;
    if (loaded) {  // the first step's cached key, loaded ahead
      loaded = false;
    } else if (FUSED && valid && j == len - 1) {  // this step's token: from the product's row
      const T* key = fresh.k + r * fresh.k_stride + kvh * HD;
      const T* value = fresh.v + r * fresh.v_stride + kvh * HD;
#pragma unroll
      for (int v = 0; v < VPL; ++v) {
        kr[v] = *reinterpret_cast<const uint4*>(key + 8 * (t + 4 * v));
        vr[v] = *reinterpret_cast<const uint4*>(value + 8 * (t + 4 * v));
      }
      rotate_lane<T, VPL>(kr, t, rope_cs, rope_sn);
      if (h % (heads / kv_heads) == 0) {
        T* slot = table[j / kPageTokens] + page_off + (j % kPageTokens) * kw + kvh * HD;
#pragma unroll
        for (int v = 0; v < VPL; ++v) {
          *reinterpret_cast<uint4*>(slot + 8 * (t + 4 * v)) = kr[v];
          *reinterpret_cast<uint4*>(slot + kPageTokens * kw + 8 * (t + 4 * v)) = vr[v];
        }
      }
    } else if (valid) {
      load_cached(j, kr, vr);
    } else {
#pragma unroll
      for (int v = 0; v < VPL; ++v) kr[v] = vr[v] = make_uint4(0, 0, 0, 0);
    }
    float s = 0.f;
#pragma unroll
    for (int v = 0; v < VPL; ++v) {
      float kf[8];
      widen8(kr[v], q, kf);
#pragma unroll
      for (int e = 0; e < 8; ++e) s = fmaf(qv[v][e], kf[e], s);
    }
    s += __shfl_xor_sync(0xffffffffu, s, 1);
    s += __shfl_xor_sync(0xffffffffu, s, 2);
    if (!valid) s = -INFINITY;
    float mx = s;
    mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 4));
    mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 8));
    mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 16));
    const float m_new = fmaxf(m, mx);  // finite: key jb is valid
    const float corr = exp2f(m - m_new);  // 0 on the first step (m = -inf)
    const float p = valid ? exp2f(s - m_new) : 0.f;
    l = l * corr + p;
#pragma unroll
    for (int v = 0; v < VPL; ++v) {
      float vf[8];
      widen8(vr[v], q, vf);
#pragma unroll
      for (int e = 0; e < 8; ++e) acc[v][e] = fmaf(p, vf[e], acc[v][e] * corr);
    }
    m = m_new;
  }
  // the warp's 8 key groups share m: their sums and outputs add up
#pragma unroll
  for (int off = 4; off < 32; off <<= 1) {
    l += __shfl_xor_sync(0xffffffffu, l, off);
#pragma unroll
    for (int v = 0; v < VPL; ++v)
#pragma unroll
      for (int e = 0; e < 8; ++e) acc[v][e] += __shfl_xor_sync(0xffffffffu, acc[v][e], off);
  }
  if (lane == 0) {
    sm[warp] = m;
    sl[warp] = l;
  }
  if (lane < 4)
#pragma unroll
    for (int v = 0; v < VPL; ++v)
#pragma unroll
      for (int e = 0; e < 8; ++e) sacc[warp][8 * (t + 4 * v) + e] = acc[v][e];
  __syncthreads();
  float M = -INFINITY;
  for (int w = 0; w < kAttnWarps; ++w) M = fmaxf(M, sm[w]);
  float L = 0.f, wscale[kAttnWarps];
  for (int w = 0; w < kAttnWarps; ++w) {
    wscale[w] = sm[w] == -INFINITY ? 0.f : exp2f(sm[w] - M);
    L += sl[w] * wscale[w];
  }
  const size_t rh = (size_t)r * heads + h;
  for (int d = threadIdx.x; d < HD; d += blockDim.x) {
    float o = 0.f;
    for (int w = 0; w < kAttnWarps; ++w) o += sacc[w][d] * wscale[w];
    if (splits == 1) out[rh * HD + d] = from_f32<T>(o / L);
    else partial[(rh * splits + split) * (HD + 2) + 2 + d] = o;
  }
  if (splits > 1 && threadIdx.x == 0) {
    partial[(rh * splits + split) * (HD + 2)] = M;
    partial[(rh * splits + split) * (HD + 2) + 1] = L;
  }
  if (!FUSED || splits == 1) return;
  // The last of the pair's blocks merges: each publishes its partial (fence) before counting itself.
  __shared__ bool last;
  __shared__ float weight[kMaxSplits];
  __threadfence();
  __syncthreads();
  if (threadIdx.x == 0) last = atomicAdd(fresh.counters + rh, 1u) == (uint32_t)splits - 1;
  __syncthreads();
  if (!last) return;
  __threadfence();
  merge_splits(partial + rh * splits * (HD + 2), HD, splits, out + rh * HD, weight);
  if (threadIdx.x == 0) fresh.counters[rh] = 0;  // ready for the next launch (a graph replays it)
}

template <class T, int VPL>
void attention_decode_t(const T* Q, int64_t q_stride, int64_t rows, const int32_t* pos, T* const* tables,
                        int64_t table_stride, int64_t page_off, int64_t heads, int64_t kv_heads, float scale, int splits,
                        float* partial, T* out, cudaStream_t s) {
  launch_dependent(rows, k_attention_decode<T, VPL, false>, dim3((unsigned)rows, (unsigned)heads, (unsigned)splits),
                   dim3(kAttnWarps * 32), s, "attention launch", Q, q_stride, pos, tables, table_stride, page_off,
                   heads, kv_heads, scale * kLog2e, splits, partial, out, FreshKeys<T>{});
  if (splits > 1)
    launch_dependent(rows, k_attention_merge<T>, dim3((unsigned)rows, (unsigned)heads), dim3(128), s,
                     "attention merge launch", partial, heads, (int64_t)(32 * VPL), splits, out);
}

// The vector-load decode kernel unless LOWBIT_CUDA_ATTN=0 (comparisons).
bool vector_decode_attention() {
  static const bool on = [] {
    const char* v = std::getenv("LOWBIT_CUDA_ATTN");
    return !(v && std::string(v) == "0");
  }();
  return on;
}

template <class T, int DPL>
void attention_t(const T* Q, int64_t rows, int64_t S, const int32_t* pos, const T* K, const T* V, int64_t key_stride,
                 int64_t heads, int64_t kv_heads, int64_t hd, float scale, int splits, float* partial, T* out,
                 cudaStream_t s, int64_t pos_stride = 0, const T* const* tables = nullptr, int64_t table_stride = 0,
                 int64_t page_off = 0, int64_t q_stride = 0) {
  const dim3 grid((unsigned)rows, (unsigned)heads, (unsigned)splits);
  launch(k_attention<T, DPL>, grid, dim3(kAttnWarps * 32), s, "attention launch", Q, S, pos, pos_stride, K, V,
         key_stride, tables, table_stride, page_off, heads, kv_heads, hd, scale * kLog2e, splits, partial, out,
         q_stride ? q_stride : heads * hd);
  // The overlap rule counts token rows: rows sequences of S each.
  if (splits > 1)
    launch_dependent(rows * S, k_attention_merge<T>, dim3((unsigned)rows, (unsigned)heads), dim3(128), s,
                     "attention merge launch", partial, heads, hd, splits, out);
}


// --- prefill attention on the tensor cores (flash-attention style)

// d += a · b over one m16n8k16 tile: a row-major 16 × 16 (4 registers of 2 values), b 16 × 8 column-
// major (2 registers), d 16 × 8 f32. Lane l = 4g + t holds a: rows g, g+8 × cols 2t.., 2t+8..; b:
// rows (k) 2t.., 2t+8.. × col g; d: rows g, g+8 × cols 2t, 2t+1.
template <class T>
__device__ __forceinline__ void mma16816(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1);
template <>
__device__ __forceinline__ void mma16816<__half>(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
               : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
               : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}
template <>
__device__ __forceinline__ void mma16816<__nv_bfloat16>(float (&d)[4], const uint32_t (&a)[4], uint32_t b0,
                                                        uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

// Two values as one register of the 16-bit type, the first in the low half.
template <class T>
__device__ __forceinline__ uint32_t pack2(float lo, float hi) {
  const uint32_t l = __half_as_ushort(__float2half_rn(lo)), h = __half_as_ushort(__float2half_rn(hi));
  return l | (h << 16);
}
template <>
__device__ __forceinline__ uint32_t pack2<__nv_bfloat16>(float lo, float hi) {
  const uint32_t l = __bfloat16_as_ushort(__float2bfloat16_rn(lo)), h = __bfloat16_as_ushort(__float2bfloat16_rn(hi));
  return l | (h << 16);
}

constexpr int kFlashRows = 64;  // query rows per block: 16 per warp, 4 warps
constexpr int kFlashKeys = 64;  // keys per shared-memory tile
constexpr int kFlashPad = 8;    // row padding (16 bytes): lanes g of a fragment load hit different banks

// One block per (64 query rows of one sequence, head). Each warp keeps its 16 rows of Q as A
// fragments, and per 64-key tile computes S = Q Kᵀ (mma), the causal mask and the online softmax
// (log2 units, f32, per row: max m and sum l, the sum kept per lane and reduced at the end), then
// O += P V (mma, P re-used from S's accumulators as A fragments). K is staged in shared memory as
// is, V transposed, so every B fragment is one 32-bit shared load.
template <class T, int HD>
__global__ void __launch_bounds__(128)
    k_flash_attention(const T* Q, int64_t S, const int32_t* pos, const T* K, const T* V, int64_t key_stride,
                      int64_t heads, int64_t kv_heads, float scale_log2, T* out) {
  __shared__ __align__(16) T ks[kFlashKeys][HD + kFlashPad];
  __shared__ __align__(16) T vt[HD][kFlashKeys + kFlashPad];
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, t = lane % 4;
  const int64_t i0 = (int64_t)blockIdx.x * kFlashRows, h = blockIdx.y, b = blockIdx.z;
  const int64_t p0 = *pos, kvh = h / (heads / kv_heads), kw = kv_heads * HD, qw = heads * HD;
  const T* kbase = K + b * key_stride * kw + kvh * HD;
  const T* vbase = V + b * key_stride * kw + kvh * HD;

  // This lane's query rows (within the sequence): ra (g) and rb (g + 8) of the warp's 16.
  const int64_t ra = i0 + warp * 16 + g, rb = ra + 8;
  uint32_t qf[HD / 16][4];
  {
    const T* qa = Q + (b * S + ra) * qw + h * HD;
    const T* qb = Q + (b * S + rb) * qw + h * HD;
#pragma unroll
    for (int kk = 0; kk < HD / 16; ++kk) {
      const int c = kk * 16 + 2 * t;
      qf[kk][0] = ra < S ? *reinterpret_cast<const uint32_t*>(qa + c) : 0u;
      qf[kk][1] = rb < S ? *reinterpret_cast<const uint32_t*>(qb + c) : 0u;
      qf[kk][2] = ra < S ? *reinterpret_cast<const uint32_t*>(qa + c + 8) : 0u;
      qf[kk][3] = rb < S ? *reinterpret_cast<const uint32_t*>(qb + c + 8) : 0u;
    }
  }
  float o[HD / 8][4];
#pragma unroll
  for (int d = 0; d < HD / 8; ++d) o[d][0] = o[d][1] = o[d][2] = o[d][3] = 0.f;
  float m[2] = {-INFINITY, -INFINITY}, l[2] = {0.f, 0.f};
  const int64_t pa = p0 + ra, pb = p0 + rb;  // the rows' positions: keys 0 .. p attended
  const int64_t keys = p0 + min(i0 + kFlashRows, S);  // keys any row of the block attends to

  for (int64_t k0 = 0; k0 < keys; k0 += kFlashKeys) {
    __syncthreads();  // the previous tile's readers are done
    // Stage K (as is) and V (transposed) for keys k0 .., 8 values (16 bytes) per load.
    for (int e = threadIdx.x; e < kFlashKeys * HD / 8; e += blockDim.x) {
      const int j = e / (HD / 8), c = (e % (HD / 8)) * 8;
      uint4 kv4 = make_uint4(0, 0, 0, 0), vv4 = make_uint4(0, 0, 0, 0);
      if (k0 + j < keys) {
        kv4 = *reinterpret_cast<const uint4*>(kbase + (k0 + j) * kw + c);
        vv4 = *reinterpret_cast<const uint4*>(vbase + (k0 + j) * kw + c);
      }
      *reinterpret_cast<uint4*>(&ks[j][c]) = kv4;
      const T* vv = reinterpret_cast<const T*>(&vv4);
#pragma unroll
      for (int u = 0; u < 8; ++u) vt[c + u][j] = vv[u];
    }
    __syncthreads();

    // S = Q Kᵀ over this tile: 8 tiles of 8 keys.
    float sc[kFlashKeys / 8][4];
#pragma unroll
    for (int nt = 0; nt < kFlashKeys / 8; ++nt) {
      sc[nt][0] = sc[nt][1] = sc[nt][2] = sc[nt][3] = 0.f;
#pragma unroll
      for (int kk = 0; kk < HD / 16; ++kk) {
        const uint32_t b0 = *reinterpret_cast<const uint32_t*>(&ks[nt * 8 + g][kk * 16 + 2 * t]);
        const uint32_t b1 = *reinterpret_cast<const uint32_t*>(&ks[nt * 8 + g][kk * 16 + 2 * t + 8]);
        mma16816<T>(sc[nt], qf[kk], b0, b1);
      }
    }
    // Mask (key past the row's position, or a row past the sequence) and scale; the rows' maxima.
    float mx[2] = {-INFINITY, -INFINITY};
#pragma unroll
    for (int nt = 0; nt < kFlashKeys / 8; ++nt)
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        const int64_t j = k0 + nt * 8 + 2 * t + (i & 1);
        const bool row_b = i >= 2;
        const bool keep = row_b ? (rb < S && j <= pb) : (ra < S && j <= pa);
        sc[nt][i] = keep ? sc[nt][i] * scale_log2 : -INFINITY;
        mx[row_b] = fmaxf(mx[row_b], sc[nt][i]);
      }
    float corr[2], base[2];
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      mx[r] = fmaxf(mx[r], __shfl_xor_sync(0xffffffffu, mx[r], 1));
      mx[r] = fmaxf(mx[r], __shfl_xor_sync(0xffffffffu, mx[r], 2));
      const float m_new = fmaxf(m[r], mx[r]);
      base[r] = m_new == -INFINITY ? 0.f : m_new;  // a row with nothing yet: exp2(-inf) = 0 below
      corr[r] = exp2f(m[r] - base[r]);
      m[r] = m_new;
      l[r] *= corr[r];
    }
#pragma unroll
    for (int d = 0; d < HD / 8; ++d) {
      o[d][0] *= corr[0];
      o[d][1] *= corr[0];
      o[d][2] *= corr[1];
      o[d][3] *= corr[1];
    }
    // P = exp2(S - m) as A fragments (16 keys each), then O += P V.
#pragma unroll
    for (int kk = 0; kk < kFlashKeys / 16; ++kk) {
      float p[2][4];
#pragma unroll
      for (int u = 0; u < 2; ++u)
#pragma unroll
        for (int i = 0; i < 4; ++i) {
          p[u][i] = exp2f(sc[2 * kk + u][i] - base[i >= 2]);
          l[i >= 2] += p[u][i];
        }
      const uint32_t pf[4] = {pack2<T>(p[0][0], p[0][1]), pack2<T>(p[0][2], p[0][3]), pack2<T>(p[1][0], p[1][1]),
                              pack2<T>(p[1][2], p[1][3])};
#pragma unroll
      for (int d = 0; d < HD / 8; ++d) {
        const uint32_t b0 = *reinterpret_cast<const uint32_t*>(&vt[d * 8 + g][kk * 16 + 2 * t]);
        const uint32_t b1 = *reinterpret_cast<const uint32_t*>(&vt[d * 8 + g][kk * 16 + 2 * t + 8]);
        mma16816<T>(o[d], pf, b0, b1);
      }
    }
  }
  // The sums across the 4 lanes of each row, then out = O / l.
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    l[r] += __shfl_xor_sync(0xffffffffu, l[r], 1);
    l[r] += __shfl_xor_sync(0xffffffffu, l[r], 2);
  }
  T* oa = out + (b * S + ra) * qw + h * HD;
  T* ob = out + (b * S + rb) * qw + h * HD;
#pragma unroll
  for (int d = 0; d < HD / 8; ++d) {
    const int c = d * 8 + 2 * t;
    if (ra < S) *reinterpret_cast<uint32_t*>(oa + c) = pack2<T>(o[d][0] / l[0], o[d][1] / l[0]);
    if (rb < S) *reinterpret_cast<uint32_t*>(ob + c) = pack2<T>(o[d][2] / l[1], o[d][3] / l[1]);
  }
}

template <class T, int HD>
void flash_attention_t(const T* Q, int64_t rows, int64_t S, const int32_t* pos, const T* K, const T* V,
                       int64_t key_stride, int64_t heads, int64_t kv_heads, float scale, T* out, cudaStream_t s) {
  const dim3 grid((unsigned)ceil_div(S, kFlashRows), (unsigned)heads, (unsigned)(rows / S));
  k_flash_attention<T, HD><<<grid, 128, 0, s>>>(Q, S, pos, K, V, key_stride, heads, kv_heads, scale * kLog2e, out);
  check(cudaGetLastError(), "flash attention launch");
}

template <class T>
void attention_dispatch(const T* Q, int64_t rows, int64_t S, const int32_t* pos, const T* K, const T* V, int64_t key_stride,
                        int64_t heads, int64_t kv_heads, int64_t hd, float scale, int splits, float* partial, T* out,
                        cudaStream_t s) {
  // Prefill-sized calls with a head size the tensor-core kernel takes go to it.
  if (S >= kFlashMinRows && splits == 1 && (hd == 64 || hd == 128)) {
    if (hd == 64) flash_attention_t<T, 64>(Q, rows, S, pos, K, V, key_stride, heads, kv_heads, scale, out, s);
    else flash_attention_t<T, 128>(Q, rows, S, pos, K, V, key_stride, heads, kv_heads, scale, out, s);
    return;
  }
  if (hd <= 32) attention_t<T, 1>(Q, rows, S, pos, K, V, key_stride, heads, kv_heads, hd, scale, splits, partial, out, s);
  else if (hd <= 64)
    attention_t<T, 2>(Q, rows, S, pos, K, V, key_stride, heads, kv_heads, hd, scale, splits, partial, out, s);
  else if (hd <= 128)
    attention_t<T, 4>(Q, rows, S, pos, K, V, key_stride, heads, kv_heads, hd, scale, splits, partial, out, s);
  else attention_t<T, 8>(Q, rows, S, pos, K, V, key_stride, heads, kv_heads, hd, scale, splits, partial, out, s);
}

unsigned grid_for(int64_t n) { return blocks_for(n, 256); }

// (key, index) pairs of the greedy argmax: NaN counts as -inf (never larger than anything; the
// launcher's x[0] rule covers the one case where that differs from the sequential scan).
__device__ __forceinline__ bool better(float key, int32_t i, float best_key, int32_t best) {
  return key > best_key || (key == best_key && i < best);
}

constexpr int kArgmaxThreads = 1024;

// One block per row r < rows of logits [*, vocab]: the index of the row's largest logit, the first
// on ties, as sampling.ts's argmax scans it (x[0] NaN: 0; other NaNs never chosen). It becomes the
// row's next id (ids[r], read by the next step's embedding), its position advances (pos[r] + 1), and
// tokens[r] keeps it for the host.
__global__ void k_argmax_feed(const float* logits, int64_t vocab, int32_t* ids, int32_t* pos, int32_t* tokens) {
  __shared__ float keys[kArgmaxThreads / 32];
  __shared__ int32_t idx[kArgmaxThreads / 32];
  const float* x = logits + blockIdx.x * vocab;
  float best_key = -INFINITY;
  int32_t best = INT32_MAX;
  for (int64_t i = threadIdx.x; i < vocab; i += blockDim.x) {
    const float v = x[i];
    const float key = isnan(v) ? -INFINITY : v;
    if (better(key, (int32_t)i, best_key, best)) best_key = key, best = (int32_t)i;
  }
  for (int off = 16; off > 0; off /= 2) {
    const float k2 = __shfl_down_sync(0xffffffffu, best_key, off);
    const int32_t i2 = __shfl_down_sync(0xffffffffu, best, off);
    if (better(k2, i2, best_key, best)) best_key = k2, best = i2;
  }
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  if (lane == 0) keys[warp] = best_key, idx[warp] = best;
  __syncthreads();
  if (warp != 0) return;
  const int warps = blockDim.x / 32;
  best_key = lane < warps ? keys[lane] : -INFINITY;
  best = lane < warps ? idx[lane] : INT32_MAX;
  for (int off = 16; off > 0; off /= 2) {
    const float k2 = __shfl_down_sync(0xffffffffu, best_key, off);
    const int32_t i2 = __shfl_down_sync(0xffffffffu, best, off);
    if (better(k2, i2, best_key, best)) best_key = k2, best = i2;
  }
  if (lane != 0) return;
  if (isnan(x[0])) best = 0;
  ids[blockIdx.x] = best;
  tokens[blockIdx.x] = best;
  pos[blockIdx.x] += 1;
}

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
    // About 4 values per thread: one row per block is all a decode step has, so the block's width
    // is its latency (256 threads took 13 µs for a 4096-wide row on the H200, ncu).
    const int threads = (int)std::min<int64_t>(1024, std::max<int64_t>(32, ceil_div(ceil_div(dim, 4), 32) * 32));
    const T* yt = reinterpret_cast<const T*>(y);
    T* out = reinterpret_cast<T*>(Y);
    const int64_t pieces = ceil_div(dim / 4, (int64_t)kNormThreads);  // 4-value pieces per thread
    if (dim % 4 == 0 && pieces <= 8) {
      const dim3 grid((unsigned)rows), block(kNormThreads);
      const auto run = [&](auto kernel) {
        launch_dependent(rows, kernel, grid, block, s, "rms_norm launch", x, yt, dim, w, eps, out);
      };
      if (pieces <= 1) run(k_add_rms_norm_rows<T, 1>);
      else if (pieces <= 2) run(k_add_rms_norm_rows<T, 2>);
      else if (pieces <= 4) run(k_add_rms_norm_rows<T, 4>);
      else run(k_add_rms_norm_rows<T, 8>);
      return;
    }
    launch(k_add_rms_norm<T>, dim3((unsigned)rows), dim3(threads), s, "rms_norm launch", x, yt, dim, w, eps, out);
  });
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

void rope_qk(DType t, uint16_t* q, uint16_t* k, int64_t rows, int64_t S, const int32_t* pos, int64_t q_heads,
             int64_t k_heads, int64_t half, const float* inv_freq, float scale, cudaStream_t s, int64_t pos_stride) {
  with_type(t, [&](auto* tag) {
    using T = std::remove_pointer_t<decltype(tag)>;
    k_rope_qk<<<grid_for(rows * (q_heads + k_heads) * half), 256, 0, s>>>(reinterpret_cast<T*>(q), reinterpret_cast<T*>(k),
                                                                          rows, S, pos, pos_stride, q_heads, k_heads, half,
                                                                          inv_freq, scale);
  });
  check(cudaGetLastError(), "rope launch");
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

void swiglu_rows(DType t, const uint16_t* gu, int64_t rows, int64_t hidden, int64_t stride, uint16_t* out,
                 cudaStream_t s) {
  with_type(t, [&](auto* tag) {
    using T = std::remove_pointer_t<decltype(tag)>;
    launch_dependent(rows, k_swiglu_rows<T>, dim3(grid_for(rows * hidden)), dim3(256), s, "swiglu launch",
               reinterpret_cast<const T*>(gu), rows, hidden, stride, reinterpret_cast<T*>(out));
  });
}

void copy_columns(const uint16_t* src, int64_t rows, int64_t stride, int64_t col0, int64_t n, uint16_t* dst,
                  cudaStream_t s) {
  k_copy_columns<<<grid_for(rows * n), 256, 0, s>>>(src + col0, rows, stride, n, dst);
  check(cudaGetLastError(), "copy_columns launch");
}

void rope_append_rows(DType t, uint16_t* q, int64_t q_stride, const uint16_t* k, int64_t k_stride, const uint16_t* v,
                      int64_t v_stride, int64_t rows, const int32_t* pos, int64_t q_heads, int64_t k_heads, int64_t half,
                      const float* inv_freq, float scale, uint16_t* const* tables, int64_t table_stride,
                      int64_t page_off, cudaStream_t s) {
  with_type(t, [&](auto* tag) {
    using T = std::remove_pointer_t<decltype(tag)>;
    launch(k_rope_append_rows<T>, dim3(grid_for(rows * (q_heads + 2 * k_heads) * half)), dim3(256), s,
               "rope_append_rows launch", reinterpret_cast<T*>(q), q_stride, reinterpret_cast<const T*>(k), k_stride,
               reinterpret_cast<const T*>(v), v_stride, rows, pos, q_heads, k_heads, half, inv_freq, scale,
               reinterpret_cast<T* const*>(tables), table_stride, page_off);
  });
}

void argmax_feed(const float* logits, int64_t rows, int64_t vocab, int32_t* ids, int32_t* pos, int32_t* tokens,
                 cudaStream_t s) {
  require(rows >= 1 && rows <= INT32_MAX && vocab >= 1 && vocab <= INT32_MAX, "E_INTERNAL",
          "argmax_feed: rows and vocab must fit int32");
  k_argmax_feed<<<(unsigned)rows, kArgmaxThreads, 0, s>>>(logits, vocab, ids, pos, tokens);
  check(cudaGetLastError(), "argmax_feed launch");
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

void append_kv_paged(const uint16_t* k, const uint16_t* v, int64_t rows, int64_t S, int64_t kw, const int32_t* pos,
                     int64_t pos_stride, uint16_t* const* tables, int64_t table_stride, int64_t page_off, cudaStream_t s) {
  k_append_kv_paged<<<grid_for(rows * kw), 256, 0, s>>>(k, v, rows, S, kw, pos, pos_stride, tables, table_stride,
                                                        page_off);
  check(cudaGetLastError(), "append_kv_paged launch");
}

void gather_kv(uint16_t* const* table, int64_t len, int64_t kw, int64_t page_off, uint16_t* kc, uint16_t* vc,
               cudaStream_t s) {
  k_gather_kv<<<grid_for(len * kw), 256, 0, s>>>(table, len, kw, page_off, kc, vc);
  check(cudaGetLastError(), "gather_kv launch");
}

void attention_paged(DType t, const uint16_t* Q, int64_t rows, const int32_t* pos, uint16_t* const* tables,
                     int64_t table_stride, int64_t page_off, int64_t heads, int64_t kv_heads, int64_t hd, float scale,
                     int splits, float* partial, uint16_t* out, cudaStream_t s, int64_t q_stride) {
  require(hd >= 1 && hd <= 256, "E_UNSUPPORTED", "the 16-bit attention kernel takes head_dim up to 256");
  require(splits >= 1 && splits <= kMaxSplits && (splits == 1 || partial != nullptr), "E_INTERNAL",
          "attention splits: 1 to 64, with scratch");
  with_type(t, [&](auto* tag) {
    using T = std::remove_pointer_t<decltype(tag)>;
    const T* q = reinterpret_cast<const T*>(Q);
    T* o = reinterpret_cast<T*>(out);
    T* const* tb = reinterpret_cast<T* const*>(tables);
    const int64_t qs = q_stride;
    const int64_t q_rows = q_stride ? q_stride : heads * hd;
    if (vector_decode_attention() && (hd == 64 || hd == 128 || hd == 256)) {
      auto run = [&](auto vpl) {
        attention_decode_t<T, decltype(vpl)::value>(q, q_rows, rows, pos, tb, table_stride, page_off, heads, kv_heads,
                                                    scale, splits, partial, o, s);
      };
      if (hd == 64) run(std::integral_constant<int, 2>{});
      else if (hd == 128) run(std::integral_constant<int, 4>{});
      else run(std::integral_constant<int, 8>{});
      return;
    }
    // one query row per sequence (S = 1), at its own position pos[r]
    if (hd <= 32) attention_t<T, 1>(q, rows, 1, pos, nullptr, nullptr, 0, heads, kv_heads, hd, scale, splits, partial, o, s, 1, tb, table_stride, page_off, qs);
    else if (hd <= 64) attention_t<T, 2>(q, rows, 1, pos, nullptr, nullptr, 0, heads, kv_heads, hd, scale, splits, partial, o, s, 1, tb, table_stride, page_off, qs);
    else if (hd <= 128) attention_t<T, 4>(q, rows, 1, pos, nullptr, nullptr, 0, heads, kv_heads, hd, scale, splits, partial, o, s, 1, tb, table_stride, page_off, qs);
    else attention_t<T, 8>(q, rows, 1, pos, nullptr, nullptr, 0, heads, kv_heads, hd, scale, splits, partial, o, s, 1, tb, table_stride, page_off, qs);
  });
}

bool decode_attention_fusable(int64_t hd) { return vector_decode_attention() && (hd == 64 || hd == 128 || hd == 256); }

void attention_decode_fused(DType t, const uint16_t* q, int64_t q_stride, const uint16_t* k, int64_t k_stride,
                            const uint16_t* v, int64_t v_stride, int64_t rows, const int32_t* pos, int64_t heads,
                            int64_t kv_heads, int64_t hd, const float* inv_freq, float rope_scale, float scale,
                            uint16_t* const* tables, int64_t table_stride, int64_t page_off, int splits, float* partial,
                            uint32_t* counters, int64_t counter_count, uint16_t* out, cudaStream_t s) {
  require(decode_attention_fusable(hd), "E_INTERNAL", "the fused decode attention takes head_dim 64, 128 or 256");
  require(kv_heads >= 1 && heads % kv_heads == 0, "E_INTERNAL", "attention: heads a multiple of kv_heads");
  require(splits >= 1 && splits <= kMaxSplits && (splits == 1 || (partial != nullptr && counters != nullptr)),
          "E_INTERNAL", "attention splits: 1 to 64, with scratch and counters");
  require(splits == 1 || rows * heads <= counter_count, "E_INTERNAL", "attention: a merge counter per (row, head)");
  with_type(t, [&](auto* tag) {
    using T = std::remove_pointer_t<decltype(tag)>;
    const FreshKeys<T> fresh{reinterpret_cast<const T*>(k), k_stride, reinterpret_cast<const T*>(v), v_stride,
                             inv_freq, rope_scale, counters};
    auto run = [&](auto vpl) {
      launch_dependent(rows, k_attention_decode<T, decltype(vpl)::value, true>, dim3((unsigned)rows, (unsigned)heads, (unsigned)splits),
             dim3(kAttnWarps * 32), s, "fused decode attention launch", reinterpret_cast<const T*>(q), q_stride, pos,
             reinterpret_cast<T* const*>(tables), table_stride, page_off, heads, kv_heads, scale * kLog2e, splits,
             partial, reinterpret_cast<T*>(out), fresh);
    };
    if (hd == 64) run(std::integral_constant<int, 2>{});
    else if (hd == 128) run(std::integral_constant<int, 4>{});
    else run(std::integral_constant<int, 8>{});
  });
}

int attention_splits(int64_t rows, int64_t heads, int64_t longest, int multiprocessors) {
  // About four blocks for every multiprocessor, as many as run at once (k_attention_decode's
  // launch bounds), not more: one more split than fit (ceil) left a second wave of a few blocks,
  // the whole kernel's latency again. Each range at least 64 keys long.
  const int64_t want = 4 * (int64_t)std::max(multiprocessors, 1) / (rows * heads);
  return (int)std::max<int64_t>(1, std::min<int64_t>({want, ceil_div(longest, 64), kMaxSplits}));
}

int64_t attention_partial_floats(int64_t rows, int64_t heads, int64_t hd, int splits) {
  return splits > 1 ? rows * heads * splits * (hd + 2) : 0;
}

void attention(DType t, const uint16_t* Q, int64_t rows, int64_t S, const int32_t* pos, const uint16_t* K, const uint16_t* V,
               int64_t key_stride, int64_t heads, int64_t kv_heads, int64_t hd, float scale, int splits, float* partial,
               uint16_t* out, cudaStream_t s) {
  require(hd >= 1 && hd <= 256, "E_UNSUPPORTED", "the 16-bit attention kernel takes head_dim up to 256");
  require(splits >= 1 && splits <= kMaxSplits && (splits == 1 || partial != nullptr), "E_INTERNAL",
          "attention splits: 1 to 64, with scratch");
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

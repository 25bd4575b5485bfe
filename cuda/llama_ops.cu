// The CUDA building blocks of the Llama forward pass (the twin of native/core/model/ops.cpp): plain
// f32 kernels, each behind a launcher that enqueues it on a stream and checks the launch.
#include <cuda_runtime.h>

#include <cmath>

#include "cuda_check.cuh"
#include "linear_ops.cuh"
#include "llama_ops.cuh"

namespace lowbit {
namespace cuda {
namespace ops {
namespace {

__global__ void k_gather_rows(const float* table, const int32_t* ids, int64_t n, int64_t dim, float* out) {
  const int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x;
  if (i < n * dim) out[i] = table[(int64_t)ids[i / dim] * dim + i % dim];
}

__global__ void k_add_inplace(float* y, const float* x, int64_t n) {
  const int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x;
  if (i < n) y[i] += x[i];
}

// y = gate · sigmoid(gate) · up, as silu_mul on the CPU.
__global__ void k_swiglu(const float* gate, const float* up, int64_t n, float* out) {
  const int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x;
  if (i < n) out[i] = gate[i] / (1.0f + expf(-gate[i])) * up[i];
}

// One block per row: the sum of squares in double, as the CPU.
__global__ void k_rms_norm(const float* X, int64_t dim, const float* w, float eps, float* Y) {
  __shared__ double part[32];
  const float* x = X + blockIdx.x * dim;
  float* y = Y + blockIdx.x * dim;
  double ss = 0;
  for (int64_t i = threadIdx.x; i < dim; i += blockDim.x) ss += (double)x[i] * x[i];
  for (int off = 16; off; off >>= 1) ss += __shfl_xor_sync(0xffffffffu, ss, off);
  if (threadIdx.x % 32 == 0) part[threadIdx.x / 32] = ss;
  __syncthreads();
  if (threadIdx.x < 32) {
    double v = threadIdx.x < blockDim.x / 32 ? part[threadIdx.x] : 0.0;
    for (int off = 16; off; off >>= 1) v += __shfl_xor_sync(0xffffffffu, v, off);
    if (threadIdx.x == 0) part[0] = v;
  }
  __syncthreads();
  const float variance = (float)(part[0] / (double)dim);
  const float inv = 1.0f / sqrtf(variance + eps);
  for (int64_t i = threadIdx.x; i < dim; i += blockDim.x) y[i] = __fmul_rn(w[i], __fmul_rn(x[i], inv));
}

// Half-split rotary embedding; row r sits at table row (r % rows_per_seq). cos/sin [positions, half].
__global__ void k_rope(float* X, int64_t rows, int64_t rows_per_seq, int64_t stride, int64_t heads, int64_t half,
                     const float* cosv, const float* sinv) {
  const int64_t e = blockIdx.x * (int64_t)blockDim.x + threadIdx.x;
  if (e >= rows * heads * half) return;
  const int64_t i = e % half, h = (e / half) % heads, r = e / (half * heads);
  const int64_t t = r % rows_per_seq;
  float* x = X + r * stride + h * 2 * half;
  const float c = cosv[t * half + i], s = sinv[t * half + i];
  const float a = x[i], b = x[i + half];
  x[i] = __fsub_rn(__fmul_rn(a, c), __fmul_rn(b, s));
  x[i + half] = __fadd_rn(__fmul_rn(b, c), __fmul_rn(a, s));
}

// Causal grouped-query attention. Query row r: sequence b = r / S, position p0 + r % S; it attends
// to keys 0 .. p0 + r % S of its sequence, at rows b·key_stride + j of K and V ([*, kv_heads·hd]).
// One block per (query row, head); scores in shared memory.
__global__ void k_attention(const float* Q, int64_t S, int64_t p0, const float* K, const float* V, int64_t key_stride,
                          int64_t heads, int64_t kv_heads, int64_t hd, float scale, float* out) {
  extern __shared__ float scores[];
  __shared__ float red[32];
  const int64_t r = blockIdx.x, h = blockIdx.y, b = r / S, len = p0 + r % S + 1;
  const int64_t kvh = h / (heads / kv_heads), kw = kv_heads * hd;
  const float* q = Q + r * heads * hd + h * hd;
  const float* kbase = K + b * key_stride * kw + kvh * hd;
  const float* vbase = V + b * key_stride * kw + kvh * hd;
  float local_max = -INFINITY;
  for (int64_t j = threadIdx.x; j < len; j += blockDim.x) {
    const float* k = kbase + j * kw;
    float dot = 0.f;
    for (int64_t d = 0; d < hd; ++d) dot += q[d] * k[d];
    scores[j] = dot * scale;
    local_max = fmaxf(local_max, scores[j]);
  }
  // Block max, then the sum of exponentials.
  for (int off = 16; off; off >>= 1) local_max = fmaxf(local_max, __shfl_xor_sync(0xffffffffu, local_max, off));
  if (threadIdx.x % 32 == 0) red[threadIdx.x / 32] = local_max;
  __syncthreads();
  float m = -INFINITY;
  for (int w = 0; w < (int)(blockDim.x / 32); ++w) m = fmaxf(m, red[w]);
  __syncthreads();
  float local_sum = 0.f;
  for (int64_t j = threadIdx.x; j < len; j += blockDim.x) {
    const float p = expf(scores[j] - m);
    scores[j] = p;
    local_sum += p;
  }
  for (int off = 16; off; off >>= 1) local_sum += __shfl_xor_sync(0xffffffffu, local_sum, off);
  if (threadIdx.x % 32 == 0) red[threadIdx.x / 32] = local_sum;
  __syncthreads();
  float sum = 0.f;
  for (int w = 0; w < (int)(blockDim.x / 32); ++w) sum += red[w];
  const float inv = 1.f / sum;
  // out[d] = Σ_j p_j v_j[d] / sum: threads over d, each summing over all keys.
  for (int64_t d = threadIdx.x; d < hd; d += blockDim.x) {
    float acc = 0.f;
    for (int64_t j = 0; j < len; ++j) acc += scores[j] * vbase[j * kw + d];
    out[r * heads * hd + h * hd + d] = acc * inv;
  }
}

// -log softmax(x)[target] per row; one block per row.
__global__ void k_row_nll(const float* logits, int64_t vocab, const int32_t* targets, float* out) {
  __shared__ float red[32];
  const float* x = logits + blockIdx.x * vocab;
  float m = -INFINITY;
  for (int64_t i = threadIdx.x; i < vocab; i += blockDim.x) m = fmaxf(m, x[i]);
  for (int off = 16; off; off >>= 1) m = fmaxf(m, __shfl_xor_sync(0xffffffffu, m, off));
  if (threadIdx.x % 32 == 0) red[threadIdx.x / 32] = m;
  __syncthreads();
  m = -INFINITY;
  for (int w = 0; w < (int)(blockDim.x / 32); ++w) m = fmaxf(m, red[w]);
  __syncthreads();
  float s = 0.f;
  for (int64_t i = threadIdx.x; i < vocab; i += blockDim.x) s += expf(x[i] - m);
  for (int off = 16; off; off >>= 1) s += __shfl_xor_sync(0xffffffffu, s, off);
  if (threadIdx.x % 32 == 0) red[threadIdx.x / 32] = s;
  __syncthreads();
  if (threadIdx.x == 0) {
    float sum = 0.f;
    for (int w = 0; w < (int)(blockDim.x / 32); ++w) sum += red[w];
    out[blockIdx.x] = m + logf(sum) - x[targets[blockIdx.x]];
  }
}

}  // namespace

void launched(const char* what) { check(cudaGetLastError(), what); }

void gather_rows(const float* table, const int32_t* ids, int64_t n, int64_t dim, float* out, cudaStream_t s) {
  k_gather_rows<<<blocks_for(n * dim, 256), 256, 0, s>>>(table, ids, n, dim, out);
  launched("gather_rows launch");
}

void add_inplace(float* y, const float* x, int64_t n, cudaStream_t s) {
  k_add_inplace<<<blocks_for(n, 256), 256, 0, s>>>(y, x, n);
  launched("add launch");
}

void swiglu(const float* gate, const float* up, int64_t n, float* out, cudaStream_t s) {
  k_swiglu<<<blocks_for(n, 256), 256, 0, s>>>(gate, up, n, out);
  launched("swiglu launch");
}

void rms_norm(const float* X, int64_t rows, int64_t dim, const float* w, float eps, float* Y, cudaStream_t s) {
  k_rms_norm<<<(unsigned)rows, 256, 0, s>>>(X, dim, w, eps, Y);
  launched("rms_norm launch");
}

void rope(float* X, int64_t rows, int64_t rows_per_seq, int64_t stride, int64_t heads, int64_t half, const float* cosv,
          const float* sinv, cudaStream_t s) {
  k_rope<<<blocks_for(rows * heads * half, 256), 256, 0, s>>>(X, rows, rows_per_seq, stride, heads, half, cosv, sinv);
  launched("rope launch");
}

void attention(const float* Q, int64_t rows, int64_t S, int64_t p0, const float* K, const float* V, int64_t key_stride,
               int64_t heads, int64_t kv_heads, int64_t hd, float scale, float* out, cudaStream_t s) {
  const size_t smem = (size_t)(p0 + S) * 4;  // the scores of the longest row
  require(smem <= 48 * 1024, "E_UNSUPPORTED", "the CUDA attention kernel holds at most 12288 positions");
  k_attention<<<dim3((unsigned)rows, (unsigned)heads), 128, smem, s>>>(Q, S, p0, K, V, key_stride, heads, kv_heads, hd,
                                                                      scale, out);
  launched("attention launch");
}

void row_nll(const float* logits, int64_t rows, int64_t vocab, const int32_t* targets, float* out, cudaStream_t s) {
  k_row_nll<<<(unsigned)rows, 256, 0, s>>>(logits, vocab, targets, out);
  launched("row_nll launch");
}

}  // namespace ops
}  // namespace cuda
}  // namespace lowbit

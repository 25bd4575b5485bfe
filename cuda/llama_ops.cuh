// Launchers of the CUDA forward-pass ops (llama_ops.cu), each enqueued on a stream; device memory,
// f32, row-major, the same math as native/core/model/ops.hpp op for op.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

namespace lowbit {
namespace cuda {
namespace ops {

// out [n, dim] = rows ids[i] of table [*, dim].
void gather_rows(const float* table, const int32_t* ids, int64_t n, int64_t dim, float* out, cudaStream_t s);
// y += x over n values.
void add_inplace(float* y, const float* x, int64_t n, cudaStream_t s);
// out = silu(gate) * up over n values (out may be gate).
void swiglu(const float* gate, const float* up, int64_t n, float* out, cudaStream_t s);
// Y = w * X / sqrt(mean(X^2) + eps) per row, the sum of squares in double as the CPU.
void rms_norm(const float* X, int64_t rows, int64_t dim, const float* w, float eps, float* Y, cudaStream_t s);
// Half-split rotary embedding in place; row r uses table row r % rows_per_seq of cos/sin [*, half].
void rope(float* X, int64_t rows, int64_t rows_per_seq, int64_t stride, int64_t heads, int64_t half, const float* cosv,
          const float* sinv, cudaStream_t s);
// Causal grouped-query attention; query row r is position p0 + r % S of sequence r / S, whose keys
// and values sit at rows (r / S) * key_stride + j of K and V. E_UNSUPPORTED past 12288 positions.
void attention(const float* Q, int64_t rows, int64_t S, int64_t p0, const float* K, const float* V, int64_t key_stride,
               int64_t heads, int64_t kv_heads, int64_t hd, float scale, float* out, cudaStream_t s);
// out[r] = -log softmax(logits[r])[targets[r]] for each of `rows` rows of `vocab` logits.
void row_nll(const float* logits, int64_t rows, int64_t vocab, const int32_t* targets, float* out, cudaStream_t s);

}  // namespace ops
}  // namespace cuda
}  // namespace lowbit

// Launchers of the ops of the 16-bit forward pass (llama16_ops.cu): activations in fp16 or bf16
// (`t`, DType::F16 or DType::BF16, passed as 16-bit patterns), the residual stream in f32, every
// statistic (RMSNorm's mean square, softmax's max and sum) and every accumulation in f32. Device
// memory, row-major, each enqueued on a stream; none allocates, so all of them can be captured in
// a CUDA graph.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "../native/core/dtype.hpp"

namespace lowbit {
namespace cuda {
namespace ops16 {

// out [n, dim] (f32) = rows ids[i] of table [*, dim] (16-bit).
void gather_rows(DType t, const uint16_t* table, const int32_t* ids, int64_t n, int64_t dim, float* out,
                 cudaStream_t s);
// With y: x += y (y 16-bit, x the f32 residual stream) first, in the same pass. Then
// Y = w * x / sqrt(mean(x^2) + eps) per row in 16 bits (y null: the norm alone).
void add_rms_norm(DType t, float* x, const uint16_t* y, int64_t rows, int64_t dim, const float* w, float eps,
                  uint16_t* Y, cudaStream_t s);
// x += y over n values (x f32, y 16-bit).
void add(DType t, float* x, const uint16_t* y, int64_t n, cudaStream_t s);
// Positions are read on the device (`pos`, one int32: the first row's), so that one captured graph
// serves every decode step.
// Half-split rotary embedding in place on X [rows, stride] (heads of 2*half values each); row r is
// at position *pos + r % S. cos and sin of f32(inv_freq[i] * position), times `scale`, in f32.
void rope(DType t, uint16_t* X, int64_t rows, int64_t S, const int32_t* pos, int64_t stride, int64_t heads,
          int64_t half, const float* inv_freq, float scale, cudaStream_t s);
// The same over q [rows, q_heads*2*half] and k [rows, k_heads*2*half] in one launch; with
// pos_stride, row r is at position pos[(r / S) * pos_stride] + r % S (1: each sequence its own).
void rope_qk(DType t, uint16_t* q, uint16_t* k, int64_t rows, int64_t S, const int32_t* pos, int64_t q_heads,
             int64_t k_heads, int64_t half, const float* inv_freq, float scale, cudaStream_t s, int64_t pos_stride = 0);

// The paged KV cache: a page holds kPageTokens tokens of every layer's keys and values, laid out
// [layers][K, V][kPageTokens][kw] (kw = kv_heads * head_dim), so layer l's keys start at
// page_off = 2 * l * kPageTokens * kw and its values kPageTokens * kw after. A sequence's page
// table lists its pages in order (token p in page p / kPageTokens); tables are device arrays of
// page pointers, `table_stride` entries per sequence.
constexpr int64_t kPageTokens = 16;
// Rows k, v [rows, kw] (row r of sequence r / S at position pos[(r / S) * pos_stride] + r % S) into their pages.
void append_kv_paged(const uint16_t* k, const uint16_t* v, int64_t rows, int64_t S, int64_t kw, const int32_t* pos,
                     int64_t pos_stride, uint16_t* const* tables, int64_t table_stride, int64_t page_off, cudaStream_t s);
// A decode step's rows (one token of sequence r at position pos[r]): RoPE on q in place and on k,
// and k and v written straight into their pages (the step reads them only there), in one launch.
// q, k, v: row r at q + r * q_stride (..., heads of 2*half values); q/k/v of one product laid end
// to end in each row (stride qw + 2 kw) or each in its own [rows, width] array.
void rope_append_rows(DType t, uint16_t* q, int64_t q_stride, const uint16_t* k, int64_t k_stride, const uint16_t* v,
                      int64_t v_stride, int64_t rows, const int32_t* pos, int64_t q_heads, int64_t k_heads, int64_t half,
                      const float* inv_freq, float scale, uint16_t* const* tables, int64_t table_stride,
                      int64_t page_off, cudaStream_t s);
// Keys and values 0 .. len-1 of one sequence (its table) into contiguous kc, vc [len, kw].
void gather_kv(uint16_t* const* table, int64_t len, int64_t kw, int64_t page_off, uint16_t* kc, uint16_t* vc,
               cudaStream_t s);
// Rows k, v [rows, kw] into the caches kc, vc [capacity, kw] at rows *pos ...
void append_kv(const uint16_t* k, const uint16_t* v, int64_t rows, int64_t kw, const int32_t* pos, uint16_t* kc,
               uint16_t* vc, cudaStream_t s);
// Y [rows, N] += bias [N] (f32), Y in 16 bits or (y_f32) f32.
void add_bias(DType t, void* Y, bool y_f32, int64_t rows, int64_t N, const float* bias, cudaStream_t s);
// out = silu(gate) * up over n values (out may be gate), in f32 rounded once.
void swiglu(DType t, const uint16_t* gate, const uint16_t* up, int64_t n, uint16_t* out, cudaStream_t s);
// The same over rows of one gate/up product: gate in columns 0 .. hidden-1 of row r of gu (row
// stride `stride`), up in the next hidden; out [rows, hidden] (out may be gu only when rows == 1).
void swiglu_rows(DType t, const uint16_t* gu, int64_t rows, int64_t hidden, int64_t stride, uint16_t* out,
                 cudaStream_t s);
// dst [rows, n] = columns col0 .. col0+n-1 of src [rows, stride] (16-bit values).
void copy_columns(const uint16_t* src, int64_t rows, int64_t stride, int64_t col0, int64_t n, uint16_t* dst,
                  cudaStream_t s);
// Greedy decoding's device-side feed: for each row r < rows of logits [rows, vocab] (f32), the index
// of its largest logit, the first on ties (NaN never chosen, unless it is x[0]: then 0, as the
// host's sequential scan gives), written to ids[r] and tokens[r]; pos[r] += 1. ids and pos are the
// next decode step's inputs, so steps chain without the host.
void argmax_feed(const float* logits, int64_t rows, int64_t vocab, int32_t* ids, int32_t* pos, int32_t* tokens,
                 cudaStream_t s);
// 16-bit to f32 (exact) and f32 to 16-bit (round to nearest even).
void widen(DType t, const uint16_t* x, int64_t n, float* y, cudaStream_t s);
void narrow(DType t, const float* x, int64_t n, uint16_t* y, cudaStream_t s);
// dst (type t) = src (f32, f16 or bf16, device memory) over n values.
void convert(DType from, const void* src, DType t, int64_t n, uint16_t* dst, cudaStream_t s);

// Causal grouped-query attention without a score matrix. Query row r (Q [rows, heads*hd]) is at
// position *pos + r % S of sequence r / S and attends to its keys 0 .. *pos + r % S, rows
// (r / S) * key_stride + j of K and V ([*, kv_heads*hd]). Each (row, head) is split into `splits`
// ranges of keys, each run by one block with an online softmax (f32 max and sum); with more than one
// split, the ranges' partial results go to `partial` and a second kernel merges them.
// hd <= 256. partial: attention_partial_floats(...) floats (none for splits == 1).
int attention_splits(int64_t rows, int64_t heads, int64_t longest, int multiprocessors);
int64_t attention_partial_floats(int64_t rows, int64_t heads, int64_t hd, int splits);
void attention(DType t, const uint16_t* Q, int64_t rows, int64_t S, const int32_t* pos, const uint16_t* K, const uint16_t* V,
               int64_t key_stride, int64_t heads, int64_t kv_heads, int64_t hd, float scale, int splits, float* partial,
               uint16_t* out, cudaStream_t s);

// Decode attention over paged caches: query row r (Q [rows, heads*hd]) is one token of sequence r at
// position pos[r], attending to its keys 0 .. pos[r] through its table tables[r * table_stride ..];
// splits and partial as for attention.
// q_stride: elements between Q's rows (0: heads*hd, rows packed).
void attention_paged(DType t, const uint16_t* Q, int64_t rows, const int32_t* pos, uint16_t* const* tables,
                     int64_t table_stride, int64_t page_off, int64_t heads, int64_t kv_heads, int64_t hd, float scale,
                     int splits, float* partial, uint16_t* out, cudaStream_t s, int64_t q_stride = 0);

// A decode step's attention in one launch: what rope_append_rows, attention_paged and the split
// merge do apart, value for value. q, k, v as the q/k/v product left them (before RoPE; row r at
// q + r * q_stride, ...); q is not written. The merge's counters: rows * heads uint32 (at most
// counter_count), zero before the call and left zero after it. Only for head sizes
// decode_attention_fusable accepts (64, 128, 256, unless LOWBIT_CUDA_ATTN=0).
bool decode_attention_fusable(int64_t hd);
void attention_decode_fused(DType t, const uint16_t* q, int64_t q_stride, const uint16_t* k, int64_t k_stride,
                            const uint16_t* v, int64_t v_stride, int64_t rows, const int32_t* pos, int64_t heads,
                            int64_t kv_heads, int64_t hd, const float* inv_freq, float rope_scale, float scale,
                            uint16_t* const* tables, int64_t table_stride, int64_t page_off, int splits, float* partial,
                            uint32_t* counters, int64_t counter_count, uint16_t* out, cudaStream_t s);

}  // namespace ops16
}  // namespace cuda
}  // namespace lowbit

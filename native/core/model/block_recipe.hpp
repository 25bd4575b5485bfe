// One transformer block of the Llama family, in the order every backend computes it:
//   x = hidden; x += o(attention(rope(q(n)), rope(k(n)), v(n))) with n = rms_norm(x, attn_norm);
//   x += down(silu(gate(m)) * up(m)) with m = rms_norm(x, mlp_norm)
// with the capture points where GPTQ reads the linears' inputs. The CPU (cpu_llama.cpp) and CUDA
// (cuda/llama.cu) backends run this one recipe with their own ops, so the order of operations,
// the capture points and the early stop cannot drift apart.
#pragma once

#include <cstdint>

#include "backend.hpp"

namespace lowbit {
namespace model {

// Buffers of one pass through a block, on the backend's device: rows of the widths the config gives.
// The residual stream is f32; the other activations are `Act` (float, or 16-bit patterns in the
// CUDA backend's fp16/bf16 pass).
template <class Act>
struct BlockBuffersOf {
  float* x;    // [rows, dim] the residual stream (a copy of hidden)
  Act* norm;   // [rows, dim]
  Act* q;      // [rows, heads * head_dim]
  Act* k;      // [rows, kv_heads * head_dim]
  Act* v;      // [rows, kv_heads * head_dim]
  Act* attn;   // [rows, heads * head_dim]
  Act* proj;   // [rows, dim]
  Act* gate;   // [rows, hidden]
  Act* up;     // [rows, hidden]
};
using BlockBuffers = BlockBuffersOf<float>;

// Ops supplies, all over the block's rows:
//   rms_norm(in, weight, out)
//   linear(Linear which, in, out)
//   rope(q, k)                       rotates q and k in place at the rows' positions
//   attention(q, k, v, out)          stores k and v in the KV state first when there is one
//   add(y, x, cols)                  y += x
//   swiglu(gate, up, out)
//   emit(CapturePoint, data, cols)   hands a capture to the caller; true: stop here
// Returns false when it stopped at a capture point (x is then incomplete).
template <class Ops, class Act>
bool block_recipe(const LlamaConfig& c, const BlockBuffersOf<Act>& b, const float* attn_norm, const float* mlp_norm,
                  Ops& ops) {
  const int64_t qw = c.heads * c.head_dim;
  ops.rms_norm(b.x, attn_norm, b.norm);
  if (ops.emit(CapturePoint::Qkv, b.norm, c.dim)) return false;
  ops.linear(Linear::Q, b.norm, b.q);
  ops.linear(Linear::K, b.norm, b.k);
  ops.linear(Linear::V, b.norm, b.v);
  ops.rope(b.q, b.k);
  ops.attention(b.q, b.k, b.v, b.attn);
  if (ops.emit(CapturePoint::O, b.attn, qw)) return false;
  ops.linear(Linear::O, b.attn, b.proj);
  ops.add(b.x, b.proj, c.dim);
  ops.rms_norm(b.x, mlp_norm, b.norm);
  if (ops.emit(CapturePoint::GateUp, b.norm, c.dim)) return false;
  ops.linear(Linear::Gate, b.norm, b.gate);
  ops.linear(Linear::Up, b.norm, b.up);
  ops.swiglu(b.gate, b.up, b.gate);
  if (ops.emit(CapturePoint::Down, b.gate, c.hidden)) return false;
  ops.linear(Linear::Down, b.gate, b.proj);
  ops.add(b.x, b.proj, c.dim);
  return true;
}

}  // namespace model
}  // namespace lowbit

/**
 * A plain float64 Llama forward pass in TypeScript: the reference the native ops and models are
 * checked against. Written for clarity, not speed. The one place it follows float32 on purpose is
 * the rotary angle (f32(invFreq * position), as transformers computes it), which the native code
 * reproduces by contract.
 */

export interface RefConfig {
  dim: number;
  hidden: number;
  layers: number;
  heads: number;
  kvHeads: number;
  headDim: number;
  vocab: number;
  normEps: number;
  invFreq: ArrayLike<number>;
  ropeScale: number;
}

export const LINEARS = ['q', 'k', 'v', 'o', 'gate', 'up', 'down'] as const;
export type LinearKey = (typeof LINEARS)[number];

export interface RefBlock {
  attnNorm: ArrayLike<number>;
  mlpNorm: ArrayLike<number>;
  /** [N, K] row-major */
  weights: Record<LinearKey, ArrayLike<number>>;
  biases: Partial<Record<LinearKey, ArrayLike<number>>>;
}

export interface RefModel {
  config: RefConfig;
  /** [vocab, dim] */
  embed: ArrayLike<number>;
  finalNorm: ArrayLike<number>;
  /** [vocab, dim]; the embedding when tied */
  head: ArrayLike<number>;
  blocks: RefBlock[];
}

export function linearDims(c: RefConfig, name: LinearKey): { N: number; K: number } {
  switch (name) {
    case 'q':
      return { N: c.heads * c.headDim, K: c.dim };
    case 'k':
    case 'v':
      return { N: c.kvHeads * c.headDim, K: c.dim };
    case 'o':
      return { N: c.dim, K: c.heads * c.headDim };
    case 'gate':
    case 'up':
      return { N: c.hidden, K: c.dim };
    case 'down':
      return { N: c.dim, K: c.hidden };
  }
}

export function refLinear(
  x: ArrayLike<number>,
  M: number,
  W: ArrayLike<number>,
  N: number,
  K: number,
  bias?: ArrayLike<number>,
): Float64Array {
  const y = new Float64Array(M * N);
  for (let m = 0; m < M; m++)
    for (let n = 0; n < N; n++) {
      let acc = bias ? bias[n]! : 0;
      for (let k = 0; k < K; k++) acc += x[m * K + k]! * W[n * K + k]!;
      y[m * N + n] = acc;
    }
  return y;
}

export function refRmsNorm(
  x: ArrayLike<number>,
  rows: number,
  dim: number,
  w: ArrayLike<number>,
  eps: number,
): Float64Array {
  const y = new Float64Array(rows * dim);
  for (let r = 0; r < rows; r++) {
    let ss = 0;
    for (let i = 0; i < dim; i++) ss += x[r * dim + i]! ** 2;
    const inv = 1 / Math.sqrt(ss / dim + eps);
    for (let i = 0; i < dim; i++) y[r * dim + i] = w[i]! * x[r * dim + i]! * inv;
  }
  return y;
}

/** Rotates each head of each row in place (half-split form); row r is at position p0 + r. */
export function refRope(
  x: Float64Array,
  rows: number,
  heads: number,
  headDim: number,
  p0: number,
  invFreq: ArrayLike<number>,
  scale: number,
): Float64Array {
  const half = headDim / 2;
  for (let r = 0; r < rows; r++)
    for (let h = 0; h < heads; h++) {
      const base = (r * heads + h) * headDim;
      for (let i = 0; i < half; i++) {
        const angle = Math.fround(invFreq[i]! * (p0 + r));
        const c = Math.cos(angle) * scale,
          s = Math.sin(angle) * scale;
        const a = x[base + i]!,
          b = x[base + i + half]!;
        x[base + i] = a * c - b * s;
        x[base + i + half] = b * c + a * s;
      }
    }
  return x;
}

/**
 * Causal grouped-query attention: queries [n, heads*hd] at positions p0.., keys/values
 * [p0+n, kvHeads*hd] at positions 0...
 */
export function refAttention(
  q: ArrayLike<number>,
  k: ArrayLike<number>,
  v: ArrayLike<number>,
  n: number,
  p0: number,
  heads: number,
  kvHeads: number,
  hd: number,
): Float64Array {
  const out = new Float64Array(n * heads * hd);
  const group = heads / kvHeads;
  const scale = 1 / Math.sqrt(hd);
  for (let i = 0; i < n; i++)
    for (let h = 0; h < heads; h++) {
      const kh = Math.floor(h / group);
      const len = p0 + i + 1;
      const s = new Float64Array(len);
      let max = -Infinity;
      for (let j = 0; j < len; j++) {
        let dot = 0;
        for (let d = 0; d < hd; d++) dot += q[(i * heads + h) * hd + d]! * k[(j * kvHeads + kh) * hd + d]!;
        s[j] = dot * scale;
        max = Math.max(max, s[j]!);
      }
      let sum = 0;
      for (let j = 0; j < len; j++) sum += s[j] = Math.exp(s[j]! - max);
      for (let d = 0; d < hd; d++) {
        let acc = 0;
        for (let j = 0; j < len; j++) acc += s[j]! * v[(j * kvHeads + kh) * hd + d]!;
        out[(i * heads + h) * hd + d] = acc / sum;
      }
    }
  return out;
}

export function refSwiglu(gate: ArrayLike<number>, up: ArrayLike<number>): Float64Array {
  const out = new Float64Array(gate.length);
  for (let i = 0; i < gate.length; i++) out[i] = (gate[i]! / (1 + Math.exp(-gate[i]!))) * up[i]!;
  return out;
}

export function refNll(logits: ArrayLike<number>, offset: number, vocab: number, target: number): number {
  let max = -Infinity;
  for (let i = 0; i < vocab; i++) max = Math.max(max, logits[offset + i]!);
  let sum = 0;
  for (let i = 0; i < vocab; i++) sum += Math.exp(logits[offset + i]! - max);
  return max + Math.log(sum) - logits[offset + target]!;
}

export interface BlockTrace {
  qkv: Float64Array;
  o: Float64Array;
  gateUp: Float64Array;
  down: Float64Array;
  out: Float64Array;
}

/**
 * One block over the n rows of one sequence at positions p0..; `cache` holds the keys and values
 * of positions 0..p0-1 ([p0, kvHeads*hd] each) and gets this call's appended.
 */
export function refBlock(
  model: RefModel,
  index: number,
  x: ArrayLike<number>,
  n: number,
  p0 = 0,
  cache?: { k: number[]; v: number[] },
): BlockTrace {
  const c = model.config;
  const b = model.blocks[index]!;
  const lin = (name: LinearKey, input: ArrayLike<number>) => {
    const { N, K } = linearDims(c, name);
    return refLinear(input, n, b.weights[name], N, K, b.biases[name]);
  };
  const qkv = refRmsNorm(x, n, c.dim, b.attnNorm, c.normEps);
  const q = refRope(lin('q', qkv), n, c.heads, c.headDim, p0, c.invFreq, c.ropeScale);
  const k = refRope(lin('k', qkv), n, c.kvHeads, c.headDim, p0, c.invFreq, c.ropeScale);
  const v = lin('v', qkv);
  const kv = cache ?? { k: [], v: [] };
  kv.k.push(...k);
  kv.v.push(...v);
  const o = refAttention(q, kv.k, kv.v, n, p0, c.heads, c.kvHeads, c.headDim);
  const h = Float64Array.from(x);
  const attnOut = lin('o', o);
  for (let i = 0; i < h.length; i++) h[i]! += attnOut[i]!;
  const gateUp = refRmsNorm(h, n, c.dim, b.mlpNorm, c.normEps);
  const down = refSwiglu(lin('gate', gateUp), lin('up', gateUp));
  const mlpOut = lin('down', down);
  for (let i = 0; i < h.length; i++) h[i]! += mlpOut[i]!;
  return { qkv, o, gateUp, down, out: h };
}

export function refEmbed(model: RefModel, ids: ArrayLike<number>): Float64Array {
  const d = model.config.dim;
  const out = new Float64Array(ids.length * d);
  for (let i = 0; i < ids.length; i++) for (let j = 0; j < d; j++) out[i * d + j] = model.embed[ids[i]! * d + j]!;
  return out;
}

export function refHead(model: RefModel, hidden: ArrayLike<number>, rows: number): Float64Array {
  const c = model.config;
  return refLinear(refRmsNorm(hidden, rows, c.dim, model.finalNorm, c.normEps), rows, model.head, c.vocab, c.dim);
}

/** Logits [ids.length, vocab] of one sequence. */
export function refLogits(model: RefModel, ids: ArrayLike<number>): Float64Array {
  let h: ArrayLike<number> = refEmbed(model, ids);
  for (let i = 0; i < model.config.layers; i++) h = refBlock(model, i, h, ids.length).out;
  return refHead(model, h, ids.length);
}

/** Greedy continuation of `ids` for `steps` tokens (full recomputation each step: slow but plain). */
export function refGreedy(model: RefModel, ids: ArrayLike<number>, steps: number): number[] {
  const seq = Array.from(ids);
  const out: number[] = [];
  const V = model.config.vocab;
  for (let s = 0; s < steps; s++) {
    const logits = refLogits(model, seq);
    const last = (seq.length - 1) * V;
    let best = 0;
    for (let i = 1; i < V; i++) if (logits[last + i]! > logits[last + best]!) best = i;
    out.push(best);
    seq.push(best);
  }
  return out;
}

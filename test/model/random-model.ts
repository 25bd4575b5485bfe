/** Random Llama-shaped models for tests: the float64 reference's view and the native weights, from one seed. */
import { seededRandom } from '../../src/model/generate.js';
import type { LlamaConfig } from '../../src/formats/hf.js';
import type { NativeBlockWeights } from '../../src/native.js';
import { LINEARS, linearDims, type RefModel } from './reference.js';

export function gaussian(random: () => number): () => number {
  return () => {
    const u = 1 - random();
    return Math.sqrt(-2 * Math.log(u)) * Math.cos(2 * Math.PI * random());
  };
}

/** f32 values (so the reference sees exactly what the native side holds). */
export function randomF32(n: number, scale: number, normal: () => number, offset = 0): Float32Array {
  const a = new Float32Array(n);
  for (let i = 0; i < n; i++) a[i] = offset + scale * normal();
  return a;
}

export interface TinyShape {
  dim: number;
  hidden: number;
  layers: number;
  heads: number;
  kvHeads: number;
  headDim: number;
  vocab: number;
  maxSeq: number;
  tied: boolean;
  qkvBias: boolean;
}

/** A parsed-config look-alike for Model.create (only the fields the forward pass reads matter). */
export function llamaConfig(s: TinyShape, theta = 10000): LlamaConfig {
  return {
    architecture: 'LlamaForCausalLM',
    modelType: 'llama',
    hiddenSize: s.dim,
    intermediateSize: s.hidden,
    numLayers: s.layers,
    numHeads: s.heads,
    numKvHeads: s.kvHeads,
    headDim: s.headDim,
    vocabSize: s.vocab,
    maxPositionEmbeddings: s.maxSeq,
    rmsNormEps: 1e-5,
    rope: { theta, type: 'default', partialRotaryFactor: 1 },
    hiddenAct: 'silu',
    qkvBias: s.qkvBias,
    oBias: false,
    mlpBias: false,
    tieWordEmbeddings: s.tied,
    eosTokenIds: [],
    raw: {},
  };
}

export interface TinyModel {
  ref: RefModel;
  embed: Float32Array;
  finalNorm: Float32Array;
  head?: Float32Array;
  blocks: NativeBlockWeights[];
}

export function randomModel(s: TinyShape, invFreq: Float32Array, seed: number): TinyModel {
  const normal = gaussian(seededRandom(seed));
  const embed = randomF32(s.vocab * s.dim, 1, normal);
  const finalNorm = randomF32(s.dim, 0.1, normal, 1);
  const head = s.tied ? undefined : randomF32(s.vocab * s.dim, 0.3, normal);
  const config = {
    dim: s.dim,
    hidden: s.hidden,
    layers: s.layers,
    heads: s.heads,
    kvHeads: s.kvHeads,
    headDim: s.headDim,
    vocab: s.vocab,
    normEps: 1e-5,
    invFreq,
    ropeScale: 1,
  };
  const blocks: NativeBlockWeights[] = [];
  const refBlocks: RefModel['blocks'] = [];
  for (let b = 0; b < s.layers; b++) {
    const w = {
      attnNorm: randomF32(s.dim, 0.1, normal, 1),
      mlpNorm: randomF32(s.dim, 0.1, normal, 1),
    } as NativeBlockWeights;
    const ref: RefModel['blocks'][number] = {
      attnNorm: w.attnNorm,
      mlpNorm: w.mlpNorm,
      weights: {} as RefModel['blocks'][number]['weights'],
      biases: {},
    };
    for (const name of LINEARS) {
      const { N, K } = linearDims(config, name);
      const data = randomF32(N * K, 1 / Math.sqrt(K), normal);
      const bias = s.qkvBias && (name === 'q' || name === 'k' || name === 'v') ? randomF32(N, 0.1, normal) : undefined;
      w[name] = { dtype: 'f32', data, bias };
      ref.weights[name] = data;
      if (bias) ref.biases[name] = bias;
    }
    blocks.push(w);
    refBlocks.push(ref);
  }
  return { ref: { config, embed, finalNorm, head: head ?? embed, blocks: refBlocks }, embed, finalNorm, head, blocks };
}

/** Largest |a - b| / (atol + rtol·|b|) (≤ 1 means within tolerance) and where. */
export function worst(
  a: ArrayLike<number>,
  b: ArrayLike<number>,
  atol: number,
  rtol = 0,
): { ratio: number; index: number; a: number; b: number } {
  if (a.length !== b.length) throw new Error(`length ${a.length} vs ${b.length}`);
  let ratio = 0,
    index = -1;
  for (let i = 0; i < a.length; i++) {
    const diff = Math.abs(a[i]! - b[i]!);
    const r = diff === 0 ? 0 : diff / (atol + rtol * Math.abs(b[i]!));
    if (!(r <= ratio)) {
      ratio = r;
      index = i;
    }
  }
  return { ratio, index, a: a[index]!, b: b[index]! };
}

/**
 * The weights of one linear layer, by format: a discriminated union on `format` (formats.ts lists
 * the formats). The addon reads each with the reader of its format (native/binding/weights_arg.hpp).
 */
import type { GptqBits } from './formats.js';

/** A packed linear weight in the GPTQ layout, as the kernels take it (see docs/FORMATS.md). */
export interface PackedWeights {
  bits: GptqBits;
  /** input features (logical, before padding) */
  K: number;
  /** output features */
  N: number;
  /** columns per group along K (K when per channel) */
  groupSize: number;
  /** rows of scales and qzeros */
  groups: number;
  /** stored zero = zero - zeroOffset: 1 for "gptq" (v1), 0 for "gptq_v2" */
  zeroOffset: 0 | 1;
  qweight: Int32Array;
  qzeros: Int32Array;
  /** fp16 bit patterns */
  scales: Uint16Array;
  gIdx?: Int32Array;
}

/** GPTQ weights tagged with their format. */
export interface GptqWeights extends PackedWeights {
  format: 'gptq';
}

/** A dense weight W [N, K] row-major (out × in) in its stored dtype (f16/bf16 as 16-bit patterns). */
export interface DenseWeights {
  format: 'dense';
  dtype: 'f32' | 'f16' | 'bf16';
  data: Float32Array | Uint16Array;
  N: number;
  K: number;
}

/** One linear layer's weight in any format, with an optional f32 bias [N]. */
export type LinearWeights = (DenseWeights | GptqWeights) & { bias?: Float32Array };

/** GPTQ weights as a tagged LinearWeights. */
export function gptqWeights(w: PackedWeights, bias?: Float32Array): LinearWeights {
  return bias ? { ...w, format: 'gptq', bias } : { ...w, format: 'gptq' };
}

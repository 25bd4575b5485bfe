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

/**
 * One linear in SpQR form, in the layout docs/FORMATS.md "SpQR" describes (sweep order):
 * bilevel-quantized codes plus CSR fp16 outliers (native/core/spqr.hpp).
 */
export interface SpqrWeights {
  /** code bits: 2, 3 or 4 */
  bits: number;
  /** bits of each first-level scale / zero code */
  statBits: number;
  /** output features */
  N: number;
  /** input features */
  K: number;
  /** first-level group (sweep columns sharing a scale and zero) */
  beta1: number;
  /** second-level group (rows whose first-level statistics share one grid) */
  beta2: number;
  /** bit stream of N·K codes, row-major, sweep order */
  qweight: Uint8Array;
  /** bit streams of N·G first-level scale / zero codes [N, G] */
  scaleCodes: Uint8Array;
  zeroCodes: Uint8Array;
  /** fp16 bits [G, ceil(N / beta2), 2]: (offset, step) of each second-level grid */
  scaleStats: Uint16Array;
  zeroStats: Uint16Array;
  /** [K] original input column of each sweep position; absent: identity (no act-order) */
  perm?: Int32Array;
  /** CSR outliers: [N + 1] row pointers, [nnz] sweep positions, [nnz] fp16 residuals */
  outlierRowptr: Int32Array;
  outlierCols: Int32Array;
  outlierValues: Uint16Array;
}

/** SpQR weights tagged with their format. */
export interface SpqrLinearWeights extends SpqrWeights {
  format: 'spqr';
}

/** One linear layer's weight in any format, with an optional f32 bias [N]. */
export type LinearWeights = (DenseWeights | GptqWeights | SpqrLinearWeights) & { bias?: Float32Array };

/** SpQR weights as a tagged LinearWeights. */
export function spqrWeights(w: SpqrWeights, bias?: Float32Array): LinearWeights {
  return bias ? { ...w, format: 'spqr', bias } : { ...w, format: 'spqr' };
}

/** GPTQ weights as a tagged LinearWeights. */
export function gptqWeights(w: PackedWeights, bias?: Float32Array): LinearWeights {
  return bias ? { ...w, format: 'gptq', bias } : { ...w, format: 'gptq' };
}

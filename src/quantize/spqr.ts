/**
 * SpQR for one linear layer (docs/SPQR.md): quantize its weight against the Hessian of its inputs
 * (spqrQuantize), expand it (spqrDequantize) or multiply by it on the CPU (spqrMatmul). The math is
 * native (native/core/spqr{,_gemm}.cpp); this module checks every argument first, with messages that
 * name the option, the value and what was expected.
 */
import { LowbitError, invalidArgument } from '../errors.js';
import { native } from '../native.js';
import { Tensor } from '../tensor.js';
import type { SpqrWeights } from '../weights/types.js';
import type { Hessian } from './gptq.js';

export type { SpqrWeights } from '../weights/types.js';

/** Exact storage of one linear in the checkpoint, in bits, by part. */
export interface SpqrStorageBits {
  weights: number;
  firstLevel: number;
  secondLevel: number;
  permutation: number;
  outliers: number;
  total: number;
}

export interface SpqrReport {
  /** lambda added to diag(H), the damp fraction it came from (after raises), how many raises */
  damp: number;
  dampPercent: number;
  dampRaises: number;
  deadInputs: number;
  /** ½ Σ (w − ŵ)² / Hinv_pp²: GPTQ's objective */
  loss: number;
  /** mean over columns of var(W[:, p]) / Hinv_pp², the layer's typical error */
  typicalError: number;
  /** τ · typicalError (null without outliers) */
  outlierThreshold: number | null;
  /** weights over the threshold before the budget cut */
  outlierCandidates: number;
  bits: SpqrStorageBits;
  warnings: string[];
}

export interface SpqrOptions {
  /** weight bits: 2, 3 or 4 (default 3) */
  bits?: number;
  /** first-level group along the input dimension (default 16) */
  beta1?: number;
  /** second-level group along the output dimension (default 16) */
  beta2?: number;
  /** bits of each quantized scale and zero (default 3) */
  statBits?: number;
  /** τ: outlier threshold relative to the layer's typical error, > 0; Infinity: no outliers (default 0.2) */
  outlierThreshold?: number;
  /** most outliers as a fraction of the weights, in (0, 1) (default 0.01) */
  outlierBudget?: number;
  /** dampening as a fraction of mean(diag H) (default 0.01: better than the reference recipe's 1.0 on stories260K, bench/RESULTS.md) */
  damp?: number;
  /** sweep columns by descending diag(H) (default true) */
  actOrder?: boolean;
  /**
   * fit each first-level group's scale and zero by search (lowest scaled error over shrunken ranges,
   * then over the quantized statistics' codes) rather than min–max (default true)
   */
  gridSearch?: boolean;
  /**
   * with gridSearch: also search each second-level block's grids (the offset and step its rows'
   * scales and zeros are quantized on) for the lowest total scaled error, rather than their min–max
   * (default: gridSearch)
   */
  statSearch?: boolean;
  maxDampRaises?: number;
  blockSize?: number;
}

export type ResolvedSpqrOptions = Required<SpqrOptions>;

export const SPQR_DEFAULTS: ResolvedSpqrOptions = {
  bits: 3,
  beta1: 16,
  beta2: 16,
  statBits: 3,
  outlierThreshold: 0.2,
  outlierBudget: 0.01,
  damp: 0.01,
  actOrder: true,
  gridSearch: true,
  statSearch: true,
  maxDampRaises: 3,
  blockSize: 128,
};

function integerIn(
  name: string,
  v: unknown,
  lo: number,
  hi: number,
  code: 'E_ARGUMENT' | 'E_BITS' | 'E_GROUP_SIZE' = 'E_ARGUMENT',
): number {
  if (typeof v !== 'number' || !Number.isInteger(v) || v < lo || v > hi)
    invalidArgument(name, `integer in [${lo}, ${hi}]`, v, code);
  return v;
}

/** Checks SpQR options and fills in the defaults. K, when given, bounds beta1 (a group longer than the row is refused). */
export function resolveSpqrOptions(options: SpqrOptions = {}, K?: number): ResolvedSpqrOptions {
  if (options === null || typeof options !== 'object') invalidArgument('options', 'object', options);
  const given = Object.fromEntries(Object.entries(options).filter(([, v]) => v !== undefined)) as SpqrOptions;
  const o = {
    ...SPQR_DEFAULTS,
    statSearch: given.gridSearch ?? SPQR_DEFAULTS.gridSearch,
    ...given,
  } as ResolvedSpqrOptions;
  if (![2, 3, 4].includes(o.bits)) invalidArgument('bits', 'one of 2, 3, 4 (SpQR)', o.bits, 'E_BITS');
  integerIn('beta1', o.beta1, 2, 65536, 'E_GROUP_SIZE');
  if (K !== undefined && o.beta1 > K) {
    throw new LowbitError(
      'E_GROUP_SIZE',
      `beta1 ${o.beta1} is longer than the layer's input dimension K = ${K}: use a first-level group of at most K columns`,
      { option: 'beta1' },
    );
  }
  integerIn('beta2', o.beta2, 1, 65536, 'E_GROUP_SIZE');
  integerIn('statBits', o.statBits, 1, 8, 'E_BITS');
  if (typeof o.outlierThreshold !== 'number' || !(o.outlierThreshold > 0))
    invalidArgument('outlierThreshold', 'number > 0 (Infinity: no outliers)', o.outlierThreshold);
  if (typeof o.outlierBudget !== 'number' || !(o.outlierBudget > 0 && o.outlierBudget < 1))
    invalidArgument('outlierBudget', 'number in (0, 1)', o.outlierBudget);
  if (typeof o.damp !== 'number' || !Number.isFinite(o.damp) || o.damp < 0)
    invalidArgument('damp', 'finite number >= 0', o.damp);
  if (typeof o.actOrder !== 'boolean') invalidArgument('actOrder', 'boolean', o.actOrder);
  if (typeof o.gridSearch !== 'boolean') invalidArgument('gridSearch', 'boolean', o.gridSearch);
  if (typeof o.statSearch !== 'boolean') invalidArgument('statSearch', 'boolean', o.statSearch);
  if (o.statSearch && !o.gridSearch) {
    throw new LowbitError(
      'E_ARGUMENT',
      'statSearch (the second-level grid search) works on the searched first-level fits: it needs gridSearch (or set statSearch: false)',
      { option: 'statSearch' },
    );
  }
  integerIn('maxDampRaises', o.maxDampRaises, 0, 20);
  integerIn('blockSize', o.blockSize, 1, 1 << 20);
  return o;
}

interface SpqrAddon {
  spqrQuantize(
    W: Float32Array,
    N: number,
    K: number,
    H: Float32Array,
    options: Record<string, unknown>,
  ): Promise<SpqrWeights & { report: SpqrReport }>;
  spqrDequantize(W: SpqrWeights): Float32Array;
  spqrGemm(X: Float32Array, M: number, W: SpqrWeights): Float32Array;
  spqrStorageBits(
    bits: number,
    statBits: number,
    N: number,
    K: number,
    beta1: number,
    beta2: number,
    hasPerm: boolean,
    outliers: number,
  ): SpqrStorageBits;
}

function addon(): SpqrAddon {
  return native() as unknown as SpqrAddon;
}

function f32Data(name: string, x: Float32Array | Tensor): Float32Array {
  if (x instanceof Tensor) {
    if (x.dtype !== 'f32') invalidArgument(name, 'f32 tensor', x.dtype, 'E_DTYPE');
    return x.data as Float32Array;
  }
  if (!(x instanceof Float32Array)) invalidArgument(name, 'Float32Array or f32 Tensor', x, 'E_DTYPE');
  return x;
}

/**
 * Quantizes W [N, K] (out × in) against H (the Hessian of the layer's inputs, K × K). Resolves with
 * the weights in SpQR form and the layer's report (dampening, loss, outliers, exact bits).
 */
export async function spqrQuantize(
  W: Float32Array | Tensor,
  shape: readonly [number, number],
  H: Float32Array | Hessian,
  options: SpqrOptions = {},
): Promise<{ weights: SpqrWeights; report: SpqrReport }> {
  const [N, K] = shape;
  if (!Number.isInteger(N) || N <= 0 || !Number.isInteger(K) || K <= 0 || K > 65536)
    invalidArgument('shape', '[N > 0, K in [1, 65536]]', shape, 'E_SHAPE');
  const w = f32Data('W', W);
  if (w.length !== N * K) invalidArgument('W', `${N * K} values (N × K)`, w, 'E_SHAPE');
  const h = H instanceof Float32Array ? H : native().hessianRead(H.handle);
  if (h.length !== K * K) invalidArgument('H', `${K * K} values (K × K)`, h, 'E_SHAPE');
  const o = resolveSpqrOptions(options, K);
  const { report, ...weights } = await addon().spqrQuantize(w, N, K, h, {
    bits: o.bits,
    beta1: o.beta1,
    beta2: o.beta2,
    statBits: o.statBits,
    outlierThreshold: o.outlierThreshold,
    outlierBudget: o.outlierBudget,
    dampPercent: o.damp,
    actOrder: o.actOrder,
    gridSearch: o.gridSearch,
    statSearch: o.statSearch,
    maxDampRaises: o.maxDampRaises,
    blockSize: o.blockSize,
  });
  return { weights, report };
}

/** W as f32 [N, K] in the original column order, outliers included (checks every buffer and index). */
export function spqrDequantize(W: SpqrWeights): Float32Array {
  return addon().spqrDequantize(W);
}

/** Y = X · Wᵀ on the CPU: X [M, K] f32 → Y [M, N]. Repacks W on every call (the model repacks once). */
export function spqrMatmul(X: Float32Array, M: number, W: SpqrWeights): Float32Array {
  return addon().spqrGemm(X, M, W);
}

/** Exact checkpoint storage of a linear with these parameters and `outliers` outliers, in bits. */
export function spqrStorageBits(p: {
  bits: number;
  statBits: number;
  N: number;
  K: number;
  beta1: number;
  beta2: number;
  hasPerm: boolean;
  outliers: number;
}): SpqrStorageBits {
  return addon().spqrStorageBits(p.bits, p.statBits, p.N, p.K, p.beta1, p.beta2, p.hasPerm, p.outliers);
}

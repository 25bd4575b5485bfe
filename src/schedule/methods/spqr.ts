/**
 * SpQR (docs/SPQR.md): GPTQ's sweep with tiny first-level groups whose statistics are quantized in
 * second-level groups, plus the few weights that cause most of the error kept as fp16 outliers
 * (src/quantize/spqr.ts). Writes the spqr weight format (docs/FORMATS.md "SpQR").
 */
import { LowbitError, invalidArgument } from '../../errors.js';
import type { SpqrQuantizationConfig } from '../../formats/spqr.js';
import { resolveSpqrOptions, spqrQuantize } from '../../quantize/spqr.js';
import { rejectOptions, type QuantizationMethod } from './method.js';

export interface SpqrMethodOptions {
  /** code bits: 2, 3 or 4 */
  bits: 2 | 3 | 4;
  /** first-level group: input columns (in sweep order) sharing one scale and zero */
  beta1: number;
  /** second-level group: output rows whose first-level statistics share one grid */
  beta2: number;
  /** bits of each quantized first-level scale and zero */
  statBits: number;
  /** τ: outlier threshold relative to the layer's typical error (Infinity: no outliers) */
  outlierThreshold: number;
  /** most outliers, as a fraction of each layer's weights, in (0, 1) */
  outlierBudget: number;
  /** dampening: the fraction of mean(diag H) added to the diagonal (percdamp) */
  damp: number;
  /** sweep columns by descending diag(H) (the permutation is stored) */
  actOrder: boolean;
  /** search each first-level group's scale and zero for the lowest error (else min–max) */
  gridSearch: boolean;
  /** search each second-level block's grids (offset, step) for the lowest error (else min–max) */
  statSearch: boolean;
  /** q/k/v -> o -> gate/up -> down, each stage on inputs from the quantized earlier ones (always) */
  trueSequential: true;
}

/** The method's settings as spqrQuantize takes them and the checkpoint records them. */
function spqrSettings(o: SpqrMethodOptions): SpqrQuantizationConfig {
  const { bits, beta1, beta2, statBits, outlierThreshold, outlierBudget, damp, actOrder, gridSearch, statSearch } = o;
  return { bits, beta1, beta2, statBits, outlierThreshold, outlierBudget, damp, actOrder, gridSearch, statSearch };
}

export const spqr: QuantizationMethod<SpqrMethodOptions> = {
  name: 'spqr',
  description: 'GPTQ with tiny bilevel groups and fp16 outliers (needs --calib)',
  calibration: 'hessian',
  format: 'spqr',
  resolve(o) {
    rejectOptions(
      'SpQR',
      o,
      ['sym', 'mse', 'staticGroups', 'checkpointFormat'],
      'GPTQ',
      'SpQR fits an asymmetric min-max grid per first-level group and writes its own format',
    );
    if (o.groupSize !== undefined && o.groupSize !== null)
      throw new LowbitError(
        'E_ARGUMENT',
        'SpQR has no groupSize: its first-level group is beta1 (CLI --beta1), its second-level group beta2 (--beta2)',
        { option: 'groupSize' },
      );
    if (o.trueSequential === false)
      invalidArgument('trueSequential', 'true (SpQR always quantizes stage by stage)', o.trueSequential);
    const s = resolveSpqrOptions({
      bits: (o.bits ?? 3) as number,
      beta1: o.beta1 as number | undefined,
      beta2: o.beta2 as number | undefined,
      statBits: o.statBits as number | undefined,
      outlierThreshold: o.outlierThreshold as number | undefined,
      outlierBudget: o.outlierBudget as number | undefined,
      damp: o.damp as number | undefined,
      actOrder: o.actOrder as boolean | undefined,
      gridSearch: o.gridSearch as boolean | undefined,
      statSearch: o.statSearch as boolean | undefined,
    });
    return {
      bits: s.bits as 2 | 3 | 4,
      beta1: s.beta1,
      beta2: s.beta2,
      statBits: s.statBits,
      outlierThreshold: s.outlierThreshold,
      outlierBudget: s.outlierBudget,
      damp: s.damp,
      actOrder: s.actOrder,
      gridSearch: s.gridSearch,
      statSearch: s.statSearch,
      trueSequential: true,
    };
  },
  checkShapes(o, dims) {
    const K = Math.min(...dims.map((d) => d.K));
    if (o.beta1 > K)
      throw new LowbitError(
        'E_GROUP_SIZE',
        `beta1 ${o.beta1} is longer than the model's smallest linear input (K = ${K}): use a first-level group of at most ${K} columns`,
        { option: 'beta1' },
      );
  },
  async quantizeLinear({ W, hessian }, o) {
    const [N, K] = W.shape as [number, number];
    const { weights, report } = await spqrQuantize(W, [N, K], hessian!, spqrSettings(o));
    return {
      packed: { ...weights, format: 'spqr' },
      loss: report.loss,
      damp: report.dampPercent,
      lambda: report.damp,
      dampRaises: report.dampRaises,
      warnings: report.warnings,
    };
  },
  checkpointConfig(o): SpqrQuantizationConfig {
    return spqrSettings(o);
  },
  linearBytes(N, K) {
    // f32 weight and its working copies (W, reconstruction, error) + Hinv (f32) + the double factorization
    return 4 * N * K * 4 + K * K * (4 + 8);
  },
};

/** GPTQ: each linear quantized column by column against the Hessian of its calibration inputs (src/quantize/gptq.ts). */
import { invalidArgument } from '../../errors.js';
import { gptqQuantize } from '../../quantize/gptq.js';
import {
  GRID_OPTION_NAMES,
  SPQR_OPTION_NAMES,
  rejectOptions,
  resolveNamed,
  type GridOptions,
  type QuantizationMethod,
} from './method.js';

export interface GptqMethodOptions extends GridOptions {
  /** quantize columns by descending diag(H) (g_idx in the checkpoint unless staticGroups) */
  actOrder: boolean;
  /** fit every group's grid before the sweep (act-order without g_idx) */
  staticGroups: boolean;
  /** dampening: the fraction of mean(diag H) added to the diagonal (percdamp); results report the absolute λ */
  damp: number;
  /** q/k/v -> o -> gate/up -> down, each stage on inputs from the quantized earlier ones */
  trueSequential: boolean;
}

export const gptq: QuantizationMethod<GptqMethodOptions> = {
  name: 'gptq',
  description: 'column by column with error compensation against calibration Hessians (needs --calib)',
  calibration: 'hessian',
  format: 'gptq',
  resolve(o) {
    rejectOptions('GPTQ', o, SPQR_OPTION_NAMES, 'SpQR', 'GPTQ has one grid per group (--group-size) and no outliers');
    const trueSequential = o.trueSequential ?? true;
    if (typeof trueSequential !== 'boolean') invalidArgument('trueSequential', 'boolean', trueSequential);
    return { ...resolveNamed(o, [...GRID_OPTION_NAMES, 'actOrder', 'staticGroups', 'damp']), trueSequential };
  },
  async quantizeLinear({ W, hessian, device }, o) {
    const r = await gptqQuantize(W, undefined, hessian!, {
      bits: o.bits,
      groupSize: o.groupSize,
      sym: o.sym,
      actOrder: o.actOrder,
      staticGroups: o.staticGroups,
      damp: o.damp,
      mse: o.mse,
      checkpointFormat: o.checkpointFormat,
      device,
    });
    // With static groups the order never reaches the kernels: the block runs without g_idx.
    const forBlock = o.actOrder && !o.staticGroups ? r.packed : { ...r.packed, gIdx: undefined };
    return {
      packed: r.packed,
      forBlock,
      loss: r.loss,
      damp: r.damp,
      lambda: r.lambda,
      dampRaises: r.dampRaises,
      warnings: r.warnings,
    };
  },
  checkpointConfig(o) {
    return {
      bits: o.bits,
      groupSize: o.groupSize,
      descAct: o.actOrder,
      sym: o.sym,
      dampPercent: o.damp,
      trueSequential: o.trueSequential,
      staticGroups: o.staticGroups,
      checkpointFormat: o.checkpointFormat,
    };
  },
  linearBytes(N, K) {
    // f32 weight + GPTQ's working copies (W, its permuted copy, codes) + Hinv (f32) + the double factorization
    return 4 * N * K * 4 + K * K * (4 + 8);
  },
};

/** RTN: each linear rounded to the nearest grid point on its own, no calibration (src/quantize/rtn.ts). */
import { rtnQuantize } from '../../quantize/rtn.js';
import {
  GRID_OPTION_NAMES,
  SPQR_OPTION_NAMES,
  rejectOptions,
  resolveNamed,
  type GridOptions,
  type QuantizationMethod,
} from './method.js';

export type RtnMethodOptions = GridOptions;

/** GPTQ's options, which RTN has nothing to apply to. */
const GPTQ_ONLY = ['actOrder', 'staticGroups', 'damp', 'trueSequential'];

export const rtn: QuantizationMethod<RtnMethodOptions> = {
  name: 'rtn',
  description: 'round to nearest, per group; no calibration',
  calibration: 'none',
  format: 'gptq',
  resolve(o) {
    rejectOptions(
      'RTN',
      o,
      GPTQ_ONLY,
      'GPTQ',
      'RTN rounds each weight on its own, with no Hessian, column order or stages',
    );
    rejectOptions('RTN', o, SPQR_OPTION_NAMES, 'SpQR', 'RTN has one grid per group and no outliers');
    return resolveNamed(o, GRID_OPTION_NAMES);
  },
  async quantizeLinear({ W }, o) {
    const packed = await rtnQuantize(W, {
      bits: o.bits,
      groupSize: o.groupSize,
      sym: o.sym,
      mse: o.mse,
      checkpointFormat: o.checkpointFormat,
    });
    return { packed, loss: null, damp: null, lambda: null, dampRaises: 0, warnings: [] };
  },
  checkpointConfig(o) {
    // GPTQ's fields at their defaults (RTN has no Hessian, order or stages): what loaders expect to find.
    return {
      bits: o.bits,
      groupSize: o.groupSize,
      descAct: false,
      sym: o.sym,
      dampPercent: 0.01,
      trueSequential: true,
      staticGroups: false,
      checkpointFormat: o.checkpointFormat,
    };
  },
  linearBytes(N, K) {
    return 3 * N * K * 4; // f32 weight, codes, packed copy
  },
};

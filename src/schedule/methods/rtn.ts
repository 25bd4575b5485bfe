/** RTN: each linear rounded to the nearest grid point on its own, no calibration (src/quantize/rtn.ts). */
import { resolveGptqOptions } from '../../quantize/gptq.js';
import { rtnQuantize } from '../../quantize/rtn.js';
import type { GridOptions, QuantizationMethod } from './method.js';

export type RtnMethodOptions = GridOptions;

export const rtn: QuantizationMethod<RtnMethodOptions> = {
  name: 'rtn',
  description: 'round to nearest, per group; no calibration',
  calibration: 'none',
  format: 'gptq',
  resolve(o) {
    const g = resolveGptqOptions({
      bits: o.bits as never,
      groupSize: o.groupSize as never,
      sym: o.sym as never,
      mse: o.mse as never,
      checkpointFormat: o.checkpointFormat as never,
    });
    return { bits: g.bits, groupSize: g.groupSize, sym: g.sym, mse: g.mse, checkpointFormat: g.checkpointFormat };
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

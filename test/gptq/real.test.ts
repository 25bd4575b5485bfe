/**
 * GPTQ on real weights with Hessians from real activations: stories260K's block 1 linears, inputs
 * captured by the forward pass on TinyStories text, against the float64 reference; GPTQ must beat
 * RTN on the layer's output error.
 */
import { describe, expect, it } from 'vitest';
import { CAPTURE_POINT_OF, useCapturedBlock1 } from '../helpers/captured.js';
import { linearDims } from '../../src/formats/gptq.js';
import { native } from '../../src/native.js';
import { Hessian, gptqQuantize } from '../../src/quantize/gptq.js';
import { dequantize, gptqReference, outputError } from './reference.js';

const SEQ = 128;
const WINDOWS = 6;

describe('GPTQ on stories260K block 1 with captured inputs', () => {
  const c = useCapturedBlock1(WINDOWS, SEQ);

  for (const [name, opts] of [
    ['q', { bits: 4, groupSize: 32, actOrder: true }],
    ['o', { bits: 3, groupSize: -1 }],
    ['up', { bits: 4, groupSize: 32, actOrder: true, staticGroups: true }],
    ['down', { bits: 3, groupSize: 32, sym: true }],
  ] as const) {
    it(`${name}_proj, ${JSON.stringify(opts)}`, async () => {
      const { K, N } = linearDims(c.model.config, name);
      const X = c.inputs[CAPTURE_POINT_OF[name]]!;
      const T = X.length / K;
      const weights = await c.model.readBlockWeights(1);
      const W = (weights[name] as { data: Float32Array }).data;
      const h = Hessian.create(K);
      await h.addBatch(X.subarray(0, 300 * K), 300);
      await h.addBatch(X.subarray(300 * K), T - 300);
      const H = h.read().data as Float32Array;
      const r = await gptqQuantize(W, [N, K], h, opts);
      h.free();
      const ref = gptqReference(W, H, N, K, {
        bits: opts.bits,
        groupSize: opts.groupSize,
        sym: 'sym' in opts ? opts.sym : false,
        actOrder: 'actOrder' in opts ? opts.actOrder : false,
        staticGroups: 'staticGroups' in opts ? opts.staticGroups : false,
        damp: 0.01,
        minZero: 1,
      });
      const msg = `text offset ${c.offset}, ${name}`;
      let differ = 0;
      for (let i = 0; i < N * K; i++) if (r.q[i] !== ref.q[i]) differ++;
      expect(differ / (N * K), `${msg}: ${differ} codes differ`).toBeLessThan(0.01);
      expect(Array.from(r.packed.gIdx)).toEqual(Array.from(ref.gIdx));
      expect(Math.abs(r.loss - ref.loss) / ref.loss, msg).toBeLessThan(0.02);

      const What = dequantize(r.q, r.scales, r.zeros, r.packed.gIdx, N, K);
      const gs = opts.groupSize === -1 ? K : opts.groupSize;
      const rtn = await native().rtnQuantize(W, N, K, {
        bits: opts.bits,
        groupSize: opts.groupSize,
        sym: 'sym' in opts ? opts.sym : false,
      });
      const plainIdx = Int32Array.from({ length: K }, (_, k) => Math.floor(k / gs));
      const errGptq = outputError(W, What, X, N, K, T);
      const errRtn = outputError(W, dequantize(rtn.q, rtn.scales, rtn.zeros, plainIdx, N, K), X, N, K, T);
      expect(errGptq, `${msg}: GPTQ ${errGptq} vs RTN ${errRtn}`).toBeLessThan(errRtn);
    });
  }
});

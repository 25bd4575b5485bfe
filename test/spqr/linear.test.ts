/**
 * SpQR as a weight format of the seam (native/core/weights): a prepared SpQR linear (the CPU table's
 * spqr-cpu, CUDA's spqr-cuda where there is a GPU) against the float64 product of the independently
 * decoded weights (planted outliers, odd K, bias, batch 1 and batched), and the forward pass of
 * stories260K with every block linear in SpQR form against the same model with those linears
 * dequantized to dense f32.
 */
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { dataDir, haveData } from '../helpers/data.js';
import { Rng } from '../helpers/random.js';
import { forEachSpqrLinear } from '../helpers/spqr-model.js';
import { matmulRef, relativeError } from '../helpers/reference.js';
import { native } from '../../src/native.js';
import { openModel, type Model } from '../../src/model/model.js';
import { perplexityIds } from '../../src/model/perplexity.js';
import { prepareLinear } from '../../src/quantize/linear.js';
import { spqrDequantize } from '../../src/quantize/spqr.js';
import { spqrWeights } from '../../src/weights/types.js';
import { WEIGHT_FORMATS, SPQR_BITS } from '../../src/weights/formats.js';
import { decodeSpqrRef, randomSpqrLayout } from './reference.js';

const devices: ('cpu' | 'cuda')[] = native().cudaDevices().devices.length > 0 ? ['cpu', 'cuda'] : ['cpu'];

describe('the spqr weight format', () => {
  // Catches: the format missing from one side's table, or its widths disagreeing.
  it('is in both format tables with the same bit widths', () => {
    expect(WEIGHT_FORMATS).toContain('spqr');
    const entry = native()
      .weightFormats()
      .find((f) => f.name === 'spqr');
    expect(entry?.bits).toEqual([...SPQR_BITS]);
    expect(native().linearKernels().cpu).toContain('spqr-cpu');
  });
});

describe.each(devices)('prepared SpQR linears on %s', (device) => {
  // Catches: an operator that reads the layout wrongly (bit streams, statistics, permutation),
  // drops the outliers or the bias, writes part of Y, or keeps views of the caller's arrays.
  it('match the float64 product of the decoded weights (planted outliers, odd K, bias, M 1..33)', async () => {
    const rng = new Rng();
    for (const [N, K, bits, beta1, beta2, perm] of [
      [37, 172, 2, 16, 16, true],
      [64, 172, 3, 16, 16, false],
      [50, 100, 4, 20, 7, true],
      [9, 33, 3, 11, 16, true],
    ] as const) {
      const W = randomSpqrLayout(rng, { N, K, bits, beta1, beta2, perm, outlierRate: 0.02 });
      expect(W.outlierCols.length, 'outliers were planted').toBeGreaterThan(0);
      const dense = decodeSpqrRef(W);
      const bias = Float32Array.from({ length: N }, () => rng.normal());
      const biasRef = bias.slice();
      const lin = prepareLinear(spqrWeights(W, bias), { device });
      expect(lin.kernel).toBe(device === 'cpu' ? 'spqr-cpu' : 'spqr-cuda');
      W.qweight.fill(0x5a); // the operator must hold its own copies
      W.outlierValues.fill(0x7bff);
      bias.fill(1e6);
      for (const M of [1, 2, 16, 33]) {
        const X = Float32Array.from({ length: M * K }, () => rng.normal());
        const ref = matmulRef(X, M, dense, N, K);
        for (let m = 0; m < M; m++) for (let n = 0; n < N; n++) ref[m * N + n]! += biasRef[n]!;
        const what = `seed ${rng.seed} ${device} ${N}x${K} ${bits}-bit M ${M}`;
        const Y = await lin.matmul(X, M);
        expect(relativeError(Y, ref), what).toBeLessThan(1e-5);
        expect(Array.from(lin.matmulSync(X, M)), what).toEqual(Array.from(Y));
      }
      lin.close();
    }
  });

  // Catches: a reader that lets an inconsistent SpQR object reach a kernel.
  it('rejects malformed SpQR weights with coded errors', () => {
    const rng = new Rng();
    const W = randomSpqrLayout(rng, { N: 20, K: 40, bits: 3 });
    const bad = (patch: object) => () => prepareLinear({ ...spqrWeights(W), ...patch }, { device });
    expect(bad({ qweight: W.qweight.subarray(1) })).toThrow(expect.objectContaining({ code: 'E_BUFFER' }));
    expect(bad({ perm: new Int32Array(40) })).toThrow(expect.objectContaining({ code: 'E_SPQR_FORMAT' }));
    expect(bad({ bits: 5 })).toThrow(expect.objectContaining({ code: 'E_BITS' }));
    expect(bad({ N: 0 })).toThrow(expect.objectContaining({ code: 'E_SHAPE' }));
  });
});

const modelDir = join(dataDir, 'stories260K-hf');
const ready = haveData('stories260K-hf/model.safetensors', 'tinystories-valid.txt');

describe.skipIf(!ready)('stories260K with SpQR linears', () => {
  let spqr: Model;
  let dense: Model;
  beforeAll(async () => {
    spqr = await openModel(modelDir, { device: 'cpu' });
    dense = await openModel(modelDir, { device: 'cpu' });
  });
  afterAll(async () => {
    await spqr?.close();
    await dense?.close();
  });

  // Catches: the forward pass taking SpQR linears through a path other than the one tested above
  // (e.g. ignoring them, or a reader that transposes or mis-sizes them inside the model).
  it('runs the same logits as the model with the dequantized weights', async () => {
    await forEachSpqrLinear(spqr, { bits: 3, outlierThreshold: 0.1 }, async (block, name, q, bias) => {
      await spqr.setLinear(block, name, { ...q, format: 'spqr', bias });
      await dense.setLinear(block, name, { dtype: 'f32', data: spqrDequantize(q), bias });
    });
    const ids = perplexityIds(spqr, readFileSync(join(dataDir, 'tinystories-valid.txt'), 'utf8')).subarray(0, 2 * 64);
    const a = await spqr.logits(ids, { batch: 2, seq: 64 });
    const b = await dense.logits(ids, { batch: 2, seq: 64 });
    expect(relativeError(a, Float64Array.from(b))).toBeLessThan(1e-4);
    const original = await openModel(modelDir, { device: 'cpu' });
    try {
      const c = await original.logits(ids, { batch: 2, seq: 64 });
      expect(relativeError(a, Float64Array.from(c)), 'the SpQR linears are in use').toBeGreaterThan(1e-3);
    } finally {
      await original.close();
    }
  });
});

/**
 * SpQR as a weight format of the seam (native/core/weights): a prepared SpQR linear (the CPU table's
 * spqr-cpu, CUDA's spqr-cuda where there is a GPU) against the float64 product of the independently
 * decoded weights (planted outliers, odd K, bias, batch 1 and batched), and the forward pass of
 * stories260K with every block linear in SpQR form against the same model with those linears
 * dequantized to dense f32 (exact f32 activations: spqr-cpu), and the same SpQR model with the
 * default int8 activations (spqr-int8) against the exact one.
 *
 * Stated tolerance of the int8 path on this model (3-bit, beta1 = beta2 = 16, codes from a random
 * Hessian, so they change per run): RMS of the logit difference ≤ 2% of the logits' RMS (measured
 * 1.0-1.4%) and ≤ 10% of the error the weight quantization itself makes (measured 4.8%), each
 * decoding step within twice the RMS bound (measured up to 2.6%).
 */
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { dataDir, haveData } from '../helpers/data.js';
import { Rng } from '../helpers/random.js';
import { forEachSpqrLinear } from '../helpers/spqr-model.js';
import { matmulRef, relativeError, rms } from '../helpers/reference.js';
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
  let spqr8: Model;
  let dense: Model;
  let original: Model;
  let ids: Int32Array;
  beforeAll(async () => {
    spqr = await openModel(modelDir, { device: 'cpu', cpuActivations: 'f32' });
    spqr8 = await openModel(modelDir, { device: 'cpu' }); // the default: int8
    dense = await openModel(modelDir, { device: 'cpu', cpuActivations: 'f32' });
    original = await openModel(modelDir, { device: 'cpu', cpuActivations: 'f32' });
    await forEachSpqrLinear(spqr, { bits: 3, outlierThreshold: 0.1 }, async (block, name, q, bias) => {
      await spqr.setLinear(block, name, { ...q, format: 'spqr', bias });
      await spqr8.setLinear(block, name, { ...q, format: 'spqr', bias });
      await dense.setLinear(block, name, { dtype: 'f32', data: spqrDequantize(q), bias });
    });
    ids = perplexityIds(spqr, readFileSync(join(dataDir, 'tinystories-valid.txt'), 'utf8')).subarray(0, 2 * 64);
  });
  afterAll(async () => {
    await spqr?.close();
    await spqr8?.close();
    await dense?.close();
    await original?.close();
  });

  // Catches: the forward pass taking SpQR linears through a path other than the one tested above
  // (e.g. ignoring them, or a reader that transposes or mis-sizes them inside the model).
  it('runs the same logits as the model with the dequantized weights', async () => {
    const a = await spqr.logits(ids, { batch: 2, seq: 64 });
    const b = await dense.logits(ids, { batch: 2, seq: 64 });
    expect(relativeError(a, Float64Array.from(b))).toBeLessThan(1e-4);
    const c = await original.logits(ids, { batch: 2, seq: 64 });
    expect(relativeError(a, Float64Array.from(c)), 'the SpQR linears are in use').toBeGreaterThan(1e-3);
  });

  // Catches: the int8 product not taken by default inside the model (or taken for f32), and a wrong
  // statistic, outlier or permutation of it at model scale (a wrong weight moves logits by O(1)), in
  // the row-tiled GEMM (whole sequences, prefill) and the one-row GEMV (decoding).
  it('with int8 activations runs spqr-int8 in every block linear, close to the exact path', async () => {
    const linears = spqr8.layers * 7;
    const counted = async (fn: () => Promise<Float32Array>) => {
      const before = native().cpuGptqInt8Stats().spqrProducts;
      const value = await fn();
      return { value, products: native().cpuGptqInt8Stats().spqrProducts - before };
    };
    const exact = await counted(() => spqr.logits(ids, { batch: 2, seq: 64 }));
    expect(exact.products, 'f32 activations keep spqr-cpu').toBe(0);
    const fast = await counted(() => spqr8.logits(ids, { batch: 2, seq: 64 }));
    expect(fast.products, 'one product per block linear and sequence').toBe(2 * linears);
    expect(rms(fast.value, exact.value), 'different arithmetic ran').toBeGreaterThan(0);
    expect(rms(fast.value, exact.value) / rms(exact.value), 'int8 vs f32: RMS difference / RMS').toBeLessThanOrEqual(
      0.02,
    );
    const weightError = rms(exact.value, await original.logits(ids, { batch: 2, seq: 64 }));
    expect(rms(fast.value, exact.value) / weightError, 'int8 vs weight-quantization error').toBeLessThanOrEqual(0.1);

    const s8 = await spqr8.createSession(64);
    const sf = await spqr.createSession(64);
    try {
      const close = (got: Float32Array, ref: Float32Array, what: string) =>
        expect(rms(got, ref) / rms(ref), what).toBeLessThanOrEqual(0.04);
      const prefill = await counted(() => s8.feed(ids.subarray(0, 24)));
      expect(prefill.products).toBe(linears);
      close(prefill.value, await sf.feed(ids.subarray(0, 24)), 'prefill');
      for (let t = 24; t < 30; t++) {
        const step = await counted(() => s8.feed(ids.subarray(t, t + 1)));
        expect(step.products).toBe(linears);
        close(step.value, await sf.feed(ids.subarray(t, t + 1)), `decode step ${t}`);
      }
    } finally {
      s8.close();
      sf.close();
    }
  });
});

/**
 * The native GPTQ (blocked, fp32 sweep, double factorization) against the float64 textbook version
 * in reference.ts, on fresh random data each run and odd shapes; plus the Hessian accumulator and the
 * error paths.
 */
import { describe, expect, it } from 'vitest';
import { LowbitError } from '../../src/errors.js';
import { native } from '../../src/native.js';
import { Hessian, gptqQuantize, type GptqOptions } from '../../src/quantize/gptq.js';
import { Rng, correlatedInputs, dequantize, gptqReference, outputError, randomSeed } from './reference.js';

function randomWeights(rng: Rng, N: number, K: number): Float32Array {
  return Float32Array.from({ length: N * K }, () => rng.normal() * 0.05);
}

async function hessianOf(X: Float32Array, K: number, batches: number[]): Promise<Hessian> {
  const h = Hessian.create(K);
  let row = 0;
  for (const rows of batches) {
    await h.addBatch(X.subarray(row * K, (row + rows) * K), rows);
    row += rows;
  }
  return h;
}

describe('Hessian accumulation', () => {
  it('is the running mean (2/n) sum x x^T over uneven batches', async () => {
    const seed = randomSeed();
    const rng = new Rng(seed);
    const K = 203;
    const batches = [1, 50, 317, 7];
    const T = batches.reduce((a, b) => a + b);
    const X = Float32Array.from({ length: T * K }, () => rng.normal());
    const h = await hessianOf(X, K, batches);
    expect(h.samples).toBe(T);
    const H = h.read().data as Float32Array;
    let maxRel = 0;
    for (let i = 0; i < K; i++)
      for (let j = 0; j < K; j++) {
        let s = 0;
        for (let t = 0; t < T; t++) s += X[t * K + i]! * X[t * K + j]!;
        const want = (2 / T) * s;
        maxRel = Math.max(maxRel, Math.abs(H[i * K + j]! - want) / 2);
        expect(H[i * K + j], `seed ${seed}: H symmetric at ${i},${j}`).toBe(H[j * K + i]);
      }
    expect(maxRel, `seed ${seed}`).toBeLessThan(2e-5);
    h.free();
    expect(() => h.samples).toThrow(LowbitError);
  });

  it('rejects NaN inputs and bad shapes', async () => {
    const h = Hessian.create(8);
    const X = new Float32Array(16);
    X[11] = NaN;
    await expect(h.addBatch(X, 2)).rejects.toMatchObject({ code: 'E_NAN' });
    expect(h.samples).toBe(0);
    await expect(h.addBatch(new Float32Array(10), 2)).rejects.toMatchObject({ code: 'E_SHAPE' });
    expect(() => Hessian.create(-1)).toThrow(/Expected positive integer for K but received -1 of type number/);
    h.free();
  });
});

interface Case {
  name: string;
  opts: GptqOptions;
}

const CASES: Case[] = [
  { name: '4-bit g32 asym', opts: { bits: 4, groupSize: 32 } },
  { name: '4-bit per-channel sym', opts: { bits: 4, groupSize: -1, sym: true } },
  { name: '3-bit g32 act-order', opts: { bits: 3, groupSize: 32, actOrder: true } },
  { name: '3-bit g32 act-order static', opts: { bits: 3, groupSize: 32, actOrder: true, staticGroups: true } },
  { name: '2-bit g32 sym act-order', opts: { bits: 2, groupSize: 32, sym: true, actOrder: true } },
  { name: '2-bit per-channel asym', opts: { bits: 2, groupSize: -1 } },
  {
    name: '4-bit g48 static, v2 zeros',
    opts: { bits: 4, groupSize: 48, staticGroups: true, checkpointFormat: 'gptq_v2' },
  },
  { name: '8-bit g64 act-order', opts: { bits: 8, groupSize: 64, actOrder: true } },
];

describe('GPTQ against the float64 reference (K = 172, N = 100, 400 correlated tokens)', () => {
  const K = 172;
  const N = 100;
  const T = 400;
  for (const c of CASES) {
    it(c.name, async () => {
      const seed = randomSeed();
      const rng = new Rng(seed);
      const X = correlatedInputs(rng, T, K);
      const W = randomWeights(rng, N, K);
      const h = await hessianOf(X, K, [150, 250]);
      const H = h.read().data as Float32Array;
      const r = await gptqQuantize(W, [N, K], h, c.opts);
      h.free();
      const minZero = c.opts.checkpointFormat === 'gptq_v2' ? 0 : 1;
      const ref = gptqReference(W, H, N, K, {
        bits: c.opts.bits,
        groupSize: c.opts.groupSize ?? 128,
        sym: c.opts.sym ?? false,
        actOrder: c.opts.actOrder ?? false,
        staticGroups: c.opts.staticGroups ?? false,
        damp: 0.01,
        minZero,
      });
      const msg = `seed ${seed}, ${c.name}`;

      expect(Array.from(r.packed.gIdx), msg).toEqual(Array.from(ref.gIdx));
      expect(r.dampRaises, msg).toBe(0);
      // Codes agree except where fp32 and float64 round a near-tie differently (and what follows it).
      let differ = 0;
      for (let i = 0; i < N * K; i++) if (r.q[i] !== ref.q[i]) differ++;
      expect(differ / (N * K), `${msg}: ${differ} of ${N * K} codes differ`).toBeLessThan(0.01);
      let scalesDiffer = 0;
      for (let i = 0; i < r.scales.length; i++)
        if (r.scales[i] !== ref.scales[i] || r.zeros[i] !== ref.zeros[i]) scalesDiffer++;
      expect(scalesDiffer / r.scales.length, msg).toBeLessThan(0.02);
      expect(Math.abs(r.loss - ref.loss) / ref.loss, `${msg}: loss ${r.loss} vs ${ref.loss}`).toBeLessThan(0.02);
      if (minZero === 1) expect(Math.min(...r.zeros), msg).toBeGreaterThanOrEqual(1);

      // The packed layer decodes to the same weights as the codes.
      const deq = native().dequantize(r.packed);
      const What = dequantize(r.q, r.scales, r.zeros, r.packed.gIdx, N, K);
      for (let i = 0; i < N * K; i += 7) expect(deq[i], msg).toBeCloseTo(What[i]!, 6);

      // GPTQ beats round-to-nearest on the layer's output error ||WX - What X||^2.
      const rtn = await native().rtnQuantize(W, N, K, {
        bits: c.opts.bits,
        groupSize: c.opts.groupSize ?? 128,
        sym: c.opts.sym ?? false,
      });
      const plainIdx = Int32Array.from({ length: K }, (_, k) =>
        Math.floor(k / (c.opts.groupSize === -1 ? K : (c.opts.groupSize ?? 128))),
      );
      const errGptq = outputError(W, What, X, N, K, T);
      const errRtn = outputError(W, dequantize(rtn.q, rtn.scales, rtn.zeros, plainIdx, N, K), X, N, K, T);
      expect(errGptq, `${msg}: GPTQ ${errGptq} vs RTN ${errRtn}`).toBeLessThan(errRtn);
    });
  }
});

describe('GPTQ edge cases', () => {
  it('zeroes dead inputs (H_ii = 0)', async () => {
    const seed = randomSeed();
    const rng = new Rng(seed);
    const K = 70;
    const N = 33;
    const X = correlatedInputs(rng, 200, K);
    const dead = [0, 5, 69];
    for (let t = 0; t < 200; t++) for (const d of dead) X[t * K + d] = 0;
    const W = randomWeights(rng, N, K);
    const h = await hessianOf(X, K, [200]);
    const r = await gptqQuantize(W, [N, K], h, { bits: 4, groupSize: 32, actOrder: true });
    h.free();
    expect(r.deadInputs, `seed ${seed}`).toBe(dead.length);
    const What = dequantize(r.q, r.scales, r.zeros, r.packed.gIdx, N, K);
    for (let n = 0; n < N; n++) for (const d of dead) expect(What[n * K + d], `seed ${seed}`).toBe(0);
  });

  it('raises the dampening when the Cholesky factorization fails, and says so', async () => {
    const seed = randomSeed();
    const rng = new Rng(seed);
    const K = 64;
    const N = 20;
    // Rank 12, shifted down by 5% of its mean diagonal: indefinite at damp 0.01, positive definite at 0.1.
    const X = Float32Array.from({ length: 12 * K }, () => rng.normal());
    const h = await hessianOf(X, K, [12]);
    const H = h.read().data as Float32Array;
    h.free();
    let mean = 0;
    for (let i = 0; i < K; i++) mean += H[i * K + i]! / K;
    for (let i = 0; i < K; i++) H[i * K + i] -= 0.05 * mean;
    const W = randomWeights(rng, N, K);
    const r = await gptqQuantize(W, [N, K], H, { bits: 4, groupSize: 16 });
    expect(r.dampRaises, `seed ${seed}`).toBe(1);
    expect(r.damp).toBeCloseTo(0.1, 12);
    expect(r.lambda / (0.1 * 0.95 * mean)).toBeCloseTo(1, 5); // lambda from mean(diag) of the shifted H
    expect(r.warnings.join('\n')).toMatch(/failed with damp_percent 0.01; raised to 0.1/);
    const ref = gptqReference(W, H, N, K, {
      bits: 4,
      groupSize: 16,
      sym: false,
      actOrder: false,
      staticGroups: false,
      damp: 0.01,
      minZero: 1,
    });
    expect(ref.dampPercent).toBeCloseTo(0.1, 12);
    let differ = 0;
    for (let i = 0; i < N * K; i++) if (r.q[i] !== ref.q[i]) differ++;
    expect(differ / (N * K), `seed ${seed}`).toBeLessThan(0.01);
  });

  it('reports E_HESSIAN_SINGULAR when H stays indefinite', async () => {
    const K = 16;
    const H = new Float32Array(K * K);
    for (let i = 0; i < K; i += 2) {
      H[i * K + i] = H[(i + 1) * K + i + 1] = 1;
      H[i * K + i + 1] = H[(i + 1) * K + i] = 1000; // eigenvalues 1001 and -999
    }
    const W = new Float32Array(4 * K).fill(0.1);
    await expect(gptqQuantize(W, [4, K], H, { bits: 4, groupSize: -1 })).rejects.toMatchObject({
      code: 'E_HESSIAN_SINGULAR',
      message: expect.stringMatching(/failed even with damp_percent 10/),
    });
    const negative = new Float32Array(K * K);
    for (let i = 0; i < K; i++) negative[i * K + i] = i === 3 ? -1 : 1;
    await expect(gptqQuantize(W, [4, K], negative, { bits: 4 })).rejects.toMatchObject({ code: 'E_HESSIAN_SINGULAR' });
  });

  it('rejects NaN weights with E_NAN', async () => {
    const K = 8;
    const H = new Float32Array(K * K);
    for (let i = 0; i < K; i++) H[i * K + i] = 1;
    const W = new Float32Array(3 * K).fill(0.5);
    W[9] = NaN;
    await expect(gptqQuantize(W, [3, K], H, { bits: 4 })).rejects.toMatchObject({ code: 'E_NAN' });
    W[9] = Infinity;
    await expect(gptqQuantize(W, [3, K], H, { bits: 4 })).rejects.toMatchObject({ code: 'E_NAN' });
  });

  it('runs on a CUDA device when asked, or says why it cannot', async () => {
    const seed = randomSeed();
    const rng = new Rng(seed);
    const K = 96;
    const N = 40;
    const X = correlatedInputs(rng, 300, K);
    const W = randomWeights(rng, N, K);
    const h = await hessianOf(X, K, [300]);
    const opts: GptqOptions = { bits: 4, groupSize: 32, actOrder: true };
    const cpu = await gptqQuantize(W, [N, K], h, opts);
    const gpus = native().cudaDevices().devices;
    if (gpus.length === 0) {
      await expect(gptqQuantize(W, [N, K], h, { ...opts, device: 'cuda' })).rejects.toMatchObject({
        code: 'E_CUDA_UNAVAILABLE',
      });
      expect(() => Hessian.create(K, { device: 'cuda' })).toThrow(
        expect.objectContaining({ code: 'E_CUDA_UNAVAILABLE' }),
      );
    } else {
      // The Hessian accumulated on the GPU, and GPTQ straight from it.
      const hg = await hessianOf(X, K, [100, 200]);
      const hd = Hessian.create(K, { device: 'cuda' });
      await hd.addBatch(X.subarray(0, 100 * K), 100);
      await hd.addBatch(X.subarray(100 * K), 200);
      expect(hd.device).toBe(0);
      expect(hd.samples).toBe(300);
      const a = hg.read().data as Float32Array;
      const b = hd.read().data as Float32Array;
      for (let i = 0; i < K * K; i += 13)
        expect(Math.abs(a[i]! - b[i]!), `seed ${seed}`).toBeLessThan(1e-4 * (Math.abs(a[i]!) + 1));
      const fromDevice = await gptqQuantize(W, [N, K], hd, { ...opts, device: 'cuda' });
      expect(Math.abs(fromDevice.loss - cpu.loss) / cpu.loss, `seed ${seed}`).toBeLessThan(0.02);
      hg.free();
      hd.free();
      const gpu = await gptqQuantize(W, [N, K], h, { ...opts, device: 'cuda' });
      let differ = 0;
      for (let i = 0; i < N * K; i++) if (gpu.q[i] !== cpu.q[i]) differ++;
      expect(differ / (N * K), `seed ${seed}`).toBeLessThan(0.01);
      expect(Array.from(gpu.packed.gIdx)).toEqual(Array.from(cpu.packed.gIdx));
      expect(Math.abs(gpu.loss - cpu.loss) / cpu.loss, `seed ${seed}`).toBeLessThan(0.02);
    }
    h.free();
    await expect(
      gptqQuantize(W, [N, K], new Float32Array(K * K), { ...opts, device: 'gpu' as 'cuda' }),
    ).rejects.toMatchObject({ code: 'E_ARGUMENT' });
  });

  it('validates options with precise messages', async () => {
    const K = 8;
    const H = new Float32Array(K * K);
    const W = new Float32Array(2 * K);
    const bad = (opts: unknown) => gptqQuantize(W, [2, K], H, opts as GptqOptions);
    await expect(bad({ bits: 5 })).rejects.toMatchObject({
      code: 'E_BITS',
      message: 'Expected one of 2, 3, 4, 8 for bits but received 5 of type number',
    });
    await expect(bad({ bits: 4, groupSize: 0 })).rejects.toMatchObject({
      code: 'E_GROUP_SIZE',
      message: expect.stringMatching(/for groupSize but received 0 of type number/),
    });
    await expect(bad({ bits: 4, damp: -0.1 })).rejects.toMatchObject({
      code: 'E_ARGUMENT',
      message: expect.stringMatching(/for damp but received -0.1/),
    });
    await expect(bad({ bits: 4, actOrder: 'yes' })).rejects.toMatchObject({
      message: expect.stringMatching(/boolean for actOrder/),
    });
    await expect(gptqQuantize(W, [2, K], new Float32Array(10), { bits: 4 })).rejects.toMatchObject({ code: 'E_SHAPE' });
    await expect(gptqQuantize(W, [3, K], H, { bits: 4 })).rejects.toMatchObject({ code: 'E_SHAPE' });
  });
});

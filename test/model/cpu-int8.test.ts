/**
 * The CPU forward pass on packed GPTQ 2/3/4-bit checkpoints with int8 activations (kernel gptq-int8,
 * native/core/cpu_gptq) against the same model with exact f32 activations (gptq-packed), on
 * stories260K quantized by lowbit's RTN (K = 64 and 172: odd units and segments), at every SIMD level
 * this machine has: whole-sequence logits (the row-tiled GEMM), KV-cached decoding (prefill GEMM, then
 * one-row GEMVs) and perplexity.
 *
 * Stated tolerance of the int8 path against the f32 path on this model (RTN, group 32), per width:
 *  - RMS of the logit difference ≤ 1% of the logits' RMS at 4 and 3 bits, 3% at 2 bits (measured
 *    0.73%, 0.82%, 2.2%), and ≤ 10% of the error the weight quantization itself makes (the f32 path
 *    against the fp32 model; measured 6.8%, 4.0%, 4.3%);
 *  - each decoding step's logits within twice the RMS bound;
 *  - perplexity within 0.5% at 4 and 3 bits, 2.5% at 2 bits (measured < 0.5%, 1.5%).
 */
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, test } from 'vitest';
import { native } from '../../src/native.js';
import { Model, openModel } from '../../src/model/model.js';
import { perplexity, perplexityIds } from '../../src/model/perplexity.js';
import { quantize } from '../../src/schedule/quantize.js';
import { availableSimdLevels, forceSimd } from '../helpers/simd.js';
import { rms } from '../helpers/reference.js';
import { dataPath } from './data.js';

const fp32Dir = dataPath('stories260K-hf');
const textFile = dataPath('tinystories-valid.txt');
const tmp = mkdtempSync(join(tmpdir(), 'lowbit-int8-'));
const TOLERANCE = {
  4: { rms: 0.01, ppl: 0.005 },
  3: { rms: 0.01, ppl: 0.005 },
  2: { rms: 0.03, ppl: 0.025 },
} as const;
const BLOCK_LINEARS = 7;

let ids: Int32Array;
let fp32: Model;
beforeAll(async () => {
  fp32 = await openModel(fp32Dir, { device: 'cpu' });
  ids = perplexityIds(fp32, readFileSync(textFile, 'utf8')).subarray(0, 8 * 256);
});
afterAll(async () => {
  forceSimd('auto');
  await fp32?.close();
  rmSync(tmp, { recursive: true, force: true });
});

function maxAbsDiff(a: Float32Array, b: Float32Array): number {
  expect(a.length).toBe(b.length);
  let worst = 0;
  for (let i = 0; i < a.length; i++) worst = Math.max(worst, Math.abs(a[i]! - b[i]!));
  return worst;
}

/** Runs fn and returns how many gptq-int8 products it ran and the kernel family of the last one. */
async function counted<T>(fn: () => Promise<T>): Promise<{ value: T; products: number; kernel: string }> {
  const before = native().cpuGptqInt8Stats().products;
  const value = await fn();
  const after = native().cpuGptqInt8Stats();
  return { value, products: after.products - before, kernel: after.lastKernel };
}

describe.each([4, 3, 2] as const)('%i-bit RTN checkpoint on the CPU', (bits) => {
  let dir: string;
  let int8: Model;
  let exact: Model;
  beforeAll(async () => {
    dir = join(tmp, `rtn${bits}`);
    await quantize({ model: fp32Dir, out: dir, method: 'rtn', bits, groupSize: 32, device: 'cpu' });
    int8 = await openModel(dir, { device: 'cpu' }); // the default: int8
    exact = await openModel(dir, { device: 'cpu', cpuActivations: 'f32' });
  });
  afterAll(async () => {
    await int8?.close();
    await exact?.close();
  });

  // Catches: the option not reaching the native backend, or a default that is not the fast path.
  test('the default is int8; every block linear runs gptq-int8, and f32 keeps the old path', async () => {
    expect(int8.cpuActivations).toBe('int8');
    expect(exact.cpuActivations).toBe('f32');
    const probe = ids.subarray(0, 40);
    const a = await counted(() => int8.logits(probe));
    // one product per block linear (one sequence); fails if the forward pass keeps gptq-packed
    expect(a.products).toBe(int8.layers * BLOCK_LINEARS);
    const b = await counted(() => exact.logits(probe));
    expect(b.products).toBe(0);
    // different arithmetic really ran: the two paths do not agree bit for bit
    expect(maxAbsDiff(a.value, b.value)).toBeGreaterThan(0);
  });

  // Catches: a wrong slice, scale, zero point, segment or permutation of the int8 kernels inside the
  // model (a wrong weight moves logits by O(1)), at each SIMD level, GEMM (many rows) and GEMV (one).
  test.each(availableSimdLevels())('logits and KV-cached decoding match the f32 path at level %s', async (level) => {
    forceSimd(level);
    try {
      const probe = ids.subarray(0, 64);
      const whole = await counted(() => int8.logits(probe));
      expect(whole.kernel === level || whole.kernel === `${level}-vnni`, `ran ${whole.kernel}`).toBe(true);
      const want = await exact.logits(probe);
      const tol = TOLERANCE[bits].rms;
      expect(maxAbsDiff(whole.value, want)).toBeGreaterThan(0);
      const rel = rms(whole.value, want) / rms(want);
      expect(rel, `${bits}-bit ${level} logits: RMS difference / RMS`).toBeLessThanOrEqual(tol);
      const weightError = rms(want, await fp32.logits(probe));
      expect(
        rms(whole.value, want) / weightError,
        `${bits}-bit ${level}: int8 vs weight-quantization error`,
      ).toBeLessThanOrEqual(0.1);

      // decoding: a prompt of 24 (prefill, GEMM), then 8 tokens one at a time (GEMV)
      const s8 = await int8.createSession(64);
      const sf = await exact.createSession(64);
      try {
        const close = (got: Float32Array, ref: Float32Array, what: string) =>
          expect(rms(got, ref) / rms(ref), `${bits}-bit ${level} ${what}`).toBeLessThanOrEqual(2 * tol);
        const prefill = await counted(() => s8.feed(probe.subarray(0, 24)));
        expect(prefill.products).toBe(int8.layers * BLOCK_LINEARS);
        close(prefill.value, await sf.feed(probe.subarray(0, 24)), 'prefill');
        for (let t = 24; t < 32; t++) {
          const step = await counted(() => s8.feed(probe.subarray(t, t + 1)));
          expect(step.products).toBe(int8.layers * BLOCK_LINEARS);
          close(step.value, await sf.feed(probe.subarray(t, t + 1)), `decode step ${t}`);
        }
      } finally {
        s8.close();
        sf.close();
      }
    } finally {
      forceSimd('auto');
    }
  });

  // Catches: an int8 path that is locally close but biased (errors that add up over a text).
  test('perplexity close to the f32 path', async () => {
    const a = (await perplexity(int8, ids, { batch: 4, seqLen: 256 })).ppl;
    const b = (await perplexity(exact, ids, { batch: 4, seqLen: 256 })).ppl;
    expect(Math.abs(Math.log(a / b)), `${bits}-bit ppl int8 ${a} vs f32 ${b}`).toBeLessThanOrEqual(TOLERANCE[bits].ppl);
  });
});

// Catches: a typo silently taking a default.
test('cpuActivations must be int8 or f32', async () => {
  expect(() => Model.create(fp32.config, { cpuActivations: 'int4' as never })).toThrow(
    expect.objectContaining({ code: 'E_ARGUMENT' }),
  );
});

/**
 * The CUDA packed product against the CPU one and a float64 reference. Needs a CUDA device: where
 * there is none (or the addon was built without CUDA) the GPU tests skip with the reason, and the
 * last block checks that asking for a GPU anyway fails with E_CUDA_UNAVAILABLE instead of crashing.
 */
import { describe, expect, it } from 'vitest';
import { LowbitError } from '../../src/errors.js';
import { native } from '../../src/native.js';
import {
  cudaAvailability,
  randomMatrix,
  randomPacked,
  randomSeed,
  referenceProduct,
  relativeError,
  rng,
} from './ref.js';

const cuda = cudaAvailability();
if (!cuda.ok) console.log(`test/cuda/gemm.test.ts: CUDA tests skipped: ${cuda.reason}`);

const BITS = [2, 3, 4, 8] as const;

async function compare(opts: {
  bits: 2 | 3 | 4 | 8;
  N: number;
  K: number;
  groupSize: number;
  shuffled: boolean;
  rows: number[];
  zeroOffset?: 0 | 1;
}): Promise<void> {
  const seed = randomSeed();
  const rand = rng(seed);
  const p = randomPacked(rand, opts);
  const addon = native();
  for (const M of opts.rows) {
    const X = randomMatrix(rand, M, opts.K);
    const ref = referenceProduct(X, M, p);
    const gpu = new Float32Array(M * opts.N).fill(NaN); // poisoned: every element must be written
    const cpu = new Float32Array(M * opts.N).fill(NaN);
    await addon.packedGemm(X, M, p.W, gpu, 0);
    await addon.packedGemm(X, M, p.W, cpu, -1);
    const what = `bits ${opts.bits} N ${opts.N} K ${opts.K} g${opts.groupSize}${opts.shuffled ? ' g_idx' : ''} M ${M} seed ${seed}`;
    expect(relativeError(gpu, ref), `GPU vs float64, ${what}`).toBeLessThan(1e-5);
    expect(relativeError(gpu, cpu), `GPU vs CPU, ${what}`).toBeLessThan(1e-5);
  }
}

describe.skipIf(!cuda.ok)(`CUDA packed product (skipped without a GPU: ${cuda.reason || 'none'})`, () => {
  for (const bits of BITS) {
    for (const shuffled of [false, true]) {
      it(`${bits}-bit, K 172, N 100, g32 (partial last group)${shuffled ? ', shuffled g_idx' : ''}, M 1/7/64/256`, async () => {
        await compare({ bits, N: 100, K: 172, groupSize: 32, shuffled, rows: [1, 7, 64, 256] });
      });
    }
    it(`${bits}-bit, per channel, odd N 37 (scalar-column path), K 300, M 1/3/9`, async () => {
      await compare({ bits, N: 37, K: 300, groupSize: 300, shuffled: false, rows: [1, 3, 9] });
    });
    it(`${bits}-bit, K 1000, N 264, g128 (partial), gptq_v2 zeros, M 1/8/13`, async () => {
      await compare({ bits, N: 264, K: 1000, groupSize: 128, shuffled: false, rows: [1, 8, 13], zeroOffset: 0 });
    });
  }

  it('odd group size 20 (groups straddle packing units), 3-bit, M 1/5/70', async () => {
    await compare({ bits: 3, N: 96, K: 250, groupSize: 20, shuffled: false, rows: [1, 5, 70] });
  });
});

describe('CUDA packed product without a usable device', () => {
  it('reports E_CUDA_UNAVAILABLE for a device that does not exist, and cudaDevices() says why when there is none', async () => {
    const rand = rng(randomSeed());
    const p = randomPacked(rand, { bits: 4, N: 8, K: 32, groupSize: 32, shuffled: false });
    const X = randomMatrix(rand, 1, 32);
    const Y = new Float32Array(8);
    const { devices, reason } = native().cudaDevices();
    const missing = devices.length; // one past the last device: 0 on a machine without a GPU
    const err = await native()
      .packedGemm(X, 1, p.W, Y, missing)
      .then(
        () => undefined,
        (e: unknown) => e,
      );
    expect(err).toBeInstanceOf(LowbitError);
    expect((err as LowbitError).code).toBe('E_CUDA_UNAVAILABLE');
    if (devices.length === 0) expect(reason.length).toBeGreaterThan(0);
    else expect(reason).toBe('');
    // The synchronous variant throws the same way.
    expect(() => native().packedGemmSync(X, 1, p.W, Y, missing)).toThrow(LowbitError);
  });
});

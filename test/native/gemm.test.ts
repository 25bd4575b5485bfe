/**
 * CPU packed products Y = X · Wᵀ against the float64 reference (test/helpers/reference.ts), at
 * every SIMD level this machine has, all bit widths, with and without a shuffled g_idx, odd shapes
 * and batches from 1 (GEMV path) to 256 (GEMM path). Fresh random data every run; the seed is in
 * every failure message.
 */
import { afterAll, describe, expect, it } from 'vitest';
import { native } from '../../src/native.js';
import { Tensor } from '../../src/tensor.js';
import { denseMatmul, dequantizeWeights, packedMatmul, packedMatmulSync } from '../../src/quantize/packed.js';
import { dequantizeRef, matmulRef, randomPackedWeights, relativeError, type Bits } from '../helpers/reference.js';
import { Rng, randomMatrix } from '../helpers/random.js';
import { availableSimdLevels, forceSimd } from '../helpers/simd.js';

const BITS: Bits[] = [2, 3, 4, 8];
const BATCHES = [1, 2, 7, 64, 256];
const TOLERANCE = 1e-5;

afterAll(() => forceSimd('auto'));

interface Case {
  N: number;
  K: number;
  groupSize: number;
  actOrder?: boolean;
  zeroOffset?: 0 | 1;
  batches: number[];
}

/** Runs one weight against several batch sizes, checking async and sync results. */
async function checkCase(level: string, bits: Bits, c: Case): Promise<void> {
  const rng = new Rng();
  const W = randomPackedWeights(rng, { ...c, bits });
  const dense = dequantizeRef(W);
  for (const M of c.batches) {
    const X = randomMatrix(rng, M, c.K);
    const ref = matmulRef(X, M, dense, c.N, c.K);
    const what = `seed ${rng.seed}, ${level}, ${bits}-bit, N ${c.N} K ${c.K} group ${c.groupSize}${c.actOrder ? ' g_idx' : ''} v${c.zeroOffset === 0 ? 2 : 1}, M ${M}`;
    const Y = await packedMatmul(X, M, W);
    // The level forced is the level that ran: the levels are compared, not one path with itself.
    expect(native().lastPackedGemmSimd(), what).toBe(level);
    expect(Y.length, what).toBe(M * c.N);
    expect(relativeError(Y, ref), what).toBeLessThan(TOLERANCE);
    if (M <= 7) {
      expect(packedMatmulSync(X, M, W), `${what} (sync)`).toEqual(Y);
      const out = new Float32Array(M * c.N).fill(NaN);
      expect(packedMatmulSync(X, M, W, { out }), `${what} (out)`).toBe(out);
      expect(out, `${what} (out)`).toEqual(Y);
    }
  }
}

describe.each(availableSimdLevels())('packed product at SIMD level %s', (level) => {
  it.each(BITS)('%i-bit, K 172 × N 100, groups of 32 (partial last group), batches 1..256', async (bits) => {
    forceSimd(level);
    await checkCase(level, bits, { N: 100, K: 172, groupSize: 32, batches: BATCHES });
  });

  it.each(BITS)('%i-bit, shuffled non-monotone g_idx (act-order), batches 1..256', async (bits) => {
    forceSimd(level);
    await checkCase(level, bits, { N: 100, K: 172, groupSize: 32, actOrder: true, batches: BATCHES });
  });

  it.each(BITS)('%i-bit, per channel with K not a multiple of the pack unit', async (bits) => {
    forceSimd(level);
    await checkCase(level, bits, { N: 100, K: 172, groupSize: -1, batches: [1, 2, 7] });
    await checkCase(level, bits, { N: 9, K: 45, groupSize: -1, batches: [1, 3] });
  });

  it.each(BITS)(
    '%i-bit, groups that split pack units (group 20), and gptq_v2 zero points including 0',
    async (bits) => {
      forceSimd(level);
      await checkCase(level, bits, { N: 37, K: 172, groupSize: 20, batches: [1, 5] });
      await checkCase(level, bits, { N: 100, K: 172, groupSize: 32, zeroOffset: 0, batches: [1, 7] });
    },
  );

  it.each(BITS)('%i-bit, larger: K 1000 × N 300 (several K blocks, column tiles and K slices)', async (bits) => {
    forceSimd(level);
    await checkCase(level, bits, { N: 300, K: 1000, groupSize: 128, batches: [1, 9] });
    await checkCase(level, bits, { N: 300, K: 1000, groupSize: 64, actOrder: true, batches: [1] });
  });

  it.each(BITS)(
    '%i-bit, an explicit monotone g_idx (k / group size, as checkpoints without act-order store)',
    async (bits) => {
      forceSimd(level);
      const rng = new Rng();
      const W = randomPackedWeights(rng, { N: 100, K: 172, bits, groupSize: 32 });
      const withGIdx = { ...W, gIdx: new Int32Array(172).map((_, k) => Math.floor(k / 32)) };
      const dense = dequantizeRef(W);
      for (const M of [1, 3]) {
        const X = randomMatrix(rng, M, 172);
        expect(
          relativeError(await packedMatmul(X, M, withGIdx), matmulRef(X, M, dense, 100, 172)),
          `seed ${rng.seed} M ${M}`,
        ).toBeLessThan(TOLERANCE);
      }
    },
  );

  it('tiny shapes: N 1, K 1 and N 3, K 7', async () => {
    forceSimd(level);
    for (const bits of BITS) {
      await checkCase(level, bits, { N: 1, K: 1, groupSize: -1, batches: [1, 2] });
      await checkCase(level, bits, { N: 3, K: 7, groupSize: 2, batches: [1, 2] });
    }
  });

  it('dense f32 product (the benchmark baseline) matches float64', async () => {
    forceSimd(level);
    const rng = new Rng();
    for (const [M, N, K] of [
      [1, 100, 172],
      [3, 37, 1000],
      [1, 5, 3],
    ]) {
      const X = randomMatrix(rng, M, K);
      const W = randomMatrix(rng, N, K);
      const Y = await denseMatmul(X, M, W, N, K);
      expect(relativeError(Y, matmulRef(X, M, W, N, K)), `seed ${rng.seed}, ${level}, ${M}×${N}×${K}`).toBeLessThan(
        TOLERANCE,
      );
    }
  });
});

describe('packed product, other inputs', () => {
  it('dequantizeWeights matches the reference exactly (groups, per channel, g_idx)', () => {
    const rng = new Rng();
    for (const bits of BITS) {
      for (const [groupSize, actOrder] of [
        [32, false],
        [-1, false],
        [20, true],
      ] as const) {
        const W = randomPackedWeights(rng, { N: 37, K: 172, bits, groupSize, actOrder });
        const got = dequantizeWeights(W);
        expect(got.shape).toEqual([37, 172]);
        const want = Float32Array.from(dequantizeRef(W)); // s·(q − z) is exact in f32 (an fp16 times a small integer)
        expect(got.data, `seed ${rng.seed}, ${bits}-bit, group ${groupSize}${actOrder ? ' g_idx' : ''}`).toEqual(want);
      }
    }
  });

  it('takes f16 and bf16 tensors of shape [M, K] as x', async () => {
    forceSimd('auto');
    const rng = new Rng();
    const W = randomPackedWeights(rng, { N: 100, K: 172, bits: 4, groupSize: 32 });
    const X = new Tensor('f32', [3, 172], randomMatrix(rng, 3, 172));
    for (const dtype of ['f16', 'bf16'] as const) {
      const x = X.to(dtype);
      const ref = matmulRef(x.toFloat32().data, 3, dequantizeRef(W), 100, 172);
      expect(relativeError(await packedMatmul(x, 3, W), ref), `seed ${rng.seed} ${dtype}`).toBeLessThan(TOLERANCE);
    }
  });

  it('runs concurrent products (several libuv workers sharing the pool) correctly', async () => {
    forceSimd('auto');
    const rng = new Rng();
    const cases = BITS.flatMap((bits) =>
      [3, 5].map((M) => {
        // (M ≤ 2 runs in place, not on a worker)
        const W = randomPackedWeights(rng, { N: 200, K: 300, bits, groupSize: 64, actOrder: M === 5 });
        return { W, M, X: randomMatrix(rng, M, 300) };
      }),
    );
    const results = await Promise.all(cases.map((c) => packedMatmul(c.X, c.M, c.W)));
    cases.forEach((c, i) => {
      expect(
        relativeError(results[i], matmulRef(c.X, c.M, dequantizeRef(c.W), 200, 300)),
        `seed ${rng.seed} case ${i}`,
      ).toBeLessThan(TOLERANCE);
    });
  });

  it('gives the same answer with one thread as with the pool', async () => {
    forceSimd('auto');
    const rng = new Rng();
    const W = randomPackedWeights(rng, { N: 300, K: 1000, bits: 3, groupSize: 128 });
    const X = randomMatrix(rng, 2, 1000);
    const ref = matmulRef(X, 2, dequantizeRef(W), 300, 1000);
    const threads = native().buildInfo().threads;
    try {
      native().setThreads(1);
      expect(
        relativeError(await packedMatmul(X.subarray(0, 1000), 1, W), ref.subarray(0, 300)),
        `seed ${rng.seed}`,
      ).toBeLessThan(TOLERANCE);
      expect(relativeError(await packedMatmul(X, 2, W), ref), `seed ${rng.seed}`).toBeLessThan(TOLERANCE);
    } finally {
      native().setThreads(threads);
    }
  });
});

/**
 * The SpQR CPU product (native/core/spqr_gemm*.cpp) against the float64 product of weights decoded
 * by the reference decoder (reference.ts), at every SIMD level the machine has: random layouts with
 * planted outliers, odd shapes (K = 172, N not a multiple of beta2, beta1 not a multiple of 8 or
 * two 16-input blocks), batch 1 (1-4 rows: decoded in registers) and batched; and the validation of
 * every buffer and index.
 */
import { afterAll, describe, expect, it } from 'vitest';
import { Rng } from '../helpers/random.js';
import { matmulRef, relativeError } from '../helpers/reference.js';
import { availableSimdLevels, forceSimd } from '../helpers/simd.js';
import { spqrDequantize, spqrMatmul } from '../../src/quantize/spqr.js';
import { decodeSpqrRef, randomSpqrLayout } from './reference.js';

describe('SpQR CPU product', () => {
  afterAll(() => forceSimd('auto'));
  for (const level of availableSimdLevels()) {
    it(`matches the float64 product (${level})`, () => {
      forceSimd(level);
      const rng = new Rng();
      for (const [N, K, bits, beta1, beta2, perm] of [
        [64, 64, 3, 16, 16, true],
        [37, 172, 2, 16, 16, true],
        [50, 100, 4, 20, 7, false],
        [9, 33, 3, 11, 16, true],
        [130, 256, 4, 16, 16, true],
        [40, 100, 3, 32, 16, true], // groups of two 16-code blocks, the last one partial
      ] as const) {
        const W = randomSpqrLayout(rng, { N, K, bits, beta1, beta2, perm, outlierRate: 0.01 });
        // Held to f32 rounding of the terms the decoder sums (|s·(q − z)| and the outlier's value), not
        // of their sum: a dense part and its outlier can cancel (seed 2875273277, 130 x 256: 1.07e-8
        // off a weight that a bound on the sum put at 1.01e-8).
        const magnitude = new Float64Array(N * K);
        const dense = decodeSpqrRef(W, magnitude);
        const deq = spqrDequantize(W);
        for (let i = 0; i < N * K; i++)
          expect(Math.abs(deq[i]! - dense[i]!), `seed ${rng.seed}, ${N}x${K} at ${i}`).toBeLessThan(
            1e-5 * (magnitude[i]! + 1e-3),
          );
        for (const M of [1, 3, 16]) {
          const X = Float32Array.from({ length: M * K }, () => rng.normal());
          const Y = spqrMatmul(X, M, W);
          const ref = matmulRef(X, M, dense, N, K);
          expect(relativeError(Y, ref), `seed ${rng.seed}: ${level} ${N}x${K} ${bits} bits M ${M}`).toBeLessThan(1e-5);
        }
      }
    });
  }

  it('rejects malformed weights with typed errors', () => {
    const rng = new Rng();
    const good = randomSpqrLayout(rng, { N: 20, K: 40, bits: 3 });
    const X = new Float32Array(40);
    const bad = (patch: object) => () => spqrMatmul(X, 1, { ...good, ...patch });
    expect(bad({ qweight: good.qweight.subarray(1) })).toThrow(
      expect.objectContaining({ code: 'E_BUFFER', message: expect.stringMatching(/qweight holds/) }),
    );
    expect(bad({ scaleStats: good.scaleStats.subarray(2) })).toThrow(expect.objectContaining({ code: 'E_BUFFER' }));
    expect(bad({ perm: Int32Array.from({ length: 40 }, () => 0) })).toThrow(
      expect.objectContaining({ code: 'E_SPQR_FORMAT', message: expect.stringMatching(/not a permutation/) }),
    );
    expect(bad({ perm: Int32Array.from({ length: 40 }, (_, i) => (i === 5 ? 40 : i)) })).toThrow(
      expect.objectContaining({ code: 'E_SPQR_FORMAT' }),
    );
    const rowptr = good.outlierRowptr.slice();
    rowptr[3] = rowptr[4]! + 1;
    expect(bad({ outlierRowptr: rowptr })).toThrow(expect.objectContaining({ code: 'E_SPQR_FORMAT' }));
    const nnz = good.outlierCols.length;
    expect(
      bad({ outlierRowptr: Int32Array.from({ length: 21 }, (_, i) => (i === 20 ? nnz + 1 : Math.min(i, nnz))) }),
    ).toThrow(expect.objectContaining({ code: 'E_BUFFER' }));
    const cols = Int32Array.from({ length: 2 }, () => 7);
    expect(
      bad({
        outlierRowptr: Int32Array.from({ length: 21 }, (_, i) => (i === 0 ? 0 : 2)),
        outlierCols: cols,
        outlierValues: new Uint16Array(2),
      }),
    ).toThrow(expect.objectContaining({ code: 'E_SPQR_FORMAT', message: expect.stringMatching(/ascending/) }));
    expect(
      bad({
        outlierRowptr: Int32Array.from({ length: 21 }, (_, i) => (i === 0 ? 0 : 1)),
        outlierCols: Int32Array.of(40),
        outlierValues: new Uint16Array(1),
      }),
    ).toThrow(expect.objectContaining({ code: 'E_SPQR_FORMAT' }));
    expect(bad({ bits: 5 })).toThrow(expect.objectContaining({ code: 'E_BITS' }));
    expect(bad({ beta1: 1 })).toThrow(expect.objectContaining({ code: 'E_GROUP_SIZE' }));
    expect(() => spqrMatmul(new Float32Array(39), 1, good)).toThrow(expect.objectContaining({ code: 'E_BUFFER' }));
    expect(bad({ qweight: new Float32Array(good.qweight.length) })).toThrow(
      expect.objectContaining({ code: 'E_DTYPE' }),
    );
  });
});

/**
 * SpQR's int8 CPU product (native/core/cpu_gptq/spqr_panels.hpp, the kernel table's spqr-int8), at
 * every SIMD level this machine has: 2/3/4-bit codes, β1 = 16 / 32 / 48 / 128 (groups inside a unit,
 * a whole unit, across units, a whole activation segment), β2 = 16 and 32, 2-4 bit statistics,
 * with and without the permutation, K and N off every tile size, planted outliers, M = 1 (GEMV) to
 * 17 (GEMM row tiles plus a remainder). Fresh random data; seeds in the messages.
 *
 * Checked two ways, as GPTQ's int8 product (test/native/gemm-cpu-gptq.test.ts):
 *  - against a float64 model of the same arithmetic: x gathered into sweep order and quantized per
 *    activation segment (whole groups and units, about 128 positions), the dense part's products,
 *    plus the outliers in full precision. A wrong code, statistic, grid, group boundary, segment or
 *    outlier is far above the 1e-5 tolerance;
 *  - against the true float64 product, element by element, within the promised bound
 *    |Δy[n]| ≤ ‖x‖∞ · ‖w_n (dense part)‖₁ / 254 (plus f32 rounding).
 * Outputs are poisoned (NaN) before every call, so an unwritten element fails.
 */
import { afterAll, describe, expect, it } from 'vitest';
import { native } from '../../src/native.js';
import { prepareLinear } from '../../src/quantize/linear.js';
import { spqrWeights } from '../../src/weights/types.js';
import { Rng } from '../helpers/random.js';
import { f16Value, matmulRef, relativeError, roundHalfEven } from '../helpers/reference.js';
import { availableSimdLevels, forceSimd } from '../helpers/simd.js';
import { decodeSpqrRef, randomSpqrLayout } from './reference.js';

afterAll(() => forceSimd('auto'));

const UNIT = 32; // kUnitK
const SEGMENT = 128; // kSegmentK

const gcd = (a: number, b: number): number => (b === 0 ? a : gcd(b, a % b));

type Layout = ReturnType<typeof randomSpqrLayout>;

/** The outliers alone, [N, K] in original column order. */
function outliersOf(W: Layout): Float64Array {
  const out = new Float64Array(W.N * W.K);
  for (let n = 0; n < W.N; n++)
    for (let i = W.outlierRowptr[n]!; i < W.outlierRowptr[n + 1]!; i++) {
      const p = W.outlierCols[i]!;
      out[n * W.K + (W.perm ? W.perm[p]! : p)] += f16Value(W.outlierValues[i]!);
    }
  return out;
}

/** Float64 model: Σ_segments dx · Σ_k xq[k] · dense[n][k] + Σ outlier[n][k] · x[k]. */
function int8ModelRef(X: Float32Array, M: number, W: Layout, dense: Float64Array, outl: Float64Array): Float64Array {
  const { N, K } = W;
  const lcm = (W.beta1 * UNIT) / gcd(W.beta1, UNIT);
  const segLen = lcm * Math.floor(SEGMENT / lcm);
  const source = (p: number) => (W.perm ? W.perm[p]! : p);
  const Y = matmulRef(X, M, outl, N, K);
  for (let m = 0; m < M; m++)
    for (let p0 = 0; p0 < K; p0 += segLen) {
      const seg = Array.from({ length: Math.min(segLen, K - p0) }, (_, i) => source(p0 + i));
      let amax = 0;
      for (const k of seg) amax = Math.max(amax, Math.abs(X[m * K + k]!));
      const inv = amax > 0 ? Math.fround(127 / amax) : 0;
      const dx = Math.fround(amax / 127);
      const xq = seg.map((k) => Math.max(-127, Math.min(127, roundHalfEven(Math.fround(X[m * K + k]! * inv)))));
      for (let n = 0; n < N; n++) {
        let s = 0;
        seg.forEach((k, i) => (s += xq[i]! * (dense[n * K + k]! - outl[n * K + k]!)));
        Y[m * N + n]! += dx * s;
      }
    }
  return Y;
}

// [N, K, bits, beta1, beta2, statBits, perm]
const CASES = [
  [64, 64, 3, 16, 16, 3, true],
  [37, 172, 2, 16, 16, 3, true], // K and N off every tile
  [130, 256, 4, 16, 32, 4, true], // β2 of two blocks, 4-bit statistics
  [40, 100, 3, 32, 16, 3, true], // a group per unit, the last cut short
  [70, 200, 4, 48, 16, 2, false], // groups across units; 96-position segments
  [20, 300, 2, 128, 16, 3, true], // a group per segment
  [5, 65535, 2, 16, 16, 3, true], // the widest K: outlier columns up to 65534 in 16 bits
] as const;

describe.each(availableSimdLevels())('SpQR int8 CPU product at SIMD level %s', (level) => {
  it('matches the float64 model of its arithmetic and the exact product within the int8 bound', () => {
    forceSimd(level);
    const rng = new Rng();
    for (const [N, K, bits, beta1, beta2, statBits, perm] of CASES) {
      const W = randomSpqrLayout(rng, { N, K, bits, beta1, beta2, statBits, perm, outlierRate: 0.02 });
      const lin = prepareLinear(spqrWeights(W), { cpuActivations: 'int8' });
      expect(lin.kernel).toBe('spqr-int8');
      const dense = decodeSpqrRef(W);
      const outl = outliersOf(W);
      for (const M of [1, 3, 16, 17]) {
        const what = `seed ${rng.seed}, ${level}, ${N}x${K} ${bits}-bit β1 ${beta1} β2 ${beta2} stats ${statBits}, M ${M}`;
        const X = Float32Array.from({ length: M * K }, () => rng.normal());
        const Y = new Float32Array(M * N).fill(NaN);
        lin.matmulSync(X, M, Y);
        const kernel = native().cpuGptqInt8Stats().spqrLastKernel;
        expect(kernel === level || kernel === `${level}-vnni`, `${what}: ran ${kernel}`).toBe(true);
        expect(relativeError(Y, int8ModelRef(X, M, W, dense, outl)), `${what} (int8 model)`).toBeLessThan(1e-5);
        const exact = matmulRef(X, M, dense, N, K);
        for (let m = 0; m < M; m++) {
          let xmax = 0;
          for (let k = 0; k < K; k++) xmax = Math.max(xmax, Math.abs(X[m * K + k]!));
          for (let n = 0; n < N; n++) {
            let l1 = 0;
            for (let k = 0; k < K; k++) l1 += Math.abs(dense[n * K + k]! - outl[n * K + k]!);
            const bound = (xmax * l1) / 254 + 1e-5 * xmax * (l1 + 1);
            const err = Math.abs(Y[m * N + n]! - exact[m * N + n]!);
            if (!(err <= bound)) expect.fail(`${what}: y[${m}, ${n}] off by ${err}, bound ${bound}`);
          }
        }
      }
      lin.close();
    }
  });
});

describe('the spqr-int8 entry', () => {
  // Catches: the table sending layouts the int8 units cannot hold to spqr-int8, or never choosing it.
  it('takes 16-multiple groups with int8 activations and leaves the rest to spqr-cpu', () => {
    const rng = new Rng();
    const pick = (o: Parameters<typeof randomSpqrLayout>[1], cpuActivations: 'int8' | 'f32') => {
      const lin = prepareLinear(spqrWeights(randomSpqrLayout(rng, o)), { cpuActivations });
      const kernel = lin.kernel;
      lin.close();
      return kernel;
    };
    expect(pick({ N: 20, K: 64, bits: 3 }, 'int8')).toBe('spqr-int8');
    expect(pick({ N: 20, K: 64, bits: 3 }, 'f32')).toBe('spqr-cpu');
    expect(pick({ N: 20, K: 64, bits: 3, beta1: 20 }, 'int8')).toBe('spqr-cpu');
    expect(pick({ N: 20, K: 200, bits: 3, beta1: 80 }, 'int8')).toBe('spqr-cpu'); // segments of 160
    expect(pick({ N: 20, K: 300, bits: 3, beta1: 160 }, 'int8')).toBe('spqr-cpu');
    expect(pick({ N: 20, K: 64, bits: 3, beta2: 8 }, 'int8')).toBe('spqr-cpu');
    expect(pick({ N: 20, K: 64, bits: 3, statBits: 5 }, 'int8')).toBe('spqr-cpu');
    expect(pick({ N: 2, K: 65536, bits: 2 }, 'int8')).toBe('spqr-cpu'); // outlier columns past 16 bits
  });
});

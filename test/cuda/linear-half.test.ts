/**
 * Prepared GPTQ linears with f16 and bf16 activations (the tensor-core kernel 'gptq-tc' reached from
 * Node) against a float64 reference computed here from the unpacked integers (test/cuda/ref.ts packs
 * the checkpoint in TypeScript, not with the addon under test). Needs a CUDA device: elsewhere the
 * GPU blocks skip with the reason; the option checks at the end run everywhere.
 *
 * Tolerances come from the rounding the kernel may do (u = 2^-11 for f16, 2^-8 for bf16):
 *  - weights: the fp16 scale rounded to the activations' dtype, then scale · (q − zero) rounded again
 *    (at most 2u relative per weight; exact when the scale is applied in f32 per chunk);
 *  - f32 accumulation over K terms (at most K·2^-24 relative to Σ|x·w|);
 *  - the output rounded once to the dtype (u), and once more after a bias.
 * Each element must lie within u·|y| + (2u + K·2^-24)·Σ_k |x_k w_k| of the float64 product (a bound
 * that holds whatever the order of the sums), and the whole output within 4u in relative norm (the
 * rounding errors are independent; expected ≈ 1.3u at worst). Outputs are poisoned with NaN first,
 * so an element the kernel never writes fails both.
 */
import { describe, expect, it } from 'vitest';
import { LowbitError } from '../../src/errors.js';
import { native } from '../../src/native.js';
import { prepareLinear, type PreparedLinear } from '../../src/quantize/linear.js';
import { gptqWeights } from '../../src/weights/types.js';
import { bf16Bits, bf16Value, f16Bits, f16Value } from '../helpers/reference.js';
import { cudaAvailability, gaussian, randomPacked, randomSeed, relativeError, rng, type RandomPacked } from './ref.js';

const cuda = cudaAvailability();
if (!cuda.ok) console.log(`test/cuda/linear-half.test.ts: CUDA tests skipped: ${cuda.reason}`);

type Half = 'f16' | 'bf16';
const HALVES: Half[] = ['f16', 'bf16'];
const UNIT: Record<Half, number> = { f16: 2 ** -11, bf16: 2 ** -8 };
const toBits = (x: number, dt: Half): number => (dt === 'f16' ? f16Bits(x) : bf16Bits(x));
const fromBits = (h: number, dt: Half): number => (dt === 'f16' ? f16Value(h) : bf16Value(h));
const NAN_BITS: Record<Half, number> = { f16: 0x7e00, bf16: 0x7fc0 };

/** Random activations in the dtype: the bit patterns and their exact values. */
function randomHalf(rand: () => number, count: number, dt: Half): { bits: Uint16Array; values: Float64Array } {
  const bits = new Uint16Array(count);
  const values = new Float64Array(count);
  for (let i = 0; i < count; i++) {
    bits[i] = toBits(gaussian(rand), dt);
    values[i] = fromBits(bits[i], dt);
  }
  return { bits, values };
}

/** Y = X · Wᵀ + bias in float64, with S = Σ_k |x_k w_nk| per element for the rounding bound. */
function reference(
  X: Float64Array,
  M: number,
  p: RandomPacked,
  bias?: Float32Array,
): { Y: Float64Array; S: Float64Array } {
  const { N, K } = p.W;
  const w = new Float64Array(N * K);
  for (let n = 0; n < N; n++)
    for (let k = 0; k < K; k++) {
      const g = p.groupOf(k);
      w[n * K + k] = p.scales[g * N + n] * (p.q[n * K + k] - p.zeros[g * N + n]);
    }
  const Y = new Float64Array(M * N);
  const S = new Float64Array(M * N);
  for (let m = 0; m < M; m++)
    for (let n = 0; n < N; n++) {
      let acc = 0;
      let abs = 0;
      for (let k = 0; k < K; k++) {
        const t = X[m * K + k] * w[n * K + k];
        acc += t;
        abs += Math.abs(t);
      }
      Y[m * N + n] = acc + (bias ? bias[n] : 0);
      S[m * N + n] = abs;
    }
  return { Y, S };
}

/** Checks one product's bit patterns against the reference (see the header for the bounds). */
function expectClose(
  out: Uint16Array,
  ref: { Y: Float64Array; S: Float64Array },
  K: number,
  dt: Half,
  hasBias: boolean,
  what: string,
): void {
  const u = UNIT[dt];
  const got = Float64Array.from(out, (h) => fromBits(h, dt));
  let worst = -1;
  let worstRatio = 0;
  for (let i = 0; i < got.length; i++) {
    const y = ref.Y[i];
    const bound = (hasBias ? 2 : 1) * u * Math.abs(y) + (2 * u + K * 2 ** -24) * ref.S[i] + 1e-30;
    const ratio = Math.abs(got[i] - y) / bound;
    if (!(ratio <= 1)) {
      worst = i;
      worstRatio = ratio;
      break;
    }
  }
  expect(
    worst,
    `element ${worst}: ${got[worst]} vs ${ref.Y[worst]} (${worstRatio.toFixed(2)}× the rounding bound), ${what}`,
  ).toBe(-1);
  expect(relativeError(got, ref.Y), `relative error, ${what}`).toBeLessThan(4 * u);
}

interface Case {
  bits: 2 | 3 | 4;
  N: number;
  K: number;
  groupSize: number;
  shuffled: boolean;
  rows: number[];
  bias?: boolean;
}

async function check(c: Case, dt: Half): Promise<void> {
  const seed = randomSeed();
  const rand = rng(seed);
  const p = randomPacked(rand, c);
  const bias = c.bias ? Float32Array.from({ length: c.N }, () => gaussian(rand)) : undefined;
  const lin = prepareLinear(gptqWeights(p.W, bias), { device: 'cuda', activations: dt });
  try {
    // Catches: 16-bit activations routed to another kernel (or the f32 default switched to gptq-tc).
    expect(lin.kernel).toBe('gptq-tc');
    expect(lin.activations).toBe(dt);
    for (const M of c.rows) {
      const X = randomHalf(rand, M * c.K, dt);
      const ref = reference(X.values, M, p, bias);
      const out = new Uint16Array(M * c.N).fill(NAN_BITS[dt]);
      await lin.matmul(X.bits, M, out);
      const what = `${dt} ${c.bits}-bit N ${c.N} K ${c.K} g${c.groupSize}${c.shuffled ? ' g_idx' : ''}${bias ? ' bias' : ''} M ${M} seed ${seed}`;
      expectClose(out, ref, c.K, dt, !!bias, what);
      // The synchronous path (poisoned again) gives a result within the same bounds.
      const outSync = lin.matmulSync(X.bits, M, new Uint16Array(M * c.N).fill(NAN_BITS[dt]));
      expectClose(outSync, ref, c.K, dt, !!bias, `${what} (matmulSync)`);
    }
  } finally {
    lin.close();
  }
}

const ROWS = [1, 5, 16, 33, 130];

describe.skipIf(!cuda.ok)(
  `prepared GPTQ linears with 16-bit activations (skipped without a GPU: ${cuda.reason || 'none'})`,
  () => {
    for (const dt of HALVES) {
      for (const bits of [2, 3, 4] as const) {
        it(`${dt} ${bits}-bit, g128, K 300 (not a multiple of 128, partial group), N 200, M ${ROWS.join('/')}`, async () => {
          await check({ bits, N: 200, K: 300, groupSize: 128, shuffled: false, rows: ROWS }, dt);
        });
        it(`${dt} ${bits}-bit, g32 with shuffled g_idx (act-order), K 172, N 100, M ${ROWS.join('/')}`, async () => {
          await check({ bits, N: 100, K: 172, groupSize: 32, shuffled: true, rows: ROWS }, dt);
        });
        it(`${dt} ${bits}-bit, per channel, K 172, N 72, M 1/33`, async () => {
          await check({ bits, N: 72, K: 172, groupSize: 172, shuffled: false, rows: [1, 33] }, dt);
        });
      }
      it(`${dt} 4-bit g128 with a bias, K 384, N 192, M 1/16/100 (100: the dequantize + cuBLAS path, X read in place)`, async () => {
        await check({ bits: 4, N: 192, K: 384, groupSize: 128, shuffled: false, rows: [1, 16, 100], bias: true }, dt);
      });
      it(`${dt} 4-bit g128, K 4096, N 256 (split-K): large K in one product, M 1/5/64`, async () => {
        await check({ bits: 4, N: 256, K: 4096, groupSize: 128, shuffled: false, rows: [1, 5, 64] }, dt);
      });
      // Catches: the folded decode GEMV (taken for up to 16 rows with groups of 128 or more on matrices
      // of 4096 x 11008 weights and up, N > K) using a wrong zero point, scale, field or row of X.
      for (const bits of [2, 3, 4] as const) {
        it(`${dt} ${bits}-bit g128, K 1024, N 44032 (the folded decode GEMV for 8 and 16 rows), M 1/16`, async () => {
          await check({ bits, N: 44032, K: 1024, groupSize: 128, shuffled: false, rows: [1, 16] }, dt);
        });
      }
    }

    // Catches: products on one device sharing split-K scratch (partial sums and tile counters) across
    // operators, or one operator's calls overlapping: concurrent results would mix. K 4096 with M 1
    // makes the kernel split K; several weights, several calls each, all in flight at once on the
    // worker threads, each checked against its own float64 reference and its sequential result.
    it('concurrent products on one device (Promise.all over 4 weights × 4 calls, split-K) match the sequential ones', async () => {
      const seed = randomSeed();
      const rand = rng(seed);
      const dt: Half = 'f16';
      const K = 4096;
      const N = 256;
      const lins: PreparedLinear<'f16'>[] = [];
      const refs: { Y: Float64Array; S: Float64Array }[][] = [];
      const xs: Uint16Array[][] = [];
      const rowsOf = (j: number): number => [1, 2, 1, 3][j];
      try {
        for (let i = 0; i < 4; i++) {
          const p = randomPacked(rand, { bits: 4, N, K, groupSize: 128, shuffled: i === 3 });
          lins.push(prepareLinear(gptqWeights(p.W), { device: 'cuda', activations: dt }));
          refs.push([]);
          xs.push([]);
          for (let j = 0; j < 4; j++) {
            const X = randomHalf(rand, rowsOf(j) * K, dt);
            xs[i].push(X.bits);
            refs[i].push(reference(X.values, rowsOf(j), p));
          }
        }
        const sequential: Uint16Array[][] = [];
        for (let i = 0; i < 4; i++) {
          sequential.push([]);
          for (let j = 0; j < 4; j++)
            sequential[i].push(
              await lins[i].matmul(xs[i][j], rowsOf(j), new Uint16Array(rowsOf(j) * N).fill(NAN_BITS[dt])),
            );
        }
        for (let round = 0; round < 5; round++) {
          const calls: Promise<Uint16Array>[] = [];
          for (let j = 0; j < 4; j++)
            for (let i = 0; i < 4; i++)
              calls.push(lins[i].matmul(xs[i][j], rowsOf(j), new Uint16Array(rowsOf(j) * N).fill(NAN_BITS[dt])));
          const results = await Promise.all(calls);
          for (let j = 0; j < 4; j++)
            for (let i = 0; i < 4; i++) {
              const what = `weight ${i} call ${j} round ${round} seed ${seed}`;
              const got = results[j * 4 + i];
              expectClose(got, refs[i][j], K, dt, false, `concurrent, ${what}`);
              // Split-K adds fp32 partial sums with atomics in any order, so two runs of the same product
              // differ by the reordering (each within K·2⁻²⁴·Σ|x·w| of the exact sum) plus the output's
              // rounding; seen on the H200: 2 f16 ulps on an output of 5e-4 that cancels large terms.
              // A race that mixed two operators' scratch is off by whole units (the bug this catches).
              const seq = sequential[i][j];
              let mismatch = '';
              for (let e = 0; e < got.length && !mismatch; e++) {
                const a = fromBits(got[e], dt);
                const b = fromBits(seq[e], dt);
                const reorder = 2 * K * 2 ** -24 * refs[i]![j]!.S[e]!;
                if (!(Math.abs(a - b) <= 2 * UNIT[dt] * Math.max(Math.abs(a), Math.abs(b)) + reorder + 2 ** -24))
                  mismatch = `concurrent ${a} vs sequential ${b} at ${e}`;
              }
              expect(mismatch, what).toBe('');
            }
        }
      } finally {
        for (const l of lins) l.close();
      }
    });

    it('kernel choice: f32 keeps gptq-packed, 16-bit takes gptq-tc; 8-bit, dense and forced kernels give typed errors', () => {
      const rand = rng(randomSeed());
      const p4 = randomPacked(rand, { bits: 4, N: 64, K: 128, groupSize: 128, shuffled: false });
      const f32 = prepareLinear(gptqWeights(p4.W), { device: 'cuda' });
      // Catches: the f32 path (which must equal the CPU's to 1e-4 in the forward pass) moved off its kernel.
      expect(f32.kernel).toBe('gptq-packed');
      expect(f32.activations).toBe('f32');
      f32.close();
      const code = (f: () => unknown): string => {
        try {
          f();
        } catch (e) {
          expect(e).toBeInstanceOf(LowbitError);
          return (e as LowbitError).code;
        }
        return 'no error';
      };
      const p8 = randomPacked(rand, { bits: 8, N: 64, K: 128, groupSize: 128, shuffled: false });
      expect(code(() => prepareLinear(gptqWeights(p8.W), { device: 'cuda', activations: 'f16' }))).toBe(
        'E_UNSUPPORTED',
      );
      const dense = { format: 'dense' as const, dtype: 'f32' as const, N: 4, K: 8, data: new Float32Array(32) };
      expect(code(() => prepareLinear(dense, { device: 'cuda', activations: 'bf16' }))).toBe('E_UNSUPPORTED');
      expect(code(() => prepareLinear(gptqWeights(p4.W), { device: 'cuda', kernel: 'gptq-tc' }))).toBe('E_ARGUMENT');
      expect(
        code(() => prepareLinear(gptqWeights(p4.W), { device: 'cuda', kernel: 'gptq-packed', activations: 'f16' })),
      ).toBe('E_ARGUMENT');
      expect(native().linearKernels().cuda).toContain('gptq-tc');
      // x of the wrong dtype is refused before the addon sees it.
      const h = prepareLinear(gptqWeights(p4.W), { device: 'cuda', activations: 'f16' });
      expect(code(() => h.matmulSync(new Float32Array(128) as unknown as Uint16Array, 1))).toBe('E_DTYPE');
      expect(code(() => h.matmulSync(new Uint16Array(127), 1))).toBe('E_SHAPE');
      h.close();
    });
  },
);

describe('16-bit activations where no kernel takes them', () => {
  const rand = rng(randomSeed());
  const p = randomPacked(rand, { bits: 4, N: 16, K: 64, groupSize: 32, shuffled: false });
  it('the CPU rejects f16 and bf16 activations with E_UNSUPPORTED naming options.activations', () => {
    for (const activations of ['f16', 'bf16'] as const) {
      let err: unknown;
      try {
        prepareLinear(gptqWeights(p.W), { device: 'cpu', activations });
      } catch (e) {
        err = e;
      }
      expect(err).toBeInstanceOf(LowbitError);
      expect((err as LowbitError).code).toBe('E_UNSUPPORTED');
      expect((err as LowbitError).message).toContain('options.activations');
    }
  });
  it('the addon itself refuses 16-bit activations on the CPU (E_UNSUPPORTED) and unknown names (E_ARGUMENT)', () => {
    expect(() => native().linearCreate(gptqWeights(p.W), { device: -1, activations: 'f16' })).toThrow(
      /f32 activations only/,
    );
    expect(() => native().linearCreate(gptqWeights(p.W), { device: -1, activations: 'fp16' as 'f16' })).toThrow(
      /'f32', 'f16' or 'bf16'/,
    );
  });
  it("an unknown activations name is E_DTYPE listing 'f32', 'f16' and 'bf16'", () => {
    let err: unknown;
    try {
      prepareLinear(gptqWeights(p.W), { activations: 'fp16' as 'f16' });
    } catch (e) {
      err = e;
    }
    expect((err as LowbitError).code).toBe('E_DTYPE');
    expect((err as LowbitError).message).toContain("'f32', 'f16' or 'bf16'");
  });
});

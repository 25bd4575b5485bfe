/**
 * The CPU ops of the forward pass against float64 references, on fresh random data and odd shapes,
 * through both the AVX2 path (when the processor has it) and the plain one.
 */
import { afterAll, describe, expect, test } from 'vitest';
import { native } from '../../src/native.js';
import { seededRandom } from '../../src/model/generate.js';
import { Tensor } from '../../src/tensor.js';
import { refAttention, refLinear, refNll, refRmsNorm, refRope, refSwiglu } from './reference.js';
import { gaussian, randomF32, worst } from './random-model.js';

const seed = Math.floor(Math.random() * 2 ** 31);
const normal = gaussian(seededRandom(seed));
const addon = native();
const levels = addon.buildInfo().simd === 'scalar' ? ['scalar'] : ['auto', 'scalar'];

afterAll(() => {
  addon.forceSimd('auto');
});

function check(name: string, got: ArrayLike<number>, want: ArrayLike<number>, atol: number, rtol: number): void {
  const w = worst(got, want, atol, rtol);
  expect(w.ratio, `${name}: worst at ${w.index}: ${w.a} vs ${w.b} (seed ${seed})`).toBeLessThanOrEqual(1);
}

function invFreq(headDim: number, theta: number): Float32Array {
  return Float32Array.from({ length: headDim / 2 }, (_, i) =>
    Math.fround(1 / Math.fround(theta ** Math.fround((2 * i) / headDim))),
  );
}

describe.each(levels)('CPU ops (simd %s)', (level) => {
  test('RMSNorm', () => {
    addon.forceSimd(level as 'auto' | 'scalar');
    for (const [rows, dim] of [
      [1, 1],
      [3, 64],
      [17, 37],
      [5, 300],
    ] as const) {
      const x = randomF32(rows * dim, 2, normal);
      const w = randomF32(dim, 0.5, normal, 1);
      const out = new Float32Array(rows * dim);
      addon.opRmsNorm(x, rows, dim, w, 1e-5, out);
      check(`rmsnorm ${rows}x${dim}`, out, refRmsNorm(x, rows, dim, w, 1e-5), 1e-6, 1e-6);
    }
  });

  test('RoPE (half-split) at offset positions', () => {
    addon.forceSimd(level as 'auto' | 'scalar');
    for (const [rows, heads, hd, p0, scale] of [
      [1, 1, 2, 0, 1],
      [9, 3, 8, 500, 1],
      [13, 2, 6, 77, 1.25],
      [4, 5, 64, 2000, 1],
    ] as const) {
      const x = randomF32(rows * heads * hd, 1, normal);
      const f = invFreq(hd, 10000);
      const want = refRope(Float64Array.from(x), rows, heads, hd, p0, f, scale);
      addon.opRope(x, rows, heads, hd, p0, f, scale);
      check(`rope ${rows}x${heads}x${hd}@${p0}`, x, want, 1e-6, 1e-6);
    }
  });

  test('causal grouped-query attention', () => {
    addon.forceSimd(level as 'auto' | 'scalar');
    for (const [n, heads, kvHeads, hd] of [
      [1, 1, 1, 8],
      [37, 4, 2, 8],
      [70, 6, 3, 6],
      [33, 2, 1, 13],
      [65, 8, 8, 64],
    ] as const) {
      const q = randomF32(n * heads * hd, 1, normal);
      const k = randomF32(n * kvHeads * hd, 1, normal);
      const v = randomF32(n * kvHeads * hd, 1, normal);
      const out = new Float32Array(n * heads * hd);
      addon.opAttention(q, k, v, n, heads, kvHeads, hd, out);
      check(
        `attention n${n} h${heads}/${kvHeads} hd${hd}`,
        out,
        refAttention(q, k, v, n, 0, heads, kvHeads, hd),
        2e-6,
        2e-5,
      );
    }
  });

  test('SwiGLU', () => {
    addon.forceSimd(level as 'auto' | 'scalar');
    for (const n of [1, 7, 8, 13, 1000]) {
      const g = randomF32(n, 4, normal);
      g[0] = n > 1 ? -95 : g[0]!; // deep in the clamped range of exp
      const u = randomF32(n, 1, normal);
      const out = new Float32Array(n);
      addon.opSwiglu(g, u, out);
      check(`swiglu ${n}`, out, refSwiglu(g, u), 1e-6, 1e-6);
    }
  });

  test.each(['f32', 'f16', 'bf16'] as const)(
    'dense linear with %s weights, odd shapes, with and without bias',
    (dtype) => {
      addon.forceSimd(level as 'auto' | 'scalar');
      for (const [M, N, K] of [
        [1, 1, 1],
        [1, 37, 19],
        [7, 16, 64],
        [13, 50, 33],
        [100, 17, 172],
      ] as const) {
        const x = randomF32(M * K, 1, normal);
        const w32 = randomF32(N * K, 1 / Math.sqrt(K), normal);
        const stored = dtype === 'f32' ? new Tensor('f32', [N, K], w32) : new Tensor('f32', [N, K], w32).to(dtype);
        const exact = stored.toFloat32().data; // the values the kernel sees
        const bias = M % 2 === 1 ? randomF32(N, 1, normal) : null;
        const out = new Float32Array(M * N);
        addon.opLinear(x, M, { dtype, data: stored.data as Float32Array | Uint16Array }, N, K, bias, out);
        check(`linear ${dtype} ${M}x${N}x${K}`, out, refLinear(x, M, exact, N, K, bias ?? undefined), 1e-5, 1e-5);
      }
    },
  );

  test('NLL of a row of logits', () => {
    addon.forceSimd(level as 'auto' | 'scalar');
    for (const [rows, vocab] of [
      [1, 1],
      [3, 7],
      [5, 512],
      [2, 1001],
    ] as const) {
      const logits = randomF32(rows * vocab, 5, normal);
      const targets = Int32Array.from({ length: rows }, (_, r) => (r * 7919) % vocab);
      const out = new Float32Array(rows);
      addon.opNll(logits, rows, vocab, targets, out);
      const want = Array.from({ length: rows }, (_, r) => refNll(logits, r * vocab, vocab, targets[r]!));
      check(`nll ${rows}x${vocab}`, out, want, 1e-5, 1e-6);
    }
  });
});

test('ops reject short buffers with coded errors', () => {
  const out = new Float32Array(3);
  expect(() => addon.opRmsNorm(new Float32Array(4), 2, 2, new Float32Array(2), 1e-5, out)).toThrow(
    expect.objectContaining({ code: 'E_BUFFER' }),
  );
  expect(() =>
    addon.opAttention(new Float32Array(8), new Float32Array(8), new Float32Array(8), 1, 2, 3, 4, new Float32Array(8)),
  ).toThrow(expect.objectContaining({ code: 'E_SHAPE' }));
});

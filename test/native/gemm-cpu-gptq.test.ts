/**
 * The repacked CPU GPTQ operator (native/core/cpu_gptq): Y = X · Wᵀ on weights repacked once, at
 * every SIMD level this machine has, 2/3/4 bits, contiguous groups and act-order g_idx, odd shapes,
 * M = 1 (GEMV tiles) to 37 (GEMM row tiles plus remainders). Fresh random data; seeds in messages.
 *
 * Int8-activation path, checked two ways:
 *  - against a float64 model of the same arithmetic (activations gathered into the repacked order,
 *    quantized per segment exactly as documented in repack.hpp): any wrong weight, slice, zero point,
 *    scale or segment shows up far above the 1e-5 tolerance;
 *  - against the true float64 product, element by element within the stated bound
 *    |Δy[n]| ≤ ‖x‖∞ · ‖w_n‖₁ / 254 (plus f32 rounding), which is what callers are promised.
 * Exact path (f32 activations): relative error 1e-5 against float64.
 */
import { afterAll, describe, expect, it } from 'vitest';
import { native, type PackedWeights } from '../../src/native.js';
import {
  dequantizeRef,
  matmulRef,
  randomPackedWeights,
  relativeError,
  roundHalfEven,
  type Bits,
} from '../helpers/reference.js';
import { Rng, randomMatrix } from '../helpers/random.js';
import { availableSimdLevels, forceSimd } from '../helpers/simd.js';

const BITS: Bits[] = [2, 3, 4];
const SEGMENT = 128; // kSegmentK in repack.hpp

afterAll(() => forceSimd('auto'));

/** The repacked order: per group (ascending), its inputs ascending, cut into segments of ≤ 128. */
function segmentsOf(W: PackedWeights): number[][] {
  const members: number[][] = Array.from({ length: W.groups }, () => []);
  for (let k = 0; k < W.K; k++) members[W.gIdx ? W.gIdx[k] : Math.floor(k / W.groupSize)].push(k);
  const out: number[][] = [];
  for (const m of members) for (let i = 0; i < m.length; i += SEGMENT) out.push(m.slice(i, i + SEGMENT));
  return out;
}

/** Float64 model of the int8 path: Σ_segments dx · Σ_k xq[k] · w[n][k]. */
function int8ModelRef(X: Float32Array, M: number, W: PackedWeights, dense: Float64Array): Float64Array {
  const { N, K } = W;
  const segments = segmentsOf(W);
  const Y = new Float64Array(M * N);
  for (let m = 0; m < M; m++) {
    for (const seg of segments) {
      let amax = 0;
      for (const k of seg) amax = Math.max(amax, Math.abs(X[m * K + k]));
      const inv = amax > 0 ? Math.fround(127 / amax) : 0;
      const dx = Math.fround(amax / 127);
      const xq = seg.map((k) => Math.max(-127, Math.min(127, roundHalfEven(Math.fround(X[m * K + k] * inv)))));
      for (let n = 0; n < N; n++) {
        let s = 0;
        seg.forEach((k, i) => (s += xq[i] * dense[n * K + k]));
        Y[m * N + n] += dx * s;
      }
    }
  }
  return Y;
}

interface Case {
  N: number;
  K: number;
  groupSize: number;
  actOrder?: boolean;
  zeroOffset?: 0 | 1;
  batches: number[];
}

/** Kernel family names the level may report (the VNNI variants where the processor has them). */
function expectKernel(level: string, kernel: string, what: string): void {
  expect(kernel === level || kernel === `${level}-vnni`, `${what}: ran ${kernel}, forced ${level}`).toBe(true);
}

function checkCase(level: string, bits: Bits, c: Case): void {
  const rng = new Rng();
  const W = randomPackedWeights(rng, { ...c, bits });
  const dense = dequantizeRef(W);
  const handle = native().cpuGptqPrepare(W);
  for (const M of c.batches) {
    const X = randomMatrix(rng, M, c.K);
    const what = `seed ${rng.seed}, ${level}, ${bits}-bit, N ${c.N} K ${c.K} group ${c.groupSize}${c.actOrder ? ' g_idx' : ''}, M ${M}`;
    const exact = matmulRef(X, M, dense, c.N, c.K);

    const Y = new Float32Array(M * c.N).fill(NaN);
    expectKernel(level, native().cpuGptqGemmSync(handle, X, M, Y, false), what);
    expect(relativeError(Y, int8ModelRef(X, M, W, dense)), `${what} (int8 model)`).toBeLessThan(1e-5);
    for (let m = 0; m < M; m++) {
      let xmax = 0;
      for (let k = 0; k < c.K; k++) xmax = Math.max(xmax, Math.abs(X[m * c.K + k]));
      for (let n = 0; n < c.N; n++) {
        let l1 = 0;
        for (let k = 0; k < c.K; k++) l1 += Math.abs(dense[n * c.K + k]);
        const bound = (xmax * l1) / 254 + 1e-5 * xmax * l1;
        const err = Math.abs(Y[m * c.N + n] - exact[m * c.N + n]);
        if (!(err <= bound)) expect.fail(`${what}: y[${m}, ${n}] off by ${err}, bound ${bound}`);
      }
    }

    const Ye = new Float32Array(M * c.N).fill(NaN);
    expectKernel(level, native().cpuGptqGemmSync(handle, X, M, Ye, true).replace('-vnni', ''), `${what} (exact)`);
    expect(relativeError(Ye, exact), `${what} (exact)`).toBeLessThan(1e-5);
  }
}

describe.each(availableSimdLevels())('repacked CPU GPTQ product at SIMD level %s', (level) => {
  it.each(BITS)('%i-bit, K 300 × N 100, groups of 32, M 1..37 (GEMV, GEMM tiles, row remainders)', (bits) => {
    forceSimd(level);
    checkCase(level, bits, { N: 100, K: 300, groupSize: 32, batches: [1, 2, 5, 37] });
  });

  it.each(BITS)('%i-bit, act-order g_idx (groups become a permutation of x)', (bits) => {
    forceSimd(level);
    checkCase(level, bits, { N: 100, K: 300, groupSize: 64, actOrder: true, batches: [1, 6] });
  });

  it.each(BITS)('%i-bit, per channel (segments of 128 inside one group), gptq_v2 zeros', (bits) => {
    forceSimd(level);
    checkCase(level, bits, { N: 70, K: 300, groupSize: -1, batches: [1, 3] });
    checkCase(level, bits, { N: 33, K: 130, groupSize: 32, zeroOffset: 0, batches: [1, 4] });
  });

  it.each(BITS)('%i-bit, group 20 (units padded inside each group), tiny shapes', (bits) => {
    forceSimd(level);
    checkCase(level, bits, { N: 37, K: 172, groupSize: 20, batches: [1, 5] });
    checkCase(level, bits, { N: 1, K: 1, groupSize: -1, batches: [1, 2] });
    checkCase(level, bits, { N: 3, K: 7, groupSize: 2, actOrder: true, batches: [1, 2] });
  });

  // The layout's panels (repack.hpp): 4 column blocks share one stream, each segment a header of
  // their scales and zero points followed by its units with the 4 blocks side by side. N 200 is 13
  // blocks, so 4 panels with a last one of 1 real block and 3 padding blocks; groups of 160 make
  // segments of 128 and 32 positions (4 and 1 units), so every header sits at a different offset.
  // Catches a block reading another slot's data or scales (GEMM tiles start at slots 0 and 2), a
  // header offset that assumes equal segments, and padding columns written into Y.
  it.each(BITS)('%i-bit, panels of 4 blocks with a partial last panel and unequal segments', (bits) => {
    forceSimd(level);
    checkCase(level, bits, { N: 200, K: 400, groupSize: 160, batches: [1, 2, 7] });
    checkCase(level, bits, { N: 200, K: 400, groupSize: 160, actOrder: true, batches: [1] });
  });

  it('wide enough for several GEMV tasks and GEMM column tiles: N 300 × K 1000', () => {
    forceSimd(level);
    checkCase(level, 4, { N: 300, K: 1000, groupSize: 128, batches: [1, 9] });
  });
});

describe('repacked CPU GPTQ product, across levels and inputs', () => {
  const levels = availableSimdLevels();

  // Guards the multi-level tests above: on a processor with SIMD, forcing scalar must really run the
  // scalar kernels (and the top level its own), so the levels are compared, not one path twice.
  it.skipIf(levels.length < 2)('scalar and the top SIMD level run different kernels and agree', () => {
    const rng = new Rng();
    const W = randomPackedWeights(rng, { N: 200, K: 384, bits: 3, groupSize: 128, actOrder: true });
    const handle = native().cpuGptqPrepare(W);
    const X = randomMatrix(rng, 5, 384);
    const run = (level: (typeof levels)[number]) => {
      forceSimd(level);
      const Y = new Float32Array(5 * 200);
      const kernel = native().cpuGptqGemmSync(handle, X, 5, Y);
      return { Y, kernel };
    };
    const scalar = run('scalar');
    const top = run(levels[levels.length - 1]);
    forceSimd('auto');
    expect(scalar.kernel).toBe('scalar');
    expect(top.kernel.startsWith(levels[levels.length - 1]), `top level ran ${top.kernel}`).toBe(true);
    // Integer sums are exact at every level: only the f32 epilogue's rounding may differ.
    expect(relativeError(top.Y, scalar.Y), `seed ${rng.seed}`).toBeLessThan(1e-6);
  });

  // GEMV work split (kernels_impl.hpp's TaskRanges): each thread owns a contiguous range of panels
  // and, when done, takes the other ranges' panels from their back ends. Panel counts 1, 2, 3 and 7
  // (N 64, 100, 150, 420) against 1, 2, 3, 5 and 8 threads, so ranges are empty, single, uneven and
  // more than the panels, and threads beyond the cores arrive late and leave their ranges to be
  // taken from the back. Catches a panel no thread computes (its columns stay NaN), a range bound
  // off by one (a panel twice and its neighbour never, or a write past the last panel), and a
  // front/back hand-off that gives two threads the same panel while another is dropped.
  it('the GEMV split over threads computes every panel exactly once, whatever the thread count', () => {
    const rng = new Rng();
    const level = levels[levels.length - 1];
    forceSimd(level);
    try {
      for (const N of [64, 100, 150, 420]) {
        const W = randomPackedWeights(rng, { N, K: 256, bits: 2, groupSize: 128, actOrder: N === 150 });
        const handle = native().cpuGptqPrepare(W);
        const X = randomMatrix(rng, 1, 256);
        const want = int8ModelRef(X, 1, W, dequantizeRef(W));
        for (const threads of [1, 2, 3, 5, 8]) {
          native().setThreads(threads);
          for (let call = 0; call < 3; call++) {
            const Y = new Float32Array(N).fill(NaN);
            native().cpuGptqGemmSync(handle, X, 1, Y);
            expect(relativeError(Y, want), `seed ${rng.seed}, N ${N}, ${threads} threads, call ${call}`).toBeLessThan(
              1e-5,
            );
          }
        }
      }
    } finally {
      native().setThreads(0);
      forceSimd('auto');
    }
  });

  // Repacked data of 2 MiB and more is allocated 2 MiB-aligned with a huge-page hint: a size rounded
  // wrongly there drops the last blocks' data. Also the new 3-bit layout over many groups and blocks.
  it('3-bit weights over 2 MiB (the huge-page aligned buffer), at the top level', () => {
    const level = levels[levels.length - 1];
    forceSimd(level);
    checkCase(level, 3, { N: 2000, K: 3000, groupSize: 128, batches: [1, 3] });
    forceSimd('auto');
  });

  // Benchmarks rotate over deep copies (cpuGptqCopy) to read weights from DRAM: a copy that dropped
  // a field (the act-order permutation flag, scales, zero points, the data past the first pages)
  // would time a different product. Act-order so the permutation matters; over 2 MiB of data.
  it('a copy of a prepared weight gives the same products and outlives the original', () => {
    const rng = new Rng();
    const W = randomPackedWeights(rng, { N: 1500, K: 3000, bits: 4, groupSize: 128, actOrder: true });
    let handle: ReturnType<ReturnType<typeof native>['cpuGptqPrepare']> | null = native().cpuGptqPrepare(W);
    const copy = native().cpuGptqCopy(handle);
    expect({ N: copy.N, K: copy.K, bits: copy.bits, bytes: copy.bytes }).toEqual({
      N: handle.N,
      K: handle.K,
      bits: handle.bits,
      bytes: handle.bytes,
    });
    expect(copy.bytes).toBeGreaterThan(2 << 20);
    const X = randomMatrix(rng, 2, 3000);
    const a = new Float32Array(2 * 1500),
      b = new Float32Array(2 * 1500).fill(NaN);
    native().cpuGptqGemmSync(handle, X, 2, a);
    // eslint-disable-next-line no-useless-assignment -- drops the original's last reference: the copy owns its memory
    handle = null;
    native().cpuGptqGemmSync(copy, X, 2, b);
    expect(b, `seed ${rng.seed}`).toEqual(a);
    expect(relativeError(b, int8ModelRef(X, 2, W, dequantizeRef(W))), `seed ${rng.seed}`).toBeLessThan(1e-5);
    expect(() => native().cpuGptqCopy({ N: 1, K: 1, bits: 4, bytes: 0 })).toThrow(
      expect.objectContaining({ code: 'E_ARGUMENT' }),
    );
  });

  // The prefetch settings are process-wide benchmark knobs: a setter that stored a field in the wrong
  // place, or accepted a distance past the [0, 64] KiB / segments the kernels are built for, is caught here.
  it('prefetch settings round-trip, reject out-of-range distances, and leave products unchanged', () => {
    const rng = new Rng();
    const W = randomPackedWeights(rng, { N: 300, K: 1000, bits: 3, groupSize: 128, actOrder: true });
    const handle = native().cpuGptqPrepare(W);
    const X = randomMatrix(rng, 1, 1000);
    const a = new Float32Array(300),
      b = new Float32Array(300).fill(NaN);
    const initial = native().cpuGptqSetPrefetch(0, 0, 0);
    native().cpuGptqGemmSync(handle, X, 1, a);
    expect(native().cpuGptqSetPrefetch(7, 9, 2)).toEqual({ near: 0, far: 0, scales: 0 });
    native().cpuGptqGemmSync(handle, X, 1, b);
    expect(b, `seed ${rng.seed}`).toEqual(a);
    expect(native().cpuGptqSetPrefetch(initial.near, initial.far)).toEqual({ near: 7, far: 9, scales: 2 });
    expect(native().cpuGptqSetPrefetch(initial.near, initial.far, initial.scales).scales).toBe(2); // omitted: kept
    for (const bad of [
      [-1, 0, 0],
      [0, 65, 0],
      [0, 0, 65],
    ])
      expect(() => native().cpuGptqSetPrefetch(bad[0], bad[1], bad[2])).toThrow(
        expect.objectContaining({ code: 'E_ARGUMENT' }),
      );
    expect(native().cpuGptqSetPrefetch(initial.near, initial.far, initial.scales)).toEqual(initial);
  });

  it('the rotating streaming reader times slices inside its buffer and rejects others', () => {
    const reader = native().streamReader(3 << 20);
    expect(reader.bytes).toBe(3 << 20);
    expect(native().streamReadSeconds(reader, 0, 3 << 20, 2)).toBeGreaterThan(0);
    expect(native().streamReadSeconds(reader, 1 << 20, (2 << 20) - 64, 1)).toBeGreaterThan(0);
    const bad = (offset: number, bytes: number) =>
      expect(() => native().streamReadSeconds(reader, offset, bytes, 1)).toThrow(
        expect.objectContaining({ code: 'E_ARGUMENT' }),
      );
    bad(32, 4096); // not a multiple of 64
    bad(1 << 20, (2 << 20) + 64); // past the end
    bad(-64, 4096);
    bad(0, 0);
    expect(() => native().streamReadSeconds({ bytes: 4096 }, 0, 4096, 1)).toThrow(
      expect.objectContaining({ code: 'E_ARGUMENT' }),
    );
    expect(() => native().streamReader(100)).toThrow(expect.objectContaining({ code: 'E_ARGUMENT' }));
  });

  it('rejects 8-bit weights, foreign handles and short buffers with typed errors', () => {
    const rng = new Rng();
    const W8 = randomPackedWeights(rng, { N: 8, K: 16, bits: 8, groupSize: -1 });
    expect(() => native().cpuGptqPrepare(W8)).toThrow(expect.objectContaining({ code: 'E_BITS' }));
    const W = randomPackedWeights(rng, { N: 8, K: 16, bits: 4, groupSize: -1 });
    const handle = native().cpuGptqPrepare(W);
    expect(() =>
      native().cpuGptqGemmSync({ N: 8, K: 16, bits: 4, bytes: 0 }, new Float32Array(16), 1, new Float32Array(8)),
    ).toThrow(expect.objectContaining({ code: 'E_ARGUMENT' }));
    expect(() => native().cpuGptqGemmSync(handle, new Float32Array(15), 1, new Float32Array(8))).toThrow(
      expect.objectContaining({ code: 'E_BUFFER' }),
    );
    expect(() => native().cpuGptqGemmSync(handle, new Float32Array(32), 2, new Float32Array(15))).toThrow(
      expect.objectContaining({ code: 'E_BUFFER' }),
    );
  });

  it('the streaming-read ceiling is a positive bandwidth and rejects bad sizes', () => {
    expect(native().streamReadBandwidth(1 << 20, 1, 3)).toBeGreaterThan(0);
    // over 2 MiB (huge-page buffer), not a multiple of 64 bytes: split over threads with a tail
    expect(native().streamReadBandwidth((3 << 20) + 200, 2, 1)).toBeGreaterThan(0);
    expect(() => native().streamReadBandwidth(10, 1, 1)).toThrow(expect.objectContaining({ code: 'E_ARGUMENT' }));
  });
});

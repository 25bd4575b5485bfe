/**
 * The weight-format seam: the TypeScript format table against the addon's (native/core/weights/
 * format.hpp), and prepared linears (native().linearCreate / prepareLinear) against the float64
 * reference on every device this machine has, in every format, with biases and odd shapes.
 */
import { describe, expect, it } from 'vitest';
import { LowbitError } from '../../src/errors.js';
import { native } from '../../src/native.js';
import { prepareLinear } from '../../src/quantize/linear.js';
import {
  GPTQ_PACK_UNITS,
  WEIGHT_FORMATS,
  gptqTensors,
  packedCount,
  packedWords,
  type GptqBits,
} from '../../src/weights/formats.js';
import type { LinearWeights } from '../../src/weights/types.js';
import {
  bf16Bits,
  bf16Value,
  dequantizeRef,
  f16Bits,
  f16Value,
  matmulRef,
  packedWordsRef,
  randomPackedWeights,
  relativeError,
} from '../helpers/reference.js';
import { Rng, randomMatrix } from '../helpers/random.js';

describe('the weight-format table', () => {
  // Catches: a pack unit, a format or a format's order changed on one side only (the TS readers
  // and writer would then size tensors differently from the kernels).
  it('TypeScript and native tables agree', () => {
    const table = native().weightFormats();
    expect(table.map((f) => f.name)).toEqual([...WEIGHT_FORMATS]);
    const gptq = table.find((f) => f.name === 'gptq');
    expect(gptq?.packUnits).toEqual(GPTQ_PACK_UNITS.map((u) => ({ bits: u.bits, values: u.values, words: u.words })));
  });

  // Catches: a table entry whose unit does not hold its values (values * bits must fill the words
  // exactly), checked against the reference packer's independent arithmetic.
  it('pack units fill their words and size tensors as the reference does', () => {
    for (const u of GPTQ_PACK_UNITS) {
      expect(u.values * u.bits, `${u.bits}-bit`).toBe(32 * u.words);
      for (const count of [1, 31, 32, 33, 172, 1000]) {
        expect(packedWords(u.bits, count), `${u.bits}-bit ${count}`).toBe(packedWordsRef(u.bits, count));
        expect(packedCount(u.bits, count)).toBeGreaterThanOrEqual(count);
        expect(packedCount(u.bits, count) - count).toBeLessThan(u.values);
      }
    }
    const [qweight, qzeros, scales, gIdx] = gptqTensors(3, 100, 20, 4);
    expect(qweight).toEqual({
      suffix: 'qweight',
      dtype: 'I32',
      shape: [packedWordsRef(3, 100), 20],
      bytes: packedWordsRef(3, 100) * 20 * 4,
    });
    expect(qzeros).toEqual({
      suffix: 'qzeros',
      dtype: 'I32',
      shape: [4, packedWordsRef(3, 20)],
      bytes: 4 * packedWordsRef(3, 20) * 4,
    });
    expect(scales).toEqual({ suffix: 'scales', dtype: 'F16', shape: [4, 20], bytes: 4 * 20 * 2 });
    expect(gIdx).toEqual({ suffix: 'g_idx', dtype: 'I32', shape: [100], bytes: 400 });
  });
});

const cudaDevices = native().cudaDevices().devices;
const devices: ('cpu' | 'cuda')[] = cudaDevices.length > 0 ? ['cpu', 'cuda'] : ['cpu'];
const kernels = native().linearKernels();

function randomBias(rng: Rng, N: number): Float32Array {
  return randomMatrix(rng, 1, N);
}

function withBias(ref: Float64Array, M: number, N: number, bias?: Float32Array): Float64Array {
  if (bias) for (let m = 0; m < M; m++) for (let n = 0; n < N; n++) ref[m * N + n] += bias[n]!;
  return ref;
}

describe.each(devices)('prepared linears on %s', (device) => {
  // Catches: an operator that reads the wrong layout, drops the bias, writes only part of Y, or
  // keeps a view of the caller's buffers instead of a copy (the weights are scribbled over after
  // preparing).
  it.each([2, 3, 4, 8] as GptqBits[])(
    'gptq %i-bit matches the float64 reference (act-order, bias, odd shapes, M 1..33)',
    async (bits) => {
      const rng = new Rng();
      for (const c of [
        { N: 37, K: 100, groupSize: 32, actOrder: false },
        { N: 64, K: 172, groupSize: 64, actOrder: true, zeroOffset: 0 as const },
      ]) {
        const W = randomPackedWeights(rng, { ...c, bits });
        const dense = dequantizeRef(W);
        const bias = randomBias(rng, c.N);
        const { q: _q, zeros: _z, ...packed } = W;
        const lin = prepareLinear({ ...packed, format: 'gptq', bias }, { device });
        expect(kernels[device]).toContain(lin.kernel);
        const biasCopy = bias.slice();
        W.qweight.fill(0x5a5a5a5a); // the operator must hold its own copies
        bias.fill(1e6);
        for (const M of [1, 2, 7, 33]) {
          const X = randomMatrix(rng, M, c.K);
          const ref = withBias(matmulRef(X, M, dense, c.N, c.K), M, c.N, biasCopy);
          const what = `seed ${rng.seed} ${device} ${bits}-bit N ${c.N} K ${c.K} M ${M}`;
          const out = new Float32Array(M * c.N).fill(Number.NaN);
          const Y = await lin.matmul(X, M, out);
          expect(Y).toBe(out);
          expect(relativeError(Y, ref), what).toBeLessThan(1e-5);
          expect(Array.from(lin.matmulSync(X, M)), what).toEqual(Array.from(Y));
        }
        lin.close();
      }
    },
  );

  // Catches: a dense operator that ignores the stored dtype, N/K mixed up, or the bias lost.
  it.each(['f32', 'f16', 'bf16'] as const)('dense %s matches the float64 reference with a bias', async (dtype) => {
    const rng = new Rng();
    const N = 29,
      K = 67;
    const W32 = randomMatrix(rng, N, K);
    const data = dtype === 'f32' ? W32 : Uint16Array.from(W32, (v) => (dtype === 'f16' ? f16Bits(v) : bf16Bits(v)));
    const Wref =
      dtype === 'f32'
        ? Float64Array.from(W32)
        : Float64Array.from(data as Uint16Array, dtype === 'f16' ? f16Value : bf16Value);
    const bias = randomBias(rng, N);
    const lin = prepareLinear({ format: 'dense', dtype, data, N, K, bias }, { device });
    for (const M of [1, 5, 7]) {
      const X = randomMatrix(rng, M, K);
      const ref = withBias(matmulRef(X, M, Wref, N, K), M, N, bias);
      const Y = await lin.matmul(X, M);
      expect(relativeError(Y, ref), `seed ${rng.seed} ${dtype} M ${M}`).toBeLessThan(1e-5);
      // On the CPU, one row alone (the one-row decode kernel) gives the bits that row gets inside a larger
      // product (6-row tiles; M 7 ends with a lone row): a one-row path that summed in another order,
      // read another row or wrote with the wrong stride would differ.
      if (device === 'cpu')
        for (const m of [0, M - 1]) {
          const one = await lin.matmul(X.subarray(m * K, (m + 1) * K), 1);
          expect(Array.from(one), `seed ${rng.seed} ${dtype} M ${M} row ${m}`).toEqual(
            Array.from(Y.subarray(m * N, (m + 1) * N)),
          );
        }
    }
    expect(lin.bytes).toBeGreaterThanOrEqual(N * K * (dtype === 'f32' ? 4 : 2));
    lin.close();
    expect(lin.bytes).toBe(0);
    expect(() => lin.matmulSync(new Float32Array(K), 1)).toThrow(expect.objectContaining({ code: 'E_CLOSED' }));
  });

  // Catches: a kernel name that is silently ignored, or bad weights reaching native code.
  it('rejects unknown kernels, unknown formats and inconsistent weights with coded errors', () => {
    const w: LinearWeights = { format: 'dense', dtype: 'f32', data: new Float32Array(6), N: 2, K: 3 };
    expect(() => prepareLinear(w, { device, kernel: 'no-such-kernel' })).toThrow(
      expect.objectContaining({ code: 'E_ARGUMENT' }),
    );
    expect(() => prepareLinear(w, { device, kernel: 'gptq-packed' })).toThrow(
      expect.objectContaining({ code: 'E_ARGUMENT' }),
    );
    expect(() => prepareLinear({ ...w, format: 'awq' } as unknown as LinearWeights, { device })).toThrow(
      expect.objectContaining({ code: 'E_ARGUMENT' }),
    );
    expect(() => prepareLinear({ ...w, N: 3 }, { device })).toThrow(expect.objectContaining({ code: 'E_SHAPE' }));
    // the native reader checks too, whatever the TypeScript layer let through
    expect(() =>
      native().linearCreate({ ...w, data: new Float32Array(5) }, { device: device === 'cpu' ? -1 : 0 }),
    ).toThrow(expect.objectContaining({ code: 'E_BUFFER' }));
    expect(() => native().linearCreate({ ...w, format: 'gptq' } as unknown as LinearWeights)).toThrow(LowbitError);
  });
});

describe('prepared GPTQ linears on the CPU: cpuActivations', () => {
  // Catches: cpuActivations ignored (the int8 kernel never picked, or picked by default), 8-bit weights
  // sent to a kernel that cannot take them, a lost bias, or an int8 product outside its stated bound
  // |Δy[n]| ≤ ‖x‖∞ · ‖w_n‖₁ / 254 (plus f32 rounding) against the float64 reference.
  it.each([2, 3, 4, 8] as GptqBits[])('%i-bit: int8 runs gptq-int8 (2/3/4 bits) within its bound', (bits) => {
    const rng = new Rng();
    const c = { N: 45, K: 300, groupSize: 64, actOrder: true };
    const W = randomPackedWeights(rng, { ...c, bits });
    const dense = dequantizeRef(W);
    const bias = randomBias(rng, c.N);
    const { q: _q, zeros: _z, ...packed } = W;
    const weights: LinearWeights = { ...packed, format: 'gptq', bias };
    expect(prepareLinear(weights).kernel).toBe('gptq-packed'); // the default stays exact
    const lin = prepareLinear(weights, { cpuActivations: 'int8' });
    expect(lin.kernel).toBe(bits === 8 ? 'gptq-packed' : 'gptq-int8');
    for (const M of [1, 6]) {
      const X = randomMatrix(rng, M, c.K);
      const ref = withBias(matmulRef(X, M, dense, c.N, c.K), M, c.N, bias);
      const before = native().cpuGptqInt8Stats().products;
      const Y = lin.matmulSync(X, M);
      expect(native().cpuGptqInt8Stats().products - before).toBe(bits === 8 ? 0 : 1);
      for (let m = 0; m < M; m++) {
        let xmax = 0;
        for (let k = 0; k < c.K; k++) xmax = Math.max(xmax, Math.abs(X[m * c.K + k]!));
        for (let n = 0; n < c.N; n++) {
          let l1 = 0;
          for (let k = 0; k < c.K; k++) l1 += Math.abs(dense[n * c.K + k]!);
          const bound = (xmax * l1) / (bits === 8 ? 1e5 : 254) + 1e-5 * (xmax * l1 + Math.abs(bias[n]!));
          const err = Math.abs(Y[m * c.N + n]! - ref[m * c.N + n]!);
          if (!(err <= bound))
            expect.fail(`seed ${rng.seed} ${bits}-bit M ${M}: y[${m}, ${n}] off by ${err}, bound ${bound}`);
        }
      }
    }
    lin.close();
  });

  // Catches: a typo taking a default silently, or the int8 kernel forced by name on the f32 path.
  it('rejects an unknown cpuActivations and gptq-int8 by name without int8', () => {
    const W = randomPackedWeights(new Rng(), { N: 16, K: 64, bits: 4, groupSize: 32 });
    const { q: _q, zeros: _z, ...packed } = W;
    const weights: LinearWeights = { ...packed, format: 'gptq' };
    expect(() => prepareLinear(weights, { cpuActivations: 'int4' as never })).toThrow(
      expect.objectContaining({ code: 'E_ARGUMENT' }),
    );
    expect(() => native().linearCreate(weights, { cpuActivations: 'int4' as never })).toThrow(
      expect.objectContaining({ code: 'E_ARGUMENT' }),
    );
    expect(() => prepareLinear(weights, { kernel: 'gptq-int8' })).toThrow(
      expect.objectContaining({ code: 'E_ARGUMENT' }),
    );
    expect(prepareLinear(weights, { kernel: 'gptq-int8', cpuActivations: 'int8' }).kernel).toBe('gptq-int8');
  });
});

/**
 * Bad input gets a LowbitError with a stable code, never a crash: once through the TypeScript API
 * (which validates first) and once straight into the addon (whose own checks must hold on their
 * own). The process still computes correctly afterwards.
 */
import { describe, expect, it } from 'vitest';
import { LowbitError, type LowbitErrorCode } from '../../src/errors.js';
import { native, type PackedWeights } from '../../src/native.js';
import { Tensor } from '../../src/tensor.js';
import { rtnQuantize } from '../../src/quantize/rtn.js';
import { dequantizeWeights, packedMatmul, packedMatmulSync, validatePackedWeights } from '../../src/quantize/packed.js';
import { packedMatmulRef, randomPackedWeights, relativeError } from '../helpers/reference.js';
import { Rng, randomMatrix } from '../helpers/random.js';

/** The code of the LowbitError that f throws or rejects with (fails the test on anything else). */
async function codeOf(f: () => unknown): Promise<LowbitErrorCode> {
  try {
    await f();
  } catch (err) {
    expect(err).toBeInstanceOf(LowbitError);
    expect((err as LowbitError).message.length).toBeGreaterThan(10);
    return (err as LowbitError).code;
  }
  throw new Error('expected an error, got none');
}

const rng = new Rng();
const K = 172,
  N = 100;
const good = randomPackedWeights(rng, { N, K, bits: 4, groupSize: 32 });
const goodW: PackedWeights = {
  bits: 4,
  K,
  N,
  groupSize: 32,
  groups: 6,
  zeroOffset: 1,
  qweight: good.qweight,
  qzeros: good.qzeros,
  scales: good.scales,
};
const x = randomMatrix(rng, 1, K);
const y = new Float32Array(N);
const weight = new Tensor('f32', [N, K], randomMatrix(rng, N, K));

/** goodW with some fields replaced (for bad variants). */
function withW(patch: Record<string, unknown>): PackedWeights {
  return { ...goodW, ...patch } as PackedWeights;
}

describe('wrong dtype → E_DTYPE', () => {
  it('TypeScript API', async () => {
    expect(await codeOf(() => rtnQuantize(new Tensor('i32', [N, K], new Int32Array(N * K)), { bits: 4 }))).toBe(
      'E_DTYPE',
    );
    expect(await codeOf(() => packedMatmul(new Float64Array(K) as unknown as Float32Array, 1, goodW))).toBe('E_DTYPE');
    expect(await codeOf(() => packedMatmul(x, 1, withW({ qweight: new Uint32Array(goodW.qweight.length) })))).toBe(
      'E_DTYPE',
    );
    expect(await codeOf(() => packedMatmul(x, 1, withW({ scales: new Float32Array(goodW.scales.length) })))).toBe(
      'E_DTYPE',
    );
  });
  it('addon', async () => {
    const a = native();
    expect(await codeOf(() => a.packedGemm(new Float64Array(K) as unknown as Float32Array, 1, goodW, y))).toBe(
      'E_DTYPE',
    );
    expect(
      await codeOf(() => a.packedGemmSync(x, 1, withW({ qzeros: new Float32Array(goodW.qzeros.length) }), y)),
    ).toBe('E_DTYPE');
    expect(
      await codeOf(() =>
        a.rtnQuantize(new Int32Array(N * K) as unknown as Float32Array, N, K, { bits: 4, groupSize: 32 }),
      ),
    ).toBe('E_DTYPE');
    expect(await codeOf(() => a.convert(new Uint8Array(8), 'i32' as 'f32', new Uint8Array(8), 'f16', 2))).toBe(
      'E_DTYPE',
    );
  });
});

describe('shape mismatch → E_SHAPE', () => {
  it('TypeScript API', async () => {
    expect(await codeOf(() => packedMatmul(randomMatrix(rng, 1, K + 1), 1, goodW))).toBe('E_SHAPE');
    expect(await codeOf(() => packedMatmul(x, 2, goodW))).toBe('E_SHAPE');
    expect(
      await codeOf(() => packedMatmul(new Tensor('f32', [2, K - 1], new Float32Array(2 * (K - 1))), 2, goodW)),
    ).toBe('E_SHAPE');
    expect(await codeOf(() => rtnQuantize(new Tensor('f32', [N * K], weight.data), { bits: 4 }))).toBe('E_SHAPE');
    expect(await codeOf(() => packedMatmul(x, 1, withW({ groups: 5 })))).toBe('E_SHAPE');
    expect(await codeOf(() => packedMatmul(x, 1, withW({ K: 0 })))).toBe('E_SHAPE');
    expect(await codeOf(() => packedMatmul(x, 1, goodW, { out: new Float32Array(N - 1) }))).toBe('E_SHAPE');
  });
  it('addon', async () => {
    const a = native();
    expect(await codeOf(() => a.packedGemm(x, 1, withW({ groups: 5 }), y))).toBe('E_SHAPE');
    expect(await codeOf(() => a.packedGemm(x, 0, goodW, y))).toBe('E_SHAPE');
    expect(await codeOf(() => a.unpackQweight(goodW.qweight, 0, K, 4))).toBe('E_SHAPE');
  });
});

describe('bits outside {2, 3, 4, 8} → E_BITS', () => {
  it('TypeScript API', async () => {
    expect(await codeOf(() => rtnQuantize(weight, { bits: 5 as 4 }))).toBe('E_BITS');
    expect(await codeOf(() => packedMatmul(x, 1, withW({ bits: 5 })))).toBe('E_BITS');
  });
  it('addon', async () => {
    const a = native();
    expect(await codeOf(() => a.rtnQuantize(weight.data as Float32Array, N, K, { bits: 5, groupSize: 32 }))).toBe(
      'E_BITS',
    );
    expect(await codeOf(() => a.packQweight(new Uint8Array(N * K), N, K, 5))).toBe('E_BITS');
    expect(await codeOf(() => a.packQzeros(new Int32Array(N), 1, N, 1, 1))).toBe('E_BITS');
    expect(await codeOf(() => a.packedGemm(x, 1, withW({ bits: 5 }), y))).toBe('E_BITS');
  });
});

describe('a group size that does not fit → E_GROUP_SIZE', () => {
  it('TypeScript API', async () => {
    expect(await codeOf(() => rtnQuantize(weight, { bits: 4, groupSize: 0 }))).toBe('E_GROUP_SIZE');
    expect(await codeOf(() => rtnQuantize(weight, { bits: 4, groupSize: -2 }))).toBe('E_GROUP_SIZE');
    expect(await codeOf(() => rtnQuantize(weight, { bits: 4, groupSize: 12.5 }))).toBe('E_GROUP_SIZE');
    expect(await codeOf(() => packedMatmul(x, 1, withW({ groupSize: K + 1, groups: 1 })))).toBe('E_GROUP_SIZE');
  });
  it('addon', async () => {
    const a = native();
    expect(await codeOf(() => a.rtnQuantize(weight.data as Float32Array, N, K, { bits: 4, groupSize: 0 }))).toBe(
      'E_GROUP_SIZE',
    );
    expect(await codeOf(() => a.packedGemm(x, 1, withW({ groupSize: K + 1, groups: 1 }), y))).toBe('E_GROUP_SIZE');
    expect(await codeOf(() => a.packedGemm(x, 1, withW({ groupSize: 0 }), y))).toBe('E_GROUP_SIZE');
  });
});

describe('too-short buffers → E_BUFFER', () => {
  it('TypeScript API', async () => {
    expect(await codeOf(() => packedMatmul(x, 1, withW({ qweight: goodW.qweight.subarray(1) })))).toBe('E_BUFFER');
    expect(await codeOf(() => packedMatmul(x, 1, withW({ qzeros: goodW.qzeros.subarray(1) })))).toBe('E_BUFFER');
    expect(await codeOf(() => packedMatmulSync(x, 1, withW({ scales: goodW.scales.subarray(1) })))).toBe('E_BUFFER');
    expect(await codeOf(() => packedMatmul(x, 1, withW({ gIdx: new Int32Array(K - 1) })))).toBe('E_BUFFER');
    expect(() => dequantizeWeights(withW({ qweight: goodW.qweight.subarray(0, 10) }))).toThrow(LowbitError);
  });
  it('addon', async () => {
    const a = native();
    expect(await codeOf(() => a.packedGemm(x, 1, withW({ qweight: goodW.qweight.subarray(1) }), y))).toBe('E_BUFFER');
    expect(await codeOf(() => a.packedGemm(x, 1, withW({ qzeros: goodW.qzeros.subarray(1) }), y))).toBe('E_BUFFER');
    expect(await codeOf(() => a.packedGemm(x, 1, withW({ scales: goodW.scales.subarray(1) }), y))).toBe('E_BUFFER');
    expect(await codeOf(() => a.packedGemm(x.subarray(1), 1, goodW, y))).toBe('E_BUFFER');
    expect(await codeOf(() => a.packedGemm(x, 1, goodW, y.subarray(1)))).toBe('E_BUFFER');
    expect(await codeOf(() => a.packedGemm(x, 1, withW({ gIdx: new Int32Array(K - 1), groups: 6 }), y))).toBe(
      'E_BUFFER',
    );
    expect(await codeOf(() => a.dequantize(withW({ qweight: goodW.qweight.subarray(0, 10) })))).toBe('E_BUFFER');
    expect(await codeOf(() => a.denseGemm(x, 1, new Float32Array(N * K - 1), N, K, y))).toBe('E_BUFFER');
    expect(await codeOf(() => a.unpackQweight(goodW.qweight.subarray(1), N, K, 4))).toBe('E_BUFFER');
    expect(await codeOf(() => a.unpackQzeros(goodW.qzeros.subarray(1), 6, N, 4, 1))).toBe('E_BUFFER');
    expect(
      await codeOf(() => a.rtnQuantize((weight.data as Float32Array).subarray(1), N, K, { bits: 4, groupSize: 32 })),
    ).toBe('E_BUFFER');
    expect(await codeOf(() => a.convert(new Uint8Array(6), 'f32', new Uint8Array(4), 'f16', 2))).toBe('E_BUFFER');
  });
});

describe('g_idx out of range → E_GROUP_SIZE', () => {
  const gIdx = (bad: number) => {
    const g = new Int32Array(K).map((_, k) => Math.floor(k / 32));
    g[rng.int(K)] = bad;
    return g;
  };
  it('TypeScript API', async () => {
    for (const bad of [6, -1, 2 ** 30])
      expect(await codeOf(() => packedMatmul(x, 1, withW({ gIdx: gIdx(bad) })))).toBe('E_GROUP_SIZE');
    expect(() => validatePackedWeights(withW({ gIdx: gIdx(6) }))).toThrow(/gIdx\[\d+\]/);
  });
  it('addon', async () => {
    for (const bad of [6, -1, 2 ** 30])
      expect(await codeOf(() => native().packedGemm(x, 1, withW({ gIdx: gIdx(bad) }), y))).toBe('E_GROUP_SIZE');
  });
});

describe('other bad arguments → E_ARGUMENT', () => {
  it('codes or zero points that do not fit the width, odd options', async () => {
    const a = native();
    expect(await codeOf(() => a.packQweight(new Uint8Array([0, 16]), 1, 2, 4))).toBe('E_ARGUMENT');
    expect(await codeOf(() => a.packQzeros(new Int32Array([0, 8]), 1, 2, 3, 0))).toBe('E_ARGUMENT');
    expect(await codeOf(() => a.packedGemm(x, 1, withW({ zeroOffset: 2 }), y))).toBe('E_ARGUMENT');
    expect(await codeOf(() => a.packedGemm(x, 1.5, goodW, y))).toBe('E_ARGUMENT');
    expect(
      await codeOf(() => a.rtnQuantize(weight.data as Float32Array, N, K, { bits: 4, groupSize: 32, minZero: 2 as 1 })),
    ).toBe('E_ARGUMENT');
    expect(await codeOf(() => rtnQuantize(weight, { bits: 4, checkpointFormat: 'gptq_v3' as 'gptq' }))).toBe(
      'E_ARGUMENT',
    );
    expect(await codeOf(() => packedMatmul(x, 1, goodW, { device: 'tpu' as 'cpu' }))).toBe('E_ARGUMENT');
  });
});

it('still computes correctly after all of the above', async () => {
  const Y = await packedMatmul(x, 1, goodW);
  expect(relativeError(Y, packedMatmulRef(x, 1, goodW)), `seed ${rng.seed}`).toBeLessThan(1e-5);
});

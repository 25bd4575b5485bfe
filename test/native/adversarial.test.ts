/**
 * Adversarial native calls (issue 8): buffers transferred or detached while a call runs, getters that
 * return a fresh array or detach another field, sizes whose products overflow int64, arrays over a
 * SharedArrayBuffer, setThreads() during work, null / undefined / wrong types at every export of the
 * addon, and KV caches of sessions that are never closed. Every outcome must be the right result or a
 * LowbitError; the process must survive. The calls that crashed the process before the fixes run in
 * a child process (adversarial-child.cjs), so a regression shows as a failed test, not a dead runner.
 */
import { spawnSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { setFlagsFromString } from 'node:v8';
import { runInNewContext } from 'node:vm';
import { describe, expect, it } from 'vitest';
import { ERROR_CODES, LowbitError } from '../../src/errors.js';
import { addonPath, native, toLowbitError, type PackedWeights } from '../../src/native.js';
import { packCodes, rtnQuantizeCodes } from '../../src/quantize/rtn.js';
import { Model } from '../../src/model/model.js';
import { Tensor } from '../../src/tensor.js';
import { Rng, randomMatrix } from '../helpers/random.js';
import { randomPackedWeights } from '../helpers/reference.js';
import { llamaConfig } from '../model/random-model.js';

const child = fileURLToPath(new URL('./adversarial-child.cjs', import.meta.url));

/** The outcome of f: 'ok' with its value, or the LowbitError code (anything else fails the test). */
async function outcome(f: () => unknown): Promise<{ ok: unknown } | { code: string }> {
  try {
    return { ok: await f() };
  } catch (err) {
    const e = toLowbitError(err);
    expect(e, `${String(err)}`).toBeInstanceOf(LowbitError);
    return { code: (e as LowbitError).code };
  }
}

async function codeOf(f: () => unknown): Promise<string> {
  const r = await outcome(f);
  if ('ok' in r) throw new Error('expected a LowbitError, the call succeeded');
  return r.code;
}

interface ChildCase {
  case: string;
  outcome: 'same' | 'differs' | 'rejected';
  code?: string;
  detail?: string;
}

function runChild(scenario: string): ChildCase[] {
  const r = spawnSync(process.execPath, ['--expose-gc', child, addonPath(), scenario], {
    encoding: 'utf8',
    timeout: 240_000,
  });
  expect(r.signal, `child ${scenario} died (${r.signal}): ${r.stderr}`).toBeNull();
  expect(r.status, `child ${scenario} exited ${r.status}: ${r.stderr}`).toBe(0);
  return r.stdout
    .trim()
    .split('\n')
    .filter(Boolean)
    .map((line) => JSON.parse(line) as ChildCase);
}

// Bug: async calls kept raw pointers into typed arrays that JavaScript could transfer while the worker
// ran (SIGSEGV at large sizes, silent heap corruption at small ones, out written after the free).
describe('buffers transferred while an async call runs (child process)', () => {
  it.each(['packedGemm', 'denseGemm', 'rtnQuantize', 'gptq', 'model', 'spqr'])(
    '%s: inputs give the undisturbed result; outputs reject with E_DETACHED',
    (scenario) => {
      const cases = runChild(scenario);
      expect(cases.length).toBeGreaterThan(0);
      for (const c of cases) {
        const output = /\b(out|Y|hidden \(in place\)) transferred/.test(c.case);
        if (output) expect(c, c.case).toMatchObject({ outcome: 'rejected', code: 'E_DETACHED' });
        else if (c.outcome === 'rejected')
          expect(c.code, c.case).toBe('E_DETACHED'); // a getter detached a field first
        else expect(c.outcome, c.case).toBe('same');
      }
    },
  );

  // Bug: setThreads() replaced (freed) the pool while workers used it (use-after-free under ASan).
  it('setThreads() during work: every result stays exact', () => {
    const [c] = runChild('setThreads');
    expect(c, c?.detail).toMatchObject({ outcome: 'same' });
  });
});

const rng = new Rng();
const K = 96,
  N = 40;
const good = randomPackedWeights(rng, { N, K, bits: 4, groupSize: 32 });
const W: PackedWeights = {
  bits: 4,
  K,
  N,
  groupSize: 32,
  groups: 3,
  zeroOffset: 1,
  qweight: good.qweight,
  qzeros: good.qzeros,
  scales: good.scales,
};
const x = randomMatrix(rng, 2, K);

// Bug: size products wrapped in int64 (2^34 · 2^33 = 0 mod 2^64) and passed the length checks.
describe('sizes whose products overflow → LowbitError, no crash', () => {
  const a = native();
  const huge: Array<[string, () => unknown]> = [
    ['packQweight 2^34 x 2^33', () => a.packQweight(new Uint8Array(64), 2 ** 34, 2 ** 33, 4)],
    ['packQweight 2^32 x 2^32', () => a.packQweight(new Uint8Array(64), 2 ** 32, 2 ** 32, 2)],
    ['unpackQweight 2^40 x 2^30', () => a.unpackQweight(new Int32Array(64), 2 ** 40, 2 ** 30, 8)],
    ['packQzeros 2^32 x 2^32', () => a.packQzeros(new Int32Array(64), 2 ** 32, 2 ** 32, 4, 1)],
    ['unpackQzeros 2^35 x 2^35', () => a.unpackQzeros(new Int32Array(64), 2 ** 35, 2 ** 35, 4, 1)],
    [
      'rtnQuantize 2^32 x 2^32',
      () => a.rtnQuantize(new Float32Array(64), 2 ** 32, 2 ** 32, { bits: 4, groupSize: 128 }),
    ],
    [
      'denseGemm 2^32 rows',
      () => a.denseGemm(new Float32Array(64), 2 ** 32, new Float32Array(64), 2 ** 32, 2 ** 32, new Float32Array(64)),
    ],
    [
      'packedGemm M 2^40',
      () =>
        a.packedGemm(
          new Float32Array(64),
          2 ** 40,
          { ...W, K: 2 ** 30, groupSize: 2 ** 30, groups: 1 },
          new Float32Array(64),
        ),
    ],
    ['packedGemm N 2^50', () => a.packedGemm(x, 1, { ...W, N: 2 ** 50 }, new Float32Array(64))],
    ['dequantize K 2^40 N 2^40', () => a.dequantize({ ...W, K: 2 ** 40, N: 2 ** 40, groupSize: 2 ** 40, groups: 1 })],
    [
      'gptqQuantize 2^32 x 2^32',
      () => a.gptqQuantize(new Float32Array(64), 2 ** 32, 2 ** 32, new Float32Array(64), { bits: 4, groupSize: 128 }),
    ],
    ['convert count 2^62', () => a.convert(new Uint8Array(8), 'f32', new Uint8Array(8), 'f16', 2 ** 62)],
    [
      'convert count 2^61 (products wrap)',
      () => a.convert(new Uint8Array(8), 'f32', new Uint8Array(8), 'f16', 2 ** 53),
    ],
    [
      'opRmsNorm 2^32 x 2^32',
      () => a.opRmsNorm(new Float32Array(8), 2 ** 32, 2 ** 32, new Float32Array(2 ** 10), 1e-5, new Float32Array(8)),
    ],
    [
      'opAttention 2^22 heads',
      () =>
        a.opAttention(
          new Float32Array(8),
          new Float32Array(8),
          new Float32Array(8),
          2 ** 22,
          2 ** 22,
          2 ** 22,
          2 ** 22,
          new Float32Array(8),
        ),
    ],
    [
      'opRope 2^22 heads',
      () => a.opRope(new Float32Array(8), 2 ** 22, 2 ** 22, 2 ** 22, 0, new Float32Array(2 ** 21), 1),
    ],
    ['opNll 2^32 x 2^32', () => a.opNll(new Float32Array(8), 2 ** 32, 2 ** 32, new Int32Array(8), new Float32Array(8))],
    [
      'opLinear 2^32 x 2^32',
      () =>
        a.opLinear(
          new Float32Array(8),
          2 ** 32,
          { dtype: 'f32', data: new Float32Array(8) },
          2 ** 32,
          2 ** 32,
          null,
          new Float32Array(8),
        ),
    ],
    [
      'hessianAddBatch rows 2^50',
      async () => {
        const h = a.hessianCreate(64);
        try {
          return await a.hessianAddBatch(h, new Float32Array(64), 2 ** 50);
        } finally {
          a.hessianFree(h);
        }
      },
    ],
    [
      'NativeModel config 2^40 vocab x 2^40 dim',
      () =>
        new a.NativeModel(
          {
            dim: 2 ** 40,
            hidden: 8,
            layers: 1,
            heads: 1,
            kvHeads: 1,
            headDim: 2,
            vocab: 2 ** 40,
            maxSeq: 8,
            normEps: 1e-5,
            invFreq: new Float32Array(1),
            tieEmbeddings: true,
          },
          -1,
        ),
    ],
    [
      'NativeModel config 2^26 maxSeq x 2^26 heads',
      () =>
        new a.NativeModel(
          {
            dim: 8,
            hidden: 8,
            layers: 2 ** 20,
            heads: 2 ** 20,
            kvHeads: 2 ** 20,
            headDim: 2,
            vocab: 8,
            maxSeq: 2 ** 26,
            normEps: 1e-5,
            invFreq: new Float32Array(1),
            tieEmbeddings: true,
          },
          -1,
        ),
    ],
    ['integer 1e300', () => a.packQweight(new Uint8Array(8), 1e300, 1e300, 4)],
    ['integer NaN / Infinity', () => a.unpackQzeros(new Int32Array(8), NaN, Infinity, 4, 1)],
  ];
  it.each(huge)('%s', async (_, f) => {
    const code = await codeOf(f);
    expect(['E_SHAPE', 'E_BUFFER', 'E_ARGUMENT', 'E_CONFIG', 'E_GROUP_SIZE']).toContain(code);
  });

  it('packCodes validates like every other export (huge N × K, null, wrong types)', async () => {
    const codes = await rtnQuantizeCodes(new Tensor('f32', [N, K], randomMatrix(rng, N, K)), {
      bits: 4,
      groupSize: 32,
    });
    expect(packCodes(codes).qweight.length).toBe((K / 8) * N); // the valid input still packs
    expect(await codeOf(() => packCodes({ ...codes, N: 2 ** 34, K: 2 ** 33 }))).toBe('E_SHAPE');
    expect(['E_BUFFER', 'E_GROUP_SIZE']).toContain(await codeOf(() => packCodes({ ...codes, N: 2 ** 26, K: 2 ** 26 })));
    expect(await codeOf(() => packCodes(null as never))).toBe('E_ARGUMENT');
    expect(await codeOf(() => packCodes(undefined as never))).toBe('E_ARGUMENT');
    expect(await codeOf(() => packCodes({ ...codes, q: null } as never))).toBe('E_DTYPE');
    expect(await codeOf(() => packCodes({ ...codes, scales: new Float64Array(codes.scales.length) } as never))).toBe(
      'E_DTYPE',
    );
    expect(await codeOf(() => packCodes({ ...codes, zeros: codes.zeros.subarray(1) }))).toBe('E_BUFFER');
    expect(await codeOf(() => packCodes({ ...codes, N: 1.5 }))).toBe('E_SHAPE');
    expect(await codeOf(() => packCodes({ ...codes, bits: 5 as 4 }))).toBe('E_BITS');
    expect(await codeOf(() => packCodes({ ...codes, groups: 7 }))).toBe('E_GROUP_SIZE');
    expect(await codeOf(() => packCodes({ ...codes, zeroOffset: 2 as 1 }))).toBe('E_ARGUMENT');
  });
});

/** A copy of a typed array over a SharedArrayBuffer. */
function shared<T extends Float32Array | Int32Array | Uint16Array | Uint8Array>(a: T): T {
  const Ctor = a.constructor as new (buffer: SharedArrayBuffer) => T;
  const s = new Ctor(new SharedArrayBuffer(a.byteLength));
  (s as unknown as { set(v: T): void }).set(a);
  return s;
}

function sharedW(w: PackedWeights): PackedWeights {
  return {
    ...w,
    qweight: shared(w.qweight),
    qzeros: shared(w.qzeros),
    scales: shared(w.scales),
    ...(w.gIdx ? { gIdx: shared(w.gIdx) } : {}),
  };
}

// Bug: every addon entry threw a plain `Error: Invalid argument` for arrays over a SharedArrayBuffer.
// They cannot be detached, so they are read in place (index arrays copied first) and give the same results.
describe('typed arrays over a SharedArrayBuffer work at every entry, with the same results', () => {
  const a = native();
  const Wg = { ...W, gIdx: Int32Array.from({ length: K }, (_, k) => (k * 7) % 3) };
  const Nn = 24,
    Kk = 64;
  const dense = randomMatrix(rng, Nn, Kk);
  const cases: Array<[string, (sab: boolean) => unknown]> = [
    [
      'packedGemm',
      async (sab) => {
        const y = sab ? shared(new Float32Array(2 * N)) : new Float32Array(2 * N);
        await a.packedGemm(sab ? shared(x) : x, 2, sab ? sharedW(Wg) : Wg, y);
        return y;
      },
    ],
    [
      'packedGemmSync',
      (sab) => {
        const y = sab ? shared(new Float32Array(2 * N)) : new Float32Array(2 * N);
        a.packedGemmSync(sab ? shared(x) : x, 2, sab ? sharedW(Wg) : Wg, y);
        return y;
      },
    ],
    ['dequantize', (sab) => a.dequantize(sab ? sharedW(Wg) : Wg)],
    [
      'denseGemm',
      async (sab) => {
        const y = sab ? shared(new Float32Array(2 * Nn)) : new Float32Array(2 * Nn);
        const xs = randomMatrix(new Rng(5), 2, Kk);
        await a.denseGemm(sab ? shared(xs) : xs, 2, sab ? shared(dense) : dense, Nn, Kk, y);
        return y;
      },
    ],
    [
      'rtnQuantize',
      async (sab) =>
        (await a.rtnQuantize(sab ? shared(dense) : dense, Nn, Kk, { bits: 3, groupSize: 32, packZeroOffset: 1 }))
          .qweight,
    ],
    [
      'packQweight / unpackQweight',
      (sab) => {
        const q = Uint8Array.from({ length: Nn * Kk }, (_, i) => (i * 5) % 16);
        const qw = a.packQweight(sab ? shared(q) : q, Nn, Kk, 4);
        return a.unpackQweight(sab ? shared(qw) : qw, Nn, Kk, 4);
      },
    ],
    [
      'packQzeros / unpackQzeros',
      (sab) => {
        const z = Int32Array.from({ length: 3 * Nn }, (_, i) => 1 + (i % 7));
        const qz = a.packQzeros(sab ? shared(z) : z, 3, Nn, 3, 1);
        return a.unpackQzeros(sab ? shared(qz) : qz, 3, Nn, 3, 1);
      },
    ],
    [
      'convert',
      (sab) => {
        const src = new Uint8Array(dense.buffer.slice(0, 64));
        const dst = sab ? shared(new Uint8Array(32)) : new Uint8Array(32);
        a.convert(sab ? shared(src) : src, 'f32', dst, 'bf16', 16);
        return dst;
      },
    ],
    [
      'hessianAddBatch / gptqQuantize',
      async (sab) => {
        const h = a.hessianCreate(Kk);
        const X = randomMatrix(new Rng(9), 100, Kk);
        await a.hessianAddBatch(h, sab ? shared(X) : X, 100);
        const H = a.hessianRead(h);
        a.hessianFree(h);
        return (
          await a.gptqQuantize(sab ? shared(dense) : dense, Nn, Kk, sab ? shared(H) : H, { bits: 4, groupSize: 32 })
        ).qweight;
      },
    ],
    [
      'opRmsNorm / opSwiglu / opNll',
      (sab) => {
        const s = <T extends Float32Array | Int32Array>(v: T) => (sab ? shared(v) : v);
        const out = s(new Float32Array(Nn * Kk));
        a.opRmsNorm(s(dense), Nn, Kk, s(dense.slice(0, Kk)), 1e-5, out);
        const sw = s(new Float32Array(Kk));
        a.opSwiglu(s(dense.slice(0, Kk)), s(dense.slice(Kk, 2 * Kk)), sw);
        const nll = s(new Float32Array(Nn));
        a.opNll(s(dense), Nn, Kk, s(Int32Array.from({ length: Nn }, (_, i) => i % Kk)), nll);
        return [out, sw, nll].flatMap((v) => Array.from(v));
      },
    ],
    [
      'opLinear / opRope / opAttention',
      (sab) => {
        const s = <T extends Float32Array>(v: T) => (sab ? shared(v) : v);
        const out = s(new Float32Array(2 * Nn));
        a.opLinear(s(dense.slice(0, 2 * Kk)), 2, { dtype: 'f32', data: s(dense) }, Nn, Kk, s(dense.slice(0, Nn)), out);
        const r = s(dense.slice(0, 4 * 16));
        a.opRope(r, 4, 1, 16, 3, s(new Float32Array(8).fill(0.1)), 1);
        const att = s(new Float32Array(4 * 16));
        a.opAttention(s(dense.slice(0, 64)), s(dense.slice(64, 128)), s(dense.slice(128, 192)), 4, 1, 1, 16, att);
        return [out, r, att].flatMap((v) => Array.from(v));
      },
    ],
  ];
  it.each(cases)('%s', async (_, f) => {
    const plain = await f(false);
    const viaShared = await f(true);
    expect(Array.from(viaShared as ArrayLike<number>)).toEqual(Array.from(plain as ArrayLike<number>));
  });

  it('the NativeModel methods', async () => {
    const config = llamaConfig({
      dim: 32,
      hidden: 48,
      layers: 1,
      heads: 4,
      kvHeads: 2,
      headDim: 8,
      vocab: 50,
      maxSeq: 16,
      tied: true,
      qkvBias: false,
    });
    const run = async (sab: boolean) => {
      const s = <T extends Float32Array | Int32Array>(v: T) => (sab ? shared(v) : v);
      const model = Model.create(config);
      const r = new Rng(77);
      await model.setGlobals({
        embed: { dtype: 'f32', data: s(randomMatrix(r, 50, 32)) },
        finalNorm: s(new Float32Array(32).fill(1)),
      });
      const dims: Record<string, [number, number]> = {
        q: [32, 32],
        k: [16, 32],
        v: [16, 32],
        o: [32, 32],
        gate: [48, 32],
        up: [48, 32],
        down: [32, 48],
      };
      const block = { attnNorm: s(new Float32Array(32).fill(1)), mlpNorm: s(new Float32Array(32).fill(1)) } as Record<
        string,
        unknown
      >;
      for (const [name, [n, k]] of Object.entries(dims))
        block[name] = { dtype: 'f32', data: s(randomMatrix(r, n, k, { scale: 0.2 })) };
      await model.setBlockWeights(0, block as never);
      const ids = s(Int32Array.from({ length: 6 }, (_, i) => (i * 7) % 50));
      const handle = (model as unknown as { handle: import('../../src/native.js').NativeModel }).handle;
      const out = s(new Float32Array(6 * 50));
      await handle.logits(ids, 1, 6, out);
      const hidden = s(new Float32Array(6 * 32));
      await handle.embed(ids, hidden);
      await handle.runBlock(0, hidden, 1, 6);
      const seqId = await handle.createSequence(8);
      const last = s(new Float32Array(50));
      await handle.decode(seqId, ids, last);
      await model.close();
      return [...out, ...hidden, ...last];
    };
    expect(await run(true)).toEqual(await run(false));
  });
});

// Every export of the addon, fed null, undefined and wrong types: a result or a LowbitError, never a
// TypeError, a plain Error or a crash.
describe('null, undefined and wrong types at every export', () => {
  const a = native() as unknown as Record<string, (...args: unknown[]) => unknown>;
  const junk: unknown[] = [
    undefined,
    null,
    0,
    -1,
    1.5,
    NaN,
    2 ** 60,
    'x',
    {},
    [],
    () => 1,
    Symbol('s'),
    10n,
    new Float64Array(4),
    shared(new Float32Array(4)),
    new Uint8Array(0),
  ];
  const skip = new Set(['setThreads', 'forceSimd', 'NativeModel']); // global state, or a class (below)
  const names = Object.keys(a).filter((n) => typeof a[n] === 'function' && !skip.has(n));

  it('lists every export of src/native.ts Addon', () => {
    for (const n of [
      'rtnQuantize',
      'packQweight',
      'unpackQweight',
      'packQzeros',
      'unpackQzeros',
      'packedGemm',
      'packedGemmSync',
      'dequantize',
      'denseGemm',
      'convert',
      'opRmsNorm',
      'opRope',
      'opAttention',
      'opSwiglu',
      'opLinear',
      'opNll',
      'hessianCreate',
      'hessianAddBatch',
      'hessianSamples',
      'hessianRead',
      'hessianFree',
      'gptqQuantize',
      'buildInfo',
      'cudaDevices',
    ]) {
      expect(names).toContain(n);
    }
  });

  it.each(names)('%s', async (name) => {
    for (const v of junk) {
      for (const args of [[], [v], [v, v, v, v, v, v, v, v], [x, v, W, v, v], [v, 2, 3, 4, 1]])
        await outcome(() => a[name]!(...args));
    }
  });

  it('setThreads / forceSimd', async () => {
    const before = a.buildInfo!() as { threads: number };
    for (const v of junk) {
      await outcome(() => a.setThreads!(v));
      await outcome(() => a.forceSimd!(v));
    }
    a.forceSimd!('auto');
    a.setThreads!(0);
    expect((a.buildInfo!() as { threads: number }).threads).toBe(before.threads);
  });

  it('NativeModel constructor and methods', async () => {
    const Ctor = native().NativeModel as unknown as new (
      ...args: unknown[]
    ) => Record<string, (...args: unknown[]) => unknown>;
    for (const v of junk) await outcome(() => new Ctor(v, v));
    const model = new Ctor(
      {
        dim: 8,
        hidden: 8,
        layers: 1,
        heads: 2,
        kvHeads: 1,
        headDim: 4,
        vocab: 10,
        maxSeq: 8,
        normEps: 1e-5,
        invFreq: new Float32Array(2),
        tieEmbeddings: true,
      },
      -1,
    );
    const methods = [
      'setGlobals',
      'setBlock',
      'setLinear',
      'dropBlock',
      'embed',
      'runBlock',
      'head',
      'logits',
      'nll',
      'createSequence',
      'freeSequence',
      'decode',
      'cacheBytes',
      'weightBytes',
    ];
    for (const m of methods) {
      for (const v of junk)
        for (const args of [[], [v], [v, v, v, v, v], [0, v, 1, 1, v]]) await outcome(() => model[m]!(...args));
    }
    model.close!();
  });
});

// Bug: a Session never closed kept its KV cache until model.close() (3,000 sessions: 2 GB).
describe('KV caches of sessions that are never closed', () => {
  // (cacheBytes is the amount reported to V8 through AdjustExternalMemory, which Node's
  // memoryUsage() does not show.)
  it('are reported to V8 and freed when the sessions are garbage-collected', async () => {
    setFlagsFromString('--expose-gc');
    const gc = runInNewContext('gc') as () => void;
    const shape = {
      dim: 64,
      hidden: 96,
      layers: 2,
      heads: 4,
      kvHeads: 2,
      headDim: 16,
      vocab: 50,
      maxSeq: 256,
      tied: true,
      qkvBias: false,
    };
    const model = Model.create(llamaConfig(shape));
    const perSession = 2 * shape.layers * shape.kvHeads * shape.headDim * 256 * 4;
    let sessions: unknown[] = [];
    for (let i = 0; i < 40; i++) sessions.push(await model.createSession(256));
    expect(model.cacheBytes).toBe(40 * perSession);
    const closed = (await model.createSession(256)) as { close(): void };
    closed.close(); // closed ones are not counted (and not freed twice by the registry)
    expect(model.cacheBytes).toBe(40 * perSession);
    sessions = [];
    for (let i = 0; i < 20 && model.cacheBytes > 0; i++) {
      gc();
      await new Promise((r) => setTimeout(r, 10)); // FinalizationRegistry callbacks run as tasks
    }
    expect(sessions.length).toBe(0);
    expect(model.cacheBytes).toBe(0);
    await model.close();
  });
});

it('every error code the binding can produce is a LowbitError code', () => {
  for (const c of ['E_DETACHED', 'E_SHAPE', 'E_BUFFER', 'E_ARGUMENT', 'E_DTYPE']) expect(ERROR_CODES).toContain(c);
});

/**
 * The fp16/bf16 forward pass on CUDA (Model dtype 'f16' | 'bf16') against the f32 forward pass on the
 * same device and weights (which test/model holds to the float64 reference at 1e-4). Needs a CUDA
 * device: elsewhere the GPU blocks skip with the reason; the option checks at the end run everywhere.
 *
 * Tolerances come from the unit roundoff u of the activations' type (2^-8 for bf16, 2^-11 for f16).
 * Along one block the 16-bit pass rounds about seven activations (the norm's output, q, k, v,
 * attention's output, the projections, gate/up/SwiGLU), each by at most u relative, independently;
 * over a few blocks and the head that is some sqrt(40) ≈ 6 roundings' worth, so the logits must lie
 * within 16u of f32's in relative norm (‖Δ‖/‖ref‖). The perplexity, a mean of log-probabilities whose
 * per-token errors largely cancel, must stay within 4u relative. Greedy generation must pick f32's
 * tokens for the first 16 steps. A wrong mask, key range, GQA head map, split merge or RoPE position
 * moves logits by O(1), far past these bounds.
 */
import { readFileSync } from 'node:fs';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { LowbitError } from '../../src/errors.js';
import { Model, openModel, type ModelDtype, type Session } from '../../src/model/model.js';
import { generateTokens } from '../../src/model/generate.js';
import { perplexity, perplexityIds } from '../../src/model/perplexity.js';
import { native, type PackedWeights } from '../../src/native.js';
import { dataPath } from '../model/data.js';
import { llamaConfig, randomModel, type TinyShape } from '../model/random-model.js';
import { cudaAvailability, randomSeed, relativeError } from './ref.js';

const cuda = cudaAvailability();
if (!cuda.ok) console.log(`test/cuda/forward16.test.ts: CUDA tests skipped: ${cuda.reason}`);

type Half = 'f16' | 'bf16';
const HALVES: Half[] = ['bf16', 'f16'];
const UNIT: Record<Half, number> = { f16: 2 ** -11, bf16: 2 ** -8 };
const LOGITS_TOL = (dt: Half) => 16 * UNIT[dt];
const PPL_TOL = (dt: Half) => 4 * UNIT[dt];
const seed = randomSeed();

describe.skipIf(!cuda.ok)(`stories260K in 16 bits (skipped without a GPU: ${cuda.reason || 'none'})`, () => {
  const models = new Map<ModelDtype, Model>();
  let ids: Int32Array;
  beforeAll(async () => {
    for (const dtype of ['f32', 'bf16', 'f16'] as const)
      models.set(dtype, await openModel(dataPath('stories260K-hf'), { device: 'cuda', dtype }));
    ids = perplexityIds(models.get('f32')!, readFileSync(dataPath('tinystories-valid.txt'), 'utf8'));
  });
  afterAll(async () => {
    for (const m of models.values()) await m.close();
  });

  it.each(HALVES)('%s: the model reports its dtype and holds 16-bit weights', (dt) => {
    const m = models.get(dt)!;
    expect(m.dtype).toBe(dt);
    expect(models.get('f32')!.dtype).toBe('f32');
    // every weight but the norms is stored in 16 bits: about half of the f32 model's bytes
    expect(m.weightBytes / models.get('f32')!.weightBytes).toBeLessThan(0.56);
  });

  it.each(HALVES)("%s: window 0's logits within 16u of f32's (relative norm)", async (dt) => {
    const window = ids.subarray(0, 512);
    const ref = await models.get('f32')!.logits(window);
    const got = await models.get(dt)!.logits(window);
    const err = relativeError(got, ref);
    console.log(`stories260K ${dt}: logits relative error ${err.toExponential(3)} (bound ${LOGITS_TOL(dt)})`);
    expect(err).toBeLessThanOrEqual(LOGITS_TOL(dt));
  });

  it.each(HALVES)('%s: perplexity over all windows within 4u of f32 (relative)', async (dt) => {
    const ref = await perplexity(models.get('f32')!, ids, { seqLen: 512, batch: 4 });
    const got = await perplexity(models.get(dt)!, ids, { seqLen: 512, batch: 4 });
    const rel = Math.abs(got.ppl / ref.ppl - 1);
    console.log(
      `stories260K ${dt}: ppl ${got.ppl.toFixed(5)} vs f32 ${ref.ppl.toFixed(5)} (relative ${rel.toExponential(3)})`,
    );
    expect(got.windows).toBe(ref.windows);
    expect(rel).toBeLessThanOrEqual(PPL_TOL(dt));
  });

  it.each(HALVES)('%s: greedy generation picks the f32 tokens for the first 16 steps', async (dt) => {
    const prompt = ids.subarray(0, 9);
    const run = async (m: Model) => {
      const out: number[] = [];
      for await (const t of generateTokens(m, prompt, { temperature: 0, maxTokens: 16, stopIds: [] })) out.push(t);
      return out;
    };
    const ref = await run(models.get('f32')!);
    expect(ref.length).toBe(16);
    expect(await run(models.get(dt)!)).toEqual(ref);
  });
});

// Odd shapes for attention: GQA, head sizes that leave lanes idle (24, 40, 72) or need 8 values per
// lane (136), head sizes of the tensor-core prefill kernel (64, 128) with sequences that fill no
// 64-row or 64-key tile (33, 130), and decode steps long enough for the split-K path (several key
// ranges merged).
const shapes: Record<string, TinyShape> = {
  'GQA 6/3 heads of 24': {
    dim: 48,
    hidden: 61,
    layers: 2,
    heads: 6,
    kvHeads: 3,
    headDim: 24,
    vocab: 71,
    maxSeq: 400,
    tied: false,
    qkvBias: true,
  },
  'GQA 4/1 heads of 40': {
    dim: 72,
    hidden: 50,
    layers: 2,
    heads: 4,
    kvHeads: 1,
    headDim: 40,
    vocab: 53,
    maxSeq: 400,
    tied: true,
    qkvBias: false,
  },
  'MHA 3 heads of 72': {
    dim: 40,
    hidden: 33,
    layers: 1,
    heads: 3,
    kvHeads: 3,
    headDim: 72,
    vocab: 45,
    maxSeq: 400,
    tied: false,
    qkvBias: false,
  },
  // head sizes the tensor-core prefill kernel takes (64, 128): sequences of 16 rows or more
  'GQA 4/2 heads of 64': {
    dim: 96,
    hidden: 70,
    layers: 2,
    heads: 4,
    kvHeads: 2,
    headDim: 64,
    vocab: 61,
    maxSeq: 400,
    tied: false,
    qkvBias: true,
  },
  'MHA 4 heads of 128': {
    dim: 64,
    hidden: 48,
    layers: 1,
    heads: 4,
    kvHeads: 4,
    headDim: 128,
    vocab: 43,
    maxSeq: 400,
    tied: true,
    qkvBias: false,
  },
  'GQA 2/1 heads of 136': {
    dim: 64,
    hidden: 40,
    layers: 1,
    heads: 2,
    kvHeads: 1,
    headDim: 136,
    vocab: 39,
    maxSeq: 400,
    tied: true,
    qkvBias: false,
  },
};

function randomIds(n: number, vocab: number, salt: number): Int32Array {
  return Int32Array.from({ length: n }, (_, i) => (((i + 1) * 2654435761 + salt * 97 + seed) >>> 0) % vocab);
}

async function build(shape: TinyShape, dtype: ModelDtype, s: number): Promise<Model> {
  const config = llamaConfig(shape);
  const model = Model.create(config, { device: 'cuda', dtype });
  const tiny = randomModel(shape, model.nativeConfig.invFreq, s);
  await model.setGlobals({
    embed: { dtype: 'f32', data: tiny.embed },
    finalNorm: tiny.finalNorm,
    head: tiny.head ? { dtype: 'f32', data: tiny.head } : undefined,
  });
  for (let b = 0; b < shape.layers; b++) await model.setBlockWeights(b, tiny.blocks[b]!);
  return model;
}

function expectClose(name: string, got: Float32Array, ref: Float32Array, dt: Half): void {
  const err = relativeError(got, ref);
  expect(err, `${name}: relative error ${err} (bound ${LOGITS_TOL(dt)}, seed ${seed})`).toBeLessThanOrEqual(
    LOGITS_TOL(dt),
  );
}

describe.skipIf(!cuda.ok)(`16-bit attention on odd shapes (skipped without a GPU: ${cuda.reason || 'none'})`, () => {
  describe.each(Object.entries(shapes))('%s', (_, shape) => {
    it.each(HALVES)('%s: batched logits (2 sequences of 1, 7, 33 and 130 tokens) match f32', async (dt) => {
      const ref = await build(shape, 'f32', seed);
      const half = await build(shape, dt, seed);
      for (const S of [1, 7, 33, 130]) {
        const ids = randomIds(2 * S, shape.vocab, S);
        expectClose(
          `S ${S}`,
          await half.logits(ids, { batch: 2, seq: S }),
          await ref.logits(ids, { batch: 2, seq: S }),
          dt,
        );
      }
      await ref.close();
      await half.close();
    });

    // Runs of one-token steps replay the captured step graph (positions read on the device); the
    // pieces between them run eagerly and force a new capture. The same steps with graphs off
    // (LOWBIT_CUDA_GRAPHS=0, read when a model is made) must give bit-identical logits.
    it.each(HALVES)(
      '%s: KV-cached decoding of 361 tokens in pieces (split key ranges, graph replays) matches f32',
      async (dt) => {
        const ref = await build(shape, 'f32', seed + 1);
        const half = await build(shape, dt, seed + 1);
        process.env.LOWBIT_CUDA_GRAPHS = '0';
        const eager = await build(shape, dt, seed + 1);
        delete process.env.LOWBIT_CUDA_GRAPHS;
        const ids = randomIds(390, shape.vocab, 3);
        const whole = await ref.logits(ids);
        const session = await half.createSession(390);
        const eagerSession = await eager.createSession(390);
        // 200 and 140 rows: prefill-sized pieces (the tensor-core kernel for head sizes 64 and 128, the
        // second at position 215); 5: a short piece (split key ranges)
        const pieces = [200, 1, 1, 1, 1, 1, 1, 5, 1, 1, 1, 140, 1, 1, 1, 1, 1, 2];
        let at = 0;
        for (const piece of pieces) {
          const last = await session.feed(ids.subarray(at, at + piece));
          const lastEager = await eagerSession.feed(ids.subarray(at, at + piece));
          at += piece;
          expectClose(`decode after ${at}`, last, whole.subarray((at - 1) * shape.vocab, at * shape.vocab), dt);
          expect(Array.from(last), `graph vs eager after ${at}`).toEqual(Array.from(lastEager));
        }
        expect(at).toBe(361);
        session.close();
        eagerSession.close();
        for (const m of [ref, half, eager]) await m.close();
      },
    );
  });

  // The decode step's RoPE, KV append, attention and split merge run as one launch (head sizes 64,
  // 128, 256; the shapes of 64 and 128 here) or as three kernels (LOWBIT_CUDA_FUSED_DECODE=0, read
  // when a model is made): the same values bit for bit, for one session and for three sessions of
  // different lengths batched (a bucket of 4 with a padding row), over steps that cross pages and
  // leave some key splits empty (7 splits of a few keys at the 3-token session's start). Catches a
  // fresh key or query rotated differently, the new key or value written to the wrong slot or not at
  // all (later steps read it back from the page), a merge done by the wrong block or missing, and a
  // merge counter not left at zero (the next replay would merge early or never).
  describe.each(Object.entries(shapes).filter(([, sh]) => [64, 128, 256].includes(sh.headDim)))('%s', (_, shape) => {
    it.each(HALVES)('%s: fused decode attention equals the separate kernels bit for bit', async (dt) => {
      const fused = await build(shape, dt, seed + 3);
      process.env.LOWBIT_CUDA_FUSED_DECODE = '0';
      const apart = await build(shape, dt, seed + 3);
      delete process.env.LOWBIT_CUDA_FUSED_DECODE;
      const ids = randomIds(300, shape.vocab, 11);
      const prompts = [37, 90, 3];
      const run = async (m: Model): Promise<Float32Array[]> => {
        const sessions: Session[] = [];
        const out: Float32Array[] = [];
        for (const n of prompts) {
          const s = await m.createSession(300);
          out.push(await s.feed(ids.subarray(0, n)));
          sessions.push(s);
        }
        for (let step = 0; step < 40; step++) {
          out.push(await sessions[0]!.feed(ids.subarray(100 + step, 101 + step)));
          out.push(
            await m.feedBatch(
              sessions,
              Int32Array.from(sessions, (_, b) => ids[200 + 3 * step + b]!),
            ),
          );
        }
        for (const s of sessions) s.close();
        return out;
      };
      const got = await run(fused);
      const want = await run(apart);
      expect(got.length).toBe(want.length);
      got.forEach((g, i) => expect(Array.from(g), `output ${i}`).toEqual(Array.from(want[i]!)));
      await fused.close();
      await apart.close();
    });
  });

  // Block 0: gate, up, k and v packed (gate on the main stream, k, v and up on side streams, joined
  // before RoPE and SwiGLU; their dense groups dissolved); block 1: q replaced by other dense weights
  // (rewritten in place in its q/k/v group). Prefill and graph-replayed decode steps against f32.
  it.each(HALVES)('%s: packed (4-bit) and replaced linears: prefill and decode steps match f32', async (dt) => {
    const addon = native();
    const shape = shapes['GQA 6/3 heads of 24']!;
    const tiny = randomModel(shape, new Float32Array(shape.headDim / 2), seed + 2);
    const packedOf = async (name: 'gate' | 'up' | 'k' | 'v', N: number, K: number): Promise<PackedWeights> => {
      const bits = 4 as const,
        groupSize = 16;
      const r = await addon.rtnQuantize(tiny.ref.blocks[0]!.weights[name] as Float32Array, N, K, { bits, groupSize });
      const scales = new Uint16Array(r.scales.length);
      addon.convert(new Uint8Array(r.scales.buffer), 'f32', new Uint8Array(scales.buffer), 'f16', r.scales.length);
      return {
        bits,
        K,
        N,
        groupSize,
        groups: r.groups,
        zeroOffset: 0,
        qweight: addon.packQweight(r.q, N, K, bits),
        qzeros: addon.packQzeros(r.zeros, r.groups, N, bits, 0),
        scales,
      };
    };
    const kw = shape.kvHeads * shape.headDim;
    const replacements = {
      gate: await packedOf('gate', shape.hidden, shape.dim),
      up: await packedOf('up', shape.hidden, shape.dim),
      k: await packedOf('k', kw, shape.dim),
      v: await packedOf('v', kw, shape.dim),
    };
    const other = randomModel(shape, new Float32Array(shape.headDim / 2), seed + 5).blocks[1]!.q;
    const ref = await build(shape, 'f32', seed + 2);
    const half = await build(shape, dt, seed + 2);
    for (const m of [ref, half]) {
      for (const [name, packed] of Object.entries(replacements)) await m.setLinear(0, name as 'gate', { packed });
      await m.setLinear(1, 'q', other);
    }
    const ids = randomIds(60, shape.vocab, 7);
    const whole = await ref.logits(ids);
    expectClose('logits', await half.logits(ids), whole, dt);
    const session = await half.createSession(60);
    let at = 0;
    for (const piece of [50, 1, 1, 1, 1, 1, 1]) {
      const last = await session.feed(ids.subarray(at, at + piece));
      at += piece;
      expectClose(`decode after ${at}`, last, whole.subarray((at - 1) * shape.vocab, at * shape.vocab), dt);
    }
    session.close();
    await ref.close();
    await half.close();
  });
});

// q/k/v and gate/up packed alike (bits, groups, act-order permutation) run as one product each
// (cuda/llama16.cu make_packed_group over concat_packed_columns); q with another permutation than
// k and v leaves q/k/v apart while gate/up still join. Each model is built twice: whole blocks at once
// (where groups form) and dense blocks whose linears are then replaced one by one (no group).
describe.skipIf(!cuda.ok)(`packed groups (skipped without a GPU: ${cuda.reason || 'none'})`, () => {
  const shape: TinyShape = {
    dim: 64,
    hidden: 96,
    layers: 2,
    heads: 4,
    kvHeads: 2,
    headDim: 16,
    vocab: 67,
    maxSeq: 128,
    tied: false,
    qkvBias: true,
  };
  const grouped = ['q', 'k', 'v', 'gate', 'up'] as const;
  const groups = shape.dim / 16;
  // act-order style: groups not in the order of K (two different assignments)
  const orderA = Int32Array.from({ length: shape.dim }, (_, k) => (k * 5 + 3) % groups);
  const orderB = Int32Array.from({ length: shape.dim }, (_, k) => (k * 3 + 1) % groups);

  async function packedBlocks(gIdx: (name: string) => Int32Array | undefined) {
    const addon = native();
    const tiny = randomModel(shape, new Float32Array(shape.headDim / 2), seed + 8);
    const blocks = [];
    for (const block of tiny.blocks) {
      const out: Record<string, unknown> = { ...block };
      for (const name of grouped) {
        const w = block[name] as { data: Float32Array; bias?: Float32Array };
        const K = shape.dim,
          N = w.data.length / K;
        const r = await addon.rtnQuantize(w.data, N, K, { bits: 4, groupSize: 16 });
        const scales = new Uint16Array(r.scales.length);
        addon.convert(new Uint8Array(r.scales.buffer), 'f32', new Uint8Array(scales.buffer), 'f16', r.scales.length);
        const packed: PackedWeights = {
          bits: 4,
          K,
          N,
          groupSize: 16,
          groups: r.groups,
          zeroOffset: 0,
          qweight: addon.packQweight(r.q, N, K, 4),
          qzeros: addon.packQzeros(r.zeros, r.groups, N, 4, 0),
          scales,
          gIdx: gIdx(name),
        };
        out[name] = { packed, bias: w.bias };
      }
      blocks.push(out as unknown as (typeof tiny.blocks)[number]);
    }
    return { tiny, blocks };
  }

  // whole: setBlockWeights with the packed linears (groups form); else dense blocks, then setLinear
  async function load(dtype: ModelDtype, gIdx: (name: string) => Int32Array | undefined, whole: boolean) {
    const { tiny, blocks } = await packedBlocks(gIdx);
    const model = Model.create(llamaConfig(shape), { device: 'cuda', dtype });
    await model.setGlobals({
      embed: { dtype: 'f32', data: tiny.embed },
      finalNorm: tiny.finalNorm,
      head: tiny.head ? { dtype: 'f32', data: tiny.head } : undefined,
    });
    for (let b = 0; b < shape.layers; b++) {
      await model.setBlockWeights(b, whole ? blocks[b]! : tiny.blocks[b]!);
      if (!whole) for (const name of grouped) await model.setLinear(b, name, blocks[b]![name] as never);
    }
    return model;
  }

  const cases = {
    'one act-order permutation (q/k/v and gate/up joined)': () => orderA,
    'q permuted unlike k and v (q/k/v apart, gate/up joined)': (name: string) => (name === 'q' ? orderB : orderA),
    'no permutation (both joined)': () => undefined,
  };
  describe.each(Object.entries(cases))('%s', (label, gIdx) => {
    it.each(HALVES)('%s: prefill, decode and batched decode match f32 and the linears run apart', async (dt) => {
      // catches: a member's columns taken from another member (offsets), its bias misplaced, q, k or
      // v read with the wrong row stride in a batched step, permutations that differ joined anyway
      // (q multiplied in k's order of K), and (weightBytes) a group that never formed
      const ref = await load('f32', gIdx, true);
      const joined = await load(dt, gIdx, true);
      const apart = await load(dt, gIdx, false);
      // one matrix padded to 128 columns instead of each member (gptq-tc's repack): fewer bytes
      if (label.includes('q/k/v and gate/up joined') || label.includes('both joined'))
        expect(joined.weightBytes).toBeLessThan(apart.weightBytes);
      const ids = randomIds(40, shape.vocab, 11);
      const whole = await ref.logits(ids);
      expectClose('prefill', await joined.logits(ids), whole, dt);
      // sessions of 20, 9 and 33 tokens, then batched steps of all three and single steps of one
      const prompts = [ids.subarray(0, 20), ids.subarray(3, 12), ids.subarray(5, 38)];
      const open = async (m: Model) => {
        const ss: Session[] = [];
        for (const p of prompts) {
          const s = await m.createSession(64);
          await s.feed(p);
          ss.push(s);
        }
        return ss;
      };
      const [rs, js, as] = [await open(ref), await open(joined), await open(apart)];
      const vocab = shape.vocab;
      for (let t = 0; t < 5; t++) {
        const step = Int32Array.from(prompts, (_, i) => ids[(7 * t + 5 * i) % ids.length]!);
        const r = await ref.feedBatch(rs, step);
        const j = await joined.feedBatch(js, step);
        const a = await apart.feedBatch(as, step);
        for (let i = 0; i < prompts.length; i++) {
          const row = (x: Float32Array) => x.subarray(i * vocab, (i + 1) * vocab);
          expectClose(`batched step ${t} row ${i}`, row(j), row(r), dt);
          // the same kernels per output column: equal to f32 noise
          expect(relativeError(row(j), row(a)), `batched step ${t} row ${i}: joined vs apart`).toBeLessThanOrEqual(
            1e-6,
          );
        }
        const r1 = await rs[0]!.feed(Int32Array.of(step[0]!));
        const j1 = await js[0]!.feed(Int32Array.of(step[0]!));
        const a1 = await as[0]!.feed(Int32Array.of(step[0]!));
        expectClose(`step ${t}`, j1, r1, dt);
        expect(relativeError(j1, a1), `step ${t}: joined vs apart`).toBeLessThanOrEqual(1e-6);
      }
      for (const s of [...rs, ...js, ...as]) s.close();
      for (const m of [ref, joined, apart]) await m.close();
    });
  });
});

describe.skipIf(!cuda.ok)(`the 16-bit block API (skipped without a GPU: ${cuda.reason || 'none'})`, () => {
  // Calibration-style calls in 16 bits: embed -> runBlock with every capture point (16-bit inputs
  // widened for the caller) -> head, against the f32 pass; stopAfter leaves hidden unchanged.
  it.each(HALVES)('%s: embed, runBlock with captures, head and stopAfter match f32', async (dt) => {
    const shape = shapes['GQA 4/2 heads of 64']!;
    const ref = await build(shape, 'f32', seed + 6);
    const half = await build(shape, dt, seed + 6);
    const ids = randomIds(2 * 21, shape.vocab, 9);
    let h32 = await ref.embed(ids);
    let h16 = await half.embed(ids);
    expectClose('embed (the table rounded to 16 bits)', h16, h32, dt);
    const capture = ['qkv', 'o', 'gateUp', 'down'] as const;
    for (let b = 0; b < shape.layers; b++) {
      const r32 = await ref.runBlock(b, h32, { batch: 2, seq: 21, capture });
      const r16 = await half.runBlock(b, h16, { batch: 2, seq: 21, capture });
      for (const p of capture) expectClose(`block ${b} ${p}`, r16.inputs[p]!, r32.inputs[p]!, dt);
      expectClose(`block ${b} hidden`, r16.hidden, r32.hidden, dt);
      const stopped = await half.runBlock(b, h16, { batch: 2, seq: 21, capture: ['o'], stopAfter: 'o' });
      expect(Array.from(stopped.hidden)).toEqual(Array.from(h16));
      h32 = r32.hidden;
      h16 = r16.hidden;
    }
    expectClose('head', await half.head(h16, 42), await ref.head(h32, 42), dt);
    await ref.close();
    await half.close();
  });
});

describe('the dtype option', () => {
  const shape = shapes['MHA 3 heads of 72']!;
  it("16-bit activations on the CPU are E_UNSUPPORTED naming options.dtype; 'f32' and the default work", async () => {
    for (const dtype of ['bf16', 'f16'] as const) {
      let err: unknown;
      try {
        Model.create(llamaConfig(shape), { device: 'cpu', dtype });
      } catch (e) {
        err = e;
      }
      expect(err).toBeInstanceOf(LowbitError);
      expect((err as LowbitError).code).toBe('E_UNSUPPORTED');
      expect((err as LowbitError).message).toContain('options.dtype');
    }
    for (const dtype of [undefined, 'auto', 'f32'] as const) {
      const m = Model.create(llamaConfig(shape), { device: 'cpu', dtype });
      expect(m.dtype).toBe('f32');
      await m.close();
    }
  });
  it('an unknown dtype is E_ARGUMENT; the addon refuses one too (E_DTYPE)', async () => {
    expect(() => Model.create(llamaConfig(shape), { device: 'cpu', dtype: 'fp8' as 'f32' })).toThrow(LowbitError);
    const m = Model.create(llamaConfig(shape), { device: 'cpu' });
    const nc = m.nativeConfig;
    await m.close();
    const Ctor = native().NativeModel;
    expect(() => new Ctor(nc, -1, { dtype: 'fp8' as 'f32' })).toThrow(/options.dtype must be 'f32', 'f16' or 'bf16'/);
    expect(() => new Ctor(nc, -1, { dtype: 'bf16' })).toThrow(/computes in f32/);
  });
});

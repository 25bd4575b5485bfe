/**
 * Whole random tiny models (odd shapes, GQA, q/k/v biases, tied and untied heads) through the native
 * CPU forward pass against the float64 reference: logits, NLL, the block API with captured linear
 * inputs, KV-cached decoding, a packed linear, and the lifecycle errors.
 */
import { afterAll, describe, expect, test } from 'vitest';
import { testDevice } from './data.js';
import { native, type PackedWeights } from '../../src/native.js';
import { Model } from '../../src/model/model.js';
import { nativeModelConfig } from '../../src/model/model.js';
import { LowbitError } from '../../src/errors.js';
import { refBlock, refEmbed, refHead, refLogits, refNll } from './reference.js';
import { llamaConfig, randomModel, worst, type TinyShape } from './random-model.js';

const seed = Math.floor(Math.random() * 2 ** 31);
const addon = native();

const shapes: Record<string, TinyShape> = {
  'GQA, biases, untied head': {
    dim: 24,
    hidden: 37,
    layers: 2,
    heads: 4,
    kvHeads: 2,
    headDim: 6,
    vocab: 50,
    maxSeq: 64,
    tied: false,
    qkvBias: true,
  },
  'MHA, tied head, 16-wide head': {
    dim: 32,
    hidden: 45,
    layers: 3,
    heads: 2,
    kvHeads: 2,
    headDim: 16,
    vocab: 37,
    maxSeq: 48,
    tied: true,
    qkvBias: false,
  },
};

function check(name: string, got: ArrayLike<number>, want: ArrayLike<number>, atol = 2e-4, rtol = 2e-4): void {
  const w = worst(got, want, atol, rtol);
  expect(w.ratio, `${name}: worst at ${w.index}: ${w.a} vs ${w.b} (seed ${seed})`).toBeLessThanOrEqual(1);
}

async function build(shape: TinyShape, s: number) {
  const config = llamaConfig(shape);
  // exact f32 activations in packed linears: these tests hold the forward pass to the float64
  // reference (the int8 default is checked against this path in cpu-int8.test.ts)
  const model = Model.create(config, { device: testDevice, cpuActivations: 'f32' });
  const tiny = randomModel(shape, model.nativeConfig.invFreq, s);
  await model.setGlobals({
    embed: { dtype: 'f32', data: tiny.embed },
    finalNorm: tiny.finalNorm,
    head: tiny.head ? { dtype: 'f32', data: tiny.head } : undefined,
  });
  for (let b = 0; b < shape.layers; b++) await model.setBlockWeights(b, tiny.blocks[b]!);
  return { model, tiny };
}

function randomIds(n: number, vocab: number, salt: number): Int32Array {
  return Int32Array.from({ length: n }, (_, i) => (((i + 1) * 2654435761 + salt * 97 + seed) >>> 0) % vocab);
}

afterAll(() => addon.forceSimd('auto'));

describe.each(Object.entries(shapes))('%s', (_, shape) => {
  test('logits and NLL of a batch match the float64 reference', async () => {
    const { model, tiny } = await build(shape, seed);
    const seq = 23,
      batch = 2;
    const ids = randomIds(batch * seq, shape.vocab, 1);
    const logits = await model.logits(ids, { batch, seq });
    const nll = await model.nll(ids, { batch, seq });
    for (let b = 0; b < batch; b++) {
      const want = refLogits(tiny.ref, ids.subarray(b * seq, (b + 1) * seq));
      check(`logits seq ${b}`, logits.subarray(b * seq * shape.vocab, (b + 1) * seq * shape.vocab), want);
      const wantNll = Array.from({ length: seq - 1 }, (_, t) =>
        refNll(want, t * shape.vocab, shape.vocab, ids[b * seq + t + 1]!),
      );
      check(`nll seq ${b}`, nll.subarray(b * (seq - 1), (b + 1) * (seq - 1)), wantNll);
    }
    await model.close();
  });

  test('the block API: embed, runBlock with every capture point, head', async () => {
    const { model, tiny } = await build(shape, seed + 1);
    const seq = 11,
      batch = 3;
    const ids = randomIds(batch * seq, shape.vocab, 2);
    let hidden = await model.embed(ids);
    check('embed', hidden, refEmbed(tiny.ref, ids), 0, 0);
    let ref = Array.from({ length: batch }, (_, b) => refEmbed(tiny.ref, ids.subarray(b * seq, (b + 1) * seq)));
    for (let i = 0; i < shape.layers; i++) {
      const { hidden: next, inputs } = await model.runBlock(i, hidden, {
        batch,
        seq,
        capture: ['qkv', 'o', 'gateUp', 'down'],
      });
      const traces = ref.map((h) => refBlock(tiny.ref, i, h, seq));
      for (const point of ['qkv', 'o', 'gateUp', 'down', 'out'] as const) {
        const got = point === 'out' ? next : inputs[point]!;
        const cols = got.length / (batch * seq);
        for (let b = 0; b < batch; b++)
          check(`block ${i} ${point} seq ${b}`, got.subarray(b * seq * cols, (b + 1) * seq * cols), traces[b]![point]);
      }
      expect(next).not.toBe(hidden);
      hidden = next;
      ref = traces.map((t) => t.out);
    }
    const logits = await model.head(hidden, batch * seq);
    for (let b = 0; b < batch; b++)
      check(
        `head seq ${b}`,
        logits.subarray(b * seq * shape.vocab, (b + 1) * seq * shape.vocab),
        refHead(tiny.ref, ref[b]!, seq),
      );
    await model.close();
  });

  test('stopAfter returns the inputs so far and leaves hidden unchanged', async () => {
    const { model, tiny } = await build(shape, seed + 2);
    const seq = 9;
    const ids = randomIds(seq, shape.vocab, 3);
    const hidden = await model.embed(ids);
    const before = hidden.slice();
    const { hidden: out, inputs } = await model.runBlock(0, hidden, {
      batch: 1,
      seq,
      capture: ['gateUp', 'down'],
      stopAfter: 'gateUp',
      inPlace: true,
    });
    expect(out).toBe(hidden);
    expect(Array.from(hidden)).toEqual(Array.from(before));
    check('gateUp', inputs.gateUp!, refBlock(tiny.ref, 0, before, seq).gateUp);
    // capture arrays exist for the points asked, filled only up to the stop
    expect(inputs.down).toBeInstanceOf(Float32Array);
    await model.close();
  });

  test('KV-cached decoding in pieces matches the logits of the whole sequence', async () => {
    const { model } = await build(shape, seed + 3);
    const ids = randomIds(30, shape.vocab, 4);
    const whole = await model.logits(ids);
    const session = await model.createSession(40);
    let at = 0;
    for (const piece of [7, 1, 1, 13, 1, 7]) {
      const last = await session.feed(ids.subarray(at, at + piece));
      at += piece;
      check(`decode after ${at}`, last, whole.subarray((at - 1) * shape.vocab, at * shape.vocab), 1e-4, 1e-4);
    }
    expect(session.length).toBe(30);
    await expect(session.feed(new Int32Array(11))).rejects.toMatchObject({ code: 'E_ARGUMENT' });
    session.close();
    await model.close();
  });
});

test('a packed (RTN 4-bit, grouped) linear in an otherwise dense model matches the reference on its dequantized weights', async () => {
  const shape = shapes['GQA, biases, untied head']!;
  const { model, tiny } = await build(shape, seed + 4);
  const { N, K } = { N: shape.hidden, K: shape.dim }; // the up projection: 37 x 24
  const W = tiny.ref.blocks[1]!.weights.up as Float32Array;
  const bits = 4 as const,
    groupSize = 8;
  const r = await addon.rtnQuantize(W, N, K, { bits, groupSize });
  const scales = new Uint16Array(r.scales.length);
  addon.convert(new Uint8Array(r.scales.buffer), 'f32', new Uint8Array(scales.buffer), 'f16', r.scales.length);
  const packed: PackedWeights = {
    // gptq_v2 zeros (offset 0): v1 cannot store a zero point of 0, which groups of 8 often have
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
  await model.setLinear(1, 'up', { packed });
  const dequantized = addon.dequantize(packed);
  tiny.ref.blocks[1]!.weights.up = dequantized;
  const ids = randomIds(19, shape.vocab, 5);
  check('logits with a packed up', await model.logits(ids), refLogits(tiny.ref, ids));
  // and the dequantized weights are what RTN promised: close to the originals
  check('dequantized vs original', dequantized, W, 0.05, 0);
  await model.close();
});

test('bad input and a closed model give coded errors', async () => {
  const shape = shapes['MHA, tied head, 16-wide head']!;
  const { model } = await build(shape, seed + 5);
  await expect(model.logits(Int32Array.of(1, 2, shape.vocab))).rejects.toMatchObject({ code: 'E_ARGUMENT' });
  await expect(model.logits(new Int32Array(shape.maxSeq + 1))).rejects.toMatchObject({ code: 'E_ARGUMENT' });
  await expect(model.runBlock(shape.layers, new Float32Array(shape.dim), { batch: 1, seq: 1 })).rejects.toBeInstanceOf(
    LowbitError,
  );
  await expect(model.runBlock(0, new Float32Array(3), { batch: 1, seq: 1 })).rejects.toMatchObject({
    code: 'E_ARGUMENT',
  });
  await expect(model.setLinear(0, 'q', { dtype: 'f32', data: new Float32Array(5) })).rejects.toMatchObject({
    code: 'E_SHAPE',
  });
  // the native side checks too: bypass the TypeScript checks
  const raw = new addon.NativeModel(nativeModelConfig(llamaConfig(shape)), -1);
  await expect(raw.logits(Int32Array.of(0, 1), 1, 2, new Float32Array(2 * shape.vocab))).rejects.toMatchObject({
    code: 'E_MISSING_TENSOR',
  });
  expect(() => raw.logits(Int32Array.of(0, 1), 1, 3, new Float32Array(3 * shape.vocab))).toThrow(
    expect.objectContaining({ code: 'E_BUFFER' }),
  );
  await expect(raw.embed(Int32Array.of(-1), new Float32Array(shape.dim))).rejects.toMatchObject({
    code: 'E_MISSING_TENSOR',
  });
  raw.close();
  await expect(raw.embed(Int32Array.of(0), new Float32Array(shape.dim))).rejects.toMatchObject({ code: 'E_CLOSED' });
  expect(
    () => new addon.NativeModel({ ...nativeModelConfig(llamaConfig(shape)), invFreq: new Float32Array(3) }, -1),
  ).toThrow(expect.objectContaining({ code: 'E_CONFIG' }));
  await model.close();
  await expect(model.logits(Int32Array.of(1, 2))).rejects.toMatchObject({ code: 'E_CLOSED' });
  await model.close(); // idempotent
});

test('the scalar path gives the same logits as the SIMD path', async () => {
  const shape = shapes['GQA, biases, untied head']!;
  const { model } = await build(shape, seed + 6);
  const ids = randomIds(40, shape.vocab, 6);
  const simd = await model.logits(ids);
  addon.forceSimd('scalar');
  const scalar = await model.logits(ids);
  addon.forceSimd('auto');
  check('scalar vs simd', scalar, simd, 1e-4, 1e-4);
  await model.close();
});

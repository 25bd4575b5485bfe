/**
 * stories260K beyond the fp32 reference: the bf16 and fp16 copies, a partially packed model (one
 * linear RTN-quantized to 8 bits and packed), and greedy generation against the float64 reference.
 */
import { readFileSync } from 'node:fs';
import { afterAll, beforeAll, expect, test } from 'vitest';
import { native, type PackedWeights } from '../../src/native.js';
import { openModel, type Model } from '../../src/model/model.js';
import { perplexity, perplexityIds } from '../../src/model/perplexity.js';
import { generate, generateTokens } from '../../src/model/generate.js';
import { dataPath, testDevice } from './data.js';
import { refModelOf } from './stories.js';
import { refGreedy, refLogits } from './reference.js';

const fp32Dir = dataPath('stories260K-hf');
const bf16Dir = dataPath('stories260K-hf-bf16');
const fp16Dir = dataPath('stories260K-hf-fp16');
const textFile = dataPath('tinystories-valid.txt');
const windows = 40;
let fp32: Model;
let ids: Int32Array;
let fp32Ppl: number;

beforeAll(async () => {
  fp32 = await openModel(fp32Dir, { device: testDevice });
  ids = perplexityIds(fp32, readFileSync(textFile, 'utf8')).subarray(0, windows * 512);
  fp32Ppl = (await perplexity(fp32, ids, { batch: 4 })).ppl;
});
afterAll(async () => fp32?.close());

test.each([
  ['bf16', () => bf16Dir!, 0.003],
  ['fp16', () => fp16Dir!, 0.001],
])('the %s copy runs from its 16-bit weights and lands close to fp32', async (_, dir, tolerance) => {
  const model = await openModel(dir(), { device: testDevice });
  try {
    const { ppl } = await perplexity(model, ids, { batch: 4 });
    expect(Math.abs(Math.log(ppl / fp32Ppl)), `ppl ${ppl} vs fp32 ${fp32Ppl}`).toBeLessThanOrEqual(tolerance);
    expect(ppl).not.toBe(fp32Ppl); // the weights really are the 16-bit ones
    expect(model.weightBytes).toBeLessThan(fp32.weightBytes);
  } finally {
    await model.close();
  }
});

test('one linear RTN 8-bit packed (K = 172, partial last group) runs and lands near fp32', async () => {
  const addon = native();
  const model = await openModel(fp32Dir!, { device: testDevice });
  try {
    const block = 2;
    const down = (await model.readBlockWeights(block)).down;
    if (down.packed || down.format === 'spqr') throw new Error('the fp32 checkpoint holds dense weights');
    const W = down.data as Float32Array; // [64, 172]
    const N = 64,
      K = 172,
      bits = 8 as const,
      groupSize = 64;
    const r = await addon.rtnQuantize(W, N, K, { bits, groupSize, sym: true });
    const scales = new Uint16Array(r.scales.length);
    addon.convert(new Uint8Array(r.scales.buffer), 'f32', new Uint8Array(scales.buffer), 'f16', r.scales.length);
    const packed: PackedWeights = {
      bits,
      K,
      N,
      groupSize,
      groups: r.groups,
      zeroOffset: 1,
      qweight: addon.packQweight(r.q, N, K, bits),
      qzeros: addon.packQzeros(r.zeros, r.groups, N, bits, 1),
      scales,
    };
    expect(r.groups).toBe(3);
    await model.setLinear(block, 'down', { packed });
    const { ppl } = await perplexity(model, ids, { batch: 4 });
    expect(Math.abs(Math.log(ppl / fp32Ppl)), `ppl ${ppl} vs fp32 ${fp32Ppl}`).toBeLessThanOrEqual(0.002);
    expect(ppl).not.toBe(fp32Ppl);
    // and the packed model computes what its dequantized weights say (float64 reference)
    const ref = await refModelOf(model);
    ref.blocks[block]!.weights.down = addon.dequantize(packed);
    const probe = ids.subarray(0, 24);
    const got = await model.logits(probe);
    const want = refLogits(ref, probe);
    let worst = 0;
    for (let i = 0; i < got.length; i++) worst = Math.max(worst, Math.abs(got[i]! - want[i]!));
    expect(worst).toBeLessThanOrEqual(2e-4);
  } finally {
    await model.close();
  }
});

test('greedy generation from "Once upon a time" follows the float64 reference for 20 tokens', async () => {
  const tokenizer = fp32.tokenizer!;
  const prompt = tokenizer.encode('Once upon a time', { bos: true });
  const got: number[] = [];
  for await (const id of generateTokens(fp32, prompt, { maxTokens: 20, temperature: 0 })) got.push(id);
  const want = refGreedy(await refModelOf(fp32), prompt, 20);
  expect(got).toEqual(want);
  // and the text streams out in pieces that add up to the decoded continuation
  let text = '';
  for await (const piece of generate(fp32, 'Once upon a time', { maxTokens: 20, temperature: 0 })) text += piece;
  expect('Once upon a time' + text).toBe(tokenizer.decode([...prompt, ...want]));
  expect(text.split(' ').length).toBeGreaterThan(8);
});

test('sampling is reproducible from a seed and stays in the vocabulary', async () => {
  const prompt = fp32.tokenizer!.encode('The cat', { bos: true });
  const run = async (seed: number) => {
    const out: number[] = [];
    for await (const id of generateTokens(fp32, prompt, {
      maxTokens: 15,
      temperature: 0.9,
      topP: 0.9,
      seed,
      stopIds: [],
    }))
      out.push(id);
    return out;
  };
  const seed = Math.floor(Math.random() * 2 ** 31);
  const a = await run(seed);
  expect(await run(seed)).toEqual(a);
  expect(a.length).toBe(15);
  expect(a.every((id) => id >= 0 && id < 512)).toBe(true);
});

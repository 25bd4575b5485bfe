/**
 * Batched decoding (Model.feedBatch): one step over several sessions of different lengths must
 * compute what feeding each session alone computes. On the CPU the logits agree to 1e-5 relative
 * (the same f32 operations; only the linears' row blocking differs) and greedy picks the same
 * tokens; LOWBIT_TEST_DEVICE=cuda runs the same checks on the CUDA backend (f32). The 16-bit CUDA
 * backend's batched path is checked in test/cuda/batch16.test.ts.
 */
import { readFileSync } from 'node:fs';
import { afterAll, beforeAll, describe, expect, test } from 'vitest';
import { Model, openModel, type Session } from '../../src/model/model.js';
import { perplexityIds } from '../../src/model/perplexity.js';
import { dataPath, testDevice } from './data.js';

/** ‖a − b‖∞ / ‖b‖∞ */
function relMax(a: Float32Array, b: Float32Array): number {
  let d = 0,
    m = 0;
  for (let i = 0; i < b.length; i++) {
    d = Math.max(d, Math.abs(a[i]! - b[i]!));
    m = Math.max(m, Math.abs(b[i]!));
  }
  return d / m;
}

function argmax(x: Float32Array): number {
  let best = 0;
  for (let i = 1; i < x.length; i++) if (x[i]! > x[best]!) best = i;
  return best;
}

describe(`feedBatch on stories260K (${testDevice})`, () => {
  let model: Model;
  let text: Int32Array;
  beforeAll(async () => {
    model = await openModel(dataPath('stories260K-hf'), { device: testDevice });
    text = perplexityIds(model, readFileSync(dataPath('tinystories-valid.txt'), 'utf8'));
  });
  afterAll(async () => {
    await model.close();
  });

  // Prompts of different lengths that straddle page boundaries (16 and 32 tokens a page) as they grow.
  const promptLengths = [1, 15, 16, 31, 33, 47, 64];
  const steps = 20;

  /** Greedy continuation of each prompt alone: the tokens and the logits of every step. */
  async function alone(prompt: Int32Array): Promise<{ tokens: number[]; logits: Float32Array[] }> {
    const s = await model.createSession(256);
    let last = await s.feed(prompt);
    const tokens: number[] = [];
    const logits: Float32Array[] = [];
    for (let t = 0; t < steps; t++) {
      logits.push(last);
      tokens.push(argmax(last));
      last = await s.feed(Int32Array.of(tokens[t]!));
    }
    s.close();
    return { tokens, logits };
  }

  /** A session per prompt (room for 256 tokens), each fed its prompt: the sessions and those logits. */
  async function feedEach(prompts: Int32Array[]): Promise<{ sessions: Session[]; first: Float32Array[] }> {
    const sessions: Session[] = [];
    const first: Float32Array[] = [];
    for (const p of prompts) {
      const s = await model.createSession(256);
      first.push(await s.feed(p));
      sessions.push(s);
    }
    return { sessions, first };
  }

  test('a batch of sessions of different lengths decodes what each session decodes alone (greedy, logits to 1e-5)', async () => {
    // catches: a batch row attending to another row's cache, a position taken from the wrong
    // sequence (RoPE, mask), logits rows swapped, a page table entry off by one at a page boundary
    const prompts = promptLengths.map((n, i) => text.subarray(100 * i, 100 * i + n));
    const ref = [];
    for (const p of prompts) ref.push(await alone(p));
    const { sessions, first } = await feedEach(prompts);
    const vocab = model.vocabSize;
    let next = Int32Array.from(first, argmax);
    let worst = 0;
    for (let t = 0; t < steps; t++) {
      for (let i = 0; i < sessions.length; i++) expect(next[i], `session ${i} step ${t}`).toBe(ref[i]!.tokens[t]);
      const out = await model.feedBatch(sessions, next);
      expect(out.length).toBe(sessions.length * vocab);
      const rows = sessions.map((_, i) => out.subarray(i * vocab, (i + 1) * vocab));
      for (let i = 0; i < sessions.length; i++) {
        if (t + 1 < steps) worst = Math.max(worst, relMax(rows[i]!, ref[i]!.logits[t + 1]!));
        expect(sessions[i]!.length).toBe(promptLengths[i]! + t + 1);
      }
      next = Int32Array.from(rows, argmax);
    }
    console.log(`feedBatch ${testDevice}: worst relative logit difference to decoding alone ${worst.toExponential(2)}`);
    expect(worst).toBeLessThanOrEqual(1e-5);
    for (const s of sessions) s.close();
  });

  test('feedBatch writes the logits into a given out array; a step after a larger one is exact', async () => {
    // catches: `out` ignored or returned unfilled, an `out` of the wrong length accepted (a short
    // write or one past its end), and a reused native output buffer (the binding keeps the last
    // step's, which held 3 rows) leaking an earlier step's values into a smaller step's rows
    const V = model.vocabSize;
    const open = async (): Promise<Session> => {
      const s = await model.createSession(64);
      await s.feed(text.subarray(0, 9));
      return s;
    };
    const [a, b, c, a2, b2] = [await open(), await open(), await open(), await open(), await open()];
    await expect(model.feedBatch([a], Int32Array.of(3), new Float32Array(V + 1))).rejects.toMatchObject({
      code: 'E_ARGUMENT',
    });
    await expect(
      model.feedBatch([a], Int32Array.of(3), new Float64Array(V) as unknown as Float32Array),
    ).rejects.toMatchObject({ code: 'E_ARGUMENT' });
    expect(a.length).toBe(9); // nothing was fed
    await model.feedBatch([a, b, c], Int32Array.of(3, 4, 5));
    const out = new Float32Array(2 * V).fill(Number.NaN);
    const got = await model.feedBatch([a, b], Int32Array.of(6, 7), out);
    expect(got).toBe(out);
    // the same two histories, without `out` and never in a batch of three
    await model.feedBatch([a2, b2], Int32Array.of(3, 4));
    const want = await model.feedBatch([a2, b2], Int32Array.of(6, 7));
    expect(relMax(got, want)).toBeLessThanOrEqual(1e-5);
    for (const s of [a, b, c, a2, b2]) s.close();
  });

  test('decodeGreedy chains greedy steps: the tokens of feeding each session alone, across calls', async () => {
    // catches: the token fed at step s + 1 not being the one chosen at step s (fed one step late or
    // early, or the same id again), rows of the tokens array swapped or transposed, a position not
    // advanced between chained steps, lengths not advanced by `steps`, and a second call not
    // continuing where the first left off (7 sessions, 5 then 14 steps, crossing pages)
    const prompts = promptLengths.map((n, i) => text.subarray(100 * i + 7, 100 * i + 7 + n));
    const ref = [];
    for (const p of prompts) ref.push(await alone(p));
    const { sessions, first } = await feedEach(prompts);
    const B = sessions.length;
    let fed = Int32Array.from(first, argmax);
    let done = 0;
    for (const chunk of [5, 14]) {
      const tokens = await model.decodeGreedy(sessions, fed, chunk);
      expect(tokens.length).toBe(chunk * B);
      for (let s = 0; s < chunk; s++)
        for (let i = 0; i < B; i++)
          expect(tokens[s * B + i], `session ${i} step ${done + s}`).toBe(ref[i]!.tokens[done + s + 1]);
      done += chunk;
      sessions.forEach((s, i) => expect(s.length).toBe(promptLengths[i]! + done));
      fed = tokens.slice((chunk - 1) * B);
    }
    for (const s of sessions) s.close();
  });

  test('decodeGreedy rejects bad steps and sessions without room for them, changing none', async () => {
    // catches: a chunk that runs past a session's capacity (writing past its KV cache), steps of 0
    // or a fraction reaching the native side
    const a = await model.createSession(10);
    await a.feed(text.subarray(0, 6));
    for (const steps of [0, 1.5, -1, 5])
      await expect(model.decodeGreedy([a], Int32Array.of(3), steps)).rejects.toMatchObject({ code: 'E_ARGUMENT' });
    expect(a.length).toBe(6);
    const tokens = await model.decodeGreedy([a], Int32Array.of(3), 4); // exactly fills it
    expect(tokens.length).toBe(4);
    expect(a.length).toBe(10);
    a.close();
  });

  test('feedBatch rejects foreign, closed, repeated and full sessions before changing any', async () => {
    // catches: a check missing from the batched path (a session of another model reaching the
    // native side, a full session overflowing its cache, a session advanced twice in one step)
    const other = await openModel(dataPath('stories260K-hf'), { device: testDevice });
    const a = await model.createSession(8);
    const b = await model.createSession(2);
    const foreign = await other.createSession(8);
    await a.feed(Int32Array.of(1, 2));
    await b.feed(Int32Array.of(1, 2)); // b is now full
    const closed = await model.createSession(8);
    closed.close();
    const two = Int32Array.of(3, 4);
    await expect(model.feedBatch([a, foreign], two)).rejects.toMatchObject({ code: 'E_ARGUMENT' });
    await expect(model.feedBatch([a, closed], two)).rejects.toMatchObject({ code: 'E_CLOSED' });
    await expect(model.feedBatch([a, a], two)).rejects.toMatchObject({ code: 'E_ARGUMENT' });
    await expect(model.feedBatch([a, b], two)).rejects.toMatchObject({ code: 'E_ARGUMENT' });
    await expect(model.feedBatch([a], two)).rejects.toMatchObject({ code: 'E_ARGUMENT' });
    await expect(model.feedBatch([], new Int32Array(0))).rejects.toMatchObject({ code: 'E_ARGUMENT' });
    await expect(model.feedBatch([a], Int32Array.of(model.vocabSize))).rejects.toMatchObject({ code: 'E_ARGUMENT' });
    expect(a.length).toBe(2); // nothing was fed
    const out = await model.feedBatch([a], Int32Array.of(3));
    expect(out.length).toBe(model.vocabSize);
    expect(a.length).toBe(3);
    a.close();
    b.close();
    foreign.close();
    await other.close();
  });
});

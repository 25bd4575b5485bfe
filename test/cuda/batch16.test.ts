/**
 * Batched decoding and the paged KV cache of the 16-bit CUDA pass (cuda/llama16.cu), on stories260K
 * (8 heads over 4 KV heads of 8; pages of 16 tokens). Needs a CUDA device: elsewhere the suite skips
 * with the reason.
 *
 * Tolerance: as test/cuda/forward16.test.ts, logits within 16u of the f32 pass in relative norm
 * (u = 2^-8 for bf16): the f32 pass keeps contiguous caches and its own kernels, so it is an
 * independent reference for the pages. A row reading another row's pages, a key off by one page or
 * a position from the wrong row moves logits by O(1), far past the bound. Greedy tokens must match
 * f32's at the first batched step and at 90% of all steps (teacher-forced: both are fed f32's
 * tokens; bf16 may flip a near tie).
 */
import { readFileSync } from 'node:fs';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { openModel, type Model, type Session } from '../../src/model/model.js';
import { perplexityIds } from '../../src/model/perplexity.js';
import { dataPath } from '../model/data.js';
import { cudaAvailability, relativeError } from './ref.js';

const cuda = cudaAvailability();
if (!cuda.ok) console.log(`test/cuda/batch16.test.ts: CUDA tests skipped: ${cuda.reason}`);

const U_BF16 = 2 ** -8;
const TOL = 16 * U_BF16;

function argmax(x: Float32Array): number {
  let best = 0;
  for (let i = 1; i < x.length; i++) if (x[i]! > x[best]!) best = i;
  return best;
}

describe.skipIf(!cuda.ok)(`batched decoding, paged KV cache (skipped without a GPU: ${cuda.reason || 'none'})`, () => {
  let f32: Model;
  let bf16: Model;
  let text: Int32Array;
  beforeAll(async () => {
    f32 = await openModel(dataPath('stories260K-hf'), { device: 'cuda', dtype: 'f32' });
    bf16 = await openModel(dataPath('stories260K-hf'), { device: 'cuda', dtype: 'bf16' });
    text = perplexityIds(f32, readFileSync(dataPath('tinystories-valid.txt'), 'utf8'));
  });
  afterAll(async () => {
    await f32.close();
    await bf16.close();
  });

  it('a batch of sessions of different lengths, crossing page boundaries, matches f32 decoding each alone', async () => {
    // catches: a row attending through another row's page table, a page boundary off by one
    // (lengths 15, 16, 17, 31, 33 ... grow across 16-token pages), a position from the wrong row,
    // padding rows (7 sessions run in the bucket of 8) leaking into real rows, logits rows swapped
    const lengths = [1, 15, 16, 17, 31, 33, 64];
    const steps = 12;
    const prompts = lengths.map((n, i) => text.subarray(200 * i, 200 * i + n));
    // the f32 reference: each session alone, greedy
    const refTokens: number[][] = [];
    const refLogits: Float32Array[][] = [];
    for (const p of prompts) {
      const s = await f32.createSession(256);
      let last = await s.feed(p);
      const toks: number[] = [];
      const lg: Float32Array[] = [];
      for (let t = 0; t < steps; t++) {
        lg.push(last);
        toks.push(argmax(last));
        last = await s.feed(Int32Array.of(toks[t]!));
      }
      refTokens.push(toks);
      refLogits.push(lg);
      s.close();
    }
    const sessions: Session[] = [];
    let firstWorst = 0;
    for (let i = 0; i < prompts.length; i++) {
      const s = await bf16.createSession(256);
      const first = await s.feed(prompts[i]!); // the prompt: the eager paged path (keys gathered)
      firstWorst = Math.max(firstWorst, relativeError(first, refLogits[i]![0]!));
      sessions.push(s);
    }
    const vocab = bf16.vocabSize;
    let worst = 0;
    let agree = 0;
    for (let t = 0; t + 1 < steps; t++) {
      const next = Int32Array.from(refTokens, (toks) => toks[t]!); // teacher-forced: f32's tokens
      const out = await bf16.feedBatch(sessions, next);
      for (let i = 0; i < sessions.length; i++) {
        const row = out.subarray(i * vocab, (i + 1) * vocab);
        worst = Math.max(worst, relativeError(row, refLogits[i]![t + 1]!));
        if (t === 0) expect(argmax(row), `session ${i} step ${t + 1}`).toBe(refTokens[i]![t + 1]);
        if (argmax(row) === refTokens[i]![t + 1]) agree++;
        expect(sessions[i]!.length).toBe(lengths[i]! + t + 1);
      }
    }
    console.log(
      `batch16: prompt logits ${firstWorst.toExponential(2)}, batched steps ${worst.toExponential(2)} (bound ${TOL}); greedy agrees ${agree}/${(steps - 1) * sessions.length}`,
    );
    expect(firstWorst).toBeLessThanOrEqual(TOL);
    expect(worst).toBeLessThanOrEqual(TOL);
    expect(agree).toBeGreaterThanOrEqual(0.9 * (steps - 1) * sessions.length);
    for (const s of sessions) s.close();
  });

  it("batched steps equal one-session steps (the same kernels at another M) and a freed session's pages carry no stale keys", async () => {
    // catches: pages returned to the pool while still listed by a sequence, a reused page whose old
    // keys are read (attention past the sequence's length), a batch bucket's graph replayed with
    // another bucket's tables
    const a = text.subarray(0, 40);
    const b = text.subarray(500, 530);
    const alone = async (prompt: Int32Array, steps: number): Promise<Float32Array[]> => {
      const s = await bf16.createSession(128);
      const out = [await s.feed(prompt)];
      for (let t = 0; t < steps; t++) out.push(await s.feed(Int32Array.of(argmax(out[t]!))));
      s.close();
      return out;
    };
    const refA = await alone(a, 6);
    const refB = await alone(b, 6);
    // fill pages with another sequence's keys, free them, then run a and b batched on reused pages
    const junk = await bf16.createSession(256);
    await junk.feed(text.subarray(1000, 1200));
    const before = bf16.kvCache;
    junk.close();
    const after = bf16.kvCache;
    expect(after.paged).toBe(true);
    expect(after.pagesFree - before.pagesFree).toBe(Math.ceil(200 / after.pageTokens));
    const sa = await bf16.createSession(128);
    const sb = await bf16.createSession(128);
    const first = [await sa.feed(a), await sb.feed(b)];
    // the same kernels on other pages: the same logits (to f32 noise, should cuBLAS pick differently)
    expect(relativeError(first[0]!, refA[0]!)).toBeLessThanOrEqual(1e-6);
    expect(relativeError(first[1]!, refB[0]!)).toBeLessThanOrEqual(1e-6);
    const vocab = bf16.vocabSize;
    let worst = 0;
    for (let t = 0; t < 6; t++) {
      const out = await bf16.feedBatch([sa, sb], Int32Array.of(argmax(refA[t]!), argmax(refB[t]!)));
      worst = Math.max(
        worst,
        relativeError(out.subarray(0, vocab), refA[t + 1]!),
        relativeError(out.subarray(vocab), refB[t + 1]!),
      );
    }
    console.log(`batch16: batch of 2 vs alone ${worst.toExponential(2)}`);
    // the linears at M = 2 may sum in another order than at M = 1 (bf16 roundings flip): the 16u bound
    expect(worst).toBeLessThanOrEqual(TOL);
    sa.close();
    sb.close();
  });

  it('greedy steps chained on the device (decodeGreedy) pick what feedBatch + argmax picks step by step', async () => {
    // catches: the device-side feed off by one step (a step fed the token chosen two steps back, or
    // the same id again), a position not advanced on the device between chained steps, pages for the
    // later steps not reserved before the first (a step past a page boundary writing the pad page),
    // padding rows (5 sessions run in the bucket of 8) or rows of the token array mixed up; and one
    // session alone (bucket 1), chained twice.
    // The reference is the same bf16 model one feedBatch per step (the same graph at the same M),
    // with the host's argmax on its logits: the tokens must be identical.
    const lengths = [3, 15, 16, 30, 47];
    const steps = 21; // crosses at least one page boundary for every session
    // A session per prompt, each fed its prompt, and the greedy first token of each.
    const open = async (prompts: Int32Array[]): Promise<{ sessions: Session[]; first: number[] }> => {
      const sessions: Session[] = [];
      const first: number[] = [];
      for (const p of prompts) {
        const s = await bf16.createSession(128);
        first.push(argmax(await s.feed(p)));
        sessions.push(s);
      }
      return { sessions, first };
    };
    const reference = async (prompts: Int32Array[]): Promise<{ first: number[]; tokens: number[][] }> => {
      const { sessions, first } = await open(prompts);
      const tokens: number[][] = [];
      let fed = Int32Array.from(first);
      const vocab = bf16.vocabSize;
      for (let t = 0; t < steps; t++) {
        const out = await bf16.feedBatch(sessions, fed);
        fed = Int32Array.from(sessions, (_, i) => argmax(out.subarray(i * vocab, (i + 1) * vocab)));
        tokens.push(Array.from(fed));
      }
      for (const s of sessions) s.close();
      return { first, tokens };
    };
    const chained = async (prompts: Int32Array[], chunks: number[]): Promise<number[][]> => {
      const { sessions, first } = await open(prompts);
      const rows: number[][] = [];
      let fed = Int32Array.from(first);
      for (const n of chunks) {
        const tokens = await bf16.decodeGreedy(sessions, fed, n);
        for (let t = 0; t < n; t++)
          rows.push(Array.from(tokens.subarray(t * sessions.length, (t + 1) * sessions.length)));
        fed = tokens.slice((n - 1) * sessions.length);
      }
      sessions.forEach((s, i) => expect(s.length).toBe(prompts[i]!.length + steps));
      for (const s of sessions) s.close();
      return rows;
    };
    const prompts = lengths.map((n, i) => text.subarray(300 * i + 11, 300 * i + 11 + n));
    const want = await reference(prompts);
    expect(await chained(prompts, [8, 13])).toEqual(want.tokens);
    const one = [prompts[3]!];
    expect(await chained(one, [1, 20])).toEqual((await reference(one)).tokens);
  });

  it('a full pool fails the step with E_KV_FULL and leaves every session as it was', async () => {
    // catches: a step that advanced some sessions (or kept pages) before finding no page for
    // another; pages not returned on close; the limit not applied
    const small = await openModel(dataPath('stories260K-hf'), { device: 'cuda', dtype: 'bf16', kvCacheTokens: 64 });
    try {
      const info = small.kvCache;
      expect(info.paged).toBe(true);
      expect(info.pageTokens).toBe(16);
      expect(info.limitPages).toBe(4);
      const a = await small.createSession(128);
      const b = await small.createSession(128);
      const la = await a.feed(text.subarray(0, 40)); // 3 pages
      await b.feed(text.subarray(100, 116)); // 1 page: the pool's 4 are held
      expect(small.kvCache.pagesFree).toBe(0);
      const next = Int32Array.of(argmax(la), 7);
      await expect(small.feedBatch([a, b], next)).rejects.toMatchObject({ code: 'E_KV_FULL' });
      await expect(b.feed(Int32Array.of(7))).rejects.toMatchObject({ code: 'E_KV_FULL' });
      expect(a.length).toBe(40);
      expect(b.length).toBe(16);
      // a is intact: its next step equals a fresh session's on the same tokens
      const stepA = await a.feed(Int32Array.of(argmax(la)));
      const fresh = await bf16.createSession(128);
      await fresh.feed(text.subarray(0, 40));
      expect(relativeError(stepA, await fresh.feed(Int32Array.of(argmax(la))))).toBeLessThanOrEqual(1e-6);
      fresh.close();
      a.close(); // its 3 pages return: b can grow
      expect(small.kvCache.pagesFree).toBe(3);
      const out = await small.feedBatch([b], Int32Array.of(7));
      expect(out.length).toBe(small.vocabSize);
      expect(b.length).toBe(17);
      b.close();
    } finally {
      await small.close();
    }
  });
});

/**
 * The continuous-batching scheduler (src/serve/scheduler.ts) on the real stories260K (CPU unless
 * LOWBIT_TEST_DEVICE says otherwise). The reference of every request is the same request run alone
 * (`scheduler: false`: its own session, one feed per token); batched runs must match it token for
 * token, greedy and seeded. Each test names the bug it catches.
 */
import { afterAll, beforeAll, expect, test, vi } from 'vitest';
import { LowbitError } from '../../src/errors.js';
import { openModel, type Model, type Session } from '../../src/model/model.js';
import { generate, generateTokens, type GenerateOptions } from '../../src/model/generate.js';
import { Scheduler, schedulerOf, type TokenStream } from '../../src/serve/scheduler.js';
import { dataPath, testDevice } from '../model/data.js';

let model: Model;

beforeAll(async () => {
  model = await openModel(dataPath('stories260K-hf'), { device: testDevice });
});
afterAll(async () => model?.close());

const TEXTS = [
  'Once upon a time',
  'The little dog ran to the park and',
  'Lily had a red ball. She',
  'One day, a big bird',
  'Tom and his mom went to the store to buy some food for the party. They',
  'The sun',
  'Sam was sad because his toy was broken. His friend',
];

function prompt(i: number): Int32Array {
  return model.tokenizer!.encode(TEXTS[i % TEXTS.length]!, { bos: true });
}

/** A prompt `room` tokens short of the model's context (the story texts one after another). */
function longPrompt(room: number): Int32Array {
  const ids = model.tokenizer!.encode(TEXTS.join(' ').repeat(40), { bos: true });
  return ids.slice(0, model.maxSeq - room);
}

async function alone(ids: Int32Array, options: GenerateOptions): Promise<number[]> {
  const out: number[] = [];
  for await (const id of generateTokens(model, ids, { ...options, scheduler: false })) out.push(id);
  return out;
}

/** Reads a stream to its end; `onToken(count)` runs after each token (to start other requests). */
async function collect(stream: AsyncIterable<number>, onToken?: (count: number) => void): Promise<number[]> {
  const out: number[] = [];
  for await (const id of stream) {
    out.push(id);
    onToken?.(out.length);
  }
  return out;
}

/**
 * Records the batch size of every decode step (and the scheduler's reserved KV tokens then) by
 * wrapping the model's feedBatch and decodeGreedy (a call of n chained steps records n steps; its
 * step counts go to `chains`). Returns them and a function that removes the wrappers.
 */
function recordSteps(
  target: Model,
  scheduler?: Scheduler,
): { sizes: number[]; reserved: number[]; chains: number[]; restore(): void } {
  const sizes: number[] = [];
  const reserved: number[] = [];
  const chains: number[] = [];
  const real = target.feedBatch;
  const spy = vi.spyOn(target, 'feedBatch').mockImplementation((sessions, ids) => {
    sizes.push(sessions.length);
    if (scheduler) reserved.push(scheduler.stats.reservedTokens);
    return real.call(target, sessions, ids);
  });
  const realGreedy = target.decodeGreedy;
  const greedy = vi.spyOn(target, 'decodeGreedy').mockImplementation((sessions, ids, n) => {
    for (let i = 0; i < n; i++) sizes.push(sessions.length);
    if (scheduler) reserved.push(scheduler.stats.reservedTokens);
    chains.push(n);
    return realGreedy.call(target, sessions, ids, n);
  });
  return {
    sizes,
    reserved,
    chains,
    restore: () => {
      spy.mockRestore();
      greedy.mockRestore();
    },
  };
}

test('concurrent greedy and seeded requests joining at different times equal their runs alone, in shared decode steps', async () => {
  // catches: a wrong logits row per sequence, a sampler (RNG) shared between requests, a token fed
  // twice or skipped when a sequence joins or leaves, stop ids or maxTokens applied to the wrong request
  const requests = [
    { ids: prompt(0), options: { temperature: 0, maxTokens: 40, stopIds: [] } },
    { ids: prompt(1), options: { temperature: 0, maxTokens: 7 } },
    { ids: prompt(2), options: { temperature: 0.8, topP: 0.9, seed: 12345, maxTokens: 25, stopIds: [] } },
    { ids: prompt(3), options: { temperature: 0, maxTokens: 60 } }, // may end at EOS (default stop ids)
    { ids: prompt(4), options: { temperature: 0, maxTokens: 33, stopIds: [] } },
    { ids: prompt(5), options: { temperature: 1, topP: 1, seed: 7, maxTokens: 18, stopIds: [] } },
    { ids: prompt(6), options: { temperature: 0, maxTokens: 1 } },
    // ends when its session is full (the context), before maxTokens
    { ids: longPrompt(6), options: { temperature: 0, maxTokens: 20, stopIds: [] } },
  ];
  const want = [];
  for (const r of requests) want.push(await alone(r.ids, r.options));
  expect(want[7]!.length).toBeLessThan(requests[7]!.options.maxTokens);

  const scheduler = new Scheduler(model, { maxBatch: 8 });
  const steps = recordSteps(model, scheduler);
  try {
    const results: Promise<number[]>[] = [];
    const start = (i: number) => {
      results[i] = collect(scheduler.submit(requests[i]!.ids, requests[i]!.options), (n) => {
        // later requests join while earlier ones are mid-decode
        if (i === 0 && n === 3) start(3);
        if (i === 0 && n === 9) start(4);
        if (i === 3 && n === 5) start(5);
        if (i === 4 && n === 2) start(6);
        if (i === 4 && n === 4) start(7);
      });
    };
    start(0);
    start(1);
    start(2);
    for (let i = 0; i < requests.length; i++) while (!results[i]) await new Promise((r) => setTimeout(r, 1));
    const got = await Promise.all(results);
    for (let i = 0; i < requests.length; i++) expect(got[i], `request ${i}`).toEqual(want[i]);
  } finally {
    steps.restore();
  }
  // it really batches: one feedBatch per step over every decoding sequence, never one call per token
  const tokens = want.reduce((n, w) => n + w.length, 0);
  const decoded = steps.sizes.reduce((a, b) => a + b, 0);
  expect(Math.max(...steps.sizes)).toBeGreaterThanOrEqual(4);
  expect(steps.sizes.length).toBeLessThan(tokens / 2);
  // a request's first token comes from its prefill, each later one from one decode of the previous;
  // one that meets a stop id decoded its last token too
  const ended = (w: number[], i: number) =>
    w.length === requests[i]!.options.maxTokens || requests[i]!.ids.length + w.length > model.maxSeq;
  const decodes = want.map((w, i) => (ended(w, i) ? w.length - 1 : w.length));
  expect(decoded).toBe(decodes.reduce((a, b) => a + b, 0));
  expect(scheduler.stats).toMatchObject({ steps: steps.sizes.length, decodedTokens: decoded, running: 0, queued: 0 });
  expect(scheduler.stats.completed).toBe(requests.length);
  expect(model.cacheBytes).toBe(0); // every session closed
});

test('chained greedy steps (decodeChunk) give each request its tokens alone, and stop, abort and join between calls', async () => {
  // catches: a chained call whose token rows are read off by one step or with rows swapped, a
  // request that runs past maxTokens or its context inside a chain (steps not capped by what each
  // may still take), tokens after a stop id or an abort leaking into a stream, a sampled request
  // put through the greedy chain (its tokens would be argmax), sessions not closed after a chain
  const requests = [
    { ids: prompt(0), options: { temperature: 0, maxTokens: 41, stopIds: [] } },
    { ids: prompt(1), options: { temperature: 0, maxTokens: 7 } },
    { ids: prompt(3), options: { temperature: 0, maxTokens: 60 } }, // may end at EOS (default stop ids)
    { ids: prompt(4), options: { temperature: 0, maxTokens: 23, stopIds: [] } },
    { ids: prompt(5), options: { temperature: 1, topP: 1, seed: 7, maxTokens: 9, stopIds: [] } },
    { ids: longPrompt(6), options: { temperature: 0, maxTokens: 20, stopIds: [] } }, // the context ends it
    { ids: prompt(2), options: { temperature: 0, maxTokens: 30, stopIds: [] } }, // aborted after 6 tokens
  ];
  const want = [];
  for (const r of requests) want.push(await alone(r.ids, r.options));
  const scheduler = new Scheduler(model, { maxBatch: 8, decodeChunk: 4 });
  const steps = recordSteps(model, scheduler);
  const controller = new AbortController();
  let aborted: unknown;
  try {
    const results: Promise<number[]>[] = [];
    const start = (i: number) => {
      const options = i === 6 ? { ...requests[i]!.options, signal: controller.signal } : requests[i]!.options;
      results[i] = collect(scheduler.submit(requests[i]!.ids, options), (n) => {
        if (i === 0 && n === 3) start(2);
        if (i === 0 && n === 10) start(3);
        if (i === 2 && n === 6) start(4); // a sampled request joins: one step at a time while it runs
        if (i === 3 && n === 5) start(5);
        if (i === 0 && n === 2) start(6);
        if (i === 6 && n === 6) controller.abort();
      });
      results[i].catch(() => {}); // (the aborted one rejects before allSettled below reads it)
    };
    start(0);
    start(1);
    for (let i = 0; i < requests.length; i++) while (!results[i]) await new Promise((r) => setTimeout(r, 1));
    const got = await Promise.allSettled(results);
    for (let i = 0; i < 6; i++) expect(got[i], `request ${i}`).toEqual({ status: 'fulfilled', value: want[i] });
    aborted = got[6];
  } finally {
    steps.restore();
  }
  expect(aborted).toMatchObject({ status: 'rejected', reason: { code: 'E_ABORTED' } });
  expect(Math.max(...steps.chains)).toBe(4);
  expect(steps.chains.every((n) => n >= 2 && n <= 4)).toBe(true);
  expect(scheduler.stats).toMatchObject({
    steps: steps.sizes.length,
    running: 0,
    queued: 0,
    completed: 6,
    cancelled: 1,
  });
  expect(model.cacheBytes).toBe(0);
});

test('generate() and generateTokens() batch concurrent calls on one model by default, with the same results', async () => {
  // catches: the default path not going through the shared scheduler (no batching for plain callers),
  // or its text differing from an unbatched run
  const texts = TEXTS.slice(0, 5);
  const want = await Promise.all(
    texts.map(async (t) => {
      let s = '';
      for await (const piece of generate(model, t, { temperature: 0, maxTokens: 20, scheduler: false })) s += piece;
      return s;
    }),
  );
  const steps = recordSteps(model, schedulerOf(model));
  try {
    const got = await Promise.all(
      texts.map(async (t) => {
        let s = '';
        for await (const piece of generate(model, t, { temperature: 0, maxTokens: 20 })) s += piece;
        return s;
      }),
    );
    expect(got).toEqual(want);
  } finally {
    steps.restore();
  }
  expect(Math.max(...steps.sizes)).toBe(texts.length);
  expect(steps.sizes.length).toBeLessThan(25);
});

test('admission follows the prefill budget and the KV-token bound', async () => {
  // catches: admitting every waiting prompt in one step (starving the decode of running sequences),
  // or reserving more KV tokens than maxKvTokens
  const ids = prompt(0);
  const scheduler = new Scheduler(model, { prefillTokens: 1, maxKvTokens: 3 * (ids.length + 10), decodeChunk: 1 });
  const steps = recordSteps(model, scheduler);
  try {
    const streams = Array.from({ length: 5 }, () =>
      scheduler.submit(ids, { temperature: 0, maxTokens: 10, stopIds: [] }),
    );
    const got = await Promise.all(streams.map((s) => collect(s)));
    const want = await alone(ids, { temperature: 0, maxTokens: 10, stopIds: [] });
    for (const g of got) expect(g).toEqual(want);
  } finally {
    steps.restore();
  }
  // one prefill per step: the batch grows by one each step, up to the three that fit the KV bound
  expect(steps.sizes.slice(0, 3)).toEqual([1, 2, 3]);
  expect(Math.max(...steps.sizes)).toBe(3);
  expect(Math.max(...steps.reserved)).toBeLessThanOrEqual(scheduler.maxKvTokens);
});

test('aborting one request mid-stream rejects it at once, frees its KV, and leaves the others exact', async () => {
  // catches: an abort that waits for the request to end, leaks its session or reservation, stops the
  // whole batch, or shifts the other sequences' rows
  const scheduler = new Scheduler(model);
  const opts = { temperature: 0, maxTokens: 30, stopIds: [] };
  const want = [await alone(prompt(0), opts), await alone(prompt(2), opts)];
  const controller = new AbortController();
  const victim = scheduler.submit(prompt(1), { ...opts, signal: controller.signal });
  let cacheBefore = 0;
  let cacheAfterAbort = Infinity; // the least KV cache seen by the others while they still ran
  const others = [
    collect(scheduler.submit(prompt(0), opts), () => {
      // (while both others still run)
      if (controller.signal.aborted && scheduler.stats.running === 2)
        cacheAfterAbort = Math.min(cacheAfterAbort, model.cacheBytes);
    }),
    collect(scheduler.submit(prompt(2), opts)),
  ];
  const seen: number[] = [];
  let error: unknown;
  try {
    for await (const id of victim) {
      seen.push(id);
      if (seen.length === 4) {
        const reservedBefore = scheduler.stats.reservedTokens;
        cacheBefore = model.cacheBytes;
        controller.abort(new Error('client went away'));
        // at once: its reservation is released before the next step
        expect(scheduler.stats.reservedTokens).toBe(reservedBefore - (prompt(1).length + 30));
        expect(scheduler.stats.running).toBe(2);
      }
    }
  } catch (err) {
    error = err;
  }
  expect(error).toBeInstanceOf(LowbitError);
  expect((error as LowbitError).code).toBe('E_ABORTED');
  expect(seen.length).toBe(4);
  expect(await Promise.all(others)).toEqual(want);
  // its session was closed (by the next step boundary at the latest) while the others ran on
  expect(cacheAfterAbort).toBeGreaterThan(0);
  expect(cacheAfterAbort).toBeLessThan(cacheBefore);
  expect(scheduler.stats.cancelled).toBe(1);
  expect(model.cacheBytes).toBe(0);
});

test('aborting or cancelling a queued request removes it without ever prefilling it', async () => {
  // catches: an aborted request that still runs when its turn comes (wasted prefill, a leaked session)
  const scheduler = new Scheduler(model, { maxBatch: 1 });
  const opts = { temperature: 0, maxTokens: 12, stopIds: [] };
  const controller = new AbortController();
  const first = collect(scheduler.submit(prompt(0), opts));
  const queued = collect(scheduler.submit(prompt(1), { ...opts, signal: controller.signal }));
  const cancelled = scheduler.submit(prompt(2), opts);
  const last = collect(scheduler.submit(prompt(3), opts));
  expect(scheduler.stats.queued).toBe(4);
  controller.abort();
  cancelled.cancel();
  expect(scheduler.stats.queued).toBe(2);
  await expect(queued).rejects.toMatchObject({ code: 'E_ABORTED' });
  expect(await cancelled.next()).toEqual({ value: undefined, done: true });
  expect(await first).toEqual(await alone(prompt(0), opts));
  expect(await last).toEqual(await alone(prompt(3), opts));
  expect(scheduler.stats.prefills).toBe(2);
  // a signal already aborted is refused at submit
  expect(() => scheduler.submit(prompt(0), { signal: AbortSignal.abort() })).toThrow(
    expect.objectContaining({ code: 'E_ABORTED' }),
  );
});

test('breaking out of a for-await loop frees the request', async () => {
  // catches: a consumer that stops reading leaving its sequence decoding to maxTokens
  const scheduler = new Scheduler(model);
  for await (const id of generateTokens(model, prompt(0), { temperature: 0, maxTokens: 200, stopIds: [], scheduler })) {
    expect(id).toBeGreaterThanOrEqual(0);
    break;
  }
  expect(scheduler.stats).toMatchObject({ cancelled: 1, running: 0, queued: 0, reservedTokens: 0 });
  await scheduler.close();
  expect(model.cacheBytes).toBe(0);
});

test('a full queue refuses with E_BUSY, and a request larger than maxKvTokens with E_MEMORY_BUDGET', async () => {
  // catches: an unbounded queue (memory grows with load instead of pushing back)
  const scheduler = new Scheduler(model, { maxBatch: 1, maxQueue: 2, maxKvTokens: 64 });
  const opts = { temperature: 0, maxTokens: 8, stopIds: [] };
  const a = scheduler.submit(prompt(0), opts);
  const b = scheduler.submit(prompt(1), opts);
  let busy: unknown;
  try {
    scheduler.submit(prompt(2), opts);
  } catch (err) {
    busy = err;
  }
  expect(busy).toBeInstanceOf(LowbitError);
  expect(busy).toMatchObject({ code: 'E_BUSY', details: { maxQueue: 2 } });
  expect(scheduler.stats.refused).toBe(1);
  // through generateTokens the refusal is the first next()'s rejection
  const it = generateTokens(model, prompt(2), { ...opts, scheduler });
  await expect(it.next()).rejects.toMatchObject({ code: 'E_BUSY' });
  expect(() => scheduler.submit(prompt(0), { maxTokens: 100 })).toThrow(
    expect.objectContaining({ code: 'E_MEMORY_BUDGET' }),
  );
  // the accepted ones are unharmed, and once they are admitted the queue has room again
  expect(await collect(a)).toEqual(await alone(prompt(0), opts));
  expect(await collect(b)).toEqual(await alone(prompt(1), opts));
  expect(await collect(scheduler.submit(prompt(2), opts))).toEqual(await alone(prompt(2), opts));
  expect(() => new Scheduler(model, { maxBatch: 0 })).toThrow(expect.objectContaining({ code: 'E_ARGUMENT' }));
});

test('a failed step rejects only its own requests, and the scheduler goes on', async () => {
  // catches: one failure poisoning every request or leaving the scheduler stuck
  const scheduler = new Scheduler(model, { maxBatch: 2, decodeChunk: 1 }); // (failures injected into feedBatch)
  const opts = { temperature: 0, maxTokens: 10, stopIds: [] };
  const realCreate = model.createSession;
  const realFeedBatch = model.feedBatch;
  // a prefill failure: the first session asked for cannot be made
  let sessions = 0;
  const create = vi.spyOn(model, 'createSession').mockImplementation((capacity?: number) => {
    if (sessions++ === 0) return Promise.reject(new LowbitError('E_CUDA', 'injected: out of memory'));
    return realCreate.call(model, capacity);
  });
  // a decode-step failure, when failNext is set
  let failNext = false;
  const feed = vi.spyOn(model, 'feedBatch').mockImplementation((s: readonly Session[], ids: Int32Array) => {
    if (!failNext) return realFeedBatch.call(model, s, ids);
    failNext = false;
    return Promise.reject(new LowbitError('E_CUDA', 'injected: the step failed'));
  });
  try {
    const doomed = collect(scheduler.submit(prompt(0), opts));
    const fine = collect(scheduler.submit(prompt(1), opts));
    await expect(doomed).rejects.toMatchObject({ code: 'E_CUDA', message: 'injected: out of memory' });
    expect(await fine).toEqual(await alone(prompt(1), opts));

    // a decode-step failure: the two requests in that step fail; the one still queued runs on
    let stepStarted!: () => void;
    const started = new Promise<void>((r) => (stepStarted = r));
    const x = collect(scheduler.submit(prompt(2), opts), (n) => {
      if (n === 2) {
        failNext = true;
        stepStarted();
      }
    });
    const y = collect(scheduler.submit(prompt(3), opts));
    const z = collect(scheduler.submit(prompt(4), opts)); // waits: maxBatch 2
    await started;
    await expect(x).rejects.toMatchObject({ code: 'E_CUDA', message: 'injected: the step failed' });
    await expect(y).rejects.toMatchObject({ code: 'E_CUDA' });
    expect(await z).toEqual(await alone(prompt(4), opts));
    expect(await collect(scheduler.submit(prompt(5), opts))).toEqual(await alone(prompt(5), opts));
    expect(scheduler.stats.failed).toBe(3);
  } finally {
    create.mockRestore();
    feed.mockRestore();
  }
  expect(model.cacheBytes).toBe(0);
});

test('a prefill the KV pool cannot hold (E_KV_FULL) waits for a running sequence to end, or fails when none runs', async () => {
  // catches: a full pool failing requests that fit once others end, losing their turn, or spinning
  const scheduler = new Scheduler(model, { maxBatch: 4 });
  const opts = { temperature: 0, maxTokens: 12, stopIds: [] };
  const realCreate = model.createSession;
  const kvFull = () => new LowbitError('E_KV_FULL', 'injected: no free KV page');
  // a pool that holds one sequence: a second session is refused
  let capacityOfPool = 1;
  let refusals = 0;
  const create = vi.spyOn(model, 'createSession').mockImplementation((capacity?: number) => {
    if (scheduler.stats.running > capacityOfPool) {
      refusals++;
      return Promise.reject(kvFull());
    }
    return realCreate.call(model, capacity);
  });
  try {
    const got = await Promise.all([0, 1, 2].map((i) => collect(scheduler.submit(prompt(i), opts))));
    for (let i = 0; i < 3; i++) expect(got[i]).toEqual(await alone(prompt(i), opts));
    expect(refusals).toBeGreaterThanOrEqual(2);
    expect(refusals).toBeLessThanOrEqual(4); // one retry per sequence that ended, no spinning
    expect(scheduler.stats).toMatchObject({ failed: 0, completed: 3, largestBatch: 1, prefills: 3 });
    // with nothing running there is nothing to wait for: the request fails with the pool's error
    capacityOfPool = 0;
    await expect(collect(scheduler.submit(prompt(3), opts))).rejects.toMatchObject({ code: 'E_KV_FULL' });
  } finally {
    create.mockRestore();
  }
  expect(model.cacheBytes).toBe(0);
});

test('closing the scheduler or the model rejects every pending request with E_CLOSED', async () => {
  // catches: requests left hanging forever when the scheduler or the model goes away
  const opts = { temperature: 0, maxTokens: 50, stopIds: [] };
  const scheduler = new Scheduler(model, { maxBatch: 1 });
  const running = scheduler.submit(prompt(0), opts);
  const queued = collect(scheduler.submit(prompt(1), opts));
  expect(await running.next()).toMatchObject({ done: false });
  await scheduler.close();
  await expect(collect(running)).rejects.toMatchObject({ code: 'E_CLOSED' });
  await expect(queued).rejects.toMatchObject({ code: 'E_CLOSED' });
  expect(() => scheduler.submit(prompt(0), opts)).toThrow(expect.objectContaining({ code: 'E_CLOSED' }));
  expect(model.cacheBytes).toBe(0);

  const other = await openModel(dataPath('stories260K-hf'), { device: testDevice });
  const shared = schedulerOf(other);
  let firstToken!: () => void;
  const running2 = new Promise<void>((r) => (firstToken = r));
  const streams: TokenStream[] = [0, 1, 2].map((i) => shared.submit(prompt(i), opts));
  const results = Promise.allSettled(streams.map((s) => collect(s, firstToken)));
  await running2;
  await other.close();
  for (const r of await results) expect(r).toMatchObject({ status: 'rejected', reason: { code: 'E_CLOSED' } });
  expect(() => shared.submit(prompt(0), opts)).toThrow(expect.objectContaining({ code: 'E_CLOSED' }));
});

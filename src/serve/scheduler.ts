/**
 * Continuous batching for one model: requests (prompt ids + sampling options) queue; each step the
 * scheduler prefills a few newly admitted requests on their own sessions, then runs ONE decode step
 * (`model.feedBatch`) for every sequence in decode, one new token each. A sequence joins the batch
 * after its prefill and leaves it when it ends (stop id, maxTokens, full context, abort, error), all
 * between steps. Every request keeps its own sampler (src/model/sampling.ts), so its tokens are the
 * ones it would get alone. See docs/SERVING.md.
 *
 * Bounds: `maxBatch` sequences running at once; `maxKvTokens` KV tokens reserved across them (each
 * reserves its session's capacity, prompt + maxTokens capped at the context, when admitted); at most
 * `maxQueue` requests waiting, beyond which `submit` throws E_BUSY (backpressure: the caller sheds or
 * retries). Admission is FIFO: a request that does not fit yet waits, and those behind it wait too
 * (no starvation of long requests).
 */
import { LowbitError, invalidArgument } from '../errors.js';
import type { Model, Session } from '../model/model.js';
import { TokenSampler, planGeneration, type GenerationPlan, type SamplingOptions } from '../model/sampling.js';

export interface SchedulerOptions {
  /** sequences running at once (prefilled and decoding), default 16 */
  maxBatch?: number;
  /**
   * KV tokens reserved at once, summed over running sequences (each reserves prompt + maxTokens,
   * capped at the model's context); default maxBatch × the model's context, so only maxBatch binds
   */
  maxKvTokens?: number;
  /** requests waiting for admission before submit throws E_BUSY, default 256 */
  maxQueue?: number;
  /**
   * Prompt tokens prefilled per step (default 512): each step admits waiting requests in order until
   * their prompts would pass this budget (the first always goes), so a burst of long prompts delays
   * the decode step of running sequences by about one budget's worth of prefill, not by all of them
   */
  prefillTokens?: number;
  /**
   * Greedy decode steps per native call (default 8 on a GPU, 1 on the CPU): while every sequence in
   * the batch is greedy (temperature 0), up to this many steps run back to back in one
   * `model.decodeGreedy` call (on the GPU each token is chosen and fed there, no logits cross to the
   * host) and their tokens stream out together after it. Never more steps than any sequence in the
   * batch may still take (maxTokens, its context); a stop id or an abort wastes at most the rest of
   * the call's steps, and requests join or leave only between calls. 1: one step per call.
   */
  decodeChunk?: number;
}

export interface SubmitOptions extends SamplingOptions {
  /** aborts the request, queued or running: its stream rejects with E_ABORTED, its slot is freed */
  signal?: AbortSignal;
}

/** Counters since the scheduler was made, and its state now. */
export interface SchedulerStats {
  /** requests waiting for admission */
  queued: number;
  /** sequences admitted and not ended (prefilling or decoding) */
  running: number;
  /** KV tokens reserved by the running sequences */
  reservedTokens: number;
  /** decode steps run (a model.feedBatch call is one, a model.decodeGreedy call its steps) */
  steps: number;
  /** tokens decoded by those steps (the sum of their batch sizes) */
  decodedTokens: number;
  /** the largest batch of a decode step */
  largestBatch: number;
  /** prompts prefilled */
  prefills: number;
  /** requests that ended normally (stop id, maxTokens or a full context) */
  completed: number;
  /** requests cancelled by their consumer (stream.cancel / breaking out of the loop) or aborted */
  cancelled: number;
  /** requests rejected by an error (a failed step, E_CLOSED) */
  failed: number;
  /** submits refused with E_BUSY */
  refused: number;
}

type RequestState = 'queued' | 'running' | 'done';

interface Request {
  readonly prompt: Int32Array;
  readonly plan: GenerationPlan;
  /** KV tokens it reserves while running: its capacity, in whole pages of a paged pool */
  readonly reserve: number;
  readonly sampler: TokenSampler;
  readonly stream: TokenStream;
  readonly signal: AbortSignal | undefined;
  readonly onAbort: () => void;
  state: RequestState;
  session: Session | undefined;
  /** tokens in the session's KV cache */
  length: number;
  /** the token to feed in the next decode step (undefined while prefilling) */
  pending: number | undefined;
  /** a native call is using the session: closing it waits for the call to return */
  inFlight: boolean;
}

const DEFAULTS = { maxBatch: 16, maxQueue: 256, prefillTokens: 512, decodeChunk: 8 };

function positiveInteger(name: string, value: unknown, fallback: number): number {
  if (value === undefined) return fallback;
  if (!Number.isSafeInteger(value) || (value as number) < 1) invalidArgument(name, 'a positive integer', value);
  return value as number;
}

/**
 * A stream of one request's token ids, in order: `for await (const id of stream)`. Tokens are produced
 * as the scheduler steps, whether or not the consumer is reading (a request holds at most maxTokens).
 * Ending the loop early (break, return, throw) or `cancel()` frees the request's slot.
 */
export class TokenStream implements AsyncIterableIterator<number> {
  private readonly buffer: number[] = [];
  private ended = false;
  private error: unknown = undefined;
  private waiter: { resolve: (r: IteratorResult<number>) => void; reject: (e: unknown) => void } | undefined;

  /** @internal (made by Scheduler.submit) */
  constructor(private readonly onCancel: () => void) {}

  /** @internal a token came */
  push(id: number): void {
    if (this.waiter) {
      const { resolve } = this.waiter;
      this.waiter = undefined;
      resolve({ value: id, done: false });
    } else this.buffer.push(id);
  }

  /** @internal the request ended: normally, or with `error` (tokens not yet read are dropped then) */
  end(error?: unknown): void {
    if (this.ended) return;
    this.ended = true;
    if (error !== undefined) {
      this.error = error;
      this.buffer.length = 0;
    }
    const waiter = this.waiter;
    this.waiter = undefined;
    if (!waiter) return;
    if (error !== undefined) waiter.reject(error);
    else waiter.resolve({ value: undefined, done: true });
  }

  next(): Promise<IteratorResult<number>> {
    if (this.buffer.length > 0) return Promise.resolve({ value: this.buffer.shift()!, done: false });
    if (this.error !== undefined) {
      const error = this.error;
      this.error = undefined; // reported once; the stream is finished after that
      return Promise.reject(error);
    }
    if (this.ended) return Promise.resolve({ value: undefined, done: true });
    if (this.waiter) throw new LowbitError('E_ARGUMENT', 'a TokenStream is read by one consumer at a time');
    return new Promise((resolve, reject) => (this.waiter = { resolve, reject }));
  }

  /** Called when a for-await loop ends early: cancels the request. */
  return(): Promise<IteratorResult<number>> {
    this.cancel();
    return Promise.resolve({ value: undefined, done: true });
  }

  /** Stops the request (queued or running) and frees its slot; the stream ends. No-op once ended. */
  cancel(): void {
    if (this.ended) return;
    this.onCancel();
  }

  [Symbol.asyncIterator](): TokenStream {
    return this;
  }
}

/** A continuous-batching scheduler of one model's generation requests (see the file comment). */
export class Scheduler {
  readonly maxBatch: number;
  readonly maxKvTokens: number;
  readonly maxQueue: number;
  readonly prefillTokens: number;
  readonly decodeChunk: number;
  /** tokens per page of the model's paged KV pool (1 when each session's cache is allocated whole) */
  readonly pageTokens: number;

  private readonly queue: Request[] = [];
  private readonly running = new Set<Request>();
  private reservedTokens = 0;
  /** the KV pool refused a prefill: admit nothing more until a running sequence ends */
  private poolFull = false;
  private logitsOut: Float32Array | undefined; // decode steps' logits, reused (decodeStep)
  private looping = false;
  private idle: Promise<void> = Promise.resolve();
  private closed = false;
  private readonly counters = {
    steps: 0,
    decodedTokens: 0,
    largestBatch: 0,
    prefills: 0,
    completed: 0,
    cancelled: 0,
    failed: 0,
    refused: 0,
  };

  constructor(
    readonly model: Model,
    options: SchedulerOptions = {},
  ) {
    if (options === null || typeof options !== 'object') invalidArgument('options', 'an object', options);
    this.maxBatch = positiveInteger('maxBatch', options.maxBatch, DEFAULTS.maxBatch);
    // On a paged KV pool (16-bit CUDA) reservations count whole pages, and by default the bound is
    // the pool's own limit when it has one; elsewhere the bound is maxBatch full contexts.
    const pool = model.kvCache;
    this.pageTokens = pool.paged ? Math.max(1, pool.pageTokens) : 1;
    const poolTokens = pool.paged && pool.limitPages > 0 ? pool.limitPages * this.pageTokens : Infinity;
    this.maxKvTokens = positiveInteger(
      'maxKvTokens',
      options.maxKvTokens,
      Math.min(poolTokens, this.maxBatch * roundUp(model.maxSeq, this.pageTokens)),
    );
    this.maxQueue = positiveInteger('maxQueue', options.maxQueue, DEFAULTS.maxQueue);
    this.prefillTokens = positiveInteger('prefillTokens', options.prefillTokens, DEFAULTS.prefillTokens);
    // (on the CPU a step's host round trip is small next to the step, and tokens stream one by one)
    this.decodeChunk = positiveInteger(
      'decodeChunk',
      options.decodeChunk,
      model.device >= 0 ? DEFAULTS.decodeChunk : 1,
    );
  }

  get stats(): SchedulerStats {
    return {
      queued: this.queue.length,
      running: this.running.size,
      reservedTokens: this.reservedTokens,
      ...this.counters,
    };
  }

  get isClosed(): boolean {
    return this.closed;
  }

  /**
   * Queues a request and returns the stream of its token ids. Throws at once (nothing queued):
   * E_ARGUMENT for bad options or prompt, E_MEMORY_BUDGET when the request alone needs more KV tokens
   * than maxKvTokens, E_BUSY when maxQueue requests are already waiting, E_ABORTED when its signal
   * is already aborted, E_CLOSED once the scheduler or its model is closed.
   */
  submit(promptIds: Int32Array, options: SubmitOptions = {}): TokenStream {
    if (this.closed) throw new LowbitError('E_CLOSED', 'the scheduler was closed');
    if (this.model.isClosed) throw new LowbitError('E_CLOSED', 'the model was closed');
    const plan = planGeneration(this.model, promptIds, options);
    const { signal } = options;
    if (signal !== undefined && !(signal instanceof AbortSignal)) invalidArgument('signal', 'an AbortSignal', signal);
    if (signal?.aborted) throw abortedError(signal);
    const reserve = roundUp(plan.capacity, this.pageTokens);
    if (reserve > this.maxKvTokens) {
      throw new LowbitError(
        'E_MEMORY_BUDGET',
        `the request needs ${reserve} KV tokens (prompt ${promptIds.length} + maxTokens ${plan.maxTokens}, ` +
          `at most the context ${this.model.maxSeq}); the scheduler's maxKvTokens is ${this.maxKvTokens}`,
        { option: 'maxTokens' },
      );
    }
    if (this.queue.length >= this.maxQueue) {
      this.counters.refused++;
      throw new LowbitError(
        'E_BUSY',
        `the scheduler's queue is full (${this.queue.length} requests waiting, maxQueue ${this.maxQueue}); retry later`,
        { queued: this.queue.length, maxQueue: this.maxQueue },
      );
    }
    const request: Request = {
      prompt: promptIds.slice(), // the caller may reuse its array while the request waits
      plan,
      reserve,
      sampler: new TokenSampler(plan),
      stream: new TokenStream(() => this.finish(request, 'cancelled')),
      signal,
      onAbort: () => this.finish(request, 'cancelled', abortedError(signal!)),
      state: 'queued',
      session: undefined,
      length: 0,
      pending: undefined,
      inFlight: false,
    };
    signal?.addEventListener('abort', request.onAbort, { once: true });
    this.queue.push(request);
    this.startLoop();
    return request.stream;
  }

  /**
   * Rejects every queued and running request with E_CLOSED and refuses new ones; resolves once the
   * step in flight (if any) has returned and every session is closed. Idempotent.
   */
  async close(): Promise<void> {
    if (!this.closed) {
      this.closed = true;
      this.failAll(new LowbitError('E_CLOSED', 'the scheduler was closed'));
    }
    await this.idle;
  }

  // ------------------------------------------------------------------ the loop

  private startLoop(): void {
    if (this.looping) return;
    this.looping = true;
    this.idle = this.loop();
  }

  /** Steps while there is work: admit + prefill, then one decode step. Never rejects. */
  private async loop(): Promise<void> {
    // let the requests submitted in the same tick queue up, so that they are admitted together
    await Promise.resolve();
    try {
      while (this.queue.length > 0 || this.running.size > 0) {
        if (this.model.isClosed) {
          this.failAll(new LowbitError('E_CLOSED', 'the model was closed'));
          break;
        }
        await this.admit();
        await this.decodeStep();
      }
    } catch (err) {
      // a bug here must not strand the requests waiting on their streams
      this.failAll(new LowbitError('E_INTERNAL', `scheduler step failed: ${String(err)}`, {}, { cause: err }));
    } finally {
      this.looping = false; // (synchronously after the last check: a submit from now on starts a new loop)
    }
  }

  /** Admits waiting requests in order while they fit and the step's prefill budget lasts; prefills each. */
  private async admit(): Promise<void> {
    let budget = this.prefillTokens;
    let admitted = 0;
    while (this.queue.length > 0) {
      const request = this.queue[0]!;
      if (this.running.size >= this.maxBatch || this.poolFull) return;
      if (this.reservedTokens + request.reserve > this.maxKvTokens) return;
      if (admitted > 0 && request.prompt.length > budget) return;
      this.queue.shift();
      request.state = 'running';
      this.running.add(request);
      this.reservedTokens += request.reserve;
      budget -= request.prompt.length;
      admitted++;
      await this.prefill(request);
    }
  }

  /** Opens the request's session, feeds its prompt and takes its first token. */
  private async prefill(request: Request): Promise<void> {
    request.inFlight = true;
    let logits: Float32Array | undefined;
    try {
      request.session = await this.model.createSession(request.plan.capacity);
      if (request.state === 'running') logits = await request.session.feed(request.prompt);
    } catch (err) {
      if (isKvFull(err) && this.running.size > 1) this.requeue(request);
      else this.finish(request, 'failed', err);
    } finally {
      request.inFlight = false;
      // failed, put back, or aborted during the calls
      if (request.state !== 'running') request.session?.close();
    }
    if (request.state !== 'running' || !logits) return;
    this.counters.prefills++;
    request.length = request.prompt.length;
    this.accept(request, logits);
  }

  /**
   * The KV pool had no room for the request's prefill while other sequences hold pages: it goes back
   * to the head of the queue (it keeps its turn) and waits until one of them ends.
   */
  private requeue(request: Request): void {
    this.running.delete(request);
    this.reservedTokens -= request.reserve;
    request.state = 'queued';
    this.queue.unshift(request);
    this.poolFull = true;
  }

  /**
   * One decode step for every sequence that has a token to feed; several chained greedy steps
   * (greedySteps) when every one of them is greedy and may take more than one.
   */
  private async decodeStep(): Promise<void> {
    const batch = [...this.running].filter((r) => r.pending !== undefined);
    if (batch.length === 0) return;
    if (this.decodeChunk > 1 && batch.every((r) => r.sampler.greedy)) {
      const steps = Math.min(this.decodeChunk, ...batch.map((r) => r.sampler.remaining(r.length)));
      if (steps > 1) return this.greedySteps(batch, steps);
    }
    // one array for every step's logits (a step's are read before the next step starts)
    const n = batch.length * this.model.vocabSize;
    if (!this.logitsOut || this.logitsOut.length < n) this.logitsOut = new Float32Array(n);
    const out = this.logitsOut.subarray(0, n);
    const logits = await this.runBatch(batch, 1, (sessions, ids) => this.model.feedBatch(sessions, ids, out));
    if (logits === undefined) return;
    const V = this.model.vocabSize;
    batch.forEach((r, i) => {
      r.length++;
      if (r.state === 'done')
        r.session?.close(); // aborted during the step
      else this.accept(r, logits.subarray(i * V, (i + 1) * V));
    });
  }

  /**
   * `steps` greedy steps in one model.decodeGreedy call: the batch's tokens of each step are taken in
   * order, as `steps` calls of decodeStep would; a request that ends part way (stop id, abort) drops
   * the tokens of the steps after (its session is closed with them).
   */
  private async greedySteps(batch: Request[], steps: number): Promise<void> {
    const tokens = await this.runBatch(batch, steps, (sessions, ids) => this.model.decodeGreedy(sessions, ids, steps));
    if (tokens === undefined) return;
    batch.forEach((r, i) => {
      for (let s = 0; s < steps && r.state === 'running'; s++) {
        r.length++;
        this.take(r, r.sampler.take(tokens[s * batch.length + i]!));
      }
      if (r.state === 'done') r.session?.close(); // ended during or after the call
    });
  }

  /**
   * One native call of `steps` decode steps for the batch, its requests in flight meanwhile, fed their
   * pending tokens: its result, counted in the stats; or, when it fails, undefined, the batch's
   * requests ended with the error (their sessions are in an unknown state) and the others going on.
   */
  private async runBatch<T>(
    batch: Request[],
    steps: number,
    step: (sessions: Session[], ids: Int32Array) => Promise<T>,
  ): Promise<T | undefined> {
    const ids = Int32Array.from(batch, (r) => r.pending!);
    for (const r of batch) r.inFlight = true;
    let result: T;
    try {
      result = await step(
        batch.map((r) => r.session!),
        ids,
      );
    } catch (err) {
      for (const r of batch) {
        r.inFlight = false;
        this.finish(r, 'failed', err);
        r.session?.close(); // (also those aborted during the step, which finish leaves alone)
      }
      return undefined;
    }
    for (const r of batch) r.inFlight = false;
    this.counters.steps += steps;
    this.counters.decodedTokens += steps * batch.length;
    this.counters.largestBatch = Math.max(this.counters.largestBatch, batch.length);
    return result;
  }

  /** Samples the request's next token from `logits`; it either ends or waits for the next step. */
  private accept(request: Request, logits: Float32Array): void {
    this.take(request, request.sampler.pick(logits));
  }

  /** The request's next token (undefined: a stop id): it either ends or waits for the next step. */
  private take(request: Request, next: number | undefined): void {
    if (next === undefined) return this.finish(request, 'completed');
    request.stream.push(next);
    if (request.sampler.finished(request.length)) return this.finish(request, 'completed');
    request.pending = next;
  }

  /**
   * Ends a request: out of the queue or the batch, its KV reservation released, its stream ended
   * (with `error` if given), its session closed unless a native call still uses it (the step that
   * made that call closes it when it returns).
   */
  private finish(request: Request, outcome: 'completed' | 'cancelled' | 'failed', error?: unknown): void {
    if (request.state === 'done') return;
    if (request.state === 'queued') this.queue.splice(this.queue.indexOf(request), 1);
    else {
      this.running.delete(request);
      this.reservedTokens -= request.reserve;
      this.poolFull = false; // its pages are free again
    }
    request.state = 'done';
    request.pending = undefined;
    request.signal?.removeEventListener('abort', request.onAbort);
    if (!request.inFlight) request.session?.close();
    this.counters[outcome]++;
    request.stream.end(error);
  }

  private failAll(error: LowbitError): void {
    for (const r of [...this.queue, ...this.running]) this.finish(r, 'failed', error);
  }
}

const roundUp = (n: number, unit: number): number => Math.ceil(n / unit) * unit;

/** The paged KV pool had no free page. */
function isKvFull(err: unknown): boolean {
  return err instanceof LowbitError && err.code === 'E_KV_FULL';
}

function abortedError(signal: AbortSignal): LowbitError {
  return new LowbitError('E_ABORTED', 'generation was aborted', {}, { cause: signal.reason });
}

const shared = new WeakMap<Model, Scheduler>();

/**
 * The model's shared scheduler, with the default bounds, made on first use: `generate` and
 * `generateTokens` go through it unless told otherwise. A closed one is replaced by a new one.
 */
export function schedulerOf(model: Model): Scheduler {
  let scheduler = shared.get(model);
  if (!scheduler || scheduler.isClosed) {
    scheduler = new Scheduler(model);
    shared.set(model, scheduler);
  }
  return scheduler;
}

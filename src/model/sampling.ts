/**
 * The sampler of generation, shared by a request run alone (generate.ts) and one run in a batch by
 * the scheduler (src/serve/scheduler.ts): each request owns a GenerationPlan (its checked options and
 * KV capacity) and a TokenSampler (its own seeded generator), so a request draws the same tokens
 * from the same logits whichever way it runs.
 */
import { LowbitError, invalidArgument } from '../errors.js';
import type { Model } from './model.js';

/** What one request asks for (the sampling part of GenerateOptions). */
export interface SamplingOptions {
  /** tokens to generate at most (default 128) */
  maxTokens?: number;
  /** 0 for greedy (default 1) */
  temperature?: number;
  /** nucleus sampling threshold in (0, 1] (default 0.9) */
  topP?: number;
  /** seed of the sampler (default: random) */
  seed?: number;
  /** stop at these token ids (default: the model's EOS ids) */
  stopIds?: readonly number[];
}

/** A small, fast, seedable generator (SplitMix32-style mixing of a Weyl sequence); floats in [0, 1). */
export function seededRandom(seed: number): () => number {
  let state = seed >>> 0;
  return () => {
    state = (state + 0x9e3779b9) >>> 0;
    let z = state;
    z = Math.imul(z ^ (z >>> 16), 0x85ebca6b) >>> 0;
    z = Math.imul(z ^ (z >>> 13), 0xc2b2ae35) >>> 0;
    z = (z ^ (z >>> 16)) >>> 0;
    return z / 4294967296;
  };
}

/** Index of the largest logit (the first one on ties). */
export function argmax(logits: Float32Array): number {
  let best = 0;
  for (let i = 1; i < logits.length; i++) if (logits[i]! > logits[best]!) best = i;
  return best;
}

/** Draws a token from logits with temperature and top-p; `random` gives floats in [0, 1). */
export function sampleToken(logits: Float32Array, temperature: number, topP: number, random: () => number): number {
  if (temperature === 0) return argmax(logits);
  let max = -Infinity;
  for (let i = 0; i < logits.length; i++) max = Math.max(max, logits[i]!);
  const probs = new Float64Array(logits.length);
  let total = 0;
  for (let i = 0; i < logits.length; i++) total += probs[i] = Math.exp((logits[i]! - max) / temperature);
  for (let i = 0; i < probs.length; i++) probs[i]! /= total;
  let candidates = Array.from(probs.keys());
  if (topP < 1) {
    candidates.sort((a, b) => probs[b]! - probs[a]! || a - b);
    let mass = 0;
    let keep = 0;
    while (keep < candidates.length && mass < topP) mass += probs[candidates[keep++]!]!;
    candidates = candidates.slice(0, keep);
  }
  let mass = 0;
  for (const c of candidates) mass += probs[c]!;
  let r = random() * mass;
  for (const c of candidates) {
    r -= probs[c]!;
    if (r < 0) return c;
  }
  return candidates[candidates.length - 1]!;
}

/** A request's checked options and the KV cache it needs. */
export interface GenerationPlan {
  maxTokens: number;
  temperature: number;
  topP: number;
  seed: number;
  stop: ReadonlySet<number>;
  /** KV tokens of its session: the prompt plus maxTokens, at most the model's context */
  capacity: number;
}

/**
 * Checks a request (prompt ids inside the vocabulary and shorter than the context; the sampling
 * options) and returns its plan. Throws E_ARGUMENT naming the option.
 */
export function planGeneration(
  model: Pick<Model, 'maxSeq' | 'vocabSize' | 'config'>,
  promptIds: Int32Array,
  options: SamplingOptions,
): GenerationPlan {
  const maxTokens = options.maxTokens ?? 128;
  if (!Number.isInteger(maxTokens) || maxTokens < 1) invalidArgument('maxTokens', 'a positive integer', maxTokens);
  const temperature = options.temperature ?? 1;
  if (typeof temperature !== 'number' || !Number.isFinite(temperature) || temperature < 0)
    invalidArgument('temperature', 'a number ≥ 0', temperature);
  const topP = options.topP ?? 0.9;
  if (typeof topP !== 'number' || !(topP > 0 && topP <= 1)) invalidArgument('topP', 'a number in (0, 1]', topP);
  const seed = options.seed ?? Math.floor(Math.random() * 2 ** 32);
  if (!Number.isInteger(seed)) invalidArgument('seed', 'an integer', seed);
  if (options.stopIds !== undefined && !Array.isArray(options.stopIds))
    invalidArgument('stopIds', 'an array of token ids', options.stopIds);
  if (!(promptIds instanceof Int32Array) || promptIds.length === 0)
    invalidArgument('promptIds', 'a non-empty Int32Array', promptIds);
  if (promptIds.length >= model.maxSeq) {
    throw new LowbitError(
      'E_ARGUMENT',
      `the prompt has ${promptIds.length} tokens; the model's context is ${model.maxSeq}`,
      { option: 'prompt' },
    );
  }
  const V = model.vocabSize;
  for (let i = 0; i < promptIds.length; i++) {
    if (promptIds[i]! < 0 || promptIds[i]! >= V)
      throw new LowbitError('E_ARGUMENT', `promptIds[${i}] = ${promptIds[i]} is outside the vocabulary [0, ${V})`, {
        option: 'promptIds',
      });
  }
  const stop = new Set(options.stopIds ?? model.config.eosTokenIds);
  const capacity = Math.min(model.maxSeq, promptIds.length + maxTokens);
  return { maxTokens, temperature, topP, seed, stop, capacity };
}

/**
 * One request's sampling state. After the prompt, each step: `pick(logits)` gives the next token
 * (undefined when it is a stop id: the request ends without it); after emitting it, `finished(length)`
 * says whether the request is complete given the session's length (tokens in its KV cache), or the
 * token must be fed for the next step.
 */
export class TokenSampler {
  private readonly random: () => number;
  /** tokens emitted so far */
  produced = 0;

  constructor(readonly plan: GenerationPlan) {
    this.random = seededRandom(plan.seed);
  }

  pick(logits: Float32Array): number | undefined {
    return this.take(sampleToken(logits, this.plan.temperature, this.plan.topP, this.random));
  }

  /** true when every token is the logits' argmax (temperature 0): chosen where the logits are */
  get greedy(): boolean {
    return this.plan.temperature === 0;
  }

  /** As pick, for a token already chosen (greedy, by the model: Model.decodeGreedy). */
  take(next: number): number | undefined {
    if (this.plan.stop.has(next)) return undefined;
    this.produced++;
    return next;
  }

  /** tokens this request may still produce before `finished`, its session holding `length` tokens */
  remaining(length: number): number {
    return Math.max(0, Math.min(this.plan.maxTokens - this.produced, this.plan.capacity - length));
  }

  /** true once maxTokens are out or the session (holding `length` tokens) has no room for the last one */
  finished(length: number): boolean {
    return this.produced >= this.plan.maxTokens || length >= this.plan.capacity;
  }
}

/**
 * Token generation with a KV cache: the prompt is fed once, then one token at a time. Greedy at
 * temperature 0; otherwise softmax(logits / temperature) restricted to the smallest set of tokens
 * whose probability reaches topP (nucleus sampling), drawn from a seeded generator so a seed
 * reproduces a run.
 */
import { LowbitError, invalidArgument } from '../errors.js';
import { StreamDecoder } from '../formats/tokenizer.js';
import type { Model } from './model.js';

export interface GenerateOptions {
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
  signal?: AbortSignal;
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

function checkOptions(
  options: GenerateOptions,
): Required<Omit<GenerateOptions, 'signal' | 'stopIds' | 'seed'>> & { seed: number } {
  const maxTokens = options.maxTokens ?? 128;
  if (!Number.isInteger(maxTokens) || maxTokens < 1) invalidArgument('maxTokens', 'a positive integer', maxTokens);
  const temperature = options.temperature ?? 1;
  if (typeof temperature !== 'number' || !Number.isFinite(temperature) || temperature < 0)
    invalidArgument('temperature', 'a number ≥ 0', temperature);
  const topP = options.topP ?? 0.9;
  if (typeof topP !== 'number' || !(topP > 0 && topP <= 1)) invalidArgument('topP', 'a number in (0, 1]', topP);
  const seed = options.seed ?? Math.floor(Math.random() * 2 ** 32);
  if (!Number.isInteger(seed)) invalidArgument('seed', 'an integer', seed);
  return { maxTokens, temperature, topP, seed };
}

/** Generates token ids after `promptIds` (which should start with BOS), one at a time. */
export async function* generateTokens(
  model: Model,
  promptIds: Int32Array,
  options: GenerateOptions = {},
): AsyncGenerator<number> {
  const { maxTokens, temperature, topP, seed } = checkOptions(options);
  if (!(promptIds instanceof Int32Array) || promptIds.length === 0)
    invalidArgument('promptIds', 'a non-empty Int32Array', promptIds);
  if (promptIds.length >= model.maxSeq) {
    throw new LowbitError(
      'E_ARGUMENT',
      `the prompt has ${promptIds.length} tokens; the model's context is ${model.maxSeq}`,
      { option: 'prompt' },
    );
  }
  const stop = new Set(options.stopIds ?? model.config.eosTokenIds);
  const random = seededRandom(seed);
  const capacity = Math.min(model.maxSeq, promptIds.length + maxTokens);
  const session = await model.createSession(capacity);
  try {
    let logits = await session.feed(promptIds);
    for (let produced = 0; produced < maxTokens; produced++) {
      if (options.signal?.aborted)
        throw new LowbitError('E_ABORTED', 'generation was aborted', {}, { cause: options.signal.reason });
      const next = sampleToken(logits, temperature, topP, random);
      if (stop.has(next)) return;
      yield next;
      if (session.length >= capacity) return;
      logits = await session.feed(Int32Array.of(next));
    }
  } finally {
    session.close();
  }
}

/** Generates text after `prompt`, yielding pieces of text as tokens come. */
export async function* generate(model: Model, prompt: string, options: GenerateOptions = {}): AsyncGenerator<string> {
  if (typeof prompt !== 'string') invalidArgument('prompt', 'a string', prompt);
  const tokenizer = model.tokenizer;
  if (!tokenizer) throw new LowbitError('E_TOKENIZER', 'the model has no tokenizer; use generateTokens with token ids');
  const ids = tokenizer.encode(prompt, { bos: tokenizer.bosId !== undefined });
  // Primed with the prompt so the first piece keeps its leading space ("time" + " there").
  const decoder = new StreamDecoder(tokenizer);
  for (const id of ids) decoder.push(id);
  for await (const id of generateTokens(model, ids, options)) {
    const piece = decoder.push(id);
    if (piece) yield piece;
  }
}

/**
 * Token generation with a KV cache: the prompt is fed once, then one token at a time. Greedy at
 * temperature 0; otherwise softmax(logits / temperature) restricted to the smallest set of tokens
 * whose probability reaches topP (nucleus sampling), drawn from a seeded generator so a seed
 * reproduces a run (src/model/sampling.ts).
 *
 * By default a call goes through the model's scheduler (src/serve/scheduler.ts), so concurrent calls
 * on one model share each decode step (continuous batching) and get the same tokens as alone;
 * `scheduler: false` runs the call alone on its own session.
 */
import { LowbitError, invalidArgument } from '../errors.js';
import { StreamDecoder } from '../formats/tokenizer.js';
import { Scheduler, schedulerOf } from '../serve/scheduler.js';
import type { Model } from './model.js';
import { TokenSampler, planGeneration, type SamplingOptions } from './sampling.js';

export { argmax, sampleToken, seededRandom } from './sampling.js';

export interface GenerateOptions extends SamplingOptions {
  /** aborts the request (queued or running): the iterator rejects with E_ABORTED */
  signal?: AbortSignal;
  /**
   * Who runs the request: the model's shared scheduler by default (`schedulerOf(model)`: concurrent
   * calls are batched), a Scheduler you made with your own bounds, or false to run it alone on its
   * own session (no queue, no batching).
   */
  scheduler?: Scheduler | false;
}

/** Generates token ids after `promptIds` (which should start with BOS), one at a time. */
export async function* generateTokens(
  model: Model,
  promptIds: Int32Array,
  options: GenerateOptions = {},
): AsyncGenerator<number> {
  const { scheduler } = options;
  if (scheduler === false) {
    yield* generateAlone(model, promptIds, options);
    return;
  }
  if (scheduler !== undefined && !(scheduler instanceof Scheduler))
    invalidArgument('scheduler', 'a Scheduler or false', scheduler);
  if (scheduler !== undefined && scheduler.model !== model)
    throw new LowbitError('E_ARGUMENT', 'options.scheduler serves another model', { option: 'scheduler' });
  const stream = (scheduler ?? schedulerOf(model)).submit(promptIds, options);
  try {
    for await (const id of stream) yield id;
  } finally {
    stream.cancel(); // the consumer stopped early: free the slot (no-op once the stream ended)
  }
}

/** One request on its own session: prefill, then one feed per token. */
async function* generateAlone(model: Model, promptIds: Int32Array, options: GenerateOptions): AsyncGenerator<number> {
  const plan = planGeneration(model, promptIds, options);
  const sampler = new TokenSampler(plan);
  const session = await model.createSession(plan.capacity);
  try {
    let logits = await session.feed(promptIds);
    for (;;) {
      if (options.signal?.aborted)
        throw new LowbitError('E_ABORTED', 'generation was aborted', {}, { cause: options.signal.reason });
      const next = sampler.pick(logits);
      if (next === undefined) return;
      yield next;
      if (sampler.finished(session.length)) return;
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

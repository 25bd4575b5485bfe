/**
 * Perplexity, by the protocol of data/REFERENCE.md: tokenize the whole text once with BOS
 * at the very start, cut the ids into non-overlapping windows of seqLen tokens, drop the remainder,
 * run each window on its own (positions from 0, fresh attention state), and average the NLL of the
 * seqLen-1 next-token predictions of every window; ppl = exp(mean NLL).
 */
import { LowbitError, invalidArgument } from '../errors.js';
import type { Model } from './model.js';

export interface PerplexityProgress {
  windows: number;
  totalWindows: number;
  tokens: number;
  /** mean NLL so far */
  nll: number;
  seconds: number;
}

export interface PerplexityOptions {
  /** window length in tokens (default: the model's context, at most 2048) */
  seqLen?: number;
  /** windows per native call (default 1) */
  batch?: number;
  /** evaluate only the first N windows */
  maxWindows?: number;
  onProgress?: (p: PerplexityProgress) => void;
  signal?: AbortSignal;
}

export interface PerplexityResult {
  ppl: number;
  /** mean NLL in nats per predicted token */
  nll: number;
  /** tokens of the whole text, BOS included */
  tokens: number;
  windows: number;
  seqLen: number;
  /** predicted tokens (windows × (seqLen − 1)) */
  predicted: number;
  seconds: number;
}

/** Token ids of `text` for perplexity: BOS once, then the text as-is. */
export function perplexityIds(model: Model, text: string): Int32Array {
  if (typeof text !== 'string') invalidArgument('text', 'a string', text);
  if (!model.tokenizer)
    throw new LowbitError('E_TOKENIZER', 'the model has no tokenizer; pass token ids instead of text');
  return model.tokenizer.encode(text, { bos: model.tokenizer.bosId !== undefined });
}

/** Perplexity of `text` (or of ready token ids, BOS included) under `model`. */
export async function perplexity(
  model: Model,
  text: string | Int32Array,
  options: PerplexityOptions = {},
): Promise<PerplexityResult> {
  const seqLen = options.seqLen ?? Math.min(model.maxSeq, 2048);
  if (!Number.isInteger(seqLen) || seqLen < 2 || seqLen > model.maxSeq)
    invalidArgument('seqLen', `an integer in [2, ${model.maxSeq}]`, seqLen);
  const batch = options.batch ?? 1;
  if (!Number.isInteger(batch) || batch < 1) invalidArgument('batch', 'a positive integer', batch);
  if (options.maxWindows !== undefined && (!Number.isInteger(options.maxWindows) || options.maxWindows < 1)) {
    invalidArgument('maxWindows', 'a positive integer', options.maxWindows);
  }
  const ids = typeof text === 'string' ? perplexityIds(model, text) : text;
  if (!(ids instanceof Int32Array)) invalidArgument('text', 'a string or an Int32Array of token ids', text);
  let windows = Math.floor(ids.length / seqLen);
  if (windows === 0) {
    throw new LowbitError(
      'E_ARGUMENT',
      `the text has ${ids.length} tokens, fewer than one window of seqLen ${seqLen}`,
      { option: 'seqLen' },
    );
  }
  if (options.maxWindows !== undefined) windows = Math.min(windows, options.maxWindows);

  const start = performance.now();
  let sum = 0;
  let done = 0;
  while (done < windows) {
    if (options.signal?.aborted)
      throw new LowbitError('E_ABORTED', 'perplexity was aborted', {}, { cause: options.signal.reason });
    const n = Math.min(batch, windows - done);
    const nll = await model.nll(ids.subarray(done * seqLen, (done + n) * seqLen), { batch: n, seq: seqLen });
    for (let i = 0; i < nll.length; i++) {
      if (!Number.isFinite(nll[i]!)) {
        throw new LowbitError(
          'E_NAN',
          `the loss of window ${done + i} is ${nll[i]}: the model produces non-finite values (NaN or infinite weights or activations)`,
          { window: done + i },
        );
      }
      sum += nll[i]!;
    }
    done += n;
    options.onProgress?.({
      windows: done,
      totalWindows: windows,
      tokens: done * seqLen,
      nll: sum / (done * (seqLen - 1)),
      seconds: (performance.now() - start) / 1000,
    });
  }
  const predicted = windows * (seqLen - 1);
  const nll = sum / predicted;
  return {
    ppl: Math.exp(nll),
    nll,
    tokens: ids.length,
    windows,
    seqLen,
    predicted,
    seconds: (performance.now() - start) / 1000,
  };
}

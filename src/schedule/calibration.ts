/**
 * Calibration token windows for GPTQ: random windows (seeded) from text files, or text the model
 * writes itself (`self`, LLM-QAT's data-free idea: start from a random token and sample each next
 * token from the model's own distribution).
 */
import { readFile } from 'node:fs/promises';
import { LowbitError } from '../errors.js';
import { seededRandom, sampleToken } from '../model/generate.js';
import type { Model } from '../model/model.js';

export interface CalibrationOptions {
  /** text files to draw windows from, or 'self' to generate them with the model */
  source: string[] | 'self';
  samples: number;
  seqLen: number;
  seed: number;
  signal?: AbortSignal;
}

function aborted(signal: AbortSignal | undefined): void {
  if (signal?.aborted) throw new LowbitError('E_ABORTED', 'quantization was cancelled');
}

/**
 * `samples` windows of `seqLen` tokens, [samples * seqLen] row-major. From files: the texts are
 * tokenized (BOS once per file), joined, cut into non-overlapping windows at a seeded random offset,
 * and `samples` of them picked in seeded random order; E_CALIBRATION when there are too few tokens.
 */
export async function calibrationWindows(model: Model, options: CalibrationOptions): Promise<Int32Array> {
  const { samples, seqLen, seed } = options;
  if (options.source === 'self') return selfCalibration(model, options);
  const tokenizer = model.tokenizer;
  if (!tokenizer)
    throw new LowbitError('E_TOKENIZER', 'the model has no tokenizer: calibration text cannot be tokenized');
  if (options.source.length === 0) throw new LowbitError('E_CALIBRATION', 'no calibration files given');
  const parts: Int32Array[] = [];
  for (const file of options.source) {
    let text: string;
    try {
      text = await readFile(file, 'utf8');
    } catch (err) {
      throw new LowbitError(
        'E_CALIBRATION',
        `cannot read calibration file ${file}: ${(err as Error).message}`,
        { file },
        { cause: err },
      );
    }
    parts.push(tokenizer.encode(text, { bos: tokenizer.bosId !== undefined }));
    aborted(options.signal);
  }
  const total = parts.reduce((n, p) => n + p.length, 0);
  const all = new Int32Array(total);
  let at = 0;
  for (const p of parts) {
    all.set(p, at);
    at += p.length;
  }
  const windows = Math.floor(total / seqLen);
  if (windows < samples) {
    throw new LowbitError(
      'E_CALIBRATION',
      `calibration text has ${total} tokens: ${samples} samples of ${seqLen} tokens need ${samples * seqLen}; add text or lower samples / seqLen`,
      { tokens: total, needed: samples * seqLen },
    );
  }
  const random = seededRandom(seed);
  const offset = Math.floor(random() * (total - windows * seqLen + 1));
  // A seeded Fisher-Yates shuffle of the window slots; the first `samples` are used.
  const slots = Array.from({ length: windows }, (_, i) => i);
  for (let i = slots.length - 1; i > 0; i--) {
    const j = Math.floor(random() * (i + 1));
    [slots[i], slots[j]] = [slots[j]!, slots[i]!];
  }
  const out = new Int32Array(samples * seqLen);
  for (let s = 0; s < samples; s++)
    out.set(all.subarray(offset + slots[s]! * seqLen, offset + (slots[s]! + 1) * seqLen), s * seqLen);
  return out;
}

/** Windows sampled from the (fully loaded, unquantized) model, temperature 1, no top-p cut. */
async function selfCalibration(model: Model, options: CalibrationOptions): Promise<Int32Array> {
  const { samples, seqLen, seed } = options;
  const random = seededRandom(seed);
  const out = new Int32Array(samples * seqLen);
  const bos = model.tokenizer?.bosId;
  for (let s = 0; s < samples; s++) {
    const session = await model.createSession(seqLen);
    try {
      let pos = 0;
      if (bos !== undefined) out[s * seqLen + pos++] = bos;
      // A random first token (LLM-QAT): diversity comes from the start as much as from sampling.
      out[s * seqLen + pos++] = Math.floor(random() * model.vocabSize);
      let logits = await session.feed(out.subarray(s * seqLen, s * seqLen + pos));
      while (pos < seqLen) {
        aborted(options.signal);
        const next = sampleToken(logits, 1, 1, random);
        out[s * seqLen + pos++] = next;
        if (pos < seqLen) logits = await session.feed(Int32Array.of(next));
      }
    } finally {
      session.close();
    }
  }
  return out;
}

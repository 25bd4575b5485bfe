/**
 * Fuzzing the readers: mutated safetensors headers and files, llama2.c headers and SentencePiece
 * model files, all in memory. Each case must either open (and then read every tensor it declares)
 * or fail with a LowbitError; anything else (a TypeError, a RangeError, a hang) fails the test.
 * `npm test` runs LOWBIT_FUZZ_ITERS (default 10,000) safetensors cases; `npm run fuzz` 200,000.
 */
import { appendFileSync, cpSync, existsSync, mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { LowbitError } from '../../src/errors.js';
import { readPackedLinear } from '../../src/formats/gptq.js';
import { HfModel, LINEAR_NAMES } from '../../src/formats/hf.js';
import { inspectModel } from '../../src/formats/inspect.js';
import { openModelFiles } from '../../src/formats/open.js';
import { loadTokenizer } from '../../src/formats/tokenizer.js';
import { openModel } from '../../src/model/model.js';
import { perplexity } from '../../src/model/perplexity.js';
import {
  quantizeConfig,
  randomTensorBytes,
  safetensorsBytes,
  tinyLlama2c,
  tinyModelFiles,
  tinySentencePiece,
  tinyTensors,
  tinyTokenizerJson,
  writeFiles,
  type GptqSpec,
  type StoredTensorBytes,
} from './tiny-model.js';
import { llama2cLayout, parseLlama2cHeader } from '../../src/formats/llama2c.js';
import { encodeHeader, type TensorSpec } from '../../src/formats/safetensors-writer.js';
import {
  BufferSource,
  SAFETENSORS_DTYPES,
  SafetensorsFile,
  type SafetensorsDType,
} from '../../src/formats/safetensors.js';
import {
  PieceType,
  parseSentencePieceModel,
  serializeSentencePieceModel,
  SentencePieceTokenizer,
} from '../../src/formats/sentencepiece.js';
import { prng, randomSeed } from './helpers.js';

const ITERS = Number(process.env.LOWBIT_FUZZ_ITERS ?? 10_000);
const DTYPES = Object.keys(SAFETENSORS_DTYPES) as SafetensorsDType[];

type Rand = () => number;
const int = (rand: Rand, n: number): number => Math.floor(rand() * n);
const pick = <T>(rand: Rand, xs: readonly T[]): T => xs[int(rand, xs.length)]!;

/** A valid file: a few random tensors and their bytes. */
function validFile(rand: Rand): Uint8Array {
  const specs: TensorSpec[] = [];
  const n = 1 + int(rand, 4);
  for (let i = 0; i < n; i++) {
    const shape = Array.from({ length: int(rand, 3) }, () => int(rand, 4));
    specs.push({ name: `t${i}.${pick(rand, ['weight', 'bias', 'qweight'])}`, dtype: pick(rand, DTYPES), shape });
  }
  const header = encodeHeader(specs, rand() < 0.5 ? { format: 'pt' } : undefined);
  const dataBytes = specs.reduce((a, s) => a + s.shape.reduce((x, y) => x * y, 1) * SAFETENSORS_DTYPES[s.dtype], 0);
  const out = new Uint8Array(header.length + dataBytes);
  out.set(header);
  for (let i = header.length; i < out.length; i++) out[i] = int(rand, 256);
  return out;
}

const WEIRD_VALUES: unknown[] = [
  -1,
  0,
  1,
  2 ** 53,
  2 ** 64,
  1.5,
  -0.5,
  NaN,
  '3',
  null,
  true,
  [],
  {},
  [1, 2, 3],
  'F32',
  '',
  1e308,
];

/** Rewrites the JSON: one field of one entry replaced by something odd, re-encoded with a correct length. */
function mutateJson(bytes: Uint8Array, rand: Rand): Uint8Array {
  const n = Number(new DataView(bytes.buffer, bytes.byteOffset).getBigUint64(0, true));
  const header = JSON.parse(Buffer.from(bytes.subarray(8, 8 + n)).toString('utf8')) as Record<
    string,
    Record<string, unknown>
  >;
  const names = Object.keys(header);
  const name = pick(rand, names);
  const entry = header[name]!;
  switch (int(rand, 9)) {
    case 0:
      entry.dtype = pick(rand, [...DTYPES, 'Q4', 'f32', 'F8_E4M3', 7, null]);
      break;
    case 1:
      entry.shape = pick(rand, [
        [-1],
        [2 ** 31, 2 ** 31],
        [1.5],
        'x',
        null,
        [],
        [0],
        [2 ** 53],
        WEIRD_VALUES.slice(0, int(rand, 4)),
      ]);
      break;
    case 2: {
      const offs = entry.data_offsets as number[] | undefined;
      if (Array.isArray(offs)) entry.data_offsets = [offs[0]! + int(rand, 9) - 4, offs[1]! + int(rand, 9) - 4];
      break;
    }
    case 3:
      entry.data_offsets = pick(rand, WEIRD_VALUES);
      break;
    case 4:
      delete entry[pick(rand, ['dtype', 'shape', 'data_offsets'])];
      break;
    case 5:
      header.__metadata__ = pick(rand, [{ a: 1 }, 'x', [], { a: 'b' }, null]) as Record<string, unknown>;
      break;
    case 6:
      header[`extra${int(rand, 3)}`] = {
        dtype: pick(rand, DTYPES),
        shape: [int(rand, 4)],
        data_offsets: [int(rand, 64), int(rand, 64)],
      };
      break;
    case 7:
      header[name] = pick(rand, WEIRD_VALUES) as Record<string, unknown>;
      break;
    default: {
      // swap two entries' offsets
      const other = header[pick(rand, names)]!;
      [entry.data_offsets, other.data_offsets] = [other?.data_offsets, entry?.data_offsets];
    }
  }
  const json = Buffer.from(JSON.stringify(header) ?? 'null');
  const out = new Uint8Array(8 + json.length + (bytes.length - 8 - n));
  new DataView(out.buffer).setBigUint64(0, BigInt(json.length), true);
  out.set(json, 8);
  out.set(bytes.subarray(8 + n), 8 + json.length);
  return out;
}

function mutate(bytes: Uint8Array, rand: Rand): Uint8Array {
  const b = bytes.slice();
  switch (int(rand, 7)) {
    case 0: {
      // flip a few bytes anywhere in the header
      const n = Math.min(b.length, 8 + Number(new DataView(b.buffer).getBigUint64(0, true)));
      for (let k = 1 + int(rand, 4); k > 0; k--) b[int(rand, n)] = int(rand, 256);
      return b;
    }
    case 1: {
      // the length prefix: random, off by a little, or huge
      const v = new DataView(b.buffer);
      const n = v.getBigUint64(0, true);
      v.setBigUint64(
        0,
        pick(rand, [n + BigInt(int(rand, 17)) - 8n, BigInt(int(rand, 2 ** 31)), 2n ** 63n, 0n, 1n, 2n ** 64n - 1n]),
        true,
      );
      return b;
    }
    case 2:
      return b.subarray(0, int(rand, b.length + 1)); // truncated
    case 3:
      return Uint8Array.from([...b, ...Array.from({ length: 1 + int(rand, 16) }, () => int(rand, 256))]); // trailing bytes
    case 4:
      return mutateJson(b, rand);
    case 5:
      return Uint8Array.from({ length: int(rand, 64) }, () => int(rand, 256)); // garbage
    default: {
      // a valid prefix, then a JSON-ish garbage header of the right length
      const junk = Buffer.from(
        pick(rand, [
          '{',
          '{"a":',
          '{"a":{}}',
          '[]',
          '{"__metadata__":{}}',
          '{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}',
          '\u00ff\u00fe',
        ]),
      );
      const out = new Uint8Array(8 + junk.length + int(rand, 8));
      new DataView(out.buffer).setBigUint64(0, BigInt(junk.length), true);
      out.set(junk, 8);
      return out;
    }
  }
}

describe('fuzz: safetensors reader', () => {
  it(
    `${ITERS} mutated files: each opens and reads, or fails with a LowbitError`,
    { timeout: Math.max(120_000, ITERS * 2) },
    async () => {
      const seed = randomSeed();
      const rand = prng(seed);
      const outcomes = new Map<string, number>();
      for (let i = 0; i < ITERS; i++) {
        const bytes = mutate(validFile(rand), rand);
        try {
          const file = await SafetensorsFile.fromSource(new BufferSource(bytes));
          for (const name of file.names) {
            const t = await file.readTensor(name);
            expect(t.size).toBe(file.info(name).shape.reduce((a, b) => a * b, 1));
          }
          outcomes.set('ok', (outcomes.get('ok') ?? 0) + 1);
        } catch (err) {
          if (!(err instanceof LowbitError)) {
            throw new Error(
              `case ${i} (seed ${seed}) threw a non-LowbitError: ${String(err)}\nbytes: ${Buffer.from(bytes.subarray(0, 400)).toString('hex')}`,
            );
          }
          outcomes.set(err.code, (outcomes.get(err.code) ?? 0) + 1);
        }
      }
      // the mutations reach every validation path, and some survive as valid files
      for (const code of ['ok', 'E_SAFETENSORS_HEADER', 'E_SAFETENSORS_DTYPE', 'E_SAFETENSORS_OFFSETS']) {
        expect(outcomes.get(code) ?? 0, `${code} (seed ${seed}): ${JSON.stringify([...outcomes])}`).toBeGreaterThan(0);
      }
    },
  );
});

describe('fuzz: llama2.c headers and SentencePiece models', () => {
  const iters = Math.max(1000, Math.floor(ITERS / 5));

  it(
    `${iters} mutated llama2.c headers: parse and lay out, or E_LLAMA2C`,
    { timeout: Math.max(120_000, iters * 2) },
    () => {
      const seed = randomSeed();
      const rand = prng(seed);
      for (let i = 0; i < iters; i++) {
        const head = new Uint8Array(256);
        const v = new DataView(head.buffer);
        const versioned = rand() < 0.5;
        let p = 0;
        if (versioned) {
          v.setUint32(0, 0x616b3432, true);
          v.setInt32(4, pick(rand, [1, 2, 2, 3, -1]), true);
          p = 8;
        }
        const fields = [64, 172, 5, 8, 4, 512, 512];
        fields.forEach((f, j) =>
          v.setInt32(p + 4 * j, rand() < 0.2 ? pick(rand, [0, -f, f + 1, 2 ** 31 - 1, -(2 ** 31), 3]) : f, true),
        );
        v.setUint8(p + 28, int(rand, 3));
        v.setInt32(p + 29, pick(rand, [64, 32, 0, -8, 7]), true);
        const bytes = head.subarray(0, rand() < 0.1 ? int(rand, 256) : 256);
        try {
          const h = parseLlama2cHeader(bytes, 'fuzz.bin');
          const { fileSize } = llama2cLayout(h);
          expect(Number.isSafeInteger(fileSize) && fileSize > 0, `seed ${seed}`).toBe(true);
        } catch (err) {
          if (!(err instanceof LowbitError)) throw new Error(`case ${i} (seed ${seed}): ${String(err)}`);
          expect(err.code).toBe('E_LLAMA2C');
        }
      }
    },
  );

  it(
    `${iters} mutated SentencePiece model files: parse and encode, or E_TOKENIZER / E_UNSUPPORTED`,
    { timeout: Math.max(120_000, iters * 5) },
    () => {
      const seed = randomSeed();
      const rand = prng(seed);
      const model = tinySentencePiece({
        normal: ['▁', 'a', 'b', 'ab', '▁a', 'ba', '▁ab'],
        removeExtraWhitespaces: true,
      });
      const pieces = model.pieces;
      const good = serializeSentencePieceModel(model);
      // the serializer and parser agree
      expect(parseSentencePieceModel(good).pieces).toEqual(pieces);
      for (let i = 0; i < iters; i++) {
        const b = good.slice(0, rand() < 0.2 ? int(rand, good.length) : good.length);
        for (let k = int(rand, 4); k > 0; k--) b[int(rand, b.length)] = int(rand, 256);
        try {
          const sp = new SentencePieceTokenizer(parseSentencePieceModel(b, 'fuzz.model'));
          const ids = sp.encode('ab  ba é aab');
          sp.decode(ids);
        } catch (err) {
          if (!(err instanceof LowbitError)) throw new Error(`case ${i} (seed ${seed}): ${String(err)}`);
          expect(['E_TOKENIZER', 'E_UNSUPPORTED', 'E_ARGUMENT']).toContain(err.code);
        }
      }
    },
  );
});

// ---------------------------------------------------------------------------------------------
// Whole models: mutated config.json, quantize_config.json, GPTQ tensors, tokenizer.json,
// tokenizer.model and llama2.c files of a tiny model, driven through the readers, inspect, openModel
// and perplexity. Every outcome must be a result or a LowbitError, each input within 10 s.
// `npm test` runs LOWBIT_FUZZ_MODEL_ITERS (default 300); `npm run fuzz` 100,000. A hang inside one
// synchronous call cannot be timed from the same thread: LOWBIT_FUZZ_LOG=<file> appends each case's
// seed, index and kind before it runs, so the last line names the input that hung.

const MODEL_ITERS = Number(process.env.LOWBIT_FUZZ_MODEL_ITERS ?? 300);
/** one input may take this long (a hang otherwise) */
const CASE_LIMIT_MS = 10_000;
const TEXT = 'ab ba abc cab a b c ab ba cc aab bca '.repeat(3) + 'é!';

const WEIRD_JSON: unknown[] = [
  0,
  -1,
  1,
  2,
  3,
  7,
  8,
  1.5,
  -0.5,
  2 ** 31,
  2 ** 31 - 1,
  2 ** 32,
  2 ** 53,
  2 ** 64,
  1e308,
  -1e308,
  '',
  '4',
  'gptq',
  null,
  true,
  false,
  [],
  {},
  [1, 2],
  { a: 1 },
];

/** A value near `v` or of another kind: the structure-aware part of the JSON mutations. */
function weirdValue(rand: Rand, v: unknown): unknown {
  if (typeof v === 'number' && rand() < 0.5)
    return pick(rand, [v + 1, v - 1, v * 2, Math.floor(v / 2), -v, v + 0.5, v * 1000, 0]);
  if (typeof v === 'boolean' && rand() < 0.5) return !v;
  if (typeof v === 'string' && rand() < 0.3) return pick(rand, [v + 'x', v.slice(1), '', v.toUpperCase(), '▁' + v]);
  return pick(rand, WEIRD_JSON);
}

/** Replaces, deletes or adds one value somewhere in a JSON tree (a random walk from the root). */
function mutateJsonTree(root: unknown, rand: Rand, focus?: string[]): unknown {
  if (typeof root !== 'object' || root === null) return weirdValue(rand, root);
  const tree = structuredClone(root) as Record<string, unknown>;
  let node: Record<string, unknown> | unknown[] = tree;
  // start at a field the format is about, sometimes
  if (focus && rand() < 0.7) {
    const key = pick(rand, focus);
    if (!(key in tree) || rand() < 0.5) {
      tree[key] = weirdValue(rand, tree[key]);
      return tree;
    }
  }
  for (let depth = 0; depth < 4; depth++) {
    const keys = Array.isArray(node) ? node.map((_, i) => i) : Object.keys(node);
    if (keys.length === 0) break;
    const k = pick(rand, keys as (string | number)[]);
    const child = (node as Record<string | number, unknown>)[k];
    if (child && typeof child === 'object' && rand() < 0.6) {
      node = child as Record<string, unknown>;
      continue;
    }
    const op = int(rand, 10);
    if (op === 0 && !Array.isArray(node)) delete (node as Record<string, unknown>)[k as string];
    else if (op === 1 && Array.isArray(node)) node.splice(k as number, 1);
    else if (op === 2 && !Array.isArray(node))
      (node as Record<string, unknown>)[`${String(k)}_${int(rand, 3)}`] = weirdValue(rand, child);
    else (node as Record<string | number, unknown>)[k] = weirdValue(rand, child);
    break;
  }
  return tree;
}

function jsonBytes(v: unknown): Uint8Array {
  return Buffer.from(JSON.stringify(v) ?? 'null');
}

/** Bytes damaged without regard to their structure: flipped, truncated, extended, or replaced. */
function damageBytes(b: Uint8Array, rand: Rand): Uint8Array {
  switch (int(rand, 4)) {
    case 0: {
      const out = Uint8Array.from(b); // a copy (Buffer's slice is a view of the base file)
      for (let k = 1 + int(rand, 4); k > 0; k--) out[int(rand, out.length)] = int(rand, 256);
      return out;
    }
    case 1:
      return Uint8Array.from(b.subarray(0, int(rand, b.length)));
    case 2:
      return Uint8Array.from([
        ...b.subarray(0, Math.min(b.length, 4096)),
        ...Array.from({ length: 1 + int(rand, 64) }, () => int(rand, 256)),
      ]);
    default:
      return Uint8Array.from({ length: int(rand, 300) }, () => int(rand, 256));
  }
}

const CONFIG_FIELDS = [
  'hidden_size',
  'intermediate_size',
  'num_hidden_layers',
  'num_attention_heads',
  'num_key_value_heads',
  'head_dim',
  'vocab_size',
  'max_position_embeddings',
  'rms_norm_eps',
  'rope_theta',
  'rope_scaling',
  'rope_parameters',
  'tie_word_embeddings',
  'model_type',
  'hidden_act',
  'attention_bias',
  'mlp_bias',
  'bos_token_id',
  'eos_token_id',
  'pad_token_id',
  'sliding_window',
  'torch_dtype',
  'quantization_config',
];
const QUANT_FIELDS = ['bits', 'group_size', 'desc_act', 'sym', 'checkpoint_format', 'quant_method', 'static_groups'];
const ROPE_VALUES: unknown[] = [
  { rope_type: 'linear', factor: 2 },
  { rope_type: 'linear' },
  { type: 'dynamic', factor: 0 },
  { rope_type: 'llama3', factor: 8, low_freq_factor: 1, high_freq_factor: 4, original_max_position_embeddings: 8 },
  { rope_type: 'yarn', factor: -1 },
  { rope_type: 'yarn', factor: 4, original_max_position_embeddings: 0 },
  { rope_type: 'longrope', factor: 2 },
  { rope_theta: 0 },
  { rope_theta: -1 },
  { partial_rotary_factor: 0.5 },
];

/** A mutated config.json (structure-aware, or damaged bytes). */
function mutateConfig(config: Record<string, unknown>, rand: Rand): Uint8Array {
  if (rand() < 0.1) return damageBytes(jsonBytes(config), rand);
  let c = config;
  for (let k = 1 + int(rand, 2); k > 0; k--) {
    if (rand() < 0.15) c = { ...c, [pick(rand, ['rope_scaling', 'rope_parameters'])]: pick(rand, ROPE_VALUES) };
    else if (c.quantization_config && rand() < 0.3)
      c = { ...c, quantization_config: mutateJsonTree(c.quantization_config, rand, QUANT_FIELDS) };
    else c = mutateJsonTree(c, rand, CONFIG_FIELDS) as Record<string, unknown>;
  }
  return jsonBytes(c);
}

const PARTS = ['qweight', 'qzeros', 'scales', 'g_idx'] as const;

/** Tensors with one GPTQ (or dense) tensor's dtype, shape or values changed, or the tensor gone. */
function mutateTensors(tensors: StoredTensorBytes[], rand: Rand): Uint8Array {
  const out = tensors.map((t) => ({ ...t }));
  const quantized = out.filter((t) => PARTS.some((p) => t.name.endsWith(`.${p}`)));
  const i = out.indexOf(quantized.length && rand() < 0.8 ? pick(rand, quantized) : pick(rand, out));
  const t = out[i]!;
  const op = int(rand, 6);
  if (op === 0) {
    t.dtype = pick(rand, DTYPES);
    t.bytes = randomTensorBytes(t.dtype, t.shape, rand);
  } else if (op === 1) {
    const shape = [...t.shape];
    const d = int(rand, Math.max(1, shape.length));
    switch (int(rand, 4)) {
      case 0:
        shape[d] = Math.max(0, (shape[d] ?? 1) + pick(rand, [-1, 1, 2]));
        break;
      case 1:
        shape.reverse();
        break;
      case 2:
        shape.pop();
        break;
      default:
        shape.push(1 + int(rand, 2));
    }
    t.shape = shape;
    t.bytes = randomTensorBytes(t.dtype, shape, rand);
  } else if (op === 2) {
    out.splice(i, 1);
  } else if (op === 3 && t.dtype === 'I32' && t.bytes.length >= 4) {
    // g_idx / qzeros / qweight values: out of range, negative, extreme
    t.bytes = t.bytes.slice();
    const v = new DataView(t.bytes.buffer, t.bytes.byteOffset, t.bytes.byteLength);
    for (let k = 1 + int(rand, 3); k > 0; k--)
      v.setInt32(4 * int(rand, t.bytes.length / 4), pick(rand, [-1, 2 ** 31 - 1, -(2 ** 31), 99, 3, 1 << 20]), true);
  } else if (t.bytes.length >= 2) {
    // float values: NaN, Inf, 0 (as f16 / f32 bit patterns)
    const bytes = t.bytes.slice();
    const w = t.dtype === 'F32' ? 4 : 2;
    const pattern =
      w === 4
        ? pick(rand, [
            [0, 0, 0xc0, 0x7f],
            [0, 0, 0x80, 0x7f],
            [0, 0, 0, 0],
          ])
        : pick(rand, [
            [0, 0x7e],
            [0, 0x7c],
            [0, 0],
          ]);
    for (let k = 1 + int(rand, 3); k > 0; k--) bytes.set(pattern, w * int(rand, bytes.length / w));
    t.bytes = bytes;
  }
  return safetensorsBytes(out);
}

/** A mutated SentencePiece model (structure-aware on the message, or damaged serialized bytes). */
function mutateSentencePiece(rand: Rand): Uint8Array {
  const m = tinySentencePiece();
  if (rand() < 0.25) return damageBytes(serializeSentencePieceModel(m), rand);
  for (let k = 1 + int(rand, 2); k > 0; k--) {
    const p = m.pieces[int(rand, m.pieces.length)]!;
    switch (int(rand, 9)) {
      case 0:
        p.type = pick(rand, [0, 1, 2, 3, 4, 5, 6, 7, 99]) as PieceType;
        break;
      case 1:
        p.score = pick(rand, [NaN, Infinity, -Infinity, 1e30, -1e30, 0]);
        break;
      case 2:
        p.piece = pick(rand, ['', 'a', '<0x41>', '<0xZZ>', '▁▁', 'x'.repeat(1000), '\u0000', '\uD800']);
        break;
      case 3:
        m.pieces.splice(int(rand, m.pieces.length), 1 + int(rand, 40));
        break;
      case 4: {
        const field = pick(rand, ['unkId', 'bosId', 'eosId', 'padId'] as const);
        m[field] = pick(rand, [-1, 0, 1, 2, m.pieces.length, m.pieces.length - 1, 2 ** 31 - 1, 100000]);
        break;
      }
      case 5:
        m.modelType = pick(rand, ['unigram', 'bpe', 'word', 'char'] as const);
        break;
      case 6:
        m.byteFallback = !m.byteFallback;
        break;
      case 7:
        m.normalizer = {
          removeExtraWhitespaces: rand() < 0.5,
          addDummyPrefix: rand() < 0.5,
          escapeWhitespaces: rand() < 0.5,
        };
        m.hasCharsMap = rand() < 0.2;
        m.treatWhitespaceAsSuffix = rand() < 0.2;
        break;
      default:
        m.pieces.push(...m.pieces.slice(0, 1 + int(rand, 5)).map((q) => ({ ...q }))); // duplicates
    }
  }
  try {
    return serializeSentencePieceModel(m);
  } catch {
    return damageBytes(serializeSentencePieceModel(tinySentencePiece()), rand);
  }
}

/** A mutated tokenizer.json: its ids, merges, added tokens, normalizers and decoders. */
function mutateTokenizerJson(rand: Rand): Uint8Array {
  const json = tinyTokenizerJson() as Record<string, any>;
  if (rand() < 0.1) return damageBytes(jsonBytes(json), rand);
  switch (int(rand, 6)) {
    case 0: {
      const keys = Object.keys(json.model.vocab);
      json.model.vocab[pick(rand, keys)] = weirdValue(rand, 5);
      break;
    }
    case 1: {
      const merges = json.model.merges as unknown[];
      merges[int(rand, merges.length)] = pick(rand, [
        ['a'],
        ['a', 'b', 'c'],
        'a b',
        'ab',
        ['zz', 'q'],
        [1, 2],
        null,
        ['', ''],
      ]);
      break;
    }
    case 2: {
      const added = json.added_tokens as Record<string, unknown>[];
      if (rand() < 0.5) added[int(rand, added.length)]!.id = weirdValue(rand, 1);
      else
        added.push({
          id: pick(rand, [272, 3, 0, 300, 2 ** 31]),
          content: pick(rand, ['<x>', 'a', '', ' ']),
          special: rand() < 0.5,
          lstrip: rand() < 0.5,
          rstrip: rand() < 0.5,
          normalized: rand() < 0.5,
          single_word: false,
        });
      break;
    }
    case 3:
      json[pick(rand, ['normalizer', 'pre_tokenizer', 'decoder', 'post_processor'])] = pick(rand, [
        null,
        {},
        { type: 'Nope' },
        { type: 'Sequence', normalizers: null },
        { type: 'Replace', pattern: { Regex: '(' }, content: 'x' },
        { type: 'Metaspace', replacement: '', prepend_scheme: 'always' },
        { type: 'ByteLevel' },
        { type: 'Sequence', decoders: [{ type: 'Strip', content: ' ', start: -1, stop: 2 ** 31 }] },
        { type: 'Split', pattern: { Regex: '\\s+' }, behavior: 'Isolated', invert: false },
        { type: 'NFKC' },
        { type: 'Prepend', prepend: '▁' },
      ]);
      break;
    case 4:
      json.model = mutateJsonTree(json.model, rand, [
        'type',
        'unk_token',
        'byte_fallback',
        'fuse_unk',
        'vocab',
        'merges',
        'dropout',
        'continuing_subword_prefix',
      ]);
      break;
    default:
      if (rand() < 0.5)
        json.model = {
          type: 'Unigram',
          unk_id: pick(rand, [0, -1, 5000, null]),
          vocab: [
            ['<unk>', 0],
            ['a', -1],
            ['b', pick(rand, [NaN, -2, 'x'])],
            ['▁', -3],
          ],
        };
      else json.model = { type: 'WordPiece', unk_token: '[UNK]', vocab: { '[UNK]': 0, a: weirdValue(rand, 1) } };
  }
  return jsonBytes(json);
}

/** A mutated llama2.c file: header fields, version, flag, size, or a consistent header of other dims. */
function mutateLlama2c(base: Uint8Array, rand: Rand): Uint8Array {
  if (rand() < 0.2) {
    const dims = {
      dim: pick(rand, [8, 16, 32]),
      n_heads: pick(rand, [1, 2, 4]),
      n_kv_heads: 1,
      n_layers: pick(rand, [1, 2, 3]),
      vocab_size: pick(rand, [100, 272, 300]),
      seq_len: pick(rand, [1, 2, 8, 64]),
    };
    return tinyLlama2c(rand, dims);
  }
  const b = base.slice();
  const v = new DataView(b.buffer);
  switch (int(rand, 6)) {
    case 0:
    case 1: {
      const field = int(rand, 7);
      const cur = v.getInt32(8 + 4 * field, true);
      v.setInt32(
        8 + 4 * field,
        pick(rand, [
          0,
          -1,
          -cur,
          cur + 1,
          cur - 1,
          cur * 2,
          2 ** 31 - 1,
          -(2 ** 31),
          1 << 17,
          (1 << 17) + 1,
          1 << 24,
          1_000_000,
        ]),
        true,
      );
      return b;
    }
    case 2:
      v.setInt32(4, pick(rand, [0, 2, 3, -1]), true);
      if (rand() < 0.5) v.setInt32(37, pick(rand, [0, -8, 7, 8, 16, 2 ** 31 - 1]), true);
      return b;
    case 3:
      v.setUint8(36, pick(rand, [0, 2, 255]));
      return b;
    case 4:
      if (rand() < 0.5) v.setUint32(0, int(rand, 2 ** 32), true);
      return b.subarray(0, int(rand, b.length));
    default:
      return Uint8Array.from([...b, ...Array.from({ length: pick(rand, [1, 4, 256, 4 * 16]) }, () => int(rand, 256))]);
  }
}

/** Reads everything a reader declares: dense tensors, and GPTQ linears through readPackedLinear. */
async function readAll(path: string): Promise<void> {
  const reader = await openModelFiles(path);
  try {
    for (const name of reader.names) await reader.readTensor(name);
    if (reader instanceof HfModel && reader.config.quantization) {
      for (const b of reader.tensors.blocks)
        for (const name of LINEAR_NAMES) if (b[name].quantized) await readPackedLinear(reader, b.index, name);
    }
  } finally {
    await reader.close();
  }
}

async function runModel(path: string, tokenizer?: string): Promise<void> {
  const model = await openModel(path, { device: 'cpu', ...(tokenizer ? { tokenizer } : {}) });
  try {
    if (model.tokenizer) {
      const r = await perplexity(model, TEXT, { seqLen: Math.min(8, model.maxSeq), maxWindows: 1 });
      expect(r.windows).toBe(1);
      model.tokenizer.decode(model.tokenizer.encode(TEXT));
    }
  } finally {
    await model.close();
  }
}

async function runTokenizer(dir: string, kind: 'sentencepiece' | 'tokenizer.json'): Promise<void> {
  const tok = await loadTokenizer(dir, { kind });
  const ids = tok.encode(TEXT, { bos: tok.bosId !== undefined });
  tok.decode(ids);
  tok.decode([]);
  for (const id of ids.slice(0, 4)) tok.pieceOf(id);
}

describe('fuzz: whole models (config.json, quantize_config.json, GPTQ tensors, tokenizers, llama2.c)', () => {
  // made when the test runs (a suite filtered out by -t runs no hooks, and would leave it behind)
  let root = '';
  beforeAll(() => {
    root = mkdtempSync(join(existsSync('/dev/shm') ? '/dev/shm' : tmpdir(), 'lowbit-fuzz-'));
  });
  afterAll(() => {
    if (root) rmSync(root, { recursive: true, force: true });
  });

  it(
    `${MODEL_ITERS} mutated inputs through the readers, inspect, openModel, perplexity and the tokenizers: a result or a LowbitError, each within ${CASE_LIMIT_MS / 1000} s`,
    { timeout: 120_000 + MODEL_ITERS * 200 },
    async () => {
      const seed = Number(process.env.LOWBIT_FUZZ_SEED ?? randomSeed());
      const rand = prng(seed);
      const gptqSpecs: GptqSpec[] = [
        { bits: 4, groupSize: 8, format: 'gptq' },
        { bits: 3, groupSize: -1, format: 'gptq_v2' },
        { bits: 2, groupSize: 16, format: 'gptq', descAct: true },
        { bits: 8, groupSize: 8, format: 'gptq_v2' },
      ];
      const dense = { files: tinyModelFiles(rand), tensors: tinyTensors(rand) };
      dense.files.set('model.safetensors', safetensorsBytes(dense.tensors));
      const gptqBases = gptqSpecs.map((spec) => {
        const tensors = tinyTensors(rand, spec);
        const files = tinyModelFiles(rand, spec);
        files.set('model.safetensors', safetensorsBytes(tensors));
        return { spec, files, tensors };
      });
      const llama2c = tinyLlama2c(rand);
      const outcomes = new Map<string, number>();
      const examples = new Map<string, string>();
      const log = process.env.LOWBIT_FUZZ_LOG;
      let slowest = 0;
      const t0 = performance.now();

      for (let i = 0; i < MODEL_ITERS; i++) {
        const kind = pick(rand, [
          'config',
          'config',
          'gptq-config',
          'quantize_config',
          'gptq-tensors',
          'gptq-tensors',
          'dense-tensors',
          'tokenizer.json',
          'tokenizer.model',
          'llama2c',
          'llama2c',
        ] as const);
        const gptq = pick(rand, gptqBases);
        const dir = join(root, `c${i % 4}`);
        rmSync(dir, { recursive: true, force: true });
        let files: Map<string, Uint8Array>;
        let file: string | undefined;
        let runs: (() => Promise<unknown>)[];
        if (kind === 'llama2c') {
          mkdirSync(dir, { recursive: true });
          file = join(dir, 'model.bin');
          writeFileSync(file, mutateLlama2c(llama2c, rand));
          const tok = join(dir, 'tokenizer.model');
          writeFileSync(tok, dense.files.get('tokenizer.model')!);
          runs = [() => readAll(file!), () => inspectModel(file!), () => runModel(file!, tok)];
        } else {
          files = new Map(kind.startsWith('gptq') || kind === 'quantize_config' ? gptq.files : dense.files);
          const config = JSON.parse(Buffer.from(files.get('config.json')!).toString()) as Record<string, unknown>;
          switch (kind) {
            case 'config':
            case 'gptq-config':
              files.set('config.json', mutateConfig(config, rand));
              break;
            case 'quantize_config':
              if (rand() < 0.1) files.delete('quantize_config.json');
              else
                files.set(
                  'quantize_config.json',
                  rand() < 0.1
                    ? damageBytes(files.get('quantize_config.json')!, rand)
                    : jsonBytes(mutateJsonTree(quantizeConfig(gptq.spec), rand, QUANT_FIELDS)),
                );
              if (rand() < 0.2) files.set('config.json', jsonBytes({ ...config, quantization_config: undefined }));
              break;
            case 'gptq-tensors':
              files.set('model.safetensors', mutateTensors(gptq.tensors, rand));
              break;
            case 'dense-tensors':
              files.set('model.safetensors', mutateTensors(dense.tensors, rand));
              break;
            case 'tokenizer.json':
              files.set('tokenizer.json', mutateTokenizerJson(rand));
              files.delete('tokenizer.model'); // so that openModel loads tokenizer.json
              break;
            case 'tokenizer.model':
              files.set('tokenizer.model', mutateSentencePiece(rand));
              break;
          }
          writeFiles(dir, files);
          runs =
            kind === 'tokenizer.json' || kind === 'tokenizer.model'
              ? [
                  () => runTokenizer(dir, kind === 'tokenizer.json' ? 'tokenizer.json' : 'sentencepiece'),
                  () => runModel(dir),
                ]
              : [() => readAll(dir), () => inspectModel(dir), () => runModel(dir)];
        }
        if (log) appendFileSync(log, `${seed} ${i} ${kind}\n`);
        const start = performance.now();
        for (const [step, run] of runs.entries()) {
          try {
            await run();
            outcomes.set(`${kind}: ok`, (outcomes.get(`${kind}: ok`) ?? 0) + 1);
          } catch (err) {
            if (!(err instanceof LowbitError)) {
              const kept = join(tmpdir(), `lowbit-fuzz-case-${seed}-${i}`);
              cpSync(dir, kept, { recursive: true });
              throw new Error(
                `case ${i} (${kind}, step ${step}, seed ${seed}; files kept in ${kept}) threw a non-LowbitError: ${(err as Error)?.stack ?? String(err)}`,
              );
            }
            outcomes.set(`${kind}: ${err.code}`, (outcomes.get(`${kind}: ${err.code}`) ?? 0) + 1);
            if (!examples.has(`${kind}: ${err.code}`))
              examples.set(`${kind}: ${err.code}`, err.message.replace(root, '').slice(0, 240));
          }
        }
        const ms = performance.now() - start;
        slowest = Math.max(slowest, ms);
        if (log && (i + 1) % 1000 === 0)
          appendFileSync(
            log,
            `# ${i + 1} inputs done, slowest ${slowest.toFixed(0)} ms: ${[...outcomes]
              .sort()
              .map(([k, v]) => `${k} ${v}`)
              .join(', ')}\n`,
          );
        if (ms > CASE_LIMIT_MS)
          throw new Error(
            `case ${i} (${kind}, seed ${seed}) took ${ms.toFixed(0)} ms, over the ${CASE_LIMIT_MS} ms bound`,
          );
      }
      const summary = [...outcomes]
        .sort()
        .map(([k, v]) => `${k} ${v}`)
        .join(', ');
      if (process.env.LOWBIT_FUZZ_REPORT) {
        console.log(
          `fuzz: ${MODEL_ITERS} inputs (seed ${seed}) in ${((performance.now() - t0) / 1000).toFixed(1)} s, slowest ${slowest.toFixed(0)} ms; 0 non-LowbitErrors, 0 over ${CASE_LIMIT_MS} ms\n${summary}`,
        );
        for (const [k, m] of [...examples].sort()) console.log(`  ${k}: ${m}`);
      }
      // the mutations reach both sides: some inputs still work end to end, most are refused
      if (MODEL_ITERS >= 200) {
        for (const kind of ['config', 'gptq-tensors', 'tokenizer.model', 'llama2c']) {
          expect(
            [...outcomes.keys()].some((k) => k.startsWith(`${kind}: E_`)),
            `${kind} refused at least once (seed ${seed}): ${summary}`,
          ).toBe(true);
        }
        expect(
          outcomes.get('config: ok') ?? 0,
          `some config mutations survive (seed ${seed}): ${summary}`,
        ).toBeGreaterThan(0);
      }
    },
  );
});

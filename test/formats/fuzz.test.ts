/**
 * Fuzzing the readers: mutated safetensors headers and files, llama2.c headers and SentencePiece
 * model files, all in memory. Each case must either open (and then read every tensor it declares)
 * or fail with a LowbitError; anything else (a TypeError, a RangeError, a hang) fails the test.
 * `npm test` runs LOWBIT_FUZZ_ITERS (default 10,000) safetensors cases; `npm run fuzz` 200,000.
 */
import { describe, expect, it } from 'vitest';
import { LowbitError } from '../../src/errors.js';
import { llama2cLayout, parseLlama2cHeader } from '../../src/formats/llama2c.js';
import { encodeHeader, type TensorSpec } from '../../src/formats/safetensors-writer.js';
import { BufferSource, SAFETENSORS_DTYPES, SafetensorsFile, type SafetensorsDType } from '../../src/formats/safetensors.js';
import { PieceType, parseSentencePieceModel, serializeSentencePieceModel, SentencePieceTokenizer, type SentencePieceModel } from '../../src/formats/sentencepiece.js';
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

const WEIRD_VALUES: unknown[] = [-1, 0, 1, 2 ** 53, 2 ** 64, 1.5, -0.5, NaN, '3', null, true, [], {}, [1, 2, 3], 'F32', '', 1e308];

/** Rewrites the JSON: one field of one entry replaced by something odd, re-encoded with a correct length. */
function mutateJson(bytes: Uint8Array, rand: Rand): Uint8Array {
  const n = Number(new DataView(bytes.buffer, bytes.byteOffset).getBigUint64(0, true));
  const header = JSON.parse(Buffer.from(bytes.subarray(8, 8 + n)).toString('utf8')) as Record<string, Record<string, unknown>>;
  const names = Object.keys(header);
  const name = pick(rand, names);
  const entry = header[name]!;
  switch (int(rand, 9)) {
    case 0:
      entry.dtype = pick(rand, [...DTYPES, 'Q4', 'f32', 'F8_E4M3', 7, null]);
      break;
    case 1:
      entry.shape = pick(rand, [[-1], [2 ** 31, 2 ** 31], [1.5], 'x', null, [], [0], [2 ** 53], WEIRD_VALUES.slice(0, int(rand, 4))]);
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
      header[`extra${int(rand, 3)}`] = { dtype: pick(rand, DTYPES), shape: [int(rand, 4)], data_offsets: [int(rand, 64), int(rand, 64)] };
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
      v.setBigUint64(0, pick(rand, [n + BigInt(int(rand, 17)) - 8n, BigInt(int(rand, 2 ** 31)), 2n ** 63n, 0n, 1n, 2n ** 64n - 1n]), true);
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
      const junk = Buffer.from(pick(rand, ['{', '{"a":', '{"a":{}}', '[]', '{"__metadata__":{}}', '{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}', '\u00ff\u00fe']));
      const out = new Uint8Array(8 + junk.length + int(rand, 8));
      new DataView(out.buffer).setBigUint64(0, BigInt(junk.length), true);
      out.set(junk, 8);
      return out;
    }
  }
}

describe('fuzz: safetensors reader', () => {
  it(`${ITERS} mutated files: each opens and reads, or fails with a LowbitError`, async () => {
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
          throw new Error(`case ${i} (seed ${seed}) threw a non-LowbitError: ${String(err)}\nbytes: ${Buffer.from(bytes.subarray(0, 400)).toString('hex')}`);
        }
        outcomes.set(err.code, (outcomes.get(err.code) ?? 0) + 1);
      }
    }
    // the mutations reach every validation path, and some survive as valid files
    for (const code of ['ok', 'E_SAFETENSORS_HEADER', 'E_SAFETENSORS_DTYPE', 'E_SAFETENSORS_OFFSETS']) {
      expect(outcomes.get(code) ?? 0, `${code} (seed ${seed}): ${JSON.stringify([...outcomes])}`).toBeGreaterThan(0);
    }
  });
});

describe('fuzz: llama2.c headers and SentencePiece models', () => {
  const iters = Math.max(1000, Math.floor(ITERS / 5));

  it(`${iters} mutated llama2.c headers: parse and lay out, or E_LLAMA2C`, () => {
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
      fields.forEach((f, j) => v.setInt32(p + 4 * j, rand() < 0.2 ? pick(rand, [0, -f, f + 1, 2 ** 31 - 1, -(2 ** 31), 3]) : f, true));
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
  });

  it(`${iters} mutated SentencePiece model files: parse and encode, or E_TOKENIZER / E_UNSUPPORTED`, () => {
    const seed = randomSeed();
    const rand = prng(seed);
    const pieces = [
      { piece: '<unk>', score: 0, type: PieceType.Unknown },
      { piece: '<s>', score: 0, type: PieceType.Control },
      { piece: '</s>', score: 0, type: PieceType.Control },
      ...Array.from({ length: 256 }, (_, b) => ({ piece: `<0x${b.toString(16).toUpperCase().padStart(2, '0')}>`, score: 0, type: PieceType.Byte })),
      ...['▁', 'a', 'b', 'ab', '▁a', 'ba', '▁ab'].map((p, i) => ({ piece: p, score: -i, type: PieceType.Normal })),
    ];
    const model: SentencePieceModel = {
      pieces,
      modelType: 'bpe',
      byteFallback: true,
      unkId: 0,
      bosId: 1,
      eosId: 2,
      padId: -1,
      unkSurface: ' ⁇ ',
      normalizerName: 'identity',
      hasCharsMap: false,
      normalizer: { removeExtraWhitespaces: true, addDummyPrefix: true, escapeWhitespaces: true },
      treatWhitespaceAsSuffix: false,
    };
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
  });
});

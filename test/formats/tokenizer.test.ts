import { createHash } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import { LowbitError } from '../../src/errors.js';
import { StreamDecoder, loadTokenizer, type TextTokenizer } from '../../src/formats/tokenizer.js';
import { parseSentencePieceModel, parseLlama2cTokenizer } from '../../src/formats/sentencepiece.js';
import { dataPath } from './helpers.js';
import { optionalSharedData } from '../helpers/data.js';

interface StreamRef {
  tokens: number;
  sha256: string;
  first16: number[];
}
interface FileRef {
  file: string;
  sentencepiece: StreamRef;
  tokenizer_json: StreamRef;
}

function sha256(ids: Int32Array): string {
  // int32 little-endian, as REFERENCE.md hashes them (this machine is little-endian, checked below)
  return createHash('sha256')
    .update(new Uint8Array(ids.buffer, ids.byteOffset, ids.byteLength))
    .digest('hex');
}

function checkStream(tok: TextTokenizer, file: string, ref: StreamRef): void {
  const text = readFileSync(dataPath(file), 'utf8');
  const ids = tok.encode(text, { bos: true });
  expect(ids.length, `${file} token count`).toBe(ref.tokens);
  expect(Array.from(ids.subarray(0, 16)), `${file} first ids`).toEqual(ref.first16);
  expect(sha256(ids), `${file} SHA256 of the int32 ids`).toBe(ref.sha256);
}

const refs = (JSON.parse(readFileSync(dataPath('reference.json'), 'utf8')) as { ppl: Record<string, FileRef> }).ppl;
const byFile = (f: string): FileRef => Object.values(refs).find((r) => r.file === f)!;

describe('reference token streams (REFERENCE.md)', () => {
  it('the machine is little-endian (the hashes are of little-endian int32)', () => {
    expect(new Uint8Array(new Int32Array([1]).buffer)[0]).toBe(1);
  });

  // The perplexity tests feed on these two: they always run.
  for (const file of ['tinystories-valid.txt', 'wiki.test.raw']) {
    it(`SentencePiece (tok512.model) reproduces ${file}`, async () => {
      checkStream(await loadTokenizer(dataPath('tok512.model')), file, byFile(file).sentencepiece);
    });
  }

  it('llama2.c tok512.bin with SentencePiece default normalization gives the same stream as tok512.model', async () => {
    const file = 'tinystories-valid.eval.txt';
    checkStream(await loadTokenizer(dataPath('tok512.bin')), file, byFile(file).sentencepiece);
  });

  it('tokenizer.json (as transformers encodes it) reproduces its own stream on the calibration half', async () => {
    const file = 'tinystories-valid.calib.txt';
    checkStream(await loadTokenizer(dataPath('stories260K-hf/tokenizer.json')), file, byFile(file).tokenizer_json);
  });

  it('a model directory prefers tokenizer.model, and kind picks tokenizer.json', async () => {
    const sp = await loadTokenizer(dataPath('stories260K-hf'));
    expect(sp.kind).toBe('sentencepiece');
    const js = await loadTokenizer(dataPath('stories260K-hf'), { kind: 'tokenizer.json' });
    expect(js.kind).toBe('tokenizer.json');
    for (const t of [sp, js]) {
      expect(t.bosId).toBe(1);
      expect(t.eosId).toBe(2);
      expect(t.vocabSize).toBe(512);
    }
    // the two differ exactly on whitespace runs
    const text = '  Once upon  a time,\n  there was   a dog.  ';
    const a = Array.from(sp.encode(text));
    const b = Array.from(js.encode(text));
    expect(a).not.toEqual(b);
    expect(sp.decode(a)).toBe('Once upon a time,\n there was a dog.');
    // transformers' decoder strips the one leading space Metaspace added, and keeps the rest
    expect(js.decode(b)).toBe(text.slice(1));
  });

  it('decodes byte-fallback tokens back to UTF-8, whole and streamed', async () => {
    for (const tok of [
      await loadTokenizer(dataPath('tok512.model')),
      await loadTokenizer(dataPath('stories260K-hf/tokenizer.json')),
    ]) {
      const text = 'Tim saw a café 🐶 — naïve, 東京.';
      const ids = tok.encode(text, { bos: true, eos: true });
      expect(ids[0]).toBe(1);
      expect(ids[ids.length - 1]).toBe(2);
      expect(tok.decode(ids)).toBe(text);
      const stream = new StreamDecoder(tok);
      let out = '';
      for (const id of ids) {
        const piece = stream.push(id);
        expect(piece).not.toContain('\uFFFD');
        out += piece;
      }
      expect(out).toBe(text);
      expect(() => tok.decode([0, 99999])).toThrow(LowbitError);
    }
  });
});

// Llama 2's tokenizer is not in data/ (Meta's licence): read from ../shared/data when present.
const llama2Model = optionalSharedData('tokenizer.model');
const llama2Bin = optionalSharedData('tokenizer.bin');
describe.skipIf(!llama2Model || !llama2Bin)('Llama 2 vocabulary (32000 pieces, runs of ▁ in pieces)', () => {
  it('cutting the text into words changes nothing, and tokenizer.bin agrees with tokenizer.model', async () => {
    const { readSentencePieceModel, SentencePieceTokenizer } = await import('../../src/formats/sentencepiece.js');
    const model = await readSentencePieceModel(llama2Model!);
    expect(model.normalizer.removeExtraWhitespaces).toBe(false);
    const text =
      readFileSync(dataPath('wiki.test.raw'), 'utf8').slice(0, 60_000) + '\n    indented   code\tand\ttabs  ';
    const cut = new SentencePieceTokenizer(model).encode(text);
    const whole = new SentencePieceTokenizer(model, 'tokenizer.model', { cutWords: false }).encode(text);
    expect(cut).toEqual(whole);
    const bin = await loadTokenizer(llama2Bin!, { normalizer: { removeExtraWhitespaces: false } });
    expect(Array.from(bin.encode(text))).toEqual(cut);
    const sp = await loadTokenizer(llama2Model!);
    // "▁Hello" and "▁world" are single pieces of the Llama 2 vocabulary
    const ids = Array.from(sp.encode('Hello world'));
    expect(ids.map((i) => sp.pieceOf(i))).toEqual(['\u2581Hello', '\u2581world']);
    expect(sp.decode(sp.encode(text))).toBe(text);
  });
});

describe.skipIf(process.env.LOWBIT_FULL_TOKENIZER_TESTS !== '1')(
  'all reference streams (LOWBIT_FULL_TOKENIZER_TESTS=1)',
  () => {
    for (const ref of Object.values(refs)) {
      for (const kind of ['sentencepiece', 'tokenizer_json', 'llama2c'] as const) {
        it(`${kind}: ${ref.file}`, async () => {
          const source =
            kind === 'sentencepiece'
              ? 'tok512.model'
              : kind === 'llama2c'
                ? 'tok512.bin'
                : 'stories260K-hf/tokenizer.json';
          checkStream(
            await loadTokenizer(dataPath(source)),
            ref.file,
            kind === 'tokenizer_json' ? ref.tokenizer_json : ref.sentencepiece,
          );
        });
      }
    }
  },
);

describe('SentencePiece BPE on a synthetic model', () => {
  // pieces: <unk> <s> </s>, 256 bytes, then single characters and merges with chosen scores
  function model(pieces: [string, number][], normalizer = {}) {
    const bytes = Array.from({ length: 256 }, (_, b) => `<0x${b.toString(16).toUpperCase().padStart(2, '0')}>`);
    const enc = (s: string): number[] => Array.from(Buffer.from(s, 'utf8'));
    // build a ModelProto by hand: field 1 pieces, field 2 trainer (model_type 2, byte_fallback), field 3 normalizer
    const varint = (n: number): number[] => {
      const out: number[] = [];
      do {
        out.push((n & 0x7f) | (n > 0x7f ? 0x80 : 0));
        n >>>= 7;
      } while (n);
      return out;
    };
    const lenField = (field: number, body: number[]): number[] => [
      ...varint((field << 3) | 2),
      ...varint(body.length),
      ...body,
    ];
    const intField = (field: number, v: number): number[] => [...varint(field << 3), ...varint(v)];
    const floatField = (field: number, v: number): number[] => [
      (field << 3) | 5,
      ...new Uint8Array(new Float32Array([v]).buffer),
    ];
    const piece = (text: string, score: number, type: number) =>
      lenField(1, [...lenField(1, enc(text)), ...floatField(2, score), ...intField(3, type)]);
    const all = [
      ...piece('<unk>', 0, 2),
      ...piece('<s>', 0, 3),
      ...piece('</s>', 0, 3),
      ...bytes.flatMap((b) => piece(b, 0, 6)),
      ...pieces.flatMap(([t, s]) => piece(t, s, 1)),
      ...lenField(2, [...intField(3, 2), ...intField(35, 1)]),
      ...lenField(3, [
        ...lenField(1, enc('identity')),
        ...Object.entries(normalizer).flatMap(([k, v]) => intField(k === 'addDummyPrefix' ? 3 : 4, v ? 1 : 0)),
      ]),
    ];
    return parseSentencePieceModel(Uint8Array.from(all));
  }

  it('merges by score, leftmost first on ties, and falls back to bytes', async () => {
    const { SentencePieceTokenizer } = await import('../../src/formats/sentencepiece.js');
    const m = model([
      ['\u2581', -1],
      ['a', -2],
      ['b', -3],
      ['ab', -5],
      ['bb', -4],
      ['\u2581a', -6],
      ['abb', -7],
    ]);
    const sp = new SentencePieceTokenizer(m);
    const id = (p: string) => m.pieces.findIndex((x) => x.piece === p);
    const whole = new SentencePieceTokenizer(m, 'synthetic', { cutWords: false });
    for (const text of ['abb', 'aab abab  ba', ' a b ab bb abb ']) expect(whole.encode(text)).toEqual(sp.encode(text));
    // "abb": bb (-4) beats ab (-5); then a+bb is not a piece; ▁a (-6) then ▁a+bb no → [▁a, bb]
    expect(sp.encode('abb')).toEqual([id('\u2581a'), id('bb')]);
    // "aab": ab beats ▁a → ▁, a, ab → ▁a (-6) → [▁a, ab]
    expect(sp.encode('aab')).toEqual([id('\u2581a'), id('ab')]);
    // ties: "abab" → both ab at -5, leftmost first, same result either way; checks the queue survives
    expect(sp.encode('abab')).toEqual([id('\u2581'), id('ab'), id('ab')]);
    // unknown characters become UTF-8 bytes (byte pieces start at id 3)
    expect(sp.encode('aé')).toEqual([id('\u2581a'), 3 + 0xc3, 3 + 0xa9]);
    // extra whitespace removed; without the dummy prefix there is no leading ▁
    expect(sp.encode('  a   b ')).toEqual([id('\u2581a'), id('\u2581'), id('b')]);
    const raw = new SentencePieceTokenizer(
      model([['a', -1]], { addDummyPrefix: false, removeExtraWhitespaces: false }),
    );
    expect(raw.encode(' a')).toEqual([3 + 0xe2, 3 + 0x96, 3 + 0x81, 259]);
    expect(sp.encode('')).toEqual([]);
    expect(sp.encode('   ')).toEqual([]);
  });

  it('rejects malformed model files with E_TOKENIZER', () => {
    const codes = new Set<string>();
    for (const bytes of [[], [0x0a, 0x05, 0x01], [0xff, 0xff, 0xff], [0x0b], [0x08]]) {
      try {
        parseSentencePieceModel(Uint8Array.from(bytes));
        codes.add('none');
      } catch (e) {
        expect(e).toBeInstanceOf(LowbitError);
        codes.add((e as LowbitError).code);
      }
    }
    expect([...codes]).toEqual(['E_TOKENIZER']);
    expect(() => parseLlama2cTokenizer(Uint8Array.from([1, 0, 0, 0, 0, 0, 0, 0, 9, 0, 0, 0]))).toThrow(/length 9/);
  });
});

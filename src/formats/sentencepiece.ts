/**
 * SentencePiece BPE, written by hand because no JavaScript library reproduces it: the model file
 * (tokenizer.model, a protobuf ModelProto) parsed without a protobuf library, llama2.c's
 * tokenizer.bin (the same pieces and scores, minus the normalizer settings), the normalizer steps
 * that matter for Llama-family models (remove_extra_whitespaces, add_dummy_prefix,
 * escape_whitespaces over the identity rule), BPE by piece score, and byte fallback.
 *
 * The encoding follows SentencePiece's bpe_model: start from characters, repeatedly merge the
 * adjacent pair whose concatenation is a piece with the highest score (leftmost on ties), then emit
 * each symbol's id, or its UTF-8 bytes as <0xXX> pieces when it is not in the vocabulary.
 */
import { MAX_TOKENIZER_BYTES, readBounded } from './read-bounded.js';
import { LowbitError, invalidArgument } from '../errors.js';

/** SentencePiece's piece types (sentencepiece_model.proto). */
export const enum PieceType {
  Normal = 1,
  Unknown = 2,
  Control = 3,
  UserDefined = 4,
  Unused = 5,
  Byte = 6,
}

export interface SentencePiece {
  piece: string;
  score: number;
  type: PieceType;
}

export interface NormalizerOptions {
  /** collapse runs of ' ' into one and drop leading and trailing ' ' */
  removeExtraWhitespaces: boolean;
  /** prepend one ' ' (so the first word looks like every other word) */
  addDummyPrefix: boolean;
  /** write ' ' as U+2581 '▁' */
  escapeWhitespaces: boolean;
}

export interface SentencePieceModel {
  pieces: SentencePiece[];
  /** 'bpe' is the one lowbit encodes */
  modelType: 'unigram' | 'bpe' | 'word' | 'char';
  byteFallback: boolean;
  unkId: number;
  bosId: number;
  eosId: number;
  padId: number;
  /** what decoding writes for <unk> */
  unkSurface: string;
  normalizerName: string;
  /** a non-empty precompiled character map means a normalization rule lowbit does not apply */
  hasCharsMap: boolean;
  normalizer: NormalizerOptions;
  treatWhitespaceAsSuffix: boolean;
}

const SPACE_SYMBOL = '\u2581';

function tokenizerError(file: string, message: string): LowbitError {
  return new LowbitError('E_TOKENIZER', `${file}: ${message}`, { file });
}

// ---------------------------------------------------------------------------------------------
// Protobuf wire format, just enough to read ModelProto.

interface Field {
  field: number;
  wire: number;
  /** varint value (wire 0) */
  int?: bigint;
  /** bytes (wire 2) or the 4/8 raw bytes (wire 5/1) */
  bytes?: Uint8Array;
}

function* protoFields(buf: Uint8Array, file: string): Generator<Field> {
  let pos = 0;
  const varint = (): bigint => {
    let result = 0n;
    for (let shift = 0n; shift < 70n; shift += 7n) {
      if (pos >= buf.length) throw tokenizerError(file, 'truncated protobuf varint');
      const b = buf[pos++]!;
      result |= BigInt(b & 0x7f) << shift;
      if (b < 0x80) return result;
    }
    throw tokenizerError(file, 'protobuf varint longer than 10 bytes');
  };
  const take = (n: number): Uint8Array => {
    if (n < 0 || pos + n > buf.length) throw tokenizerError(file, `protobuf field of ${n} bytes runs past the end`);
    const out = buf.subarray(pos, pos + n);
    pos += n;
    return out;
  };
  while (pos < buf.length) {
    const key = varint();
    const field = Number(key >> 3n);
    const wire = Number(key & 7n);
    if (field === 0) throw tokenizerError(file, 'protobuf field number 0');
    if (wire === 0) yield { field, wire, int: varint() };
    else if (wire === 1) yield { field, wire, bytes: take(8) };
    else if (wire === 2) {
      const len = varint();
      if (len > BigInt(buf.length)) throw tokenizerError(file, `protobuf length ${len} runs past the end`);
      yield { field, wire, bytes: take(Number(len)) };
    } else if (wire === 5) yield { field, wire, bytes: take(4) };
    else throw tokenizerError(file, `unsupported protobuf wire type ${wire}`);
  }
}

const utf8 = new TextDecoder('utf-8');

/** int32 fields are varints of the 64-bit two's complement. */
function int32Of(v: bigint): number {
  return Number(BigInt.asIntN(64, v));
}

function float32Of(bytes: Uint8Array): number {
  return new DataView(bytes.buffer, bytes.byteOffset, 4).getFloat32(0, true);
}

const MODEL_TYPES = { 1: 'unigram', 2: 'bpe', 3: 'word', 4: 'char' } as const;

/** Parses a SentencePiece ModelProto (tokenizer.model). */
export function parseSentencePieceModel(buf: Uint8Array, file = 'tokenizer.model'): SentencePieceModel {
  const model: SentencePieceModel = {
    pieces: [],
    modelType: 'unigram',
    byteFallback: false,
    unkId: 0,
    bosId: 1,
    eosId: 2,
    padId: -1,
    unkSurface: ' \u2047 ',
    normalizerName: 'nmt_nfkc',
    hasCharsMap: false,
    normalizer: { removeExtraWhitespaces: true, addDummyPrefix: true, escapeWhitespaces: true },
    treatWhitespaceAsSuffix: false,
  };
  for (const f of protoFields(buf, file)) {
    if (f.field === 1 && f.bytes) {
      const p: SentencePiece = { piece: '', score: 0, type: PieceType.Normal };
      for (const g of protoFields(f.bytes, file)) {
        if (g.field === 1 && g.bytes) p.piece = utf8.decode(g.bytes);
        else if (g.field === 2 && g.bytes && g.wire === 5) p.score = float32Of(g.bytes);
        else if (g.field === 3 && g.int !== undefined) p.type = Number(g.int) as PieceType;
      }
      if (p.type < PieceType.Normal || p.type > PieceType.Byte)
        throw tokenizerError(file, `piece ${model.pieces.length} has unknown type ${p.type}`);
      model.pieces.push(p);
    } else if (f.field === 2 && f.bytes) {
      // TrainerSpec
      for (const g of protoFields(f.bytes, file)) {
        if (g.int !== undefined) {
          if (g.field === 3) model.modelType = MODEL_TYPES[Number(g.int) as 1 | 2 | 3 | 4] ?? 'unigram';
          else if (g.field === 35) model.byteFallback = g.int !== 0n;
          else if (g.field === 24) model.treatWhitespaceAsSuffix = g.int !== 0n;
          else if (g.field === 40) model.unkId = int32Of(g.int);
          else if (g.field === 41) model.bosId = int32Of(g.int);
          else if (g.field === 42) model.eosId = int32Of(g.int);
          else if (g.field === 43) model.padId = int32Of(g.int);
        } else if (g.field === 44 && g.bytes) model.unkSurface = utf8.decode(g.bytes);
      }
    } else if (f.field === 3 && f.bytes) {
      // NormalizerSpec
      for (const g of protoFields(f.bytes, file)) {
        if (g.field === 1 && g.bytes) model.normalizerName = utf8.decode(g.bytes);
        else if (g.field === 2 && g.bytes) model.hasCharsMap = g.bytes.length > 0;
        else if (g.field === 3 && g.int !== undefined) model.normalizer.addDummyPrefix = g.int !== 0n;
        else if (g.field === 4 && g.int !== undefined) model.normalizer.removeExtraWhitespaces = g.int !== 0n;
        else if (g.field === 5 && g.int !== undefined) model.normalizer.escapeWhitespaces = g.int !== 0n;
      }
    }
  }
  if (model.pieces.length === 0) throw tokenizerError(file, 'no pieces: not a SentencePiece model');
  return model;
}

/**
 * Parses llama2.c's tokenizer.bin: int32 max_token_length, then per token a float32 score, an int32
 * byte length and the bytes. The export writes '▁' as ' ' and <s>/</s> as "\n<s>\n"/"\n</s>\n";
 * the normalizer settings are not stored, so they come from `normalizer` (SentencePiece's defaults
 * unless given: tok512 was trained with them; Llama 2's own model turns removeExtraWhitespaces off).
 */
export function parseLlama2cTokenizer(
  buf: Uint8Array,
  file = 'tokenizer.bin',
  options: { vocabSize?: number; normalizer?: Partial<NormalizerOptions> } = {},
): SentencePieceModel {
  const view = new DataView(buf.buffer, buf.byteOffset, buf.byteLength);
  if (buf.byteLength < 4) throw tokenizerError(file, 'too short for a llama2.c tokenizer');
  const maxLen = view.getInt32(0, true);
  if (maxLen <= 0 || maxLen > 1 << 16)
    throw tokenizerError(file, `max_token_length ${maxLen} is not plausible; not a llama2.c tokenizer.bin?`);
  const pieces: SentencePiece[] = [];
  let pos = 4;
  while (pos < buf.byteLength && (options.vocabSize === undefined || pieces.length < options.vocabSize)) {
    if (pos + 8 > buf.byteLength) throw tokenizerError(file, `token ${pieces.length} is truncated`);
    const score = view.getFloat32(pos, true);
    const len = view.getInt32(pos + 4, true);
    pos += 8;
    if (len < 0 || len > maxLen || pos + len > buf.byteLength)
      throw tokenizerError(
        file,
        `token ${pieces.length} has length ${len} (max_token_length ${maxLen}, ${buf.byteLength - pos} bytes left)`,
      );
    const text = utf8.decode(buf.subarray(pos, pos + len));
    pos += len;
    pieces.push({ piece: text, score, type: PieceType.Normal });
  }
  if (options.vocabSize !== undefined && pieces.length !== options.vocabSize) {
    throw tokenizerError(file, `holds ${pieces.length} tokens, the model expects ${options.vocabSize}`);
  }
  if (pieces.length < 3) throw tokenizerError(file, `holds only ${pieces.length} tokens`);
  let bytePieces = 0;
  pieces.forEach((p, id) => {
    if (id === 0) p.type = PieceType.Unknown;
    else if (id === 1 || id === 2) p.type = PieceType.Control;
    else if (/^<0x[0-9A-F]{2}>$/.test(p.piece)) {
      p.type = PieceType.Byte;
      bytePieces++;
    }
    if (p.type === PieceType.Control || p.type === PieceType.Unknown) p.piece = p.piece.trim();
    else if (p.type === PieceType.Normal) p.piece = p.piece.replaceAll(' ', SPACE_SYMBOL);
  });
  return {
    pieces,
    modelType: 'bpe',
    byteFallback: bytePieces === 256,
    unkId: 0,
    bosId: 1,
    eosId: 2,
    padId: -1,
    unkSurface: ' \u2047 ',
    normalizerName: 'identity',
    hasCharsMap: false,
    normalizer: { removeExtraWhitespaces: true, addDummyPrefix: true, escapeWhitespaces: true, ...options.normalizer },
    treatWhitespaceAsSuffix: false,
  };
}

// ---------------------------------------------------------------------------------------------
// Encoding

/** A binary max-heap of merge candidates: highest score first, then leftmost. */
class MergeQueue {
  private left: number[] = [];
  private score: number[] = [];
  private piece: number[] = [];
  private size = 0;

  push(left: number, score: number, piece: number): void {
    let i = this.size++;
    this.left[i] = left;
    this.score[i] = score;
    this.piece[i] = piece;
    while (i > 0) {
      const parent = (i - 1) >> 1;
      if (!this.before(i, parent)) break;
      this.swap(i, parent);
      i = parent;
    }
  }

  /** the best candidate's left index and piece id, or undefined */
  pop(): [number, number] | undefined {
    if (this.size === 0) return undefined;
    const top: [number, number] = [this.left[0]!, this.piece[0]!];
    this.size--;
    if (this.size > 0) {
      this.left[0] = this.left[this.size]!;
      this.score[0] = this.score[this.size]!;
      this.piece[0] = this.piece[this.size]!;
      let i = 0;
      for (;;) {
        const l = 2 * i + 1;
        const r = l + 1;
        let best = i;
        if (l < this.size && this.before(l, best)) best = l;
        if (r < this.size && this.before(r, best)) best = r;
        if (best === i) break;
        this.swap(i, best);
        i = best;
      }
    }
    return top;
  }

  private before(a: number, b: number): boolean {
    const sa = this.score[a]!;
    const sb = this.score[b]!;
    return sa !== sb ? sa > sb : this.left[a]! < this.left[b]!;
  }

  private swap(a: number, b: number): void {
    [this.left[a], this.left[b]] = [this.left[b]!, this.left[a]!];
    [this.score[a], this.score[b]] = [this.score[b]!, this.score[a]!];
    [this.piece[a], this.piece[b]] = [this.piece[b]!, this.piece[a]!];
  }
}

const WORD_CACHE_LIMIT = 200_000;

export class SentencePieceTokenizer {
  readonly model: SentencePieceModel;
  /** pieces BPE may merge into (normal, user-defined and unused, as SentencePiece does) */
  private readonly mergeable = new Map<string, number>();
  private readonly byteIds = new Int32Array(256).fill(-1);
  private readonly userDefined: string[];
  /**
   * no piece holds '▁' after another character (only leading runs, like Llama's '▁▁▁▁'), so merges
   * never cross the start of a run of '▁' and the text can be cut into words there
   */
  private readonly splitWords: boolean;
  private readonly cache = new Map<string, readonly number[]>();
  /** for each unused piece, the two pieces it was merged from (SentencePiece re-splits these) */
  private readonly children = new Map<string, [string, string]>();

  /** `cutWords: false` encodes the whole text as one sequence (slower; tests compare the two) */
  constructor(model: SentencePieceModel, file = 'tokenizer', options: { cutWords?: boolean } = {}) {
    if (model.modelType !== 'bpe') {
      throw new LowbitError(
        'E_UNSUPPORTED',
        `${file}: SentencePiece ${model.modelType} models are not supported (lowbit encodes BPE); use the model's tokenizer.json`,
        { file },
      );
    }
    if (model.hasCharsMap || (model.normalizerName !== 'identity' && model.normalizerName !== '')) {
      throw new LowbitError(
        'E_UNSUPPORTED',
        `${file}: normalization rule '${model.normalizerName}' is not supported (lowbit applies the identity rule); use the model's tokenizer.json`,
        { file },
      );
    }
    if (model.treatWhitespaceAsSuffix)
      throw new LowbitError('E_UNSUPPORTED', `${file}: treat_whitespace_as_suffix is not supported`, { file });
    // a special id outside the vocabulary would be emitted by encode({ bos: true }) and fail far from here
    for (const [field, id] of [
      ['unk_id', model.unkId],
      ['bos_id', model.bosId],
      ['eos_id', model.eosId],
      ['pad_id', model.padId],
    ] as const) {
      if (!Number.isInteger(id) || id < -1 || id >= model.pieces.length)
        throw tokenizerError(file, `${field} ${id} is outside the vocabulary of ${model.pieces.length} pieces`);
    }
    this.model = model;
    const userDefined: string[] = [];
    let split = true;
    model.pieces.forEach((p, id) => {
      if (p.type === PieceType.Normal || p.type === PieceType.UserDefined || p.type === PieceType.Unused) {
        if (!this.mergeable.has(p.piece)) this.mergeable.set(p.piece, id);
        if (/[^\u2581]\u2581/u.test(p.piece)) split = false;
        if (p.type === PieceType.UserDefined) userDefined.push(p.piece);
      } else if (p.type === PieceType.Byte) {
        const m = /^<0x([0-9A-Fa-f]{2})>$/.exec(p.piece);
        if (m) this.byteIds[parseInt(m[1]!, 16)] = id;
      }
    });
    if (model.byteFallback && this.byteIds.includes(-1))
      throw tokenizerError(file, 'byte_fallback is set but not all 256 <0xXX> pieces exist');
    this.userDefined = userDefined.sort((a, b) => b.length - a.length);
    this.splitWords = split && userDefined.every((u) => !u.includes(SPACE_SYMBOL)) && options.cutWords !== false;
    for (const p of model.pieces) {
      if (p.type !== PieceType.Unused) continue;
      // the split whose halves are both pieces, preferring the highest-scored halves
      const chars = Array.from(p.piece);
      for (let i = 1; i < chars.length; i++) {
        const l = chars.slice(0, i).join('');
        const r = chars.slice(i).join('');
        if (this.mergeable.has(l) && this.mergeable.has(r)) {
          this.children.set(p.piece, [l, r]);
          break;
        }
      }
    }
  }

  get vocabSize(): number {
    return this.model.pieces.length;
  }

  /** The text after SentencePiece's normalizer (before BPE). */
  normalize(text: string): string {
    const n = this.model.normalizer;
    let s = text;
    if (n.removeExtraWhitespaces) {
      s = s.replace(/ {2,}/g, ' ');
      let start = 0;
      let end = s.length;
      while (start < end && s.charCodeAt(start) === 32) start++;
      while (end > start && s.charCodeAt(end - 1) === 32) end--;
      s = s.slice(start, end);
    }
    if (s.length === 0) return '';
    if (n.addDummyPrefix) s = ' ' + s;
    if (n.escapeWhitespaces) s = s.replaceAll(' ', SPACE_SYMBOL);
    return s;
  }

  /** Token ids of `text` (no BOS/EOS). */
  encode(text: string): number[] {
    const s = this.normalize(text);
    const out: number[] = [];
    if (!this.splitWords) {
      this.encodeWord(s, out);
      return out;
    }
    let start = 0;
    for (let i = 1; i <= s.length; i++) {
      if (i === s.length || (s.charCodeAt(i) === 0x2581 && s.charCodeAt(i - 1) !== 0x2581)) {
        const word = s.slice(start, i);
        const hit = this.cache.get(word);
        if (hit) for (const id of hit) out.push(id);
        else {
          const ids: number[] = [];
          this.encodeWord(word, ids);
          if (this.cache.size < WORD_CACHE_LIMIT) this.cache.set(word, ids);
          for (const id of ids) out.push(id);
        }
        start = i;
      }
    }
    return out;
  }

  /** Initial symbols: user-defined pieces whole, otherwise one code point each. */
  private initialSymbols(word: string): string[] {
    if (this.userDefined.length === 0) return Array.from(word);
    const out: string[] = [];
    let i = 0;
    while (i < word.length) {
      const u = this.userDefined.find((p) => word.startsWith(p, i));
      const cp = u ?? String.fromCodePoint(word.codePointAt(i)!);
      out.push(cp);
      i += cp.length;
    }
    return out;
  }

  private encodeWord(word: string, out: number[]): void {
    const sym = this.initialSymbols(word);
    const n = sym.length;
    const next = new Int32Array(n);
    const prev = new Int32Array(n);
    for (let i = 0; i < n; i++) {
      next[i] = i + 1 < n ? i + 1 : -1;
      prev[i] = i - 1;
    }
    const queue = new MergeQueue();
    const consider = (left: number): void => {
      const right = left < 0 ? -1 : next[left]!;
      if (right < 0) return;
      const id = this.mergeable.get(sym[left]! + sym[right]!);
      if (id !== undefined) queue.push(left, this.model.pieces[id]!.score, id);
    };
    for (let i = 0; i + 1 < n; i++) consider(i);
    for (let top = queue.pop(); top; top = queue.pop()) {
      const [left, id] = top;
      const right = next[left]!;
      // a candidate is stale when an earlier merge changed either side
      if (sym[left] === '' || right < 0 || sym[left]! + sym[right]! !== this.model.pieces[id]!.piece) continue;
      sym[left] = this.model.pieces[id]!.piece;
      sym[right] = '';
      next[left] = next[right]!;
      if (next[right]! >= 0) prev[next[right]!] = left;
      consider(prev[left]!);
      consider(left);
    }
    for (let i = 0; i >= 0 && i < n; i = next[i]!) this.emit(sym[i]!, out);
  }

  private emit(piece: string, out: number[]): void {
    const id = this.mergeable.get(piece);
    if (id !== undefined) {
      const split = this.model.pieces[id]!.type === PieceType.Unused ? this.children.get(piece) : undefined;
      if (!split) {
        out.push(id);
        return;
      }
      this.emit(split[0], out);
      this.emit(split[1], out);
      return;
    }
    if (this.model.byteFallback) {
      for (const b of Buffer.from(piece, 'utf8')) out.push(this.byteIds[b]!);
    } else out.push(this.model.unkId);
  }

  /** Text of `ids`: '▁' back to ' ', byte pieces reassembled as UTF-8, control pieces dropped. */
  decode(ids: ArrayLike<number>): string {
    const parts: string[] = [];
    let bytes: number[] = [];
    const flush = (): void => {
      if (bytes.length) parts.push(utf8.decode(Uint8Array.from(bytes)));
      bytes = [];
    };
    for (let i = 0; i < ids.length; i++) {
      const id = ids[i]!;
      const p = this.model.pieces[id];
      if (!p || !Number.isInteger(id)) invalidArgument(`ids[${i}]`, `a token id below ${this.vocabSize}`, id);
      if (p.type === PieceType.Byte) {
        bytes.push(parseInt(p.piece.slice(3, 5), 16));
        continue;
      }
      flush();
      if (p.type === PieceType.Control) continue;
      if (p.type === PieceType.Unknown) parts.push(this.model.unkSurface);
      else parts.push(p.piece.replaceAll(SPACE_SYMBOL, ' '));
    }
    flush();
    const text = parts.join('');
    return this.model.normalizer.addDummyPrefix && text.startsWith(' ') ? text.slice(1) : text;
  }

  pieceOf(id: number): string | undefined {
    return this.model.pieces[id]?.piece;
  }
}

export async function readSentencePieceModel(path: string): Promise<SentencePieceModel> {
  return parseSentencePieceModel(await readBytes(path), path);
}

export async function readLlama2cTokenizer(
  path: string,
  options: { vocabSize?: number; normalizer?: Partial<NormalizerOptions> } = {},
): Promise<SentencePieceModel> {
  return parseLlama2cTokenizer(await readBytes(path), path, options);
}

async function readBytes(path: string): Promise<Uint8Array> {
  const b = await readBounded(path, MAX_TOKENIZER_BYTES, 'E_TOKENIZER');
  return new Uint8Array(b.buffer, b.byteOffset, b.byteLength);
}

// ---------------------------------------------------------------------------------------------
// Writing a ModelProto (for `lowbit convert`, which turns llama2.c's tokenizer.bin into the
// tokenizer.model a Hugging Face directory ships).

function varintBytes(v: bigint): number[] {
  let x = BigInt.asUintN(64, v);
  const out: number[] = [];
  do {
    const b = Number(x & 0x7fn);
    x >>= 7n;
    out.push(x > 0n ? b | 0x80 : b);
  } while (x > 0n);
  return out;
}

function keyBytes(field: number, wire: number): number[] {
  return varintBytes(BigInt((field << 3) | wire));
}

function lengthDelimited(field: number, body: Uint8Array | number[]): number[] {
  return [...keyBytes(field, 2), ...varintBytes(BigInt(body.length)), ...body];
}

function intField(field: number, v: number | boolean): number[] {
  return [...keyBytes(field, 0), ...varintBytes(BigInt(typeof v === 'boolean' ? Number(v) : v))];
}

/** Serializes a SentencePiece model (pieces, the trainer facts encoding needs, the normalizer). */
export function serializeSentencePieceModel(model: SentencePieceModel): Uint8Array {
  const enc = new TextEncoder();
  const parts: number[] = [];
  for (const p of model.pieces) {
    const score = new Uint8Array(new Float32Array([p.score]).buffer);
    parts.push(
      ...lengthDelimited(1, [
        ...lengthDelimited(1, enc.encode(p.piece)),
        ...keyBytes(2, 5),
        ...score,
        ...intField(3, p.type),
      ]),
    );
  }
  const modelType = { unigram: 1, bpe: 2, word: 3, char: 4 }[model.modelType];
  parts.push(
    ...lengthDelimited(2, [
      ...intField(3, modelType),
      ...intField(4, model.pieces.length),
      ...intField(24, model.treatWhitespaceAsSuffix),
      ...intField(35, model.byteFallback),
      ...lengthDelimited(44, enc.encode(model.unkSurface)),
      ...intField(40, model.unkId),
      ...intField(41, model.bosId),
      ...intField(42, model.eosId),
      ...intField(43, model.padId),
    ]),
  );
  parts.push(
    ...lengthDelimited(3, [
      ...lengthDelimited(1, enc.encode(model.normalizerName)),
      ...intField(3, model.normalizer.addDummyPrefix),
      ...intField(4, model.normalizer.removeExtraWhitespaces),
      ...intField(5, model.normalizer.escapeWhitespaces),
    ]),
  );
  return Uint8Array.from(parts);
}

/**
 * The tokenizer.json transformers writes when it converts this SentencePiece BPE model (its
 * LlamaConverter): byte-fallback BPE whose merges are every split of a piece into two pieces,
 * ordered by the merged piece's score (highest first), then the shorter left half, then the
 * shorter right half; a Metaspace pre-tokenizer; `<s>` prepended by the post-processor. Like
 * transformers' own conversion, it does not remove extra whitespace (see docs/TOKENIZERS.md).
 */
export function toTokenizerJson(model: SentencePieceModel): Record<string, unknown> {
  const vocab: Record<string, number> = {};
  model.pieces.forEach((p, id) => {
    if (!Object.hasOwn(vocab, p.piece)) vocab[p.piece] = id;
  });
  const merges: { left: string; right: string; score: number; order: number }[] = [];
  model.pieces.forEach((p) => {
    const chars = Array.from(p.piece);
    const local: { left: string; right: string }[] = [];
    for (let i = 1; i < chars.length; i++) {
      const left = chars.slice(0, i).join('');
      const right = chars.slice(i).join('');
      if (Object.hasOwn(vocab, left) && Object.hasOwn(vocab, right)) local.push({ left, right });
    }
    local.sort((a, b) => vocab[a.left]! - vocab[b.left]! || vocab[a.right]! - vocab[b.right]!);
    for (const m of local) merges.push({ ...m, score: p.score, order: merges.length });
  });
  merges.sort(
    (a, b) =>
      b.score - a.score || a.left.length - b.left.length || a.right.length - b.right.length || a.order - b.order,
  );
  const bos = model.pieces[model.bosId]?.piece;
  const special = model.pieces
    .map((p, id) => ({ p, id }))
    .filter(
      ({ p }) => p.type === PieceType.Control || p.type === PieceType.Unknown || p.type === PieceType.UserDefined,
    );
  const dummy = model.normalizer.addDummyPrefix;
  return {
    version: '1.0',
    truncation: null,
    padding: null,
    added_tokens: special.map(({ p, id }) => ({
      id,
      content: p.piece,
      single_word: false,
      lstrip: false,
      rstrip: false,
      normalized: p.type === PieceType.UserDefined,
      special: p.type !== PieceType.UserDefined,
    })),
    normalizer: null,
    pre_tokenizer: {
      type: 'Metaspace',
      replacement: SPACE_SYMBOL,
      prepend_scheme: dummy ? 'first' : 'never',
      split: false,
    },
    post_processor: bos
      ? {
          type: 'TemplateProcessing',
          single: [{ SpecialToken: { id: bos, type_id: 0 } }, { Sequence: { id: 'A', type_id: 0 } }],
          pair: [
            { SpecialToken: { id: bos, type_id: 0 } },
            { Sequence: { id: 'A', type_id: 0 } },
            { SpecialToken: { id: bos, type_id: 1 } },
            { Sequence: { id: 'B', type_id: 1 } },
          ],
          special_tokens: { [bos]: { id: bos, ids: [model.bosId], tokens: [bos] } },
        }
      : null,
    decoder: {
      type: 'Sequence',
      decoders: [
        { type: 'Replace', pattern: { String: SPACE_SYMBOL }, content: ' ' },
        { type: 'ByteFallback' },
        { type: 'Fuse' },
        ...(dummy ? [{ type: 'Strip', content: ' ', start: 1, stop: 0 }] : []),
      ],
    },
    model: {
      type: 'BPE',
      dropout: null,
      unk_token: null,
      continuing_subword_prefix: null,
      end_of_word_suffix: null,
      fuse_unk: true,
      byte_fallback: model.byteFallback,
      ignore_merges: false,
      vocab,
      merges: merges.map((m) => [m.left, m.right]),
    },
  };
}

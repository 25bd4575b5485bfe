/**
 * Tokenizers: one interface over two sources.
 *
 * - SentencePiece (tokenizer.model, or llama2.c's tokenizer.bin): encoded by lowbit's own
 *   SentencePiece BPE (./sentencepiece.ts). This is the stream REFERENCE.md's perplexity protocol
 *   is defined by, and what Llama/Mistral checkpoints were trained with.
 * - Hugging Face tokenizer.json: encoded by @huggingface/tokenizers (transformers' own JavaScript
 *   port: the same normalizers, pre-tokenizers, BPE with byte fallback, added tokens), so lowbit
 *   gives exactly the ids transformers gives. See docs/TOKENIZERS.md for why this library.
 *
 * For a directory holding both, SentencePiece is preferred (`kind` overrides).
 */
import { existsSync, statSync } from 'node:fs';
import { MAX_TOKENIZER_BYTES, readBounded } from './read-bounded.js';
import { basename, dirname, join } from 'node:path';
import { Tokenizer as HfJsTokenizer } from '@huggingface/tokenizers';
import { LowbitError, invalidArgument } from '../errors.js';
import {
  SentencePieceTokenizer,
  readLlama2cTokenizer,
  readSentencePieceModel,
  type NormalizerOptions,
} from './sentencepiece.js';

export interface EncodeOptions {
  /** prepend the BOS id (default false) */
  bos?: boolean;
  /** append the EOS id (default false) */
  eos?: boolean;
}

export interface TextTokenizer {
  /** where the vocabulary came from */
  readonly kind: 'sentencepiece' | 'tokenizer.json';
  readonly file: string;
  readonly vocabSize: number;
  readonly bosId: number | undefined;
  readonly eosId: number | undefined;
  /** token ids of `text`, as int32 */
  encode(text: string, options?: EncodeOptions): Int32Array;
  /** text of `ids` (special tokens dropped, byte tokens reassembled as UTF-8) */
  decode(ids: ArrayLike<number>): string;
  /** the vocabulary entry of one id */
  pieceOf(id: number): string | undefined;
}

function withSpecials(
  ids: ArrayLike<number>,
  bosId: number | undefined,
  eosId: number | undefined,
  options: EncodeOptions,
  file: string,
): Int32Array {
  if (options.bos && bosId === undefined)
    throw new LowbitError('E_TOKENIZER', `${file}: BOS asked for, but the tokenizer has no BOS token`, { file });
  if (options.eos && eosId === undefined)
    throw new LowbitError('E_TOKENIZER', `${file}: EOS asked for, but the tokenizer has no EOS token`, { file });
  const head = options.bos ? 1 : 0;
  const out = new Int32Array(ids.length + head + (options.eos ? 1 : 0));
  if (options.bos) out[0] = bosId!;
  for (let i = 0; i < ids.length; i++) out[head + i] = ids[i]!;
  if (options.eos) out[out.length - 1] = eosId!;
  return out;
}

function checkText(text: unknown): asserts text is string {
  if (typeof text !== 'string') invalidArgument('text', 'a string', text);
}

function checkIdList(ids: unknown): asserts ids is ArrayLike<number> {
  const length = (ids as { length?: unknown } | null)?.length;
  if (
    typeof ids !== 'object' ||
    ids === null ||
    typeof length !== 'number' ||
    !Number.isSafeInteger(length) ||
    length < 0
  ) {
    invalidArgument('ids', 'an array of token ids', ids);
  }
}

/**
 * Every token id of a tokenizer.json (model.vocab's values, added_tokens' ids) must be an integer
 * below the number of entries: the library builds its id → token table as an array indexed by id,
 * so one id of 2^31 costs minutes and gigabytes before the first token is encoded.
 */
function checkTokenIds(json: JsonObject, file: string): void {
  const model = json.model as JsonObject;
  const vocab = model.vocab;
  const added = json.added_tokens ?? [];
  if (!Array.isArray(added)) throw new LowbitError('E_TOKENIZER', `${file}: added_tokens is not a list`, { file });
  const ids: [string, unknown][] = [];
  if (vocab !== undefined && vocab !== null && !Array.isArray(vocab)) {
    if (typeof vocab !== 'object')
      throw new LowbitError('E_TOKENIZER', `${file}: model.vocab is not an object or a list`, { file });
    for (const [token, id] of Object.entries(vocab))
      ids.push([`model.vocab[${JSON.stringify(token.slice(0, 40))}]`, id]);
  }
  let entries = Array.isArray(vocab) ? vocab.length : ids.length;
  added.forEach((t, i) => {
    ids.push([`added_tokens[${i}].id`, (t as JsonObject | null)?.id]);
    // an added token is usually also a vocabulary entry (the specials of a BPE model)
    const content = (t as JsonObject | null)?.content;
    if (Array.isArray(vocab) || typeof content !== 'string' || !Object.hasOwn((vocab ?? {}) as object, content))
      entries++;
  });
  for (const [where, id] of ids) {
    if (typeof id !== 'number' || !Number.isInteger(id) || id < 0 || id >= entries) {
      throw new LowbitError(
        'E_TOKENIZER',
        `${file}: ${where} is ${JSON.stringify(id)}; token ids must be integers in [0, ${entries}) for a vocabulary of ${entries} entries`,
        { file },
      );
    }
  }
}

/** SentencePiece BPE (tokenizer.model or llama2.c tokenizer.bin). */
export class SentencePieceTextTokenizer implements TextTokenizer {
  readonly kind = 'sentencepiece' as const;
  constructor(
    readonly sp: SentencePieceTokenizer,
    readonly file: string,
  ) {}
  get vocabSize(): number {
    return this.sp.vocabSize;
  }
  get bosId(): number | undefined {
    return this.sp.model.bosId >= 0 ? this.sp.model.bosId : undefined;
  }
  get eosId(): number | undefined {
    return this.sp.model.eosId >= 0 ? this.sp.model.eosId : undefined;
  }
  encode(text: string, options: EncodeOptions = {}): Int32Array {
    checkText(text);
    return withSpecials(this.sp.encode(text), this.bosId, this.eosId, options, this.file);
  }
  decode(ids: ArrayLike<number>): string {
    checkIdList(ids);
    return this.sp.decode(ids);
  }
  pieceOf(id: number): string | undefined {
    return this.sp.pieceOf(id);
  }
}

type JsonObject = Record<string, unknown>;

/** The content of a special token entry in tokenizer_config.json (a string or {content}). */
function tokenContent(v: unknown): string | undefined {
  if (typeof v === 'string') return v;
  if (v && typeof v === 'object' && typeof (v as JsonObject).content === 'string')
    return (v as JsonObject).content as string;
  return undefined;
}

/**
 * Whether the text may be encoded in pieces cut before each run of ' ' and the ids concatenated:
 * true for Metaspace pre-tokenizers without a normalizer, when no vocabulary entry holds '▁' after
 * another character (leading runs like '▁▁▁▁' are fine) and no added token holds a space or strips
 * its neighbours. BPE then cannot merge
 * across those cuts, and short pieces hit the library's word cache (a whole file is otherwise one
 * BPE word: ten seconds instead of one for 1 MB).
 */
function cuttableAtSpaces(json: JsonObject): boolean {
  const pre = json.pre_tokenizer as JsonObject | null | undefined;
  const model = json.model as JsonObject | undefined;
  if (json.normalizer != null || !pre || pre.type !== 'Metaspace' || !model || model.type !== 'BPE') return false;
  if ((pre.replacement ?? '\u2581') !== '\u2581') return false;
  const vocab = model.vocab as JsonObject | undefined;
  if (!vocab || typeof vocab !== 'object') return false;
  for (const token of Object.keys(vocab)) if (/[^\u2581]\u2581/u.test(token)) return false;
  const added = Array.isArray(json.added_tokens) ? (json.added_tokens as JsonObject[]) : [];
  return added.every((t) => typeof t.content === 'string' && !/\s/.test(t.content) && !t.lstrip && !t.rstrip);
}

/** A Hugging Face tokenizer.json, through @huggingface/tokenizers. */
export class HfJsonTokenizer implements TextTokenizer {
  readonly kind = 'tokenizer.json' as const;
  readonly bosId: number | undefined;
  readonly eosId: number | undefined;
  readonly vocabSize: number;
  private readonly tok: HfJsTokenizer;
  private readonly cutAtSpaces: boolean;
  /** ids of pieces already encoded (words repeat: most pieces are hits) */
  private readonly cache = new Map<string, readonly number[]>();

  constructor(
    json: unknown,
    config: unknown,
    readonly file: string,
  ) {
    if (!json || typeof json !== 'object' || !(json as JsonObject).model)
      throw new LowbitError('E_TOKENIZER', `${file}: not a tokenizer.json (no "model")`, { file });
    const cfg = (config && typeof config === 'object' ? config : {}) as JsonObject;
    checkTokenIds(json as JsonObject, file);
    try {
      this.tok = new HfJsTokenizer(json, cfg);
      this.cutAtSpaces = cuttableAtSpaces(json as JsonObject);
      this.vocabSize = this.tok.get_vocab(true).size;
      const idOf = (v: unknown): number | undefined => {
        const content = tokenContent(v);
        return content === undefined ? undefined : this.tok.token_to_id(content);
      };
      this.bosId = idOf(cfg.bos_token);
      this.eosId = idOf(cfg.eos_token);
    } catch (err) {
      throw new LowbitError('E_TOKENIZER', `${file}: ${(err as Error).message}`, { file }, { cause: err });
    }
  }

  encode(text: string, options: EncodeOptions = {}): Int32Array {
    checkText(text);
    const ids: number[] = [];
    try {
      if (!this.cutAtSpaces) {
        for (const id of this.tok.encode(text, { add_special_tokens: false }).ids) ids.push(id);
      } else {
        // the first piece is special (Metaspace prepends '▁' to it), the rest start with ' '
        const pieces = text.split(/(?<=[^ ])(?= )/);
        for (let i = 0; i < pieces.length; i++) {
          const piece = pieces[i]!;
          const cached = i > 0 ? this.cache.get(piece) : undefined;
          const pieceIds = cached ?? this.tok.encode(piece, { add_special_tokens: false }).ids;
          if (!cached && i > 0 && this.cache.size < 100_000) this.cache.set(piece, pieceIds);
          for (const id of pieceIds) ids.push(id);
        }
      }
    } catch (err) {
      throw new LowbitError(
        'E_TOKENIZER',
        `${this.file}: encoding failed: ${(err as Error).message}`,
        { file: this.file },
        { cause: err },
      );
    }
    return withSpecials(ids, this.bosId, this.eosId, options, this.file);
  }

  decode(ids: ArrayLike<number>): string {
    checkIdList(ids);
    const list = Array.from(ids);
    list.forEach((id, i) => {
      if (!Number.isInteger(id) || id < 0 || this.tok.id_to_token(id) === undefined)
        invalidArgument(`ids[${i}]`, 'a token id of the vocabulary', id);
    });
    if (list.length === 0) return ''; // the library refuses an empty list
    try {
      return this.tok.decode(list, { skip_special_tokens: true });
    } catch (err) {
      throw new LowbitError(
        'E_TOKENIZER',
        `${this.file}: decoding failed: ${(err as Error).message}`,
        { file: this.file },
        { cause: err },
      );
    }
  }

  pieceOf(id: number): string | undefined {
    return this.tok.id_to_token(id);
  }
}

export interface LoadTokenizerOptions {
  /** for a directory holding both files: which one to use (default: sentencepiece when present) */
  kind?: 'sentencepiece' | 'tokenizer.json';
  /** llama2.c tokenizer.bin only: normalizer settings (the file does not store them) */
  normalizer?: Partial<NormalizerOptions>;
  /** llama2.c tokenizer.bin only: the number of tokens to read (the checkpoint's vocab_size) */
  vocabSize?: number;
}

async function readJson(path: string): Promise<unknown> {
  const text = (await readBounded(path, MAX_TOKENIZER_BYTES, 'E_TOKENIZER')).toString('utf8');
  try {
    return JSON.parse(text);
  } catch (err) {
    throw new LowbitError('E_TOKENIZER', `${path} is not valid JSON (${(err as Error).message})`, { file: path });
  }
}

/**
 * Loads a tokenizer from a model directory (tokenizer.model and/or tokenizer.json), a
 * tokenizer.model, a tokenizer.json (tokenizer_config.json beside it supplies BOS/EOS), or a
 * llama2.c tokenizer .bin.
 */
export async function loadTokenizer(path: string, options: LoadTokenizerOptions = {}): Promise<TextTokenizer> {
  if (typeof path !== 'string' || path === '') invalidArgument('path', 'a tokenizer file or model directory', path);
  let isDir: boolean;
  try {
    isDir = statSync(path).isDirectory();
  } catch (err) {
    throw new LowbitError('E_IO', `no tokenizer at ${path}: ${(err as Error).message}`, { file: path }, { cause: err });
  }
  if (isDir) {
    const model = join(path, 'tokenizer.model');
    const json = join(path, 'tokenizer.json');
    const wanted = options.kind ?? (existsSync(model) ? 'sentencepiece' : 'tokenizer.json');
    const file = wanted === 'sentencepiece' ? model : json;
    if (!existsSync(file)) throw new LowbitError('E_TOKENIZER', `${path} holds no ${basename(file)}`, { file });
    try {
      return await loadTokenizer(file, options);
    } catch (err) {
      // a SentencePiece model lowbit cannot encode (unigram, another normalization rule): the
      // directory's tokenizer.json encodes it as transformers does
      if (
        !options.kind &&
        wanted === 'sentencepiece' &&
        err instanceof LowbitError &&
        err.code === 'E_UNSUPPORTED' &&
        existsSync(json)
      )
        return loadTokenizer(json, options);
      throw err;
    }
  }
  const name = basename(path);
  if (name.endsWith('.json')) {
    const configPath = join(dirname(path), 'tokenizer_config.json');
    const config = existsSync(configPath) ? await readJson(configPath) : {};
    return new HfJsonTokenizer(await readJson(path), config, path);
  }
  if (name.endsWith('.bin')) {
    const model = await readLlama2cTokenizer(path, { vocabSize: options.vocabSize, normalizer: options.normalizer });
    return new SentencePieceTextTokenizer(new SentencePieceTokenizer(model, path), path);
  }
  const model = await readSentencePieceModel(path);
  return new SentencePieceTextTokenizer(new SentencePieceTokenizer(model, path), path);
}

/**
 * Decodes a growing id sequence piece by piece for streaming generation: each push returns the new
 * text, holding back a trailing incomplete UTF-8 sequence until its bytes arrive.
 */
export class StreamDecoder {
  private ids: number[] = [];
  private emitted = '';
  constructor(private readonly tokenizer: TextTokenizer) {}

  push(id: number): string {
    this.ids.push(id);
    let text = this.tokenizer.decode(this.ids);
    // U+FFFD at the end may be a character whose remaining bytes are still to come
    if (text.endsWith('\uFFFD')) text = text.replace(/\uFFFD+$/, '');
    if (!text.startsWith(this.emitted)) {
      // decoding changed earlier text (a leading space dropped or restored): emit from scratch
      const out = text.slice(commonPrefix(text, this.emitted));
      this.emitted = text;
      return out;
    }
    const out = text.slice(this.emitted.length);
    this.emitted = text;
    return out;
  }
}

function commonPrefix(a: string, b: string): number {
  let i = 0;
  while (i < a.length && i < b.length && a[i] === b[i]) i++;
  return i;
}

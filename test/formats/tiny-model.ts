/**
 * A tiny, complete, self-contained model as in-memory files, for the input-defect tests and the
 * structure-aware fuzzer: a Hugging Face directory (config.json, model.safetensors dense f32 or
 * GPTQ-packed, quantize_config.json, tokenizer.json, tokenizer_config.json, tokenizer.model) and a
 * llama2.c v1 checkpoint of the same shape. Weights are small random values; packed GPTQ words are
 * random bits (every bit pattern is a valid code).
 */
import { mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { packedWords } from '../../src/formats/gptq.js';
import { LINEAR_MODULES, LINEAR_NAMES } from '../../src/formats/hf.js';
import { LLAMA2C_MAGIC } from '../../src/formats/llama2c.js';
import { encodeHeader, type TensorSpec } from '../../src/formats/safetensors-writer.js';
import { SAFETENSORS_DTYPES, type SafetensorsDType } from '../../src/formats/safetensors.js';
import { PieceType, serializeSentencePieceModel, type SentencePieceModel } from '../../src/formats/sentencepiece.js';
import { Tensor } from '../../src/tensor.js';

export const TINY = { hidden: 16, intermediate: 24, layers: 2, heads: 2, kvHeads: 1, vocab: 272, maxPos: 64 } as const;
const HEAD_DIM = TINY.hidden / TINY.heads;

export interface GptqSpec {
  bits: 2 | 3 | 4 | 8;
  groupSize: number;
  format: 'gptq' | 'gptq_v2';
  descAct?: boolean;
}

export interface StoredTensorBytes {
  name: string;
  dtype: SafetensorsDType;
  shape: number[];
  bytes: Uint8Array;
}

/** A safetensors file of the given tensors, in order. */
export function safetensorsBytes(tensors: readonly StoredTensorBytes[], metadata?: Record<string, string>): Uint8Array {
  const specs: TensorSpec[] = tensors.map((t) => ({ name: t.name, dtype: t.dtype, shape: t.shape }));
  const header = encodeHeader(specs, metadata);
  const total = tensors.reduce((a, t) => a + t.bytes.length, header.length);
  const out = new Uint8Array(total);
  out.set(header);
  let p = header.length;
  for (const t of tensors) {
    out.set(t.bytes, p);
    p += t.bytes.length;
  }
  return out;
}

/** Random bytes of a tensor of this dtype and shape: floats in [-0.5, 0.5), integers as random bits. */
export function randomTensorBytes(dtype: SafetensorsDType, shape: readonly number[], rand: () => number): Uint8Array {
  const n = shape.reduce((a, b) => a * b, 1);
  if (dtype === 'F32' || dtype === 'F16' || dtype === 'BF16') {
    const f = new Tensor(
      'f32',
      [...shape],
      Float32Array.from({ length: n }, () => (rand() - 0.5) * 0.2),
    );
    const t = dtype === 'F32' ? f : f.to(dtype === 'F16' ? 'f16' : 'bf16');
    return new Uint8Array(t.data.buffer.slice(t.data.byteOffset, t.data.byteOffset + t.data.byteLength));
  }
  return Uint8Array.from({ length: n * SAFETENSORS_DTYPES[dtype] }, () => Math.floor(rand() * 256));
}

function linearShape(name: (typeof LINEAR_NAMES)[number]): { K: number; N: number } {
  const { hidden: h, intermediate: f, heads, kvHeads } = TINY;
  const dims = {
    q: [h, heads * HEAD_DIM],
    k: [h, kvHeads * HEAD_DIM],
    v: [h, kvHeads * HEAD_DIM],
    o: [heads * HEAD_DIM, h],
    gate: [h, f],
    up: [h, f],
    down: [f, h],
  } as const;
  const [K, N] = dims[name];
  return { K, N };
}

/** The tensors of the tiny model: dense f32, or with every block linear GPTQ-packed. */
export function tinyTensors(rand: () => number, gptq?: GptqSpec): StoredTensorBytes[] {
  const out: StoredTensorBytes[] = [];
  const add = (name: string, dtype: SafetensorsDType, shape: number[], bytes?: Uint8Array) =>
    out.push({ name, dtype, shape, bytes: bytes ?? randomTensorBytes(dtype, shape, rand) });
  add('model.embed_tokens.weight', 'F32', [TINY.vocab, TINY.hidden]);
  for (let l = 0; l < TINY.layers; l++) {
    const p = `model.layers.${l}`;
    add(`${p}.input_layernorm.weight`, 'F32', [TINY.hidden]);
    add(`${p}.post_attention_layernorm.weight`, 'F32', [TINY.hidden]);
    for (const name of LINEAR_NAMES) {
      const { K, N } = linearShape(name);
      const prefix = `${p}.${LINEAR_MODULES[name]}`;
      if (!gptq) {
        add(`${prefix}.weight`, 'F32', [N, K]);
        continue;
      }
      const groupSize = gptq.groupSize === -1 || gptq.groupSize > K ? K : gptq.groupSize;
      const groups = Math.ceil(K / groupSize);
      add(`${prefix}.qweight`, 'I32', [packedWords(gptq.bits, K), N]);
      add(`${prefix}.qzeros`, 'I32', [groups, packedWords(gptq.bits, N)]);
      const scales = new Tensor(
        'f32',
        [groups, N],
        Float32Array.from({ length: groups * N }, () => 1e-3 + rand() * 0.01),
      ).to('f16');
      add(`${prefix}.scales`, 'F16', [groups, N], new Uint8Array(scales.data.buffer.slice(0)));
      const gIdx = Int32Array.from({ length: K }, (_, k) => Math.floor(k / groupSize));
      if (gptq.descAct)
        for (let k = K - 1; k > 0; k--) {
          const j = Math.floor(rand() * (k + 1));
          [gIdx[k], gIdx[j]] = [gIdx[j]!, gIdx[k]!];
        }
      add(`${prefix}.g_idx`, 'I32', [K], new Uint8Array(gIdx.buffer));
    }
  }
  add('model.norm.weight', 'F32', [TINY.hidden]);
  return out;
}

export function tinyConfig(gptq?: GptqSpec): Record<string, unknown> {
  const config: Record<string, unknown> = {
    architectures: ['LlamaForCausalLM'],
    model_type: 'llama',
    hidden_size: TINY.hidden,
    intermediate_size: TINY.intermediate,
    num_hidden_layers: TINY.layers,
    num_attention_heads: TINY.heads,
    num_key_value_heads: TINY.kvHeads,
    vocab_size: TINY.vocab,
    max_position_embeddings: TINY.maxPos,
    rms_norm_eps: 1e-5,
    rope_theta: 10000,
    tie_word_embeddings: true,
    hidden_act: 'silu',
    bos_token_id: 1,
    eos_token_id: 2,
    torch_dtype: 'float32',
  };
  if (gptq) config.quantization_config = quantizeConfig(gptq);
  return config;
}

export function quantizeConfig(gptq: GptqSpec): Record<string, unknown> {
  return {
    quant_method: 'gptq',
    bits: gptq.bits,
    group_size: gptq.groupSize,
    desc_act: gptq.descAct ?? false,
    sym: true,
    checkpoint_format: gptq.format,
  };
}

/** Pieces of the tiny vocabulary: <unk> <s> </s>, 256 byte tokens, then merges of a few letters. */
const NORMAL_PIECES = ['▁', 'a', 'b', 'c', 'ab', 'ba', '▁a', '▁b', '▁ab', 'ca', 'ac', '▁c', 'abc'];

/**
 * The tiny vocabulary as a SentencePiece BPE model with byte fallback; `normal` replaces the merged
 * pieces and `removeExtraWhitespaces` the normalizer's switch (the fuzz test's variant).
 */
export function tinySentencePiece(
  options: { normal?: readonly string[]; removeExtraWhitespaces?: boolean } = {},
): SentencePieceModel {
  return {
    pieces: [
      { piece: '<unk>', score: 0, type: PieceType.Unknown },
      { piece: '<s>', score: 0, type: PieceType.Control },
      { piece: '</s>', score: 0, type: PieceType.Control },
      ...Array.from({ length: 256 }, (_, b) => ({
        piece: `<0x${b.toString(16).toUpperCase().padStart(2, '0')}>`,
        score: 0,
        type: PieceType.Byte,
      })),
      ...(options.normal ?? NORMAL_PIECES).map((p, i) => ({ piece: p, score: -i, type: PieceType.Normal })),
    ],
    modelType: 'bpe',
    byteFallback: true,
    unkId: 0,
    bosId: 1,
    eosId: 2,
    padId: -1,
    unkSurface: ' ⁇ ',
    normalizerName: 'identity',
    hasCharsMap: false,
    normalizer: {
      removeExtraWhitespaces: options.removeExtraWhitespaces ?? false,
      addDummyPrefix: true,
      escapeWhitespaces: true,
    },
    treatWhitespaceAsSuffix: false,
  };
}

/** The same vocabulary as a Hugging Face tokenizer.json (BPE with byte fallback, Metaspace). */
export function tinyTokenizerJson(): Record<string, unknown> {
  const pieces = tinySentencePiece().pieces;
  const vocab = Object.fromEntries(pieces.map((p, i) => [p.piece, i]));
  const special = (id: number, content: string) => ({
    id,
    content,
    single_word: false,
    lstrip: false,
    rstrip: false,
    normalized: false,
    special: true,
  });
  return {
    version: '1.0',
    truncation: null,
    padding: null,
    added_tokens: [special(0, '<unk>'), special(1, '<s>'), special(2, '</s>')],
    normalizer: null,
    pre_tokenizer: { type: 'Metaspace', replacement: '▁', prepend_scheme: 'first', split: false },
    post_processor: null,
    decoder: {
      type: 'Sequence',
      decoders: [
        { type: 'Replace', pattern: { String: '▁' }, content: ' ' },
        { type: 'ByteFallback' },
        { type: 'Fuse' },
        { type: 'Strip', content: ' ', start: 1, stop: 0 },
      ],
    },
    model: {
      type: 'BPE',
      dropout: null,
      unk_token: '<unk>',
      continuing_subword_prefix: null,
      end_of_word_suffix: null,
      fuse_unk: true,
      byte_fallback: true,
      ignore_merges: false,
      vocab,
      merges: [
        ['a', 'b'],
        ['b', 'a'],
        ['▁', 'a'],
        ['▁', 'b'],
        ['▁a', 'b'],
        ['c', 'a'],
        ['a', 'c'],
        ['▁', 'c'],
        ['ab', 'c'],
      ],
    },
  };
}

export const TOKENIZER_CONFIG = { bos_token: '<s>', eos_token: '</s>', unk_token: '<unk>' };

/** Every file of a tiny HF model directory, by name. */
export function tinyModelFiles(rand: () => number, gptq?: GptqSpec): Map<string, Uint8Array> {
  const json = (v: unknown) => Buffer.from(JSON.stringify(v, null, 1));
  const files = new Map<string, Uint8Array>([
    ['config.json', json(tinyConfig(gptq))],
    ['model.safetensors', safetensorsBytes(tinyTensors(rand, gptq))],
    ['tokenizer.json', json(tinyTokenizerJson())],
    ['tokenizer_config.json', json(TOKENIZER_CONFIG)],
    ['tokenizer.model', serializeSentencePieceModel(tinySentencePiece())],
  ]);
  if (gptq) files.set('quantize_config.json', json(quantizeConfig(gptq)));
  return files;
}

export function writeFiles(dir: string, files: Map<string, Uint8Array>): string {
  mkdirSync(dir, { recursive: true });
  for (const [name, bytes] of files) writeFileSync(join(dir, name), bytes);
  return dir;
}

/** The llama2.c v1 header fields in file order (after magic and version). */
export const LLAMA2C_FIELDS = [
  'dim',
  'hidden_dim',
  'n_layers',
  'n_heads',
  'n_kv_heads',
  'vocab_size',
  'seq_len',
] as const;

/** A llama2.c v1 checkpoint of the tiny shape (shared classifier), with random weights. */
export function tinyLlama2c(
  rand: () => number,
  fields: Partial<Record<(typeof LLAMA2C_FIELDS)[number], number>> = {},
): Uint8Array {
  const h = {
    dim: TINY.hidden,
    hidden_dim: TINY.intermediate,
    n_layers: TINY.layers,
    n_heads: TINY.heads,
    n_kv_heads: TINY.kvHeads,
    vocab_size: TINY.vocab,
    seq_len: TINY.maxPos,
    ...fields,
  };
  const hd = h.dim / h.n_heads;
  const floats =
    h.n_layers * (2 * h.dim + 2 * h.dim * h.dim + 2 * h.n_kv_heads * hd * h.dim + 3 * h.hidden_dim * h.dim) +
    h.dim +
    h.vocab_size * h.dim;
  const out = new Uint8Array(256 + 4 * floats);
  const v = new DataView(out.buffer);
  v.setUint32(0, LLAMA2C_MAGIC, true);
  v.setInt32(4, 1, true);
  LLAMA2C_FIELDS.forEach((f, i) => v.setInt32(8 + 4 * i, h[f], true));
  v.setUint8(36, 1);
  for (let i = 0; i < floats; i++) v.setFloat32(256 + 4 * i, (rand() - 0.5) * 0.2, true);
  return out;
}

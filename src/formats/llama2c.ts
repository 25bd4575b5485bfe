/**
 * llama2.c checkpoints (karpathy/llama2.c export.py), read lazily and presented under Hugging Face
 * tensor names and layout, so the rest of lowbit sees one model description:
 *
 * - v0 (legacy): 7 int32 (dim, hidden_dim, n_layers, n_heads, n_kv_heads, vocab_size, seq_len); a
 *   negative vocab_size means the classifier is NOT shared with the embedding. Then fp32: embedding,
 *   attention norms, wq, wk, wv, wo (all layers each), ffn norms, w1, w2, w3, final norm,
 *   freq_cis real/imag ([seq_len, head_dim/2] each, unused), classifier if unshared.
 * - v1: 256-byte header: uint32 magic "ak42", int32 version 1, the 7 int32, uint8 shared-classifier
 *   flag. fp32: attention norms, ffn norms, final norm, embedding, wq, wk, wv, wo, w1, w2, w3,
 *   classifier if unshared.
 * - v2 (Q8_0): as v1 plus int32 group_size after the flag; fp32 norms as v1, then the int8 values of
 *   embedding, wq, wk, wv, wo, w1, w2, w3 (, classifier), then their fp32 group scales in the same
 *   order. Read back dequantized to f32.
 *
 * llama2.c applies RoPE to consecutive pairs (2i, 2i+1) of each head; Hugging Face to (i, i+d/2).
 * q_proj and k_proj rows are permuted per head on read so the HF forward pass gives the same result.
 */
import { LowbitError } from '../errors.js';
import { Tensor } from '../tensor.js';
import { type LlamaConfig, type ModelReader, type ModelTensors, describeTensors, parseLlamaConfig } from './hf.js';
import { openFileSource, type ByteSource } from './safetensors.js';

export const LLAMA2C_MAGIC = 0x616b3432;

export interface Llama2cHeader {
  version: 0 | 1 | 2;
  dim: number;
  hiddenDim: number;
  nLayers: number;
  nHeads: number;
  nKvHeads: number;
  vocabSize: number;
  seqLen: number;
  sharedClassifier: boolean;
  /** Q8_0 group size (v2) */
  groupSize?: number;
  /** bytes before the weights */
  headerBytes: number;
}

function llama2cError(file: string, message: string, tensor?: string): LowbitError {
  return new LowbitError('E_LLAMA2C', `${file}: ${message}`, tensor ? { file, tensor } : { file });
}

/** Parses the header from the file's first 256 bytes (fewer if the file is shorter). */
export function parseLlama2cHeader(head: Uint8Array, file = 'model.bin'): Llama2cHeader {
  const view = new DataView(head.buffer, head.byteOffset, head.byteLength);
  const need = (n: number): void => {
    if (head.byteLength < n) throw llama2cError(file, `file of ${head.byteLength} bytes is too short for a llama2.c header (${n} bytes)`);
  };
  need(28);
  let version: 0 | 1 | 2 = 0;
  let p = 0;
  if (view.getUint32(0, true) === LLAMA2C_MAGIC) {
    need(256);
    const v = view.getInt32(4, true);
    if (v !== 1 && v !== 2) throw llama2cError(file, `unsupported llama2.c version ${v} (lowbit reads 0, 1 and 2)`);
    version = v;
    p = 8;
  }
  const ints = Array.from({ length: 7 }, (_, i) => view.getInt32(p + 4 * i, true));
  const [dim, hiddenDim, nLayers, nHeads, nKvHeads, vocabRaw, seqLen] = ints as [number, number, number, number, number, number, number];
  const header: Llama2cHeader = {
    version,
    dim,
    hiddenDim,
    nLayers,
    nHeads,
    nKvHeads,
    vocabSize: Math.abs(vocabRaw),
    seqLen,
    sharedClassifier: version === 0 ? vocabRaw > 0 : view.getUint8(p + 28) !== 0,
    headerBytes: version === 0 ? 28 : 256,
  };
  if (version === 2) header.groupSize = view.getInt32(p + 29, true);
  const positive: [string, number][] = [
    ['dim', dim],
    ['hidden_dim', hiddenDim],
    ['n_layers', nLayers],
    ['n_heads', nHeads],
    ['n_kv_heads', nKvHeads],
    ['vocab_size', header.vocabSize],
    ['seq_len', seqLen],
  ];
  for (const [name, v] of positive) {
    if (!(v > 0 && v <= 1 << 24)) throw llama2cError(file, `header field ${name} = ${v} is not plausible; not a llama2.c checkpoint?`);
  }
  if (dim % nHeads !== 0 || (dim / nHeads) % 2 !== 0) throw llama2cError(file, `dim ${dim} does not split into ${nHeads} heads of even size`);
  if (nHeads % nKvHeads !== 0) throw llama2cError(file, `n_heads ${nHeads} is not a multiple of n_kv_heads ${nKvHeads}`);
  if (version === 2 && !(header.groupSize! > 0)) throw llama2cError(file, `group_size ${header.groupSize} is not positive`);
  return header;
}

/** The LlamaConfig a llama2.c header implies (llama2.c uses eps 1e-5 and RoPE theta 10000). */
export function llama2cConfig(h: Llama2cHeader): LlamaConfig {
  return parseLlamaConfig(
    {
      architectures: ['LlamaForCausalLM'],
      model_type: 'llama',
      hidden_size: h.dim,
      intermediate_size: h.hiddenDim,
      num_hidden_layers: h.nLayers,
      num_attention_heads: h.nHeads,
      num_key_value_heads: h.nKvHeads,
      head_dim: h.dim / h.nHeads,
      vocab_size: h.vocabSize,
      max_position_embeddings: h.seqLen,
      rms_norm_eps: 1e-5,
      rope_parameters: { rope_theta: 10000.0, rope_type: 'default' },
      tie_word_embeddings: h.sharedClassifier,
      hidden_act: 'silu',
      attention_bias: false,
      mlp_bias: false,
      bos_token_id: 1,
      eos_token_id: 2,
      dtype: 'float32',
    },
    'llama2.c header',
  );
}

interface Slot {
  /** byte offset of the fp32 values, or of the int8 values (v2 quantized) */
  offset: number;
  shape: number[];
  /** v2: byte offset of the fp32 group scales */
  scalesOffset?: number;
  /** q/k: rows permuted from interleaved to half-split RoPE, per head of this many rows */
  ropeHeads?: number;
}

/** Where each HF-named tensor lies in the file, and the file size that layout implies. */
export function llama2cLayout(h: Llama2cHeader): { slots: Map<string, Slot>; fileSize: number } {
  const { dim, hiddenDim: f, nLayers: L, nHeads, nKvHeads, vocabSize: V, seqLen } = h;
  const hd = dim / nHeads;
  const kv = nKvHeads * hd;
  const slots = new Map<string, Slot>();
  let pos = h.headerBytes;
  const layerName = (i: number, s: string): string => `model.layers.${i}.${s}`;

  type Group = { names: string[]; shape: number[]; ropeHeads?: number };
  const perLayer = (s: string, shape: number[], ropeHeads?: number): Group => ({ names: Array.from({ length: L }, (_, i) => layerName(i, s)), shape, ropeHeads });
  const one = (name: string, shape: number[]): Group => ({ names: [name], shape });
  const attnNorm = perLayer('input_layernorm.weight', [dim]);
  const ffnNorm = perLayer('post_attention_layernorm.weight', [dim]);
  const finalNorm = one('model.norm.weight', [dim]);
  const embedding = one('model.embed_tokens.weight', [V, dim]);
  const wq = perLayer('self_attn.q_proj.weight', [nHeads * hd, dim], nHeads);
  const wk = perLayer('self_attn.k_proj.weight', [kv, dim], nKvHeads);
  const wv = perLayer('self_attn.v_proj.weight', [kv, dim]);
  const wo = perLayer('self_attn.o_proj.weight', [dim, nHeads * hd]);
  const w1 = perLayer('mlp.gate_proj.weight', [f, dim]);
  const w2 = perLayer('mlp.down_proj.weight', [dim, f]);
  const w3 = perLayer('mlp.up_proj.weight', [f, dim]);
  const classifier = h.sharedClassifier ? [] : [one('lm_head.weight', [V, dim])];
  const count = (shape: number[]): number => shape.reduce((a, b) => a * b, 1);

  const placeF32 = (groups: Group[]): void => {
    for (const g of groups) {
      for (const name of g.names) {
        slots.set(name, { offset: pos, shape: g.shape, ropeHeads: g.ropeHeads });
        pos += 4 * count(g.shape);
      }
    }
  };
  if (h.version === 0) {
    placeF32([embedding, attnNorm, wq, wk, wv, wo, ffnNorm, w1, w2, w3, finalNorm]);
    pos += 2 * 4 * seqLen * (hd / 2); // freq_cis real and imaginary parts, recomputed by every reader
    placeF32(classifier);
  } else if (h.version === 1) {
    placeF32([attnNorm, ffnNorm, finalNorm, embedding, wq, wk, wv, wo, w1, w2, w3, ...classifier]);
  } else {
    placeF32([attnNorm, ffnNorm, finalNorm]);
    const quantized = [embedding, wq, wk, wv, wo, w1, w2, w3, ...classifier];
    const gs = h.groupSize!;
    const entries: [string, Slot][] = [];
    for (const g of quantized) {
      for (const name of g.names) {
        const slot: Slot = { offset: pos, shape: g.shape, ropeHeads: g.ropeHeads };
        entries.push([name, slot]);
        pos += count(g.shape);
      }
    }
    for (const [name, slot] of entries) {
      const n = count(slot.shape);
      if (n % gs !== 0) throw llama2cError('llama2.c', `tensor '${name}' has ${n} values, not a multiple of group_size ${gs}`, name);
      slot.scalesOffset = pos;
      pos += 4 * (n / gs);
      slots.set(name, slot);
    }
  }
  return { slots, fileSize: pos };
}

/**
 * Permutes rows of a [heads·d, cols] projection from llama2.c's interleaved RoPE pairs to Hugging
 * Face's half split: HF row (h, t·d/2 + i) is llama2.c row (h, 2i + t).
 */
export function permuteRopeRows(w: Float32Array, heads: number, cols: number): Float32Array {
  const rows = w.length / cols;
  const d = rows / heads;
  const half = d / 2;
  const out = new Float32Array(w.length);
  for (let h = 0; h < heads; h++) {
    for (let i = 0; i < half; i++) {
      for (let t = 0; t < 2; t++) {
        const src = (h * d + 2 * i + t) * cols;
        const dst = (h * d + t * half + i) * cols;
        out.set(w.subarray(src, src + cols), dst);
      }
    }
  }
  return out;
}

/** A llama2.c checkpoint as a ModelReader (HF names and layout, f32). */
export class Llama2cModel implements ModelReader {
  readonly config: LlamaConfig;
  readonly tensors: ModelTensors;
  private constructor(
    private readonly source: ByteSource,
    readonly header: Llama2cHeader,
    private readonly slots: Map<string, Slot>,
  ) {
    this.config = llama2cConfig(header);
    this.tensors = describeTensors(this.config, (n) => slots.has(n), source.name);
  }

  static async open(path: string): Promise<Llama2cModel> {
    const source = await openFileSource(path);
    try {
      const head = await source.read(0, Math.min(256, source.size));
      const header = parseLlama2cHeader(head, path);
      const { slots, fileSize } = llama2cLayout(header);
      if (fileSize !== source.size) {
        throw llama2cError(
          path,
          `a v${header.version} checkpoint with this header (dim ${header.dim}, hidden ${header.hiddenDim}, ${header.nLayers} layers, vocab ${header.vocabSize}, ${header.sharedClassifier ? 'shared' : 'unshared'} classifier) needs ${fileSize} bytes, the file has ${source.size}${fileSize > source.size ? ' (truncated?)' : ''}`,
        );
      }
      return new Llama2cModel(source, header, slots);
    } catch (err) {
      await source.close();
      if (err instanceof LowbitError && err.code === 'E_LLAMA2C' && err.details.file !== path) {
        throw new LowbitError('E_LLAMA2C', err.message.replace(/^llama2\.c:/, `${path}:`), { ...err.details, file: path });
      }
      throw err;
    }
  }

  get names(): string[] {
    return [...this.slots.keys()];
  }

  shapeOf(name: string): readonly number[] {
    return this.slot(name).shape;
  }

  /** How the file stores a tensor: F32, or Q8_0 (int8 values + one fp32 scale per group) in v2. */
  storageOf(name: string): { dtype: 'F32' | 'Q8_0'; bytes: number } {
    const s = this.slot(name);
    const n = s.shape.reduce((a, b) => a * b, 1);
    return s.scalesOffset === undefined ? { dtype: 'F32', bytes: 4 * n } : { dtype: 'Q8_0', bytes: n + 4 * (n / this.header.groupSize!) };
  }

  dtypeOf(name: string): 'f32' {
    this.slot(name);
    return 'f32';
  }

  private slot(name: string): Slot {
    const s = this.slots.get(name);
    if (!s) throw new LowbitError('E_MISSING_TENSOR', `${this.source.name}: no tensor named '${name}'`, { file: this.source.name, tensor: name });
    return s;
  }

  async readTensor(name: string): Promise<Tensor<'f32'>> {
    const s = this.slot(name);
    const n = s.shape.reduce((a, b) => a * b, 1);
    let values: Float32Array;
    if (s.scalesOffset === undefined) {
      const bytes = await this.source.read(s.offset, 4 * n);
      values = new Float32Array(bytes.buffer, bytes.byteOffset, n);
    } else {
      const gs = this.header.groupSize!;
      const q = new Int8Array((await this.source.read(s.offset, n)).buffer);
      const sb = await this.source.read(s.scalesOffset, 4 * (n / gs));
      const scales = new Float32Array(sb.buffer, sb.byteOffset, n / gs);
      values = new Float32Array(n);
      for (let i = 0; i < n; i++) values[i] = q[i]! * scales[Math.floor(i / gs)]!;
    }
    if (s.ropeHeads) values = permuteRopeRows(values, s.ropeHeads, s.shape[1]!);
    return new Tensor('f32', s.shape, values);
  }

  readFloat32(name: string): Promise<Tensor<'f32'>> {
    return this.readTensor(name);
  }

  close(): Promise<void> {
    return this.source.close();
  }
}

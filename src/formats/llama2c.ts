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
import { checkPath } from './read-bounded.js';

export const LLAMA2C_MAGIC = 0x616b3432;

/**
 * Upper bounds on the header fields, far above any released model (Llama 3.1 405B: dim 16384,
 * hidden 53248, 126 layers, 128 heads, vocab 128256, context 131072), so that a corrupt header is
 * refused before anything proportional to it is built: the layout has an entry per layer, and a
 * session's KV cache defaults to seq_len positions.
 */
export const LLAMA2C_LIMITS = {
  dim: 1 << 16,
  hidden_dim: 1 << 18,
  n_layers: 1 << 10,
  n_heads: 1 << 10,
  n_kv_heads: 1 << 10,
  vocab_size: 1 << 22,
  seq_len: 1 << 17,
} as const;

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
    if (head.byteLength < n)
      throw llama2cError(file, `file of ${head.byteLength} bytes is too short for a llama2.c header (${n} bytes)`);
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
  const [dim, hiddenDim, nLayers, nHeads, nKvHeads, vocabRaw, seqLen] = ints as [
    number,
    number,
    number,
    number,
    number,
    number,
    number,
  ];
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
    const max = LLAMA2C_LIMITS[name as keyof typeof LLAMA2C_LIMITS];
    if (!(v > 0 && v <= max))
      throw llama2cError(file, `header field ${name} = ${v} is outside [1, ${max}]; not a llama2.c checkpoint?`);
  }
  if (dim % nHeads !== 0 || (dim / nHeads) % 2 !== 0)
    throw llama2cError(file, `dim ${dim} does not split into ${nHeads} heads of even size`);
  if (nHeads % nKvHeads !== 0)
    throw llama2cError(file, `n_heads ${nHeads} is not a multiple of n_kv_heads ${nKvHeads}`);
  if (version === 2 && !(header.groupSize! > 0))
    throw llama2cError(file, `group_size ${header.groupSize} is not positive`);
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

/** A run of same-shaped tensors in file order: one per layer, or a single one. */
interface Group {
  /** the tensor's name, or its name inside a layer (model.layers.<i>.<suffix>) */
  name: string;
  perLayer: boolean;
  shape: number[];
  ropeHeads?: number;
}

/** The tensor groups of a header in file order: fp32 ones, then (v2) the Q8_0 ones. */
function llama2cGroups(h: Llama2cHeader): { f32: Group[]; q8: Group[]; freqCisBytes: number; f32After: Group[] } {
  const { dim, hiddenDim: f, nHeads, nKvHeads, vocabSize: V, seqLen } = h;
  const hd = dim / nHeads;
  const kv = nKvHeads * hd;
  const layer = (name: string, shape: number[], ropeHeads?: number): Group => ({
    name,
    perLayer: true,
    shape,
    ropeHeads,
  });
  const one = (name: string, shape: number[]): Group => ({ name, perLayer: false, shape });
  const attnNorm = layer('input_layernorm.weight', [dim]);
  const ffnNorm = layer('post_attention_layernorm.weight', [dim]);
  const finalNorm = one('model.norm.weight', [dim]);
  const embedding = one('model.embed_tokens.weight', [V, dim]);
  const wq = layer('self_attn.q_proj.weight', [nHeads * hd, dim], nHeads);
  const wk = layer('self_attn.k_proj.weight', [kv, dim], nKvHeads);
  const wv = layer('self_attn.v_proj.weight', [kv, dim]);
  const wo = layer('self_attn.o_proj.weight', [dim, nHeads * hd]);
  const w1 = layer('mlp.gate_proj.weight', [f, dim]);
  const w2 = layer('mlp.down_proj.weight', [dim, f]);
  const w3 = layer('mlp.up_proj.weight', [f, dim]);
  const classifier = h.sharedClassifier ? [] : [one('lm_head.weight', [V, dim])];
  if (h.version === 0) {
    // freq_cis real and imaginary parts sit between the weights and the classifier (recomputed by every reader)
    return {
      f32: [embedding, attnNorm, wq, wk, wv, wo, ffnNorm, w1, w2, w3, finalNorm],
      freqCisBytes: 2 * 4 * seqLen * (hd / 2),
      f32After: classifier,
      q8: [],
    };
  }
  if (h.version === 1)
    return {
      f32: [attnNorm, ffnNorm, finalNorm, embedding, wq, wk, wv, wo, w1, w2, w3, ...classifier],
      freqCisBytes: 0,
      f32After: [],
      q8: [],
    };
  return {
    f32: [attnNorm, ffnNorm, finalNorm],
    freqCisBytes: 0,
    f32After: [],
    q8: [embedding, wq, wk, wv, wo, w1, w2, w3, ...classifier],
  };
}

const count = (shape: readonly number[]): number => shape.reduce((a, b) => a * b, 1);

/**
 * The file size a header implies, in O(1) (no per-layer entries): checked against the real size
 * before the layout is built. The header's bounds keep every product a safe integer.
 */
export function llama2cFileSize(h: Llama2cHeader): number {
  const { f32, q8, freqCisBytes, f32After } = llama2cGroups(h);
  const times = (g: Group): number => (g.perLayer ? h.nLayers : 1);
  let bytes = h.headerBytes + freqCisBytes;
  for (const g of [...f32, ...f32After]) bytes += times(g) * 4 * count(g.shape);
  for (const g of q8) {
    const n = count(g.shape);
    if (n % h.groupSize! !== 0)
      throw llama2cError(
        'llama2.c',
        `tensor '${g.name}' has ${n} values, not a multiple of group_size ${h.groupSize}`,
        g.name,
      );
    bytes += times(g) * (n + 4 * (n / h.groupSize!));
  }
  return bytes;
}

/** Where each HF-named tensor lies in the file, and the file size that layout implies. */
export function llama2cLayout(h: Llama2cHeader): { slots: Map<string, Slot>; fileSize: number } {
  const fileSize = llama2cFileSize(h);
  const { f32, q8, freqCisBytes, f32After } = llama2cGroups(h);
  const slots = new Map<string, Slot>();
  const names = (g: Group): string[] =>
    g.perLayer ? Array.from({ length: h.nLayers }, (_, i) => `model.layers.${i}.${g.name}`) : [g.name];
  let pos = h.headerBytes;
  const placeF32 = (groups: Group[]): void => {
    for (const g of groups) {
      for (const name of names(g)) {
        slots.set(name, { offset: pos, shape: g.shape, ropeHeads: g.ropeHeads });
        pos += 4 * count(g.shape);
      }
    }
  };
  placeF32(f32);
  pos += freqCisBytes;
  placeF32(f32After);
  // v2: all int8 values first, then all the group scales, both in tensor order
  const quantized: [string, Slot][] = [];
  for (const g of q8) {
    for (const name of names(g)) {
      quantized.push([name, { offset: pos, shape: g.shape, ropeHeads: g.ropeHeads }]);
      pos += count(g.shape);
    }
  }
  for (const [name, slot] of quantized) {
    slot.scalesOffset = pos;
    pos += 4 * (count(slot.shape) / h.groupSize!);
    slots.set(name, slot);
  }
  if (pos !== fileSize)
    throw new LowbitError('E_INTERNAL', `llama2.c layout of ${pos} bytes disagrees with its size ${fileSize}`);
  return { slots, fileSize };
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
    checkPath(path);
    const source = await openFileSource(path);
    try {
      const head = await source.read(0, Math.min(256, source.size));
      const header = parseLlama2cHeader(head, path);
      // the size first: the layout has an entry per layer, and a corrupt header may declare many
      const fileSize = llama2cFileSize(header);
      if (fileSize !== source.size) {
        throw llama2cError(
          path,
          `a v${header.version} checkpoint with this header (dim ${header.dim}, hidden ${header.hiddenDim}, ${header.nLayers} layers, vocab ${header.vocabSize}, ${header.sharedClassifier ? 'shared' : 'unshared'} classifier) needs ${fileSize} bytes, the file has ${source.size}${fileSize > source.size ? ' (truncated?)' : ''}`,
        );
      }
      return new Llama2cModel(source, header, llama2cLayout(header).slots);
    } catch (err) {
      await source.close();
      if (err instanceof LowbitError && err.code === 'E_LLAMA2C' && err.details.file !== path) {
        throw new LowbitError('E_LLAMA2C', err.message.replace(/^llama2\.c:/, `${path}:`), {
          ...err.details,
          file: path,
        });
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
    return s.scalesOffset === undefined
      ? { dtype: 'F32', bytes: 4 * n }
      : { dtype: 'Q8_0', bytes: n + 4 * (n / this.header.groupSize!) };
  }

  dtypeOf(name: string): 'f32' {
    this.slot(name);
    return 'f32';
  }

  private slot(name: string): Slot {
    const s = this.slots.get(name);
    if (!s)
      throw new LowbitError('E_MISSING_TENSOR', `${this.source.name}: no tensor named '${name}'`, {
        file: this.source.name,
        tensor: name,
      });
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

/**
 * Hugging Face Llama-family models: config.json parsed into a typed LlamaConfig, and the checkpoint's
 * tensor names mapped to a typed description (embedding, per-block norms and linears, final norm,
 * lm_head or the tied embedding). Weights stay on disk until asked for, one tensor at a time.
 */
import { existsSync } from 'node:fs';
import { MAX_CONFIG_BYTES, checkPath, readBounded } from './read-bounded.js';
import { join, resolve } from 'node:path';
import { LowbitError } from '../errors.js';
import type { DType, Tensor } from '../tensor.js';
import { Checkpoint } from './checkpoint.js';
import { tensorDTypeOf } from './safetensors.js';
import { checkQuantizedTensors } from './gptq.js';
import { checkSpqrTensors, parseSpqrQuantizationConfig, type SpqrCheckpointConfig } from './spqr.js';
import { GPTQ_BITS_TEXT, isGptqBits, type GptqBits } from '../weights/formats.js';

/** Model types whose blocks are Llama's (RMSNorm, GQA attention with RoPE, SwiGLU MLP). */
export const SUPPORTED_MODEL_TYPES = ['llama', 'mistral', 'qwen2'] as const;
export type ModelType = (typeof SUPPORTED_MODEL_TYPES)[number];

export const SUPPORTED_ROPE_TYPES = ['default', 'linear', 'dynamic', 'llama3', 'yarn'] as const;
export type RopeType = (typeof SUPPORTED_ROPE_TYPES)[number];

export interface RopeConfig {
  theta: number;
  type: RopeType;
  /** scaling factor (linear, dynamic, llama3, yarn) */
  factor?: number;
  /** llama3 */
  lowFreqFactor?: number;
  highFreqFactor?: number;
  originalMaxPositionEmbeddings?: number;
  /** yarn */
  betaFast?: number;
  betaSlow?: number;
  attentionFactor?: number;
  /** fraction of each head's dimensions that rotate (1 for Llama) */
  partialRotaryFactor: number;
}

export interface GptqQuantizationConfig {
  quantMethod: 'gptq';
  bits: GptqBits;
  groupSize: number;
  descAct: boolean;
  sym: boolean;
  checkpointFormat: 'gptq' | 'gptq_v2';
  raw: Record<string, unknown>;
}

export interface LlamaConfig {
  /** architectures[0], e.g. LlamaForCausalLM */
  architecture: string;
  modelType: ModelType;
  hiddenSize: number;
  intermediateSize: number;
  numLayers: number;
  numHeads: number;
  numKvHeads: number;
  headDim: number;
  vocabSize: number;
  maxPositionEmbeddings: number;
  rmsNormEps: number;
  rope: RopeConfig;
  hiddenAct: 'silu';
  /** q/k/v projections carry biases (qwen2, or attention_bias) */
  qkvBias: boolean;
  /** o_proj carries a bias (attention_bias) */
  oBias: boolean;
  /** gate/up/down carry biases (mlp_bias) */
  mlpBias: boolean;
  tieWordEmbeddings: boolean;
  /** attention window (mistral's sliding_window, when in use) */
  slidingWindow?: number;
  bosTokenId?: number;
  eosTokenIds: number[];
  padTokenId?: number;
  /** the stored dtype named by the config (dtype or torch_dtype), e.g. "float32", "bfloat16" */
  dtype?: string;
  quantization?: GptqQuantizationConfig;
  /** a SpQR checkpoint's quantization_config (quant_method "spqr"; src/formats/spqr.ts) */
  spqr?: SpqrCheckpointConfig;
  /** config.json as parsed */
  raw: Record<string, unknown>;
}

/**
 * Upper bounds on config.json's sizes, far above any released dense model (Llama 3.1 405B: hidden
 * 16384, intermediate 53248, 126 layers, 128 heads; vocabularies up to 256000; contexts up to 10M),
 * so that a corrupt config is refused before anything proportional to it is allocated or iterated.
 */
export const CONFIG_LIMITS = {
  hidden_size: 1 << 17,
  intermediate_size: 1 << 20,
  num_hidden_layers: 1 << 12,
  num_attention_heads: 1 << 12,
  num_key_value_heads: 1 << 12,
  head_dim: 1 << 12,
  vocab_size: 1 << 24,
  max_position_embeddings: 1 << 26,
} as const;

function configError(file: string, message: string, field?: string): LowbitError {
  return new LowbitError('E_CONFIG', `${file}: ${message}`, field ? { file, field } : { file });
}

/** Parses config.json's object into a LlamaConfig; `file` names it in errors. */
export function parseLlamaConfig(raw: unknown, file = 'config.json'): LlamaConfig {
  if (typeof raw !== 'object' || raw === null || Array.isArray(raw)) throw configError(file, 'is not a JSON object');
  const c = raw as Record<string, unknown>;

  const int = (field: keyof typeof CONFIG_LIMITS, fallback?: number): number => {
    const v = c[field] ?? fallback;
    const max = CONFIG_LIMITS[field];
    if (typeof v !== 'number' || !Number.isSafeInteger(v) || v < 1 || v > max) {
      throw configError(file, `${field} should be an integer in [1, ${max}], found ${JSON.stringify(v)}`, field);
    }
    return v;
  };
  const num = (obj: Record<string, unknown>, field: string, fallback?: number): number => {
    const v = obj[field] ?? fallback;
    if (typeof v !== 'number' || !Number.isFinite(v))
      throw configError(file, `${field} should be a number, found ${JSON.stringify(v)}`, field);
    return v;
  };
  const bool = (field: string, fallback: boolean): boolean => {
    const v = c[field] ?? fallback;
    if (typeof v !== 'boolean')
      throw configError(file, `${field} should be true or false, found ${JSON.stringify(v)}`, field);
    return v;
  };
  const optionalId = (field: string): number | undefined => {
    const v = c[field];
    if (v === undefined || v === null) return undefined;
    if (typeof v !== 'number' || !Number.isSafeInteger(v) || v < 0)
      throw configError(file, `${field} should be a token id, found ${JSON.stringify(v)}`, field);
    return v;
  };

  const architectures = c.architectures;
  const architecture =
    Array.isArray(architectures) && typeof architectures[0] === 'string' ? architectures[0] : undefined;
  const modelType = c.model_type;
  if (typeof modelType !== 'string') throw configError(file, 'has no model_type', 'model_type');
  if (!(SUPPORTED_MODEL_TYPES as readonly string[]).includes(modelType)) {
    throw new LowbitError(
      'E_UNSUPPORTED',
      `${file}: model_type '${modelType}' (${architecture ?? 'no architectures'}) is not supported yet; lowbit reads ${SUPPORTED_MODEL_TYPES.join(', ')}`,
      { file, field: 'model_type' },
    );
  }
  const type = modelType as ModelType;

  const hiddenSize = int('hidden_size');
  const numHeads = int('num_attention_heads');
  const numKvHeads = int('num_key_value_heads', numHeads);
  if (numHeads % numKvHeads !== 0)
    throw configError(
      file,
      `num_attention_heads ${numHeads} is not a multiple of num_key_value_heads ${numKvHeads}`,
      'num_key_value_heads',
    );
  const headDimRaw = c.head_dim;
  let headDim: number;
  if (headDimRaw === undefined || headDimRaw === null) {
    if (hiddenSize % numHeads !== 0)
      throw configError(
        file,
        `hidden_size ${hiddenSize} is not a multiple of num_attention_heads ${numHeads} and head_dim is not given`,
        'head_dim',
      );
    headDim = hiddenSize / numHeads;
  } else headDim = int('head_dim');
  if (headDim % 2 !== 0) throw configError(file, `head_dim ${headDim} is odd; RoPE rotates pairs`, 'head_dim');

  const hiddenAct = c.hidden_act ?? c.hidden_activation ?? 'silu';
  if (hiddenAct !== 'silu') {
    throw new LowbitError(
      'E_UNSUPPORTED',
      `${file}: hidden_act '${String(hiddenAct)}' is not supported yet (lowbit runs SwiGLU with silu)`,
      { file, field: 'hidden_act' },
    );
  }

  const attentionBias = bool('attention_bias', false);
  const eos = c.eos_token_id;
  const eosTokenIds = eos === undefined || eos === null ? [] : Array.isArray(eos) ? eos : [eos];
  if (!eosTokenIds.every((e) => typeof e === 'number' && Number.isSafeInteger(e) && e >= 0)) {
    throw configError(
      file,
      `eos_token_id should be a token id or a list of them, found ${JSON.stringify(eos)}`,
      'eos_token_id',
    );
  }

  const slidingWindow = c.sliding_window;
  const useSliding = type === 'qwen2' ? c.use_sliding_window === true : true;
  const dtype = c.dtype ?? c.torch_dtype;

  return {
    architecture: architecture ?? `${type}ForCausalLM`,
    modelType: type,
    hiddenSize,
    intermediateSize: int('intermediate_size'),
    numLayers: int('num_hidden_layers'),
    numHeads,
    numKvHeads,
    headDim,
    vocabSize: int('vocab_size'),
    maxPositionEmbeddings: int('max_position_embeddings', 2048),
    rmsNormEps: num(c, 'rms_norm_eps', 1e-6),
    rope: parseRope(c, file, num),
    hiddenAct: 'silu',
    qkvBias: type === 'qwen2' ? true : attentionBias,
    oBias: type === 'qwen2' ? false : attentionBias,
    mlpBias: bool('mlp_bias', false),
    tieWordEmbeddings: bool('tie_word_embeddings', false),
    slidingWindow: useSliding && typeof slidingWindow === 'number' && slidingWindow > 0 ? slidingWindow : undefined,
    bosTokenId: optionalId('bos_token_id'),
    eosTokenIds: eosTokenIds as number[],
    padTokenId: optionalId('pad_token_id'),
    dtype: typeof dtype === 'string' ? dtype : undefined,
    ...quantizationOf(c.quantization_config, file),
    raw: c,
  };
}

/**
 * RoPE: transformers 5 writes `rope_parameters: {rope_theta, rope_type, ...}`; older configs have a
 * top-level `rope_theta` and an optional `rope_scaling: {type | rope_type, factor, ...}`.
 */
function parseRope(
  c: Record<string, unknown>,
  file: string,
  num: (obj: Record<string, unknown>, field: string, fallback?: number) => number,
): RopeConfig {
  const params = c.rope_parameters;
  const scaling = c.rope_scaling;
  let p: Record<string, unknown> = {};
  if (params !== undefined && params !== null) {
    if (typeof params !== 'object' || Array.isArray(params))
      throw configError(file, 'rope_parameters is not an object', 'rope_parameters');
    p = params as Record<string, unknown>;
  } else if (scaling !== undefined && scaling !== null) {
    if (typeof scaling !== 'object' || Array.isArray(scaling))
      throw configError(file, 'rope_scaling is not an object', 'rope_scaling');
    p = scaling as Record<string, unknown>;
  }
  const theta = num(p, 'rope_theta', num(c, 'rope_theta', 10000));
  const typeName = p.rope_type ?? p.type ?? 'default';
  if (typeof typeName !== 'string' || !(SUPPORTED_ROPE_TYPES as readonly string[]).includes(typeName)) {
    throw new LowbitError(
      'E_UNSUPPORTED',
      `${file}: rope type ${JSON.stringify(typeName)} is not supported yet (${SUPPORTED_ROPE_TYPES.join(', ')})`,
      { file, field: 'rope_parameters' },
    );
  }
  const opt = (field: string): number | undefined =>
    p[field] === undefined || p[field] === null ? undefined : num(p, field);
  const rope: RopeConfig = {
    theta,
    type: typeName as RopeType,
    partialRotaryFactor: num(p, 'partial_rotary_factor', num(c, 'partial_rotary_factor', 1)),
  };
  const fields: [keyof RopeConfig, string][] = [
    ['factor', 'factor'],
    ['lowFreqFactor', 'low_freq_factor'],
    ['highFreqFactor', 'high_freq_factor'],
    ['originalMaxPositionEmbeddings', 'original_max_position_embeddings'],
    ['betaFast', 'beta_fast'],
    ['betaSlow', 'beta_slow'],
    ['attentionFactor', 'attention_factor'],
  ];
  for (const [key, field] of fields) {
    const v = opt(field);
    if (v !== undefined) (rope as unknown as Record<string, number>)[key] = v;
  }
  if (rope.type !== 'default' && rope.factor === undefined)
    throw configError(file, `rope type '${rope.type}' needs a factor`, 'rope_parameters');
  return rope;
}

/** quantization_config: GPTQ's (`quantization`) or SpQR's (`spqr`). */
function quantizationOf(
  q: unknown,
  file: string,
): { quantization?: GptqQuantizationConfig; spqr?: SpqrCheckpointConfig } {
  if (q !== null && typeof q === 'object' && (q as Record<string, unknown>).quant_method === 'spqr')
    return { spqr: parseSpqrQuantizationConfig(q, file) };
  return { quantization: parseQuantization(q, file) };
}

function parseQuantization(
  q: unknown,
  file: string,
  path = 'quantization_config.',
): GptqQuantizationConfig | undefined {
  if (q === undefined || q === null) return undefined;
  if (typeof q !== 'object' || Array.isArray(q))
    throw configError(file, 'quantization_config is not an object', 'quantization_config');
  const r = q as Record<string, unknown>;
  const method = r.quant_method;
  if (method !== 'gptq') {
    throw new LowbitError(
      'E_UNSUPPORTED',
      `${file}: ${path}quant_method ${JSON.stringify(method)} is not supported (lowbit reads "gptq" and "spqr")`,
      { file, field: 'quantization_config' },
    );
  }
  const bits = r.bits;
  if (!isGptqBits(bits))
    throw configError(file, `${path}bits should be ${GPTQ_BITS_TEXT}, found ${JSON.stringify(bits)}`, `${path}bits`);
  const groupSize = r.group_size ?? -1;
  if (typeof groupSize !== 'number' || !Number.isSafeInteger(groupSize) || (groupSize !== -1 && groupSize < 1)) {
    throw configError(
      file,
      `${path}group_size should be -1 or a positive integer, found ${JSON.stringify(groupSize)}`,
      `${path}group_size`,
    );
  }
  const format = r.checkpoint_format ?? 'gptq';
  if (format !== 'gptq' && format !== 'gptq_v2') {
    throw new LowbitError(
      'E_UNSUPPORTED',
      `${file}: ${path}checkpoint_format ${JSON.stringify(format)} is not supported (gptq, gptq_v2)`,
      { file, field: `${path}checkpoint_format` },
    );
  }
  return {
    quantMethod: 'gptq',
    bits,
    groupSize,
    descAct: r.desc_act === true,
    sym: r.sym !== false,
    checkpointFormat: format,
    raw: r,
  };
}

async function readJsonConfig(file: string): Promise<unknown> {
  const text = (await readBounded(file, MAX_CONFIG_BYTES, 'E_CONFIG')).toString('utf8');
  try {
    return JSON.parse(text);
  } catch (err) {
    throw configError(file, `is not valid JSON (${(err as Error).message})`);
  }
}

/**
 * Reads and parses `<dir>/config.json`, and `<dir>/quantize_config.json` when there is one
 * (AutoGPTQ and GPTQModel write it; older AutoGPTQ checkpoints have only it): it supplies the
 * quantization config when config.json has none, and must agree with config.json's otherwise.
 */
export async function readLlamaConfig(dir: string): Promise<LlamaConfig> {
  const file = join(dir, 'config.json');
  const config = parseLlamaConfig(await readJsonConfig(file), file);
  const qfile = join(dir, 'quantize_config.json');
  if (!existsSync(qfile)) return config;
  const qraw = await readJsonConfig(qfile);
  if (typeof qraw !== 'object' || qraw === null || Array.isArray(qraw))
    throw configError(qfile, 'is not a JSON object');
  const q = parseQuantization({ quant_method: 'gptq', ...qraw }, qfile, '')!;
  if (!config.quantization) return { ...config, quantization: q };
  // only fields both files state: either may leave one at its default
  const stated = config.quantization.raw;
  const fields: [string, unknown, unknown][] = [
    ['bits', config.quantization.bits, q.bits],
    ['group_size', config.quantization.groupSize, q.groupSize],
    ['checkpoint_format', config.quantization.checkpointFormat, q.checkpointFormat],
    ['desc_act', config.quantization.descAct, q.descAct],
    ['sym', config.quantization.sym, q.sym],
  ];
  for (const [field, inConfig, inQuantize] of fields) {
    if (field in stated && field in (qraw as Record<string, unknown>) && inConfig !== inQuantize) {
      throw configError(
        file,
        `quantization_config.${field} is ${JSON.stringify(inConfig)} but ${qfile} says ${JSON.stringify(inQuantize)}; the checkpoint cannot be read both ways`,
        `quantization_config.${field}`,
      );
    }
  }
  return config;
}

/**
 * Checks that the checkpoint holds exactly the layers the config declares: a smaller
 * num_hidden_layers would silently drop layers, a larger one is a truncated checkpoint.
 */
export function checkLayerCount(config: LlamaConfig, names: Iterable<string>, file = 'checkpoint'): void {
  let layers = 0;
  for (const name of names) {
    const m = /^model\.layers\.(\d+)\./.exec(name);
    if (m) layers = Math.max(layers, Number(m[1]) + 1);
  }
  if (layers !== config.numLayers) {
    throw new LowbitError(
      'E_CONFIG',
      `${file}: config.json says num_hidden_layers is ${config.numLayers}, but the checkpoint holds ${layers === 0 ? 'no layers' : `layers 0 to ${layers - 1} (${layers})`}`,
      { file, field: 'num_hidden_layers' },
    );
  }
}

// ---------------------------------------------------------------------------------------------
// Tensor names

/** The tensors of one GPTQ-quantized linear. */
export interface QuantizedLinearTensors {
  qweight: string;
  qzeros: string;
  scales: string;
  gIdx?: string;
}

export interface LinearTensors {
  /** module path, e.g. model.layers.0.self_attn.q_proj */
  prefix: string;
  /** the dense weight [out, in], when stored dense */
  weight?: string;
  /** the GPTQ tensors, when stored quantized */
  quantized?: QuantizedLinearTensors;
  /** stored in SpQR form: `<prefix>.spqr_*` (src/formats/spqr.ts) */
  spqr?: boolean;
  bias?: string;
}

export interface BlockTensors {
  index: number;
  inputLayernorm: string;
  q: LinearTensors;
  k: LinearTensors;
  v: LinearTensors;
  o: LinearTensors;
  postAttentionLayernorm: string;
  gate: LinearTensors;
  up: LinearTensors;
  down: LinearTensors;
}

export interface ModelTensors {
  embedding: string;
  blocks: BlockTensors[];
  norm: string;
  /** the output projection: lm_head.weight, or the embedding when tied, or lm_head.qweight when quantized */
  lmHead: string;
  /** lm_head's GPTQ tensors, when the checkpoint stores it quantized (GPTQModel's lm_head: true) */
  lmHeadQuantized?: QuantizedLinearTensors;
  tied: boolean;
}

export const LINEAR_NAMES = ['q', 'k', 'v', 'o', 'gate', 'up', 'down'] as const;
export type LinearName = (typeof LINEAR_NAMES)[number];

/** Each linear's module path inside a decoder layer (model.layers.<i>.<path>). */
export const LINEAR_MODULES: Record<LinearName, string> = {
  q: 'self_attn.q_proj',
  k: 'self_attn.k_proj',
  v: 'self_attn.v_proj',
  o: 'self_attn.o_proj',
  gate: 'mlp.gate_proj',
  up: 'mlp.up_proj',
  down: 'mlp.down_proj',
};

/**
 * Maps a config onto tensor names and checks each one is there (`has`). Linears are dense
 * (`.weight`) or GPTQ (`.qweight`, `.qzeros`, `.scales`, `.g_idx`); biases follow the config.
 */
export function describeTensors(
  config: LlamaConfig,
  has: (name: string) => boolean,
  file = 'checkpoint',
): ModelTensors {
  const need = (name: string): string => {
    if (!has(name))
      throw new LowbitError(
        'E_MISSING_TENSOR',
        `${file}: the config implies tensor '${name}', which is not in the checkpoint`,
        { file, tensor: name },
      );
    return name;
  };
  const quantized = (prefix: string): QuantizedLinearTensors => {
    const q: QuantizedLinearTensors = {
      qweight: `${prefix}.qweight`,
      qzeros: need(`${prefix}.qzeros`),
      scales: need(`${prefix}.scales`),
    };
    if (has(`${prefix}.g_idx`)) q.gIdx = `${prefix}.g_idx`;
    return q;
  };
  const linear = (prefix: string, withBias: boolean): LinearTensors => {
    const out: LinearTensors = { prefix };
    if (has(`${prefix}.spqr_qweight`)) out.spqr = true;
    else if (has(`${prefix}.qweight`)) out.quantized = quantized(prefix);
    else out.weight = need(`${prefix}.weight`);
    // A bias the config does not announce is still used when present (some exports add them).
    if (withBias) out.bias = need(`${prefix}.bias`);
    else if (has(`${prefix}.bias`)) out.bias = `${prefix}.bias`;
    return out;
  };
  const biasOf: Record<LinearName, boolean> = {
    q: config.qkvBias,
    k: config.qkvBias,
    v: config.qkvBias,
    o: config.oBias,
    gate: config.mlpBias,
    up: config.mlpBias,
    down: config.mlpBias,
  };
  const blocks: BlockTensors[] = [];
  for (let i = 0; i < config.numLayers; i++) {
    const p = `model.layers.${i}`;
    const lin = {} as Record<LinearName, LinearTensors>;
    for (const n of LINEAR_NAMES) lin[n] = linear(`${p}.${LINEAR_MODULES[n]}`, biasOf[n]);
    blocks.push({
      index: i,
      inputLayernorm: need(`${p}.input_layernorm.weight`),
      ...lin,
      postAttentionLayernorm: need(`${p}.post_attention_layernorm.weight`),
    });
  }
  const embedding = need('model.embed_tokens.weight');
  const tied = config.tieWordEmbeddings;
  const headQuantized = !tied && has('lm_head.qweight');
  if (!headQuantized && config.quantization?.raw.lm_head === true) {
    throw new LowbitError(
      'E_GPTQ_FORMAT',
      `${file}: quantization_config.lm_head is true, but the checkpoint has no lm_head.qweight${tied ? ' (and tie_word_embeddings is true)' : ''}`,
      { file, tensor: 'lm_head.qweight' },
    );
  }
  return {
    embedding,
    blocks,
    norm: need('model.norm.weight'),
    lmHead: tied ? embedding : headQuantized ? 'lm_head.qweight' : need('lm_head.weight'),
    ...(headQuantized ? { lmHeadQuantized: quantized('lm_head') } : {}),
    tied,
  };
}

/** Checks the stored shapes against the config (dense tensors only). */
export function checkShapes(
  config: LlamaConfig,
  tensors: ModelTensors,
  shapeOf: (name: string) => readonly number[],
  file = 'checkpoint',
): void {
  const { hiddenSize: h, intermediateSize: f, numHeads, numKvHeads, headDim, vocabSize } = config;
  const expect = (name: string | undefined, shape: number[]): void => {
    if (!name) return;
    const got = shapeOf(name);
    if (got.length !== shape.length || got.some((d, i) => d !== shape[i])) {
      throw new LowbitError(
        'E_SHAPE',
        `${file}: tensor '${name}' has shape [${got.join(', ')}], the config implies [${shape.join(', ')}]`,
        { file, tensor: name },
      );
    }
  };
  expect(tensors.embedding, [vocabSize, h]);
  expect(tensors.norm, [h]);
  if (!tensors.tied && !tensors.lmHeadQuantized) expect(tensors.lmHead, [vocabSize, h]);
  const dims: Record<LinearName, [number, number]> = {
    q: [numHeads * headDim, h],
    k: [numKvHeads * headDim, h],
    v: [numKvHeads * headDim, h],
    o: [h, numHeads * headDim],
    gate: [f, h],
    up: [f, h],
    down: [h, f],
  };
  for (const b of tensors.blocks) {
    expect(b.inputLayernorm, [h]);
    expect(b.postAttentionLayernorm, [h]);
    for (const n of LINEAR_NAMES) {
      expect(b[n].weight, dims[n]);
      expect(b[n].bias, [dims[n][0]]);
    }
  }
}

/** What the forward pass needs from any model source (HF directory, llama2.c file, ...). */
export interface ModelReader {
  readonly config: LlamaConfig;
  readonly tensors: ModelTensors;
  /** every tensor name the source holds */
  readonly names: string[];
  /** shape of a stored tensor */
  shapeOf(name: string): readonly number[];
  /** the dtype readTensor returns for it */
  dtypeOf(name: string): DType;
  /** a tensor in its stored dtype */
  readTensor(name: string): Promise<Tensor>;
  /** a tensor converted to f32 */
  readFloat32(name: string): Promise<Tensor<'f32'>>;
  close(): Promise<void>;
}

/** A Hugging Face model directory: config.json + safetensors (single or sharded). */
export class HfModel implements ModelReader {
  private constructor(
    readonly dir: string,
    readonly config: LlamaConfig,
    readonly tensors: ModelTensors,
    readonly checkpoint: Checkpoint,
  ) {}

  static async open(dir: string): Promise<HfModel> {
    checkPath(dir, 'dir', 'a model directory');
    const root = resolve(dir);
    if (!existsSync(join(root, 'config.json'))) {
      throw new LowbitError('E_IO', `${root} has no config.json; is it a Hugging Face model directory?`, {
        file: join(root, 'config.json'),
      });
    }
    const config = await readLlamaConfig(root);
    const checkpoint = await Checkpoint.open(root);
    try {
      // a missing layer is named by describeTensors (E_MISSING_TENSOR), an extra one by checkLayerCount
      const tensors = describeTensors(config, (n) => checkpoint.has(n), root);
      checkLayerCount(config, checkpoint.names, root);
      checkShapes(config, tensors, (n) => checkpoint.info(n).shape, root);
      checkQuantizedTensors(config, tensors, (n) => checkpoint.info(n), root);
      checkSpqrTensors(
        config,
        tensors,
        (n) => checkpoint.has(n),
        (n) => checkpoint.info(n),
        root,
      );
      return new HfModel(root, config, tensors, checkpoint);
    } catch (err) {
      await checkpoint.close();
      throw err;
    }
  }

  get names(): string[] {
    return this.checkpoint.names;
  }
  shapeOf(name: string): readonly number[] {
    return this.checkpoint.info(name).shape;
  }
  dtypeOf(name: string): DType {
    return tensorDTypeOf(this.checkpoint.info(name).dtype);
  }
  readTensor(name: string): Promise<Tensor> {
    return this.checkpoint.readTensor(name);
  }
  async readFloat32(name: string): Promise<Tensor<'f32'>> {
    const t = await this.checkpoint.readTensor(name);
    if (t.dtype === 'f32') return t as Tensor<'f32'>;
    if (t.dtype === 'f16' || t.dtype === 'bf16') return t.to('f32');
    throw new LowbitError('E_DTYPE', `tensor '${name}' is ${t.dtype}, not a float tensor`, {
      file: this.dir,
      tensor: name,
    });
  }
  close(): Promise<void> {
    return this.checkpoint.close();
  }
}

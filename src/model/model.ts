/**
 * A Llama-family model held by the native forward pass (CPU or CUDA), built from a model reader
 * (src/formats). Whole-model calls (logits, NLL, KV-cached decoding) and a block-at-a-time API for
 * calibration: embed → runBlock(0..L-1) → head, with the weights of any block set, replaced (one
 * linear at a time, dense or packed) or dropped individually. See docs/ARCHITECTURE.md, "Forward pass".
 */
import { Buffer } from 'node:buffer';
import { existsSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { LowbitError, invalidArgument } from '../errors.js';
import { resolveDevice, type DeviceSpec } from '../devices.js';
import { HfModel, LINEAR_NAMES, type LinearTensors, type LlamaConfig, type ModelReader } from '../formats/hf.js';
import { readPackedHead, readPackedLinear } from '../formats/gptq.js';
import { readSpqrLinear } from '../formats/spqr.js';
import { openModelFiles } from '../formats/open.js';
import { loadTokenizer, type TextTokenizer } from '../formats/tokenizer.js';
import {
  native,
  toLowbitError,
  type CapturePointName,
  type CpuActivations,
  type NativeBlockWeights,
  type NativeDense,
  type NativeLinear,
  type NativeLinearName,
  type NativeHessian,
  type NativeModel,
  type NativeModelConfig,
  type ModelDtype,
  type KvCacheInfo,
} from '../native.js';
import type { Tensor } from '../tensor.js';
import { Hessian } from '../quantize/gptq.js';
import { ropeFrequencies } from './rope.js';
import { resolveModelPath, type HubDownloadOptions } from '../hub/index.js';

export type {
  CapturePointName,
  CpuActivations,
  KvCacheInfo,
  ModelDtype,
  NativeBlockWeights,
  NativeLinear,
  NativeLinearName,
} from '../native.js';
export const CAPTURE_POINTS: readonly CapturePointName[] = ['qkv', 'o', 'gateUp', 'down'];

export interface OpenModelOptions {
  /** 'cpu', 'cuda', 'cuda:N' or 'auto' (default: 'auto', a GPU when there is one) */
  device?: DeviceSpec;
  /**
   * What the forward pass computes in: 'f32' (default; reproduces the float64 reference to 1e-4),
   * or on a GPU 'bf16' / 'f16' activations and KV cache (tensor cores; the residual stream, norm
   * and softmax statistics and the logits stay f32), or 'auto': 'bf16' on a GPU, else 'f32'.
   */
  dtype?: ModelDtype | 'auto';
  /**
   * Which weights to load now: 'all' (default), or 'globals' (embedding, final norm, head) for
   * block-at-a-time work that sets each block itself (setBlockWeights / loadBlock).
   */
  load?: 'all' | 'globals';
  /** longest sequence (default: max_position_embeddings, or the sliding window when smaller) */
  maxSeq?: number;
  /** load the tokenizer from the model directory (default true; false for weights only) */
  tokenizer?: boolean;
  /**
   * CPU only: the precision of the activations inside packed GPTQ 2/3/4-bit and SpQR linears. 'int8'
   * (default) runs the repacked integer kernels (gptq-int8, spqr-int8: the fast path for inference;
   * each row is quantized per 128-input segment, so logits move by a small, bounded amount); 'f32'
   * keeps exact f32 activations (gptq-packed, spqr-cpu), for results that must match the f32
   * reference or be reproducible bit for bit (calibration uses it). Dense and 8-bit linears, and
   * CUDA, ignore it.
   */
  cpuActivations?: CpuActivations;
  /**
   * 16-bit CUDA only: the most tokens the paged KV cache pool holds over all sessions (rounded up to
   * whole pages; default: as many as device memory allows, keeping 1 GiB free). A step that needs a
   * page beyond it fails with E_KV_FULL. Elsewhere each session's cache is allocated at
   * createSession and this is ignored.
   */
  kvCacheTokens?: number;
}

/** The checked kvCacheTokens option. */
function kvCacheTokensOf(value: unknown): number | undefined {
  if (value === undefined) return undefined;
  if (typeof value !== 'number' || !Number.isSafeInteger(value) || value < 1)
    invalidArgument('kvCacheTokens', 'a positive integer', value);
  return value;
}

const CPU_ACTIVATIONS: readonly CpuActivations[] = ['int8', 'f32'];

/** The checked cpuActivations option (default 'int8'). */
function cpuActivationsOf(value: unknown): CpuActivations {
  if (value === undefined) return 'int8';
  if (!(CPU_ACTIVATIONS as readonly unknown[]).includes(value))
    invalidArgument('cpuActivations', "'int8' or 'f32'", value);
  return value as CpuActivations;
}

/** Runs a native model call, turning its coded errors into LowbitErrors. */
async function call<T>(fn: () => Promise<T>): Promise<T> {
  try {
    return await fn();
  } catch (err) {
    throw toLowbitError(err);
  }
}

function syncCall<T>(fn: () => T): T {
  try {
    return fn();
  } catch (err) {
    throw toLowbitError(err);
  }
}

/** The dtype a model computes in on `device` (-1: the CPU) for the dtype option. */
export function resolveModelDtype(dtype: ModelDtype | 'auto' | undefined, device: number): ModelDtype {
  if (dtype === undefined) return 'f32';
  if (dtype === 'auto') return device >= 0 ? 'bf16' : 'f32';
  if (dtype !== 'f32' && dtype !== 'f16' && dtype !== 'bf16')
    invalidArgument('dtype', "'f32', 'f16', 'bf16' or 'auto'", dtype);
  if (device < 0 && dtype !== 'f32')
    throw new LowbitError('E_UNSUPPORTED', `options.dtype: the CPU forward pass computes in f32, not ${dtype}`, {
      option: 'dtype',
    });
  return dtype;
}

/** The native config of a parsed model config. */
export function nativeModelConfig(config: LlamaConfig, maxSeq?: number): NativeModelConfig {
  const { invFreq, scale } = ropeFrequencies(config);
  let limit = config.maxPositionEmbeddings;
  if (config.slidingWindow !== undefined) limit = Math.min(limit, config.slidingWindow);
  if (maxSeq !== undefined) {
    if (!Number.isInteger(maxSeq) || maxSeq < 1) invalidArgument('maxSeq', 'a positive integer', maxSeq);
    limit = maxSeq;
  }
  return {
    dim: config.hiddenSize,
    hidden: config.intermediateSize,
    layers: config.numLayers,
    heads: config.numHeads,
    kvHeads: config.numKvHeads,
    headDim: config.headDim,
    vocab: config.vocabSize,
    maxSeq: limit,
    normEps: config.rmsNormEps,
    invFreq,
    ropeScale: scale,
    tieEmbeddings: config.tieWordEmbeddings,
  };
}

function denseOf(t: Tensor, name: string): NativeDense {
  if (t.dtype === 'f32') return { dtype: 'f32', data: t.data as Float32Array };
  if (t.dtype === 'f16' || t.dtype === 'bf16') return { dtype: t.dtype, data: t.data as Uint16Array };
  throw new LowbitError('E_DTYPE', `tensor '${name}' is ${t.dtype}; dense weights must be f32, f16 or bf16`, {
    tensor: name,
  });
}

/** In/out features of each block linear, from the config. */
export function linearShape(config: LlamaConfig, name: NativeLinearName): { K: number; N: number } {
  const { hiddenSize: h, intermediateSize: f, numHeads, numKvHeads, headDim } = config;
  switch (name) {
    case 'q':
      return { K: h, N: numHeads * headDim };
    case 'k':
    case 'v':
      return { K: h, N: numKvHeads * headDim };
    case 'o':
      return { K: numHeads * headDim, N: h };
    case 'gate':
    case 'up':
      return { K: h, N: f };
    case 'down':
      return { K: f, N: h };
  }
}

export class Model {
  private closed = false;

  private constructor(
    readonly config: LlamaConfig,
    readonly nativeConfig: NativeModelConfig,
    /** -1 for the CPU, else the CUDA device index */
    readonly device: number,
    /** what the forward pass computes in */
    readonly dtype: ModelDtype,
    private readonly handle: NativeModel,
    /** where the weights come from (kept open for loadBlock / readBlockWeights) */
    readonly reader: ModelReader | undefined,
    readonly tokenizer: TextTokenizer | undefined,
    /** the precision of activations in the CPU's packed GPTQ and SpQR linears (OpenModelOptions.cpuActivations) */
    readonly cpuActivations: CpuActivations,
  ) {}

  /** A model with no weights yet, from a config (for tests and synthetic benchmarks). */
  static create(
    config: LlamaConfig,
    options: {
      device?: DeviceSpec;
      dtype?: ModelDtype | 'auto';
      maxSeq?: number;
      tokenizer?: TextTokenizer;
      cpuActivations?: CpuActivations;
      kvCacheTokens?: number;
    } = {},
  ): Model {
    const device = resolveDevice(options.device ?? 'cpu');
    const dtype = resolveModelDtype(options.dtype, device);
    const nc = nativeModelConfig(config, options.maxSeq);
    const cpuActivations = cpuActivationsOf(options.cpuActivations);
    const kvCacheTokens = kvCacheTokensOf(options.kvCacheTokens);
    const Ctor = native().NativeModel;
    const handle = syncCall(() => new Ctor(nc, device, { cpuActivations, dtype, kvCacheTokens }));
    return new Model(config, nc, device, dtype, handle, undefined, options.tokenizer, cpuActivations);
  }

  /** Builds the model from `reader`, which it then owns: on any failure the reader is closed too. */
  static async open(reader: ModelReader, options: OpenModelOptions & { tokenizerFrom?: string } = {}): Promise<Model> {
    let model: Model | undefined;
    try {
      const device = resolveDevice(options.device ?? 'auto');
      const dtype = resolveModelDtype(options.dtype, device);
      const nc = nativeModelConfig(reader.config, options.maxSeq);
      const cpuActivations = cpuActivationsOf(options.cpuActivations);
      const kvCacheTokens = kvCacheTokensOf(options.kvCacheTokens);
      const Ctor = native().NativeModel;
      const handle = syncCall(() => new Ctor(nc, device, { cpuActivations, dtype, kvCacheTokens }));
      model = new Model(reader.config, nc, device, dtype, handle, reader, undefined, cpuActivations);
      if (options.tokenizer !== false && options.tokenizerFrom) {
        (model as { tokenizer: TextTokenizer | undefined }).tokenizer = await loadTokenizer(options.tokenizerFrom);
      }
      await model.loadGlobals();
      if ((options.load ?? 'all') === 'all') for (let i = 0; i < reader.config.numLayers; i++) await model.loadBlock(i);
      return model;
    } catch (err) {
      // the model's close closes the reader; before the model exists, close the reader itself
      await (model ? model.close() : reader.close());
      throw err;
    }
  }

  get layers(): number {
    return this.config.numLayers;
  }
  get dim(): number {
    return this.config.hiddenSize;
  }
  get vocabSize(): number {
    return this.config.vocabSize;
  }
  /** longest sequence a call may run */
  get maxSeq(): number {
    return this.nativeConfig.maxSeq;
  }
  /** bytes of weights held natively */
  get weightBytes(): number {
    return this.closed ? 0 : this.handle.weightBytes();
  }

  private native(): NativeModel {
    if (this.closed) throw new LowbitError('E_CLOSED', 'the model was closed');
    return this.handle;
  }

  /** @internal the native model (HiddenStates calls it) */
  get nativeModel(): NativeModel {
    return this.native();
  }

  private requireReader(): ModelReader {
    if (!this.reader)
      throw new LowbitError(
        'E_ARGUMENT',
        'this model was created without a checkpoint; set its weights with setBlockWeights',
      );
    return this.reader;
  }

  private checkBlock(block: number): void {
    if (!Number.isInteger(block) || block < 0 || block >= this.layers)
      invalidArgument('block', `an integer in [0, ${this.layers})`, block);
  }

  // ------------------------------------------------------------------ weights

  /** Sets the embedding, final norm and (untied) lm_head. */
  async setGlobals(globals: { embed: NativeDense; finalNorm: Float32Array; head?: NativeLinear }): Promise<void> {
    const { vocabSize: V, hiddenSize: h } = this.config;
    if (globals.embed.data.length !== V * h)
      throw new LowbitError('E_SHAPE', `embed holds ${globals.embed.data.length} values, expected ${V} x ${h}`);
    if (globals.finalNorm.length !== h)
      throw new LowbitError('E_SHAPE', `finalNorm holds ${globals.finalNorm.length} values, expected ${h}`);
    if (!this.config.tieWordEmbeddings && !globals.head)
      throw new LowbitError('E_MISSING_TENSOR', 'the model has untied embeddings: head is needed');
    await call(() => this.native().setGlobals(globals));
  }

  /** Sets (or replaces) all weights of one block. */
  async setBlockWeights(block: number, weights: NativeBlockWeights): Promise<void> {
    this.checkBlock(block);
    const h = this.config.hiddenSize;
    for (const key of ['attnNorm', 'mlpNorm'] as const) {
      if (!(weights[key] instanceof Float32Array) || weights[key].length !== h)
        invalidArgument(key, `a Float32Array of ${h} values`, weights[key]);
    }
    for (const name of LINEAR_NAMES) this.checkLinear(name, weights[name]);
    await call(() => this.native().setBlock(block, weights));
  }

  /** Replaces one linear of a block that is set (e.g. with its quantized, packed version). */
  async setLinear(block: number, name: NativeLinearName, weights: NativeLinear): Promise<void> {
    this.checkBlock(block);
    this.checkLinear(name, weights);
    await call(() => this.native().setLinear(block, name, weights));
  }

  /** Frees one block's weights. */
  async dropBlock(block: number): Promise<void> {
    this.checkBlock(block);
    await call(() => this.native().dropBlock(block));
  }

  private checkLinear(name: NativeLinearName, w: NativeLinear | undefined): void {
    if (!w || typeof w !== 'object')
      invalidArgument(name, "a linear ({dtype, data}, {packed} or {format: 'spqr', ...})", w);
    const { K, N } = linearShape(this.config, name);
    if (w.format === 'spqr') {
      // (every buffer and index is checked natively, validate_spqr)
      if (w.K !== K || w.N !== N)
        throw new LowbitError('E_SHAPE', `${name}: SpQR weight is ${w.N} x ${w.K}, the model needs ${N} x ${K}`);
    } else if (w.packed) {
      if (w.packed.K !== K || w.packed.N !== N)
        throw new LowbitError(
          'E_SHAPE',
          `${name}: packed weight is ${w.packed.N} x ${w.packed.K}, the model needs ${N} x ${K}`,
        );
    } else if (!w.data || w.data.length !== N * K) {
      throw new LowbitError(
        'E_SHAPE',
        `${name}: dense weight holds ${w.data?.length} values, the model needs ${N} x ${K}`,
      );
    }
    if (w.bias !== undefined && (!(w.bias instanceof Float32Array) || w.bias.length !== N))
      invalidArgument(`${name}.bias`, `a Float32Array of ${N} values`, w.bias);
  }

  private async readLinear(t: LinearTensors, _shape: { K: number; N: number }): Promise<NativeLinear> {
    const reader = this.requireReader();
    const bias = t.bias ? (await reader.readFloat32(t.bias)).data : undefined;
    if (t.weight) return { ...denseOf(await reader.readTensor(t.weight), t.weight), bias };
    // Packed linears are read by readBlockWeights through the formats module's readPackedLinear.
    throw new LowbitError('E_UNSUPPORTED', `${t.prefix} is GPTQ-packed where lowbit reads only dense weights`, {
      tensor: t.quantized?.qweight,
    });
  }

  /** Block `block`'s weights as stored in the checkpoint (dense in their dtype, or packed). */
  async readBlockWeights(block: number): Promise<NativeBlockWeights> {
    this.checkBlock(block);
    const reader = this.requireReader();
    const t = reader.tensors.blocks[block]!;
    const w = {
      attnNorm: (await reader.readFloat32(t.inputLayernorm)).data,
      mlpNorm: (await reader.readFloat32(t.postAttentionLayernorm)).data,
    } as NativeBlockWeights;
    for (const name of LINEAR_NAMES) {
      const lt = t[name];
      if (lt.spqr && reader instanceof HfModel) {
        // SpQR linears: checked against the config and the format (every length and index)
        const bias = lt.bias ? (await reader.readFloat32(lt.bias)).data : undefined;
        w[name] = { ...(await readSpqrLinear(reader, block, name)), format: 'spqr', bias };
      } else if (lt.quantized && reader instanceof HfModel) {
        // GPTQ linears: the formats reader checks every shape against the config
        const bias = lt.bias ? (await reader.readFloat32(lt.bias)).data : undefined;
        w[name] = { packed: await readPackedLinear(reader, block, name), bias };
      } else w[name] = await this.readLinear(lt, linearShape(this.config, name));
    }
    return w;
  }

  /** Loads block `block` from the checkpoint. */
  async loadBlock(block: number): Promise<void> {
    await this.setBlockWeights(block, await this.readBlockWeights(block));
  }

  /** Loads the embedding, final norm and head from the checkpoint. */
  async loadGlobals(): Promise<void> {
    const reader = this.requireReader();
    const t = reader.tensors;
    const embed = denseOf(await reader.readTensor(t.embedding), t.embedding);
    const finalNorm = (await reader.readFloat32(t.norm)).data;
    let head: NativeLinear | undefined;
    if (t.lmHeadQuantized && reader instanceof HfModel) {
      // a GPTQ-packed lm_head (GPTQModel's lm_head: true) runs on the packed kernels like the blocks
      head = { packed: await readPackedHead(reader) };
    } else if (!t.tied) {
      const headTensors: LinearTensors = { prefix: 'lm_head', weight: t.lmHead };
      head = await this.readLinear(headTensors, { K: this.config.hiddenSize, N: this.config.vocabSize });
    }
    await this.setGlobals({ embed, finalNorm, head });
  }

  // ------------------------------------------------------------------ block at a time

  private checkIds(ids: Int32Array, name = 'ids'): void {
    if (!(ids instanceof Int32Array)) invalidArgument(name, 'an Int32Array of token ids', ids);
    const V = this.vocabSize;
    for (let i = 0; i < ids.length; i++) {
      if (ids[i]! < 0 || ids[i]! >= V)
        throw new LowbitError('E_ARGUMENT', `${name}[${i}] = ${ids[i]} is outside the vocabulary [0, ${V})`, {
          option: name,
        });
    }
  }

  private checkBatch(batch: number, seq: number): void {
    if (!Number.isInteger(batch) || batch < 1) invalidArgument('batch', 'a positive integer', batch);
    if (!Number.isInteger(seq) || seq < 1 || seq > this.maxSeq)
      invalidArgument('seq', `an integer in [1, ${this.maxSeq}]`, seq);
  }

  /** Hidden states [ids.length, dim] of the token embedding. */
  async embed(ids: Int32Array): Promise<Float32Array> {
    this.checkIds(ids);
    const out = new Float32Array(ids.length * this.dim);
    if (ids.length > 0) await call(() => this.native().embed(ids, out));
    return out;
  }

  /**
   * Runs block `block` on `hidden` [batch*seq, dim] (each of the batch's sequences starts at position
   * 0) and returns its output (a new array; `hidden` is left as it was) and the inputs of the linears
   * asked for in `capture`, each [batch*seq, in features]. With `stopAfter`, the block stops after that
   * capture point and `hidden` comes back unchanged.
   */
  async runBlock(
    block: number,
    hidden: Float32Array,
    options: {
      batch: number;
      seq: number;
      capture?: readonly CapturePointName[];
      stopAfter?: CapturePointName;
      inPlace?: boolean;
    },
  ): Promise<{ hidden: Float32Array; inputs: Partial<Record<CapturePointName, Float32Array>> }> {
    this.checkBlock(block);
    const { batch, seq } = options;
    this.checkBatch(batch, seq);
    if (!(hidden instanceof Float32Array) || hidden.length !== batch * seq * this.dim) {
      invalidArgument('hidden', `a Float32Array of batch*seq*dim = ${batch * seq * this.dim} values`, hidden);
    }
    for (const p of options.capture ?? [])
      if (!CAPTURE_POINTS.includes(p)) invalidArgument('capture', `names from ${CAPTURE_POINTS.join(', ')}`, p);
    if (options.stopAfter !== undefined && !CAPTURE_POINTS.includes(options.stopAfter))
      invalidArgument('stopAfter', `one of ${CAPTURE_POINTS.join(', ')}`, options.stopAfter);
    const out = options.inPlace ? hidden : hidden.slice();
    const inputs = await call(() =>
      this.native().runBlock(block, out, batch, seq, {
        capture: options.capture ? [...options.capture] : undefined,
        stopAfter: options.stopAfter,
      }),
    );
    return { hidden: out, inputs };
  }

  /**
   * Calibration hidden states [rows, dim] (f32) copied where the model computes: a GPU's memory on
   * CUDA with 16-bit activations, a host copy otherwise. GPTQ's passes over them (HiddenStates.runBlock)
   * then need no host round trip of the states or of the captured activations.
   */
  async createStates(hidden: Float32Array, rows: number): Promise<HiddenStates> {
    if (!Number.isInteger(rows) || rows < 1) invalidArgument('rows', 'a positive integer', rows);
    if (!(hidden instanceof Float32Array) || hidden.length !== rows * this.dim)
      invalidArgument('hidden', `a Float32Array of rows*dim = ${rows * this.dim} values`, hidden);
    const id = await call(() => this.native().createStates(hidden, rows));
    return new HiddenStates(this, id, rows);
  }

  /** Device memory that resident states of `rows` rows take (0 where they stay on the host). */
  statesDeviceBytes(rows: number): number {
    return this.native().statesDeviceBytes(rows);
  }

  /** @internal checks for HiddenStates.runBlock */
  checkBlockRun(block: number, batch: number, seq: number): void {
    this.checkBlock(block);
    this.checkBatch(batch, seq);
  }

  /** Logits [rows, vocab] of hidden states [rows, dim] (final norm, then lm_head). */
  async head(hidden: Float32Array, rows: number): Promise<Float32Array> {
    if (!Number.isInteger(rows) || rows < 1) invalidArgument('rows', 'a positive integer', rows);
    if (!(hidden instanceof Float32Array) || hidden.length !== rows * this.dim)
      invalidArgument('hidden', `a Float32Array of rows*dim = ${rows * this.dim} values`, hidden);
    const out = new Float32Array(rows * this.vocabSize);
    await call(() => this.native().head(hidden, rows, out));
    return out;
  }

  // ------------------------------------------------------------------ whole model

  /** Logits [batch*seq, vocab] of ids [batch*seq]. */
  async logits(ids: Int32Array, options: { batch?: number; seq?: number } = {}): Promise<Float32Array> {
    const seq = options.seq ?? ids.length;
    const batch = options.batch ?? 1;
    this.checkBatch(batch, seq);
    this.checkIds(ids);
    if (ids.length !== batch * seq) invalidArgument('ids', `an Int32Array of batch*seq = ${batch * seq} ids`, ids);
    const out = new Float32Array(batch * seq * this.vocabSize);
    await call(() => this.native().logits(ids, batch, seq, out));
    return out;
  }

  /** NLL [batch*(seq-1)] of each next token of ids [batch*seq]. */
  async nll(ids: Int32Array, options: { batch?: number; seq?: number } = {}): Promise<Float32Array> {
    const seq = options.seq ?? ids.length;
    const batch = options.batch ?? 1;
    this.checkBatch(batch, seq);
    if (seq < 2) invalidArgument('seq', 'at least 2 (one prediction)', seq);
    this.checkIds(ids);
    if (ids.length !== batch * seq) invalidArgument('ids', `an Int32Array of batch*seq = ${batch * seq} ids`, ids);
    const out = new Float32Array(batch * (seq - 1));
    await call(() => this.native().nll(ids, batch, seq, out));
    return out;
  }

  /** A KV-cached sequence for incremental decoding. */
  async createSession(capacity = this.maxSeq): Promise<Session> {
    if (!Number.isInteger(capacity) || capacity < 1 || capacity > this.maxSeq)
      invalidArgument('capacity', `an integer in [1, ${this.maxSeq}]`, capacity);
    const id = await call(() => this.native().createSequence(capacity));
    return new Session(this, this.handle, id, capacity, (ids) => this.checkIds(ids));
  }

  /**
   * One decode step for several sessions at once: session i is fed ids[i] (one token each; the
   * sessions may hold different lengths) and the result holds the logits [sessions.length × vocab]
   * that predict each one's next token, row i for session i. Equal to feeding each session alone
   * (greedy-identical; on the CPU the same logits). Every session must belong to this model, be
   * open, appear once and have room for one more token (E_ARGUMENT / E_CLOSED otherwise, before any
   * session changes). `out` (length sessions.length × vocab), when given, receives the logits and is
   * returned: a serving loop that reuses one array saves allocating B × vocab floats every step.
   */
  async feedBatch(sessions: readonly Session[], ids: Int32Array, out?: Float32Array): Promise<Float32Array> {
    this.checkStep(sessions, ids, 1);
    const n = sessions.length * this.vocabSize;
    if (out !== undefined && !(out instanceof Float32Array && out.length === n))
      invalidArgument('out', `a Float32Array of sessions.length × vocab (${n}) values`, out);
    const logits = out ?? logitsArray(n);
    const lengths = await call(() =>
      this.native().decodeBatch(
        Int32Array.from(sessions, (s) => s.nativeId),
        ids,
        logits,
      ),
    );
    sessions.forEach((s, i) => (s.length = lengths[i]!));
    return logits;
  }

  /**
   * Greedy decoding of `steps` tokens for several sessions at once, without handing back logits:
   * step 0 feeds session i ids[i], each later step feeds it the token the step before chose (the
   * largest logit, the first on ties: `argmax`). Returns the chosen tokens [steps × sessions.length],
   * row s those chosen after step s; the last row's tokens are not fed (each session grows by
   * `steps`). The same tokens as `feedBatch` step by step with `argmax` on its logits; on the 16-bit
   * CUDA pass the steps run back to back on the GPU, each token chosen and fed there, so the host
   * pays one round trip for all of them. Sessions as for feedBatch, each with room for `steps`
   * tokens. On a failure the sessions are in an unknown state (close them).
   */
  async decodeGreedy(sessions: readonly Session[], ids: Int32Array, steps: number): Promise<Int32Array> {
    if (!Number.isSafeInteger(steps) || steps < 1) invalidArgument('steps', 'a positive integer', steps);
    this.checkStep(sessions, ids, steps);
    const tokens = new Int32Array(steps * sessions.length);
    const lengths = await call(() =>
      this.native().decodeGreedy(
        Int32Array.from(sessions, (s) => s.nativeId),
        ids,
        steps,
        tokens,
      ),
    );
    sessions.forEach((s, i) => (s.length = lengths[i]!));
    return tokens;
  }

  /** A batched step's checks: open sessions of this model, each once, each with room for `tokens` more. */
  private checkStep(sessions: readonly Session[], ids: Int32Array, tokens: number): void {
    this.native();
    if (!Array.isArray(sessions) || sessions.length === 0)
      invalidArgument('sessions', 'a non-empty array of Sessions', sessions);
    if (!(ids instanceof Int32Array) || ids.length !== sessions.length)
      invalidArgument('ids', `an Int32Array of one id per session (${sessions.length})`, ids);
    const seen = new Set<Session>();
    sessions.forEach((s, i) => {
      if (!(s instanceof Session) || !s.belongsTo(this))
        invalidArgument(`sessions[${i}]`, 'a Session of this model', s);
      if (s.isClosed) throw new LowbitError('E_CLOSED', `sessions[${i}] was closed`, { option: `sessions[${i}]` });
      if (seen.has(s)) invalidArgument(`sessions[${i}]`, 'each session once', 'a session given twice');
      seen.add(s);
      if (s.length + tokens > s.capacity)
        throw new LowbitError(
          'E_ARGUMENT',
          `sessions[${i}] holds ${s.length} of ${s.capacity} tokens; no room for ${tokens === 1 ? 'one' : tokens} more`,
          { option: `sessions[${i}]` },
        );
    });
    this.checkIds(ids);
  }

  /**
   * The KV cache memory, for a scheduler to plan with (KvCacheInfo): on the 16-bit CUDA pass, the
   * page pool (a session needs ceil(tokens / pageTokens) pages; E_KV_FULL when none is free);
   * elsewhere `paged: false` (each session's cache is allocated whole at createSession).
   */
  get kvCache(): KvCacheInfo {
    return syncCall(() => this.native().kvCache());
  }

  /** Frees the native weights and caches now, and closes the checkpoint. Idempotent. */
  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    this.handle.close();
    await this.reader?.close();
  }

  get isClosed(): boolean {
    return this.closed;
  }

  /** Bytes held by the KV caches of sessions not yet closed or collected (0 once closed). */
  get cacheBytes(): number {
    return this.handle.cacheBytes();
  }
}

/**
 * A Float32Array of n values for a decode step's logits, not zeroed first: the native call writes
 * every value before it resolves (a failed call's array is dropped unseen), so zeroing B x vocab
 * floats each step would be work thrown away.
 */
function logitsArray(n: number): Float32Array {
  const bytes = Buffer.allocUnsafeSlow(n * 4); // its own ArrayBuffer, at offset 0
  return new Float32Array(bytes.buffer, bytes.byteOffset, n);
}

/**
 * Frees the KV cache of a Session that is garbage-collected without close() (issue 8: 3,000
 * forgotten sessions held 2 GB until model.close()). The native side reports each cache to V8 as
 * external memory, so forgotten sessions add GC pressure and get collected.
 */
const forgottenSessions = new FinalizationRegistry<{ model: Model; handle: NativeModel; id: number }>(
  ({ model, handle, id }) => {
    if (!model.isClosed) handle.freeSequence(id);
  },
);

/** One sequence's KV cache: feed tokens, get the logits of the last one. Close it when done (or drop it: GC frees it). */
export class Session {
  private freed = false;
  length = 0;

  constructor(
    private readonly model: Model,
    private readonly handle: NativeModel,
    private readonly id: number,
    readonly capacity: number,
    private readonly checkIds: (ids: Int32Array) => void,
  ) {
    forgottenSessions.register(this, { model, handle, id }, this);
  }

  /** @internal the native sequence's id */
  get nativeId(): number {
    return this.id;
  }

  /** @internal whether this session's cache lives in `model` */
  belongsTo(model: Model): boolean {
    return this.model === model;
  }

  /** true once closed, or once its model was closed */
  get isClosed(): boolean {
    return this.freed || this.model.isClosed;
  }

  /** Appends `ids` and returns the logits [vocab] that predict the next token. */
  async feed(ids: Int32Array): Promise<Float32Array> {
    if (this.freed || this.model.isClosed) throw new LowbitError('E_CLOSED', 'the session (or its model) was closed');
    this.checkIds(ids);
    if (ids.length === 0) invalidArgument('ids', 'at least one token', ids);
    if (this.length + ids.length > this.capacity) {
      throw new LowbitError(
        'E_ARGUMENT',
        `the session holds ${this.length} of ${this.capacity} tokens; ${ids.length} more do not fit`,
      );
    }
    const out = logitsArray(this.model.vocabSize);
    this.length = await call(() => this.handle.decode(this.id, ids, out));
    return out;
  }

  close(): void {
    if (this.freed) return;
    this.freed = true;
    forgottenSessions.unregister(this);
    if (!this.model.isClosed) this.handle.freeSequence(this.id);
  }
}

/**
 * Opens a model: a Hugging Face directory (config.json + safetensors, fp32/fp16/bf16 or GPTQ-packed)
 * or a llama2.c checkpoint file. The tokenizer comes from the model directory when it has one
 * (tokenizer.model, else tokenizer.json), or from `options.tokenizer` when that is a path (e.g. the
 * tokenizer.model of a llama2.c checkpoint).
 */
/**
 * Calibration hidden states held by a model (Model.createStates): rows [rows, dim] of the residual
 * stream that blocks run over in place, each capture point's inputs folded straight into a Hessian.
 */
export class HiddenStates {
  #freed = false;

  constructor(
    private readonly model: Model,
    private readonly id: number,
    readonly rows: number,
  ) {}

  private native(): NativeModel {
    if (this.#freed || this.model.isClosed)
      throw new LowbitError('E_CLOSED', 'the hidden states (or their model) were freed');
    return this.model.nativeModel;
  }

  /**
   * Runs block `block` over rows [row0, row0 + batch*seq) (batch sequences of seq tokens) in place,
   * folding each capture point's inputs into `hessians[point]` (same K as the point's features; on the
   * model's GPU they are read where they are). With `stopAfter` the rows stay unchanged. Resolves
   * with the seconds spent in the Hessians.
   */
  async runBlock(
    block: number,
    options: {
      row0: number;
      batch: number;
      seq: number;
      hessians?: Partial<Record<CapturePointName, Hessian>>;
      stopAfter?: CapturePointName;
    },
  ): Promise<number> {
    const { row0, batch, seq } = options;
    this.model.checkBlockRun(block, batch, seq);
    if (!Number.isInteger(row0) || row0 < 0 || row0 + batch * seq > this.rows)
      invalidArgument('row0', `an integer with row0 + batch*seq <= ${this.rows}`, row0);
    const hessians: Partial<Record<CapturePointName, NativeHessian>> = {};
    for (const [p, h] of Object.entries(options.hessians ?? {})) {
      if (!CAPTURE_POINTS.includes(p as CapturePointName))
        invalidArgument('hessians', `keys from ${CAPTURE_POINTS.join(', ')}`, p);
      if (!(h instanceof Hessian)) invalidArgument(`hessians.${p}`, 'a Hessian', h);
      hessians[p as CapturePointName] = h.handle;
    }
    if (options.stopAfter !== undefined && !CAPTURE_POINTS.includes(options.stopAfter))
      invalidArgument('stopAfter', `one of ${CAPTURE_POINTS.join(', ')}`, options.stopAfter);
    const n = this.native();
    return call(() => n.runBlockStates(this.id, block, row0, batch, seq, { hessians, stopAfter: options.stopAfter }));
  }

  /** A copy of rows [row0, row0 + rows) as [rows, dim] f32 (default: all of them). */
  async read(row0 = 0, rows = this.rows - row0): Promise<Float32Array> {
    if (!Number.isInteger(row0) || !Number.isInteger(rows) || row0 < 0 || rows < 0 || row0 + rows > this.rows)
      invalidArgument('rows', `a range within [0, ${this.rows})`, `[${row0}, ${row0 + rows})`);
    const out = new Float32Array(rows * this.model.dim);
    const n = this.native();
    if (rows > 0) await call(() => n.readStates(this.id, row0, rows, out));
    return out;
  }

  /** Releases the states now (their memory goes once no queued call holds them). Idempotent. */
  free(): void {
    if (this.#freed) return;
    this.#freed = true;
    if (!this.model.isClosed) this.model.nativeModel.freeStates(this.id);
  }
}

export async function openModel(
  path: string,
  options: Omit<OpenModelOptions, 'tokenizer'> & { tokenizer?: boolean | string; hub?: HubDownloadOptions } = {},
): Promise<Model> {
  if (typeof path !== 'string' || path === '')
    invalidArgument('path', 'a model directory, llama2.c file or Hub id', path);
  // "org/name[@revision]" that is no local path: the Hub cache's snapshot (downloaded when missing)
  path = await resolveModelPath(path, options.hub);
  if (!existsSync(path)) throw new LowbitError('E_IO', `no model at ${path}`, { file: path });
  if (
    options.tokenizer !== undefined &&
    typeof options.tokenizer !== 'boolean' &&
    typeof options.tokenizer !== 'string'
  ) {
    invalidArgument('tokenizer', 'a boolean or a tokenizer path', options.tokenizer);
  }
  let isDir: boolean;
  try {
    isDir = statSync(path).isDirectory();
  } catch (err) {
    throw new LowbitError('E_IO', `cannot open ${path}: ${(err as Error).message}`, { file: path }, { cause: err });
  }
  let tokenizerFrom: string | undefined;
  if (typeof options.tokenizer === 'string') tokenizerFrom = options.tokenizer;
  else if (options.tokenizer !== false && isDir) {
    if (existsSync(join(path, 'tokenizer.model')) || existsSync(join(path, 'tokenizer.json'))) tokenizerFrom = path;
  }
  const reader = await openModelFiles(path);
  const { hub: _hub, ...modelOptions } = options;
  return Model.open(reader, { ...modelOptions, tokenizer: tokenizerFrom !== undefined, tokenizerFrom });
}

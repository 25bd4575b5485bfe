/**
 * The quantization pipeline: a model directory in, a GPTQ checkpoint out, block by block.
 *
 * GPTQ, for each transformer block:
 *   1. load the block's weights (only this block's are resident; the rest stay on disk)
 *   2. for each true-sequential stage (q/k/v, then o, then gate/up, then down): run the block over
 *      the calibration hidden states up to the stage's input, fold those inputs into the stage's
 *      Hessian, quantize the stage's linears and put them into the block at once, so that later
 *      stages see the outputs of the already-quantized earlier ones
 *   3. run the quantized block over the calibration states: they become the next block's inputs
 *   4. checkpoint the block (packed linears + hidden states) for --resume, and free it
 * RTN needs neither calibration nor forward passes: each linear is rounded on its own.
 *
 * The methods are plug-ins (./methods/: what calibration they need, how they quantize one linear,
 * what they write); this file is the orchestration: blocks, stages, calibration passes, resume,
 * output, progress.
 *
 * Progress comes as 'progress' events; cancellation through an AbortSignal (E_ABORTED, finished
 * blocks stay checkpointed); memory is estimated up front against `maxMemory` (E_MEMORY_BUDGET).
 */
import { EventEmitter } from 'node:events';
import { existsSync, statSync } from 'node:fs';
import { stat } from 'node:fs/promises';
import { join } from 'node:path';
import { createHash } from 'node:crypto';
import { resolve } from 'node:path';
import { LowbitError, invalidArgument } from '../errors.js';
import { GptqWriter, checkEmptyTarget, linearDims, type GptqConfig } from '../formats/gptq.js';
import { SpqrWriter, spqrStoredBytes, type SpqrQuantizationConfig } from '../formats/spqr.js';
import { listDir, removeFile } from '../formats/durable.js';
import { LINEAR_NAMES, type LinearName, type ModelReader } from '../formats/hf.js';
import { openModelFiles } from '../formats/open.js';
import { Model, type CapturePointName } from '../model/model.js';
import { native } from '../native.js';
import { Hessian } from '../quantize/gptq.js';
import { Tensor } from '../tensor.js';
import type { GptqBits } from '../weights/index.js';
import { resolveDevice, type DeviceSpec } from '../devices.js';
import { calibrationWindows } from './calibration.js';
import { HostStates, ResidentStates, type CalibrationStates } from './states.js';
import {
  DEFAULT_METHOD,
  methodOf,
  isSpqrWeights,
  rejectOptions,
  type LinearOutput,
  type MethodOptions,
  type MethodName,
  type QuantizationMethod,
  type QuantizedWeights,
} from './methods/index.js';
import { lockOutput, removeOrphans, type Warn } from './output.js';
import {
  clearState,
  createStateDir,
  hiddenName,
  pruneState,
  readBlock,
  readHidden,
  readState,
  resumeDir,
  writeBlock,
  writeHidden,
  writeState,
  type LayerReport,
  type Publishing,
  type ResumeState,
} from './resume.js';

export interface QuantizeOptions {
  /** a Hugging Face model directory (or a llama2.c checkpoint) */
  model: string;
  /** the checkpoint directory to write (must not exist, or be empty) */
  out: string;
  /** a name from METHODS (./methods/index.ts): 'gptq' (default), 'rtn' or 'spqr' */
  method?: MethodName;
  /** GPTQ/RTN: 2, 3, 4 or 8; SpQR: 2, 3 or 4 (default 3) */
  bits: GptqBits;
  /** default 128; -1 = per channel */
  groupSize?: number;
  sym?: boolean;
  actOrder?: boolean;
  staticGroups?: boolean;
  /** dampening: the fraction of mean(diag H) added to its diagonal (default 0.01); results report the absolute λ as `lambda` */
  damp?: number;
  mse?: boolean;
  /** quantize q/k/v → o → gate/up → down, each stage on inputs from the quantized earlier ones (default true) */
  trueSequential?: boolean;
  checkpointFormat?: 'gptq' | 'gptq_v2';
  /** SpQR: first-level group (default 16), along the input dimension */
  beta1?: number;
  /** SpQR: second-level group (default 16), along the output dimension */
  beta2?: number;
  /** SpQR: bits of each quantized first-level scale and zero (default 3) */
  statBits?: number;
  /** SpQR: τ, the outlier threshold relative to the layer's typical error, > 0 (default 0.2; Infinity: none) */
  outlierThreshold?: number;
  /** SpQR: most outliers as a fraction of each layer's weights, in (0, 1) (default 0.01) */
  outlierBudget?: number;
  /** SpQR: search each first-level group's scale and zero for the lowest error (default true; false: min–max) */
  gridSearch?: boolean;
  /**
   * SpQR: with gridSearch, also search each second-level block's grids (the offset and step the
   * statistics are quantized on) for the lowest error (default: gridSearch; false: min–max)
   */
  statSearch?: boolean;
  calibration?: {
    /** text files, or 'self' to sample calibration text from the model */
    files?: string[] | 'self';
    /** windows (default 128) */
    samples?: number;
    /** tokens per window (default min(2048, the model's context)) */
    seqLen?: number;
    seed?: number;
  };
  /** where the forward passes and the GPTQ sweeps run (default 'cpu') */
  device?: DeviceSpec;
  /**
   * what the calibration forward passes compute in on a GPU: 'bf16' (the default on CUDA: the hidden
   * states stay on the GPU in f32 and the captures feed the Hessians there, no host round trip), 'f16',
   * or 'f32' (the f32 pass through the host, whose checkpoints equal the CPU's). The CPU always runs f32.
   */
  calibrationDtype?: 'f32' | 'f16' | 'bf16';
  /** continue from the blocks a previous, interrupted run finished */
  resume?: boolean;
  /** bytes, or a string such as '20GB' / '512MiB' */
  maxMemory?: number | string;
  signal?: AbortSignal;
  /**
   * quantize lm_head too (GPTQModel's lm_head: true), as the last stage: GPTQ calibrates it on the
   * final norm's outputs of the quantized blocks. A tied embedding is untied (it stays dense). Default false.
   */
  lmHead?: boolean;
  /** also return every packed linear in the summary (prefix -> weights), e.g. to use the result in memory; they have the source model's shapes (the checkpoint pads the MLP width: src/formats/padding.ts) */
  keepPacked?: boolean;
}

export interface QuantizeProgress {
  block: number;
  blocks: number;
  /** module path of the linear just quantized, e.g. model.layers.3.mlp.down_proj */
  linear: string;
  /** GPTQ loss of that linear (null for RTN) */
  loss: number | null;
  /** linears done and in all */
  done: number;
  total: number;
  etaSeconds: number;
  /** where the wall time went so far (seconds), as in the summary */
  timings: QuantizeTimings;
}

export interface QuantizeSummary {
  out: string;
  method: MethodName;
  bits: number;
  groupSize: number;
  layers: LayerReport[];
  /** bits per quantized weight: everything the quantized linears store (GPTQ: codes + scales + zeros + g_idx; SpQR: codes, both levels of statistics, permutation, outliers) */
  bitsPerWeight: number;
  /** SpQR: outliers / weights over the quantized linears */
  outlierRate?: number;
  /** bytes of the quantized linears' tensors */
  quantizedBytes: number;
  /** the memory estimate checked against maxMemory */
  estimatedPeakBytes: number;
  /** with calibration on a GPU's 16-bit path: the GPU memory the estimate expects (states, block, scratch, Hessians, GPTQ) */
  estimatedDeviceBytes?: number;
  resumedBlocks: number;
  seconds: number;
  /** where the wall time went (seconds): forward passes, Hessian accumulation, the method's sweeps, reading/writing weights and states */
  timings: QuantizeTimings;
  /** with keepPacked: every quantized linear, by module prefix */
  packed?: Map<string, QuantizedWeights>;
}

export interface QuantizeTimings {
  forward: number;
  hessian: number;
  gptq: number;
  io: number;
}

/** Something the run did on its own that the user should hear about (e.g. leftovers of a stopped run removed). */
export interface QuantizeWarning {
  message: string;
  /** the file or directory concerned */
  path: string;
}

/** A running quantization: await it for the summary; listen for 'progress' and 'warning' events. */
export class QuantizeJob extends EventEmitter implements PromiseLike<QuantizeSummary> {
  readonly result: Promise<QuantizeSummary>;

  constructor(run: (job: QuantizeJob) => Promise<QuantizeSummary>) {
    super();
    // Start on the next tick so listeners attached right after quantize() see every event.
    this.result = new Promise<void>((r) => setImmediate(r)).then(() => run(this));
  }

  then<A = QuantizeSummary, B = never>(
    onFulfilled?: ((value: QuantizeSummary) => A | PromiseLike<A>) | null,
    onRejected?: ((reason: unknown) => B | PromiseLike<B>) | null,
  ): Promise<A | B> {
    return this.result.then(onFulfilled, onRejected);
  }
}

const UNITS: Record<string, number> = {
  b: 1,
  kb: 1e3,
  mb: 1e6,
  gb: 1e9,
  tb: 1e12,
  kib: 2 ** 10,
  mib: 2 ** 20,
  gib: 2 ** 30,
  tib: 2 ** 40,
};

/** Bytes from a number or a size such as '20GB', '1.5 GiB', '512mb'. */
export function parseBytes(value: number | string, name = 'maxMemory'): number {
  if (typeof value === 'number') {
    if (!(value > 0) || !Number.isFinite(value))
      invalidArgument(name, 'a positive number of bytes or a size like "20GB"', value);
    return value;
  }
  const m = typeof value === 'string' ? /^\s*([0-9]*\.?[0-9]+)\s*([kmgt]i?b|b)?\s*$/i.exec(value) : null;
  if (!m) invalidArgument(name, 'a positive number of bytes or a size like "20GB"', value);
  return Number(m[1]) * UNITS[(m[2] ?? 'b').toLowerCase()]!;
}

function formatBytes(n: number): string {
  return n >= 1e9 ? `${(n / 1e9).toFixed(2)} GB` : `${(n / 1e6).toFixed(1)} MB`;
}

/** The true-sequential stages: each capture point and the linears that read it. */
const STAGES: { point: CapturePointName; linears: LinearName[] }[] = [
  { point: 'qkv', linears: ['q', 'k', 'v'] },
  { point: 'o', linears: ['o'] },
  { point: 'gateUp', linears: ['gate', 'up'] },
  { point: 'down', linears: ['down'] },
];

interface Resolved {
  model: string;
  out: string;
  method: QuantizationMethod<MethodOptions>;
  /** the method's own options (GptqMethodOptions, RtnMethodOptions, SpqrMethodOptions), checked by the method */
  options: MethodOptions & { beta1?: number };
  files: string[] | 'self';
  samples: number;
  seqLen: number | undefined;
  seed: number;
  device: DeviceSpec;
  resume: boolean;
  maxMemory: number | undefined;
  signal: AbortSignal | undefined;
  keepPacked: boolean;
  lmHead: boolean;
  calibrationDtype: 'f32' | 'f16' | 'bf16';
}

function resolveOptions(o: QuantizeOptions): Resolved {
  if (o === null || typeof o !== 'object') invalidArgument('options', 'an object', o);
  if (typeof o.model !== 'string' || o.model === '') invalidArgument('model', 'a model directory', o.model);
  if (!existsSync(o.model)) throw new LowbitError('E_IO', `no model at ${o.model}`, { file: o.model });
  if (typeof o.out !== 'string' || o.out === '') invalidArgument('out', 'an output directory', o.out);
  const method = methodOf(o.method ?? DEFAULT_METHOD);
  const options = method.resolve(o as unknown as Record<string, unknown>);
  const c = o.calibration ?? {};
  if (method.calibration === 'none') {
    const given = Object.keys(c).filter((k) => c[k as keyof typeof c] !== undefined);
    rejectOptions(
      method.name.toUpperCase(),
      Object.fromEntries(given.map((k) => [`calibration.${k}`, true])),
      given.map((k) => `calibration.${k}`),
      'GPTQ',
      `${method.name.toUpperCase()} runs no calibration`,
    );
  }
  const files = c.files ?? (method.calibration !== 'none' ? undefined : []);
  if (method.calibration !== 'none') {
    if (files === undefined)
      throw new LowbitError(
        'E_CALIBRATION',
        `${method.name.toUpperCase()} needs calibration data: give calibration.files (text files) or "self"`,
      );
    if (files !== 'self' && (!Array.isArray(files) || files.length === 0 || files.some((f) => typeof f !== 'string'))) {
      invalidArgument('calibration.files', 'an array of text file paths or "self"', files, 'E_CALIBRATION');
    }
    if (Array.isArray(files))
      for (const f of files)
        if (!existsSync(f)) throw new LowbitError('E_CALIBRATION', `calibration file ${f} does not exist`, { file: f });
  }
  const samples = c.samples ?? 128;
  if (!Number.isInteger(samples) || samples < 1) invalidArgument('calibration.samples', 'a positive integer', samples);
  if (c.seqLen !== undefined && (!Number.isInteger(c.seqLen) || c.seqLen < 2))
    invalidArgument('calibration.seqLen', 'an integer >= 2', c.seqLen);
  const seed = c.seed ?? 0;
  if (!Number.isInteger(seed)) invalidArgument('calibration.seed', 'an integer', seed);
  if (o.signal !== undefined && !(o.signal instanceof AbortSignal))
    invalidArgument('signal', 'an AbortSignal', o.signal);
  if (o.lmHead !== undefined && typeof o.lmHead !== 'boolean') invalidArgument('lmHead', 'true or false', o.lmHead);
  if (o.lmHead && method.format !== 'gptq')
    throw new LowbitError(
      'E_ARGUMENT',
      `--quantize-lm-head (lmHead) is written in the GPTQ format only; --method ${method.name} does not take it`,
      { option: 'lmHead' },
    );
  const device = o.device ?? 'cpu';
  const onGpu = resolveDevice(device) >= 0;
  const calibrationDtype = o.calibrationDtype ?? (onGpu ? 'bf16' : 'f32');
  if (calibrationDtype !== 'f32' && calibrationDtype !== 'f16' && calibrationDtype !== 'bf16')
    invalidArgument('calibrationDtype', "'f32', 'f16' or 'bf16'", calibrationDtype);
  if (!onGpu && calibrationDtype !== 'f32')
    throw new LowbitError(
      'E_UNSUPPORTED',
      `calibrationDtype: the CPU's calibration passes compute in f32, not ${calibrationDtype}`,
      { option: 'calibrationDtype' },
    );
  return {
    calibrationDtype,
    model: o.model,
    out: resolve(o.out),
    method,
    options,
    files: files ?? [],
    samples,
    seqLen: c.seqLen,
    seed,
    device,
    resume: o.resume ?? false,
    maxMemory: o.maxMemory === undefined ? undefined : parseBytes(o.maxMemory),
    signal: o.signal,
    keepPacked: o.keepPacked ?? false,
    lmHead: o.lmHead ?? false,
  };
}

/** What decides the result: a resumed run must have been started with the same. */
function fingerprint(r: Resolved, seqLen: number): string {
  const { model, method, options, files, samples, seed, lmHead } = r;
  // (16-bit calibration only: f32 runs keep the fingerprints they always had)
  const dtype =
    r.calibrationDtype === 'f32' || method.calibration === 'none' ? {} : { calibrationDtype: r.calibrationDtype };
  const key = { model: resolve(model), method: method.name, options, files, samples, seqLen, seed, lmHead, ...dtype };
  return createHash('sha256').update(JSON.stringify(key)).digest('hex');
}

function checkAbort(signal: AbortSignal | undefined): void {
  if (signal?.aborted)
    throw new LowbitError('E_ABORTED', 'quantization was cancelled; finished blocks are kept for --resume');
}

/** Peak memory of the run, estimated from the shapes (bytes). */
export function estimatePeakBytes(
  reader: ModelReader,
  methodName: MethodName,
  tokens: number,
  trueSequential: boolean,
  rowsPerCall: number,
  lmHead = false,
): number {
  const method = methodOf(methodName);
  const c = reader.config;
  const bytesOf = (name: string) =>
    reader.shapeOf(name).reduce((a, b) => a * b, 1) * (reader.dtypeOf(name) === 'f32' ? 4 : 2);
  let linearMax = 0;
  let blockBytes = 0;
  let maxK = 0;
  for (const name of LINEAR_NAMES) {
    const { K, N } = linearDims(c, name);
    maxK = Math.max(maxK, K);
    blockBytes += N * K * 4;
    linearMax = Math.max(linearMax, method.linearBytes(N, K));
  }
  if (lmHead) linearMax = Math.max(linearMax, method.linearBytes(c.vocabSize, c.hiddenSize));
  if (method.calibration === 'none') return linearMax;
  const globals = bytesOf(reader.tensors.embedding) + (reader.tensors.tied ? 0 : bytesOf(reader.tensors.lmHead));
  const hidden = tokens * c.hiddenSize * 4;
  const perCall = rowsPerCall * (2 * c.hiddenSize + 3 * maxK + c.intermediateSize * 3) * 4;
  const hessians = trueSequential
    ? Math.max(...STAGES.map((s) => linearDims(c, s.linears[0]!).K ** 2 * 4))
    : STAGES.reduce((a, s) => a + linearDims(c, s.linears[0]!).K ** 2 * 4, 0);
  return globals + hidden + perCall + 2 * blockBytes + hessians + linearMax;
}

/**
 * GPU memory of calibration on a GPU's 16-bit path (bytes): the resident hidden states (f32), one
 * block's weights (16-bit), one call's activations (rowsPerCall tokens), the stage's Hessians and
 * the GPTQ sweep's working set on the largest linear (W and its update in f32, H's factor in f64).
 */
export function estimateDeviceBytes(
  reader: ModelReader,
  tokens: number,
  rowsPerCall: number,
  trueSequential = true,
): number {
  const c = reader.config;
  let blockBytes = 0;
  let maxK = 0;
  let sweep = 0;
  for (const name of LINEAR_NAMES) {
    const { K, N } = linearDims(c, name);
    maxK = Math.max(maxK, K);
    blockBytes += N * K * 2;
    sweep = Math.max(sweep, N * K * (4 + 4 + 1) + K * K * (8 * 2 + 4));
  }
  const qkvWidth = linearDims(c, 'q').N + 2 * linearDims(c, 'k').N;
  const perCall = rowsPerCall * (c.hiddenSize * 4 + 2 * (3 * c.hiddenSize + qkvWidth + 2 * c.intermediateSize));
  const sizes = STAGES.map((s) => linearDims(c, s.linears[0]!).K ** 2 * 4);
  const hessians = trueSequential ? Math.max(...sizes) : sizes.reduce((a, b) => a + b, 0);
  return tokens * c.hiddenSize * 4 + blockBytes + perCall + hessians + sweep;
}

/** Bytes a quantized linear takes in its checkpoint. */
function storedBytes(w: QuantizedWeights): number {
  if (isSpqrWeights(w)) return spqrStoredBytes(w);
  return w.qweight.byteLength + w.qzeros.byteLength + w.scales.byteLength + (w.gIdx?.byteLength ?? w.K * 4);
}

/** What the scheduler writes into: the checkpoint writer of the method's format. */
interface CheckpointSink {
  putLinear(prefix: string, w: QuantizedWeights): Promise<void>;
  finish(beforeRename?: (work: string) => Promise<void>): Promise<string>;
  abort(): Promise<void>;
}

async function openWriter(r: Resolved, reader: ModelReader): Promise<CheckpointSink> {
  const config = r.method.checkpointConfig(r.options);
  const wrongFormat = (prefix: string): never => {
    throw new LowbitError('E_INTERNAL', `${prefix}: method ${r.method.name} returned weights of another format`);
  };
  if (r.method.format === 'spqr') {
    const w = await SpqrWriter.create(r.out, reader, config as SpqrQuantizationConfig, {
      tokenizerFrom: modelDirOf(r.model),
    });
    return {
      putLinear: async (prefix, q) => (isSpqrWeights(q) ? w.putLinear(prefix, q) : wrongFormat(prefix)),
      finish: (before) => w.finish(before),
      abort: () => w.abort(),
    };
  }
  const gptq = config as GptqConfig;
  const w = await GptqWriter.create(r.out, reader, r.lmHead ? { ...gptq, lmHead: true } : gptq);
  // The checkpoint states the configured group size even where it exceeds a layer's K (one group);
  // the packed weights handed to kernels carry min(groupSize, K).
  const groupSize = r.options.groupSize ?? 0;
  return {
    putLinear: (prefix, q) =>
      isSpqrWeights(q) ? wrongFormat(prefix) : w.putLinear(prefix, groupSize > q.K ? { ...q, groupSize } : q),
    finish: (before) => w.finish(before),
    abort: () => w.abort(),
  };
}

/** Starts quantizing; the returned job is a promise of the summary and emits 'progress'. */
export function quantize(options: QuantizeOptions): QuantizeJob {
  return new QuantizeJob((job) => runQuantize(resolveOptions(options), job));
}

/** Rejects NaN and infinity in a weight before any method sees it (E_NAN naming the tensor). */
function assertFinite(data: Float32Array, tensor: string): void {
  for (let i = 0; i < data.length; i++) {
    if (!Number.isFinite(data[i]!)) {
      throw new LowbitError(
        'E_NAN',
        `${tensor} holds ${data[i]} at index ${i}: non-finite weights cannot be quantized`,
        { tensor, index: i },
      );
    }
  }
}

/** Whether `out` is the directory a run recorded just before renaming it into place. */
async function isPublished(out: string, p: Publishing): Promise<boolean> {
  const st = await stat(out).catch(() => undefined);
  if (!st || st.dev !== p.dev || st.ino !== p.ino || existsSync(p.work)) return false;
  const names = await listDir(out);
  if (names.length !== Object.keys(p.files).length) return false;
  for (const name of names) {
    const size = await stat(join(out, name))
      .then((f) => f.size)
      .catch(() => -1);
    if (size !== p.files[name]) return false;
  }
  return true;
}

async function runQuantize(r: Resolved, job: QuantizeJob): Promise<QuantizeSummary> {
  checkAbort(r.signal);
  const warn: Warn = (message, path) => job.emit('warning', { message, path } satisfies QuantizeWarning);
  const lock = await lockOutput(r.out, warn);
  try {
    return await runLocked(r, job, warn);
  } finally {
    await lock.release();
  }
}

async function runLocked(r: Resolved, job: QuantizeJob, warn: Warn): Promise<QuantizeSummary> {
  const started = performance.now();
  const reader = await openModelFiles(r.model);
  let model: Model | undefined;
  let writer: CheckpointSink | undefined;
  let states: CalibrationStates | undefined;
  const timings: QuantizeTimings = { forward: 0, hessian: 0, gptq: 0, io: 0 };
  try {
    for (const b of reader.tensors.blocks)
      for (const name of LINEAR_NAMES) {
        if (!b[name].weight)
          throw new LowbitError(
            'E_UNSUPPORTED',
            `${b[name].prefix} is already quantized; quantize from a dense checkpoint`,
            { tensor: b[name].prefix },
          );
      }
    const c = reader.config;
    r.method.checkShapes?.(
      r.options,
      LINEAR_NAMES.map((n) => linearDims(c, n)),
    );
    const blocks = c.numLayers;
    const seqLen = r.seqLen ?? Math.min(2048, c.maxPositionEmbeddings);
    const tokens = r.samples * seqLen;
    const rowsPerCall = Math.max(1, Math.floor(4096 / seqLen)); // sequences per forward call
    // On the GPU's 16-bit path: larger calls (the tensor cores want long products; the Hessians'
    // products get 16k tokens at a time)
    const residentPerCall = Math.max(1, Math.floor(16384 / seqLen));
    const trueSequential = r.options.trueSequential ?? false;
    const estimatedPeakBytes = estimatePeakBytes(
      reader,
      r.method.name as MethodName,
      tokens,
      trueSequential,
      rowsPerCall * seqLen,
      r.lmHead,
    );
    const estimatedDeviceBytes =
      r.calibrationDtype !== 'f32' && r.method.calibration !== 'none'
        ? estimateDeviceBytes(reader, tokens, residentPerCall * seqLen, trueSequential)
        : undefined;
    if (r.maxMemory !== undefined && estimatedPeakBytes > r.maxMemory) {
      throw new LowbitError(
        'E_MEMORY_BUDGET',
        `quantizing this model needs about ${formatBytes(estimatedPeakBytes)} (${estimatedPeakBytes} bytes), more than maxMemory ${formatBytes(r.maxMemory)}; ` +
          `raise maxMemory${r.method.calibration !== 'none' ? ' or lower calibration samples / seqLen' : ''}`,
        { needed: estimatedPeakBytes, budget: r.maxMemory },
      );
    }

    const summaryOf = (layers: LayerReport[], out: string, resumedBlocks: number): QuantizeSummary => {
      const quantizedBytes = layers.reduce((a, l) => a + l.bytes, 0);
      const weightsCount = layers.reduce((a, l) => a + l.N * l.K, 0);
      const outliers = layers.some((l) => l.outlierRate !== undefined)
        ? { outlierRate: layers.reduce((a, l) => a + (l.outlierRate ?? 0) * l.N * l.K, 0) / weightsCount }
        : {};
      return {
        ...outliers,
        out,
        method: r.method.name as MethodName,
        bits: r.options.bits,
        groupSize: r.options.groupSize ?? r.options.beta1 ?? 0,
        layers,
        bitsPerWeight: (quantizedBytes * 8) / weightsCount,
        quantizedBytes,
        estimatedPeakBytes,
        ...(estimatedDeviceBytes !== undefined ? { estimatedDeviceBytes } : {}),
        resumedBlocks,
        seconds: (performance.now() - started) / 1000,
        timings: { ...timings },
      };
    };

    // Resume state, and what a stopped run left behind.
    const stateDir = resumeDir(r.out);
    await removeOrphans(r.out, warn, [stateDir]);
    const fp = fingerprint(r, seqLen);
    const fresh: ResumeState = { version: 2, fingerprint: fp, finishedBlocks: 0, layers: [], hidden: null };
    let saved = await readState(stateDir).catch((err: unknown) => {
      if (r.resume) throw err;
      return undefined; // a fresh run discards it anyway
    });
    if (saved?.publishing && (await isPublished(r.out, saved.publishing))) {
      // Stopped after the checkpoint was renamed into place: it is complete, only the state is stale.
      const packed =
        r.keepPacked && r.resume && saved.fingerprint === fp
          ? await readAllBlocks(stateDir, fp, saved.finishedBlocks)
          : undefined;
      await clearState(stateDir);
      warn(`${r.out} was already complete; removed the resume state a stopped run left (${stateDir})`, stateDir);
      if (r.resume && saved.fingerprint === fp)
        return { ...summaryOf(saved.layers, r.out, saved.finishedBlocks), ...(packed ? { packed } : {}) };
      saved = undefined;
    }
    let state: ResumeState = fresh;
    if (r.resume) {
      if (saved && saved.fingerprint !== fp) {
        throw new LowbitError(
          'E_ARGUMENT',
          `the resume state in ${stateDir} was made with different options or model; run without resume to start over`,
          { file: stateDir },
        );
      }
      if (saved) state = { ...saved, publishing: undefined };
      const removed = await pruneState(stateDir, saved);
      if (removed.length > 0)
        warn(
          `removed ${removed.length} unfinished file(s) from the resume state ${stateDir} (${removed.join(', ')})`,
          stateDir,
        );
      if (!saved) {
        await checkEmptyTarget(r.out).catch((err: unknown) => {
          throw new LowbitError(
            'E_IO',
            `nothing to resume for ${r.out}: there is no resume state, and it already holds files (a finished run?)`,
            { file: r.out },
            { cause: err },
          );
        });
      }
    } else {
      await checkEmptyTarget(r.out); // before discarding anything
      if (saved)
        warn(
          `discarded the resume state of an earlier run (${saved.finishedBlocks} finished blocks) in ${stateDir}; resume continues such a run`,
          stateDir,
        );
      else if (existsSync(stateDir)) warn(`removed the leftovers of a stopped run in ${stateDir}`, stateDir);
      await clearState(stateDir);
    }
    await createStateDir(stateDir);
    const resumedBlocks = state.finishedBlocks;

    writer = await openWriter(r, reader);
    const kept = r.keepPacked ? new Map<string, QuantizedWeights>() : undefined;
    for (let b = 0; b < state.finishedBlocks; b++) {
      for (const [prefix, w] of await readBlock(stateDir, fp, b)) {
        await writer.putLinear(prefix, w);
        kept?.set(prefix, w);
      }
    }

    const total = blocks * LINEAR_NAMES.length + (r.lmHead ? 1 : 0);
    let done = state.finishedBlocks * LINEAR_NAMES.length;
    const runStart = performance.now();
    const doneAtStart = done;
    const report = (block: number, layer: LayerReport) => {
      done++;
      const rate = (performance.now() - runStart) / 1000 / (done - doneAtStart);
      const progress: QuantizeProgress = {
        block,
        blocks,
        linear: layer.prefix,
        loss: layer.loss,
        done,
        total,
        etaSeconds: rate * (total - done),
        timings: { ...timings },
      };
      job.emit('progress', progress);
    };
    /** One linear through the method: checked finite, quantized, reported. */
    /** lm_head, quantized with the last block (its file holds it for resume) */
    const head = { name: 'head', prefix: 'lm_head', weight: reader.tensors.lmHead };
    const quantizeLinear = async (
      block: number,
      name: LinearName | 'head',
      W: Tensor<'f32'>,
      hessian?: Hessian,
    ): Promise<{ out: LinearOutput; layer: LayerReport }> => {
      const t0 = performance.now();
      const t = name === 'head' ? head : reader.tensors.blocks[block]![name];
      assertFinite(W.data, t.weight ?? `${t.prefix}.weight`);
      const out = await r.method.quantizeLinear({ W, hessian, device: r.device }, r.options);
      timings.gptq += (performance.now() - t0) / 1000;
      const w = out.packed;
      const layer: LayerReport = {
        block,
        linear: name,
        prefix: t.prefix,
        N: w.N,
        K: w.K,
        loss: out.loss,
        damp: out.damp,
        lambda: out.lambda,
        dampRaises: out.dampRaises,
        warnings: out.warnings,
        bitsPerWeight: (storedBytes(w) * 8) / (w.N * w.K),
        bytes: storedBytes(w),
        seconds: (performance.now() - t0) / 1000,
      };
      if (isSpqrWeights(w)) layer.outlierRate = w.outlierCols.length / (w.N * w.K);
      report(block, layer);
      return { out, layer };
    };
    // Layers of blocks written but not yet committed (see `commit` below).
    let uncommitted: LayerReport[] = [];
    /**
     * Writes a finished block for resume and puts its linears into the checkpoint. With `commit`
     * false (only the GPU's resident path, where the states are GBs and blocks take seconds) the
     * block's file is written but the states are not saved nor the state committed: a resume then
     * restarts after the last committed block and computes the later ones again, the same way.
     */
    const finishBlock = async (
      block: number,
      linears: Map<string, QuantizedWeights>,
      layers: LayerReport[],
      hidden?: Float32Array,
      commit = true,
    ) => {
      // Block and hidden-state files first, then the one commit that names them.
      await writeBlock(stateDir, fp, block, linears);
      uncommitted.push(...layers);
      if (commit) {
        if (hidden) await writeHidden(stateDir, fp, block + 1, hidden);
        const previous = state.hidden;
        state = {
          ...state,
          finishedBlocks: block + 1,
          layers: [...state.layers, ...uncommitted],
          hidden: hidden ? hiddenName(block + 1) : null,
        };
        uncommitted = [];
        await writeState(stateDir, state);
        if (previous && previous !== state.hidden) await removeFile(join(stateDir, previous));
      }
      for (const [prefix, w] of linears) {
        await writer!.putLinear(prefix, w);
        kept?.set(prefix, w);
      }
    };

    if (r.method.calibration === 'none') {
      // Each linear on its own weights: no model, no forward passes.
      for (let b = state.finishedBlocks; b < blocks; b++) {
        const linears = new Map<string, QuantizedWeights>();
        const layers: LayerReport[] = [];
        for (const name of LINEAR_NAMES) {
          checkAbort(r.signal);
          const t = reader.tensors.blocks[b]![name];
          const { out, layer } = await quantizeLinear(b, name, await reader.readFloat32(t.weight!));
          linears.set(t.prefix, out.packed);
          layers.push(layer);
        }
        if (r.lmHead && b === blocks - 1) {
          const { out, layer } = await quantizeLinear(b, 'head', await reader.readFloat32(head.weight));
          linears.set(head.prefix, out.packed);
          layers.push(layer);
        }
        await finishBlock(b, linears, layers);
      }
    } else if (state.finishedBlocks < blocks) {
      // Block by block over the calibration states, stage by stage (true-sequential).
      // The CPU and the f32 pass on a GPU keep the states on the host; the 16-bit pass on a GPU keeps
      // them there (ResidentStates), with the captures feeding the Hessians where they are.
      const resident = r.calibrationDtype !== 'f32';
      model = await Model.open(reader, {
        device: r.device,
        load: 'globals',
        // exact activations: the later stages and blocks run on the quantized linears, and
        // checkpoints must not depend on the int8 path's rounding (test/schedule/golden.test.ts)
        cpuActivations: 'f32',
        dtype: r.calibrationDtype,
        maxSeq: Math.max(seqLen, 2),
        tokenizerFrom: modelDirOf(r.model),
      });
      let hidden: Float32Array;
      const t0 = performance.now();
      if (state.finishedBlocks > 0) {
        hidden = await readHidden(stateDir, fp, state.finishedBlocks, tokens * c.hiddenSize);
        timings.io += (performance.now() - t0) / 1000;
      } else {
        if (r.files === 'self') for (let b = 0; b < blocks; b++) await model.loadBlock(b);
        const ids = await calibrationWindows(model, {
          source: r.files,
          samples: r.samples,
          seqLen,
          seed: r.seed,
          signal: r.signal,
        });
        if (r.files === 'self') for (let b = 0; b < blocks; b++) await model.dropBlock(b);
        hidden = await model.embed(ids);
        timings.forward += (performance.now() - t0) / 1000;
      }
      const shape = {
        samples: r.samples,
        seqLen,
        dim: c.hiddenSize,
        perCall: resident ? residentPerCall : rowsPerCall,
      };
      states = resident
        ? await ResidentStates.create(model, hidden, shape, timings)
        : new HostStates(model, hidden, shape, timings);
      const quantizeHead = async (finalHidden: Float32Array) => {
        const h = c.hiddenSize;
        const norm = (await reader.readFloat32(reader.tensors.norm)).data;
        const H = Hessian.create(h, { device: r.device });
        try {
          const rows = rowsPerCall * seqLen;
          const normed = new Float32Array(rows * h);
          const t0 = performance.now();
          for (let row = 0; row < tokens; row += rows) {
            checkAbort(r.signal);
            const n = Math.min(rows, tokens - row);
            const x = finalHidden.subarray(row * h, (row + n) * h);
            const y = normed.subarray(0, n * h);
            native().opRmsNorm(x, n, h, norm, c.rmsNormEps, y);
            await H.addBatch(y, n);
          }
          timings.hessian += (performance.now() - t0) / 1000;
          return await quantizeLinear(blocks - 1, 'head', await reader.readFloat32(head.weight), H);
        } finally {
          H.free();
        }
      };
      const abort = () => checkAbort(r.signal);
      let lastCommit = performance.now();
      let lastCommitCost = 0;
      for (let b = state.finishedBlocks; b < blocks; b++) {
        checkAbort(r.signal);
        let t = performance.now();
        const weights = await model.readBlockWeights(b);
        await model.setBlockWeights(b, weights);
        timings.io += (performance.now() - t) / 1000;
        const linears = new Map<string, QuantizedWeights>();
        const layers: LayerReport[] = [];
        const stages = trueSequential ? STAGES.map((s) => [s]) : [STAGES];
        for (const group of stages) {
          // One pass over the calibration states collects the inputs of this group's stages.
          const hessians = new Map<CapturePointName, Hessian>();
          for (const s of group)
            hessians.set(s.point, Hessian.create(linearDims(c, s.linears[0]!).K, { device: r.device }));
          try {
            await states.pass(b, hessians, group[group.length - 1]!.point, abort);
            for (const s of group) {
              for (const name of s.linears) {
                checkAbort(r.signal);
                const { K, N } = linearDims(c, name);
                const dense = weights[name] as { dtype: 'f32' | 'f16' | 'bf16'; data: Float32Array | Uint16Array };
                const W = new Tensor(dense.dtype, [N, K], dense.data as never).toFloat32();
                const { out, layer } = await quantizeLinear(b, name, W, hessians.get(s.point)!);
                // Into the block at once: the later stages run on the quantized linear.
                t = performance.now();
                const run = out.forBlock ?? out.packed;
                const bias = weights[name].bias;
                await model.setLinear(b, name, isSpqrWeights(run) ? { ...run, bias } : { packed: run, bias });
                timings.io += (performance.now() - t) / 1000;
                linears.set(reader.tensors.blocks[b]![name].prefix, out.packed);
                layers.push(layer);
              }
            }
          } finally {
            for (const h of hessians.values()) h.free();
          }
        }
        // The quantized block's outputs are the next block's inputs.
        await states.pass(b, new Map(), undefined, abort);
        const last = b === blocks - 1;
        // Resident states are saved for resume when the work since the last save outweighs 4× what
        // saving took (bounds that I/O to ~20% of the run); host states after every block.
        const commit = !resident || last || performance.now() - lastCommit >= 4 * lastCommitCost;
        const saving = performance.now();
        const after = (commit && !last) || (r.lmHead && last) ? await states.read() : undefined;
        if (r.lmHead && last) {
          // The last stage, as GPTQModel runs it: lm_head on the final norm's outputs of the quantized blocks.
          const { out, layer } = await quantizeHead(after!);
          linears.set(head.prefix, out.packed);
          layers.push(layer);
        }
        t = performance.now();
        await model.dropBlock(b);
        await finishBlock(b, linears, layers, last ? undefined : after, commit);
        timings.io += (performance.now() - t) / 1000;
        if (commit) {
          lastCommitCost = performance.now() - saving;
          lastCommit = performance.now();
        }
      }
    }

    // Record the finished directory's identity before renaming it into place: a run stopped right
    // after the rename then knows the checkpoint is complete.
    const out = await writer.finish(async (work) => {
      const st = await stat(work);
      const files: Record<string, number> = {};
      for (const name of await listDir(work)) files[name] = (await stat(join(work, name))).size;
      state = { ...state, publishing: { work, dev: st.dev, ino: st.ino, files } };
      await writeState(stateDir, state);
    });
    writer = undefined;
    // The state (with its record of the published output) goes last, in one step: a kill before
    // that resumes to "already complete", a kill after it leaves only an orphan and the lock.
    await pruneState(stateDir, null);
    await clearState(stateDir);
    return { ...summaryOf(state.layers, out, resumedBlocks), packed: kept };
  } catch (err) {
    await writer?.abort().catch(() => undefined);
    throw err;
  } finally {
    states?.free();
    // Model.close closes the reader too; close it here when no model was opened.
    if (model) await model.close();
    else await reader.close();
  }
}

async function readAllBlocks(dir: string, fp: string, blocks: number): Promise<Map<string, QuantizedWeights>> {
  const out = new Map<string, QuantizedWeights>();
  for (let b = 0; b < blocks; b++) for (const [prefix, w] of await readBlock(dir, fp, b)) out.set(prefix, w);
  return out;
}

function modelDirOf(path: string): string | undefined {
  try {
    return statSync(path).isDirectory() &&
      (existsSync(`${path}/tokenizer.model`) || existsSync(`${path}/tokenizer.json`))
      ? path
      : undefined;
  } catch {
    return undefined;
  }
}

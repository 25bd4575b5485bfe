/**
 * The one place that loads the native addon. Everything else imports `native()` from here and gets
 * a typed object whose functions throw (or reject with) LowbitError.
 *
 * Candidates, in this order: the source build that node-gyp-build finds (build/Release), the committed
 * prebuilt (prebuilds/<platform>-<arch>/lowbit.napi.node); or only $LOWBIT_ADDON when it is set.
 * If none loads, one error lists every candidate's cause and the fixes.
 */
import { createRequire } from 'node:module';
import { existsSync, readFileSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { LowbitError, isLowbitErrorCode } from './errors.js';
import { glibcNeeded, glibcRuntime, readVersionNeeds } from './elf.js';
import type { LinearWeights, PackedWeights, SpqrLinearWeights } from './weights/types.js';

const require = createRequire(import.meta.url);

export type { PackedWeights } from './weights/types.js';

/** A filled buffer for streaming-read timings (streamReader). */
export interface StreamReaderHandle {
  readonly bytes: number;
}

/** A repacked CPU GPTQ weight (cpuGptqPrepare); `bytes` is what one product reads. */
export interface CpuGptqHandle {
  readonly N: number;
  readonly K: number;
  readonly bits: number;
  readonly bytes: number;
}

export interface BuildInfo {
  sourceHash: string;
  buildSystem: 'cmake' | 'node-gyp' | string;
  cuda: boolean;
  /** the CUDA architectures compiled in ("80-real 86-real 89-real 90"; "" without CUDA; absent in older builds) */
  cudaArchs?: string;
  simd: 'scalar' | 'avx2' | 'avx512';
  activeSimd: 'scalar' | 'avx2' | 'avx512';
  threads: number;
  hardwareThreads: number;
}

export interface NativeCudaDevice {
  index: number;
  name: string;
  computeCapability: string;
  multiprocessors: number;
  totalMemory: number;
}

/** Opaque handle of a native Hessian accumulator (native/binding/gptq.cpp). */
export interface NativeHessian {
  readonly K: number;
  /** -1: host memory; else the CUDA device holding H */
  readonly device: number;
}

export interface NativeGptqOptions {
  bits: number;
  /** -1: per output channel */
  groupSize: number;
  sym?: boolean;
  mse?: boolean;
  actOrder?: boolean;
  staticGroups?: boolean;
  dampPercent?: number;
  maxDampRaises?: number;
  blockSize?: number;
  /** 1 (default): "gptq" v1 qzeros (the grid then never uses a zero point of 0); 0: "gptq_v2" */
  zeroOffset?: 0 | 1;
  /** -1 (default): the CPU; else the CUDA device that runs the factorization and the sweep */
  device?: number;
}

export interface NativeGptqResult {
  /** [N * K] codes, original column order */
  q: Uint8Array;
  /** [groups * N] fp16-exact scales */
  scales: Float32Array;
  /** [groups * N] integer zero points */
  zeros: Int32Array;
  gIdx: Int32Array;
  groups: number;
  qweight: Int32Array;
  qzeros: Int32Array;
  scalesF16: Uint16Array;
  zeroOffset: 0 | 1;
  /** lambda added to diag(H), and the damp_percent it came from (after any raises) */
  damp: number;
  dampPercent: number;
  dampRaises: number;
  deadInputs: number;
  /** 1/2 sum (w - q)^2 / Hinv_ii^2: mean over tokens of ||(W - Q) x||^2 under the dampened H */
  loss: number;
  warnings: string[];
}

// --- forward pass types (native/binding/model.cpp, native/core/model/backend.hpp)

/** The numbers the native forward pass needs; src/model builds them from a LlamaConfig. */
/** The activations a forward pass computes in (native/core/model/backend.hpp says what stays f32). */
export type ModelDtype = 'f32' | 'f16' | 'bf16';

export interface NativeModelConfig {
  dim: number;
  hidden: number;
  layers: number;
  heads: number;
  kvHeads: number;
  headDim: number;
  vocab: number;
  /** longest sequence a call or KV cache may hold */
  maxSeq: number;
  normEps: number;
  /** headDim/2 rotary frequencies with rope scaling applied (f32, as transformers computes them) */
  invFreq: Float32Array;
  /** multiplies cos and sin (transformers' attention_scaling; 1 unless YaRN) */
  ropeScale?: number;
  tieEmbeddings: boolean;
}

/** A dense [N, K] matrix in its stored dtype (f16/bf16 as 16-bit patterns). */
export interface NativeDense {
  dtype: 'f32' | 'f16' | 'bf16';
  data: Float32Array | Uint16Array;
}

/** One linear layer: dense, packed in the GPTQ layout, or SpQR (tagged); an optional f32 bias [N]. */
export type NativeLinear =
  | (NativeDense & { packed?: undefined; format?: undefined; bias?: Float32Array })
  | { packed: PackedWeights; format?: undefined; bias?: Float32Array }
  | (SpqrLinearWeights & { packed?: undefined; bias?: Float32Array });

export type NativeLinearName = 'q' | 'k' | 'v' | 'o' | 'gate' | 'up' | 'down';
/** Inputs of a block's linears: q/k/v share one, gate/up share one. */
export type CapturePointName = 'qkv' | 'o' | 'gateUp' | 'down';

export interface NativeBlockWeights extends Record<NativeLinearName, NativeLinear> {
  attnNorm: Float32Array;
  mlpNorm: Float32Array;
}

/**
 * The native model (a class, so its methods reject with plain coded Errors: src/model/ wraps them).
 * Calls on one model run one at a time, in order, on worker threads. Weights are copied into native
 * memory (reported to V8); the typed arrays passed in may be dropped once a call settles.
 */
/**
 * The precision of the activations inside the CPU's packed GPTQ (2/3/4-bit) products: 'int8'
 * quantizes each row per 128-input segment for integer dot products on a repacked layout (kernel
 * gptq-int8: fast; per output |Δy| ≤ ‖x‖∞ · ‖w_n‖₁ / 254), 'f32' keeps exact f32 activations
 * (gptq-packed). Dense weights, 8-bit GPTQ and CUDA ignore it.
 */
export type CpuActivations = 'int8' | 'f32';

export interface NativeModel {
  readonly device: number;
  /** what the forward pass computes in: 'f32', or 'f16' / 'bf16' activations (CUDA) */
  readonly dtype: ModelDtype;
  setGlobals(globals: { embed: NativeDense; finalNorm: Float32Array; head?: NativeLinear }): Promise<void>;
  setBlock(block: number, weights: NativeBlockWeights): Promise<void>;
  setLinear(block: number, name: NativeLinearName, weights: NativeLinear): Promise<void>;
  dropBlock(block: number): Promise<void>;
  /** bytes of weights held natively (as last reported) */
  weightBytes(): number;
  /** out [n*dim] = embedding rows of ids [n] */
  embed(ids: Int32Array, out: Float32Array): Promise<void>;
  /** hidden [batch*seq*dim] is updated in place (unchanged with stopAfter); captured inputs come back [batch*seq, cols] */
  runBlock(
    block: number,
    hidden: Float32Array,
    batch: number,
    seq: number,
    options?: { capture?: CapturePointName[]; stopAfter?: CapturePointName },
  ): Promise<Partial<Record<CapturePointName, Float32Array>>>;
  /** out [rows*vocab] = lm_head(norm(hidden)) */
  head(hidden: Float32Array, rows: number, out: Float32Array): Promise<void>;
  logits(ids: Int32Array, batch: number, seq: number, out: Float32Array): Promise<void>;
  /** out [batch*(seq-1)]: NLL of each next token */
  nll(ids: Int32Array, batch: number, seq: number, out: Float32Array): Promise<void>;
  createSequence(capacity: number): Promise<number>;
  freeSequence(sequence: number): void;
  /** bytes of the KV caches of sequences not yet freed (reported to V8 as external memory) */
  cacheBytes(): number;
  /** appends ids to the sequence's KV cache; out [vocab] = logits of the last one; resolves with the new length */
  decode(sequence: number, ids: Int32Array, out: Float32Array): Promise<number>;
  /** one token for each of several distinct sequences; out [B*vocab]; resolves with the new lengths */
  decodeBatch(sequences: Int32Array, ids: Int32Array, out: Float32Array): Promise<Int32Array>;
  /**
   * `steps` greedy steps chained natively (on the GPU: chosen and fed on the device): out [steps*B],
   * row s the tokens chosen after step s; resolves with the new lengths
   */
  decodeGreedy(sequences: Int32Array, ids: Int32Array, steps: number, out: Int32Array): Promise<Int32Array>;
  /** the KV cache memory: the paged pool's counts (16-bit CUDA), or paged false */
  kvCache(): KvCacheInfo;
  close(): void;
  /** calibration hidden states [rows*dim] copied where the model computes (GPU memory on CUDA); resolves with their id */
  createStates(hidden: Float32Array, rows: number): Promise<number>;
  /** out [rows*dim] = rows [row0, row0+rows) of the states */
  readStates(states: number, row0: number, rows: number, out: Float32Array): Promise<void>;
  /** block over rows [row0, row0+batch*seq) of the states, in place (unchanged with stopAfter); each capture folded into its Hessian where it is; resolves with the seconds spent in the Hessians */
  runBlockStates(
    states: number,
    block: number,
    row0: number,
    batch: number,
    seq: number,
    options?: { hessians?: Partial<Record<CapturePointName, NativeHessian>>; stopAfter?: CapturePointName },
  ): Promise<number>;
  freeStates(states: number): void;
  /** device memory of resident states of `rows` rows (0 where they stay on the host) */
  statesDeviceBytes(rows: number): number;
}

/**
 * The KV cache memory of a model. The 16-bit CUDA pass keeps every session's keys and values in one
 * pool of pages of `pageTokens` tokens (every layer's K and V): a session takes pages as it grows
 * and returns them when closed; a step that needs a page when the pool is at `limitPages` fails with
 * E_KV_FULL. The CPU and the f32 CUDA pass give each session a contiguous cache for its whole
 * capacity at createSession (paged false, counts 0).
 */
export interface KvCacheInfo {
  paged: boolean;
  pageTokens: number;
  /** device bytes of one page */
  pageBytes: number;
  /** pages allocated so far (held by sessions or free) */
  pagesTotal: number;
  /** of those, not held by a session */
  pagesFree: number;
  /** the most pages the pool may hold (0: as many as device memory allows, keeping 1 GiB free) */
  limitPages: number;
}

/**
 * One linear weight turned once into a device's operator (native/core/weights/linear.hpp): the
 * device may have repacked it into a layout of its own; every product reuses it.
 */
export interface NativePreparedLinear {
  /** memory held for the weight (host for the CPU, the GPU's for CUDA); 0 after close() */
  readonly bytes: number;
  /** the kernel table entry that runs it, e.g. 'gptq-packed' */
  readonly kernel: string;
  readonly device: number;
  /** the dtype of x and out: Float32Array for 'f32', Uint16Array bit patterns for 'f16'/'bf16' */
  readonly activations: 'f32' | 'f16' | 'bf16';
  readonly K: number;
  readonly N: number;
  /** Y [M*N] = x [M*K] · Wᵀ + bias, off the event loop; resolves with out (made when not given) */
  matmul<T extends Float32Array | Uint16Array>(x: T, M: number, out?: T): Promise<T>;
  /** the same, blocking this thread */
  matmulSync<T extends Float32Array | Uint16Array>(x: T, M: number, out?: T): T;
  /** frees the weight now; later calls throw E_CLOSED */
  close(): void;
}

/** One row of the addon's weight-format table (native/core/weights/format.hpp). */
export interface NativeWeightFormat {
  name: string;
  packUnits?: { bits: number; values: number; words: number }[];
  /** SpQR: its code widths */
  bits?: number[];
}

/** The addon's functions. Shapes are checked in src/ first, and again natively. */
export interface Addon {
  // --- build and machine facts (native/binding/info.cpp)
  buildInfo(): BuildInfo;
  setThreads(threads: number): number;
  forceSimd(level: 'scalar' | 'avx2' | 'avx512' | 'auto'): string;
  cudaDevices(): { devices: NativeCudaDevice[]; reason: string };

  // --- quantization, packing, packed products (native/binding/quant.cpp)
  rtnQuantize(
    W: Float32Array,
    N: number,
    K: number,
    options: { bits: number; groupSize: number; sym?: boolean; mse?: boolean; minZero?: 0 | 1; packZeroOffset?: 0 | 1 },
  ): Promise<{
    q: Uint8Array;
    scales: Float32Array;
    zeros: Int32Array;
    groups: number;
    /** with packZeroOffset: the result packed in the GPTQ layout (qzeros storing zero - packZeroOffset) */
    qweight?: Int32Array;
    qzeros?: Int32Array;
    scalesF16?: Uint16Array;
  }>;
  packQweight(q: Uint8Array, N: number, K: number, bits: number): Int32Array;
  unpackQweight(qweight: Int32Array, N: number, K: number, bits: number): Uint8Array;
  packQzeros(zeros: Int32Array, G: number, N: number, bits: number, zeroOffset: number): Int32Array;
  unpackQzeros(qzeros: Int32Array, G: number, N: number, bits: number, zeroOffset: number): Int32Array;
  /** device: -1 (or omitted) for the CPU, else a CUDA device index */
  packedGemm(X: Float32Array, M: number, W: PackedWeights, Y: Float32Array, device?: number): Promise<void>;
  packedGemmSync(X: Float32Array, M: number, W: PackedWeights, Y: Float32Array, device?: number): void;
  dequantize(W: PackedWeights): Float32Array;
  denseGemm(X: Float32Array, M: number, W: Float32Array, N: number, K: number, Y: Float32Array): Promise<void>;
  convert(
    src: Uint8Array,
    from: 'f32' | 'f16' | 'bf16',
    dst: Uint8Array,
    to: 'f32' | 'f16' | 'bf16',
    count: number,
  ): void;

  // --- repacked CPU GPTQ operator (native/binding/cpu_gptq.cpp; native/core/cpu_gptq/repack.hpp)
  /** Repacks 2/3/4-bit GPTQ weights once into the CPU layout (int8 dot-product kernels). */
  cpuGptqPrepare(W: PackedWeights): CpuGptqHandle;
  /** A deep copy of a prepared weight in fresh memory (benchmarks rotate copies to read from DRAM). */
  cpuGptqCopy(handle: CpuGptqHandle): CpuGptqHandle;
  /**
   * Software prefetch of the repacked int8 kernels, process-wide: `near` KiB of each panel's stream
   * ahead into L1, `far` KiB into L2, the scales and zero points `scales` segments ahead (0: off;
   * each in [0, 64]; `scales` unchanged when omitted). For benchmarks comparing settings; returns
   * the previous one.
   */
  cpuGptqSetPrefetch(near: number, far: number, scales?: number): { near: number; far: number; scales: number };
  /**
   * Y = X · Wᵀ on a prepared handle; activations quantized to int8 per 128-input segment unless
   * `exact` (f32). Returns the kernel family that ran: 'scalar' | 'avx2' | 'avx2-vnni' | 'avx512' | 'avx512-vnni'.
   */
  cpuGptqGemmSync(handle: CpuGptqHandle, X: Float32Array, M: number, Y: Float32Array, exact?: boolean): string;
  /** The SIMD level the last packedGemm call ran at (tests: forcing a level really changes the path). */
  lastPackedGemmSimd(): 'scalar' | 'avx2' | 'avx512';
  /**
   * Products run by the CPU's gptq-int8 linears (spqrProducts: spqr-int8) on any thread since the
   * addon loaded, and the kernel family the latest one ran: tests check that a forward pass really
   * took the int8 path.
   */
  cpuGptqInt8Stats(): { products: number; lastKernel: string; spqrProducts: number; spqrLastKernel: string };
  /** Median streaming-read bandwidth (bytes/s) over `runs` passes of `bytes` by `threads` threads. */
  streamReadBandwidth(bytes: number, threads: number, runs: number): number;
  /** A buffer of `bytes` (in [4096, 2^36]) allocated and filled once, to time slices of. */
  streamReader(bytes: number): StreamReaderHandle;
  /** Seconds of one streaming read of [offset, offset + bytes) (offset a multiple of 64) by `threads` threads. */
  streamReadSeconds(reader: StreamReaderHandle, offset: number, bytes: number, threads: number): number;

  // --- forward pass (native/binding/model.cpp)
  /** A Llama-family model on one device (-1: CPU); see NativeModel and docs/ARCHITECTURE.md "Forward pass". */
  NativeModel: new (
    config: NativeModelConfig,
    device: number,
    options?: { cpuActivations?: CpuActivations; dtype?: ModelDtype; kvCacheTokens?: number },
  ) => NativeModel;
  /** CPU ops of the forward pass, exposed for tests against float64 references (sync, small inputs). */
  opRmsNorm(x: Float32Array, rows: number, dim: number, weight: Float32Array, eps: number, out: Float32Array): void;
  /** in place; row r is at position p0 + r */
  opRope(
    x: Float32Array,
    rows: number,
    heads: number,
    headDim: number,
    p0: number,
    invFreq: Float32Array,
    scale: number,
  ): void;
  /** causal attention of n positions (0..n-1) */
  opAttention(
    q: Float32Array,
    k: Float32Array,
    v: Float32Array,
    n: number,
    heads: number,
    kvHeads: number,
    headDim: number,
    out: Float32Array,
  ): void;
  opSwiglu(gate: Float32Array, up: Float32Array, out: Float32Array): void;
  opLinear(
    x: Float32Array,
    M: number,
    weight: NativeDense,
    N: number,
    K: number,
    bias: Float32Array | null,
    out: Float32Array,
  ): void;
  opNll(logits: Float32Array, rows: number, vocab: number, targets: Int32Array, out: Float32Array): void;

  // --- weight formats and prepared linears (native/binding/linear.cpp)
  /** the native weight-format table, for holding src/weights/formats.ts against it */
  weightFormats(): NativeWeightFormat[];
  /** each device's kernel table, in the order tried */
  linearKernels(): { cpu: string[]; cuda: string[] };
  /**
   * prepares one linear on a device (-1 or omitted: CPU); `kernel` forces a table entry by name;
   * `activations` 'f16'/'bf16' (CUDA kernels that take them: gptq-tc) makes x and out Uint16Arrays
   */
  linearCreate(
    weights: LinearWeights,
    options?: {
      device?: number;
      kernel?: string;
      activations?: 'f32' | 'f16' | 'bf16';
      cpuActivations?: CpuActivations;
    },
  ): NativePreparedLinear;

  // --- GPTQ (native/binding/gptq.cpp)
  /** A K x K running-mean Hessian H = (2/n) sum x x^T, held natively (fp32): on the host (device -1, default) or a CUDA device. */
  hessianCreate(K: number, device?: number): NativeHessian;
  /** Folds `rows` tokens (X: [rows, K] row-major) into H; resolves with the tokens seen so far. */
  hessianAddBatch(handle: NativeHessian, X: Float32Array, rows: number): Promise<number>;
  hessianSamples(handle: NativeHessian): number;
  /** A copy of H, [K * K] row-major. */
  hessianRead(handle: NativeHessian): Float32Array;
  /** Frees the K x K buffer now (later use rejects with E_CLOSED). */
  hessianFree(handle: NativeHessian): void;
  gptqQuantize(
    W: Float32Array,
    N: number,
    K: number,
    H: Float32Array | NativeHessian,
    options: NativeGptqOptions,
  ): Promise<NativeGptqResult>;
}

/** The package root (holds package.json, build/, prebuilds/), from src/ or dist/. */
export function packageRoot(): string {
  let dir = dirname(fileURLToPath(import.meta.url));
  for (let i = 0; i < 4; i++) {
    const pkg = join(dir, 'package.json');
    if (existsSync(pkg) && (JSON.parse(readFileSync(pkg, 'utf8')) as { name?: string }).name === 'lowbit') return dir;
    dir = dirname(dir);
  }
  throw new LowbitError('E_ADDON_LOAD', `cannot find lowbit's package.json above ${fileURLToPath(import.meta.url)}`);
}

/** Path of the committed prebuilt addon for this platform. */
export function prebuiltPath(root = packageRoot()): string {
  return join(root, 'prebuilds', `${process.platform}-${process.arch}`, 'lowbit.napi.node');
}

/** Re-throws a native error (a plain Error with `code`) as a LowbitError. */
export function toLowbitError(err: unknown): unknown {
  if (err instanceof LowbitError) return err;
  if (err instanceof Error) {
    const code = (err as Error & { code?: unknown }).code;
    if (isLowbitErrorCode(code)) return new LowbitError(code, err.message, {}, { cause: err });
  }
  return err;
}

function wrapFunction<F extends (...args: never[]) => unknown>(fn: F): F {
  return function (this: unknown, ...args: never[]) {
    let result: unknown;
    try {
      result = fn.apply(this, args);
    } catch (err) {
      throw toLowbitError(err);
    }
    if (result instanceof Promise) return result.catch((err: unknown) => Promise.reject(toLowbitError(err)));
    return result;
  } as F;
}

/** Wraps plain functions (lowercase names) so their errors become LowbitErrors; classes pass through. */
function wrapAddon(raw: Record<string, unknown>): Addon {
  const out: Record<string, unknown> = {};
  for (const [name, value] of Object.entries(raw)) {
    out[name] =
      typeof value === 'function' && /^[a-z]/.test(name) ? wrapFunction(value as (...a: never[]) => unknown) : value;
  }
  return out as unknown as Addon;
}

function candidates(root: string): string[] {
  // An explicit LOWBIT_ADDON is the only candidate: a wrong path is an error, never a silent fallback.
  if (process.env.LOWBIT_ADDON) return [resolve(process.env.LOWBIT_ADDON)];
  const list: string[] = [];
  try {
    const nodeGypBuild = require('node-gyp-build') as { path(dir: string): string };
    list.push(nodeGypBuild.path(root));
  } catch {
    // node-gyp-build found nothing it accepts; the explicit prebuilt path below still gets tried
  }
  list.push(prebuiltPath(root));
  return [...new Set(list)];
}

let loaded: { addon: Addon; path: string } | undefined;

/** Loads an addon from an explicit path (tests use this to check the committed prebuilt). */
export function loadAddonFrom(path: string): Addon {
  return wrapAddon(require(path) as Record<string, unknown>);
}

/**
 * Loads the first candidate that loads; if none does, throws one E_ADDON_LOAD error that lists every
 * candidate's cause and the fixes.
 */
export function loadFirstAddon(paths: readonly string[]): { addon: Addon; path: string } {
  const failures: string[] = [];
  for (const path of paths) {
    if (!existsSync(path)) {
      failures.push(`  - ${path}: not found`);
      continue;
    }
    try {
      return { addon: loadAddonFrom(path), path };
    } catch (err) {
      failures.push(`  - ${path}: ${(err as Error).message.split('\n')[0]}${glibcMismatch(path, err)}`);
    }
  }
  throw new LowbitError(
    'E_ADDON_LOAD',
    [
      `lowbit could not load its native addon (platform ${process.platform}-${process.arch}, Node ${process.version}, N-API ${process.versions.napi}).`,
      'Tried:',
      ...failures,
      'Fixes:',
      ...(process.env.LOWBIT_ADDON
        ? ['  - LOWBIT_ADDON is set: point it at a lowbit.node that exists and loads, or unset it to use the prebuilt']
        : []),
      `  - the prebuilt addon is for linux-x64 with glibc 2.28 or newer: reinstall lowbit if prebuilds/${process.platform}-${process.arch}/ is missing`,
      '  - or build from source: in a clone of lowbit, npm ci && npm run build:native (needs cmake and a C++17 compiler; CUDA is optional),',
      "    then set LOWBIT_ADDON to the clone's build/Release/lowbit.node",
    ].join('\n'),
    { failures },
  );
}

/**
 * When a binary failed to load for want of a newer glibc ("version `GLIBC_2.35' not found"), the
 * glibc this system has and the one the binary needs (its ELF version needs), as a sentence.
 */
export function glibcMismatch(path: string, err: unknown): string {
  if (!/GLIBC_[0-9.]+'? not found/.test(String((err as Error)?.message))) return '';
  let needed: string | undefined;
  try {
    needed = glibcNeeded(readVersionNeeds(path));
  } catch {
    // unreadable: say what is known
  }
  return ` (this system has glibc ${glibcRuntime() ?? 'unknown'}; this binary needs glibc ${needed ?? 'newer'} or newer)`;
}

/** The loaded addon (loaded on first use). */
export function native(): Addon {
  loaded ??= loadFirstAddon(candidates(packageRoot()));
  return loaded.addon;
}

/** The path the addon was loaded from (loads it if needed). */
export function addonPath(): string {
  native();
  return loaded!.path;
}

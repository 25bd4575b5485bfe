/**
 * The one place that loads the native addon. Everything else imports `native()` from here and gets
 * a typed object whose functions throw (or reject with) LowbitError.
 *
 * Candidates, in this order: $LOWBIT_ADDON (an explicit path), the source build that node-gyp-build
 * finds (build/Release), the committed prebuilt (prebuilds/<platform>-<arch>/lowbit.napi.node).
 * If none loads, one error lists every candidate's cause and the fixes.
 */
import { createRequire } from 'node:module';
import { existsSync, readFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { LowbitError, isLowbitErrorCode } from './errors.js';

const require = createRequire(import.meta.url);

/** A packed linear weight in the GPTQ layout, as the kernels take it (see docs/FORMATS.md). */
export interface PackedWeights {
  bits: 2 | 3 | 4 | 8;
  /** input features (logical, before padding) */
  K: number;
  /** output features */
  N: number;
  /** columns per group along K (K when per channel) */
  groupSize: number;
  /** rows of scales and qzeros */
  groups: number;
  /** stored zero = zero - zeroOffset: 1 for "gptq" (v1), 0 for "gptq_v2" */
  zeroOffset: 0 | 1;
  qweight: Int32Array;
  qzeros: Int32Array;
  /** fp16 bit patterns */
  scales: Uint16Array;
  gIdx?: Int32Array;
}

export interface BuildInfo {
  sourceHash: string;
  buildSystem: 'cmake' | 'node-gyp' | string;
  cuda: boolean;
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
    options: { bits: number; groupSize: number; sym?: boolean; mse?: boolean },
  ): Promise<{ q: Uint8Array; scales: Float32Array; zeros: Int32Array; groups: number }>;
  packQweight(q: Uint8Array, N: number, K: number, bits: number): Int32Array;
  unpackQweight(qweight: Int32Array, N: number, K: number, bits: number): Uint8Array;
  packQzeros(zeros: Int32Array, G: number, N: number, bits: number, zeroOffset: number): Int32Array;
  unpackQzeros(qzeros: Int32Array, G: number, N: number, bits: number, zeroOffset: number): Int32Array;
  /** device: -1 (or omitted) for the CPU, else a CUDA device index */
  packedGemm(X: Float32Array, M: number, W: PackedWeights, Y: Float32Array, device?: number): Promise<void>;
  packedGemmSync(X: Float32Array, M: number, W: PackedWeights, Y: Float32Array, device?: number): void;
  dequantize(W: PackedWeights): Float32Array;
  denseGemm(X: Float32Array, M: number, W: Float32Array, N: number, K: number, Y: Float32Array): Promise<void>;
  convert(src: Uint8Array, from: 'f32' | 'f16' | 'bf16', dst: Uint8Array, to: 'f32' | 'f16' | 'bf16', count: number): void;

  // --- forward pass (native/binding/model.cpp)

  // --- GPTQ (native/binding/gptq.cpp)
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
    out[name] = typeof value === 'function' && /^[a-z]/.test(name) ? wrapFunction(value as (...a: never[]) => unknown) : value;
  }
  return out as unknown as Addon;
}

function candidates(root: string): string[] {
  const list: string[] = [];
  if (process.env.LOWBIT_ADDON) list.push(process.env.LOWBIT_ADDON);
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
      failures.push(`  - ${path}: ${(err as Error).message.split('\n')[0]}`);
    }
  }
  throw new LowbitError(
    'E_ADDON_LOAD',
    [
      `lowbit could not load its native addon (platform ${process.platform}-${process.arch}, Node ${process.version}, N-API ${process.versions.napi}).`,
      'Tried:',
      ...failures,
      'Fixes:',
      `  - reinstall lowbit so that prebuilds/${process.platform}-${process.arch}/ is present (prebuilt addons ship for linux-x64, glibc)`,
      '  - or build from source in the package directory: npm run build:native (needs cmake and a C++17 compiler; CUDA is optional)',
      '  - or point LOWBIT_ADDON at a lowbit.node you built',
    ].join('\n'),
    { failures },
  );
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

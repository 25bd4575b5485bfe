/**
 * The shared real data (../shared/data relative to the project root) and a minimal safetensors
 * reader for tests: 8 bytes little-endian header length, the JSON header, then the tensor bytes.
 * Independent of src/formats on purpose, so kernel tests do not depend on the reader under test.
 */
import { existsSync, readFileSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { bf16Value, f16Value } from './reference.js';

export const projectRoot = resolve(dirname(fileURLToPath(import.meta.url)), '../..');
export const dataDir = resolve(projectRoot, '../shared/data');

/**
 * True when every named shared data file exists. When one is missing: throws under CI=true (the data
 * must be there), otherwise warns where it should be and returns false (the caller skips).
 */
export function haveData(...names: string[]): boolean {
  const missing = names.map((n) => join(dataDir, n)).filter((p) => !existsSync(p));
  if (missing.length === 0) return true;
  const message = `shared test data missing: ${missing.join(', ')} (put the shared data set at ../shared/data relative to the project root; see its README.md)`;
  if (process.env.CI === 'true') throw new Error(message);
  console.warn(`skipping: ${message}`);
  return false;
}

/** The path of a shared data file when it exists, else undefined (after haveData's CI rule). */
export function sharedData(name: string): string | undefined {
  return haveData(name) ? join(dataDir, name) : undefined;
}

export interface TestTensor {
  dtype: 'F32' | 'F16' | 'BF16';
  shape: number[];
  /** the values as f32 (exact for all three dtypes) */
  data: Float32Array;
}

/** Reads every floating-point tensor of a safetensors file. */
export function readSafetensors(path: string): Map<string, TestTensor> {
  const bytes = readFileSync(path);
  const headerLength = Number(bytes.readBigUInt64LE(0));
  const header = JSON.parse(bytes.subarray(8, 8 + headerLength).toString('utf8')) as Record<
    string,
    { dtype: string; shape: number[]; data_offsets: [number, number] }
  >;
  const base = 8 + headerLength;
  const out = new Map<string, TestTensor>();
  for (const [name, info] of Object.entries(header)) {
    if (name === '__metadata__') continue;
    const [begin, end] = info.data_offsets;
    const raw = bytes.subarray(base + begin, base + end);
    const count = info.shape.reduce((a, b) => a * b, 1);
    const data = new Float32Array(count);
    if (info.dtype === 'F32') {
      for (let i = 0; i < count; i++) data[i] = raw.readFloatLE(4 * i);
    } else if (info.dtype === 'F16' || info.dtype === 'BF16') {
      const decode = info.dtype === 'F16' ? f16Value : bf16Value;
      for (let i = 0; i < count; i++) data[i] = decode(raw.readUInt16LE(2 * i));
    } else {
      continue;
    }
    out.set(name, { dtype: info.dtype, shape: info.shape, data });
  }
  return out;
}

/**
 * The real data committed in data/ (and the few extra files of ../shared/data) and a minimal safetensors
 * reader for tests: 8 bytes little-endian header length, the JSON header, then the tensor bytes.
 * Independent of src/formats on purpose, so kernel tests do not depend on the reader under test.
 */
import { existsSync, readFileSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { bf16Value, f16Value } from './reference.js';

export const projectRoot = resolve(dirname(fileURLToPath(import.meta.url)), '../..');
/** The repository's real data (data/ at the project root; see data/README.md and data/LICENSES.md). */
export const dataDir = resolve(projectRoot, 'data');
/** The shared data set beside the checkout, for the few files that may not be committed (Llama 2's tokenizer). */
export const sharedDataDir = resolve(projectRoot, '../shared/data');

/**
 * The path of a file in data/. The data are committed, so a missing file is a broken checkout: it
 * throws (never a silent skip).
 */
export function dataFile(name: string): string {
  const path = join(dataDir, name);
  if (!existsSync(path))
    throw new Error(`test data missing: ${path} (data/ is part of the repository: the checkout is incomplete)`);
  return path;
}

/** Asserts that every named file of data/ exists (throws otherwise, like dataFile); always true. */
export function haveData(...names: string[]): true {
  for (const name of names) dataFile(name);
  return true;
}

/** @deprecated the former name of dataFile (the data were in ../shared/data then). */
export const sharedData = dataFile;

/**
 * The path of a file of ../shared/data that the repository does not hold (its licence keeps it out),
 * or undefined: a test that needs one is skipped with a message outside CI and fails under CI=true.
 */
export function optionalSharedData(name: string): string | undefined {
  const path = join(sharedDataDir, name);
  if (existsSync(path)) return path;
  const message = `${path} is missing (not committed: its licence keeps it out of the repository)`;
  if (process.env.CI === 'true') throw new Error(message);
  console.warn(`skipping: ${message}`);
  return undefined;
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

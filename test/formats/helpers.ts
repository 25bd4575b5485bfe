/**
 * Shared helpers for the model I/O tests: where the real data lives (data/, committed), temporary
 * directories, a seeded PRNG and byte comparison.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { dataFile } from '../helpers/data.js';
import { Rng } from '../helpers/random.js';

export { projectRoot, dataDir } from '../helpers/data.js';

/** The path of a file in data/ (throws when the checkout lacks it). */
export function dataPath(...parts: string[]): string {
  return dataFile(join(...parts));
}

/** A fresh temporary directory, removed by the returned cleanup. */
export function tempDir(prefix = 'lowbit-formats-'): { dir: string; cleanup: () => void } {
  const dir = mkdtempSync(join(tmpdir(), prefix));
  return { dir, cleanup: () => rmSync(dir, { recursive: true, force: true }) };
}

export { randomSeed } from '../helpers/random.js';

/** A seeded uniform [0, 1) source over the shared test PRNG (test/helpers/random.ts). */
export function prng(seed: number): () => number {
  const r = new Rng(seed);
  return () => r.next();
}

/** Whether two typed arrays hold the same bytes (fast, for large tensors). */
export function sameBytes(a: ArrayBufferView, b: ArrayBufferView): boolean {
  return Buffer.from(a.buffer, a.byteOffset, a.byteLength).equals(Buffer.from(b.buffer, b.byteOffset, b.byteLength));
}

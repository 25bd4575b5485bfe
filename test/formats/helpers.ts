/**
 * Shared helpers for the model I/O tests: where the real data lives, and how a test that needs it
 * behaves when it is missing (fails in CI, skips with a message elsewhere).
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { dataDir } from '../helpers/data.js';
import { Rng } from '../helpers/random.js';

export { projectRoot, dataDir, haveData } from '../helpers/data.js';

export function dataPath(...parts: string[]): string {
  return join(dataDir, ...parts);
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

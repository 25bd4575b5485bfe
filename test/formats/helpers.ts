/**
 * Shared helpers for the model I/O tests: where the real data lives, and how a test that needs it
 * behaves when it is missing (fails in CI, skips with a message elsewhere).
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { dataDir } from '../helpers/data.js';

export { projectRoot, dataDir, haveData } from '../helpers/data.js';

export function dataPath(...parts: string[]): string {
  return join(dataDir, ...parts);
}

/** A fresh temporary directory, removed by the returned cleanup. */
export function tempDir(prefix = 'lowbit-formats-'): { dir: string; cleanup: () => void } {
  const dir = mkdtempSync(join(tmpdir(), prefix));
  return { dir, cleanup: () => rmSync(dir, { recursive: true, force: true }) };
}

/** A random seed for a test's PRNG (reported in failure messages). */
export function randomSeed(): number {
  return Math.floor(Math.random() * 2 ** 31);
}

/** mulberry32: a small seeded PRNG giving floats in [0, 1). */
export function prng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/** Whether two typed arrays hold the same bytes (fast, for large tensors). */
export function sameBytes(a: ArrayBufferView, b: ArrayBufferView): boolean {
  return Buffer.from(a.buffer, a.byteOffset, a.byteLength).equals(Buffer.from(b.buffer, b.byteOffset, b.byteLength));
}

/**
 * Shared helpers for the model I/O tests: where the real data lives (data/, committed), temporary
 * directories, a seeded PRNG and byte comparison.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { expect } from 'vitest';
import { linearDims } from '../../src/formats/gptq.js';
import { LINEAR_MODULES, LINEAR_NAMES, type HfModel } from '../../src/formats/hf.js';
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

/**
 * The shapes transformers / GPTQModel allocate for a quantized linear from config.json's dims, which
 * a checkpoint must match to load there: qweight [in / 32 · bits, out], qzeros [ceil(in / group),
 * out / 32 · bits], scales [ceil(in / group), out], g_idx [in], with in and out multiples of 32
 * (their packing floors in // 32) and in a multiple of the group size (vLLM). Catches a writer that
 * packs a K of 172 into a partial unit, as lowbit did before exact padding.
 */
export function expectStandardShapes(
  model: HfModel,
  prefix: string,
  bits: number,
  groupSize: number,
  ctx: string,
): void {
  const name = LINEAR_NAMES.find((n) => prefix.endsWith(LINEAR_MODULES[n]));
  const { K, N } = name ? linearDims(model.config, name) : { K: model.config.hiddenSize, N: model.config.vocabSize }; // lm_head
  const g = groupSize === -1 ? K : groupSize;
  expect(K % 32, `${ctx}: in_features ${K} is a multiple of 32`).toBe(0);
  expect(N % 32, `${ctx}: out_features ${N} is a multiple of 32`).toBe(0);
  if (g <= K) expect(K % g, `${ctx}: in_features ${K} is a multiple of the group size ${g}`).toBe(0);
  const groups = Math.ceil(K / g);
  expect(model.shapeOf(`${prefix}.qweight`), ctx).toEqual([Math.floor(K / 32) * bits, N]);
  expect(model.shapeOf(`${prefix}.qzeros`), ctx).toEqual([groups, Math.floor(N / 32) * bits]);
  expect(model.shapeOf(`${prefix}.scales`), ctx).toEqual([groups, N]);
  expect(model.shapeOf(`${prefix}.g_idx`), ctx).toEqual([K]);
}

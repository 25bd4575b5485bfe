/** Where the shared real data lives, and the rule for tests that need it (fail in CI, skip elsewhere). */
import { existsSync, readFileSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

export const projectRoot = resolve(dirname(fileURLToPath(import.meta.url)), '../..');
export const dataDir = resolve(projectRoot, '../shared/data');

/** Path of a data file, or undefined (after checking CI) when it is missing. */
export function dataPath(name: string): string | undefined {
  const p = join(dataDir, name);
  if (existsSync(p)) return p;
  if (process.env.CI === 'true') throw new Error(`test data ${p} is missing (CI must have ../shared/data; see its README)`);
  console.warn(`skipping: test data ${p} is missing (put the shared data set at ../shared/data relative to the project root)`);
  return undefined;
}

export interface ReferenceStream {
  tokens: number;
  windows: number;
  ppl: number;
  sha256: string;
  first16: number[];
}

export function referenceJson(): { ppl: Record<string, { file: string; sentencepiece: ReferenceStream; tokenizer_json: ReferenceStream }> } | undefined {
  const p = dataPath('reference.json');
  return p ? JSON.parse(readFileSync(p, 'utf8')) : undefined;
}

/**
 * The device the model tests run on: the CPU by default; LOWBIT_TEST_DEVICE=cuda (or cuda:N) runs the
 * same checks against the CUDA backend.
 */
export const testDevice = (process.env.LOWBIT_TEST_DEVICE ?? 'cpu') as 'cpu' | 'cuda' | `cuda:${number}`;

/** Where the shared real data lives, and the rule for tests that need it (fail in CI, skip elsewhere). */
import { readFileSync } from 'node:fs';
import { sharedData } from '../helpers/data.js';

export { projectRoot, dataDir } from '../helpers/data.js';

/** Path of a data file, or undefined (after checking CI) when it is missing. */
export const dataPath = sharedData;

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

/** Where the real data lives (data/, committed) and the reference numbers. */
import { readFileSync } from 'node:fs';
import { dataFile } from '../helpers/data.js';

export { projectRoot, dataDir } from '../helpers/data.js';

/** Path of a file in data/ (throws when the checkout lacks it). */
export const dataPath = dataFile;

export interface ReferenceStream {
  tokens: number;
  windows: number;
  ppl: number;
  sha256: string;
  first16: number[];
}

export function referenceJson(): {
  ppl: Record<string, { file: string; sentencepiece: ReferenceStream; tokenizer_json: ReferenceStream }>;
} {
  return JSON.parse(readFileSync(dataPath('reference.json'), 'utf8'));
}

/**
 * The device the model tests run on: the CPU by default; LOWBIT_TEST_DEVICE=cuda (or cuda:N) runs the
 * same checks against the CUDA backend.
 */
export const testDevice = (process.env.LOWBIT_TEST_DEVICE ?? 'cpu') as 'cpu' | 'cuda' | `cuda:${number}`;

/**
 * The small real model and texts shipped inside the package (data/ at the package root; licences in
 * data/LICENSES.md): Karpathy's stories260K as a Hugging Face directory (fp32, MIT) and the two halves
 * of a TinyStories excerpt (CDLA-Sharing-1.0). `lowbit quantize` with no --model uses them, and the
 * examples run on them, so a fresh install works with nothing else.
 */
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

// src/bundled.ts and dist/bundled.js both sit one level below the package root.
const packageRoot = resolve(dirname(fileURLToPath(import.meta.url)), '..');

export const bundled = {
  /** stories260K (dim 64, 5 layers, vocab 512) as a Hugging Face Llama directory */
  model: join(packageRoot, 'data', 'stories260K-hf'),
  /** calibration text: the first half of the TinyStories excerpt */
  calibrationText: join(packageRoot, 'data', 'tinystories-valid.calib.txt'),
  /** evaluation text: the second half, disjoint from the calibration half */
  evaluationText: join(packageRoot, 'data', 'tinystories-valid.eval.txt'),
} as const;

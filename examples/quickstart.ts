/**
 * lowbit from TypeScript, on the small model shipped with the package: quantize stories260K to 4-bit
 * GPTQ, measure the perplexity of the result on held-out text, and generate from it.
 *
 *   npx tsc -p examples && node examples/dist/quickstart.js   (in a clone; the test suite runs it)
 */
import { mkdtempSync } from 'node:fs';
import { readFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { bundled, devices, generate, openModel, perplexity, quantize } from 'lowbit';

console.log(devices()); // [{ kind: 'cpu', threads: 2, simd: 'avx2' }, ...CUDA GPUs]

// A fresh output folder each run (quantize refuses to overwrite a finished checkpoint).
const out = join(mkdtempSync(join(tmpdir(), 'lowbit-quickstart-')), 'stories260K-gptq-4bit');
const job = quantize({
  model: bundled.model,
  out,
  method: 'gptq',
  bits: 4,
  groupSize: 32,
  calibration: { files: [bundled.calibrationText], samples: 32, seqLen: 512 },
});
job.on('progress', (p) => process.stderr.write(`\rquantizing: ${p.done}/${p.total} linears`));
await job;

const model = await openModel(out, { device: 'auto' });
const { ppl } = await perplexity(model, await readFile(bundled.evaluationText, 'utf8'));
console.log(`\nperplexity of the 4-bit model on the held-out text: ${ppl.toFixed(3)}`);
for await (const piece of generate(model, 'Once upon a time', { maxTokens: 64 })) process.stdout.write(piece);
await model.close();

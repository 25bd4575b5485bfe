/**
 * GPTQ-layout checkpoints through the forward pass: stories260K quantized with RTN (no calibration
 * needed) by lowbit's own pipeline, written to a temporary directory, opened with openModel (every
 * block linear packed, intermediate_size 172 padded to whole groups), run against the float64 reference on the dequantized
 * weights, and scored against fp32.
 */
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, expect, test } from 'vitest';
import { native } from '../../src/native.js';
import { openModel, type Model } from '../../src/model/model.js';
import { perplexity, perplexityIds } from '../../src/model/perplexity.js';
import { quantize } from '../../src/schedule/quantize.js';
import { LINEAR_NAMES } from '../../src/formats/hf.js';
import { dataPath, testDevice } from './data.js';
import { refModelOf } from './stories.js';
import { refLogits } from './reference.js';

const fp32Dir = dataPath('stories260K-hf');
const textFile = dataPath('tinystories-valid.txt');
const tmp = mkdtempSync(join(tmpdir(), 'lowbit-forward-'));
let fp32: Model;
let ids: Int32Array;
let fp32Ppl: number;

beforeAll(async () => {
  fp32 = await openModel(fp32Dir, { device: testDevice });
  ids = perplexityIds(fp32, readFileSync(textFile, 'utf8')).subarray(0, 30 * 512);
  fp32Ppl = (await perplexity(fp32, ids, { batch: 4 })).ppl;
});
afterAll(async () => {
  await fp32?.close();
  rmSync(tmp, { recursive: true, force: true });
});

test.each([
  [8, -1, 0.003],
  [4, 32, 0.15],
  // group 128 is larger than the attention linears' K = 64: one group per channel there
  [4, 128, 0.15],
])('an RTN %i-bit GPTQ checkpoint (group %i) runs packed and lands near fp32', async (bits, groupSize, tolerance) => {
  const out = join(tmp, `rtn${bits}g${groupSize}`);
  await quantize({ model: fp32Dir!, out, method: 'rtn', bits: bits as 4 | 8, groupSize, device: testDevice });
  // exact activations: held to the float64 reference below (the int8 default: cpu-int8.test.ts)
  const model = await openModel(out, { device: testDevice, cpuActivations: 'f32' });
  try {
    const w = await model.readBlockWeights(0);
    for (const name of LINEAR_NAMES) expect(w[name].packed, name).toBeDefined();
    expect(model.weightBytes).toBeLessThan(fp32.weightBytes);
    // the packed model computes what its dequantized weights say
    const ref = await refModelOf(fp32);
    // the checkpoint's MLP is padded to whole groups (intermediate_size 172 -> 192 or 256)
    ref.config.hidden = model.nativeConfig.hidden;
    const addon = native();
    for (let b = 0; b < model.layers; b++) {
      const bw = await model.readBlockWeights(b);
      for (const name of LINEAR_NAMES) ref.blocks[b]!.weights[name] = addon.dequantize(bw[name].packed!);
    }
    const probe = ids.subarray(0, 24);
    const got = await model.logits(probe);
    const want = refLogits(ref, probe);
    let worst = 0;
    for (let i = 0; i < got.length; i++) worst = Math.max(worst, Math.abs(got[i]! - want[i]!));
    expect(worst).toBeLessThanOrEqual(2e-4);
    const { ppl } = await perplexity(model, ids, { batch: 4 });
    expect(Math.abs(Math.log(ppl / fp32Ppl)), `ppl ${ppl} vs fp32 ${fp32Ppl}`).toBeLessThanOrEqual(tolerance);
  } finally {
    await model.close();
  }
});

/**
 * Exact padding (src/formats/padding.ts): stories260K's intermediate_size 172 fits no GPTQ loader
 * but lowbit, so checkpoints store it padded to 192 (group 32) with zero gate/up rows and zero down
 * columns. These tests hold the padded model to the function of the unpadded one:
 *   - fp32: the dense model padded by zeros gives the unpadded logits (catches padding that is not a
 *     no-op through SwiGLU, e.g. down padded along the wrong axis);
 *   - quantized: a checkpoint written by the pipeline (padded) gives the logits of the very packed
 *     linears it was written from, run unpadded in memory (catches a lost or misplaced g_idx, codes
 *     or scales shifted into the wrong channels, padding along the wrong axis). Padded gate/up rows
 *     and padded down columns each mask the other (either alone being zero keeps the function), so
 *     test/formats/gptq.test.ts checks each side is exactly zero on its own;
 *   - the written tensors have the shapes transformers / GPTQModel allocate from config.json.
 */
import { mkdtempSync, readFileSync, rmSync, writeFileSync, mkdirSync, copyFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, test } from 'vitest';
import { HfModel, LINEAR_NAMES } from '../../src/formats/hf.js';
import { padTensor } from '../../src/formats/padding.js';
import { writeSafetensors } from '../../src/formats/safetensors-writer.js';
import { openModel, type Model } from '../../src/model/model.js';
import { perplexityIds } from '../../src/model/perplexity.js';
import { quantize, type QuantizeOptions } from '../../src/schedule/quantize.js';
import type { Tensor } from '../../src/tensor.js';
import type { PackedWeights } from '../../src/native.js';
import { expectStandardShapes } from '../formats/helpers.js';
import { dataPath, testDevice } from './data.js';

const fp32Dir = dataPath('stories260K-hf');
const calib = dataPath('tinystories-valid.calib.txt');
const tmp = mkdtempSync(join(tmpdir(), 'lowbit-padding-'));
let fp32: Model;
let probe: Int32Array;

beforeAll(async () => {
  fp32 = await openModel(fp32Dir, { device: testDevice });
  probe = perplexityIds(fp32, readFileSync(dataPath('tinystories-valid.txt'), 'utf8')).subarray(0, 96);
});
afterAll(async () => {
  await fp32?.close();
  rmSync(tmp, { recursive: true, force: true });
});

/** Largest |a − b| relative to the largest |a| (logits of one model against another's). */
function relativeGap(a: Float32Array, b: Float32Array): number {
  expect(a.length).toBe(b.length);
  let gap = 0;
  let scale = 0;
  for (let i = 0; i < a.length; i++) {
    gap = Math.max(gap, Math.abs(a[i]! - b[i]!));
    scale = Math.max(scale, Math.abs(a[i]!));
  }
  return gap / scale;
}

describe('padded stories260K computes what the unpadded one computes', () => {
  test('fp32: intermediate_size 172 padded to 192 with zero gate/up rows and down columns', async () => {
    const source = await HfModel.open(fp32Dir);
    const dir = join(tmp, 'fp32-padded');
    mkdirSync(dir);
    try {
      const tensors: [string, Tensor][] = [];
      for (const name of source.names) {
        const t = await source.readTensor(name);
        const axis = /(gate|up)_proj\.weight$/.test(name) ? 0 : /down_proj\.weight$/.test(name) ? 1 : -1;
        tensors.push([name, axis < 0 ? t : padTensor(t, axis, 192)]);
      }
      await writeSafetensors(join(dir, 'model.safetensors'), tensors);
      writeFileSync(join(dir, 'config.json'), JSON.stringify({ ...source.config.raw, intermediate_size: 192 }));
      for (const f of ['tokenizer.json', 'tokenizer_config.json']) copyFileSync(join(fp32Dir, f), join(dir, f));
    } finally {
      await source.close();
    }
    const padded = await openModel(dir, { device: testDevice });
    try {
      expect(padded.nativeConfig.hidden).toBe(192);
      const gap = relativeGap(await fp32.logits(probe), await padded.logits(probe));
      // the padded terms are exact zeros; only the order of the real terms' sums may differ
      expect(gap, 'padded fp32 logits vs unpadded').toBeLessThan(1e-5);
    } finally {
      await padded.close();
    }
  });

  const calibration = { files: [calib], samples: 4, seqLen: 64, seed: 3 };
  const configs: [string, Omit<QuantizeOptions, 'model' | 'out'>][] = [
    ['RTN 4-bit g32 v1', { method: 'rtn', bits: 4, groupSize: 32 }],
    [
      'GPTQ 3-bit g32 act-order v2',
      { bits: 3, groupSize: 32, actOrder: true, checkpointFormat: 'gptq_v2', calibration },
    ],
    ['GPTQ 2-bit per channel sym', { bits: 2, groupSize: -1, sym: true, calibration }],
    ['RTN 8-bit g128 (172 → 256)', { method: 'rtn', bits: 8, groupSize: 128 }],
  ];
  test.each(configs)(
    'quantized: %s, the written (padded) checkpoint vs its packed linears unpadded',
    async (label, config) => {
      const out = join(tmp, label.replace(/[^a-z0-9]+/gi, '-'));
      const summary = await quantize({ model: fp32Dir, out, ...config, keepPacked: true, device: testDevice });
      const groupSize = config.groupSize ?? 128;
      const written = await HfModel.open(out);
      try {
        const F = written.config.intermediateSize;
        expect(F, 'intermediate_size in config.json').toBe(groupSize === 128 ? 256 : 192);
        for (const b of written.tensors.blocks)
          for (const name of LINEAR_NAMES)
            expectStandardShapes(written, b[name].prefix, config.bits, groupSize, `${label} ${b[name].prefix}`);
      } finally {
        await written.close();
      }

      // the packed linears exactly as quantized (K = 172), in the unpadded model
      const unpadded = await openModel(fp32Dir, { device: testDevice });
      const padded = await openModel(out, { device: testDevice });
      try {
        for (let b = 0; b < unpadded.layers; b++) {
          const dense = await unpadded.readBlockWeights(b);
          for (const name of LINEAR_NAMES) {
            const prefix = unpadded.reader!.tensors.blocks[b]![name].prefix;
            await unpadded.setLinear(b, name, {
              packed: summary.packed!.get(prefix)! as PackedWeights,
              bias: dense[name].bias,
            });
          }
        }
        const gap = relativeGap(await unpadded.logits(probe), await padded.logits(probe));
        expect(gap, `${label}: padded checkpoint logits vs the unpadded packed model`).toBeLessThan(1e-5);
      } finally {
        await unpadded.close();
        await padded.close();
      }
    },
  );
});

/**
 * Quantized lm_head (GPTQModel's `lm_head: true`) on stories260K, whose lm_head is tied to the
 * embedding: written (untied, the embedding kept dense), read back, run packed, and scored.
 *   - the checkpoint: lm_head's GPTQ tensors in the shapes loaders allocate, `lm_head: true`,
 *     `tie_word_embeddings: false`, the embedding's bytes unchanged (catches a writer that drops or
 *     quantizes the embedding, or leaves the config tied so loaders would overwrite the head);
 *   - the forward pass runs the packed head: logits equal those of the same model with the head
 *     set to its dequantized weights (catches a reader that falls back to the embedding);
 *   - GPTQ calibrates the head on the final norm's outputs of the quantized blocks: the written codes
 *     equal GPTQ's on those inputs recomputed here, and differ from GPTQ's on the un-normed hidden
 *     states (catches a head quantized on the wrong inputs, or before the blocks are quantized);
 *   - RTN rounds the embedding matrix itself (codes equal rtnQuantize's);
 *   - perplexity with the quantized head stays within 3% of the same checkpoint's with a dense head.
 */
import { mkdtemp, readFile, readdir, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { openGptqModel, readPackedHead } from '../../src/formats/gptq.js';
import { HfModel, LINEAR_NAMES } from '../../src/formats/hf.js';
import { openModelFiles } from '../../src/formats/open.js';
import { Model, openModel } from '../../src/model/model.js';
import { perplexity } from '../../src/model/perplexity.js';
import { native, type PackedWeights } from '../../src/native.js';
import { Hessian, gptqQuantize } from '../../src/quantize/gptq.js';
import { rtnQuantize } from '../../src/quantize/rtn.js';
import { calibrationWindows } from '../../src/schedule/calibration.js';
import { quantize, type QuantizeProgress } from '../../src/schedule/quantize.js';
import { dataFile } from '../helpers/data.js';
import { expectStandardShapes, sameBytes } from '../formats/helpers.js';

const modelDir = dataFile('stories260K-hf');
const calib = dataFile('tinystories-valid.calib.txt');
const evalText = dataFile('tinystories-valid.eval.txt');
// 4 windows of 64 tokens: one forward call and one Hessian batch, as the scheduler does
const calibration = { files: [calib], samples: 4, seqLen: 64, seed: 11 };
const grid = { bits: 4 as const, groupSize: 32, sym: false, mse: false, checkpointFormat: 'gptq' as const };

let work: string;
beforeAll(async () => {
  work = await mkdtemp(join(tmpdir(), 'lowbit-lm-head-'));
});
afterAll(async () => {
  await rm(work, { recursive: true, force: true });
});

async function pplOf(model: Model, text: string): Promise<number> {
  return (await perplexity(model, text, { seqLen: 256, maxWindows: 12, batch: 4 })).ppl;
}

describe('quantized lm_head (lm_head: true), stories260K', () => {
  it('GPTQ: written untied, read back packed, calibrated on the final norm outputs, ppl near the dense head', async () => {
    const out = join(work, 'gptq-head');
    const summary = await quantize({ model: modelDir, out, ...grid, calibration, lmHead: true, keepPacked: true });
    expect(summary.layers.at(-1)).toMatchObject({ prefix: 'lm_head', N: 512, K: 64 });
    const packedHead = summary.packed!.get('lm_head') as PackedWeights;

    // the checkpoint
    const config = JSON.parse(await readFile(join(out, 'config.json'), 'utf8')) as Record<string, unknown>;
    expect(config.tie_word_embeddings).toBe(false);
    expect(config.quantization_config).toMatchObject({ lm_head: true });
    expect(JSON.parse(await readFile(join(out, 'quantize_config.json'), 'utf8'))).toMatchObject({ lm_head: true });
    const written = await openGptqModel(out);
    const source = await HfModel.open(modelDir);
    try {
      expect(written.names).not.toContain('lm_head.weight');
      expectStandardShapes(written, 'lm_head', 4, 32, 'lm_head');
      const embed = await written.readTensor('model.embed_tokens.weight');
      expect(embed.dtype).toBe('f32');
      expect(sameBytes(embed.data, (await source.readTensor('model.embed_tokens.weight')).data)).toBe(true);
      const read = await readPackedHead(written);
      expect(sameBytes(read.qweight, packedHead.qweight) && sameBytes(read.scales, packedHead.scales)).toBe(true);
      expect(sameBytes(read.qzeros, packedHead.qzeros)).toBe(true);
    } finally {
      await written.close();
      await source.close();
    }

    // the forward pass runs the packed head (exact activations, to compare with the dense product)
    const model = await openModel(out, { device: 'cpu', cpuActivations: 'f32' });
    try {
      const probe = Int32Array.from({ length: 48 }, (_, i) => (i * 37 + 5) % 512);
      const packedLogits = await model.logits(probe);
      const reader = model.reader!;
      const embed = await reader.readTensor(reader.tensors.embedding);
      const finalNorm = (await reader.readFloat32(reader.tensors.norm)).data;
      const dequantized = native().dequantize(packedHead);
      await model.setGlobals({
        embed: { dtype: 'f32', data: embed.data as Float32Array },
        finalNorm,
        head: { dtype: 'f32', data: dequantized },
      });
      const denseLogits = await model.logits(probe);
      let gap = 0;
      for (let i = 0; i < denseLogits.length; i++) gap = Math.max(gap, Math.abs(denseLogits[i]! - packedLogits[i]!));
      expect(gap, 'packed head vs its dequantized weights').toBeLessThan(1e-4);
      // and the head is the quantized one, not the embedding: the tied dense head gives other logits
      await model.setGlobals({
        embed: { dtype: 'f32', data: embed.data as Float32Array },
        finalNorm,
        head: { dtype: 'f32', data: embed.data as Float32Array },
      });
      const tiedLogits = await model.logits(probe);
      let diff = 0;
      for (let i = 0; i < tiedLogits.length; i++) diff = Math.max(diff, Math.abs(tiedLogits[i]! - packedLogits[i]!));
      expect(diff, 'the quantized head must change the logits, or this test proves nothing').toBeGreaterThan(1e-3);

      // perplexity: the quantized head against the dense (tied) head on the same quantized blocks
      const text = await readFile(evalText, 'utf8');
      const denseHeadPpl = await pplOf(model, text);
      await model.loadGlobals();
      const quantizedHeadPpl = await pplOf(model, text);
      const ratio = quantizedHeadPpl / denseHeadPpl;
      expect(ratio, `ppl ${quantizedHeadPpl} (4-bit head) vs ${denseHeadPpl} (dense head)`).toBeLessThan(1.03);
      expect(ratio, 'a quantized head better than the dense one is a broken evaluation').toBeGreaterThan(0.995);
    } finally {
      await model.close();
    }

    // GPTQ on the final norm outputs of the quantized blocks (as the scheduler ran them: exact
    // activations, the packed linears unpadded, one forward call), recomputed here
    const reader = await openModelFiles(modelDir);
    const calibModel = await Model.open(reader, {
      device: 'cpu',
      load: 'all',
      cpuActivations: 'f32',
      maxSeq: calibration.seqLen,
      tokenizerFrom: modelDir,
    });
    try {
      for (let b = 0; b < calibModel.layers; b++) {
        const dense = await calibModel.readBlockWeights(b);
        for (const name of LINEAR_NAMES)
          await calibModel.setLinear(b, name, {
            packed: summary.packed!.get(reader.tensors.blocks[b]![name].prefix) as PackedWeights,
            bias: dense[name].bias,
          });
      }
      const ids = await calibrationWindows(calibModel, { ...calibration, source: calibration.files });
      const hidden = await calibModel.embed(ids);
      for (let b = 0; b < calibModel.layers; b++)
        await calibModel.runBlock(b, hidden, { batch: calibration.samples, seq: calibration.seqLen, inPlace: true });
      const rows = ids.length;
      const h = reader.config.hiddenSize;
      const normed = new Float32Array(rows * h);
      native().opRmsNorm(
        hidden,
        rows,
        h,
        (await reader.readFloat32(reader.tensors.norm)).data,
        reader.config.rmsNormEps,
        normed,
      );
      const W = await reader.readFloat32(reader.tensors.lmHead);
      const gptqOn = async (x: Float32Array): Promise<PackedWeights> => {
        const H = Hessian.create(h);
        try {
          await H.addBatch(x, rows);
          return (await gptqQuantize(W, undefined, H, { ...grid, damp: 0.01 })).packed;
        } finally {
          H.free();
        }
      };
      const onNormed = await gptqOn(normed);
      const onHidden = await gptqOn(hidden);
      expect(sameBytes(onNormed.qweight, onHidden.qweight), 'normed vs raw inputs must give other codes').toBe(false);
      expect(sameBytes(packedHead.qweight, onNormed.qweight), 'lm_head not quantized on the final norm outputs').toBe(
        true,
      );
    } finally {
      await calibModel.close();
    }
  });

  it('GPTQ with lm_head resumes to the same bytes (the head is part of the last block)', async () => {
    const whole = join(work, 'gptq-head'); // written by the test above
    const parts = join(work, 'gptq-head-parts');
    const controller = new AbortController();
    const job = quantize({
      model: modelDir,
      out: parts,
      ...grid,
      calibration,
      lmHead: true,
      signal: controller.signal,
    });
    job.on('progress', (p: QuantizeProgress) => {
      expect(p.total).toBe(36);
      if (p.done === 30) controller.abort(); // inside the last block
    });
    await expect(job).rejects.toMatchObject({ code: 'E_ABORTED' });
    const resumed = await quantize({ model: modelDir, out: parts, ...grid, calibration, lmHead: true, resume: true });
    expect(resumed.resumedBlocks).toBe(4);
    expect(resumed.layers.at(-1)!.prefix).toBe('lm_head');
    for (const f of await readdir(whole))
      expect((await readFile(join(parts, f))).equals(await readFile(join(whole, f))), f).toBe(true);
  });

  it('RTN: rounds the (tied) embedding matrix itself; the checkpoint runs and reads back', async () => {
    const out = join(work, 'rtn-head');
    const summary = await quantize({
      model: modelDir,
      out,
      method: 'rtn',
      bits: 4,
      groupSize: 32,
      lmHead: true,
      keepPacked: true,
    });
    const source = await HfModel.open(modelDir);
    try {
      const want = await rtnQuantize(await source.readFloat32('model.embed_tokens.weight'), grid);
      expect(sameBytes((summary.packed!.get('lm_head') as PackedWeights).qweight, want.qweight)).toBe(true);
    } finally {
      await source.close();
    }
    const model = await openModel(out, { device: 'cpu' });
    try {
      expect(model.reader!.tensors.lmHeadQuantized?.qweight).toBe('lm_head.qweight');
      expect(Number.isFinite(await pplOf(model, (await readFile(evalText, 'utf8')).slice(0, 20000)))).toBe(true);
    } finally {
      await model.close();
    }
  });

  it('refuses a checkpoint whose config says lm_head: true without lm_head.qweight', async () => {
    const out = join(work, 'gptq-head');
    const { cpSync, writeFileSync, readFileSync } = await import('node:fs');
    const bad = join(work, 'bad-head');
    cpSync(out, bad, { recursive: true });
    const config = JSON.parse(readFileSync(join(bad, 'config.json'), 'utf8')) as Record<string, unknown>;
    writeFileSync(join(bad, 'config.json'), JSON.stringify({ ...config, tie_word_embeddings: true }));
    await expect(HfModel.open(bad)).rejects.toMatchObject({
      code: 'E_GPTQ_FORMAT',
      message: expect.stringMatching(/lm_head is true, but the checkpoint has no lm_head.qweight/),
    });
  });
});

/**
 * The whole pipeline on the real model (issue 9, "tests that would have caught real bugs"):
 * - quality: stories260K quantized with GPTQ 4-bit g32 (act-order on and off) and RTN 4-bit g32, each
 *   checkpoint read back from disk and scored by perplexity on held-out text next to fp32, all in this
 *   test. GPTQ must beat RTN clearly and stay within a few percent of fp32: dropping act-order's g_idx
 *   from the checkpoint (ppl ~7 -> ~600), a broken true-sequential order or a worse rounding fails it.
 * - true-sequential: the checkpoint's o_proj of block 0 must be exactly what GPTQ makes from the
 *   inputs o_proj sees once q/k/v are quantized (recomputed here through the model API), not from the
 *   inputs of the unquantized block: fails when quantized linears are not put back into the block.
 */
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { dataDir, haveData } from '../helpers/data.js';
import { quantize, Hessian, gptqQuantize, type QuantizeOptions } from '../../src/quantize/index.js';
import { openModel, Model } from '../../src/model/model.js';
import { perplexity } from '../../src/model/perplexity.js';
import { openModelFiles } from '../../src/formats/open.js';
import { calibrationWindows } from '../../src/schedule/calibration.js';
import { Tensor } from '../../src/tensor.js';
import type { PackedWeights } from '../../src/native.js';

const modelDir = join(dataDir, 'stories260K-hf');
const calib = join(dataDir, 'tinystories-valid.calib.txt');
const evalFile = join(dataDir, 'tinystories-valid.eval.txt');
const ready = haveData('stories260K-hf/model.safetensors', 'tinystories-valid.calib.txt', 'tinystories-valid.eval.txt');

let work: string;
beforeAll(async () => {
  work = await mkdtemp(join(tmpdir(), 'lowbit-quality-'));
});
afterAll(async () => {
  await rm(work, { recursive: true, force: true });
});

async function pplOf(dir: string, text: string): Promise<number> {
  const model = await openModel(dir, { device: 'cpu' });
  try {
    return (await perplexity(model, text, { seqLen: 256, maxWindows: 12, batch: 4 })).ppl;
  } finally {
    await model.close();
  }
}

describe.skipIf(!ready)('quantized stories260K, read back and scored', () => {
  it('GPTQ 4-bit g32 (act-order on and off) beats RTN and stays within a few percent of fp32', async () => {
    const text = await readFile(evalFile, 'utf8');
    const calibration = { files: [calib], samples: 64, seqLen: 256, seed: 2 };
    const base: QuantizeOptions = { model: modelDir, out: '', bits: 4, groupSize: 32 };
    const fp32 = await pplOf(modelDir, text);
    await quantize({ ...base, out: join(work, 'rtn'), method: 'rtn' });
    await quantize({ ...base, out: join(work, 'gptq-act'), actOrder: true, calibration });
    await quantize({ ...base, out: join(work, 'gptq'), actOrder: false, calibration });
    const rtn = await pplOf(join(work, 'rtn'), text);
    const act = await pplOf(join(work, 'gptq-act'), text);
    const plain = await pplOf(join(work, 'gptq'), text);
    const report = `fp32 ${fp32.toFixed(4)}, RTN ${rtn.toFixed(4)}, GPTQ act-order ${act.toFixed(4)}, GPTQ ${plain.toFixed(4)}`;
    // Measured (this calibration, 12 windows of 256 tokens): fp32 5.497, RTN 5.960 (+8.4%), GPTQ 5.764
    // (+4.9%), GPTQ act-order 5.809 (+5.7%): GPTQ removes 33-42% of RTN's loss on this tiny model.
    // The bounds leave about 2 points of margin: a regression that costs a few percent fails.
    for (const [name, ppl] of [
      ['act-order', act],
      ['plain', plain],
    ] as const) {
      expect(ppl / fp32, `GPTQ ${name} vs fp32: ${report}`).toBeLessThan(1.075);
      expect(ppl / fp32, `GPTQ ${name} vs fp32 (better than fp32 is a broken evaluation): ${report}`).toBeGreaterThan(
        1.0,
      );
      expect((ppl - fp32) / (rtn - fp32), `GPTQ ${name} removes at least 20% of RTN's loss: ${report}`).toBeLessThan(
        0.8,
      );
    }
  });

  it('true-sequential: block 0 o_proj is quantized from the inputs produced by the quantized q/k/v', async () => {
    const samples = 4;
    const seqLen = 64; // 4 windows of 64 tokens: one forward call and one Hessian batch, as the scheduler does
    const gptq = {
      bits: 4 as const,
      groupSize: 32,
      sym: false,
      actOrder: false,
      staticGroups: false,
      damp: 0.01,
      mse: false,
      checkpointFormat: 'gptq' as const,
    };
    const summary = await quantize({
      model: modelDir,
      out: join(work, 'seq'),
      ...gptq,
      calibration: { files: [calib], samples, seqLen, seed: 9 },
      keepPacked: true,
    });
    const packed = summary.packed! as Map<string, PackedWeights>; // (GPTQ: untagged PackedWeights)

    const reader = await openModelFiles(modelDir);
    // exact activations in the packed linears, as the scheduler's calibration passes use
    const model = await Model.open(reader, {
      device: 'cpu',
      load: 'globals',
      maxSeq: seqLen,
      tokenizerFrom: modelDir,
      cpuActivations: 'f32',
    });
    try {
      const ids = await calibrationWindows(model, { source: [calib], samples, seqLen, seed: 9 });
      const hidden = await model.embed(ids);
      const weights = await model.readBlockWeights(0);
      const prefix = (name: string) => reader.tensors.blocks[0]![name as 'q'].prefix;
      const oInputs = async (quantizedQkv: boolean) => {
        await model.setBlockWeights(0, weights);
        if (quantizedQkv)
          for (const name of ['q', 'k', 'v'] as const)
            await model.setLinear(0, name, { packed: packed.get(prefix(name))!, bias: weights[name].bias });
        const { inputs } = await model.runBlock(0, hidden, {
          batch: samples,
          seq: seqLen,
          capture: ['o'],
          stopAfter: 'o',
        });
        return inputs.o!;
      };
      const quantizeO = async (x: Float32Array) => {
        const o = weights.o as { dtype: 'f32'; data: Float32Array };
        const K = x.length / (samples * seqLen);
        const H = Hessian.create(K);
        try {
          await H.addBatch(x, samples * seqLen);
          const W = new Tensor('f32', [o.data.length / K, K], o.data);
          return (await gptqQuantize(W, undefined, H, gptq)).packed.qweight;
        } finally {
          H.free();
        }
      };
      const fromQuantized = await quantizeO(await oInputs(true));
      const fromDense = await quantizeO(await oInputs(false));
      const written = packed.get(prefix('o'))!.qweight;
      const same = (a: Int32Array, b: Int32Array) => a.length === b.length && a.every((v, i) => v === b[i]);
      expect(
        same(fromQuantized, fromDense),
        'the two inputs must give different o_proj codes, or this test proves nothing',
      ).toBe(false);
      expect(same(written, fromQuantized), 'o_proj was not quantized from the outputs of the quantized q/k/v').toBe(
        true,
      );
    } finally {
      await model.close();
    }
  });
});

/**
 * Calibration on the GPU's 16-bit path (quantize's calibrationDtype 'bf16', the default on CUDA):
 * the hidden states stay on the GPU and each capture feeds its Hessian there. Needs a CUDA device:
 * elsewhere the blocks skip with the reason (the CPU side: test/schedule/calibration-states.test.ts).
 *   - Device Hessians from 16-bit captures read in place vs float64 (2/n) XᵀX of the same captures
 *     (Model.runBlock's host copies, widened exactly). The inputs are the same 16-bit values, so only
 *     the fp32 accumulation on the tensor cores differs: within u/16 (u = 2^-8 for bf16, 2^-11 for
 *     f16) of max|H|. A product rounded to 16 bits, another capture point's rows, a wrong 2/n scale or
 *     the strips of the symmetric half missing a block err by u or far more. Split over two calls,
 *     the running mean agrees with one call within u (the forward's rows may round differently with
 *     another GEMM shape, by one 16-bit ulp at most).
 *   - quantize() of stories260K through the device path: perplexity within 2% of the f32 path's
 *     checkpoint (4-bit g32 costs stories260K ~6% over fp32; bf16 calibration moves each Hessian entry
 *     by ~u relative and so only codes that sit on a rounding boundary), and the summary states the
 *     GPU memory estimate and a wall-time split.
 *   - true-sequential on the device path: block 0's down equals GPTQ (on the GPU, 16-bit captures) on
 *     the inputs of the already-quantized q..up, not on the dense block's.
 */
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { openModelFiles } from '../../src/formats/open.js';
import { Model, openModel } from '../../src/model/model.js';
import { perplexity } from '../../src/model/perplexity.js';
import { Hessian } from '../../src/quantize/gptq.js';
import { quantize } from '../../src/schedule/quantize.js';
import { dataFile } from '../helpers/data.js';
import { Rng, randomSeed } from '../helpers/random.js';
import { codeMismatch, downCodes, hessianRef, maxRelative, type StageSetup } from '../helpers/calibration.js';
import { cudaAvailability } from './ref.js';

const cuda = cudaAvailability();
if (!cuda.ok) console.log(`test/cuda/calibration.test.ts: CUDA tests skipped: ${cuda.reason}`);

const modelDir = dataFile('stories260K-hf');
const calib = dataFile('tinystories-valid.calib.txt');
const evalText = dataFile('tinystories-valid.eval.txt');
const UNIT = { bf16: 2 ** -8, f16: 2 ** -11 } as const;
const POINTS = ['qkv', 'o', 'gateUp', 'down'] as const;

describe.skipIf(!cuda.ok)(
  `device Hessians from 16-bit captures (skipped without a GPU: ${cuda.reason || 'none'})`,
  () => {
    it.each(['bf16', 'f16'] as const)('%s: within u/16 of float64 XᵀX of the same captures', async (dtype) => {
      const model = await Model.open(await openModelFiles(modelDir), {
        device: 'cuda',
        load: 'all',
        dtype,
        maxSeq: 64,
      });
      const hs: Hessian[] = [];
      try {
        const seq = 40;
        const samples = 3;
        const dim = model.dim;
        const rng = new Rng(randomSeed());
        const hidden = Float32Array.from({ length: samples * seq * dim }, () => rng.uniform(-1, 1));
        const { inputs } = await model.runBlock(2, hidden, { batch: samples, seq, capture: [...POINTS] });
        const make = () => {
          const byPoint = Object.fromEntries(
            POINTS.map((p) => [p, Hessian.create(inputs[p]!.length / (samples * seq), { device: 'cuda' })]),
          ) as Record<(typeof POINTS)[number], Hessian>;
          hs.push(...Object.values(byPoint));
          return byPoint;
        };
        const whole = make();
        const split = make();
        const states = await model.createStates(hidden, samples * seq);
        await states.runBlock(2, { row0: 0, batch: samples, seq, hessians: whole, stopAfter: 'down' });
        await states.runBlock(2, { row0: 0, batch: 1, seq, hessians: split, stopAfter: 'down' });
        await states.runBlock(2, { row0: seq, batch: 2, seq, hessians: split, stopAfter: 'down' });
        states.free();
        for (const p of POINTS) {
          const ref = hessianRef(inputs[p]!, samples * seq, whole[p].K);
          expect(whole[p].samples).toBe(samples * seq);
          expect(maxRelative(whole[p].read().data, ref), `${p}: one call`).toBeLessThan(UNIT[dtype] / 16);
          expect(maxRelative(split[p].read().data, ref), `${p}: two calls (running mean)`).toBeLessThan(UNIT[dtype]);
        }
      } finally {
        for (const h of hs) h.free();
        await model.close();
      }
    });
  },
);

describe.skipIf(!cuda.ok)(
  `quantize() through the device path (skipped without a GPU: ${cuda.reason || 'none'})`,
  () => {
    let work: string;
    beforeAll(async () => {
      work = await mkdtemp(join(tmpdir(), 'lowbit-calib-cuda-'));
    });
    afterAll(async () => {
      await rm(work, { recursive: true, force: true });
    });
    const setup: StageSetup = {
      modelDir,
      calibration: { files: [calib], samples: 16, seqLen: 256, seed: 3 },
      grid: { bits: 4, groupSize: 32, sym: false, mse: false, checkpointFormat: 'gptq' },
      device: 'cuda',
      dtype: 'bf16',
    };

    async function pplOf(dir: string, text: string): Promise<number> {
      const model = await openModel(dir, { device: 'cpu', cpuActivations: 'f32' });
      try {
        return (await perplexity(model, text, { seqLen: 256, maxWindows: 12, batch: 4 })).ppl;
      } finally {
        await model.close();
      }
    }

    it('bf16 (default) vs f32 calibration: perplexity within 2%; the summary states GPU memory and timings', async () => {
      const base = { model: modelDir, ...setup.grid, calibration: setup.calibration, device: 'cuda' as const };
      const dev = await quantize({ ...base, out: join(work, 'bf16') });
      const f32 = await quantize({ ...base, out: join(work, 'f32'), calibrationDtype: 'f32' });
      const text = await readFile(evalText, 'utf8');
      const [pDev, pF32, pDense] = [
        await pplOf(join(work, 'bf16'), text),
        await pplOf(join(work, 'f32'), text),
        await pplOf(modelDir, text),
      ];
      console.log(`stories260K 4-bit g32 ppl: bf16 calibration ${pDev}, f32 ${pF32}, dense ${pDense}`);
      expect(Math.abs(pDev / pF32 - 1), `ppl ${pDev} (bf16 calibration) vs ${pF32} (f32)`).toBeLessThan(0.02);
      expect(pDev / pDense).toBeLessThan(1.15);
      expect(dev.estimatedDeviceBytes).toBeGreaterThan(16 * 256 * 64 * 4);
      expect(f32.estimatedDeviceBytes).toBeUndefined();
      expect(dev.timings.forward > 0 && dev.timings.hessian > 0 && dev.timings.gptq > 0).toBe(true);
    });

    it("true-sequential: block 0's down is GPTQ on the quantized q..up's outputs, not the dense block's", async () => {
      const summary = await quantize({
        model: modelDir,
        out: join(work, 'ts'),
        ...setup.grid,
        calibration: { ...setup.calibration, samples: 4, seqLen: 64 },
        device: 'cuda',
        keepPacked: true,
      });
      const small = { ...setup, calibration: { ...setup.calibration, samples: 4, seqLen: 64 } };
      const written = (summary.packed!.get('model.layers.0.mlp.down_proj') as { qweight: Int32Array }).qweight;
      const sequential = await downCodes(small, summary.packed!, true);
      const upFront = await downCodes(small, summary.packed!, false);
      const wrong = codeMismatch(sequential, upFront);
      const got = codeMismatch(written, sequential);
      console.log(
        `device path, block 0 down: ${got} of codes differ from the recomputation, ${wrong} between the two orders`,
      );
      expect(wrong, 'the two orders must give other codes').toBeGreaterThan(0.01);
      expect(got, 'down not quantized on the quantized stages’ outputs').toBeLessThan(0.001);
    });
  },
);

/**
 * Calibration hidden states held by the model (Model.createStates / HiddenStates) and the scheduler's
 * true-sequential order, on the CPU (the CUDA device path: test/cuda/calibration.test.ts).
 *   - HiddenStates.runBlock over a row range feeds each capture point's Hessian the same inputs as
 *     Model.runBlock's host captures (float64 XᵀX reference, the running mean's 2/n scale), runs the
 *     block in place on exactly those rows, and leaves them as they were after stopAfter (catches a
 *     wrong row offset, a capture point fed to the wrong Hessian, a lost update, a stop that writes);
 *   - the scheduler's block-0 `down` equals GPTQ on the inputs of `down` with q, k, v, o, gate and up
 *     already quantized, and differs from GPTQ on the dense block's inputs (catches a stage whose
 *     captures were taken before the previous stages' linears were replaced);
 *   - calibrationDtype is checked (the CPU computes in f32 only).
 */
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { openModelFiles } from '../../src/formats/open.js';
import { Model } from '../../src/model/model.js';
import { Hessian } from '../../src/quantize/gptq.js';
import { quantize } from '../../src/schedule/quantize.js';
import { dataFile } from '../helpers/data.js';
import { Rng, randomSeed } from '../helpers/random.js';
import { codeMismatch, downCodes, hessianRef, maxRelative, type StageSetup } from '../helpers/calibration.js';

const modelDir = dataFile('stories260K-hf');
const calib = dataFile('tinystories-valid.calib.txt');

describe('HiddenStates on the CPU (stories260K block 1)', () => {
  let model: Model;
  beforeAll(async () => {
    model = await Model.open(await openModelFiles(modelDir), {
      device: 'cpu',
      load: 'all',
      cpuActivations: 'f32',
      maxSeq: 64,
    });
  });
  afterAll(async () => {
    await model.close();
  });

  it('feeds each Hessian its capture point, runs in place on its rows only, stops without writing', async () => {
    const seq = 24;
    const samples = 5;
    const dim = model.dim;
    const rng = new Rng(randomSeed());
    const hidden = Float32Array.from({ length: samples * seq * dim }, () => rng.uniform(-1, 1));
    const { hidden: after, inputs } = await model.runBlock(1, hidden.subarray(2 * seq * dim, 5 * seq * dim), {
      batch: 3,
      seq,
      capture: ['qkv', 'o', 'gateUp', 'down'],
    });
    const states = await model.createStates(hidden, samples * seq);
    const hs = {
      qkv: Hessian.create(dim),
      o: Hessian.create(inputs.o!.length / (3 * seq)),
      gateUp: Hessian.create(dim),
      down: Hessian.create(inputs.down!.length / (3 * seq)),
    };
    try {
      // rows of samples 2..4 in two calls (one, then two sequences): a running mean over both
      await states.runBlock(1, { row0: 2 * seq, batch: 1, seq, hessians: hs, stopAfter: 'down' });
      expect(await states.read(), 'stopAfter must leave the states as they were').toEqual(hidden);
      await states.runBlock(1, { row0: 3 * seq, batch: 2, seq, hessians: hs, stopAfter: 'down' });
      for (const p of ['qkv', 'o', 'gateUp', 'down'] as const) {
        const K = hs[p].K;
        expect(hs[p].samples).toBe(3 * seq);
        const err = maxRelative(hs[p].read().data, hessianRef(inputs[p]!, 3 * seq, K));
        expect(err, `Hessian of ${p} vs float64 (2/n) XᵀX of its inputs`).toBeLessThan(1e-5);
      }
      // a whole pass (no stop) over the same rows: the block's outputs there, the other rows untouched
      await states.runBlock(1, { row0: 2 * seq, batch: 3, seq });
      const now = await states.read();
      expect(now.subarray(0, 2 * seq * dim)).toEqual(hidden.subarray(0, 2 * seq * dim));
      expect(now.subarray(2 * seq * dim)).toEqual(after);
      expect(await states.read(3 * seq, seq)).toEqual(after.subarray(seq * dim, 2 * seq * dim));
    } finally {
      for (const h of Object.values(hs)) h.free();
      states.free();
    }
  });

  it('rejects rows outside the states and Hessians of the wrong size', async () => {
    const states = await model.createStates(new Float32Array(2 * 8 * model.dim), 16);
    const H = Hessian.create(model.dim + 1);
    try {
      await expect(states.runBlock(0, { row0: 8, batch: 2, seq: 8 })).rejects.toMatchObject({ code: 'E_ARGUMENT' });
      await expect(states.runBlock(0, { row0: 0, batch: 2, seq: 8, hessians: { qkv: H } })).rejects.toMatchObject({
        code: 'E_SHAPE',
      });
    } finally {
      H.free();
      states.free();
    }
    await expect(states.read()).rejects.toMatchObject({ code: 'E_CLOSED' });
  });
});

describe('true-sequential order in the scheduler (CPU, f32)', () => {
  let work: string;
  beforeAll(async () => {
    work = await mkdtemp(join(tmpdir(), 'lowbit-states-'));
  });
  afterAll(async () => {
    await rm(work, { recursive: true, force: true });
  });

  it("block 0's down is GPTQ on the inputs of the already-quantized q..up, not on the dense block's", async () => {
    const setup: StageSetup = {
      modelDir,
      calibration: { files: [calib], samples: 4, seqLen: 64, seed: 5 },
      grid: { bits: 4, groupSize: 32, sym: false, mse: false, checkpointFormat: 'gptq' },
      device: 'cpu',
      dtype: 'f32',
    };
    const summary = await quantize({
      model: modelDir,
      out: join(work, 'ts'),
      ...setup.grid,
      calibration: setup.calibration,
      keepPacked: true,
    });
    const written = (summary.packed!.get('model.layers.0.mlp.down_proj') as { qweight: Int32Array }).qweight;
    const sequential = await downCodes(setup, summary.packed!, true);
    const upFront = await downCodes(setup, summary.packed!, false);
    expect(codeMismatch(sequential, upFront), 'the two orders must give other codes').toBeGreaterThan(0.01);
    expect(codeMismatch(written, sequential), 'down not quantized on the quantized stages’ outputs').toBe(0);
    const t = summary.timings;
    expect(t.forward > 0 && t.hessian > 0 && t.gptq > 0 && t.io > 0).toBe(true);
    expect(t.forward + t.hessian + t.gptq + t.io).toBeLessThanOrEqual(summary.seconds);
  });

  it('calibrationDtype: 16 bits only on a GPU, and one of f32/f16/bf16', async () => {
    const base = { model: modelDir, out: join(work, 'x'), bits: 4 as const, calibration: { files: [calib] } };
    await expect(quantize({ ...base, calibrationDtype: 'bf16' })).rejects.toMatchObject({ code: 'E_UNSUPPORTED' });
    await expect(quantize({ ...base, calibrationDtype: 'f8' as never })).rejects.toMatchObject({ code: 'E_ARGUMENT' });
  });
});

/**
 * The scheduler with the spqr plug-in on the real stories260K (small calibration): resume after a
 * cancellation writes a byte-identical SpQR checkpoint; the checkpoint's linears are what the run
 * returned (read back through the model reader); bad options get typed errors naming the option.
 */
import { mkdtemp, rm } from 'node:fs/promises';
import { existsSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { filesOf } from '../helpers/files.js';
import { SPQR_ARRAYS } from '../spqr/reference.js';
import { dataDir } from '../helpers/data.js';
import { quantize, type QuantizeOptions, type QuantizeProgress } from '../../src/quantize/index.js';
import { openModel } from '../../src/model/model.js';
import { resumeDir } from '../../src/schedule/resume.js';
import type { SpqrLinearWeights } from '../../src/weights/types.js';

const modelDir = join(dataDir, 'stories260K-hf');
const calib = join(dataDir, 'tinystories-valid.calib.txt');

let work: string;
beforeAll(async () => {
  work = await mkdtemp(join(tmpdir(), 'lowbit-schedule-spqr-'));
});
afterAll(async () => {
  await rm(work, { recursive: true, force: true });
});

function base(out: string, extra: Partial<QuantizeOptions> = {}): QuantizeOptions {
  return {
    model: modelDir,
    out,
    method: 'spqr',
    bits: 3,
    calibration: { files: [calib], samples: 6, seqLen: 64, seed: 7 },
    ...extra,
  };
}

describe('quantize --method spqr (stories260K)', () => {
  // Catches: SpQR linears lost or altered by the resume state (block files), or a resumed run that
  // writes them in another order or form than a run that was never stopped.
  it('resumes after a cancellation and writes a byte-identical checkpoint', async () => {
    const whole = join(work, 'whole');
    const summary = await quantize(base(whole, { keepPacked: true }));
    expect(summary.layers).toHaveLength(35);
    for (const l of summary.layers) {
      expect(l.loss).toBeGreaterThan(0);
      expect(l.outlierRate).toBeGreaterThanOrEqual(0);
      expect(l.outlierRate).toBeLessThanOrEqual(0.01);
    }
    expect(
      summary.layers.some((l) => l.outlierRate! > 0),
      'some outliers at the default τ',
    ).toBe(true);

    const parts = join(work, 'parts');
    const controller = new AbortController();
    const job = quantize(base(parts, { signal: controller.signal }));
    job.on('progress', (p: QuantizeProgress) => {
      if (p.done === 17) controller.abort(); // inside block 2
    });
    await expect(job).rejects.toMatchObject({ code: 'E_ABORTED' });
    expect(existsSync(parts)).toBe(false);
    const resumed = await quantize(base(parts, { resume: true }));
    expect(resumed.resumedBlocks).toBe(2);
    expect(resumed.bitsPerWeight).toBe(summary.bitsPerWeight);
    expect(existsSync(resumeDir(parts))).toBe(false);
    const [a, b] = [await filesOf(whole), await filesOf(parts)];
    expect([...b.keys()]).toEqual([...a.keys()]);
    for (const [name, bytes] of a) expect(Buffer.compare(bytes, b.get(name)!), name).toBe(0);

    // What the checkpoint holds is what the run produced: read back through the model reader.
    const model = await openModel(whole, { device: 'cpu' });
    try {
      const w = await model.readBlockWeights(3);
      const got = w.down as SpqrLinearWeights;
      expect(got.format).toBe('spqr');
      const want = summary.packed!.get('model.layers.3.mlp.down_proj') as SpqrLinearWeights;
      for (const k of SPQR_ARRAYS) expect(Array.from(got[k]!), k).toEqual(Array.from(want[k]!));
    } finally {
      await model.close();
    }
  });

  // Catches: options that reach the sweep unchecked, or GPTQ-only options silently ignored.
  it('refuses bad options with typed errors naming the option', async () => {
    const out = join(work, 'bad');
    const bad = (extra: Record<string, unknown>) => quantize(base(out, extra as Partial<QuantizeOptions>));
    await expect(bad({ bits: 8 })).rejects.toMatchObject({ code: 'E_BITS', details: { option: 'bits' } });
    await expect(bad({ beta1: 1 })).rejects.toMatchObject({ code: 'E_GROUP_SIZE', details: { option: 'beta1' } });
    await expect(bad({ beta1: 128 })).rejects.toMatchObject({
      code: 'E_GROUP_SIZE',
      message: expect.stringMatching(/beta1 128 is longer than the model's smallest linear input \(K = 64\)/),
    });
    await expect(bad({ outlierThreshold: 0 })).rejects.toMatchObject({ details: { option: 'outlierThreshold' } });
    await expect(bad({ outlierBudget: 1 })).rejects.toMatchObject({ details: { option: 'outlierBudget' } });
    await expect(bad({ groupSize: 32 })).rejects.toMatchObject({ details: { option: 'groupSize' } });
    await expect(bad({ trueSequential: false })).rejects.toMatchObject({ details: { option: 'trueSequential' } });
    await expect(bad({ sym: true })).rejects.toMatchObject({
      code: 'E_ARGUMENT',
      message: expect.stringMatching(/--sym \(sym\) is a GPTQ option and SpQR does not take it/),
    });
    // and the GPTQ-format methods refuse SpQR's options instead of ignoring them
    await expect(quantize({ ...base(out), method: 'gptq', outlierBudget: 0.01 })).rejects.toMatchObject({
      message: expect.stringMatching(/--outlier-budget \(outlierBudget\) is a SpQR option and GPTQ does not take it/),
    });
    await expect(quantize({ ...base(out), method: 'rtn', beta1: 32, calibration: undefined })).rejects.toMatchObject({
      details: { option: 'beta1' },
    });
    expect(existsSync(out)).toBe(false);
  });
});

/**
 * The quantization scheduler on the real stories260K checkpoint (small calibration so it stays quick):
 * resume gives a byte-identical checkpoint, cancellation, the memory budget, bad input.
 */
import { copyFile, mkdir, mkdtemp, readFile, readdir, rm, writeFile } from 'node:fs/promises';
import { existsSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { filesOf } from '../helpers/files.js';
import { dataDir } from '../helpers/data.js';
import { LowbitError } from '../../src/errors.js';
import { quantize, type QuantizeOptions, type QuantizeProgress } from '../../src/quantize/index.js';
import { resumeDir } from '../../src/schedule/resume.js';
import { run as runCli } from '../../src/cli/quantize.js';

const data = dataDir;
const modelDir = join(data, 'stories260K-hf');
const calib = join(data, 'tinystories-valid.calib.txt');

let work: string;
beforeAll(async () => {
  work = await mkdtemp(join(tmpdir(), 'lowbit-schedule-'));
});
afterAll(async () => {
  await rm(work, { recursive: true, force: true });
});

function base(out: string, extra: Partial<QuantizeOptions> = {}): QuantizeOptions {
  return {
    model: modelDir,
    out,
    bits: 4,
    groupSize: 32,
    actOrder: true,
    calibration: { files: [calib], samples: 6, seqLen: 64, seed: 7 },
    ...extra,
  };
}

describe('quantize (stories260K)', () => {
  it('resumes after a cancellation and writes a byte-identical checkpoint', async () => {
    const whole = join(work, 'whole');
    const summary = await quantize(base(whole));
    expect(summary.layers).toHaveLength(35);
    expect(summary.resumedBlocks).toBe(0);
    for (const l of summary.layers) expect(l.loss).toBeGreaterThan(0);
    expect(existsSync(resumeDir(whole))).toBe(false);

    const parts = join(work, 'parts');
    const controller = new AbortController();
    const job = quantize(base(parts, { signal: controller.signal }));
    const seen: QuantizeProgress[] = [];
    job.on('progress', (p: QuantizeProgress) => {
      seen.push(p);
      if (p.done === 17) controller.abort(); // inside block 2
    });
    await expect(job).rejects.toMatchObject({ code: 'E_ABORTED' });
    expect(seen.length).toBeGreaterThanOrEqual(17);
    expect(seen[16]).toMatchObject({ block: 2, blocks: 5, total: 35 });
    expect(existsSync(parts)).toBe(false); // nothing half-written at the target
    expect(existsSync(join(resumeDir(parts), 'block-1.bin'))).toBe(true);

    const resumed = await quantize(base(parts, { resume: true }));
    expect(resumed.resumedBlocks).toBe(2);
    expect(resumed.layers.map((l) => l.prefix)).toEqual(summary.layers.map((l) => l.prefix));
    const a = await filesOf(whole);
    const b = await filesOf(parts);
    expect([...b.keys()]).toEqual([...a.keys()]);
    for (const [name, bytes] of a) expect(b.get(name)!.equals(bytes), `${name} differs`).toBe(true);
    expect(existsSync(resumeDir(parts))).toBe(false);
  });

  it('refuses a resume made with other options', async () => {
    const out = join(work, 'mismatch');
    const controller = new AbortController();
    const job = quantize(base(out, { signal: controller.signal }));
    job.on('progress', (p: QuantizeProgress) => {
      if (p.done === 8) controller.abort();
    });
    await expect(job).rejects.toMatchObject({ code: 'E_ABORTED' });
    await expect(quantize(base(out, { bits: 3, resume: true }))).rejects.toMatchObject({
      code: 'E_ARGUMENT',
      message: expect.stringMatching(/different options/),
    });
    await rm(resumeDir(out), { recursive: true, force: true });
  });

  it('stops at once with an aborted signal', async () => {
    const out = join(work, 'aborted');
    await expect(quantize(base(out, { signal: AbortSignal.abort() }))).rejects.toMatchObject({ code: 'E_ABORTED' });
    expect(existsSync(out)).toBe(false);
  });

  it('refuses a memory budget it cannot keep, saying how much it needs', async () => {
    const err = (await quantize(base(join(work, 'budget'), { maxMemory: '100KB' })).then(
      () => undefined,
      (e: unknown) => e,
    )) as LowbitError;
    expect(err).toBeInstanceOf(LowbitError);
    expect(err.code).toBe('E_MEMORY_BUDGET');
    const needed = err.details.needed as number;
    expect(needed).toBeGreaterThan(100e3);
    expect(err.message).toContain(`${needed} bytes`);
    await expect(quantize(base(join(work, 'budget2'), { maxMemory: 'lots' }))).rejects.toMatchObject({
      code: 'E_ARGUMENT',
      message: expect.stringMatching(/for maxMemory but received "lots"/),
    });
  });

  it('reports bad calibration input', async () => {
    await expect(
      quantize(base(join(work, 'nocal'), { calibration: { files: [join(work, 'missing.txt')] } })),
    ).rejects.toMatchObject({ code: 'E_CALIBRATION', message: expect.stringMatching(/missing\.txt/) });
    const small = join(work, 'small.txt');
    await writeFile(small, 'Once upon a time there was a tiny story.');
    await expect(
      quantize(base(join(work, 'fewtok'), { calibration: { files: [small], samples: 4, seqLen: 64 } })),
    ).rejects.toMatchObject({
      code: 'E_CALIBRATION',
      message: expect.stringMatching(/4 samples of 64 tokens need 256/),
    });
    await expect(quantize({ model: modelDir, out: join(work, 'nocalib'), bits: 4 })).rejects.toMatchObject({
      code: 'E_CALIBRATION',
    });
    await expect(quantize(base(join(work, 'badbits'), { bits: 5 as 4 }))).rejects.toMatchObject({ code: 'E_BITS' });
  });

  it('RTN refuses every GPTQ-only option (any value) and calibration, naming the flag; GPTQ takes them', async () => {
    // catches RTN silently ignoring --damp, --act-order... (it rounds each weight on its own)
    const gptqOnly: [Partial<QuantizeOptions>, string, RegExp][] = [
      [{ damp: 0.05 }, 'damp', /--damp \(damp\) is a GPTQ option and RTN does not take it/],
      [{ actOrder: false }, 'actOrder', /--act-order \(actOrder\)/],
      [{ staticGroups: true }, 'staticGroups', /--static-groups \(staticGroups\)/],
      [{ trueSequential: false }, 'trueSequential', /--no-true-sequential \(trueSequential\)/],
      [{ calibration: { files: [calib] } }, 'calibration.files', /--calib \(calibration.files\).*runs no calibration/],
      [{ calibration: { seed: 1 } }, 'calibration.seed', /--seed \(calibration.seed\)/],
    ];
    for (const [extra, option, message] of gptqOnly) {
      const out = join(work, `rtn-${option}`);
      const options: QuantizeOptions = { model: modelDir, out, method: 'rtn', bits: 4, groupSize: 32, ...extra };
      await expect(quantize(options), option).rejects.toMatchObject({
        code: 'E_ARGUMENT',
        message: expect.stringMatching(message),
        details: { option },
      });
      expect(existsSync(out), `${option}: nothing written`).toBe(false);
    }
    // an option left undefined is not given
    await quantize({
      model: modelDir,
      out: join(work, 'rtn-plain'),
      method: 'rtn',
      bits: 4,
      damp: undefined,
      calibration: {},
    });
    const summary = await quantize(
      base(join(work, 'gptq-takes'), { damp: 0.05, actOrder: false, staticGroups: false, trueSequential: false }),
    );
    expect(summary.method).toBe('gptq');
  });

  it('dampens singular Hessians (damp 0, 8 calibration tokens for 64+ inputs) and reports it per layer', async () => {
    const summary = await quantize(
      base(join(work, 'singular'), { damp: 0, calibration: { files: [calib], samples: 1, seqLen: 8, seed: 3 } }),
    );
    expect(summary.layers).toHaveLength(35);
    for (const l of summary.layers) {
      expect(l.dampRaises, l.prefix).toBeGreaterThanOrEqual(1);
      expect(l.damp!, l.prefix).toBeGreaterThan(0);
      expect(l.warnings.join(' '), l.prefix).toMatch(/failed with damp_percent 0; raised to 0.01/);
    }
  });

  it('rejects NaN weights with E_NAN and keeps the blocks before them', async () => {
    // A copy of the model with one NaN in block 2's up_proj.
    const nanModel = join(work, 'nan-model');
    await mkdir(nanModel);
    for (const f of await readdir(modelDir)) await copyFile(join(modelDir, f), join(nanModel, f));
    const file = join(nanModel, 'model.safetensors');
    const bytes = await readFile(file);
    const headerLen = Number(bytes.readBigUInt64LE(0));
    const header = JSON.parse(bytes.subarray(8, 8 + headerLen).toString('utf8')) as Record<
      string,
      { data_offsets: [number, number] }
    >;
    const at = 8 + headerLen + header['model.layers.2.mlp.up_proj.weight']!.data_offsets[0] + 4 * 10;
    bytes.writeFloatLE(NaN, at);
    await writeFile(file, bytes);
    const out = join(work, 'nan-out');
    await expect(quantize({ ...base(out), model: nanModel })).rejects.toMatchObject({ code: 'E_NAN' });
    expect(existsSync(out)).toBe(false);
    expect(existsSync(join(resumeDir(out), 'block-1.bin'))).toBe(true);
    await rm(resumeDir(out), { recursive: true, force: true });
  });

  it('calibrates on text sampled from the model itself (calib self), deterministically', async () => {
    const opts = (out: string) =>
      base(out, { calibration: { files: 'self', samples: 3, seqLen: 48, seed: 11 }, actOrder: false });
    const a = await quantize(opts(join(work, 'self-a')));
    const b = await quantize(opts(join(work, 'self-b')));
    expect(a.layers).toHaveLength(35);
    for (const l of a.layers) expect(Number.isFinite(l.loss) && l.loss! > 0).toBe(true);
    const fa = await filesOf(join(work, 'self-a'));
    const fb = await filesOf(join(work, 'self-b'));
    expect(fb.get('model.safetensors')!.equals(fa.get('model.safetensors')!)).toBe(true);
    expect(b.layers.map((l) => l.loss)).toEqual(a.layers.map((l) => l.loss));
  });

  it('runs from the CLI (RTN), and rejects missing options', async () => {
    const out = join(work, 'cli-rtn');
    const log = console.log;
    const lines: string[] = [];
    console.log = (s: string) => lines.push(s);
    try {
      expect(
        await runCli(['--model', modelDir, '--out', out, '--method', 'rtn', '--bits', '3', '--group-size', 'channel']),
      ).toBe(0);
    } finally {
      console.log = log;
    }
    expect(lines.join('\n')).toMatch(/RTN 3-bit, group size -1: 35 linears/);
    const config = JSON.parse(await readFile(join(out, 'quantize_config.json'), 'utf8')) as {
      bits: number;
      group_size: number;
    };
    expect(config).toMatchObject({ bits: 3, group_size: -1 });
    await expect(runCli(['--model', modelDir])).rejects.toMatchObject({
      code: 'E_ARGUMENT',
      message: expect.stringMatching(/--out is required/),
    });
  });
});

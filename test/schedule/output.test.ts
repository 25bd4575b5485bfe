/**
 * The output directory of a quantization (issue 8, items 6-9 and 13): the lock, leftovers of stopped
 * runs, foreign files, durability (every renamed file fsynced first, every rename followed by a fsync
 * of its directory), non-finite weights and perplexities, file-system errors on --out.
 */
import { spawnSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { copyFile, mkdir, mkdtemp, readFile, readdir, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { dataDir, haveData } from '../helpers/data.js';

// The step trace of src/formats/durable.ts is read when that module loads: set it first.
const traceFile = join(tmpdir(), `lowbit-output-trace-${process.pid}.txt`);
process.env.LOWBIT_FAULT_TRACE = traceFile;
const { quantize } = await import('../../src/quantize/index.js');
const { lockPath } = await import('../../src/schedule/output.js');
const { openModel } = await import('../../src/model/model.js');
const { perplexity } = await import('../../src/model/perplexity.js');
const { run: runPpl } = await import('../../src/cli/ppl.js');
type QuantizeOptions = import('../../src/quantize/index.js').QuantizeOptions;

const modelDir = join(dataDir, 'stories260K-hf');
const calib = join(dataDir, 'tinystories-valid.calib.txt');
const ready = haveData('stories260K-hf/model.safetensors', 'tinystories-valid.calib.txt', 'tinystories-valid.eval.txt');

let work: string;
beforeAll(async () => {
  work = await mkdtemp(join(tmpdir(), 'lowbit-output-'));
});
afterAll(async () => {
  await rm(work, { recursive: true, force: true });
  await rm(traceFile, { force: true });
});

const rtn = (out: string, extra: Partial<QuantizeOptions> = {}): QuantizeOptions => ({
  model: modelDir,
  out,
  method: 'rtn',
  bits: 4,
  groupSize: 32,
  ...extra,
});
const gptq = (out: string, extra: Partial<QuantizeOptions> = {}): QuantizeOptions => ({
  model: modelDir,
  out,
  bits: 4,
  groupSize: 32,
  calibration: { files: [calib], samples: 2, seqLen: 16, seed: 1 },
  ...extra,
});

/** A pid that is certainly not running: a child that has exited. */
function deadPid(): number {
  return spawnSync(process.execPath, ['-e', '0']).pid!;
}

async function warningsOf(options: QuantizeOptions): Promise<{ result: unknown; warnings: string[] }> {
  const job = quantize(options);
  const warnings: string[] = [];
  job.on('warning', (w: { message: string }) => warnings.push(w.message));
  return { result: await job, warnings };
}

/** A copy of stories260K with `value` at one weight of block 2's up_proj. */
async function poisonedModel(name: string, value: number): Promise<string> {
  const dir = join(work, name);
  await mkdir(dir);
  for (const f of await readdir(modelDir)) await copyFile(join(modelDir, f), join(dir, f));
  const file = join(dir, 'model.safetensors');
  const bytes = await readFile(file);
  const headerLen = Number(bytes.readBigUInt64LE(0));
  const header = JSON.parse(bytes.subarray(8, 8 + headerLen).toString('utf8')) as Record<
    string,
    { data_offsets: [number, number] }
  >;
  bytes.writeFloatLE(value, 8 + headerLen + header['model.layers.2.mlp.up_proj.weight']!.data_offsets[0] + 4 * 10);
  await writeFile(file, bytes);
  return dir;
}

describe.skipIf(!ready)('the output directory', () => {
  it('is locked: a second run into the same --out is refused while the first runs, and succeeds after', async () => {
    const out = join(work, 'locked');
    const first = quantize(gptq(out));
    let second: unknown;
    first.once('progress', () => {
      second = quantize(rtn(out)).then(
        () => 'finished',
        (e: unknown) => e,
      );
    });
    await first;
    expect(await second).toMatchObject({ code: 'E_LOCKED', message: expect.stringContaining(`pid ${process.pid}`) });
    expect(existsSync(lockPath(out))).toBe(false);
    expect((await readdir(dirname(out))).filter((f) => f.startsWith('.locked'))).toEqual([]);
  });

  it("refuses a live owner's lock file and takes over a dead one's, saying so", async () => {
    const out = join(work, 'stale-lock');
    const host = (await import('node:os')).hostname();
    await writeFile(lockPath(out), JSON.stringify({ pid: process.ppid, host, token: 'x', started: 'then' }));
    await expect(quantize(rtn(out))).rejects.toMatchObject({
      code: 'E_LOCKED',
      message: expect.stringContaining(`pid ${process.ppid}`),
    });
    const dead = deadPid();
    await writeFile(lockPath(out), JSON.stringify({ pid: dead, host, token: 'x', started: 'then' }));
    const { warnings } = await warningsOf(rtn(out));
    expect(warnings.join('\n')).toContain(`took over the lock of a stopped run (pid ${dead})`);
    expect(existsSync(lockPath(out))).toBe(false);
  });

  it('removes what dead runs left beside --out (temporary directories, stale resume state) and says so; keeps foreign files', async () => {
    const out = join(work, 'orphans');
    const dead = deadPid();
    const orphan = join(work, `.orphans.tmp-${dead}-abc123`);
    await mkdir(orphan);
    await writeFile(join(orphan, 'model.safetensors'), 'partial');
    const foreign = join(work, '.orphans.tmp-notapid');
    await writeFile(foreign, 'keep me');
    const live = join(work, `.orphans.tmp-${process.ppid}-abc123`);
    await mkdir(live);
    const { warnings } = await warningsOf(rtn(out));
    expect(existsSync(orphan)).toBe(false);
    expect(warnings.join('\n')).toContain(`removed ${orphan}, left by a stopped run (pid ${dead})`);
    expect(existsSync(foreign)).toBe(true);
    expect(existsSync(live)).toBe(true); // its owner still runs
    await rm(live, { recursive: true });
  });

  it('never deletes files that appear in --out during a run: the run fails, they stay, --resume finishes once they are gone', async () => {
    const out = join(work, 'intruded');
    await mkdir(out);
    const job = quantize(gptq(out));
    job.once('progress', () => void writeFile(join(out, 'notes.txt'), 'mine'));
    await expect(job).rejects.toMatchObject({
      code: 'E_IO',
      message: expect.stringMatching(/appeared during the run and is not empty/),
    });
    expect(await readFile(join(out, 'notes.txt'), 'utf8')).toBe('mine');
    await rm(join(out, 'notes.txt'));
    const resumed = await quantize(gptq(out, { resume: true }));
    expect(resumed.resumedBlocks).toBe(5);
    const fresh = join(work, 'intruded-ref');
    await quantize(gptq(fresh));
    for (const f of await readdir(fresh))
      expect((await readFile(join(out, f))).equals(await readFile(join(fresh, f))), f).toBe(true);
  });

  it('fsyncs every file before its rename and every directory after a rename (resume state, configs, the output)', async () => {
    await writeFile(traceFile, '');
    await quantize(gptq(join(work, 'durable')));
    const steps = (await readFile(traceFile, 'utf8'))
      .trim()
      .split('\n')
      .map((l) => l.split(' ') as [string, string, string]);
    const renames = steps.map((s, i) => [s, i] as const).filter(([s]) => s[1] === 'rename');
    expect(renames.length).toBeGreaterThan(20);
    for (const [[, , to], i] of renames) {
      expect(steps[i + 1], `rename ${to} is followed by a fsync of its directory`).toEqual([
        expect.any(String),
        'fsync-dir',
        dirname(to),
      ]);
    }
    // every created (temporary) file is fsynced before it is renamed
    const created = steps.filter((s) => s[1] === 'create' || s[1] === 'copy').map((s) => s[2]);
    const synced = new Set(steps.filter((s) => s[1] === 'fsync').map((s) => s[2]));
    for (const f of created) if (!f.includes('.lowbit-lock.tmp')) expect(synced.has(f), `${f} is fsynced`).toBe(true);
    for (const must of ['state.json', 'block-0.bin', 'config.json', 'quantize_config.json', 'model.safetensors']) {
      expect(
        renames.some(([s]) => s[2].endsWith(`/${must}`)),
        must,
      ).toBe(true);
    }
  });

  it('rejects NaN and infinite weights with E_NAN naming the tensor, for RTN as for GPTQ', async () => {
    const nan = await poisonedModel('nan-model', NaN);
    const inf = await poisonedModel('inf-model', -Infinity);
    const tensor = 'model.layers.2.mlp.up_proj.weight';
    await expect(quantize(rtn(join(work, 'nan-rtn'), { model: nan }))).rejects.toMatchObject({
      code: 'E_NAN',
      details: { tensor },
      message: expect.stringContaining(tensor),
    });
    await expect(quantize(rtn(join(work, 'inf-rtn'), { model: inf }))).rejects.toMatchObject({
      code: 'E_NAN',
      details: { tensor },
    });
    await expect(quantize(gptq(join(work, 'inf-gptq'), { model: inf }))).rejects.toMatchObject({
      code: 'E_NAN',
      details: { tensor },
    });
    // a perplexity that comes out NaN is an error, not "ppl": null
    const model = await openModel(nan);
    try {
      await expect(
        perplexity(model, await readFile(join(dataDir, 'tinystories-valid.eval.txt'), 'utf8'), {
          seqLen: 64,
          maxWindows: 2,
        }),
      ).rejects.toMatchObject({ code: 'E_NAN' });
    } finally {
      await model.close();
    }
    await expect(
      runPpl([
        '--model',
        nan,
        '--data',
        join(dataDir, 'tinystories-valid.eval.txt'),
        '--seq-len',
        '64',
        '--max-windows',
        '1',
        '--json',
      ]),
    ).rejects.toMatchObject({ code: 'E_NAN' });
  });

  it('turns file-system errors on --out into E_IO naming the path', async () => {
    const file = join(work, 'a-file');
    await writeFile(file, 'x');
    const err = await quantize(rtn(join(file, 'out'))).then(
      () => undefined,
      (e: unknown) => e,
    );
    expect(err).toMatchObject({
      code: 'E_IO',
      message: expect.stringMatching(/is not a directory \((ENOTDIR|EEXIST)\)/),
    });
    expect((err as Error).message).toContain(file);
    await expect(quantize(rtn(file))).rejects.toMatchObject({
      code: 'E_IO',
      message: expect.stringContaining(`${file} exists and is not an empty directory`),
    });
    if (process.getuid?.() !== 0) {
      const locked = join(work, 'readonly');
      await mkdir(locked, { mode: 0o500 });
      await expect(quantize(rtn(join(locked, 'out')))).rejects.toMatchObject({
        code: 'E_IO',
        message: expect.stringMatching(/permission denied \((EACCES|EPERM)\)/),
      });
    }
  });
});

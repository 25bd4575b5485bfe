/**
 * Crash injection (issue 8, items 5 and 6): a small GPTQ quantization of stories260K runs in a child
 * process (dist/cli/bin.js) that kills itself with SIGKILL just before its n-th file-system step (LOWBIT_FAULT_AT=n,
 * see src/formats/durable.ts); `lowbit quantize --resume` then finishes it. At every kill point the
 * resumed checkpoint must be byte-identical to an uninterrupted run's, nothing may be left beside the
 * output (temporary directories, resume state, lock), and leftovers that were removed must be
 * reported as warnings.
 *
 * Catches: a resume state whose parts are committed separately (the hidden states of block k+1 with
 * the state of block k: block k re-quantized on its own outputs), a stale resume directory after
 * the final rename, orphaned temporary directories, a lock that is not taken over from a dead run.
 *
 * `npm test` kills at the first occurrence of every distinct step (kind and file, block numbers left
 * out), at every step of block 1's commit (the first with a committed block before it), at the last
 * block's commit and at the last checkpoint data write. LOWBIT_CRASH_ALL=1 kills
 * at every step (290 of them): `LOWBIT_CRASH_ALL=1 npx vitest run test/schedule/crash.test.ts`.
 */
import { spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import { mkdir, mkdtemp, readFile, readdir, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { hashes } from '../helpers/files.js';
import { dataDir, haveData, projectRoot } from '../helpers/data.js';
import { addonPath, native } from '../../src/native.js';

const ready = haveData('stories260K-hf/model.safetensors', 'tinystories-valid.calib.txt');
const all = process.env.LOWBIT_CRASH_ALL === '1';
const args = (out: string) => [
  'quantize',
  '--model',
  join(dataDir, 'stories260K-hf'),
  '--out',
  out,
  '--calib',
  join(dataDir, 'tinystories-valid.calib.txt'),
  '--samples',
  '2',
  '--seq-len',
  '16',
  '--seed',
  '3',
  '--group-size',
  '32',
  '--act-order',
];

let work: string;
let bundle: string;
let addon: string;

interface Run {
  code: number | null;
  signal: NodeJS.Signals | null;
  stderr: string;
}

function runCli(argv: string[], env: Record<string, string> = {}): Promise<Run> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [join(bundle, 'bin.js'), ...argv], {
      env: { ...process.env, LOWBIT_ADDON: addon, ...env },
      stdio: ['ignore', 'ignore', 'pipe'],
    });
    let stderr = '';
    child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    child.on('error', reject);
    child.on('close', (code, signal) => resolve({ code, signal, stderr }));
  });
}

beforeAll(async () => {
  work = await mkdtemp(join(tmpdir(), 'lowbit-crash-'));
  addon = addonPath();
  native();
  // dist/cli/bin.js, compiled by test/setup/dist.ts when src/ is newer: the CLI as a user runs it.
  bundle = join(projectRoot, 'dist', 'cli');
});
afterAll(async () => {
  await rm(work, { recursive: true, force: true });
});

describe.skipIf(!ready)('a quantization killed at any file-system step resumes to the same bytes', () => {
  it('kill -9 before step n, then --resume: byte-identical checkpoint, nothing left over', async () => {
    // The uninterrupted run, tracing its steps.
    const refParent = join(work, 'ref');
    await mkdir(refParent);
    const trace = join(work, 'trace.txt');
    const ref = await runCli(args(join(refParent, 'out')), { LOWBIT_FAULT_TRACE: trace });
    expect(ref.code, ref.stderr).toBe(0);
    const want = await hashes(join(refParent, 'out'));
    expect(await readdir(refParent)).toEqual(['out']);
    const steps = (await readFile(trace, 'utf8'))
      .trim()
      .split('\n')
      .map((line) => {
        const [n, kind, path] = line.split(' ');
        // the site: kind and file, with pids, random suffixes and block numbers taken out
        const file = path!
          .slice(refParent.length)
          .replace(/\d+/g, '#')
          .replace(/tmp-#-[a-z0-9#]+/g, 'tmp')
          .replace(
            /(\.out\.tmp\/\.?)(config|quantize_config|tokenizer|tokenizer_config|generation_config)\.(json|model)/,
            '$1<small file>',
          );
        return { n: Number(n), kind: kind!, site: `${kind} ${file}` };
      });
    expect(steps.length).toBeGreaterThan(100);

    let points: number[];
    if (all) points = steps.map((s) => s.n);
    else {
      const chosen = new Set<number>();
      const seen = new Set<string>();
      for (const s of steps) {
        if (seen.has(s.site)) continue;
        seen.add(s.site);
        chosen.add(s.n);
      }
      // every step after block 0's commit up to just after block 1's (the first commit with a state
      // before it), the last block's commit, and the last checkpoint data write
      const commits = steps.filter((s) => s.kind === 'rename' && s.site.endsWith('/state.json'));
      for (let n = commits[0]!.n + 1; n <= commits[1]!.n + 1; n++)
        if (!steps[n - 1]!.site.includes('.model.safetensors.tmp')) chosen.add(n);
      const data = steps.filter((s) => s.site.includes('.model.safetensors.tmp'));
      chosen.add(commits[commits.length - 2]!.n).add(data[data.length - 1]!.n);
      points = [...chosen].sort((a, b) => a - b);
    }

    const failures: string[] = [];
    const one = async (n: number) => {
      const parent = join(work, `kill-${n}`);
      await mkdir(parent);
      const out = join(parent, 'out');
      const killed = await runCli(args(out), { LOWBIT_FAULT_AT: String(n) });
      if (killed.signal !== 'SIGKILL')
        return void failures.push(`step ${n}: the run was not killed (${killed.code} ${killed.stderr})`);
      const leftovers = (await readdir(parent)).filter((f) => f !== 'out');
      // Killed after its resume state was gone, the run had finished: the checkpoint is in place, and
      // a resume may only say there is nothing to resume (after cleaning up).
      const complete =
        existsSync(out) &&
        JSON.stringify(await hashes(out)) === JSON.stringify(want) &&
        !leftovers.some((f) => f.endsWith('.lowbit-resume'));
      const resumed = await runCli([...args(out), '--resume']);
      if (resumed.code !== 0 && !(complete && /nothing to resume/.test(resumed.stderr))) {
        return void failures.push(
          `step ${n} (${steps[n - 1]!.site}): resume exited ${resumed.code}: ${resumed.stderr}`,
        );
      }
      const got = existsSync(out) ? await hashes(out) : {};
      if (JSON.stringify(got) !== JSON.stringify(want))
        failures.push(`step ${n} (${steps[n - 1]!.site}): the resumed checkpoint differs`);
      const after = await readdir(parent);
      if (after.length !== 1) failures.push(`step ${n} (${steps[n - 1]!.site}): left ${after.join(', ')}`);
      // Leftovers of the killed run other than a resumable state are cleaned up with a warning.
      const stale = leftovers.filter((f) => !f.endsWith('.lowbit-resume'));
      if (stale.length > 0 && !/warning: (removed|took over)/.test(resumed.stderr))
        failures.push(`step ${n}: removed ${stale.join(', ')} without saying so`);
      await rm(parent, { recursive: true, force: true });
    };
    const queue = [...points];
    await Promise.all(
      Array.from({ length: 3 }, async () => {
        for (let n = queue.shift(); n !== undefined; n = queue.shift()) await one(n);
      }),
    );
    expect(failures, `${failures.length} of ${points.length} kill points failed`).toEqual([]);
  }, 1_200_000);
});

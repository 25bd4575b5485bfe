/**
 * The CLI as a person meets it, through the real executable in child processes: --version and help,
 * exit status 2 for every usage error, errors in CLI terms (the option and its allowed values),
 * --device checked for RTN as for GPTQ, a llama2.c model without --tokenizer refused before anything
 * is printed, generate saying when the context is full, a bad LOWBIT_ADDON refused, and `devices`
 * naming the addon file and its build.
 */
import { existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, expect, test } from 'vitest';
import { devices } from '../../src/devices.js';
import { loadTokenizer } from '../../src/formats/tokenizer.js';
import { dataFile, projectRoot } from '../helpers/data.js';
import { lowbit } from './run.js';

const cwd = mkdtempSync(join(tmpdir(), 'lowbit-cli-'));
afterAll(() => rmSync(cwd, { recursive: true, force: true }));

test('--version prints the package version; help and help <command> print usage', async () => {
  const version = await lowbit(['--version']);
  expect(version.code).toBe(0);
  expect(version.stdout.trim()).toBe(
    (JSON.parse(readFileSync(join(projectRoot, 'package.json'), 'utf8')) as { version: string }).version,
  );
  const help = await lowbit(['help']);
  expect(help.code).toBe(0);
  for (const c of ['quantize', 'ppl', 'generate', 'inspect', 'convert', 'devices'])
    expect(help.stdout).toContain(`  ${c}`);
  const one = await lowbit(['help', 'quantize']);
  expect(one.code).toBe(0);
  expect(one.stdout).toMatch(/^usage: lowbit quantize/);
});

test('usage errors exit 2 and name the option and what it accepts', async () => {
  const cases: [string[], RegExp][] = [
    [[], /usage: lowbit <command>/],
    [['frobnicate'], /unknown command 'frobnicate'/],
    [['help', 'frobnicate'], /unknown command 'frobnicate'/],
    [['quantize', '--out', 'q', '--bogus'], /Unknown option '--bogus'/],
    [['quantize', '--out', 'q', '--bits', '5'], /--bits must be 2, 3, 4 or 8, not "5"/],
    [['quantize', '--out', 'q', '--group-size', '0'], /--group-size must be a positive integer, or 'channel'/],
    [['quantize', '--out', 'q', '--damp', '2'], /--damp must be a fraction in \[0, 1\)/],
    [['quantize', '--out', 'q', '--calib', 'nowhere.txt'], /--calib nowhere\.txt: no such file/],
    [['quantize', '--out', 'q', '--device', 'gpu'], /--device must be cpu, cuda or cuda:N/],
    // RTN refuses GPTQ's options instead of ignoring them (and the CLI passes only what was given)
    [
      ['quantize', '--out', 'q', '--method', 'rtn', '--damp', '0.1'],
      /--damp \(damp\) is a GPTQ option and RTN does not take it/,
    ],
    [['quantize', '--out', 'q', '--method', 'rtn', '--act-order'], /--act-order \(actOrder\) is a GPTQ option/],
    [
      ['quantize', '--out', 'q', '--method', 'rtn', '--samples', '4'],
      /--samples \(calibration.samples\) .*RTN runs no calibration/,
    ],
    [['quantize', '--model', dataFile('stories260K-hf')], /--out is required/],
    [['ppl', '--model', dataFile('stories260K-hf')], /--data is required/],
    [
      ['ppl', '--model', dataFile('stories260K-hf'), '--data', 'x.txt', '--cpu-activations', 'int4'],
      /--cpu-activations must be int8 or f32, not "int4"/,
    ],
    [['generate', '--model', dataFile('stories260K-hf'), '--prompt', 'x', '--top-p', '2'], /--top-p must be/],
  ];
  for (const [args, message] of cases) {
    const r = await lowbit(args, { cwd });
    expect(r.code, `lowbit ${args.join(' ')}: ${r.stderr}`).toBe(2);
    expect(r.stderr, args.join(' ')).toMatch(message);
  }
  expect(existsSync(join(cwd, 'q'))).toBe(false);
});

test.skipIf(devices().some((d) => d.kind === 'cuda'))(
  'RTN checks --device like GPTQ: cuda without a GPU is an error, and nothing is written',
  async () => {
    const r = await lowbit(['quantize', '--method', 'rtn', '--device', 'cuda', '--out', 'rtn-cuda'], { cwd });
    expect(r.code).toBe(1);
    expect(r.stderr).toContain('E_CUDA_UNAVAILABLE');
    expect(existsSync(join(cwd, 'rtn-cuda'))).toBe(false);
  },
);

test('generate: a llama2.c model without --tokenizer is refused before anything is printed', async () => {
  const r = await lowbit(
    ['generate', '--model', dataFile('stories260K.bin'), '--prompt', 'Once upon a time', '--device', 'cpu'],
    { cwd },
  );
  expect(r.code).toBe(2);
  expect(r.stdout).toBe('');
  expect(r.stderr).toMatch(/has no tokenizer .*--tokenizer/);
  const ok = await lowbit(
    [
      'generate',
      '--model',
      dataFile('stories260K.bin'),
      '--tokenizer',
      dataFile('tok512.bin'),
      '--prompt',
      'Once upon a time',
      '--max-tokens',
      '8',
      '--temperature',
      '0',
      '--device',
      'cpu',
    ],
    { cwd },
  );
  expect(ok.code, ok.stderr).toBe(0);
  expect(ok.stdout.startsWith('Once upon a time')).toBe(true);
});

test("generate says when it stops because the model's context is full (and not otherwise)", async () => {
  const tok = await loadTokenizer(dataFile('stories260K-hf'));
  const text = readFileSync(dataFile('tinystories-valid.eval.txt'), 'utf8');
  let chars = 900;
  while (tok.encode(text.slice(0, chars + 10), { bos: true }).length <= 506) chars += 10;
  const prompt = text.slice(0, chars); // ~506 tokens of the 512-token context
  const full = await lowbit(
    [
      'generate',
      '--model',
      dataFile('stories260K-hf'),
      '--prompt',
      prompt,
      '--max-tokens',
      '50',
      '--seed',
      '1',
      '--device',
      'cpu',
    ],
    { cwd },
  );
  expect(full.code, full.stderr).toBe(0);
  expect(full.stderr).toMatch(/stopped after \d+ tokens: the model's context of 512 tokens is full/);
  const short = await lowbit(
    [
      'generate',
      '--model',
      dataFile('stories260K-hf'),
      '--prompt',
      'Once upon a time',
      '--max-tokens',
      '5',
      '--seed',
      '1',
      '--device',
      'cpu',
    ],
    { cwd },
  );
  expect(short.code, short.stderr).toBe(0);
  expect(short.stderr).not.toContain('context');
});

test('LOWBIT_ADDON pointing at nothing is an error naming it, not a silent fallback', async () => {
  const r = await lowbit(['devices'], { cwd, env: { LOWBIT_ADDON: join(cwd, 'missing.node') } });
  expect(r.code).toBe(1);
  expect(r.stderr).toContain('E_ADDON_LOAD');
  expect(r.stderr).toContain(join(cwd, 'missing.node'));
  expect(r.stderr).toContain('LOWBIT_ADDON is set');
});

test('devices names the addon file it loaded and its build: source hash, SIMD levels, CUDA', async () => {
  const r = await lowbit(['devices', '--json'], { cwd });
  expect(r.code, r.stderr).toBe(0);
  const { addon } = JSON.parse(r.stdout) as {
    addon: { path: string; sourceHash: string; simd: string; activeSimd: string; cuda: boolean };
  };
  expect(existsSync(addon.path)).toBe(true);
  expect(addon.sourceHash).toMatch(/^[0-9a-f]+$/);
  const text = await lowbit(['devices'], { cwd });
  expect(text.stdout).toContain(`addon    ${addon.path}`);
  expect(text.stdout).toContain(
    `sources ${addon.sourceHash}; SIMD: ${addon.simd} detected, ${addon.activeSimd} in use; CUDA: `,
  );
});

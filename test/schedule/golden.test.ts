/**
 * Checkpoint bytes are frozen: quantizing stories260K with a few fixed configurations must write
 * exactly the files (SHA-256 of each) recorded in golden.json from the code before the scheduler /
 * weight-format refactors (issue 9: "checkpoints are byte-identical to before"). Catches any change
 * in output bytes: a reordered tensor, a renamed key, a different default, a changed rounding.
 *
 * Forward passes and packed products dispatch on the SIMD level, so hashes are kept per level (every
 * level the recording machine has; a level never recorded is skipped).
 * To re-record after an intended format change: LOWBIT_GOLDEN_RECORD=1 npx vitest run test/schedule/golden.test.ts
 */
import { existsSync, readFileSync } from 'node:fs';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { hashes } from '../helpers/files.js';
import { dataDir, haveData, projectRoot } from '../helpers/data.js';
import { availableSimdLevels, forceSimd, type SimdLevel } from '../helpers/simd.js';
import { quantize, type QuantizeOptions } from '../../src/quantize/index.js';
import { native } from '../../src/native.js';

const modelDir = join(dataDir, 'stories260K-hf');
const calib = join(dataDir, 'tinystories-valid.calib.txt');
const ready = haveData('stories260K-hf/model.safetensors', 'tinystories-valid.calib.txt');
const goldenFile = join(projectRoot, 'test/schedule/golden.json');
const record = process.env.LOWBIT_GOLDEN_RECORD === '1';

const calibration = { files: [calib], samples: 4, seqLen: 64, seed: 5 };
const CONFIGS: Record<string, Omit<QuantizeOptions, 'model' | 'out'>> = {
  'rtn-4bit-g32': { method: 'rtn', bits: 4, groupSize: 32 },
  'gptq-4bit-g32-actorder': { method: 'gptq', bits: 4, groupSize: 32, actOrder: true, calibration },
  'gptq-3bit-channel': { method: 'gptq', bits: 3, groupSize: -1, calibration },
  'gptq-2bit-g64-sym-v2-static': {
    method: 'gptq',
    bits: 2,
    groupSize: 64,
    sym: true,
    actOrder: true,
    staticGroups: true,
    checkpointFormat: 'gptq_v2',
    calibration,
  },
  'gptq-8bit-g128-mse-nts': {
    method: 'gptq',
    bits: 8,
    groupSize: 128,
    mse: true,
    trueSequential: false,
    damp: 0.05,
    calibration,
  },
};

type Golden = Partial<Record<SimdLevel, Record<string, Record<string, string>>>>;

let work: string;
beforeAll(async () => {
  work = await mkdtemp(join(tmpdir(), 'lowbit-golden-'));
  native().setThreads(Number(process.env.LOWBIT_GOLDEN_THREADS ?? 2));
});
afterAll(async () => {
  forceSimd('auto');
  native().setThreads(0);
  await rm(work, { recursive: true, force: true });
});

describe.skipIf(!ready)('checkpoint bytes are unchanged (golden SHA-256, stories260K)', () => {
  const levels = availableSimdLevels();
  const golden = (existsSync(goldenFile) ? JSON.parse(readFileSync(goldenFile, 'utf8')) : {}) as Golden;
  const recorded: Golden = {};

  for (const level of levels) {
    const want = golden[level];
    it.skipIf(!record && !want)(
      `${level}: every output file matches (skipped where this level was never recorded)`,
      async () => {
        forceSimd(level);
        for (const [name, config] of Object.entries(CONFIGS)) {
          const out = join(work, `${level}-${name}`);
          await quantize({ model: modelDir, out, ...config });
          const got = await hashes(out);
          if (record) (recorded[level] ??= {})[name] = got;
          else expect(got, `${name} at simd ${level}`).toEqual(want![name]);
        }
      },
    );
  }

  it.runIf(record)('records golden.json', async () => {
    await writeFile(goldenFile, JSON.stringify({ ...golden, ...recorded }, null, 2) + '\n');
  });
});

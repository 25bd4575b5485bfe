/** Rope frequencies from configs (default, linear, llama3) and the ppl / generate commands. */
import { expect, test, vi } from 'vitest';
import { ropeFrequencies } from '../../src/model/rope.js';
import { run as runPpl } from '../../src/cli/ppl.js';
import { run as runGenerate } from '../../src/cli/generate.js';
import { llamaConfig } from './random-model.js';
import { dataPath } from './data.js';

const shape = {
  dim: 64,
  hidden: 100,
  layers: 1,
  heads: 2,
  kvHeads: 1,
  headDim: 32,
  vocab: 10,
  maxSeq: 64,
  tied: true,
  qkvBias: false,
};

test('default rope: inv_freq[i] = 1 / theta^(2i/d), in f32', () => {
  const { invFreq, scale } = ropeFrequencies(llamaConfig(shape, 500000));
  expect(scale).toBe(1);
  expect(invFreq.length).toBe(16);
  for (let i = 0; i < 16; i++) expect(Math.abs(invFreq[i]! / 500000 ** (-(2 * i) / 32) - 1)).toBeLessThan(3e-7);
});

test('linear rope divides every frequency by the factor; llama3 keeps short wavelengths and divides long ones', () => {
  const base = ropeFrequencies(llamaConfig(shape, 500000)).invFreq;
  const linear = ropeFrequencies({
    ...llamaConfig(shape, 500000),
    rope: { theta: 500000, type: 'linear', factor: 4, partialRotaryFactor: 1 },
  }).invFreq;
  for (let i = 0; i < 16; i++) expect(linear[i]).toBe(Math.fround(base[i]! / 4));
  const rope = {
    theta: 500000,
    type: 'llama3' as const,
    factor: 8,
    lowFreqFactor: 1,
    highFreqFactor: 4,
    originalMaxPositionEmbeddings: 8192,
    partialRotaryFactor: 1,
  };
  const l3 = ropeFrequencies({ ...llamaConfig(shape, 500000), rope }).invFreq;
  let kept = 0,
    divided = 0,
    blended = 0;
  for (let i = 0; i < 16; i++) {
    const wavelen = (2 * Math.PI) / base[i]!;
    if (wavelen < 8192 / 4) {
      expect(l3[i]).toBe(base[i]);
      kept++;
    } else if (wavelen > 8192 / 1) {
      expect(l3[i]).toBe(Math.fround(base[i]! / 8));
      divided++;
    } else {
      expect(l3[i]!).toBeLessThan(base[i]!);
      expect(l3[i]!).toBeGreaterThan(base[i]! / 8);
      blended++;
    }
  }
  expect(kept * divided * blended).toBeGreaterThan(0);
  expect(() =>
    ropeFrequencies({ ...llamaConfig(shape), rope: { theta: 1e4, type: 'yarn', factor: 4, partialRotaryFactor: 1 } }),
  ).toThrow(expect.objectContaining({ code: 'E_UNSUPPORTED' }));
});

const modelDir = dataPath('stories260K-hf');
const textFile = dataPath('tinystories-valid.txt');

test('lowbit ppl --json and lowbit generate', async () => {
  const out: string[] = [];
  const log = vi.spyOn(console, 'log').mockImplementation((s: string) => void out.push(s));
  const write = vi
    .spyOn(process.stdout, 'write')
    .mockImplementation((s: string | Uint8Array) => (out.push(String(s)), true));
  try {
    expect(
      await runPpl(['--model', modelDir, '--data', textFile, '--max-windows', '3', '--device', 'cpu', '--json']),
    ).toBe(0);
    const result = JSON.parse(out.join(''));
    expect(result.windows).toBe(3);
    expect(result.seqLen).toBe(512);
    expect(result.ppl).toBeCloseTo(Math.exp(result.nll), 10);
    out.length = 0;
    expect(
      await runGenerate([
        '--model',
        modelDir,
        '--prompt',
        'Once upon a time',
        '--max-tokens',
        '12',
        '--temperature',
        '0',
        '--device',
        'cpu',
      ]),
    ).toBe(0);
    const text = out.join('');
    expect(text.startsWith('Once upon a time')).toBe(true);
    expect(text.length).toBeGreaterThan('Once upon a time'.length + 20);
  } finally {
    log.mockRestore();
    write.mockRestore();
  }
  await expect(runPpl(['--model', modelDir])).rejects.toMatchObject({ code: 'E_ARGUMENT' });
  await expect(runGenerate(['--model', modelDir, '--prompt', 'x', '--top-p', '2'])).rejects.toMatchObject({
    code: 'E_ARGUMENT',
  });
});

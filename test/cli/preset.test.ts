/**
 * --preset vllm: the settings vLLM's fast GPTQ kernels take (4-bit, sym, group 128, act-order only
 * through static groups so desc_act stays false and g_idx trivial), and warnings for options or
 * model shapes they cannot take. Catches a preset that leaves sym off, writes desc_act true or a
 * permuted g_idx, or stays silent about shapes Marlin refuses (stories260K's 64 and 172).
 */
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, expect, test } from 'vitest';
import { applyPreset, vllmWarnings } from '../../src/presets.js';
import { lowbit } from './run.js';

const cwd = mkdtempSync(join(tmpdir(), 'lowbit-preset-'));
afterAll(() => rmSync(cwd, { recursive: true, force: true }));

const llama2_7b = { hiddenSize: 4096, intermediateSize: 11008, numHeads: 32, numKvHeads: 32, headDim: 128 };
const llama3_8b = { hiddenSize: 4096, intermediateSize: 14336, numHeads: 32, numKvHeads: 8, headDim: 128 };
const stories260K = { hiddenSize: 64, intermediateSize: 172, numHeads: 8, numKvHeads: 4, headDim: 8 };

test('the vllm preset: 4-bit, sym, group 128, gptq v1; act-order only with static groups; explicit choices kept', () => {
  expect(applyPreset('vllm', {})).toEqual({
    bits: 4,
    groupSize: 128,
    sym: true,
    actOrder: false,
    staticGroups: false,
    checkpointFormat: 'gptq',
  });
  expect(applyPreset('vllm', { actOrder: true })).toMatchObject({ actOrder: true, staticGroups: true });
  expect(applyPreset('vllm', { bits: 8, groupSize: -1 })).toMatchObject({ bits: 8, groupSize: -1, sym: true });
});

test('warnings: none for Llama 2 7B and Llama 3 8B (up to 8 GPUs); each unsupported choice or shape named', () => {
  const vllm = applyPreset('vllm', {});
  expect(vllmWarnings(vllm, llama2_7b)).toEqual([]);
  expect(vllmWarnings(vllm, llama2_7b, 2)).toEqual([]);
  for (const tp of [1, 2, 4, 8]) expect(vllmWarnings(vllm, llama3_8b, tp), `tp ${tp}`).toEqual([]);
  // Llama 2 7B's 11008 over 8 GPUs is 1376 per GPU: not a multiple of 64 (gate/up outputs) nor of 128 (down inputs)
  expect(vllmWarnings(vllm, llama2_7b, 8)).toEqual([
    expect.stringMatching(/^gate_proj \(11008x4096\): output size 11008\/8 is not a multiple of 64/),
    expect.stringMatching(/^up_proj \(11008x4096\): output size 11008\/8 is not a multiple of 64/),
    expect.stringMatching(/^down_proj \(4096x11008\): input size 11008\/8 is not a multiple of 128/),
  ]);
  expect(vllmWarnings({ ...vllm, bits: 3 })).toEqual([expect.stringContaining('3-bit')]);
  expect(vllmWarnings({ ...vllm, groupSize: 256 })).toEqual([expect.stringContaining('group size 256')]);
  expect(vllmWarnings({ ...vllm, sym: false })).toEqual([expect.stringContaining('sym')]);
  expect(vllmWarnings({ ...vllm, actOrder: true, staticGroups: false })).toEqual([expect.stringContaining('desc_act')]);
  expect(vllmWarnings({ ...vllm, checkpointFormat: 'gptq_v2' })).toEqual([expect.stringContaining('gptq_v2')]);
  const small = vllmWarnings(vllm, stories260K);
  expect(small.find((w) => w.startsWith('q_proj'))).toMatch(/input size 64 is not a multiple of 128/);
  expect(small.find((w) => w.startsWith('down_proj'))).toMatch(/input size 172 is not a multiple of 128/);
  expect(small.find((w) => w.startsWith('k_proj'))).toMatch(/output size 32 is not a multiple of 64/);
});

test('lowbit quantize --preset vllm --act-order: sym, group 128, static groups, desc_act false, trivial g_idx; warns about the shapes', async () => {
  const r = await lowbit(
    ['quantize', '--preset', 'vllm', '--act-order', '--samples', '8', '--seq-len', '128', '--out', 'q'],
    { cwd },
  );
  expect(r.code, r.stderr).toBe(0);
  expect(r.stderr).toMatch(/warning \(--preset vllm\): q_proj \(64x64\): input size 64 is not a multiple of 128/);
  // the warnings judge the shapes as written: intermediate_size 172 padded to 256 fits group 128
  expect(r.stderr).toMatch(/warning \(--preset vllm\): gate_proj \(256x64\): input size 64 is/);
  expect(r.stderr).not.toMatch(/warning[^\n]*down_proj/);
  const q = JSON.parse(readFileSync(join(cwd, 'q', 'quantize_config.json'), 'utf8')) as Record<string, unknown>;
  expect(q).toMatchObject({
    bits: 4,
    group_size: 128,
    sym: true,
    static_groups: true,
    desc_act: false,
    checkpoint_format: 'gptq',
  });
  const bytes = readFileSync(join(cwd, 'q', 'model.safetensors'));
  const headerLength = Number(bytes.readBigUInt64LE(0));
  const header = JSON.parse(bytes.subarray(8, 8 + headerLength).toString('utf8')) as Record<
    string,
    { dtype: string; shape: number[]; data_offsets: [number, number] }
  >;
  const gIdx = Object.entries(header).filter(([name]) => name.endsWith('.g_idx'));
  expect(gIdx.length).toBe(35);
  for (const [name, info] of gIdx) {
    const K = info.shape[0]!;
    const values = new Int32Array(
      bytes.buffer.slice(
        bytes.byteOffset + 8 + headerLength + info.data_offsets[0],
        bytes.byteOffset + 8 + headerLength + info.data_offsets[1],
      ),
    );
    expect(Array.from(values), name).toEqual(Array.from({ length: K }, (_, i) => Math.floor(i / 128)));
  }
  const bad = await lowbit(['quantize', '--preset', 'tgi', '--out', 'x'], { cwd });
  expect(bad.code).toBe(2);
  expect(bad.stderr).toContain('--preset must be vllm');
});

/**
 * `lowbit quantize` as a new user meets it, in a child process started in an empty directory: with
 * no --model it quantizes the bundled stories260K on the bundled calibration text (the package's
 * data/, found from the code's own location, not the working directory); with a --model but no
 * --calib, GPTQ stops with a usage error that says how to give calibration text; a bf16 model keeps
 * its dense tensors (embeddings, norms) in bf16 (catches a writer widening them to fp32); `ppl
 * --cpu-activations f32` runs the exact path (catches a flag that never reaches the model).
 */
import { existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, expect, test } from 'vitest';
import { dataFile } from '../helpers/data.js';
import { lowbit } from './run.js';

const cwd = mkdtempSync(join(tmpdir(), 'lowbit-cli-default-'));
afterAll(() => rmSync(cwd, { recursive: true, force: true }));

test('no --model: the bundled stories260K on its bundled calibration text, and the result scores close to fp32', async () => {
  const run = await lowbit(['quantize', '--out', 'q', '--samples', '16', '--seq-len', '256', '--json'], { cwd });
  expect(run.code, run.stderr).toBe(0);
  // says what it is doing before it starts
  expect(run.stderr.split('\n')[0]).toMatch(
    /no --model given: quantizing the bundled stories260K .*stories260K-hf.* on its bundled calibration text .*tinystories-valid\.calib\.txt/,
  );
  const summary = JSON.parse(run.stdout) as { method: string; bits: number; layers: unknown[] };
  expect(summary.method).toBe('gptq');
  expect(summary.layers).toHaveLength(35);
  const config = JSON.parse(readFileSync(join(cwd, 'q', 'config.json'), 'utf8')) as {
    quantization_config?: { bits: number };
  };
  expect(config.quantization_config?.bits).toBe(4);

  // the checkpoint is the bundled model: its perplexity on the held-out half is near the fp32 one
  const evalText = dataFile('tinystories-valid.eval.txt');
  const ppl = async (model: string, ...extra: string[]) => {
    const r = await lowbit(
      ['ppl', '--model', model, '--data', evalText, '--max-windows', '8', '--device', 'cpu', '--json', ...extra],
      { cwd },
    );
    expect(r.code, r.stderr).toBe(0);
    return (JSON.parse(r.stdout) as { ppl: number }).ppl;
  };
  const [quantized, fp32] = [await ppl(join(cwd, 'q')), await ppl(dataFile('stories260K-hf'))];
  expect(fp32).toBeLessThan(6);
  expect(quantized).toBeGreaterThan(fp32);
  expect(quantized).toBeLessThan(fp32 * 1.5);

  // --cpu-activations f32 reaches the forward pass (exact activations: another arithmetic, so another
  // perplexity), and the default int8 path lands within 0.5% of it
  const exact = await ppl(join(cwd, 'q'), '--cpu-activations', 'f32');
  expect(exact).not.toBe(quantized);
  expect(Math.abs(Math.log(quantized / exact))).toBeLessThan(0.005);
});

test('GPTQ on a given --model without --calib: exit 2, naming --calib and --calib self, nothing written', async () => {
  const run = await lowbit(['quantize', '--model', dataFile('stories260K-hf'), '--out', 'nocalib'], { cwd });
  expect(run.code).toBe(2);
  expect(run.stderr).toContain('--calib <file>');
  expect(run.stderr).toContain('--calib self');
  expect(existsSync(join(cwd, 'nocalib'))).toBe(false);
});

test('16-bit models stay 16-bit: a bf16 model quantized keeps its embeddings and norms in bf16, and config.json says bfloat16', async () => {
  const run = await lowbit(
    ['quantize', '--model', dataFile('stories260K-hf-bf16'), '--method', 'rtn', '--out', 'bf16'],
    { cwd },
  );
  expect(run.code, run.stderr).toBe(0);
  const bytes = readFileSync(join(cwd, 'bf16', 'model.safetensors'));
  const header = JSON.parse(bytes.subarray(8, 8 + Number(bytes.readBigUInt64LE(0))).toString('utf8')) as Record<
    string,
    { dtype: string }
  >;
  const dense = Object.entries(header).filter(
    ([name]) => name.endsWith('embed_tokens.weight') || name.endsWith('norm.weight'),
  );
  expect(dense.length).toBe(1 + 2 * 5 + 1);
  for (const [name, info] of dense) expect(info.dtype, name).toBe('BF16');
  expect(
    (JSON.parse(readFileSync(join(cwd, 'bf16', 'config.json'), 'utf8')) as { dtype?: string; torch_dtype?: string })
      .dtype ?? 'missing',
  ).toBe('bfloat16');
});

/**
 * Real calibration inputs for the per-layer tests (test/gptq/real.test.ts, test/spqr/real.test.ts):
 * stories260K's block 1 linears, with their inputs captured by the forward pass over a random stretch
 * of the TinyStories calibration text.
 */
import { readFileSync } from 'node:fs';
import { afterAll, beforeAll } from 'vitest';
import { join } from 'node:path';
import { openModel, type CapturePointName, type Model, type NativeLinearName } from '../../src/model/model.js';
import { dataDir } from './data.js';

/** The capture point whose activations each linear reads: q/k/v share one, gate/up share one. */
export const CAPTURE_POINT_OF: Record<NativeLinearName, CapturePointName> = {
  q: 'qkv',
  k: 'qkv',
  v: 'qkv',
  o: 'o',
  gate: 'gateUp',
  up: 'gateUp',
  down: 'down',
};

export interface CapturedBlock {
  model: Model;
  /** block 1's linear inputs, [windows · seq, K] per capture point */
  inputs: Partial<Record<CapturePointName, Float32Array>>;
  /** where in the tokenized text the windows start (for messages: the stretch is random each run) */
  offset: number;
}

/** Opens stories260K and captures block 1's inputs over `windows` windows of `seq` tokens. */
export async function captureBlock1(windows: number, seq: number): Promise<CapturedBlock> {
  const model = await openModel(join(dataDir, 'stories260K-hf'), { device: 'cpu' });
  const text = readFileSync(join(dataDir, 'tinystories-valid.calib.txt'), 'utf8');
  const ids = model.tokenizer!.encode(text.slice(0, 60_000), { bos: true });
  // LOWBIT_TEST_OFFSET replays the stretch a failure message named.
  const fixed = process.env.LOWBIT_TEST_OFFSET;
  const offset = fixed ? Number(fixed) : Math.floor(Math.random() * (ids.length - windows * seq));
  const h0 = await model.embed(ids.slice(offset, offset + windows * seq));
  const { hidden } = await model.runBlock(0, h0, { batch: windows, seq });
  const { inputs } = await model.runBlock(1, hidden, {
    batch: windows,
    seq,
    capture: ['qkv', 'o', 'gateUp', 'down'],
  });
  return { model, inputs, offset };
}

/**
 * The captured block for a describe: captured in its beforeAll, the model closed in its afterAll.
 * The fields are filled in by the time the tests run.
 */
export function useCapturedBlock1(windows: number, seq: number): CapturedBlock {
  const captured = {} as CapturedBlock;
  beforeAll(async () => {
    Object.assign(captured, await captureBlock1(windows, seq));
  });
  afterAll(async () => {
    await captured.model?.close();
  });
  return captured;
}

/**
 * Calibration references for the scheduler's tests: a float64 Hessian, and GPTQ's true-sequential
 * order recomputed outside the scheduler: block 0's `down` projection
 * quantized on the inputs it sees once q, k, v, o, gate and up are replaced by the scheduler's
 * quantized versions (what a true-sequential run must do), or on the dense block's inputs (what a
 * run that captured every stage up front would do). The CPU and the CUDA tests compare the
 * scheduler's `down` with both.
 */
import { LINEAR_NAMES, type LinearName } from '../../src/formats/hf.js';
import { openModelFiles } from '../../src/formats/open.js';
import { Model } from '../../src/model/model.js';
import type { PackedWeights } from '../../src/native.js';
import { Hessian, gptqQuantize } from '../../src/quantize/gptq.js';
import { calibrationWindows } from '../../src/schedule/calibration.js';
import { Tensor } from '../../src/tensor.js';

export interface StageSetup {
  modelDir: string;
  calibration: { files: string[]; samples: number; seqLen: number; seed: number };
  grid: { bits: 4; groupSize: number; sym: boolean; mse: boolean; checkpointFormat: 'gptq' };
  device: 'cpu' | 'cuda';
  /** the calibration pass's dtype (f32 on the CPU; the scheduler's calibrationDtype on CUDA) */
  dtype: 'f32' | 'bf16';
}

/**
 * Block 0's `down` qweight from GPTQ on the inputs of `down` in block 0, with the earlier linears
 * replaced by `packed` (by module prefix) when `sequential`, else dense. All samples in one call, as
 * the scheduler makes for these small calibrations; on CUDA in 16 bits the states stay on the GPU
 * and the Hessian reads the captures there, as the scheduler's device path does.
 */
export async function downCodes(
  setup: StageSetup,
  packed: Map<string, unknown>,
  sequential: boolean,
): Promise<Int32Array> {
  const { calibration, device, dtype } = setup;
  const reader = await openModelFiles(setup.modelDir);
  const model = await Model.open(reader, {
    device,
    load: 'globals',
    cpuActivations: 'f32',
    dtype,
    maxSeq: calibration.seqLen,
    tokenizerFrom: setup.modelDir,
  });
  try {
    const weights = await model.readBlockWeights(0);
    await model.setBlockWeights(0, weights);
    if (sequential)
      for (const name of LINEAR_NAMES.filter((n) => n !== 'down') as LinearName[])
        await model.setLinear(0, name, {
          packed: packed.get(reader.tensors.blocks[0]![name].prefix) as PackedWeights,
          bias: weights[name].bias,
        });
    const ids = await calibrationWindows(model, { ...calibration, source: calibration.files });
    const hidden = await model.embed(ids);
    const c = reader.config;
    const H = Hessian.create(c.intermediateSize, { device });
    try {
      const { samples, seqLen } = calibration;
      if (dtype === 'f32') {
        const { inputs } = await model.runBlock(0, hidden, {
          batch: samples,
          seq: seqLen,
          capture: ['down'],
          stopAfter: 'down',
        });
        await H.addBatch(inputs.down!, samples * seqLen);
      } else {
        const states = await model.createStates(hidden, samples * seqLen);
        await states.runBlock(0, { row0: 0, batch: samples, seq: seqLen, hessians: { down: H }, stopAfter: 'down' });
        states.free();
      }
      const dense = weights.down as { dtype: 'f32' | 'f16' | 'bf16'; data: Float32Array | Uint16Array };
      const W = new Tensor(dense.dtype, [c.hiddenSize, c.intermediateSize], dense.data as never).toFloat32();
      return (await gptqQuantize(W, undefined, H, { ...setup.grid, damp: 0.01, device })).packed.qweight;
    } finally {
      H.free();
    }
  } finally {
    await model.close();
  }
}

/** The fraction of 4-bit codes that differ between two qweights of one shape. */
export function codeMismatch(a: Int32Array, b: Int32Array): number {
  let differ = 0;
  for (let i = 0; i < a.length; i++) {
    const x = a[i]! ^ b[i]!;
    for (let s = 0; s < 32; s += 4) if ((x >>> s) & 15) differ++;
  }
  return differ / (a.length * 8);
}

/** Float64 (2/n) XᵀX of X [n, K] (f32 values). */
export function hessianRef(X: Float32Array, n: number, K: number): Float64Array {
  const H = new Float64Array(K * K);
  for (let t = 0; t < n; t++)
    for (let i = 0; i < K; i++) {
      const xi = X[t * K + i]!;
      if (xi === 0) continue;
      for (let j = 0; j < K; j++) H[i * K + j] += xi * X[t * K + j]!;
    }
  for (let i = 0; i < H.length; i++) H[i] = (2 * H[i]!) / n;
  return H;
}

/** max |a - b| / max |b| */
export function maxRelative(a: Float32Array, b: Float64Array): number {
  let diff = 0;
  let scale = 0;
  for (let i = 0; i < b.length; i++) {
    diff = Math.max(diff, Math.abs(a[i]! - b[i]!));
    scale = Math.max(scale, Math.abs(b[i]!));
  }
  return diff / scale;
}

/**
 * SpQR over a whole model, in memory and true-sequentially (docs/SPQR.md): block by block, stage by
 * stage (q/k/v, o, gate/up, down), each stage's Hessian from inputs computed with every earlier
 * linear already quantized; each quantized linear is put back into the model, dequantized to f32
 * (what the SpQR product computes, without its kernel), so the model's perplexity is SpQR's. Used by
 * the quality benchmark and its test; the returned weights are what a checkpoint stores.
 */
import { LowbitError } from '../errors.js';
import type { Model, NativeLinearName, CapturePointName } from '../model/model.js';
import { linearShape } from '../model/model.js';
import { Hessian } from './gptq.js';
import { spqrDequantize, spqrQuantize, type SpqrOptions, type SpqrReport, type SpqrWeights } from './spqr.js';

export const SPQR_STAGES: readonly { point: CapturePointName; linears: readonly NativeLinearName[] }[] = [
  { point: 'qkv', linears: ['q', 'k', 'v'] },
  { point: 'o', linears: ['o'] },
  { point: 'gateUp', linears: ['gate', 'up'] },
  { point: 'down', linears: ['down'] },
];

export interface SpqrLayerResult {
  block: number;
  name: NativeLinearName;
  weights: SpqrWeights;
  report: SpqrReport;
}

/**
 * Quantizes every block linear of `model` with SpQR on calibration windows `ids` ([samples·seqLen]),
 * leaving the dequantized weights in the model. Resolves with each linear's weights and report.
 */
export async function spqrQuantizeModel(
  model: Model,
  ids: Int32Array,
  seqLen: number,
  options: SpqrOptions = {},
): Promise<SpqrLayerResult[]> {
  if (!Number.isInteger(seqLen) || seqLen <= 0 || ids.length % seqLen !== 0) {
    throw new LowbitError('E_CALIBRATION', `calibration ids (${ids.length}) are not whole windows of ${seqLen} tokens`);
  }
  const batch = ids.length / seqLen;
  const results: SpqrLayerResult[] = [];
  let hidden = await model.embed(ids);
  for (let block = 0; block < model.config.numLayers; block++) {
    const dense = await model.readBlockWeights(block);
    for (const stage of SPQR_STAGES) {
      const { inputs } = await model.runBlock(block, hidden, {
        batch,
        seq: seqLen,
        capture: [stage.point],
        stopAfter: stage.point,
      });
      const X = inputs[stage.point]!;
      const { K } = linearShape(model.config, stage.linears[0]!);
      const h = Hessian.create(K);
      await h.addBatch(X, X.length / K);
      for (const name of stage.linears) {
        const { N } = linearShape(model.config, name);
        const w = dense[name];
        if (!('data' in w) || w.dtype !== 'f32' || !(w.data instanceof Float32Array)) {
          throw new LowbitError('E_UNSUPPORTED', `SpQR needs f32 dense weights for block ${block} ${name}`);
        }
        const { weights, report } = await spqrQuantize(w.data, [N, K], h, options);
        await model.setLinear(block, name, { dtype: 'f32', data: spqrDequantize(weights), bias: w.bias });
        results.push({ block, name, weights, report });
      }
      h.free();
    }
    hidden = (await model.runBlock(block, hidden, { batch, seq: seqLen })).hidden;
  }
  return results;
}

/** Average stored bits per weight over layers: Σ bits / Σ N·K. */
export function averageBits(layers: readonly SpqrLayerResult[]): number {
  let bits = 0;
  let weights = 0;
  for (const l of layers) {
    bits += l.report.bits.total;
    weights += l.weights.N * l.weights.K;
  }
  return bits / weights;
}

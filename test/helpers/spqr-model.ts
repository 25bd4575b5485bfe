/**
 * SpQR codes for every linear of a dense model, from real weights and a Hessian of random inputs
 * (enough for real codes and outliers): the loop the CPU and CUDA SpQR model tests share.
 */
import { linearShape, type Model, type NativeLinearName } from '../../src/model/model.js';
import { Hessian } from '../../src/quantize/gptq.js';
import { spqrQuantize, type SpqrOptions } from '../../src/quantize/spqr.js';
import type { SpqrWeights } from '../../src/weights/types.js';
import { Rng } from './random.js';

const LINEARS: NativeLinearName[] = ['q', 'k', 'v', 'o', 'gate', 'up', 'down'];

/** Calls `use` with each linear's SpQR weights and its original bias, block by block. */
export async function forEachSpqrLinear(
  model: Model,
  options: SpqrOptions,
  use: (block: number, name: NativeLinearName, q: SpqrWeights, bias: Float32Array | undefined) => Promise<void>,
): Promise<void> {
  const rng = new Rng();
  for (let block = 0; block < model.config.numLayers; block++) {
    const weights = await model.readBlockWeights(block);
    for (const name of LINEARS) {
      const { N, K } = linearShape(model.config, name);
      const w = weights[name];
      if (w.format === 'spqr' || w.packed) throw new Error('the model must hold dense weights');
      const h = Hessian.create(K);
      await h.addBatch(
        Float32Array.from({ length: 64 * K }, () => rng.normal()),
        64,
      );
      const { weights: q } = await spqrQuantize(w.data as Float32Array, [N, K], h, options);
      h.free();
      await use(block, name, q, w.bias);
    }
  }
}

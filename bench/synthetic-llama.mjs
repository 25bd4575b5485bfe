// The config of a synthetic Llama-shaped model (random weights, real shapes) and each block
// linear's [N, K] from the library's own linearShape: what the forward-pass benchmarks share.
import { join } from 'node:path';

const LINEARS = ['q', 'k', 'v', 'o', 'gate', 'up', 'down'];

/**
 * shape: { dim, hidden, layers, heads, kvHeads, headDim, vocab, maxSeq, tied }; dist: the built
 * library (dist/). Returns { config, dims } with dims[name] = [N, K].
 */
export async function syntheticLlama(shape, dist) {
  const { linearShape } = await import(join(dist, 'model', 'model.js'));
  const config = {
    architecture: 'LlamaForCausalLM',
    modelType: 'llama',
    hiddenSize: shape.dim,
    intermediateSize: shape.hidden,
    numLayers: shape.layers,
    numHeads: shape.heads,
    numKvHeads: shape.kvHeads,
    headDim: shape.headDim,
    vocabSize: shape.vocab,
    maxPositionEmbeddings: shape.maxSeq,
    rmsNormEps: 1e-5,
    rope: { theta: 10000, type: 'default', partialRotaryFactor: 1 },
    hiddenAct: 'silu',
    qkvBias: false,
    oBias: false,
    mlpBias: false,
    tieWordEmbeddings: shape.tied,
    eosTokenIds: [],
    raw: {},
  };
  const dims = Object.fromEntries(
    LINEARS.map((name) => {
      const { N, K } = linearShape(config, name);
      return [name, [N, K]];
    }),
  );
  return { config, dims };
}

/**
 * Rotary-embedding frequencies from a model's config, computed the way transformers computes them:
 * in float32, step by step (Math.fround after each operation), so the angles the native forward
 * pass builds from them match a transformers run bit for bit in the common cases.
 */
import { LowbitError } from '../errors.js';
import type { LlamaConfig } from '../formats/hf.js';

const f = Math.fround;

export interface RopeFrequencies {
  /** headDim/2 frequencies, scaling applied */
  invFreq: Float32Array;
  /** multiplies cos and sin (transformers' attention_scaling) */
  scale: number;
}

/** inv_freq[i] = 1 / theta^(2i/headDim), in float32. */
function defaultFrequencies(theta: number, headDim: number): Float32Array {
  const out = new Float32Array(headDim / 2);
  for (let i = 0; i < out.length; i++) {
    const exponent = f(f(2 * i) / headDim);
    out[i] = f(1 / f(Math.pow(theta, exponent)));
  }
  return out;
}

/**
 * Llama 3's frequency-dependent scaling: long wavelengths are divided by `factor`, short ones kept,
 * and the band between blended linearly in 1/wavelength.
 */
function llama3Frequencies(
  base: Float32Array,
  factor: number,
  low: number,
  high: number,
  oldContext: number,
): Float32Array {
  const lowWavelen = oldContext / low;
  const highWavelen = oldContext / high;
  const out = new Float32Array(base.length);
  for (let i = 0; i < base.length; i++) {
    const inv = base[i]!;
    const wavelen = f((2 * Math.PI) / inv);
    let scaled = wavelen > lowWavelen ? f(inv / factor) : inv;
    const medium = !(wavelen < highWavelen) && !(wavelen > lowWavelen);
    if (medium) {
      const smooth = f(f(f(oldContext / wavelen) - low) / (high - low));
      scaled = f(f(f(f(1 - smooth) * scaled) / factor) + f(smooth * scaled));
    }
    out[i] = scaled;
  }
  return out;
}

export function ropeFrequencies(config: LlamaConfig): RopeFrequencies {
  const { rope, headDim } = config;
  if (rope.partialRotaryFactor !== 1) {
    throw new LowbitError(
      'E_UNSUPPORTED',
      `partial rotary embeddings (partial_rotary_factor ${rope.partialRotaryFactor}) are not supported yet`,
      { field: 'partial_rotary_factor' },
    );
  }
  const base = defaultFrequencies(rope.theta, headDim);
  switch (rope.type) {
    // Dynamic NTK scaling changes nothing up to max_position_embeddings, which bounds lowbit's sequences.
    case 'default':
    case 'dynamic':
      return { invFreq: base, scale: 1 };
    case 'linear':
      return { invFreq: base.map((v) => f(v / rope.factor!)), scale: 1 };
    case 'llama3': {
      const { factor, lowFreqFactor, highFreqFactor, originalMaxPositionEmbeddings } = rope;
      if (lowFreqFactor === undefined || highFreqFactor === undefined || originalMaxPositionEmbeddings === undefined) {
        throw new LowbitError(
          'E_CONFIG',
          'llama3 rope scaling needs low_freq_factor, high_freq_factor and original_max_position_embeddings',
          { field: 'rope_parameters' },
        );
      }
      return {
        invFreq: llama3Frequencies(base, factor!, lowFreqFactor, highFreqFactor, originalMaxPositionEmbeddings),
        scale: 1,
      };
    }
    default:
      throw new LowbitError(
        'E_UNSUPPORTED',
        `rope type '${rope.type}' is not supported by the forward pass yet (default, linear, dynamic, llama3)`,
        { field: 'rope_parameters' },
      );
  }
}

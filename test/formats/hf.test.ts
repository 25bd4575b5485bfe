import { describe, expect, it } from 'vitest';
import { LowbitError } from '../../src/errors.js';
import { HfModel, describeTensors, parseLlamaConfig, type LlamaConfig } from '../../src/formats/hf.js';
import { copyFileSync } from 'node:fs';
import { join } from 'node:path';
import { CheckpointWriter } from '../../src/formats/safetensors-writer.js';
import { SAFETENSORS_DTYPE_OF } from '../../src/formats/safetensors.js';
import { dataPath, sameBytes, tempDir } from './helpers.js';

function bf16ToFloat(bits: number): number {
  const b = new Uint32Array([bits << 16]);
  return new Float32Array(b.buffer)[0]!;
}

function f16ToFloat(h: number): number {
  const sign = h & 0x8000 ? -1 : 1;
  const exp = (h >> 10) & 0x1f;
  const mant = h & 0x3ff;
  if (exp === 0) return sign * mant * 2 ** -24;
  if (exp === 31) return mant ? NaN : sign * Infinity;
  return sign * (1 + mant / 1024) * 2 ** (exp - 15);
}

/** fp32 → bf16 bits, round to nearest even (what torch's cast does). */
function floatToBf16(x: number): number {
  const u = new Uint32Array(new Float32Array([x]).buffer)[0]!;
  return ((u + 0x7fff + ((u >>> 16) & 1)) >>> 16) & 0xffff;
}

const baseConfig = {
  architectures: ['LlamaForCausalLM'],
  model_type: 'llama',
  hidden_size: 64,
  intermediate_size: 172,
  num_hidden_layers: 2,
  num_attention_heads: 8,
  num_key_value_heads: 4,
  vocab_size: 512,
  max_position_embeddings: 512,
  rms_norm_eps: 1e-5,
};

function namesFor(config: LlamaConfig, opts: { lmHead?: boolean; qkvBias?: boolean } = {}): Set<string> {
  const names = new Set(['model.embed_tokens.weight', 'model.norm.weight']);
  if (opts.lmHead) names.add('lm_head.weight');
  for (let i = 0; i < config.numLayers; i++) {
    const p = `model.layers.${i}`;
    names.add(`${p}.input_layernorm.weight`).add(`${p}.post_attention_layernorm.weight`);
    for (const l of [
      'self_attn.q_proj',
      'self_attn.k_proj',
      'self_attn.v_proj',
      'self_attn.o_proj',
      'mlp.gate_proj',
      'mlp.up_proj',
      'mlp.down_proj',
    ]) {
      names.add(`${p}.${l}.weight`);
    }
    if (opts.qkvBias) for (const l of ['q', 'k', 'v']) names.add(`${p}.self_attn.${l}_proj.bias`);
  }
  return names;
}

describe('config.json parsing', () => {
  it('reads transformers-5 rope_parameters and the older top-level rope_theta', () => {
    const v5 = parseLlamaConfig({ ...baseConfig, rope_parameters: { rope_theta: 500000, rope_type: 'default' } });
    expect(v5.rope).toMatchObject({ theta: 500000, type: 'default' });
    const v4 = parseLlamaConfig({ ...baseConfig, rope_theta: 1e6 });
    expect(v4.rope.theta).toBe(1e6);
    const scaled = parseLlamaConfig({
      ...baseConfig,
      rope_theta: 500000,
      rope_scaling: {
        rope_type: 'llama3',
        factor: 8,
        low_freq_factor: 1,
        high_freq_factor: 4,
        original_max_position_embeddings: 8192,
      },
    });
    expect(scaled.rope).toMatchObject({
      theta: 500000,
      type: 'llama3',
      factor: 8,
      lowFreqFactor: 1,
      highFreqFactor: 4,
      originalMaxPositionEmbeddings: 8192,
    });
    expect(parseLlamaConfig(baseConfig).rope.theta).toBe(10000);
    expect(parseLlamaConfig(baseConfig).headDim).toBe(8);
  });

  it('gives qwen2 its q/k/v biases and maps them to tensor names', () => {
    const cfg = parseLlamaConfig({ ...baseConfig, architectures: ['Qwen2ForCausalLM'], model_type: 'qwen2' });
    expect(cfg.qkvBias).toBe(true);
    expect(cfg.oBias).toBe(false);
    const names = namesFor(cfg, { lmHead: true, qkvBias: true });
    const t = describeTensors(cfg, (n) => names.has(n));
    expect(t.blocks[1]!.k.bias).toBe('model.layers.1.self_attn.k_proj.bias');
    expect(t.blocks[1]!.o.bias).toBeUndefined();
    expect(t.lmHead).toBe('lm_head.weight');
    expect(t.tied).toBe(false);
    // the same names without the biases: the config's promise is broken
    const noBias = namesFor(cfg, { lmHead: true });
    const err = (() => {
      try {
        describeTensors(cfg, (n) => noBias.has(n), 'x');
      } catch (e) {
        return e as LowbitError;
      }
    })();
    expect(err).toBeInstanceOf(LowbitError);
    expect(err!.code).toBe('E_MISSING_TENSOR');
    expect(err!.details.tensor).toBe('model.layers.0.self_attn.q_proj.bias');
  });

  it('ties lm_head to the embedding when tie_word_embeddings is set', () => {
    const cfg = parseLlamaConfig({ ...baseConfig, tie_word_embeddings: true });
    const names = namesFor(cfg);
    const t = describeTensors(cfg, (n) => names.has(n));
    expect(t.tied).toBe(true);
    expect(t.lmHead).toBe('model.embed_tokens.weight');
    const untied = parseLlamaConfig(baseConfig);
    expect(() => describeTensors(untied, (n) => names.has(n))).toThrow(/lm_head.weight/);
  });

  it('rejects unsupported and malformed configs with typed errors', () => {
    const codeOf = (raw: unknown): string | undefined => {
      try {
        parseLlamaConfig(raw);
      } catch (e) {
        expect(e).toBeInstanceOf(LowbitError);
        return (e as LowbitError).code;
      }
      return undefined;
    };
    expect(codeOf({ ...baseConfig, model_type: 'gpt2' })).toBe('E_UNSUPPORTED');
    expect(codeOf({ ...baseConfig, hidden_act: 'gelu' })).toBe('E_UNSUPPORTED');
    expect(codeOf({ ...baseConfig, hidden_size: -3 })).toBe('E_CONFIG');
    expect(codeOf({ ...baseConfig, num_key_value_heads: 3 })).toBe('E_CONFIG');
    expect(codeOf({ ...baseConfig, rope_parameters: { rope_type: 'unknown-kind', rope_theta: 1 } })).toBe(
      'E_UNSUPPORTED',
    );
    expect(codeOf([1, 2])).toBe('E_CONFIG');
    expect(codeOf({ ...baseConfig, model_type: undefined })).toBe('E_CONFIG');
  });
});

describe('stories260K Hugging Face checkpoints', () => {
  it('parses the config and maps every tensor (tied, no lm_head.weight)', async () => {
    const model = await HfModel.open(dataPath('stories260K-hf'));
    try {
      const c = model.config;
      expect(c).toMatchObject({
        modelType: 'llama',
        hiddenSize: 64,
        intermediateSize: 172,
        numLayers: 5,
        numHeads: 8,
        numKvHeads: 4,
        headDim: 8,
        vocabSize: 512,
      });
      expect(c.rope).toMatchObject({ theta: 10000, type: 'default' });
      expect(c.tieWordEmbeddings).toBe(true);
      expect(c.bosTokenId).toBe(1);
      expect(c.eosTokenIds).toEqual([2]);
      expect(model.names).not.toContain('lm_head.weight');
      expect(model.tensors.lmHead).toBe('model.embed_tokens.weight');
      expect(model.tensors.blocks).toHaveLength(5);
      expect(model.shapeOf(model.tensors.blocks[4]!.down.weight!)).toEqual([64, 172]);
      expect(model.names.length).toBe(2 + 5 * 9);
    } finally {
      await model.close();
    }
  });

  it('reads the same model from a sharded copy (index + shards)', async () => {
    const ref = await HfModel.open(dataPath('stories260K-hf'));
    const { dir, cleanup } = tempDir();
    try {
      const specs = ref.names.map((name) => ({
        name,
        dtype: SAFETENSORS_DTYPE_OF[ref.dtypeOf(name)],
        shape: ref.shapeOf(name),
      }));
      const writer = await CheckpointWriter.create(dir, specs, { maxShardBytes: 300_000 });
      for (const name of [...ref.names].reverse()) await writer.put(name, await ref.readTensor(name));
      const files = await writer.finish();
      expect(files.length).toBeGreaterThan(3);
      copyFileSync(dataPath('stories260K-hf/config.json'), join(dir, 'config.json'));
      const sharded = await HfModel.open(dir);
      try {
        expect(sharded.checkpoint.files.length).toBe(files.length - 1);
        for (const name of ref.names)
          expect(sameBytes((await sharded.readTensor(name)).data, (await ref.readTensor(name)).data), name).toBe(true);
      } finally {
        await sharded.close();
      }
    } finally {
      await ref.close();
      cleanup();
    }
  });

  it('fp32, bf16 and fp16 twins hold the same weights within their rounding', async () => {
    const [f32, bf16, f16] = await Promise.all(
      ['stories260K-hf', 'stories260K-hf-bf16', 'stories260K-hf-fp16'].map((d) => HfModel.open(dataPath(d))),
    );
    try {
      expect(bf16.names.sort()).toEqual(f32.names.sort());
      expect(f16.names.sort()).toEqual(f32.names.sort());
      for (const name of f32.names) {
        const a = await f32.readTensor(name);
        const b = await bf16.readTensor(name);
        const h = await f16.readTensor(name);
        expect(a.dtype).toBe('f32');
        expect(b.dtype).toBe('bf16');
        expect(h.dtype).toBe('f16');
        expect(b.shape).toEqual(a.shape);
        expect(h.shape).toEqual(a.shape);
        const x = a.data as Float32Array;
        for (let i = 0; i < x.length; i++) {
          // bf16: exactly the round-to-nearest-even cast of the fp32 value
          if ((b.data as Uint16Array)[i] !== floatToBf16(x[i]!))
            throw new Error(`${name}[${i}]: bf16 ${b.data[i]} vs cast of ${x[i]}`);
          // fp16: within half an fp16 ulp (relative 2^-11, absolute 2^-25 for subnormals)
          const y = f16ToFloat((h.data as Uint16Array)[i]!);
          const tol = Math.max(Math.abs(x[i]!) * 2 ** -11, 2 ** -25);
          if (Math.abs(y - x[i]!) > tol) throw new Error(`${name}[${i}]: fp16 ${y} vs ${x[i]}`);
        }
        // and the f32 path through the addon agrees with the reference decoding
        const bf = (await bf16.readFloat32(name)).data;
        for (let i = 0; i < x.length; i++)
          if (bf[i] !== bf16ToFloat((b.data as Uint16Array)[i]!)) throw new Error(`${name}[${i}]: bf16 decode`);
      }
    } finally {
      await Promise.all([f32.close(), bf16.close(), f16.close()]);
    }
  });
});

import { existsSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { LowbitError } from '../../src/errors.js';
import {
  GptqWriter,
  linearDims,
  openGptqModel,
  packedWords,
  readPackedLinear,
  type GptqConfig,
} from '../../src/formats/gptq.js';
import { HfModel, LINEAR_NAMES, type ModelReader } from '../../src/formats/hf.js';
import { writeSafetensors } from '../../src/formats/safetensors-writer.js';
import { native, type PackedWeights } from '../../src/native.js';
import { Tensor } from '../../src/tensor.js';
import { dataPath, prng, randomSeed, sameBytes, tempDir } from './helpers.js';

const tmp = tempDir();
afterAll(() => tmp.cleanup());

/** A small qwen2-style HF directory (q/k/v biases) whose MLP width 44 is no multiple of any packing unit. */
async function syntheticModel(dir: string, rand: () => number): Promise<void> {
  const config = {
    architectures: ['Qwen2ForCausalLM'],
    model_type: 'qwen2',
    hidden_size: 32,
    intermediate_size: 44,
    num_hidden_layers: 2,
    num_attention_heads: 4,
    num_key_value_heads: 2,
    vocab_size: 40,
    max_position_embeddings: 64,
    rms_norm_eps: 1e-6,
    rope_theta: 1e6,
    tie_word_embeddings: false,
    dtype: 'bfloat16',
  };
  const r = (shape: number[]) =>
    new Tensor(
      'f32',
      shape,
      Float32Array.from({ length: shape.reduce((a, b) => a * b, 1) }, () => rand() - 0.5),
    ).to('bf16');
  const t: [string, Tensor][] = [['model.embed_tokens.weight', r([40, 32])]];
  for (let l = 0; l < 2; l++) {
    const p = `model.layers.${l}.`;
    t.push([p + 'input_layernorm.weight', r([32])], [p + 'post_attention_layernorm.weight', r([32])]);
    for (const [n, shape] of [
      ['self_attn.q_proj', [32, 32]],
      ['self_attn.k_proj', [16, 32]],
      ['self_attn.v_proj', [16, 32]],
      ['self_attn.o_proj', [32, 32]],
      ['mlp.gate_proj', [44, 32]],
      ['mlp.up_proj', [44, 32]],
      ['mlp.down_proj', [32, 44]],
    ] as [string, number[]][]) {
      t.push([p + n + '.weight', r(shape)]);
      if (/[qkv]_proj/.test(n)) t.push([p + n + '.bias', r([shape[0]!])]);
    }
  }
  t.push(['model.norm.weight', r([32])], ['lm_head.weight', r([40, 32])]);
  const { mkdirSync } = await import('node:fs');
  mkdirSync(dir, { recursive: true });
  await writeSafetensors(join(dir, 'model.safetensors'), t);
  writeFileSync(join(dir, 'config.json'), JSON.stringify(config));
  writeFileSync(join(dir, 'tokenizer_config.json'), JSON.stringify({ bos_token: '<s>' }));
}

interface Made {
  packed: PackedWeights;
  q: Uint8Array;
  zeros: Int32Array;
  scales: Float32Array;
  groupOf: (k: number) => number;
}

/** Random quantized values, zeros, fp16 scales and (with act-order) a permuted g_idx, packed natively. */
function makePacked(K: number, N: number, gptq: GptqConfig, rand: () => number): Made {
  const { bits } = gptq;
  const maxq = 2 ** bits - 1;
  const groupSize = gptq.groupSize === -1 ? K : gptq.groupSize;
  const groups = Math.ceil(K / groupSize);
  const q = Uint8Array.from({ length: N * K }, () => Math.floor(rand() * (maxq + 1)));
  // v1 cannot store a zero point of 0 (it reads back as 2^bits): draw from [1, maxq] there
  const low = gptq.checkpointFormat === 'gptq' ? 1 : 0;
  const zeros = Int32Array.from({ length: groups * N }, () => low + Math.floor(rand() * (maxq + 1 - low)));
  const scales16 = new Tensor(
    'f32',
    [groups, N],
    Float32Array.from({ length: groups * N }, () => 1e-3 + rand() * 0.05),
  ).to('f16');
  const scales = scales16.to('f32').data;
  let gIdx: Int32Array | undefined;
  if (gptq.descAct) {
    const perm = Array.from({ length: K }, (_, k) => k).sort(() => rand() - 0.5);
    gIdx = new Int32Array(K);
    perm.forEach((k, i) => (gIdx![k] = Math.floor(i / groupSize)));
  }
  const zeroOffset = gptq.checkpointFormat === 'gptq' ? 1 : 0;
  const packed: PackedWeights = {
    bits,
    K,
    N,
    groupSize,
    groups,
    zeroOffset,
    qweight: native().packQweight(q, N, K, bits),
    qzeros: native().packQzeros(zeros, groups, N, bits, zeroOffset),
    scales: scales16.data,
  };
  if (gIdx) packed.gIdx = gIdx;
  return { packed, q, zeros, scales, groupOf: (k) => (gIdx ? gIdx[k]! : Math.floor(k / groupSize)) };
}

async function roundTrip(source: ModelReader, gptq: GptqConfig, out: string, seed: number): Promise<void> {
  const rand = prng(seed);
  const writer = await GptqWriter.create(out, source, gptq, {
    tokenizerFrom: source instanceof HfModel ? source.dir : undefined,
  });
  const made = new Map<string, Made>();
  // hand the linears over out of order: the writer must still lay them out right
  const prefixes = writer.remaining.reverse();
  for (const prefix of prefixes) {
    const name = LINEAR_NAMES.find((n) =>
      prefix.endsWith(n === 'gate' || n === 'up' || n === 'down' ? `mlp.${n}_proj` : `self_attn.${n}_proj`),
    )!;
    const { K, N } = linearDims(source.config, name);
    const m = makePacked(K, N, gptq, rand);
    made.set(prefix, m);
    await writer.putLinear(prefix, m.packed);
  }
  await writer.finish();

  const model = await openGptqModel(out);
  try {
    const q = model.config.quantization!;
    expect(q).toMatchObject({
      bits: gptq.bits,
      groupSize: gptq.groupSize,
      descAct: gptq.descAct,
      checkpointFormat: gptq.checkpointFormat,
    });
    const qc = JSON.parse(readFileSync(join(out, 'quantize_config.json'), 'utf8')) as Record<string, unknown>;
    expect(qc).toMatchObject({
      quant_method: 'gptq',
      bits: gptq.bits,
      group_size: gptq.groupSize,
      desc_act: gptq.descAct,
      sym: gptq.sym,
      damp_percent: gptq.dampPercent,
      true_sequential: gptq.trueSequential,
      static_groups: gptq.staticGroups,
      checkpoint_format: gptq.checkpointFormat,
    });
    // unquantized tensors are kept as they were (dtype and bytes)
    for (const name of source.names.filter((n) => !/_proj\.weight$/.test(n))) {
      const a = await source.readTensor(name);
      const b = await model.readTensor(name);
      expect(b.dtype, name).toBe(a.dtype);
      expect(sameBytes(a.data, b.data), `${name} (seed ${seed})`).toBe(true);
    }
    for (const block of model.tensors.blocks) {
      for (const name of LINEAR_NAMES) {
        const prefix = block[name].prefix;
        const want = made.get(prefix)!;
        const got = await readPackedLinear(model, block.index, name);
        const ctx = `${prefix} ${gptq.bits}-bit g${gptq.groupSize} ${gptq.checkpointFormat} (seed ${seed})`;
        expect(model.shapeOf(`${prefix}.qweight`), ctx).toEqual([packedWords(gptq.bits, got.K), got.N]);
        expect({ ...got, qweight: 0, qzeros: 0, scales: 0, gIdx: 0 }, ctx).toEqual({
          ...want.packed,
          qweight: 0,
          qzeros: 0,
          scales: 0,
          gIdx: 0,
        });
        expect(sameBytes(got.qweight, want.packed.qweight), ctx).toBe(true);
        expect(sameBytes(got.qzeros, want.packed.qzeros), ctx).toBe(true);
        expect(sameBytes(got.scales, want.packed.scales), ctx).toBe(true);
        if (want.packed.gIdx) expect(sameBytes(got.gIdx!, want.packed.gIdx), ctx).toBe(true);
        else expect(got.gIdx, ctx).toBeUndefined();
        // what the kernels will compute from it: scale·(q − zero), against a float64 reference
        const W = native().dequantize(got);
        const { K, N } = got;
        for (let n = 0; n < N; n++) {
          for (let k = 0; k < K; k++) {
            const g = want.groupOf(k);
            const ref = want.scales[g * N + n]! * (want.q[n * K + k]! - want.zeros[g * N + n]!);
            if (Math.abs(W[n * K + k]! - ref) > 1e-6 * Math.max(1, Math.abs(ref)))
              throw new Error(`${ctx}: W[${n},${k}] = ${W[n * K + k]} vs ${ref}`);
          }
        }
      }
    }
  } finally {
    await model.close();
  }
}

const base: Omit<GptqConfig, 'bits' | 'groupSize' | 'checkpointFormat' | 'descAct'> = {
  sym: false,
  dampPercent: 0.01,
  trueSequential: true,
  staticGroups: false,
};

describe('GPTQ checkpoints: write, read back byte-identical', () => {
  const src = join(tmp.dir, 'synthetic-src');
  const cases: [2 | 3 | 4 | 8, number, 'gptq' | 'gptq_v2', boolean][] = [
    [4, 16, 'gptq', false],
    [4, -1, 'gptq_v2', false],
    [3, 16, 'gptq', true],
    [2, 8, 'gptq_v2', true],
    [8, 32, 'gptq', false],
  ];
  for (const [bits, groupSize, checkpointFormat, descAct] of cases) {
    it(`${bits}-bit, group ${groupSize}, ${checkpointFormat}${descAct ? ', act-order' : ''} (qwen2 biases, K=44 padded)`, async () => {
      const seed = randomSeed();
      if (!existsSync(src)) await syntheticModel(src, prng(seed));
      const source = await HfModel.open(src);
      try {
        await roundTrip(
          source,
          { ...base, bits, groupSize, checkpointFormat, descAct },
          join(tmp.dir, `q-${bits}-${groupSize}-${checkpointFormat}-${descAct}`),
          seed,
        );
      } finally {
        await source.close();
      }
    });
  }

  it('records the K padding, keeps biases and copies tokenizer files', async () => {
    const out = join(tmp.dir, 'q-4-16-gptq-false');
    const config = JSON.parse(readFileSync(join(out, 'config.json'), 'utf8')) as {
      quantization_config: { lowbit: { padded_in_features: Record<string, unknown> } };
      model_type: string;
    };
    expect(config.model_type).toBe('qwen2');
    expect(config.quantization_config.lowbit.padded_in_features).toEqual({
      'mlp.down_proj': { in_features: 44, packed_in_features: 48 },
    });
    expect(existsSync(join(out, 'tokenizer_config.json'))).toBe(true);
    const m = await HfModel.open(out);
    expect(m.tensors.blocks[0]!.q.bias).toBe('model.layers.0.self_attn.q_proj.bias');
    expect(m.tensors.blocks[0]!.q.quantized?.qweight).toBe('model.layers.0.self_attn.q_proj.qweight');
    await m.close();
  });

  it('refuses packed weights that do not fit the checkpoint, and unfinished writes', async () => {
    const source = await HfModel.open(src);
    const gptq: GptqConfig = { ...base, bits: 4, groupSize: 16, checkpointFormat: 'gptq', descAct: false };
    const writer = await GptqWriter.create(join(tmp.dir, 'refused'), source, gptq);
    const prefix = writer.remaining[0]!; // q_proj: K = N = 32
    const ok = makePacked(32, 32, gptq, prng(3)).packed;
    await expect(writer.putLinear(prefix, { ...ok, bits: 3 })).rejects.toMatchObject({ code: 'E_BITS' });
    await expect(writer.putLinear(prefix, { ...ok, K: 31 })).rejects.toMatchObject({ code: 'E_SHAPE' });
    await expect(writer.putLinear(prefix, { ...ok, zeroOffset: 0 })).rejects.toMatchObject({ code: 'E_GPTQ_FORMAT' });
    await expect(writer.putLinear('model.nothing', ok)).rejects.toBeInstanceOf(LowbitError);
    await writer.putLinear(prefix, ok);
    await expect(writer.finish()).rejects.toMatchObject({ code: 'E_MISSING_TENSOR' });
    await writer.abort();
    expect(existsSync(join(tmp.dir, 'refused'))).toBe(false);
    await source.close();
  });

  it('reads malformed GPTQ tensors as E_GPTQ_FORMAT naming the tensor', async () => {
    // a valid checkpoint whose one qzeros tensor is replaced by one of the wrong shape
    const dir = join(tmp.dir, 'q-4-16-gptq-false');
    const m = await HfModel.open(dir);
    const names = m.names;
    const tensors: [string, Tensor][] = [];
    for (const n of names) tensors.push([n, await m.readTensor(n)]);
    await m.close();
    const bad = join(tmp.dir, 'bad-gptq');
    const { cpSync } = await import('node:fs');
    cpSync(dir, bad, { recursive: true });
    const victim = 'model.layers.1.mlp.up_proj.qzeros';
    await writeSafetensors(
      join(bad, 'model.safetensors'),
      tensors.map(([n, t]) => [n, n === victim ? new Tensor('i32', [2, 3], new Int32Array(6)) : t] as [string, Tensor]),
    );
    // refused when opened (every GPTQ tensor's header is checked then), not at first use
    const err = await openGptqModel(bad).then(
      () => undefined,
      (e: unknown) => e as LowbitError,
    );
    expect(err?.code).toBe('E_GPTQ_FORMAT');
    expect(err?.details.tensor).toBe(victim);
    expect(err?.message).toMatch(/has shape \[2, 3\]; quantization_config.bits 4 with K=32, N=44 needs \[2, 6\]/);
    await expect(openGptqModel(src)).rejects.toMatchObject({ code: 'E_GPTQ_FORMAT' });
  });
});

describe('GPTQ round trip on stories260K (K = 172)', () => {
  it('4-bit, group 32, v1', async () => {
    const seed = randomSeed();
    const source = await HfModel.open(dataPath('stories260K-hf'));
    try {
      const out = join(tmp.dir, 'stories-gptq');
      await roundTrip(source, { ...base, bits: 4, groupSize: 32, checkpointFormat: 'gptq', descAct: false }, out, seed);
      for (const f of ['tokenizer.json', 'tokenizer.model', 'tokenizer_config.json', 'generation_config.json'])
        expect(existsSync(join(out, f)), f).toBe(true);
      const config = JSON.parse(readFileSync(join(out, 'config.json'), 'utf8')) as {
        quantization_config: { lowbit: { padded_in_features: unknown } };
        tie_word_embeddings: boolean;
      };
      expect(config.tie_word_embeddings).toBe(true);
      expect(config.quantization_config.lowbit.padded_in_features).toEqual({
        'mlp.down_proj': { in_features: 172, packed_in_features: 176 },
      });
    } finally {
      await source.close();
    }
  });
});

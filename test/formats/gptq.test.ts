import { existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
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
import { dataPath, expectStandardShapes, prng, randomSeed, sameBytes, tempDir } from './helpers.js';

const tmp = tempDir();
afterAll(() => tmp.cleanup());

/** A small qwen2-style HF directory (q/k/v and MLP biases) whose MLP width 44 is no multiple of any packing unit. */
async function syntheticModel(dir: string, rand: () => number): Promise<void> {
  const config = {
    architectures: ['Qwen2ForCausalLM'],
    model_type: 'qwen2',
    hidden_size: 64,
    intermediate_size: 44,
    num_hidden_layers: 2,
    num_attention_heads: 4,
    num_key_value_heads: 2,
    vocab_size: 40,
    max_position_embeddings: 64,
    rms_norm_eps: 1e-6,
    rope_theta: 1e6,
    tie_word_embeddings: false,
    mlp_bias: true,
    dtype: 'bfloat16',
  };
  const r = (shape: number[]) =>
    new Tensor(
      'f32',
      shape,
      Float32Array.from({ length: shape.reduce((a, b) => a * b, 1) }, () => rand() - 0.5),
    ).to('bf16');
  const t: [string, Tensor][] = [['model.embed_tokens.weight', r([40, 64])]];
  for (let l = 0; l < 2; l++) {
    const p = `model.layers.${l}.`;
    t.push([p + 'input_layernorm.weight', r([64])], [p + 'post_attention_layernorm.weight', r([64])]);
    // head_dim 16: k/v have 32 outputs, so every dimension but the MLP width is a multiple of 32
    for (const [n, shape] of [
      ['self_attn.q_proj', [64, 64]],
      ['self_attn.k_proj', [32, 64]],
      ['self_attn.v_proj', [32, 64]],
      ['self_attn.o_proj', [64, 64]],
      ['mlp.gate_proj', [44, 64]],
      ['mlp.up_proj', [44, 64]],
      ['mlp.down_proj', [64, 44]],
    ] as [string, number[]][]) {
      t.push([p + n + '.weight', r(shape)]);
      if (/[qkv]_proj|mlp/.test(n)) t.push([p + n + '.bias', r([shape[0]!])]);
    }
  }
  t.push(['model.norm.weight', r([64])], ['lm_head.weight', r([40, 64])]);
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
    // unquantized tensors are kept as they were (dtype and bytes); gate/up biases grow with zeros
    for (const name of source.names.filter((n) => !/_proj\.weight$/.test(n))) {
      const a = await source.readTensor(name);
      const b = await model.readTensor(name);
      expect(b.dtype, name).toBe(a.dtype);
      if (/(gate|up)_proj\.bias$/.test(name)) {
        expect(b.shape, name).toEqual([model.config.intermediateSize]);
        expect(sameBytes(a.data, b.data.subarray(0, a.size)), `${name} (seed ${seed})`).toBe(true);
        expect(
          [...b.data.subarray(a.size)].every((v) => v === 0),
          `${name}: padding is zero`,
        ).toBe(true);
      } else expect(sameBytes(a.data, b.data), `${name} (seed ${seed})`).toBe(true);
    }
    for (const block of model.tensors.blocks) {
      for (const name of LINEAR_NAMES) {
        const prefix = block[name].prefix;
        const want = made.get(prefix)!;
        const got = await readPackedLinear(model, block.index, name);
        const ctx = `${prefix} ${gptq.bits}-bit g${gptq.groupSize} ${gptq.checkpointFormat} (seed ${seed})`;
        expectStandardShapes(model, prefix, gptq.bits, gptq.groupSize, ctx);
        if (got.K !== want.packed.K || got.N !== want.packed.N) {
          expectPaddedExactly(got, want, ctx);
          continue;
        }
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

/**
 * A padded linear (gate/up with extra output rows, down with extra input columns) read back: its
 * dequantized weights equal the reference on the source's K × N and are exactly 0 elsewhere, so the
 * padded model computes the same function. Catches padding that lands in the wrong place (rows vs
 * columns, a lost g_idx) or pads with values that are not zero.
 */
function expectPaddedExactly(got: PackedWeights, want: Made, ctx: string): void {
  const { K, N } = want.packed;
  expect(got.K >= K && got.N >= N && got.K > K !== got.N > N, `${ctx}: padded one way`).toBe(true);
  const W = native().dequantize(got);
  for (let n = 0; n < got.N; n++) {
    for (let k = 0; k < got.K; k++) {
      const v = W[n * got.K + k]!;
      if (n < N && k < K) {
        const g = want.groupOf(k);
        const ref = want.scales[g * N + n]! * (want.q[n * K + k]! - want.zeros[g * N + n]!);
        if (Math.abs(v - ref) > 1e-6 * Math.max(1, Math.abs(ref)))
          throw new Error(`${ctx}: W[${n},${k}] = ${v} vs ${ref}`);
      } else if (!Object.is(v, 0) && !Object.is(v, -0)) throw new Error(`${ctx}: padded W[${n},${k}] = ${v}, not 0`);
    }
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
    it(`${bits}-bit, group ${groupSize}, ${checkpointFormat}${descAct ? ', act-order' : ''} (qwen2 biases, intermediate 44 padded)`, async () => {
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

  it('pads intermediate_size in config.json (no lowbit-only keys), keeps biases and copies tokenizer files', async () => {
    const out = join(tmp.dir, 'q-4-16-gptq-false');
    const config = JSON.parse(readFileSync(join(out, 'config.json'), 'utf8')) as {
      quantization_config: Record<string, unknown>;
      model_type: string;
      intermediate_size: number;
    };
    expect(config.model_type).toBe('qwen2');
    expect(config.intermediate_size).toBe(64); // 44 → the next multiple of lcm(32, 16)
    expect(config.quantization_config.lowbit).toBeUndefined();
    const qc = JSON.parse(readFileSync(join(out, 'quantize_config.json'), 'utf8')) as Record<string, unknown>;
    expect(qc.lowbit).toBeUndefined();
    expect(existsSync(join(out, 'tokenizer_config.json'))).toBe(true);
    const m = await HfModel.open(out);
    expect(m.tensors.blocks[0]!.q.bias).toBe('model.layers.0.self_attn.q_proj.bias');
    expect(m.tensors.blocks[0]!.q.quantized?.qweight).toBe('model.layers.0.self_attn.q_proj.qweight');
    await m.close();
  });

  it('still reads checkpoints of earlier lowbit versions: K = 44 in a partial pack unit, lowbit.padded_in_features', async () => {
    const source = await HfModel.open(src);
    const old = join(tmp.dir, 'old-partial-unit');
    const gptq: GptqConfig = { ...base, bits: 3, groupSize: 16, checkpointFormat: 'gptq', descAct: false };
    const rand = prng(randomSeed());
    const made = new Map<string, PackedWeights>();
    try {
      const tensors: [string, Tensor][] = [];
      for (const name of source.names.filter((n) => !/_proj\.weight$/.test(n)))
        tensors.push([name, await source.readTensor(name)]);
      for (const block of source.tensors.blocks) {
        for (const name of LINEAR_NAMES) {
          const { K, N } = linearDims(source.config, name);
          const w = makePacked(K, N, gptq, rand).packed;
          const prefix = block[name].prefix;
          made.set(prefix, w);
          // the layout those versions wrote: qweight rows ceil(K / 32) · 3, trivial g_idx of length K
          tensors.push(
            [`${prefix}.qweight`, new Tensor('i32', [packedWords(3, K), N], w.qweight)],
            [`${prefix}.qzeros`, new Tensor('i32', [w.groups, packedWords(3, N)], w.qzeros)],
            [`${prefix}.scales`, new Tensor('f16', [w.groups, N], w.scales)],
            [
              `${prefix}.g_idx`,
              new Tensor(
                'i32',
                [K],
                Int32Array.from({ length: K }, (_, k) => Math.floor(k / 16)),
              ),
            ],
          );
        }
      }
      mkdirSync(old, { recursive: true });
      await writeSafetensors(join(old, 'model.safetensors'), tensors);
      const quantization_config = {
        quant_method: 'gptq',
        bits: 3,
        group_size: 16,
        desc_act: false,
        sym: false,
        checkpoint_format: 'gptq',
        lowbit: { padded_in_features: { 'mlp.down_proj': { in_features: 44, packed_in_features: 64 } } },
      };
      writeFileSync(join(old, 'config.json'), JSON.stringify({ ...source.config.raw, quantization_config }));
    } finally {
      await source.close();
    }
    const model = await openGptqModel(old);
    try {
      expect(model.config.intermediateSize).toBe(44);
      for (const block of model.tensors.blocks) {
        for (const name of LINEAR_NAMES) {
          const want = made.get(block[name].prefix)!;
          const got = await readPackedLinear(model, block.index, name);
          expect({ ...got, qweight: 0, qzeros: 0, scales: 0 }).toEqual({ ...want, qweight: 0, qzeros: 0, scales: 0 });
          expect(sameBytes(got.qweight, want.qweight), block[name].prefix).toBe(true);
        }
      }
    } finally {
      await model.close();
    }
  });

  it('refuses packed weights that do not fit the checkpoint, and unfinished writes', async () => {
    const source = await HfModel.open(src);
    const gptq: GptqConfig = { ...base, bits: 4, groupSize: 16, checkpointFormat: 'gptq', descAct: false };
    const writer = await GptqWriter.create(join(tmp.dir, 'refused'), source, gptq);
    const prefix = writer.remaining[0]!; // q_proj: K = N = 64
    const ok = makePacked(64, 64, gptq, prng(3)).packed;
    await expect(writer.putLinear(prefix, { ...ok, bits: 3 })).rejects.toMatchObject({ code: 'E_BITS' });
    await expect(writer.putLinear(prefix, { ...ok, K: 63 })).rejects.toMatchObject({ code: 'E_SHAPE' });
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
    expect(err?.message).toMatch(/has shape \[2, 3\]; quantization_config.bits 4 with K=64, N=64 needs \[4, 8\]/);
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
        quantization_config: Record<string, unknown>;
        tie_word_embeddings: boolean;
        intermediate_size: number;
      };
      expect(config.tie_word_embeddings).toBe(true);
      expect(config.intermediate_size).toBe(192);
      expect(config.quantization_config.lowbit).toBeUndefined();
    } finally {
      await source.close();
    }
  });
});

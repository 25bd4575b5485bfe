// Time to GPTQ-quantize a whole synthetic Llama-shaped model (issue 5): dim 2048, 8 blocks, MLP 5504,
// 16 heads of 128, vocab 32000 (Llama 2's tokenizer from ../shared/data), random fp16 weights,
// written as a Hugging Face directory in a temporary folder, then `quantize()` end to end
// (calibration forward passes, Hessians, true-sequential GPTQ, checkpoint written).
//
//   node bench/gptq-model.mjs [--device cpu|cuda] [--samples N] [--seq-len N] [--bits 4] [--group-size 128]
//
// Imports the package from dist/ (npm run build:ts). Prints one Markdown row per run.
import { cpSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { cpus, tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { parseArgs } from 'node:util';
import { fileURLToPath } from 'node:url';

const root = resolve(fileURLToPath(new URL('.', import.meta.url)), '..');
const lowbit = await import(process.env.LOWBIT_DIST ?? join(root, 'dist', 'index.js'));
const { values } = parseArgs({
  options: {
    device: { type: 'string', default: 'cpu' },
    samples: { type: 'string', default: '32' },
    'seq-len': { type: 'string', default: '2048' },
    bits: { type: 'string', default: '4' },
    'group-size': { type: 'string', default: '128' },
    layers: { type: 'string', default: '8' },
  },
});
const data = resolve(root, '../shared/data');
const shape = {
  dim: 2048,
  hidden: 5504,
  layers: Number(values.layers),
  heads: 16,
  kvHeads: 16,
  headDim: 128,
  vocab: 32000,
};

// A deterministic xorshift stream of roughly normal values (sum of uniforms), as fp16 bit patterns.
let state = 0x9e3779b9;
function randomHalves(count, std) {
  const f32 = new Float32Array(count);
  for (let i = 0; i < count; i++) {
    let s = 0;
    for (let j = 0; j < 4; j++) {
      state ^= state << 13;
      state ^= state >>> 17;
      state ^= state << 5;
      s += (state >>> 0) / 4294967296;
    }
    f32[i] = (s - 2) * std * 1.732;
  }
  return new lowbit.Tensor('f32', [count], f32).to('f16').data;
}

const dir = mkdtempSync(join(tmpdir(), 'lowbit-synth-'));
const out = join(dir, 'out');
try {
  const model = join(dir, 'model');
  const tensors = [];
  const add = (name, dims, std) =>
    tensors.push([
      name,
      new lowbit.Tensor(
        'f16',
        dims,
        std === 0
          ? ones(dims[0])
          : randomHalves(
              dims.reduce((a, b) => a * b, 1),
              std,
            ),
      ),
    ]);
  const ones = (n) => new lowbit.Tensor('f32', [n], new Float32Array(n).fill(1)).to('f16').data;
  const { dim, hidden, vocab } = shape;
  add('model.embed_tokens.weight', [vocab, dim], 0.02);
  for (let l = 0; l < shape.layers; l++) {
    const p = `model.layers.${l}`;
    add(`${p}.input_layernorm.weight`, [dim], 0);
    add(`${p}.post_attention_layernorm.weight`, [dim], 0);
    for (const n of ['q_proj', 'k_proj', 'v_proj', 'o_proj']) add(`${p}.self_attn.${n}.weight`, [dim, dim], 0.02);
    add(`${p}.mlp.gate_proj.weight`, [hidden, dim], 0.02);
    add(`${p}.mlp.up_proj.weight`, [hidden, dim], 0.02);
    add(`${p}.mlp.down_proj.weight`, [dim, hidden], 0.02);
  }
  add('model.norm.weight', [dim], 0);
  const { mkdirSync } = await import('node:fs');
  mkdirSync(model);
  await lowbit.writeSafetensors(join(model, 'model.safetensors'), tensors);
  writeFileSync(
    join(model, 'config.json'),
    JSON.stringify({
      architectures: ['LlamaForCausalLM'],
      model_type: 'llama',
      hidden_size: dim,
      intermediate_size: hidden,
      num_hidden_layers: shape.layers,
      num_attention_heads: shape.heads,
      num_key_value_heads: shape.kvHeads,
      head_dim: shape.headDim,
      vocab_size: vocab,
      max_position_embeddings: 4096,
      rms_norm_eps: 1e-5,
      rope_theta: 10000,
      tie_word_embeddings: true,
      bos_token_id: 1,
      eos_token_id: 2,
      dtype: 'float16',
    }),
  );
  cpSync(join(data, 'tokenizer.model'), join(model, 'tokenizer.model'));

  const started = performance.now();
  const summary = await lowbit.quantize({
    model,
    out,
    method: 'gptq',
    bits: Number(values.bits),
    groupSize: Number(values['group-size']),
    calibration: {
      files: [join(data, 'wiki.test.raw')],
      samples: Number(values.samples),
      seqLen: Number(values['seq-len']),
      seed: 0,
    },
    device: values.device,
  });
  const seconds = (performance.now() - started) / 1000;
  const params = shape.layers * (4 * dim * dim + 3 * dim * hidden);
  const device =
    values.device === 'cpu' ? `cpu (${cpus().length} threads)` : lowbit.devices().find((d) => d.kind === 'cuda')?.name;
  console.log(
    `| ${device} | ${shape.layers} × dim ${dim} (${(params / 1e6).toFixed(0)}M linear weights) | ${values.samples} × ${values['seq-len']} tokens | ${values.bits}-bit g${values['group-size']} | ${seconds.toFixed(1)} s | ${summary.bitsPerWeight.toFixed(3)} |`,
  );
} finally {
  rmSync(dir, { recursive: true, force: true });
}

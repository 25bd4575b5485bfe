// Time to GPTQ-quantize a whole synthetic Llama-shaped model (issues 5 and 11): random fp16 weights
// of a real shape, vocab 32000 (Llama 2's tokenizer from ../shared/data), written as a Hugging Face
// directory in a temporary folder (--tmp: where), then `quantize()` end to end (calibration forward
// passes, Hessians, true-sequential GPTQ, checkpoint written) with the summary's wall-time split.
//   --shape small       dim 2048, 8 blocks (--layers), MLP 5504, 16 heads of 128 (issue 5)
//   --shape llama2-7b   dim 4096, 32 blocks, MLP 11008, 32 heads of 128 (issue 11)
//
//   node bench/gptq-model.mjs [--shape small|llama2-7b] [--device cpu|cuda] [--samples N] [--seq-len N]
//        [--bits 4] [--group-size 128] [--calibration-dtype bf16|f16|f32] [--json results.json] [--tmp DIR]
//
// Imports the package from dist/ (npm run build:ts; LOWBIT_DIST to override). Prints one Markdown
// row per run; --json merges `quantize_7b` (llama2-7b) or `quantize_small` into that JSON file.
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
    layers: { type: 'string' },
    shape: { type: 'string', default: 'small' },
    'calibration-dtype': { type: 'string' },
    json: { type: 'string' },
    tmp: { type: 'string' },
  },
});
const data = resolve(process.env.LOWBIT_SHARED_DATA ?? resolve(root, '../shared/data'));
const SHAPES = {
  small: { dim: 2048, hidden: 5504, layers: 8, heads: 16, kvHeads: 16, headDim: 128, vocab: 32000 },
  'llama2-7b': { dim: 4096, hidden: 11008, layers: 32, heads: 32, kvHeads: 32, headDim: 128, vocab: 32000 },
};
const shape = { ...SHAPES[values.shape] };
if (!SHAPES[values.shape]) throw new Error(`--shape must be one of ${Object.keys(SHAPES).join(', ')}`);
if (values.layers) shape.layers = Number(values.layers);

// A deterministic xorshift stream of roughly normal values (sum of uniforms), as fp16 bit patterns.
// Tensors take windows of one pool at varying offsets (a 7B model's 6.7G values would take minutes
// to draw one by one); the timings do not depend on the values.
let state = 0x9e3779b9;
const POOL = 1 << 24;
const pools = new Map();
function randomHalves(count, std) {
  if (!pools.has(std)) pools.set(std, drawHalves(POOL + 65536, std));
  const pool = pools.get(std);
  const out = new Uint16Array(count);
  for (let i = 0; i < count; i += POOL) {
    const n = Math.min(POOL, count - i);
    state ^= state << 13;
    state ^= state >>> 17;
    state ^= state << 5;
    const at = (state >>> 0) % 65536;
    out.set(pool.subarray(at, at + n), i);
  }
  return out;
}
function drawHalves(count, std) {
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

const dir = mkdtempSync(join(values.tmp ?? tmpdir(), 'lowbit-synth-'));
const out = join(dir, 'out');
try {
  const model = join(dir, 'model');
  const writeStarted = performance.now();
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

  console.error(`model written in ${((performance.now() - writeStarted) / 1000).toFixed(1)} s`);
  const started = performance.now();
  const job = lowbit.quantize({
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
    ...(values['calibration-dtype'] ? { calibrationDtype: values['calibration-dtype'] } : {}),
  });
  job.on('progress', (p) => {
    if (p.linear.endsWith('down_proj'))
      console.error(
        `block ${p.block + 1}/${p.blocks} done at ${((performance.now() - started) / 1000).toFixed(1)} s ${JSON.stringify(p.timings)}`,
      );
  });
  const summary = await job;
  const seconds = (performance.now() - started) / 1000;
  const params = shape.layers * (4 * dim * dim + 3 * dim * hidden);
  const device =
    values.device === 'cpu' ? `cpu (${cpus().length} threads)` : lowbit.devices().find((d) => d.kind === 'cuda')?.name;
  console.log(
    `| ${device} | ${shape.layers} × dim ${dim} (${(params / 1e6).toFixed(0)}M linear weights) | ${values.samples} × ${values['seq-len']} tokens | ${values.bits}-bit g${values['group-size']} | ${seconds.toFixed(1)} s | ${summary.bitsPerWeight.toFixed(3)} |`,
  );
  const t = summary.timings;
  const split = {
    seconds,
    forward_s: t.forward,
    hessian_s: t.hessian,
    gptq_s: t.gptq,
    io_s: t.io,
    other_s: seconds - t.forward - t.hessian - t.gptq - t.io,
    write_model_s: (started - writeStarted) / 1000,
    layers: shape.layers,
    samples: Number(values.samples),
    seq_len: Number(values['seq-len']),
    calibration_dtype: values['calibration-dtype'] ?? (values.device === 'cpu' ? 'f32' : 'bf16'),
    estimated_device_bytes: summary.estimatedDeviceBytes,
    device,
    date: new Date().toISOString(),
  };
  console.log(JSON.stringify(split));
  if (values.json) {
    const { existsSync, readFileSync, renameSync } = await import('node:fs');
    const doc = existsSync(values.json) ? JSON.parse(readFileSync(values.json, 'utf8')) : {};
    doc[values.shape === 'llama2-7b' ? 'quantize_7b' : 'quantize_small'] = split;
    writeFileSync(`${values.json}.tmp`, `${JSON.stringify(doc, null, 2)}\n`);
    renameSync(`${values.json}.tmp`, values.json);
  }
} finally {
  rmSync(dir, { recursive: true, force: true });
}

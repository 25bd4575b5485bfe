// CPU forward-pass benchmark (issue 4). Not a test: `npm run bench -- forward-cpu` (builds dist/
// first), or `node bench/forward-cpu.mjs` after `npm run build:ts`. Prints a Markdown table.
//
// 1. The perplexity evaluation of stories260K (../shared/data) on tinystories-valid.txt:
//    tokens/s over --stories-windows windows of 512 (4 windows per native call).
// 2. A synthetic Llama-shaped model, dim 2048, 8 layers, 16 heads (head_dim 128), MLP 5504, vocab
//    32000 (tied), random weights, with f32 weights and with 4-bit packed weights (group 128):
//    prefill tokens/s (NLL of one 512-token window) and KV-cached decode tokens/s (batch 1).
//
// Packed models run with the default int8 activations (the repacked gptq-int8 kernels) and, for
// decode only, with cpuActivations 'f32' (gptq-packed, the exact path decode used before).
//
// Options: --stories-windows N (default 200), --windows N (synthetic prefill windows, default 1),
// --decode N (decode steps, default 16), --bits 4,3,2 (packed widths), --threads N (pool size,
// default every core), --skip-f32, --skip-packed, --skip-exact (no cpuActivations 'f32' rows),
// --skip-stories, --skip-prefill, --out PATH (default bench/results/forward-cpu.json). Decode rows
// also give the bound: bytes read per token (linears as the CPU reads them: repacked codes + fp16
// scales + u8 zeros; the tied f32 head) over the streaming-read bandwidth measured in the same run.
import { randomFillSync } from 'node:crypto';
import { existsSync, mkdirSync, readFileSync, renameSync, writeFileSync } from 'node:fs';
import { cpus, loadavg } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { performance } from 'node:perf_hooks';
import { syntheticLlama } from './synthetic-llama.mjs';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
const dist = process.env.LOWBIT_DIST ?? join(root, 'dist');
const { openModel, Model, perplexity, perplexityIds, native } = {
  ...(await import(join(dist, 'index.js'))),
  ...(await import(join(dist, 'native.js'))),
};

const flag = (name) => process.argv.includes(`--${name}`);
function option(name, fallback) {
  const i = process.argv.indexOf(`--${name}`);
  return i >= 0 && i + 1 < process.argv.length ? Number(process.argv[i + 1]) : fallback;
}
const STORIES_WINDOWS = option('stories-windows', 200);
const WINDOWS = option('windows', 1);
const DECODE = option('decode', 16);
const BITS_LIST = (() => {
  const i = process.argv.indexOf('--bits');
  return (i >= 0 ? process.argv[i + 1] : '4,3,2').split(',').map(Number);
})();

const addon = native();
if (option('threads', 0) > 0) addon.setThreads(option('threads', 0));
// CPU time of this process (all threads): throughput per CPU-second stays meaningful on a shared
// machine, where wall time depends on what else runs.
const cpuSeconds = () => {
  const u = process.cpuUsage();
  return (u.user + u.system) / 1e6;
};
const info = addon.buildInfo();
const rows = [];

// ---------------------------------------------------------------- stories260K perplexity
const data = join(root, '../shared/data');
if (!flag('skip-stories')) {
  if (!existsSync(join(data, 'stories260K-hf'))) {
    console.error(`skipping stories260K: ${data}/stories260K-hf is missing`);
  } else {
    const model = await openModel(join(data, 'stories260K-hf'), { device: 'cpu' });
    const ids = perplexityIds(model, readFileSync(join(data, 'tinystories-valid.txt'), 'utf8'));
    await perplexity(model, ids, { maxWindows: 8, batch: 4 }); // warm-up
    const c0 = cpuSeconds();
    const r = await perplexity(model, ids, { maxWindows: STORIES_WINDOWS, batch: 4 });
    const cpu = cpuSeconds() - c0;
    rows.push([
      'stories260K f32, ppl evaluation',
      `${r.windows} windows x 512`,
      `${Math.round((r.windows * 512) / r.seconds)} tok/s`,
      `${Math.round((r.windows * 512) / cpu)} tok/CPU-s`,
      `${((r.seconds * 1000) / r.windows).toFixed(1)} ms/window`,
      '',
    ]);
    await model.close();
  }
}

// ---------------------------------------------------------------- synthetic dim-2048 model
const shape = { dim: 2048, hidden: 5504, layers: 8, heads: 16, kvHeads: 16, headDim: 128, vocab: 32000, maxSeq: 512 };
const { config, dims } = await syntheticLlama({ ...shape, tied: true }, dist);

let state = 12345;
function randomF32(n, scale) {
  const a = new Float32Array(n);
  for (let i = 0; i < n; i++) {
    state = (Math.imul(state, 1664525) + 1013904223) >>> 0;
    a[i] = (state / 4294967296 - 0.5) * 2 * scale;
  }
  return a;
}

/** 32-bit words holding `count` packed codes (3 bits: 32 codes in 3 words). */
const packedWords = (bits, count) => (bits === 3 ? Math.ceil(count / 32) * 3 : Math.ceil(count / (32 / bits)));

/** A random linear, group 128, in the GPTQ layout: codes drawn uniformly, scales ~ 1/(8 sqrt K). */
function randomPacked(N, K, bits) {
  const groupSize = 128,
    groups = Math.ceil(K / groupSize);
  const scalesF32 = new Float32Array(groups * N).fill(1 / (8 * Math.sqrt(K)));
  const scales = new Uint16Array(groups * N);
  addon.convert(new Uint8Array(scalesF32.buffer), 'f32', new Uint8Array(scales.buffer), 'f16', scales.length);
  return {
    bits,
    K,
    N,
    groupSize,
    groups,
    zeroOffset: 1,
    // Uniformly random packed words are uniformly random codes at every width (speed does not
    // depend on the values), and filling them natively takes milliseconds, not seconds per layer.
    qweight: randomFillSync(new Int32Array(packedWords(bits, K) * N)),
    qzeros: addon.packQzeros(new Int32Array(groups * N).fill(1 << (bits - 1)), groups, N, bits, 1),
    scales,
  };
}

/** Bytes one decoded token reads: every linear once (as the decode kernels read it) and the f32 head. */
function bytesPerToken(bits) {
  let b = shape.vocab * shape.dim * 4;
  for (const [N, K] of Object.values(dims)) {
    const blocks = Math.ceil(N / 16),
      groups = Math.ceil(K / 128);
    b +=
      shape.layers * (bits ? (blocks * 16 * Math.ceil(K / 32) * 32 * bits) / 8 + blocks * 16 * groups * 3 : N * K * 4);
  }
  return b;
}
const readBw = addon.streamReadBandwidth
  ? Math.max(addon.streamReadBandwidth(256 << 20, 1, 5), addon.streamReadBandwidth(256 << 20, info.threads, 5))
  : NaN;
const jsonRows = [];

async function synthetic(kind, bits, cpuActivations = 'int8') {
  const model = Model.create(config, { device: 'cpu', cpuActivations });
  const skipPrefill = flag('skip-prefill') || cpuActivations === 'f32';
  await model.setGlobals({
    embed: { dtype: 'f32', data: randomF32(shape.vocab * shape.dim, 0.02) },
    finalNorm: new Float32Array(shape.dim).fill(1),
  });
  for (let b = 0; b < shape.layers; b++) {
    const w = { attnNorm: new Float32Array(shape.dim).fill(1), mlpNorm: new Float32Array(shape.dim).fill(1) };
    for (const [name, [N, K]] of Object.entries(dims)) {
      w[name] =
        kind === 'f32'
          ? { dtype: 'f32', data: randomF32(N * K, 1 / Math.sqrt(K)) }
          : { packed: randomPacked(N, K, bits) };
    }
    await model.setBlockWeights(b, w);
  }
  const ids = Int32Array.from({ length: 512 * WINDOWS }, (_, i) => (i * 7919) % shape.vocab);
  await model.nll(ids.subarray(0, 64)); // warm-up
  let t = performance.now();
  let c = cpuSeconds();
  if (!skipPrefill) await model.nll(ids, { batch: WINDOWS, seq: 512 });
  const prefill = (performance.now() - t) / 1000;
  const prefillCpu = cpuSeconds() - c;
  const session = await model.createSession(512);
  await session.feed(ids.subarray(0, 16));
  t = performance.now();
  c = cpuSeconds();
  for (let i = 0; i < DECODE; i++) await session.feed(ids.subarray(16 + i, 17 + i));
  const decode = (performance.now() - t) / 1000;
  const decodeCpu = cpuSeconds() - c;
  session.close();
  const gb = (model.weightBytes / 2 ** 30).toFixed(2);
  if (!skipPrefill)
    rows.push([
      `dim 2048 x 8 layers, ${kind} weights (${gb} GiB)`,
      `prefill ${WINDOWS} x 512`,
      `${Math.round((512 * WINDOWS) / prefill)} tok/s`,
      `${Math.round((512 * WINDOWS) / prefillCpu)} tok/CPU-s`,
      `${prefill.toFixed(2)} s`,
      '',
    ]);
  const bound = readBw / bytesPerToken(bits);
  rows.push([
    `dim 2048 x 8 layers, ${kind} weights (${gb} GiB)`,
    `decode ${DECODE} tokens (KV cache, batch 1)`,
    `${(DECODE / decode).toFixed(2)} tok/s`,
    `${(DECODE / decodeCpu).toFixed(2)} tok/CPU-s`,
    `${((decode * 1000) / DECODE).toFixed(0)} ms/token`,
    `${bound.toFixed(2)} tok/s (${(bytesPerToken(bits) / 1e6).toFixed(0)} MB/token)`,
  ]);
  jsonRows.push({
    kind,
    bits: bits ?? 32,
    decode_tok_s: DECODE / decode,
    decode_tok_cpu_s: DECODE / decodeCpu,
    bound_tok_s: bound,
    bytes_per_token: bytesPerToken(bits),
    cpu_activations: bits ? cpuActivations : null,
    prefill_tok_s: skipPrefill ? null : (512 * WINDOWS) / prefill,
  });
  await model.close();
}

if (!flag('skip-f32')) await synthetic('f32', 0);
if (!flag('skip-packed'))
  for (const bits of BITS_LIST) {
    await synthetic(`${bits}-bit packed, int8 activations`, bits);
    if (!flag('skip-exact')) await synthetic(`${bits}-bit packed, f32 activations (gptq-packed)`, bits, 'f32');
  }

console.log(
  `CPU forward pass: ${cpus()[0]?.model ?? 'cpu'}, ${info.threads} threads, ${info.activeSimd}, load average ${loadavg()[0].toFixed(1)}, ${new Date().toISOString().slice(0, 10)}`,
);
console.log('');
console.log(`streaming read (256 MiB, best of 1 and ${info.threads} threads): ${(readBw / 1e9).toFixed(1)} GB/s`);
console.log('| model | work | throughput (wall) | per CPU-second | time | bound (read BW / bytes per token) |');
console.log('| --- | --- | --- | --- | --- | --- |');
for (const r of rows) console.log(`| ${r.join(' | ')} |`);

const outIndex = process.argv.indexOf('--out'); // --out PATH: where the rows go (default below)
const out = outIndex >= 0 ? process.argv[outIndex + 1] : join(root, 'bench/results/forward-cpu.json');
mkdirSync(dirname(out), { recursive: true });
writeFileSync(
  `${out}.tmp`,
  JSON.stringify(
    {
      cpu: cpus()[0]?.model,
      simd: info.activeSimd,
      threads: info.threads,
      read_gbs: readBw / 1e9,
      date: new Date().toISOString(),
      load_average: loadavg(),
      rows: jsonRows,
    },
    null,
    1,
  ) + '\n',
);
renameSync(`${out}.tmp`, out);

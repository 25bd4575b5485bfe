// GPU forward-pass benchmark (issue 11), on the H200 machine; not a test. A Llama-2-7B-shaped model
// (dim 4096, 32 layers, 32 heads of 128, MLP 11008, vocab 32000, untied head) with random weights,
// built in this process (one random block set into all 32 layers: no checkpoint on disk), in fp16
// weights and in GPTQ 4-bit g128 weights, run with bf16 activations (--dtype to change):
//   - prefill: the NLL of one 1 x 2048 window (the head included), tokens/s;
//   - decode: KV-cached steps (model.feedBatch) of --batches B sessions at once (default 1,8,32,64),
//     each after its own --context token prompt: B x steps / seconds, tokens/s over the batch (host
//     round trip and the B x 32000 f32 logits copied back included: what a server sees);
//   - decode through generation (rows with path 'generate'): --gen-batches B greedy requests (default
//     1,8) of --gen-tokens tokens (default 256) each after its own --context token prompt, through a
//     Scheduler (what generate() and `lowbit generate` use) with decodeChunk C for each C of
//     --gen-chunks (default 1,8,16: 1 is one feedBatch per token with its logits copied back and the
//     token picked in JS; more chains C greedy steps on the GPU per native call): the tokens after
//     each request's first (which its prefill gives) over the time from the last first token to the
//     last token, after one warm-up run that captures the bucket's graph;
//   - the bound: bytes one decode step reads (every linear and the head once, plus each session's
//     keys and values over its context) over the device-to-device copy bandwidth, --copy-gbs (GB/s,
//     bytes read + written, measured by the caller in the same run: bench/forward-gpu.sh does it
//     with torch), times B tokens per step.
// --skip-prefill keeps the prefill rows already in the output file (decode rows are replaced by
// (bits, batch, context)); other keys of the file are kept.
// Rows go to bench/results/h200-forward.json (written to a temp name, then renamed) and a Markdown
// table is printed last. Usage: LOWBIT_ADDON=... node bench/forward-gpu.mjs --peer peer.json (or --copy-gbs N) [--layers 32]
// [--context 512] [--decode 64] [--batches 1,8,32,64] [--skip-prefill] [--dtype bf16] [--kinds f16,4] [--out path]
// [--gen-batches 1,8] [--gen-chunks 1,8,16] [--gen-tokens 256] (--gen-batches none: no generation rows)
import { mkdirSync, readFileSync, renameSync, writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { performance } from 'node:perf_hooks';
import { syntheticLlama } from './synthetic-llama.mjs';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
const dist = process.env.LOWBIT_DIST ?? join(root, 'dist');
const { Model, Scheduler, native } = {
  ...(await import(join(dist, 'index.js'))),
  ...(await import(join(dist, 'native.js'))),
};

function option(name, fallback) {
  const i = process.argv.indexOf(`--${name}`);
  return i >= 0 && i + 1 < process.argv.length ? process.argv[i + 1] : fallback;
}
const LAYERS = Number(option('layers', 32));
const CONTEXT = Number(option('context', 512));
const DECODE = Number(option('decode', 64));
const PREFILL = Number(option('prefill', 2048));
const DTYPE = option('dtype', 'bf16');
const KINDS = option('kinds', 'f16,4').split(',');
const BATCHES = option('batches', '1,8,32,64').split(',').map(Number);
const SKIP_PREFILL = process.argv.includes('--skip-prefill');
const GEN_BATCHES = option('gen-batches', '1,8') === 'none' ? [] : option('gen-batches', '1,8').split(',').map(Number);
const GEN_CHUNKS = option('gen-chunks', '1,8,16').split(',').map(Number);
const GEN_TOKENS = Number(option('gen-tokens', 256));
// The ceilings and the peer measured in the same run (bench/forward-gpu-peer.py's output).
const PEER = option('peer', undefined) ? JSON.parse(readFileSync(option('peer', ''), 'utf8')) : {};
const COPY_GBS = Number(option('copy-gbs', PEER.copy_gbs ?? NaN));
const OUT = option('out', join(root, 'bench/results/h200-forward.json'));

const shape = { dim: 4096, hidden: 11008, heads: 32, kvHeads: 32, headDim: 128, vocab: 32000 };
const { config, dims } = await syntheticLlama(
  { ...shape, layers: LAYERS, maxSeq: Math.max(PREFILL, CONTEXT + Math.max(DECODE, GEN_TOKENS) + 2), tied: false },
  dist,
);
const addon = native();

// A pool of random values, tiled into each weight (repeats do not change what a product costs).
let state = 12345;
const next = () => (state = (Math.imul(state, 1664525) + 1013904223) >>> 0);
const POOL = 1 << 22;
const poolF32 = Float32Array.from({ length: POOL }, () => (next() / 4294967296 - 0.5) * 2);
function tiled(Type, n, pool) {
  const a = new Type(n);
  for (let i = 0; i < n; i += pool.length) a.set(pool.subarray(0, Math.min(pool.length, n - i)), i);
  return a;
}
function f16Pool(scale) {
  const scaled = poolF32.map((v) => v * scale);
  const out = new Uint16Array(POOL);
  addon.convert(new Uint8Array(scaled.buffer), 'f32', new Uint8Array(out.buffer), 'f16', POOL);
  return out;
}
const poolI32 = Int32Array.from({ length: POOL }, () => next() | 0);

function denseF16(N, K) {
  return { dtype: 'f16', data: tiled(Uint16Array, N * K, f16Pool(1 / Math.sqrt(K))) };
}

/** A random GPTQ v1 linear, group 128: codes drawn uniformly, scales 1/(8 sqrt K), zero 8. */
function packed4(N, K) {
  const bits = 4,
    groupSize = 128,
    groups = Math.ceil(K / groupSize);
  const scalesF32 = new Float32Array(groups * N).fill(1 / (8 * Math.sqrt(K)));
  const scales = new Uint16Array(groups * N);
  addon.convert(new Uint8Array(scalesF32.buffer), 'f32', new Uint8Array(scales.buffer), 'f16', scales.length);
  return {
    packed: {
      bits,
      K,
      N,
      groupSize,
      groups,
      zeroOffset: 1,
      qweight: tiled(Int32Array, ((K * bits) / 32) * N, poolI32),
      qzeros: addon.packQzeros(new Int32Array(groups * N).fill(8), groups, N, bits, 1),
      scales,
    },
  };
}

/** Bytes one decode step reads: every block linear once (as stored), the fp16 head once. */
function bytesPerStep(kind) {
  let b = shape.vocab * shape.dim * 2;
  for (const [N, K] of Object.values(dims))
    b += LAYERS * (kind === 'f16' ? N * K * 2 : (N * K) / 2 + Math.ceil(K / 128) * N * 2.5);
  return b;
}
/** Bytes of keys and values (16-bit) one session's step reads at `context` tokens. */
const kvBytesPerToken = LAYERS * 2 * shape.kvHeads * shape.headDim * 2;

const decodeRows = [];
const prefillRows = [];
const table = [];
const genTable = [];

for (const kind of KINDS) {
  const t0 = performance.now();
  const model = Model.create(config, { device: 'cuda', dtype: DTYPE });
  await model.setGlobals({
    embed: denseF16(shape.vocab, shape.dim),
    finalNorm: new Float32Array(shape.dim).fill(1),
    head: denseF16(shape.vocab, shape.dim),
  });
  const block = { attnNorm: new Float32Array(shape.dim).fill(1), mlpNorm: new Float32Array(shape.dim).fill(1) };
  for (const [name, [N, K]] of Object.entries(dims)) block[name] = kind === 'f16' ? denseF16(N, K) : packed4(N, K);
  for (let b = 0; b < LAYERS; b++) await model.setBlockWeights(b, block);
  const loadS = (performance.now() - t0) / 1000;
  const gib = model.weightBytes / 2 ** 30;
  const bits = kind === 'f16' ? 16 : Number(kind);

  const ids = Int32Array.from(
    { length: Math.max(PREFILL, CONTEXT + DECODE + 1) },
    (_, i) => (i * 7919 + 13) % shape.vocab,
  );
  let prefillCell = '(kept)';
  if (!SKIP_PREFILL) {
    // prefill: NLL of one window (warm-up first, then the median of 3)
    const prefillIds = ids.subarray(0, PREFILL);
    await model.nll(prefillIds.subarray(0, Math.min(128, PREFILL)));
    await model.nll(prefillIds);
    const prefillTimes = [];
    for (let r = 0; r < 3; r++) {
      const t = performance.now();
      await model.nll(prefillIds);
      prefillTimes.push((performance.now() - t) / 1000);
    }
    prefillTimes.sort((a, b) => a - b);
    const prefillS = prefillTimes[1];
    // linear FLOPs of the window (2 per weight per token) over the time: the tensor-core rate reached
    let weights = shape.vocab * shape.dim;
    for (const [N, K] of Object.values(dims)) weights += LAYERS * N * K;
    const prefillTflops = (2 * weights * PREFILL) / prefillS / 1e12;
    prefillRows.push({ bits, batch: 1, tokens: PREFILL, tok_s: PREFILL / prefillS, linear_tflops: prefillTflops });
    prefillCell = `${(PREFILL / prefillS).toFixed(0)} tok/s (${prefillTflops.toFixed(0)} TFLOP/s)`;
    console.error(`${kind}: prefill ${prefillTimes.map((x) => x.toFixed(3))} s`);
  }

  // decode: B sessions, each after its own CONTEXT-token prompt (offset so that they differ), then
  // one warm-up step (captures the bucket's graph) and DECODE - 1 timed steps of all B at once
  const cells = [];
  for (const B of BATCHES) {
    const sessions = [];
    for (let b = 0; b < B; b++) {
      const s = await model.createSession(CONTEXT + DECODE + 1);
      await s.feed(ids.subarray(0, CONTEXT).map((v) => (v + b) % shape.vocab));
      sessions.push(s);
    }
    const step = (i) => Int32Array.from(sessions, (_, b) => (ids[CONTEXT + i] + b) % shape.vocab);
    // one logits array for every step, as a serving loop keeps (src/serve/scheduler.ts)
    const logits = new Float32Array(B * shape.vocab);
    await model.feedBatch(sessions, step(0), logits); // warm-up
    const t = performance.now();
    for (let i = 1; i < DECODE; i++) await model.feedBatch(sessions, step(i), logits);
    const decodeS = (performance.now() - t) / 1000;
    const tokS = (B * (DECODE - 1)) / decodeS;
    const kv = model.kvCache;
    for (const s of sessions) s.close();
    // the mean context over the timed steps
    const context = CONTEXT + DECODE / 2;
    const bound = (B * COPY_GBS * 1e9) / (bytesPerStep(kind) + B * context * kvBytesPerToken);
    decodeRows.push({ bits, batch: B, context: CONTEXT, tok_s: tokS, bound_tok_s: bound });
    cells.push({ B, tokS, bound });
    console.error(
      `${kind}: decode batch ${B}: ${tokS.toFixed(1)} tok/s (${((1000 * decodeS) / (DECODE - 1)).toFixed(2)} ms/step), bound ${bound.toFixed(0)}; pages ${kv.pagesTotal} (${kv.pagesFree} free)`,
    );
  }
  // decode through generation: B greedy requests at once through a scheduler, as a server runs them
  const genCells = [];
  for (const B of GEN_BATCHES) {
    for (const chunk of GEN_CHUNKS) {
      const scheduler = new Scheduler(model, { maxBatch: B, decodeChunk: chunk, prefillTokens: B * CONTEXT });
      const prompts = Array.from({ length: B }, (_, b) =>
        ids.subarray(0, CONTEXT).map((v) => (v + 3 * b) % shape.vocab),
      );
      const run = async (tokens) => {
        let firsts = 0;
        let start = 0;
        const counts = await Promise.all(
          prompts.map(async (p) => {
            let n = 0;
            for await (const _ of scheduler.submit(p, { temperature: 0, maxTokens: tokens, stopIds: [] })) {
              if (++n === 1 && ++firsts === B) start = performance.now();
            }
            return n;
          }),
        );
        return { seconds: (performance.now() - start) / 1000, decoded: counts.reduce((a, n) => a + n - 1, 0) };
      };
      await run(Math.min(GEN_TOKENS, 2 * chunk + 2)); // warm-up: the bucket's graph captured
      const { seconds, decoded } = await run(GEN_TOKENS);
      await scheduler.close();
      const tokS = decoded / seconds;
      const bound = (B * COPY_GBS * 1e9) / (bytesPerStep(kind) + B * (CONTEXT + GEN_TOKENS / 2) * kvBytesPerToken);
      decodeRows.push({ bits, batch: B, context: CONTEXT, path: 'generate', chunk, tok_s: tokS, bound_tok_s: bound });
      genCells.push({ B, chunk, tokS, bound });
      console.error(
        `${kind}: generate batch ${B}, decodeChunk ${chunk}: ${tokS.toFixed(1)} tok/s (${((1000 * seconds * B) / decoded).toFixed(2)} ms/step), bound ${bound.toFixed(0)}`,
      );
    }
  }
  for (const c of genCells)
    genTable.push(
      `| ${kind === 'f16' ? 'fp16' : `${kind}-bit g128`} | ${c.B} | ${c.chunk} | ${c.tokS.toFixed(1)} tok/s | ${((1000 * c.B) / c.tokS).toFixed(2)} ms | ${c.bound.toFixed(0)} tok/s | ${((100 * c.tokS) / c.bound).toFixed(0)}% |`,
    );
  const b1 = cells.find((c) => c.B === 1);
  for (const c of cells)
    table.push(
      `| ${kind === 'f16' ? 'fp16' : `${kind}-bit g128`} | ${gib.toFixed(2)} GiB | ${prefillCell} | ${c.B} | ${c.tokS.toFixed(1)} tok/s | ${b1 ? (c.tokS / b1.tokS).toFixed(1) + 'x' : ''} | ${c.bound.toFixed(0)} tok/s | ${((100 * c.tokS) / c.bound).toFixed(0)}% | ${loadS.toFixed(0)} s |`,
    );
  console.error(`${kind}: loaded in ${loadS.toFixed(1)} s`);
  await model.close();
}

const info = addon.buildInfo();
const devices = addon.cudaDevices().devices;
let previous = {};
try {
  previous = JSON.parse(readFileSync(OUT, 'utf8'));
} catch {
  // no earlier results: a new file
}
const sameRow = (a, b) =>
  a.bits === b.bits &&
  a.batch === b.batch &&
  (a.context ?? CONTEXT) === (b.context ?? CONTEXT) &&
  (a.path ?? 'feed') === (b.path ?? 'feed') &&
  (a.chunk ?? 1) === (b.chunk ?? 1);
const result = {
  ...previous,
  device: devices[0]?.name ?? 'unknown',
  date: new Date().toISOString(),
  dtype: DTYPE,
  layers: LAYERS,
  copy_gbs: COPY_GBS,
  addon: info.cudaArchs ?? '',
  decode: [...(previous.decode ?? []).filter((r) => !decodeRows.some((n) => sameRow(r, n))), ...decodeRows],
  prefill: SKIP_PREFILL ? (previous.prefill ?? []) : prefillRows,
  ...(PEER.peer ? { peer: PEER.peer } : {}),
};
mkdirSync(dirname(OUT), { recursive: true });
writeFileSync(`${OUT}.tmp`, JSON.stringify(result, null, 2) + '\n');
renameSync(`${OUT}.tmp`, OUT);
console.log(`\n${result.device}, ${LAYERS} layers, ${DTYPE} activations, copy ${COPY_GBS} GB/s, ${result.date}\n`);
console.log(
  '| weights | GPU memory (weights) | prefill 1x' +
    PREFILL +
    ' | decode batch | decode tok/s (ctx ' +
    CONTEXT +
    ') | vs batch 1 | bound | of bound | load |',
);
console.log('| --- | --- | --- | --- | --- | --- | --- | --- | --- |');
for (const row of table) console.log(row);
if (PEER.peer)
  console.log(
    `| fp16, ${PEER.peer.name} (peer) | ${PEER.peer.memory_gib.toFixed(2)} GiB (peak) | ${PEER.peer.prefill_tok_s.toFixed(0)} tok/s | 1 | ${PEER.peer.decode_tok_s.toFixed(1)} tok/s | | | | |`,
  );
if (genTable.length > 0) {
  console.log(`\nDecode through generation (greedy, a Scheduler; ctx ${CONTEXT}, ${GEN_TOKENS} tokens each):\n`);
  console.log('| weights | batch | decodeChunk | tok/s | per step | bound | of bound |');
  console.log('| --- | --- | --- | --- | --- | --- | --- |');
  for (const row of genTable) console.log(row);
}

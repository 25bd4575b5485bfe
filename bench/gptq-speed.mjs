// CPU speed of GPTQ on synthetic linears (issue 5): the time to accumulate the Hessian of
// 128×2048 random tokens' activations (K features; uneven per-channel scales, as real activations
// have) and the time of the GPTQ sweep itself (damp, Cholesky + triangular inverse in double, blocked
// sweep with lazy updates), for N×K weights. Prints a Markdown table. Not a test.
//
//   node bench/gptq-speed.mjs [--shapes 4096x4096,11008x4096] [--tokens 262144] [--bits 4] [--group 128] [--act-order]
// Shapes are N×K (out × in). Imports the package from dist/ (npm run build:ts), or from $LOWBIT_DIST.
import { cpus, loadavg } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { performance } from 'node:perf_hooks';

const root = resolve(dirname(fileURLToPath(import.meta.url)), '..');
const dist = process.env.LOWBIT_DIST ? resolve(process.env.LOWBIT_DIST) : join(root, 'dist');
const { Hessian, gptqQuantize } = await import(join(dist, 'quantize/gptq.js'));
const { native } = await import(join(dist, 'native.js'));

function option(name, fallback) {
  const i = process.argv.indexOf(`--${name}`);
  return i >= 0 && i + 1 < process.argv.length ? process.argv[i + 1] : fallback;
}
const SHAPES = option('shapes', '4096x4096,11008x4096')
  .split(',')
  .map((s) => s.split('x').map(Number));
const TOKENS = Number(option('tokens', String(128 * 2048)));
const BITS = Number(option('bits', '4'));
const GROUP = Number(option('group', '128'));
const ACT_ORDER = process.argv.includes('--act-order');
const BATCH = 2048;

/** xorshift-based normal-ish samples (sum of 4 uniforms): fast enough for 10^9 values. */
function filler(seed) {
  let s = seed >>> 0 || 1;
  const u = () => {
    s ^= s << 13;
    s ^= s >>> 17;
    s ^= s << 5;
    return (s >>> 0) / 4294967296;
  };
  return (out, scale) => {
    const K = scale.length;
    for (let i = 0; i < out.length; i++) out[i] = (u() + u() + u() + u() - 2) * 1.732 * scale[i % K];
  };
}

const hessians = new Map();
async function hessianFor(K) {
  if (hessians.has(K)) return hessians.get(K);
  const fill = filler(K);
  const scale = new Float32Array(K).map((_, i) => 0.2 + ((i * 2654435761) % 1000) / 250); // uneven channel scales
  const h = Hessian.create(K);
  const X = new Float32Array(BATCH * K);
  let seconds = 0;
  for (let t = 0; t < TOKENS; t += BATCH) {
    const rows = Math.min(BATCH, TOKENS - t);
    fill(X, scale); // not timed
    const t0 = performance.now();
    await h.addBatch(X.subarray(0, rows * K), rows);
    seconds += (performance.now() - t0) / 1000;
  }
  const entry = { h, seconds };
  hessians.set(K, entry);
  return entry;
}

const rows = [];
for (const [N, K] of SHAPES) {
  const { h, seconds: hSeconds } = await hessianFor(K);
  const W = new Float32Array(N * K);
  filler(N * 7 + K)(W, new Float32Array(K).fill(0.02));
  const t0 = performance.now();
  const r = await gptqQuantize(W, [N, K], h, { bits: BITS, groupSize: GROUP, actOrder: ACT_ORDER });
  const gSeconds = (performance.now() - t0) / 1000;
  // FLOPs: Hessian K^2 * tokens (lower triangle of X^T X, multiply + add); sweep: factorization
  // 2/3 K^3 (double) + lazy updates ~ N K^2 (f32).
  rows.push({
    N,
    K,
    hSeconds,
    gSeconds,
    hGflops: (K * K * TOKENS) / hSeconds / 1e9,
    gGflops: ((2 / 3) * K ** 3 + N * K * K) / gSeconds / 1e9,
    loss: r.loss,
    damp: r.dampPercent,
  });
  console.error(`${N}x${K}: Hessian ${hSeconds.toFixed(1)} s, GPTQ ${gSeconds.toFixed(1)} s`);
}
for (const { h } of hessians.values()) h.free();

const info = native().buildInfo();
console.log(
  `${cpus().length} threads (${cpus()[0]?.model}), addon ${info.buildSystem} ${info.activeSimd}, load average ${loadavg()[0].toFixed(2)}; ${TOKENS} tokens; ${BITS}-bit g${GROUP}${ACT_ORDER ? ' act-order' : ''}; ${new Date().toISOString().slice(0, 10)}`,
);
console.log('');
console.log('| N × K | Hessian (tokens × K²) | Hessian GFLOP/s | GPTQ sweep | sweep GFLOP/s | total | damp used |');
console.log('| --- | --- | --- | --- | --- | --- | --- |');
for (const r of rows) {
  console.log(
    `| ${r.N} × ${r.K} | ${r.hSeconds.toFixed(1)} s | ${r.hGflops.toFixed(0)} | ${r.gSeconds.toFixed(1)} s | ${r.gGflops.toFixed(0)} | ${(r.hSeconds + r.gSeconds).toFixed(1)} s | ${r.damp} |`,
  );
}

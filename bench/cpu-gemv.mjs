// CPU packed GEMV (batch 1) benchmark: time, achieved bandwidth of the packed weight bytes read
// (qweight + qzeros + scales), that against this machine's memory-copy bandwidth measured in the
// same run, and the speedup over the dense f32 GEMV on the same shapes. Not a test: run it with
// `npm run bench` (scripts/run-bench.mjs builds dist/ first). Prints a Markdown table.
//
// Options: --runs N (timed runs per case, default 21), --shapes 4096x4096,11008x4096 (N×K),
// --bits 4,3,2, --group 128.
import { Worker } from 'node:worker_threads';
import { cpus, loadavg } from 'node:os';
import { performance } from 'node:perf_hooks';
import { native, addonPath } from '../dist/native.js';

function option(name, fallback) {
  const i = process.argv.indexOf(`--${name}`);
  return i >= 0 && i + 1 < process.argv.length ? process.argv[i + 1] : fallback;
}

const RUNS = Number(option('runs', '21'));
const SHAPES = option('shapes', '4096x4096,4096x11008,11008x4096')
  .split(',')
  .map((s) => s.split('x').map(Number)); // N × K (out × in)
const BITS = option('bits', '4,3,2').split(',').map(Number);
const GROUP = Number(option('group', '128'));

const median = (xs) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];

/**
 * Median seconds of each of two async calls, timed alternately (a, b, a, b, ...) after warm-ups, so
 * that both see the same background load: the ratio stays honest on a shared machine.
 */
async function timePair(a, b, runs = RUNS) {
  for (let i = 0; i < 3; i++) {
    await a();
    await b();
  }
  const ta = [], tb = [];
  for (let i = 0; i < runs; i++) {
    for (const [fn, out] of [[a, ta], [b, tb]]) {
      const t = performance.now();
      await fn();
      out.push((performance.now() - t) / 1e3);
    }
  }
  return [median(ta), median(tb)];
}

// Memory-copy bandwidth: Buffer.copy (a native memcpy) of 256 MiB, far beyond the caches, by one
// thread and by one worker per core at once. Bytes counted = read + written.
const COPY_BYTES = 256 * 1024 * 1024;

function copyOnce(src, dst) {
  const t = performance.now();
  src.copy(dst);
  return (performance.now() - t) / 1e3;
}

function copyBandwidthOneThread() {
  const src = Buffer.alloc(COPY_BYTES, 1), dst = Buffer.alloc(COPY_BYTES, 2);
  copyOnce(src, dst);
  const times = Array.from({ length: 7 }, () => copyOnce(src, dst));
  return (2 * COPY_BYTES) / median(times);
}

const WORKER_SOURCE = `
const { parentPort, workerData } = require('node:worker_threads');
const src = Buffer.alloc(workerData.bytes, 1), dst = Buffer.alloc(workerData.bytes, 2);
src.copy(dst);
parentPort.on('message', () => { src.copy(dst); parentPort.postMessage('done'); });
parentPort.postMessage('ready');
`;

async function copyBandwidthAllThreads(threads) {
  const workers = Array.from({ length: threads }, () => new Worker(WORKER_SOURCE, { eval: true, workerData: { bytes: COPY_BYTES } }));
  const next = (w) => new Promise((resolve) => w.once('message', resolve));
  await Promise.all(workers.map(next));
  const times = [];
  for (let r = 0; r < 7; r++) {
    const t = performance.now();
    await Promise.all(workers.map((w) => { const p = next(w); w.postMessage('go'); return p; }));
    times.push((performance.now() - t) / 1e3);
  }
  await Promise.all(workers.map((w) => w.terminate()));
  return (2 * COPY_BYTES * threads) / median(times);
}

const packUnit = (bits) => (bits === 3 ? { values: 32, words: 3 } : { values: 32 / bits, words: 1 });
const packedWords = (bits, count) => Math.ceil(count / packUnit(bits).values) * packUnit(bits).words;

/** Random packed weights: the kernels' speed does not depend on the values. */
function randomPacked(N, K, bits) {
  const groups = Math.ceil(K / GROUP);
  const qweight = new Int32Array(packedWords(bits, K) * N);
  for (let i = 0; i < qweight.length; i++) qweight[i] = (Math.random() * 2 ** 32) | 0;
  const qzeros = new Int32Array(groups * packedWords(bits, N));
  for (let i = 0; i < qzeros.length; i++) qzeros[i] = (Math.random() * 2 ** 32) | 0;
  const scales = new Uint16Array(groups * N);
  for (let i = 0; i < scales.length; i++) scales[i] = 0x2000 + Math.floor(Math.random() * 1024); // ~0.008..0.016
  return { bits, K, N, groupSize: GROUP, groups, zeroOffset: 1, qweight, qzeros, scales };
}

const addon = native();
const info = addon.buildInfo();
const cpu = cpus()[0]?.model ?? 'unknown CPU';
console.log(`# CPU packed GEMV benchmark`);
console.log(`date ${new Date().toISOString()}, ${cpu}, ${cpus().length} logical CPUs, addon ${addonPath()} (${info.buildSystem}, SIMD ${info.activeSimd}, ${info.threads} threads), Node ${process.version}, load average ${loadavg().map((l) => l.toFixed(1)).join(' ')} (other processes skew timings)`);

const copyOne = copyBandwidthOneThread();
const copyAll = await copyBandwidthAllThreads(info.threads);
const copyPeak = Math.max(copyOne, copyAll);
console.log(`memory copy (Buffer.copy of 256 MiB, read + written bytes): 1 thread ${(copyOne / 1e9).toFixed(1)} GB/s, ${info.threads} threads ${(copyAll / 1e9).toFixed(1)} GB/s; reference = ${(copyPeak / 1e9).toFixed(1)} GB/s`);
console.log(`median of ${RUNS} runs after 3 warm-ups, packed and f32 runs alternating; group size ${GROUP}; packed bytes = qweight + qzeros + scales; f32 bytes = N·K·4\n`);

console.log('| N × K (out × in) | bits | packed MB | packed ms | packed GB/s | % of copy BW | f32 ms | f32 GB/s | speedup vs f32 |');
console.log('|---|---|---|---|---|---|---|---|---|');
for (const [N, K] of SHAPES) {
  const x = new Float32Array(K).map(() => Math.random() - 0.5);
  const y = new Float32Array(N);
  const dense = new Float32Array(N * K).map(() => Math.random() - 0.5);
  const denseBytes = N * K * 4;
  for (const bits of BITS) {
    const W = randomPacked(N, K, bits);
    const bytes = W.qweight.byteLength + W.qzeros.byteLength + W.scales.byteLength;
    const [t, denseTime] = await timePair(
      () => addon.packedGemm(x, 1, W, y, -1),
      () => addon.denseGemm(x, 1, dense, N, K, y),
    );
    const gbs = bytes / t / 1e9;
    console.log(
      `| ${N} × ${K} | ${bits} | ${(bytes / 1e6).toFixed(2)} | ${(t * 1e3).toFixed(3)} | ${gbs.toFixed(2)} | ${((100 * bytes) / t / copyPeak).toFixed(0)}% | ` +
        `${(denseTime * 1e3).toFixed(3)} | ${(denseBytes / denseTime / 1e9).toFixed(2)} | ${(denseTime / t).toFixed(2)}× |`,
    );
  }
}

// CPU packed products on repacked GPTQ weights (native/core/cpu_gptq): GEMV (M = 1) and int8-
// activation GEMM (M > 1) against the streaming-read ceiling measured in the same run. Not a test:
// `node bench/cpu-gemv.mjs` after `npm run build:ts` (or `npm run bench -- cpu-gemv`).
//
// The weights are repacked once (cpuGptqPrepare) and every timed call runs the prepared operator.
// Each timed product alternates with a streaming read of the same byte count by all threads
// (streamReadBandwidth: a read-only kernel, not a copy), so both see the same background load and
// the same cache regime; the ratio is `pct_read`. The ceiling for a large buffer (256 MiB, 1 and all
// threads) is printed and stored as `read_gbs`. For M = 1 the one-shot packedGemm on the GPTQ layout
// (the path before the repack) is timed too, as `before_ms`.
//
// Options: --runs N (default 9), --shapes 4096x4096,11008x4096,4096x11008,4096x14336 (N×K),
// --bits 4,3,2, --m 1,4,16,64, --act 0,1, --group 128, --threads N, --before 0 (skip before_ms),
// --out bench/results/cpu-gemv.json
import { mkdirSync, renameSync, writeFileSync } from 'node:fs';
import { cpus, loadavg } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { performance } from 'node:perf_hooks';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
const { native, addonPath } = await import(join(root, 'dist/native.js'));

function option(name, fallback) {
  const i = process.argv.indexOf(`--${name}`);
  return i >= 0 && i + 1 < process.argv.length ? process.argv[i + 1] : fallback;
}
const list = (s) => s.split(',').map(Number);
const RUNS = Number(option('runs', '9'));
const SHAPES = option('shapes', '4096x4096,11008x4096,4096x11008,4096x14336')
  .split(',')
  .map((s) => s.split('x').map(Number));
const BITS = list(option('bits', '4,3,2'));
const MS = list(option('m', '1,4,16,64'));
const ACT = list(option('act', '0,1'));
const GROUP = Number(option('group', '128'));
const BEFORE = option('before', '1') !== '0'; // --before 0: skip the one-shot GPTQ-layout product
const OUT = option('out', join(root, 'bench/results/cpu-gemv.json'));

const median = (xs) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];
const addon = native();
// --threads N: the pool size (default: every core), e.g. 2 to compare with a 2-core machine on a larger host.
if (option('threads', '')) addon.setThreads(Number(option('threads', '')));
const info = addon.buildInfo();
const threads = info.threads;

const packUnit = (bits) => (bits === 3 ? { values: 32, words: 3 } : { values: 32 / bits, words: 1 });
const packedWords = (bits, count) => Math.ceil(count / packUnit(bits).values) * packUnit(bits).words;

/** Random packed weights (speed does not depend on the values); act-order: a shuffled g_idx. */
function randomPacked(N, K, bits, actOrder) {
  const groups = Math.ceil(K / GROUP);
  const qweight = new Int32Array(packedWords(bits, K) * N);
  for (let i = 0; i < qweight.length; i++) qweight[i] = (Math.random() * 2 ** 32) | 0;
  const qzeros = new Int32Array(groups * packedWords(bits, N));
  for (let i = 0; i < qzeros.length; i++) qzeros[i] = (Math.random() * 2 ** 32) | 0;
  const scales = new Uint16Array(groups * N);
  for (let i = 0; i < scales.length; i++) scales[i] = 0x2000 + Math.floor(Math.random() * 1024);
  const W = { bits, K, N, groupSize: GROUP, groups, zeroOffset: 1, qweight, qzeros, scales };
  if (actOrder) {
    const gIdx = new Int32Array(K).map((_, k) => Math.floor(k / GROUP));
    for (let i = K - 1; i > 0; i--) {
      const j = Math.floor(Math.random() * (i + 1));
      [gIdx[i], gIdx[j]] = [gIdx[j], gIdx[i]];
    }
    W.gIdx = gIdx;
  }
  return W;
}

/**
 * Seconds of fn, each run followed by a same-size streaming read; returns [median s, median read
 * bytes/s, fastest s, fastest read bytes/s]. The fastest pair is the one least disturbed by other
 * work on a shared host (interference only ever slows a run down).
 */
function timeWithRead(fn, bytes) {
  for (let i = 0; i < 2; i++) fn();
  const t = [],
    r = [];
  for (let i = 0; i < RUNS; i++) {
    const t0 = performance.now();
    fn();
    t.push((performance.now() - t0) / 1e3);
    r.push(addon.streamReadBandwidth(Math.max(bytes, 4096), threads, 1));
  }
  return [median(t), median(r), Math.min(...t), Math.max(...r)];
}

const cpu = cpus()[0]?.model ?? 'unknown CPU';
const date = new Date().toISOString();
const load0 = loadavg();
const readOne = addon.streamReadBandwidth(256 << 20, 1, 5);
const readAll = addon.streamReadBandwidth(256 << 20, threads, 5);
const readGbs = Math.max(readOne, readAll) / 1e9;
console.log(`# CPU repacked GPTQ products`);
console.log(
  `${date}, ${cpu}, ${cpus().length} logical CPUs, SIMD ${info.activeSimd}, ${threads} threads, addon ${addonPath()}, Node ${process.version}, load average ${load0.map((l) => l.toFixed(1)).join(' ')}`,
);
console.log(
  `streaming read of 256 MiB: 1 thread ${(readOne / 1e9).toFixed(1)} GB/s, ${threads} threads ${(readAll / 1e9).toFixed(1)} GB/s`,
);
console.log(
  `median of ${RUNS} runs; bytes = repacked weight bytes read per product; % read = against a same-size streaming read timed alternately (medians; fastest: the fastest product against the fastest read)\n`,
);
console.log(
  '| N × K | bits | act-order | M | ms | GB/s | % read | % read (fastest) | GFLOP/s | kernel | before (GPTQ layout) ms |',
);
console.log('|---|---|---|---|---|---|---|---|---|---|---|');

const rows = [];
for (const [N, K] of SHAPES) {
  for (const bits of BITS) {
    for (const act of ACT) {
      const W = randomPacked(N, K, bits, act === 1);
      const handle = addon.cpuGptqPrepare(W);
      for (const M of MS) {
        const X = new Float32Array(M * K).map(() => Math.random() - 0.5);
        const Y = new Float32Array(M * N);
        let kernel = '';
        const [t, read, tBest, readBest] = timeWithRead(
          () => (kernel = addon.cpuGptqGemmSync(handle, X, M, Y)),
          handle.bytes,
        );
        let before = null;
        if (M === 1 && BEFORE) [before] = timeWithRead(() => addon.packedGemmSync(X, 1, W, Y), handle.bytes);
        const row = {
          N,
          K,
          M,
          bits,
          act_order: act === 1,
          ms: +(t * 1e3).toFixed(4),
          gbs: +(handle.bytes / t / 1e9).toFixed(2),
          pct_read: +((100 * handle.bytes) / t / read).toFixed(1),
          pct_read_best: +((100 * handle.bytes) / tBest / readBest).toFixed(1),
          gflops: M > 1 ? +((2 * N * K * M) / t / 1e9).toFixed(1) : null,
          read_gbs_same_size: +(read / 1e9).toFixed(2),
          bytes: handle.bytes,
          kernel,
          before_ms: before === null ? null : +(before * 1e3).toFixed(4),
        };
        rows.push(row);
        console.log(
          `| ${N} × ${K} | ${bits} | ${act ? 'on' : 'off'} | ${M} | ${row.ms.toFixed(3)} | ${row.gbs} | ${row.pct_read}% | ${row.pct_read_best}% | ${row.gflops ?? '–'} | ${kernel} | ${row.before_ms?.toFixed(3) ?? '–'} |`,
        );
      }
    }
  }
}

const result = {
  cpu,
  simd: info.activeSimd,
  threads,
  read_gbs: +readGbs.toFixed(2),
  date,
  load_average: [load0, loadavg()],
  rows,
};
mkdirSync(dirname(OUT), { recursive: true });
writeFileSync(`${OUT}.tmp`, JSON.stringify(result, null, 1) + '\n');
renameSync(`${OUT}.tmp`, OUT);
console.log(
  `\nload average after: ${loadavg()
    .map((l) => l.toFixed(1))
    .join(' ')}; rows written to ${OUT}`,
);

// CPU packed products on repacked GPTQ weights (native/core/cpu_gptq): GEMV (M = 1) and int8-
// activation GEMM (M > 1) against the streaming-read ceiling measured in the same run. Not a test:
// `node bench/cpu-gemv.mjs` after `npm run build:ts` (or `npm run bench -- cpu-gemv`).
//
// The weights are repacked once (cpuGptqPrepare) and every timed call runs the prepared operator.
// Two regimes, each row labelled with its `regime`:
//   l3:   one copy of the matrix, products timed back to back: the 5-31 MB matrices stay in the
//         last-level cache (300 MiB on the Xeon hosts here), so the ceiling is an L3 read.
//   dram: the product rotates over enough copies of the matrix (cpuGptqCopy) that they total at
//         least --rotate-mb (default 2 × the L3 size from /sys), so each product reads its weights
//         from DRAM as a real forward pass does; its ceiling reads slices of the same size rotating
//         over a buffer of the same total (streamReader).
// In both, each timed product is followed by a timed streaming read of the same byte count by the
// same threads (a read-only kernel, not a copy), so the two see the same background load and
// memory regime. `pct_read` is the median over those pairs of read time / product time (per pair:
// the product's bandwidth as a share of the read's); `pct_read_medians` the ratio of the medians;
// `pct_read_best` the fastest product against the fastest read. The large-buffer ceiling (the
// rotation buffer, at least 256 MiB, 1 and all threads) is `read_gbs`. For M = 1 in the l3 regime
// the one-shot packedGemm on the GPTQ layout (the path before the repack) is timed too, as `before_ms`.
//
// Options: --runs N (l3 pairs, default 9), --dram-passes N (times over every copy, default 2),
// --regime l3,dram, --rotate-mb MB, --shapes 4096x4096,11008x4096,4096x11008,4096x14336 (N×K),
// --bits 4,3,2, --m 1,4,16,64 (l3), --dram-m 1, --act 0,1, --group 128, --threads N,
// --simd auto|avx2|scalar (cap the kernels' SIMD level: forceSimd), --before 0 (skip before_ms),
// --variants L1:L2:SPIN[:SCALES],... (software prefetch: KiB of the stream ahead into L1 and L2, segments ahead
// for scales and zero points, cpuGptqSetPrefetch; the pool's idle spin in µs, LOWBIT_POOL_SPIN_US;
// the first is used for every row, the others add M = 1 rows to compare; default: the addon's own), --out bench/results/cpu-gemv.json,
// --act-paired 1 (dram, M = 1 only: act-order's cost measured in pairs instead of --act's separate rows. The same
// weights are prepared twice, without g_idx and with a shuffled one, each rotated over its own copies; every pair
// runs the off and the on product of the same copy index back to back, each followed by its same-size read, in
// an order swapped from pair to pair. Both rows carry `on_off_time`: the median over pairs of on / off time, and
// `huge_mib`: MiB of each set's copies on transparent huge pages (Linux). --act-paired control: both sides
// without act-order, the noise floor of two sets of copies.)
import { mkdirSync, readFileSync, renameSync, writeFileSync } from 'node:fs';
import { randomFillSync } from 'node:crypto';
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
const REGIMES = option('regime', 'l3,dram').split(',');
const DRAM_MS = list(option('dram-m', '1'));
const DRAM_PASSES = Number(option('dram-passes', '2'));
const ACT_PAIRED = ['1', 'control'].includes(option('act-paired', '0'));
const ACT_CONTROL = option('act-paired', '0') === 'control';
const VARIANTS = option('variants', '')
  .split(',')
  .filter(Boolean)
  .map((v) => v.split(':').map(Number));

/** Bytes of the last-level cache (sysfs "307200K"), or null where it cannot be read. */
function l3Bytes() {
  try {
    const text = readFileSync('/sys/devices/system/cpu/cpu0/cache/index3/size', 'utf8').trim();
    const m = /^(\d+)([KMG]?)/.exec(text);
    return m ? Number(m[1]) * { '': 1, K: 2 ** 10, M: 2 ** 20, G: 2 ** 30 }[m[2]] : null;
  } catch {
    return null;
  }
}
const L3 = l3Bytes();
const ROTATE = Number(option('rotate-mb', '0')) * 2 ** 20 || 2 * (L3 ?? 256 * 2 ** 20);

const median = (xs) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];
const addon = native();
// --threads N: the pool size (default: every core), e.g. 2 to compare with a 2-core machine on a larger host.
if (option('threads', '')) addon.setThreads(Number(option('threads', '')));
const simdOption = option('simd', '');
if (simdOption) addon.forceSimd(simdOption);
const info = addon.buildInfo();
const threads = info.threads;
const prefetchDefault = addon.cpuGptqSetPrefetch(4, 0);
addon.cpuGptqSetPrefetch(prefetchDefault.near, prefetchDefault.far, prefetchDefault.scales);
const spinDefault = process.env.LOWBIT_POOL_SPIN_US ?? '';
/** Applies a variant ([l1, l2, spin, scales] or null: the addon's defaults); returns its label fields. */
function applyVariant(v) {
  const [l1, l2, spin, scales] = v ?? [prefetchDefault.near, prefetchDefault.far, null];
  const sc = scales ?? prefetchDefault.scales;
  addon.cpuGptqSetPrefetch(l1, l2, sc);
  const spinText = spin === null || spin === undefined ? spinDefault : String(spin);
  if ((process.env.LOWBIT_POOL_SPIN_US ?? '') !== spinText) {
    process.env.LOWBIT_POOL_SPIN_US = spinText; // read when a pool is made: make one
    addon.setThreads(threads);
  }
  return {
    prefetch_l1: l1,
    prefetch_l2: l2,
    prefetch_scales: sc,
    spin_us: spinText === '' ? 'default' : Number(spinText),
  };
}
const variantList = VARIANTS.length ? VARIANTS : [null];

const packUnit = (bits) => (bits === 3 ? { values: 32, words: 3 } : { values: 32 / bits, words: 1 });
const packedWords = (bits, count) => Math.ceil(count / packUnit(bits).values) * packUnit(bits).words;

/** Random packed weights (speed does not depend on the values); act-order: a shuffled g_idx. */
function randomPacked(N, K, bits, actOrder) {
  const groups = Math.ceil(K / GROUP);
  const qweight = randomFillSync(new Int32Array(packedWords(bits, K) * N));
  const qzeros = randomFillSync(new Int32Array(groups * packedWords(bits, N)));
  const scales = new Uint16Array(groups * N);
  for (let i = 0; i < scales.length; i++) scales[i] = 0x2000 + Math.floor(Math.random() * 1024);
  const W = { bits, K, N, groupSize: GROUP, groups, zeroOffset: 1, qweight, qzeros, scales };
  if (actOrder) W.gIdx = shuffledGroups(K);
  return W;
}

/** MiB of this process's anonymous memory on transparent huge pages (Linux), or NaN. */
function hugeMib() {
  try {
    return Number(/AnonHugePages:\s+(\d+) kB/.exec(readFileSync('/proc/self/smaps_rollup', 'utf8'))[1]) / 1024;
  } catch {
    return NaN;
  }
}

/** An act-order g_idx: every group's GROUP positions (k / GROUP) scattered over K by a shuffle. */
function shuffledGroups(K) {
  const gIdx = new Int32Array(K).map((_, k) => Math.floor(k / GROUP));
  for (let i = K - 1; i > 0; i--) {
    const j = Math.floor(Math.random() * (i + 1));
    [gIdx[i], gIdx[j]] = [gIdx[j], gIdx[i]];
  }
  return gIdx;
}

const roundUp64 = (n) => Math.ceil(n / 64) * 64;

/**
 * `pairs` times: product(i), then a streaming read of `bytes` at readOffset(i), by all threads.
 * Returns medians and fastest of both, and the median over pairs of read time / product time.
 */
function timePairs(product, reader, readOffset, bytes, pairs) {
  const t = [],
    r = [],
    ratio = [];
  for (let i = 0; i < pairs; i++) {
    const t0 = performance.now();
    product(i);
    const dt = (performance.now() - t0) / 1e3;
    const dr = addon.streamReadSeconds(reader, readOffset(i), bytes, threads);
    t.push(dt);
    r.push(dr);
    ratio.push(dr / dt);
  }
  return { t: median(t), r: median(r), tBest: Math.min(...t), rBest: Math.min(...r), ratio: median(ratio) };
}
const cpu = cpus()[0]?.model ?? 'unknown CPU';
const date = new Date().toISOString();
const load0 = loadavg();
// One rotation buffer for every dram row: ROTATE plus room for the largest matrix's last copy.
const maxBytes = Math.max(
  ...SHAPES.map(([N, K]) => Math.ceil(N / 16) * 16 * (Math.ceil(K / 32) * 32 + Math.ceil(K / GROUP) * 24)),
);
const bigReader = addon.streamReader(roundUp64(Math.max(ROTATE, 256 * 2 ** 20) + maxBytes));
const bigRead = (n) => {
  addon.streamReadSeconds(bigReader, 0, bigReader.bytes, n);
  const s = [];
  for (let i = 0; i < 5; i++) s.push(addon.streamReadSeconds(bigReader, 0, bigReader.bytes, n));
  return bigReader.bytes / median(s);
};
const readOne = bigRead(1);
const readAll = bigRead(threads);
const readGbs = Math.max(readOne, readAll) / 1e9;
console.log(`# CPU repacked GPTQ products`);
console.log(
  `${date}, ${cpu}, ${cpus().length} logical CPUs, L3 ${L3 === null ? 'unknown' : (L3 / 2 ** 20).toFixed(0) + ' MiB'}, SIMD ${addon.buildInfo().activeSimd}, ${threads} threads, addon ${addonPath()}, Node ${process.version}, load average ${load0.map((l) => l.toFixed(1)).join(' ')}`,
);
console.log(
  `streaming read of ${(bigReader.bytes / 2 ** 20).toFixed(0)} MiB: 1 thread ${(readOne / 1e9).toFixed(1)} GB/s, ${threads} threads ${(readAll / 1e9).toFixed(1)} GB/s; dram rows rotate over ≥ ${(ROTATE / 2 ** 20).toFixed(0)} MiB of copies`,
);
console.log(
  `l3: ${RUNS} pairs; dram: ${DRAM_PASSES} passes over the copies; bytes = repacked weight bytes read per product; % read = median over pairs of (read time / product time), same-size streaming read by the same threads; of medians: the medians' ratio; fastest: the fastest product against the fastest read\n`,
);
console.log(
  '| regime | N × K | bits | act-order | M | ms | GB/s | % read (pairs) | % read (medians) | % read (fastest) | read GB/s | GFLOP/s | kernel | before (GPTQ layout) ms |',
);
console.log('|---|---|---|---|---|---|---|---|---|---|---|---|---|---|');

const rows = [];
function record(regime, N, K, bits, act, M, handle, timing, kernel, before, copies, variant) {
  const { t, r, tBest, rBest, ratio } = timing;
  const row = {
    regime,
    N,
    K,
    M,
    bits,
    act_order: act === 1,
    ms: +(t * 1e3).toFixed(4),
    gbs: +(handle.bytes / t / 1e9).toFixed(2),
    pct_read: +(100 * ratio).toFixed(1),
    pct_read_medians: +((100 * r) / t).toFixed(1),
    pct_read_best: +((100 * rBest) / tBest).toFixed(1),
    gflops: M > 1 ? +((2 * N * K * M) / t / 1e9).toFixed(1) : null,
    read_gbs_same_size: +(handle.bytes / r / 1e9).toFixed(2),
    bytes: handle.bytes,
    copies,
    ...variant,
    kernel,
    before_ms: before === null ? null : +(before * 1e3).toFixed(4),
  };
  rows.push(row);
  console.log(
    `| ${regime}${VARIANTS.length ? ` ${variant.prefetch_l1}:${variant.prefetch_l2}:${variant.spin_us}:${variant.prefetch_scales}` : ''} | ${N} × ${K} | ${bits} | ${act ? 'on' : 'off'} | ${M} | ${row.ms.toFixed(3)} | ${row.gbs} | ${row.pct_read}% | ${row.pct_read_medians}% | ${row.pct_read_best}% | ${row.read_gbs_same_size} | ${row.gflops ?? '–'} | ${kernel} | ${row.before_ms?.toFixed(3) ?? '–'} |`,
  );
}

/**
 * --act-paired: act-order off and on of the same weights from DRAM, M = 1, in pairs (see the header).
 * Per pair i (copy i % copies of each): product, read, product, read; off first on even pairs.
 */
function actPairedRows(N, K, bits) {
  const Woff = randomPacked(N, K, bits, false);
  const handles = [Woff, ACT_CONTROL ? Woff : { ...Woff, gIdx: shuffledGroups(K) }].map((w) => addon.cpuGptqPrepare(w));
  const bytes = handles[0].bytes;
  if (handles[1].bytes !== bytes)
    throw new Error(`act-order changed the repacked bytes: ${bytes} vs ${handles[1].bytes}`);
  const copies = Math.max(2, Math.ceil(ROTATE / bytes));
  const stride = roundUp64(bytes);
  const huge = [];
  const sets = handles.map((h) => {
    const before = hugeMib();
    const set = [h];
    while (set.length < copies) set.push(addon.cpuGptqCopy(h));
    huge.push(hugeMib() - before);
    return set;
  });
  const X = new Float32Array(K).map(() => Math.random() - 0.5);
  const Y = new Float32Array(N);
  const variant = applyVariant(variantList[0]);
  let kernel = '';
  const readOffset = (i) => (i % copies) * stride;
  for (let i = 0; i < copies; i++)
    for (const set of sets) {
      kernel = addon.cpuGptqGemmSync(set[i], X, 1, Y);
      addon.streamReadSeconds(bigReader, readOffset(i), bytes, threads);
    }
  const pairs = Math.max(DRAM_PASSES * copies, 5);
  const t = [[], []],
    r = [[], []],
    ratio = [[], []],
    onOff = [];
  for (let i = 0; i < pairs; i++) {
    for (const a of i % 2 === 0 ? [0, 1] : [1, 0]) {
      const t0 = performance.now();
      kernel = addon.cpuGptqGemmSync(sets[a][i % copies], X, 1, Y);
      const dt = (performance.now() - t0) / 1e3;
      const dr = addon.streamReadSeconds(bigReader, readOffset(i), bytes, threads);
      t[a].push(dt);
      r[a].push(dr);
      ratio[a].push(dr / dt);
    }
    onOff.push(t[1].at(-1) / t[0].at(-1));
  }
  const sorted = [...onOff].sort((a, b) => a - b);
  const pairFields = {
    act_paired: ACT_CONTROL ? 'control' : true,
    huge_mib: huge,
    on_off_time: +median(onOff).toFixed(4),
    on_off_time_quartiles: [+sorted[Math.floor(pairs / 4)].toFixed(4), +sorted[Math.floor((3 * pairs) / 4)].toFixed(4)],
  };
  for (const a of [0, 1]) {
    const timing = {
      t: median(t[a]),
      r: median(r[a]),
      tBest: Math.min(...t[a]),
      rBest: Math.min(...r[a]),
      ratio: median(ratio[a]),
    };
    record('dram', N, K, bits, ACT_CONTROL ? 0 : a, 1, handles[a], timing, kernel, null, copies, {
      ...variant,
      ...pairFields,
    });
  }
  console.log(
    `|   | ${ACT_CONTROL ? 'control (both off): second / first' : 'on / off'} time, median over ${pairs} pairs: ${pairFields.on_off_time} (quartiles ${pairFields.on_off_time_quartiles.join(' - ')}); MiB on huge pages per set ${huge.join(', ')} |`,
  );
}

for (const [N, K] of SHAPES) {
  for (const bits of BITS) {
    if (ACT_PAIRED) {
      actPairedRows(N, K, bits);
      globalThis.gc?.(); // (node --expose-gc) two rotation sets per row: free them before the next row's
      continue;
    }
    for (const act of ACT) {
      const W = randomPacked(N, K, bits, act === 1);
      const handle = addon.cpuGptqPrepare(W);
      const bytes = handle.bytes;
      if (REGIMES.includes('l3')) {
        const reader = addon.streamReader(Math.max(roundUp64(bytes), 4096));
        for (const M of MS) {
          const X = new Float32Array(M * K).map(() => Math.random() - 0.5);
          const Y = new Float32Array(M * N);
          for (const v of M === 1 ? variantList : variantList.slice(0, 1)) {
            const variant = applyVariant(v);
            let kernel = '';
            const product = () => (kernel = addon.cpuGptqGemmSync(handle, X, M, Y));
            for (let i = 0; i < 2; i++) {
              product();
              addon.streamReadSeconds(reader, 0, bytes, threads);
            }
            const timing = timePairs(product, reader, () => 0, bytes, RUNS);
            let before = null;
            if (M === 1 && BEFORE && v === variantList[0])
              before = timePairs(
                () => addon.packedGemmSync(X, 1, W, Y),
                reader,
                () => 0,
                bytes,
                RUNS,
              ).t;
            record('l3', N, K, bits, act, M, handle, timing, kernel, before, 1, variant);
          }
        }
      }
      if (REGIMES.includes('dram')) {
        const copies = Math.max(2, Math.ceil(ROTATE / bytes));
        const stride = roundUp64(bytes);
        let set = [handle];
        while (set.length < copies) set.push(addon.cpuGptqCopy(handle));
        for (const M of DRAM_MS) {
          const X = new Float32Array(M * K).map(() => Math.random() - 0.5);
          const Y = new Float32Array(M * N);
          for (const v of M === 1 ? variantList : variantList.slice(0, 1)) {
            const variant = applyVariant(v);
            let kernel = '';
            const product = (i) => (kernel = addon.cpuGptqGemmSync(set[i % copies], X, M, Y));
            const readOffset = (i) => (i % copies) * stride;
            for (let i = 0; i < copies; i++) {
              product(i);
              addon.streamReadSeconds(bigReader, readOffset(i), bytes, threads);
            }
            const timing = timePairs(product, bigReader, readOffset, bytes, Math.max(DRAM_PASSES * copies, 5));
            record('dram', N, K, bits, act, M, handle, timing, kernel, null, copies, variant);
          }
        }
        set = null;
      }
    }
  }
}

const result = {
  cpu,
  simd: addon.buildInfo().activeSimd,
  threads,
  read_gbs: +readGbs.toFixed(2),
  read_gbs_one_thread: +(readOne / 1e9).toFixed(2),
  read_buffer_bytes: bigReader.bytes,
  l3_bytes: L3,
  rotate_bytes: ROTATE,
  regimes: ACT_PAIRED ? ['dram'] : REGIMES,
  act_paired: ACT_PAIRED,
  variants: VARIANTS.length ? VARIANTS : null,
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

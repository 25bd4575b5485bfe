// SpQR products on a GPU against the GPTQ tensor-core kernel of the same bit width, through
// prepared linears (prepareLinear, f16 activations): 'spqr-cuda-half' vs 'gptq-tc' (group 128),
// random weights, 1% outliers. Writes bench/results/h200-spqr-roundtrip.json (or --out): the fields of
// h200-gemm.json where they apply, plus outlier_rate and spqr_vs_gptq.
//
// Timing: median wall time of matmulSync over 200 calls after 20 warm-ups, the kernels called in
// turn. Each call is a host round trip (x copied to the GPU, the kernel(s), y copied back, a stream
// sync), so the times include the same fixed overhead for both kernels; the kernel-only time is not
// separable from Node. pct_copy (weight bytes over the time, against --copy-gbs) is therefore a lower bound.
//
// --device cpu: the same on the CPU, SpQR's two CPU products ('spqr-cpu', exact f32 activations;
// 'spqr-int8', x quantized per segment, the forward pass's default) against both GPTQ CPU kernels of
// the same bit width ('gptq-int8', x quantized per 128 inputs, the default; 'gptq-packed', exact
// f32), the addon's thread pool; rows to bench/results/cpu-spqr.json, in-process wall time (no
// transfer), so only the ratios mean anything on a shared machine.
//
//   node bench/spqr-speed.mjs [--device cuda|cpu] [--shapes 4096x4096,11008x4096] [--m 1,16] [--bits 3,4]
//                             [--copy-gbs 4201] [--reps 200] [--outliers 0.01]
import { mkdir, rename, writeFile } from 'node:fs/promises';
import { cpus } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = resolve(dirname(fileURLToPath(import.meta.url)), '..');
const dist = process.env.LOWBIT_DIST ? resolve(process.env.LOWBIT_DIST) : join(root, 'dist');
const { prepareLinear } = await import(join(dist, 'quantize/linear.js'));
const { native } = await import(join(dist, 'native.js'));

function option(name, fallback) {
  const i = process.argv.indexOf(`--${name}`);
  return i >= 0 && i + 1 < process.argv.length ? process.argv[i + 1] : fallback;
}
const SHAPES = option('shapes', '4096x4096')
  .split(',')
  .map((s) => s.split('x').map(Number)); // N x K
const MS = option('m', '1,16').split(',').map(Number);
const BITS = option('bits', '3,4').split(',').map(Number);
const COPY_GBS = Number(option('copy-gbs', '4201.4')); // measured on the H200 (h200-gemm.json)
const CPU = option('device', 'cuda') === 'cpu';
const OUT = option('out', join(root, CPU ? 'bench/results/cpu-spqr.json' : 'bench/results/h200-spqr-roundtrip.json'));
const REPS = Number(option('reps', CPU ? '20' : '200'));
const OUTLIERS = Number(option('outliers', '0.01')); // fraction of weights kept as fp16 outliers

let seed = 12345;
const rand = () => {
  seed = (seed * 1103515245 + 12345) >>> 0;
  return seed / 2 ** 32;
};
const f16 = (x) => {
  const f = new Float32Array([x]);
  const u = new Uint32Array(f.buffer)[0];
  const sign = (u >>> 16) & 0x8000;
  const e = ((u >>> 23) & 0xff) - 127 + 15;
  if (e <= 0) return sign;
  if (e >= 31) return sign | 0x7c00;
  return sign | (e << 10) | ((u >>> 13) & 0x3ff);
};
const randomBytes = (n) => Uint8Array.from({ length: n }, () => Math.floor(rand() * 256));

function spqrWeights(N, K, bits) {
  const beta1 = 16,
    beta2 = 16,
    statBits = 3;
  const G = Math.ceil(K / beta1),
    NB = Math.ceil(N / beta2);
  const stats = () => {
    const s = new Uint16Array(G * NB * 2);
    for (let i = 0; i < G * NB; i++) {
      s[2 * i] = f16(0.001 + 0.01 * rand());
      s[2 * i + 1] = f16(0.001 * rand());
    }
    return s;
  };
  const perm = Int32Array.from({ length: K }, (_, i) => i);
  for (let i = K - 1; i > 0; i--) {
    const j = Math.floor(rand() * (i + 1));
    [perm[i], perm[j]] = [perm[j], perm[i]];
  }
  const rowptr = new Int32Array(N + 1);
  const cols = [];
  for (let n = 0; n < N; n++) {
    for (let p = 0; p < K; p++) if (rand() < OUTLIERS) cols.push(p);
    rowptr[n + 1] = cols.length;
  }
  return {
    format: 'spqr',
    bits,
    statBits,
    N,
    K,
    beta1,
    beta2,
    qweight: randomBytes(Math.ceil((N * K * bits) / 8)),
    scaleCodes: randomBytes(Math.ceil((N * G * statBits) / 8)),
    zeroCodes: randomBytes(Math.ceil((N * G * statBits) / 8)),
    scaleStats: stats(),
    zeroStats: stats(),
    perm,
    outlierRowptr: rowptr,
    outlierCols: Int32Array.from(cols),
    outlierValues: Uint16Array.from(cols, () => f16((rand() - 0.5) * 0.1)),
  };
}

function gptqWeights(N, K, bits) {
  const groupSize = 128,
    groups = Math.ceil(K / groupSize);
  const words = (count) => Math.ceil(count / { 2: 16, 3: 32, 4: 8 }[bits]) * (bits === 3 ? 3 : 1);
  const i32 = (n) => Int32Array.from({ length: n }, () => (rand() * 2 ** 32) | 0);
  return {
    format: 'gptq',
    bits,
    K,
    N,
    groupSize,
    groups,
    zeroOffset: 1,
    qweight: i32(words(K) * N),
    qzeros: i32(groups * words(N)),
    scales: Uint16Array.from({ length: groups * N }, () => f16(0.001 + 0.01 * rand())),
  };
}

// Median µs of each prepared linear's matmulSync, the linears called in turn (A B C A B C …) so a
// drift of the shared machine's speed reaches all of them alike.
function timeAll(lins, M, K) {
  const x = CPU
    ? Float32Array.from({ length: M * K }, () => rand() - 0.5)
    : Uint16Array.from({ length: M * K }, () => f16(rand() - 0.5));
  const runs = Object.entries(lins).map(([name, lin]) => ({
    name,
    lin,
    out: CPU ? new Float32Array(M * lin.N) : new Uint16Array(M * lin.N),
    t: [],
  }));
  for (const r of runs) for (let i = 0; i < Math.max(3, REPS / 10); i++) r.lin.matmulSync(x, M, r.out);
  for (let i = 0; i < REPS; i++)
    for (const r of runs) {
      const t0 = process.hrtime.bigint();
      r.lin.matmulSync(x, M, r.out);
      r.t.push(Number(process.hrtime.bigint() - t0) / 1e3);
    }
  return Object.fromEntries(runs.map((r) => [r.name, r.t.sort((a, b) => a - b)[r.t.length >> 1]]));
}

if (CPU) await cpuRows();
else await cudaRows();

// Times SpQR and its peers (prepare(spqr, gptq) → { spqr, ...peers }, prepared linears) on every
// shape, bit width and M; row(us, lins, M, N, K) gives a row's own fields from their times.
function measure(prepare, row) {
  const rows = [];
  for (const [N, K] of SHAPES)
    for (const bits of BITS) {
      const s = spqrWeights(N, K, bits);
      const lins = prepare(s, gptqWeights(N, K, bits));
      for (const M of MS) {
        const us = timeAll(lins, M, K);
        const r = {
          K,
          N,
          M,
          bits,
          group: 16,
          ...row(us, lins, M, N, K),
          outlier_rate: +(s.outlierCols.length / (N * K)).toFixed(5),
          weight_bytes: lins.spqr.bytes,
        };
        rows.push(r);
        console.log(JSON.stringify(r));
      }
      for (const lin of Object.values(lins)) lin.close();
    }
  return rows;
}

// SpQR's CPU product against the two GPTQ CPU kernels, in one process.
async function cpuRows() {
  const rows = measure(
    (s, g) => ({
      spqr: prepareLinear(s, { kernel: 'spqr-cpu' }),
      spqrInt8: prepareLinear(s, { kernel: 'spqr-int8', cpuActivations: 'int8' }),
      int8: prepareLinear(g, { kernel: 'gptq-int8', cpuActivations: 'int8' }),
      packed: prepareLinear(g, { kernel: 'gptq-packed' }),
    }),
    (us, lins) => ({
      us: +us.spqr.toFixed(1),
      spqr_int8_us: +us.spqrInt8.toFixed(1),
      gptq_int8_us: +us.int8.toFixed(1),
      gptq_packed_us: +us.packed.toFixed(1),
      spqr_int8_vs_gptq_int8: +(us.int8 / us.spqrInt8).toFixed(3),
      spqr_vs_gptq_packed: +(us.packed / us.spqr).toFixed(3),
      spqr_int8_weight_bytes: lins.spqrInt8.bytes,
      gptq_int8_weight_bytes: lins.int8.bytes,
      gptq_weight_bytes: lins.packed.bytes,
    }),
  );
  await write({
    device: `CPU (${cpus()[0].model}, ${native().buildInfo().threads} threads, ${native().buildInfo().activeSimd})`,
    rows,
  });
}

async function write(body) {
  await mkdir(dirname(OUT), { recursive: true });
  const tmp = `${OUT}.tmp`;
  await writeFile(tmp, JSON.stringify({ ...body, date: new Date().toISOString() }, null, 1) + '\n');
  await rename(tmp, OUT);
  console.log(`wrote ${OUT}`);
}

async function cudaRows() {
  const device = native().cudaDevices().devices[0];
  if (!device) throw new Error('no CUDA device');
  const rows = measure(
    (s, g) => ({
      spqr: prepareLinear(s, { device: 'cuda', activations: 'f16', kernel: 'spqr-cuda-half' }),
      gptq: prepareLinear(g, { device: 'cuda', activations: 'f16', kernel: 'gptq-tc' }),
    }),
    (us, lins, M, N, K) => ({
      us: +us.spqr.toFixed(2),
      pct_copy: +((lins.spqr.bytes / (us.spqr * 1e-6) / 1e9 / COPY_GBS) * 100).toFixed(1),
      tflops: +((2 * M * N * K) / (us.spqr * 1e-6) / 1e12).toFixed(3),
      config: 'spqr-cuda-half (warp per row, 1/2/4/8-row tiles)',
      gptq_tc_us: +us.gptq.toFixed(2),
      spqr_vs_gptq: +(us.gptq / us.spqr).toFixed(3),
    }),
  );
  await write({
    device: device.name,
    copy_gbs: COPY_GBS,
    timing: `median host round trip of matmulSync (x H2D, kernel, y D2H, sync) over ${REPS} calls; both kernels carry the same overhead`,
    rows,
  });
}

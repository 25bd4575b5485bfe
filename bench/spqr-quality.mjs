// SpQR quality on stories260K (issue 12): perplexity of SpQR at 2, 3 and 4 bits (default groups
// 16×16, 3-bit statistics, τ 0.2, budget 1%, damp 0.01, act-order), its exact average bits per weight
// (weights + both statistic levels + permutation + outliers), beside RTN and GPTQ (g32 and per
// channel, act-order on) measured in the same run with the same calibration. Protocol of
// bench/gptq-quality.mjs: calibration 128 windows of 512 tokens (seed 0) of tinystories-valid.calib.txt,
// evaluation tinystories-valid.eval.txt in 512-token windows. SpQR linears are put into the model
// dequantized (what the SpQR product computes; test/spqr/gemm.test.ts holds the product to it).
// Models run with exact f32 activations (cpuActivations 'f32'), as bench/gptq-quality.mjs. Writes bench/results/spqr-quality.json and prints a Markdown table. Not a test.
//
//   node bench/spqr-quality.mjs [--out spqr-quality] [--bits 4,3,2] [--samples 128] [--seq-len 512] [--no-baselines]
//        [--tau 0.2] [--budget 0.01] [--damp 0.01] [--beta1 16] [--beta2 16] [--stat-bits 3] [--no-act-order] [--no-grid-search] [--no-stat-search]
// Imports the package from dist/ (npm run build:ts), or from $LOWBIT_DIST.
import { mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { statSync } from 'node:fs';
import { cpus, tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = resolve(dirname(fileURLToPath(import.meta.url)), '..');
const dist = process.env.LOWBIT_DIST ? resolve(process.env.LOWBIT_DIST) : join(root, 'dist');
const { quantize } = await import(join(dist, 'quantize/index.js'));
const { openModel } = await import(join(dist, 'model/model.js'));
const { perplexity } = await import(join(dist, 'model/perplexity.js'));
const { calibrationWindows } = await import(join(dist, 'schedule/calibration.js'));
const { spqrQuantizeModel, averageBits } = await import(join(dist, 'quantize/spqr-model.js'));

function option(name, fallback) {
  const i = process.argv.indexOf(`--${name}`);
  return i >= 0 && i + 1 < process.argv.length ? process.argv[i + 1] : fallback;
}
const BITS = option('bits', '4,3,2').split(',').map(Number);
const SAMPLES = Number(option('samples', '128'));
const SEQ = Number(option('seq-len', '512'));
const BASELINES = !process.argv.includes('--no-baselines');
const spqrOptions = {
  beta1: Number(option('beta1', '16')),
  beta2: Number(option('beta2', '16')),
  statBits: Number(option('stat-bits', '3')),
  outlierThreshold: Number(option('tau', '0.2')),
  outlierBudget: Number(option('budget', '0.01')),
  damp: Number(option('damp', '0.01')),
  actOrder: !process.argv.includes('--no-act-order'),
  gridSearch: !process.argv.includes('--no-grid-search'),
  statSearch: !process.argv.includes('--no-grid-search') && !process.argv.includes('--no-stat-search'),
};

const data = existsDir(join(root, 'data')) ? join(root, 'data') : resolve(root, '../shared/data');
function existsDir(p) {
  try {
    return statSync(p).isDirectory();
  } catch {
    return false;
  }
}
const modelDir = join(data, 'stories260K-hf');
const calib = join(data, 'tinystories-valid.calib.txt');
const evalText = await readFile(join(data, 'tinystories-valid.eval.txt'), 'utf8');
const pplOf = async (model) => (await perplexity(model, evalText, { seqLen: 512 })).ppl;

const rows = [];
const fp = await openModel(modelDir, { device: 'cpu', cpuActivations: 'f32' });
const fpPpl = await pplOf(fp);
rows.push({ method: 'fp32', bits: 32, group: '-', ppl: fpPpl, bpw: 32 });
const ids = await calibrationWindows(fp, { source: [calib], samples: SAMPLES, seqLen: SEQ, seed: 0 });
await fp.close();

for (const bits of BITS) {
  const model = await openModel(modelDir, { device: 'cpu', cpuActivations: 'f32' });
  const t0 = performance.now();
  const layers = await spqrQuantizeModel(model, ids, SEQ, { ...spqrOptions, bits });
  const seconds = (performance.now() - t0) / 1000;
  const ppl = await pplOf(model);
  await model.close();
  const nnz = layers.reduce((n, l) => n + l.weights.outlierCols.length, 0);
  const weights = layers.reduce((n, l) => n + l.weights.N * l.weights.K, 0);
  const part = (k) => layers.reduce((n, l) => n + l.report.bits[k], 0) / weights;
  const row = {
    method: 'spqr',
    bits,
    group: `${spqrOptions.beta1}×${spqrOptions.beta2}`,
    ppl,
    bpw: averageBits(layers),
    outlierRate: nnz / weights,
    seconds,
    parts: {
      weights: part('weights'),
      firstLevel: part('firstLevel'),
      secondLevel: part('secondLevel'),
      permutation: part('permutation'),
      outliers: part('outliers'),
    },
  };
  rows.push(row);
  console.error(
    `SpQR ${bits}-bit: ppl ${ppl.toFixed(4)}, ${row.bpw.toFixed(3)} bits/weight, outliers ${(100 * row.outlierRate).toFixed(2)}%, ${seconds.toFixed(1)} s`,
  );
}

if (BASELINES) {
  const work = await mkdtemp(join(tmpdir(), 'lowbit-spqr-quality-'));
  try {
    for (const bits of BITS)
      for (const groupSize of [32, -1])
        for (const method of ['rtn', 'gptq']) {
          const out = join(work, `${method}-${bits}-${groupSize}`);
          const summary = await quantize({
            model: modelDir,
            out,
            method,
            bits,
            groupSize,
            actOrder: method === 'gptq' ? true : undefined, // RTN refuses GPTQ's options
            calibration: method === 'gptq' ? { files: [calib], samples: SAMPLES, seqLen: SEQ, seed: 0 } : undefined,
          });
          const q = await openModel(out, { device: 'cpu', cpuActivations: 'f32' });
          const ppl = await pplOf(q);
          await q.close();
          await rm(out, { recursive: true, force: true });
          rows.push({
            method,
            bits,
            group: groupSize === -1 ? 'per-channel' : `${groupSize}`,
            ppl,
            bpw: summary.bitsPerWeight,
            seconds: summary.seconds,
          });
          console.error(
            `${method} ${bits}-bit g${groupSize}: ppl ${ppl.toFixed(4)}, ${summary.bitsPerWeight.toFixed(3)} bits/weight`,
          );
        }
  } finally {
    await rm(work, { recursive: true, force: true });
  }
}

const meta = {
  model: 'stories260K-hf',
  eval: 'tinystories-valid.eval.txt',
  calibration: `${SAMPLES}x${SEQ} seed 0`,
  spqrOptions,
  threads: cpus().length,
  cpu: cpus()[0]?.model,
  date: new Date().toISOString(),
};
await mkdir(join(root, 'bench/results'), { recursive: true });
await writeFile(
  join(root, `bench/results/${option('out', 'spqr-quality')}.json`),
  JSON.stringify({ meta, rows }, null, 2) + '\n',
);
console.log(
  `stories260K-hf, eval tinystories-valid.eval.txt (512-token windows), calibration ${SAMPLES}×${SEQ} tokens of tinystories-valid.calib.txt (seed 0); SpQR ${JSON.stringify(spqrOptions)}; GPTQ act-order; ${meta.threads} CPU threads; ${meta.date.slice(0, 10)}`,
);
console.log('');
console.log('| method | bits | groups | ppl | vs fp32 | bits/weight | outliers |');
console.log('| --- | --- | --- | --- | --- | --- | --- |');
for (const r of rows.sort((a, b) => b.bits - a.bits || a.bpw - b.bpw)) {
  const vs = r.method === 'fp32' ? '-' : `${(((r.ppl - fpPpl) / fpPpl) * 100).toFixed(1)}%`;
  console.log(
    `| ${r.method.toUpperCase()} | ${r.bits} | ${r.group} | ${r.ppl.toFixed(4)} | ${vs} | ${r.bpw.toFixed(3)} | ${r.outlierRate === undefined ? '-' : `${(100 * r.outlierRate).toFixed(2)}%`} |`,
  );
}

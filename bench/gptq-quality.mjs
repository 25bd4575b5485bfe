// GPTQ quality on stories260K (issue 5): perplexity of fp32, RTN and GPTQ at 4/3/2 bits, per channel
// and group size 32, GPTQ with and without act-order. Calibration: 128 windows of 512 tokens (seed 0)
// from tinystories-valid.calib.txt; evaluation: tinystories-valid.eval.txt, REFERENCE.md's protocol
// (BOS once, 512-token windows). Each GPTQ/RTN result is measured twice: in memory (the packed
// linears put into the fp32 model) and read back from the written checkpoint; the two must agree.
// Models run with exact f32 activations (cpuActivations 'f32'): the method's quality, without the
// int8 activations of the default CPU decode path. Prints a Markdown table. Not a test.
//
//   node bench/gptq-quality.mjs [--bits 4,3,2] [--groups -1,32] [--samples 128] [--seq-len 512]
//        [--methods rtn,gptq] [--act-order no,yes] [--mse] [--static-groups] [--damp 0.01]
// Imports the package from dist/ (npm run build:ts), or from $LOWBIT_DIST.
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { cpus, tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = resolve(dirname(fileURLToPath(import.meta.url)), '..');
const dist = process.env.LOWBIT_DIST ? resolve(process.env.LOWBIT_DIST) : join(root, 'dist');
const { quantize } = await import(join(dist, 'quantize/index.js'));
const { openModel } = await import(join(dist, 'model/model.js'));
const { perplexity } = await import(join(dist, 'model/perplexity.js'));
const { LINEAR_NAMES } = await import(join(dist, 'formats/hf.js'));

function option(name, fallback) {
  const i = process.argv.indexOf(`--${name}`);
  return i >= 0 && i + 1 < process.argv.length ? process.argv[i + 1] : fallback;
}
const BITS = option('bits', '4,3,2').split(',').map(Number);
const GROUPS = option('groups', '-1,32').split(',').map(Number);
const SAMPLES = Number(option('samples', '128'));
const SEQ = Number(option('seq-len', '512'));
const METHODS = option('methods', 'rtn,gptq').split(',');
const ACT = option('act-order', 'no,yes')
  .split(',')
  .map((v) => v === 'yes');
const MSE = process.argv.includes('--mse');
const STATIC = process.argv.includes('--static-groups');
const DAMP = Number(option('damp', '0.01'));

const data = resolve(root, '../shared/data');
const modelDir = join(data, 'stories260K-hf');
const calib = join(data, 'tinystories-valid.calib.txt');
const evalText = await readFile(join(data, 'tinystories-valid.eval.txt'), 'utf8');

async function pplOf(model) {
  return (await perplexity(model, evalText, { seqLen: 512 })).ppl;
}

const fp = await openModel(modelDir, { device: 'cpu', cpuActivations: 'f32' });
const fpPpl = await pplOf(fp);
const blockPrefixes = fp.reader.tensors.blocks;

async function inMemoryPpl(packed) {
  for (let b = 0; b < blockPrefixes.length; b++) {
    for (const name of LINEAR_NAMES) await fp.setLinear(b, name, { packed: packed.get(blockPrefixes[b][name].prefix) });
  }
  const ppl = await pplOf(fp);
  for (let b = 0; b < blockPrefixes.length; b++) await fp.loadBlock(b); // back to fp32
  return ppl;
}

const rows = [];
const work = await mkdtemp(join(tmpdir(), 'lowbit-gptq-quality-'));
try {
  for (const bits of BITS) {
    for (const groupSize of GROUPS) {
      const settings = [
        ...(METHODS.includes('rtn') ? [{ method: 'rtn', actOrder: false }] : []),
        ...(METHODS.includes('gptq') ? ACT.map((actOrder) => ({ method: 'gptq', actOrder })) : []),
      ];
      for (const s of settings) {
        const out = join(work, `${s.method}-${bits}-${groupSize}-${s.actOrder}`);
        const summary = await quantize({
          model: modelDir,
          out,
          method: s.method,
          bits,
          groupSize,
          mse: MSE,
          // GPTQ's own options (RTN refuses them)
          ...(s.method === 'gptq'
            ? {
                actOrder: s.actOrder,
                staticGroups: STATIC && s.actOrder,
                damp: DAMP,
                calibration: { files: [calib], samples: SAMPLES, seqLen: SEQ, seed: 0 },
              }
            : {}),
          keepPacked: true,
        });
        const memPpl = await inMemoryPpl(summary.packed);
        const q = await openModel(out, { device: 'cpu', cpuActivations: 'f32' });
        const filePpl = await pplOf(q);
        await q.close();
        await rm(out, { recursive: true, force: true });
        rows.push({ bits, groupSize, ...s, memPpl, filePpl, bpw: summary.bitsPerWeight, seconds: summary.seconds });
        console.error(
          `${s.method} ${bits}-bit g${groupSize}${s.actOrder ? ' act-order' : ''}: ppl ${memPpl.toFixed(4)} (checkpoint ${filePpl.toFixed(4)}), ${summary.seconds.toFixed(1)} s`,
        );
      }
    }
  }
} finally {
  await rm(work, { recursive: true, force: true });
  await fp.close();
}

console.log(
  `stories260K-hf, eval tinystories-valid.eval.txt (512-token windows), calibration ${SAMPLES}×${SEQ} tokens of tinystories-valid.calib.txt (seed 0), damp ${DAMP}${MSE ? ', MSE grid' : ''}${STATIC ? ', static groups with act-order' : ''}; ${cpus().length} CPU threads (${cpus()[0]?.model}); ${new Date().toISOString().slice(0, 10)}`,
);
console.log('');
console.log(
  '| method | bits | group | act-order | ppl (in memory) | ppl (checkpoint read back) | vs fp32 | bits/weight | quantize time |',
);
console.log('| --- | --- | --- | --- | --- | --- | --- | --- | --- |');
console.log(`| fp32 | 32 | - | - | ${fpPpl.toFixed(4)} | - | - | 32 | - |`);
for (const r of rows) {
  const vs = `${(((r.memPpl - fpPpl) / fpPpl) * 100).toFixed(1)}%`;
  console.log(
    `| ${r.method.toUpperCase()} | ${r.bits} | ${r.groupSize === -1 ? 'per-channel' : r.groupSize} | ${r.method === 'rtn' ? '-' : r.actOrder ? 'yes' : 'no'} | ${r.memPpl.toFixed(4)} | ${r.filePpl.toFixed(4)} | ${vs} | ${r.bpw.toFixed(3)} | ${r.seconds.toFixed(1)} s |`,
  );
}
let bad = 0;
for (const r of rows) {
  if (r.method !== 'gptq') continue;
  const rtn = rows.find((x) => x.method === 'rtn' && x.bits === r.bits && x.groupSize === r.groupSize);
  if (rtn && !(r.memPpl < rtn.memPpl)) {
    console.error(
      `GPTQ does not beat RTN at ${r.bits}-bit g${r.groupSize} act-order=${r.actOrder}: ${r.memPpl} vs ${rtn.memPpl}`,
    );
    bad++;
  }
}
for (const r of rows) {
  if (Math.abs(r.memPpl - r.filePpl) > 1e-9 * r.memPpl) {
    console.error(
      `in-memory and checkpoint ppl differ for ${r.method} ${r.bits}-bit g${r.groupSize}: ${r.memPpl} vs ${r.filePpl}`,
    );
    bad++;
  }
}
process.exitCode = bad ? 1 : 0;

import { existsSync } from 'node:fs';
import { bundled } from '../bundled.js';
import { resolveDevice } from '../devices.js';
import { writtenConfig } from '../formats/gptq.js';
import { readLlamaConfig } from '../formats/hf.js';
import { applyPreset, PRESETS, vllmWarnings, type PresetName, type PresetSettings } from '../presets.js';
import { LowbitError } from '../errors.js';
import {
  quantize,
  type QuantizeOptions,
  type QuantizeProgress,
  type QuantizeSummary,
  type QuantizeWarning,
} from '../schedule/quantize.js';
import { DEFAULT_METHOD, METHODS, METHOD_NAMES, methodOf, type MethodName } from '../schedule/methods/index.js';
import { integerOption, numberOption, parse } from './args.js';
import { resolveModelArg } from './model-arg.js';
import { Progress } from './progress.js';
import { GPTQ_BITS_TEXT, isGptqBits, type GptqBits } from '../weights/formats.js';

export const usage = `usage: lowbit quantize [--model <dir>|<org/name[@revision]>] --out <dir> [options]

Quantizes a Hugging Face Llama-family model into a GPTQ checkpoint (or, with --method spqr, a
SpQR checkpoint), block by block (only one block's weights in memory). Ctrl-C stops cleanly; --resume continues from the finished blocks.
Without --model it quantizes the small model shipped with lowbit (stories260K) on its shipped
calibration text.

  --preset vllm           settings vLLM's fast GPTQ kernels take: 4-bit (or --bits 8), --sym,
                          group size 128 (or 32/64/channel), --act-order through static groups
                          (desc_act false); warns about options or shapes they cannot take
  --method ${METHOD_NAMES.join('|').padEnd(14)} (default ${DEFAULT_METHOD})
${METHOD_NAMES.map((n) => `                          ${n}: ${METHODS[n].description}`).join('\n')}
  --bits 2|3|4|8          (default 4; SpQR: 2|3|4, default 3)
  --group-size N          input columns per group; 'channel' (or --group-size=-1) = one group
                          per output channel (default 128)
  --act-order             (gptq) quantize columns by descending Hessian diagonal
  --static-groups         (gptq) fit group grids up front (act-order stays cheap at
                          inference)
  --sym                   symmetric grid
  --mse                   search shrunken grid ranges
  --damp F                (gptq) dampening, fraction of mean(diag H) (default 0.01)
  --no-true-sequential    (gptq) quantize a block's linears all from its unquantized
                          inputs
  --calib <file>|self     calibration text (repeatable), or 'self' to sample it from the model
  --samples N             calibration windows (default 128)
  --seq-len N             tokens per window (default min(2048, the model's context))
  --seed N                calibration seed (default 0)
  --format gptq|gptq_v2   qzeros layout (default gptq, i.e. v1)
  --quantize-lm-head      quantize lm_head too, last (GPTQ: on the final norm's outputs);
                          a tied embedding is untied and stays dense
SpQR (--method spqr; --act-order and --damp apply, the GPTQ grid options do not):
  --beta1 N               first-level group: input columns sharing a scale and zero (default 16)
  --beta2 N               second-level group: output rows whose statistics share a grid (default 16)
  --stat-bits N           bits of each quantized scale and zero, 1..8 (default 3)
  --tau F                 outlier threshold relative to the layer's typical error, > 0, or
                          'none' for no outliers (default 0.2)
  --outlier-budget F      most outliers per layer, a fraction in (0, 1) (default 0.01)
  --no-act-order          sweep columns in their stored order (SpQR's default is act-order)
  --no-grid-search        fit each first-level group min-max instead of searching its scale and
                          zero for the lowest error (the default; also turns the next one off)
  --no-stat-search        quantize each second-level block's scales and zeros on their min-max
                          grid instead of searching that grid for the lowest error (the default)
  --device cpu|cuda       where forward passes run (default cpu)
  --calibration-dtype bf16|f16|f32
                          (cuda) what calibration passes compute in: bf16 (default) keeps the
                          states and captures on the GPU; f32 writes the CPU's checkpoints
  --resume                continue an interrupted run with the same options
  --max-memory SIZE       refuse up front if the estimated peak exceeds SIZE (e.g. 20GB)
  --json                  print the summary as JSON`;

function progressDetail(p: QuantizeProgress): string {
  return `block ${p.block + 1}/${p.blocks} ${p.linear}${p.loss === null ? '' : ` loss ${p.loss.toExponential(2)}`}`;
}

export function formatSummary(s: QuantizeSummary): string {
  const spqr = s.outlierRate !== undefined;
  const rows = s.layers.map((l) =>
    [
      l.prefix.padEnd(36),
      `${l.N}x${l.K}`.padStart(11),
      (l.loss === null ? '-' : l.loss.toExponential(3)).padStart(10),
      l.bitsPerWeight.toFixed(3).padStart(7),
      ...(spqr ? [`${(100 * (l.outlierRate ?? 0)).toFixed(3)}%`.padStart(9)] : []),
      `${(l.bytes / 1024).toFixed(1)} KiB`.padStart(12),
      `${l.seconds.toFixed(2)} s`.padStart(9),
      l.dampRaises > 0 ? `  damp raised x${l.dampRaises}` : '',
    ].join(' '),
  );
  return [
    `${'layer'.padEnd(36)} ${'N x K'.padStart(11)} ${'loss'.padStart(10)} ${'bits/w'.padStart(7)}${spqr ? ` ${'outliers'.padStart(9)}` : ''} ${'size'.padStart(12)} ${'time'.padStart(9)}`,
    ...rows,
    '',
    `${s.method.toUpperCase()} ${s.bits}-bit, ${spqr ? 'first-level group' : 'group size'} ${s.groupSize}: ${s.layers.length} linears, ${s.bitsPerWeight.toFixed(3)} bits/weight, ` +
      (spqr ? `${(100 * s.outlierRate!).toFixed(3)}% outliers, ` : '') +
      `${(s.quantizedBytes / 1e6).toFixed(2)} MB quantized, ${s.seconds.toFixed(1)} s${s.resumedBlocks ? ` (${s.resumedBlocks} blocks resumed)` : ''}`,
    `written to ${s.out}`,
  ].join('\n');
}

export async function run(argv: string[]): Promise<number> {
  const { values } = parse(
    argv,
    {
      model: { type: 'string' },
      out: { type: 'string' },
      preset: { type: 'string' },
      method: { type: 'string' },
      bits: { type: 'string' },
      'group-size': { type: 'string' },
      'act-order': { type: 'boolean' },
      'static-groups': { type: 'boolean' },
      sym: { type: 'boolean' },
      mse: { type: 'boolean' },
      damp: { type: 'string' },
      'no-true-sequential': { type: 'boolean' },
      calib: { type: 'string', multiple: true },
      samples: { type: 'string' },
      'seq-len': { type: 'string' },
      seed: { type: 'string' },
      format: { type: 'string' },
      beta1: { type: 'string' },
      beta2: { type: 'string' },
      'stat-bits': { type: 'string' },
      tau: { type: 'string' },
      'outlier-budget': { type: 'string' },
      'no-act-order': { type: 'boolean' },
      'no-grid-search': { type: 'boolean' },
      'no-stat-search': { type: 'boolean' },
      'quantize-lm-head': { type: 'boolean' },
      device: { type: 'string' },
      'calibration-dtype': { type: 'string' },
      resume: { type: 'boolean' },
      'max-memory': { type: 'string' },
      json: { type: 'boolean' },
    },
    usage,
  );
  const str = (k: string) => values[k] as string | undefined;
  if (!str('out')) throw new LowbitError('E_ARGUMENT', `--out is required\n\n${usage}`, { option: 'out' });
  const method = (str('method') ?? DEFAULT_METHOD) as MethodName;
  const needsCalibration = methodOf(method, '--method').calibration !== 'none';
  let calib = values.calib as string[] | undefined;
  const useBundled = str('model') === undefined;
  if (useBundled) {
    const withCalib = needsCalibration && calib === undefined;
    if (withCalib) calib = [bundled.calibrationText];
    process.stderr.write(
      `no --model given: quantizing the bundled stories260K (${bundled.model})${withCalib ? ` on its bundled calibration text (${bundled.calibrationText})` : ''}\n`,
    );
  } else if (needsCalibration && calib === undefined) {
    throw new LowbitError(
      'E_ARGUMENT',
      `${method.toUpperCase()} needs calibration text: give --calib <file> (repeatable), or --calib self to sample it from the model (or a method that needs none: ${METHOD_NAMES.filter((n) => METHODS[n].calibration === 'none').join(', ')})`,
      { option: 'calib' },
    );
  }
  const files = calib === undefined ? undefined : calib.length === 1 && calib[0] === 'self' ? ('self' as const) : calib;
  if (Array.isArray(files))
    for (const f of files)
      if (!existsSync(f))
        throw new LowbitError('E_ARGUMENT', `--calib ${f}: no such file (give text files, or --calib self)`, {
          option: 'calib',
        });
  const format = str('format');
  if (format !== undefined && format !== 'gptq' && format !== 'gptq_v2')
    throw new LowbitError(
      'E_ARGUMENT',
      `Expected gptq or gptq_v2 for --format but received ${JSON.stringify(format)}`,
      { option: 'format' },
    );
  // Checked up front for both methods (RTN runs no forward pass, but --device cuda without a GPU is a mistake to report).
  const device = (str('device') ?? 'cpu') as 'cpu' | 'cuda';
  if (!/^(cpu|cuda(:\d+)?)$/.test(device))
    throw new LowbitError('E_ARGUMENT', `--device must be cpu, cuda or cuda:N, not ${JSON.stringify(device)}`, {
      option: 'device',
    });
  resolveDevice(device);
  if (method === 'spqr') return runSpqr(values, method, files, device, useBundled);
  for (const k of SPQR_FLAGS)
    if (values[k] !== undefined)
      throw new LowbitError('E_ARGUMENT', `--${k} applies to --method spqr only`, { option: k });
  const bits = numberOption(str('bits'), 'bits', 4, isGptqBits, GPTQ_BITS_TEXT) as GptqBits;
  const groupSize =
    str('group-size') === 'channel'
      ? -1
      : numberOption(
          str('group-size'),
          'group-size',
          128,
          (n) => n === -1 || isCount(n),
          "a positive integer, or 'channel' (-1) for one group per output channel",
        );
  const { damp, samples, seqLen, seed } = dampAndCalibration(values);
  const preset = str('preset');
  if (preset !== undefined && !(PRESETS as readonly string[]).includes(preset))
    throw new LowbitError('E_ARGUMENT', `--preset must be ${PRESETS.join(' or ')}, not ${JSON.stringify(preset)}`, {
      option: 'preset',
    });
  const modelPath = useBundled ? bundled.model : await resolveModelArg(str('model')!);
  const given = (k: string) => values[k] !== undefined;
  const settings: PresetSettings = preset
    ? applyPreset(preset as PresetName, {
        bits: given('bits') ? bits : undefined,
        groupSize: given('group-size') ? groupSize : undefined,
        sym: given('sym') ? true : undefined,
        actOrder: given('act-order') ? true : undefined,
        staticGroups: given('static-groups') ? true : undefined,
        checkpointFormat: format as PresetSettings['checkpointFormat'] | undefined,
      })
    : {
        bits,
        groupSize,
        sym: values.sym === true,
        actOrder: values['act-order'] === true,
        staticGroups: values['static-groups'] === true,
        checkpointFormat: (format ?? 'gptq') as PresetSettings['checkpointFormat'],
      };
  if (preset === 'vllm') {
    // the shapes as written: intermediate_size padded to whole groups (src/formats/padding.ts)
    const source = await readLlamaConfig(modelPath).catch(() => undefined);
    const config = source && writtenConfig(source, settings.groupSize);
    for (const w of vllmWarnings(settings, config)) process.stderr.write(`warning (--preset vllm): ${w}\n`);
  }

  // Only what the user gave (or the preset chose), never the CLI's defaults: the method's own
  // defaults apply, and a method refuses an option it would otherwise ignore (RTN and --damp).
  return runJob(values, {
    model: modelPath,
    out: str('out')!,
    method,
    bits: settings.bits,
    groupSize: settings.groupSize,
    actOrder: settings.actOrder || undefined,
    staticGroups: settings.staticGroups || undefined,
    sym: settings.sym,
    mse: values.mse === true || undefined,
    damp: given('damp') ? damp : undefined,
    trueSequential: given('no-true-sequential') ? false : undefined,
    checkpointFormat: settings.checkpointFormat,
    lmHead: values['quantize-lm-head'] === true || undefined,
    calibration: {
      files,
      samples: given('samples') ? samples : undefined,
      seqLen,
      seed: given('seed') ? seed : undefined,
    },
    device,
    resume: values.resume === true,
    maxMemory: str('max-memory'),
  });
}

/** The flags only SpQR takes. */
const SPQR_FLAGS = [
  'beta1',
  'beta2',
  'stat-bits',
  'tau',
  'outlier-budget',
  'no-act-order',
  'no-grid-search',
  'no-stat-search',
] as const;
/** The flags SpQR does not take (GPTQ's grid and checkpoint layout). */
const GPTQ_ONLY_FLAGS = [
  'group-size',
  'static-groups',
  'sym',
  'mse',
  'format',
  'preset',
  'no-true-sequential',
  'quantize-lm-head',
] as const;

type Values = Record<string, string | boolean | (string | boolean)[] | undefined>;

/** --method spqr: its options checked in CLI terms, then the same job as the other methods. */
const isCount = (n: number) => Number.isInteger(n) && n >= 1;

/** --damp and the calibration windows (--samples, --seq-len, --seed), read alike by every method. */
function dampAndCalibration(values: Values): { damp: number; samples: number; seqLen?: number; seed: number } {
  const str = (k: string) => values[k] as string | undefined;
  return {
    damp: numberOption(str('damp'), 'damp', 0.01, (n) => n >= 0 && n < 1, 'a fraction in [0, 1)'),
    samples: numberOption(str('samples'), 'samples', 128, isCount, 'a positive integer'),
    seqLen:
      str('seq-len') === undefined
        ? undefined
        : numberOption(str('seq-len'), 'seq-len', 0, (n) => Number.isInteger(n) && n >= 2, 'an integer >= 2'),
    seed: numberOption(str('seed'), 'seed', 0, Number.isInteger, 'an integer'),
  };
}

async function runSpqr(
  values: Values,
  method: MethodName,
  files: string[] | 'self' | undefined,
  device: 'cpu' | 'cuda',
  useBundled: boolean,
): Promise<number> {
  const str = (k: string) => values[k] as string | undefined;
  for (const k of GPTQ_ONLY_FLAGS)
    if (values[k] !== undefined)
      throw new LowbitError(
        'E_ARGUMENT',
        `--${k} does not apply to --method spqr${k === 'group-size' ? ' (its groups are --beta1 and --beta2)' : ''}`,
        { option: k },
      );
  if (values['act-order'] !== undefined && values['no-act-order'] !== undefined)
    throw new LowbitError('E_ARGUMENT', '--act-order and --no-act-order contradict each other', {
      option: 'act-order',
    });
  const bits = numberOption(str('bits'), 'bits', 3, (n) => n === 2 || n === 3 || n === 4, '2, 3 or 4 for SpQR');
  const beta1 = integerOption(
    str('beta1'),
    'beta1',
    16,
    2,
    65536,
    'input columns per first-level group, at most the smallest layer input',
  );
  const beta2 = integerOption(str('beta2'), 'beta2', 16, 1, 65536, 'output rows per second-level group');
  const statBits = integerOption(str('stat-bits'), 'stat-bits', 3, 1, 8);
  const tau =
    str('tau') === 'none' ? Infinity : numberOption(str('tau'), 'tau', 0.2, (n) => n > 0, "a number > 0, or 'none'");
  const outlierBudget = numberOption(
    str('outlier-budget'),
    'outlier-budget',
    0.01,
    (n) => n > 0 && n < 1,
    'a fraction in (0, 1), e.g. 0.01',
  );
  const { damp, samples, seqLen, seed } = dampAndCalibration(values);
  const modelPath = useBundled ? bundled.model : await resolveModelArg(str('model')!);
  return runJob(values, {
    model: modelPath,
    out: str('out')!,
    method,
    bits: bits as 2 | 3 | 4,
    beta1,
    beta2,
    statBits,
    outlierThreshold: tau,
    outlierBudget,
    damp,
    actOrder: values['no-act-order'] !== true,
    gridSearch: values['no-grid-search'] !== true,
    statSearch: values['no-stat-search'] === true ? false : undefined,
    calibration: { files, samples, seqLen, seed },
    device,
    resume: values.resume === true,
    maxMemory: str('max-memory'),
  });
}

/** Runs the job with Ctrl-C handling and progress, and prints the summary. */
async function runJob(values: Values, options: Omit<QuantizeOptions, 'signal'>): Promise<number> {
  const dtype = values['calibration-dtype'];
  if (dtype !== undefined) {
    if (dtype !== 'bf16' && dtype !== 'f16' && dtype !== 'f32')
      throw new LowbitError(
        'E_ARGUMENT',
        `--calibration-dtype must be bf16, f16 or f32, not ${JSON.stringify(dtype)}`,
        {
          option: 'calibration-dtype',
        },
      );
    options = { ...options, calibrationDtype: dtype };
  }
  const controller = new AbortController();
  let interrupted = false;
  const onSigint = () => {
    if (interrupted) process.exit(130); // a second Ctrl-C: stop now
    interrupted = true;
    process.stderr.write('\nstopping after the current step (finished blocks are kept; rerun with --resume)...\n');
    controller.abort();
  };
  process.on('SIGINT', onSigint);
  const progress = new Progress('quantizing');
  try {
    const job = quantize({ ...options, signal: controller.signal });
    job.on('progress', (p: QuantizeProgress) => progress.update(p.done, p.total, progressDetail(p)));
    job.on('warning', (w: QuantizeWarning) => progress.note(`lowbit quantize: warning: ${w.message}`));
    const summary = await job;
    progress.finish();
    console.log(values.json ? JSON.stringify(summary, null, 2) : formatSummary(summary));
    return 0;
  } catch (err) {
    progress.finish();
    if (err instanceof LowbitError && err.code === 'E_ABORTED') {
      console.error(`lowbit quantize: ${err.message}`);
      return 130;
    }
    throw err;
  } finally {
    process.off('SIGINT', onSigint);
  }
}

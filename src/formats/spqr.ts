/**
 * SpQR checkpoints (docs/FORMATS.md "SpQR"): per quantized linear `<prefix>` the tensors
 *   .spqr_qweight        U8   [ceil(N·K·bits/8)]         codes, LSB-first bit stream, row-major, sweep order
 *   .spqr_scale_codes    U8   [ceil(N·G·stat_bits/8)]    first-level scale codes [N, G], bit stream
 *   .spqr_zero_codes     U8   [ceil(N·G·stat_bits/8)]    first-level zero codes [N, G], bit stream
 *   .spqr_scale_stats    F16  [G, ceil(N/beta2), 2]      second-level (offset, step) of the scales
 *   .spqr_zero_stats     F16  [G, ceil(N/beta2), 2]      second-level (offset, step) of the zeros
 *   .spqr_perm           I16* [K]                        original column of each sweep position (act-order only)
 *   .spqr_outlier_values F16  [nnz]                      w − (dense part) at each outlier
 *   .spqr_outlier_cols   I16* [nnz]                      sweep positions, ascending within a row
 *   .spqr_outlier_rowptr I16† [N + 1]                    CSR row pointers
 * (* 16-bit unsigned values in an I16 tensor where K ≤ 65536 — read back as v & 0xffff — else I32;
 *  † the same where nnz ≤ 65535, else I32; I32 always read, as checkpoints before 16-bit row pointers have it;
 *  a linear without outliers has none of the three outlier tensors),
 * every other tensor kept as it was, and config.json's `quantization_config` with
 * `quant_method: "spqr"` and every parameter. Writer and reader share one check (checkSpqrWeights).
 */
import { mkdir, readFile, readdir, rm, stat } from 'node:fs/promises';
import { join, resolve } from 'node:path';
import { LowbitError, invalidArgument } from '../errors.js';
import type { SpqrWeights } from '../weights/types.js';
import { Tensor } from '../tensor.js';
import { Checkpoint } from './checkpoint.js';
import { hfConfigJson } from './convert.js';
import { HfModel, LINEAR_NAMES, type LinearName, type LlamaConfig, type ModelReader, type ModelTensors } from './hf.js';
import { CheckpointWriter, tempPath, writeFileAtomic, type TensorSpec } from './safetensors-writer.js';
import { renameDurable, syncDir } from './durable.js';
import { SAFETENSORS_DTYPE_OF } from './safetensors.js';
import { linearDims } from './gptq.js';

export const SPQR_FORMAT_VERSION = 1;

/** The parameters a checkpoint's quantization_config records (every SpQR option). */
export interface SpqrQuantizationConfig {
  bits: number;
  beta1: number;
  beta2: number;
  statBits: number;
  outlierThreshold: number;
  outlierBudget: number;
  damp: number;
  actOrder: boolean;
  /** first-level statistics searched (true) or min–max (false); absent in checkpoints written before the option */
  gridSearch?: boolean;
  /** second-level grids searched (true) or min–max (false); absent in checkpoints written before the option */
  statSearch?: boolean;
}

/** Per-linear facts the config also records (lowbit inspect prints them). */
export interface SpqrLayerFacts {
  bitsPerWeight: number;
  outlierRate: number;
}

/** The tensors one SpQR linear stores, `<prefix>.spqr_<suffix>`. */
export const SPQR_TENSOR_SUFFIXES = [
  'qweight',
  'scale_codes',
  'zero_codes',
  'scale_stats',
  'zero_stats',
  'perm',
  'outlier_values',
  'outlier_cols',
  'outlier_rowptr',
] as const;
export const spqrTensorName = (prefix: string, part: (typeof SPQR_TENSOR_SUFFIXES)[number]): string =>
  `${prefix}.spqr_${part}`;

function formatError(where: string, message: string, tensor?: string): LowbitError {
  return new LowbitError('E_SPQR_FORMAT', `${where}: ${message}`, tensor ? { file: where, tensor } : { file: where });
}

const bitstreamBytes = (count: number, bits: number): number => Math.ceil((count * bits) / 8);

/**
 * Checks one linear's arrays against N, K and the config: every length, the permutation, the CSR
 * structure. The writer runs it before writing, the reader after reading. Throws E_SPQR_FORMAT.
 */
export function checkSpqrWeights(w: SpqrWeights, N: number, K: number, q: SpqrQuantizationConfig, where: string): void {
  const fail = (m: string, part?: (typeof SPQR_TENSOR_SUFFIXES)[number]): never => {
    throw formatError(where, m, part ? spqrTensorName(where, part) : undefined);
  };
  if (w.N !== N || w.K !== K) fail(`weights are ${w.N}×${w.K}, the model needs ${N}×${K}`);
  if (w.bits !== q.bits || w.statBits !== q.statBits || w.beta1 !== q.beta1 || w.beta2 !== q.beta2) {
    fail(
      `weights at ${w.bits} bits, stat ${w.statBits}, beta ${w.beta1}×${w.beta2}; the checkpoint is ${q.bits}, ${q.statBits}, ${q.beta1}×${q.beta2}`,
    );
  }
  const G = Math.ceil(K / q.beta1);
  const NB = Math.ceil(N / q.beta2);
  const len = (a: { length: number }, want: number, part: (typeof SPQR_TENSOR_SUFFIXES)[number]) => {
    if (a.length !== want) fail(`${part} holds ${a.length} elements, expected ${want}`, part);
  };
  len(w.qweight, bitstreamBytes(N * K, q.bits), 'qweight');
  len(w.scaleCodes, bitstreamBytes(N * G, q.statBits), 'scale_codes');
  len(w.zeroCodes, bitstreamBytes(N * G, q.statBits), 'zero_codes');
  len(w.scaleStats, G * NB * 2, 'scale_stats');
  len(w.zeroStats, G * NB * 2, 'zero_stats');
  if (q.actOrder !== (w.perm !== undefined))
    fail(
      q.actOrder ? 'act-order checkpoint without a permutation' : 'a permutation in a checkpoint without act-order',
      'perm',
    );
  if (w.perm) {
    len(w.perm, K, 'perm');
    const seen = new Uint8Array(K);
    for (let p = 0; p < K; p++) {
      const k = w.perm[p]!;
      if (!(k >= 0 && k < K) || seen[k]) fail(`perm is not a permutation of [0, ${K}): entry ${p} = ${k}`, 'perm');
      seen[k] = 1;
    }
  }
  len(w.outlierRowptr, N + 1, 'outlier_rowptr');
  if (w.outlierRowptr[0] !== 0) fail('outlier_rowptr must start at 0', 'outlier_rowptr');
  for (let n = 0; n < N; n++)
    if (w.outlierRowptr[n + 1]! < w.outlierRowptr[n]!) fail(`outlier_rowptr decreases at row ${n}`, 'outlier_rowptr');
  const nnz = w.outlierRowptr[N]!;
  len(w.outlierCols, nnz, 'outlier_cols');
  len(w.outlierValues, nnz, 'outlier_values');
  for (let n = 0; n < N; n++)
    for (let i = w.outlierRowptr[n]!; i < w.outlierRowptr[n + 1]!; i++) {
      const c = w.outlierCols[i]!;
      if (!(c >= 0 && c < K) || (i > w.outlierRowptr[n]! && c <= w.outlierCols[i - 1]!))
        fail(`outlier columns of row ${n} must be ascending sweep positions in [0, ${K})`, 'outlier_cols');
    }
}

function checkConfig(q: SpqrQuantizationConfig, where: string): void {
  const bad = (field: string, expected: string, v: unknown): never => {
    throw new LowbitError(
      'E_SPQR_FORMAT',
      `${where}: quantization_config.${field} should be ${expected}, found ${JSON.stringify(v)}`,
      { file: where, field: `quantization_config.${field}` },
    );
  };
  if (![2, 3, 4].includes(q.bits)) bad('bits', '2, 3 or 4', q.bits);
  if (!Number.isInteger(q.beta1) || q.beta1 < 2 || q.beta1 > 65536) bad('beta1', 'an integer in [2, 65536]', q.beta1);
  if (!Number.isInteger(q.beta2) || q.beta2 < 1 || q.beta2 > 65536) bad('beta2', 'an integer in [1, 65536]', q.beta2);
  if (!Number.isInteger(q.statBits) || q.statBits < 1 || q.statBits > 8)
    bad('stat_bits', 'an integer in [1, 8]', q.statBits);
  if (typeof q.outlierThreshold !== 'number' || !(q.outlierThreshold > 0))
    bad('outlier_threshold', 'a number > 0 (null: no outliers)', q.outlierThreshold);
  if (typeof q.outlierBudget !== 'number' || !(q.outlierBudget > 0 && q.outlierBudget < 1))
    bad('outlier_budget', 'a number in (0, 1)', q.outlierBudget);
  if (typeof q.damp !== 'number' || !(q.damp >= 0)) bad('damp_percent', 'a number >= 0', q.damp);
  if (typeof q.actOrder !== 'boolean') bad('act_order', 'a boolean', q.actOrder);
  if (q.gridSearch !== undefined && typeof q.gridSearch !== 'boolean')
    bad('grid_search', 'a boolean (or absent)', q.gridSearch);
  if (q.statSearch !== undefined && typeof q.statSearch !== 'boolean')
    bad('stat_search', 'a boolean (or absent)', q.statSearch);
}

/** The quantization_config JSON of a SpQR checkpoint. */
export function spqrQuantizationConfigJson(
  q: SpqrQuantizationConfig,
  layers: Record<string, SpqrLayerFacts>,
  averageBitsPerWeight: number,
): Record<string, unknown> {
  return {
    quant_method: 'spqr',
    format_version: SPQR_FORMAT_VERSION,
    bits: q.bits,
    beta1: q.beta1,
    beta2: q.beta2,
    stat_bits: q.statBits,
    outlier_threshold: Number.isFinite(q.outlierThreshold) ? q.outlierThreshold : null,
    outlier_budget: q.outlierBudget,
    damp_percent: q.damp,
    act_order: q.actOrder,
    ...(q.gridSearch !== undefined ? { grid_search: q.gridSearch } : {}),
    ...(q.statSearch !== undefined ? { stat_search: q.statSearch } : {}),
    average_bits_per_weight: averageBitsPerWeight,
    meta: { quantizer: ['lowbit:0.1.0'] },
    lowbit: {
      layers: Object.fromEntries(
        Object.entries(layers).map(([p, f]) => [p, { bits_per_weight: f.bitsPerWeight, outlier_rate: f.outlierRate }]),
      ),
    },
  };
}

/** A checkpoint's SpQR quantization_config as parsed: the parameters and the per-layer facts. */
export type SpqrCheckpointConfig = SpqrQuantizationConfig & {
  layers: Record<string, SpqrLayerFacts>;
  /** as recorded by the writer (null when absent) */
  averageBitsPerWeight: number | null;
};

/** Parses a quantization_config with quant_method "spqr"; E_SPQR_FORMAT naming the field otherwise. */
export function parseSpqrQuantizationConfig(raw: unknown, where: string): SpqrCheckpointConfig {
  if (raw === null || typeof raw !== 'object' || Array.isArray(raw))
    throw new LowbitError('E_SPQR_FORMAT', `${where}: quantization_config is not an object`, { file: where });
  const r = raw as Record<string, unknown>;
  if (r.quant_method !== 'spqr')
    throw new LowbitError(
      'E_SPQR_FORMAT',
      `${where}: quantization_config.quant_method is ${JSON.stringify(r.quant_method)}, expected "spqr"`,
      { file: where },
    );
  if (r.format_version !== SPQR_FORMAT_VERSION)
    throw new LowbitError(
      'E_UNSUPPORTED',
      `${where}: SpQR format_version ${JSON.stringify(r.format_version)} is not supported (lowbit reads ${SPQR_FORMAT_VERSION})`,
      { file: where },
    );
  const q: SpqrQuantizationConfig = {
    bits: r.bits as number,
    beta1: r.beta1 as number,
    beta2: r.beta2 as number,
    statBits: r.stat_bits as number,
    outlierThreshold: r.outlier_threshold === null ? Infinity : (r.outlier_threshold as number),
    outlierBudget: r.outlier_budget as number,
    damp: r.damp_percent as number,
    actOrder: r.act_order as boolean,
    ...(r.grid_search !== undefined ? { gridSearch: r.grid_search as boolean } : {}),
    ...(r.stat_search !== undefined ? { statSearch: r.stat_search as boolean } : {}),
  };
  checkConfig(q, where);
  const layers: Record<string, SpqrLayerFacts> = {};
  const l =
    (r.lowbit as { layers?: Record<string, { bits_per_weight?: unknown; outlier_rate?: unknown }> } | undefined)
      ?.layers ?? {};
  for (const [p, f] of Object.entries(l)) {
    if (typeof f?.bits_per_weight === 'number' && typeof f?.outlier_rate === 'number')
      layers[p] = { bitsPerWeight: f.bits_per_weight, outlierRate: f.outlier_rate };
  }
  const average = typeof r.average_bits_per_weight === 'number' ? r.average_bits_per_weight : null;
  return { ...q, layers, averageBitsPerWeight: average };
}

/**
 * Checks, from the safetensors headers only, every SpQR linear a model's tensors describe: that the
 * config is a SpQR one, each tensor's dtype, the shapes the config fixes (codes, statistics, row
 * pointers, permutation) and that outlier columns and values agree. E_SPQR_FORMAT / E_MISSING_TENSOR.
 */
export function checkSpqrTensors(
  config: LlamaConfig,
  tensors: ModelTensors,
  has: (name: string) => boolean,
  stored: (name: string) => { dtype: string; shape: readonly number[] },
  file: string,
): void {
  const q = config.spqr;
  for (const block of tensors.blocks) {
    for (const name of LINEAR_NAMES as readonly LinearName[]) {
      const linear = block[name];
      if (!linear.spqr) continue;
      const prefix = linear.prefix;
      if (!q)
        throw formatError(
          file,
          `'${spqrTensorName(prefix, 'qweight')}' is SpQR, but config.json's quantization_config is not quant_method "spqr"`,
          spqrTensorName(prefix, 'qweight'),
        );
      const { K, N } = linearDims(config, name);
      const G = Math.ceil(K / q.beta1);
      const NB = Math.ceil(N / q.beta2);
      const index = K <= 65536 ? ['I16', 'I32'] : ['I32'];
      const check = (part: (typeof SPQR_TENSOR_SUFFIXES)[number], dtypes: string[], shape?: number[]) => {
        const tensor = spqrTensorName(prefix, part);
        if (!has(tensor))
          throw new LowbitError('E_MISSING_TENSOR', `${file}: '${tensor}' is missing`, { file, tensor });
        const s = stored(tensor);
        if (!dtypes.includes(s.dtype))
          throw formatError(file, `'${tensor}' is stored as ${s.dtype}, expected ${dtypes.join(' or ')}`, tensor);
        if (shape && (s.shape.length !== shape.length || s.shape.some((d, i) => d !== shape[i])))
          throw formatError(
            file,
            `'${tensor}' has shape [${s.shape.join(', ')}]; ${q.bits}-bit SpQR with beta ${q.beta1}x${q.beta2}, stat bits ${q.statBits}, K=${K}, N=${N} needs [${shape.join(', ')}]`,
            tensor,
          );
        return s.shape;
      };
      check('qweight', ['U8'], [bitstreamBytes(N * K, q.bits)]);
      check('scale_codes', ['U8'], [bitstreamBytes(N * G, q.statBits)]);
      check('zero_codes', ['U8'], [bitstreamBytes(N * G, q.statBits)]);
      check('scale_stats', ['F16'], [G, NB, 2]);
      check('zero_stats', ['F16'], [G, NB, 2]);
      if (outlierTensorsPresent(prefix, has, file)) {
        const values = check('outlier_values', ['F16']);
        // 16-bit row pointers hold nnz ≤ 65535 only (all of them are ≤ nnz)
        check('outlier_rowptr', (values[0] ?? Infinity) <= ROWPTR16_MAX_NNZ ? ['I16', 'I32'] : ['I32'], [N + 1]);
        check('outlier_cols', index, [values[0] ?? -1]);
      }
      if (q.actOrder) check('perm', index, [K]);
      else if (has(spqrTensorName(prefix, 'perm')))
        throw formatError(file, `'${spqrTensorName(prefix, 'perm')}' present but act_order is false`);
    }
  }
}

const OUTLIER_PARTS = ['outlier_values', 'outlier_cols', 'outlier_rowptr'] as const;

/**
 * Whether a linear stores outliers: all three outlier tensors (true) or none of them (false: a
 * linear without outliers stores none). Some but not all is E_SPQR_FORMAT.
 */
function outlierTensorsPresent(prefix: string, has: (name: string) => boolean, file: string): boolean {
  const present = OUTLIER_PARTS.filter((part) => has(spqrTensorName(prefix, part)));
  if (present.length === 0) return false;
  if (present.length < OUTLIER_PARTS.length) {
    const missing = OUTLIER_PARTS.find((part) => !present.includes(part))!;
    throw formatError(
      file,
      `'${spqrTensorName(prefix, missing)}' is missing but '${spqrTensorName(prefix, present[0]!)}' is present: a linear stores all three outlier tensors or none (no outliers)`,
      spqrTensorName(prefix, missing),
    );
  }
  return true;
}

/** Most outliers a linear may have for 16-bit (unsigned) row pointers: each pointer is ≤ nnz. */
export const ROWPTR16_MAX_NNZ = 65535;

/** The tensors of one linear, as declared specs and as data. */
function linearTensors(prefix: string, w: SpqrWeights): { spec: TensorSpec; data: Uint8Array }[] {
  const wide = w.K > 65536;
  const narrowRows = w.outlierCols.length <= ROWPTR16_MAX_NNZ;
  const bytes = (a: ArrayBufferView) => new Uint8Array(a.buffer, a.byteOffset, a.byteLength);
  const index16 = (a: Int32Array) => bytes(Uint16Array.from(a));
  const out: { spec: TensorSpec; data: Uint8Array }[] = [
    { spec: { name: spqrTensorName(prefix, 'qweight'), dtype: 'U8', shape: [w.qweight.length] }, data: w.qweight },
    {
      spec: { name: spqrTensorName(prefix, 'scale_codes'), dtype: 'U8', shape: [w.scaleCodes.length] },
      data: w.scaleCodes,
    },
    {
      spec: { name: spqrTensorName(prefix, 'zero_codes'), dtype: 'U8', shape: [w.zeroCodes.length] },
      data: w.zeroCodes,
    },
    {
      spec: {
        name: spqrTensorName(prefix, 'scale_stats'),
        dtype: 'F16',
        shape: [w.scaleStats.length / 2 / Math.ceil(w.N / w.beta2), Math.ceil(w.N / w.beta2), 2],
      },
      data: bytes(w.scaleStats),
    },
    {
      spec: {
        name: spqrTensorName(prefix, 'zero_stats'),
        dtype: 'F16',
        shape: [w.zeroStats.length / 2 / Math.ceil(w.N / w.beta2), Math.ceil(w.N / w.beta2), 2],
      },
      data: bytes(w.zeroStats),
    },
  ];
  if (w.perm)
    out.push({
      spec: { name: spqrTensorName(prefix, 'perm'), dtype: wide ? 'I32' : 'I16', shape: [w.K] },
      data: wide ? bytes(w.perm) : index16(w.perm),
    });
  // no outliers: no outlier tensors (the reader restores an empty CSR)
  if (w.outlierValues.length === 0) return out;
  out.push(
    {
      spec: { name: spqrTensorName(prefix, 'outlier_values'), dtype: 'F16', shape: [w.outlierValues.length] },
      data: bytes(w.outlierValues),
    },
    {
      spec: {
        name: spqrTensorName(prefix, 'outlier_cols'),
        dtype: wide ? 'I32' : 'I16',
        shape: [w.outlierCols.length],
      },
      data: wide ? bytes(w.outlierCols) : index16(w.outlierCols),
    },
    {
      spec: {
        name: spqrTensorName(prefix, 'outlier_rowptr'),
        dtype: narrowRows ? 'I16' : 'I32',
        shape: [w.N + 1],
      },
      data: narrowRows ? index16(w.outlierRowptr) : bytes(w.outlierRowptr),
    },
  );
  return out;
}

/** Bytes one linear takes in the checkpoint (every tensor of linearTensors: the layout above). */
export function spqrStoredBytes(w: SpqrWeights): number {
  return linearTensors('x', w).reduce((n, t) => n + t.data.byteLength, 0);
}

/**
 * Writes a SpQR checkpoint directory atomically (a temporary directory renamed into place): every
 * block linear of `source` replaced by its SpQR tensors from `linears` (prefix → weights), every
 * other tensor copied, config.json with quantization_config, tokenizer files copied from
 * `tokenizerFrom` (default: the source's directory).
 */
export async function writeSpqrCheckpoint(
  outDir: string,
  source: ModelReader,
  q: SpqrQuantizationConfig,
  linears: ReadonlyMap<string, SpqrWeights>,
  options: { tokenizerFrom?: string } = {},
): Promise<string> {
  const writer = await SpqrWriter.create(outDir, source, q, options);
  try {
    for (const [prefix, w] of linears) writer.putLinear(prefix, w);
    return await writer.finish();
  } catch (err) {
    await writer.abort();
    throw err;
  }
}

const TOKENIZER_FILES = [
  'tokenizer.json',
  'tokenizer_config.json',
  'tokenizer.model',
  'special_tokens_map.json',
  'generation_config.json',
];

/**
 * The SpQR checkpoint writer the scheduler streams into (the twin of GptqWriter): `create` checks
 * the target and the config, `putLinear` takes each quantized linear as it is produced (checked at
 * once), `finish` writes the directory and renames it into place. The outlier tensors' sizes are
 * known only once a linear is quantized, and the safetensors header comes first, so the quantized
 * linears are held in memory until `finish` (they are the compressed model: ~bits/16 of its fp16
 * size); the unquantized tensors stream from the source then.
 */
export class SpqrWriter {
  private readonly linears = new Map<string, SpqrWeights>();
  private work: string | undefined;
  private writer: CheckpointWriter | undefined;

  private constructor(
    readonly target: string,
    private readonly source: ModelReader,
    readonly spqr: SpqrQuantizationConfig,
    /** prefix → expected dims, in file order */
    private readonly expected: Map<string, { N: number; K: number; weight: string }>,
    private readonly tokenizerFrom: string | undefined,
  ) {}

  static async create(
    outDir: string,
    source: ModelReader,
    q: SpqrQuantizationConfig,
    options: { tokenizerFrom?: string } = {},
  ): Promise<SpqrWriter> {
    checkConfig(q, 'quantization options');
    const target = resolve(outDir);
    const existing = await stat(target).catch(() => undefined);
    if (existing && (!existing.isDirectory() || (await readdir(target)).length > 0)) {
      throw new LowbitError('E_IO', `${target} exists and is not an empty directory`, { file: target });
    }
    const expected = new Map<string, { N: number; K: number; weight: string }>();
    for (const block of source.tensors.blocks) {
      for (const name of LINEAR_NAMES as readonly LinearName[]) {
        const linear = block[name];
        if (!linear.weight) continue;
        const { K, N } = linearDims(source.config, name);
        expected.set(linear.prefix, { N, K, weight: linear.weight });
      }
    }
    const tokenizerFrom = options.tokenizerFrom ?? (source instanceof HfModel ? source.dir : undefined);
    return new SpqrWriter(target, source, q, expected, tokenizerFrom);
  }

  /** Hands over one linear (checked now: E_SPQR_FORMAT, or E_ARGUMENT for a prefix that is not a block linear). */
  putLinear(prefix: string, w: SpqrWeights): void {
    const want = this.expected.get(prefix);
    if (!want || this.linears.has(prefix))
      invalidArgument('linears', `prefixes of the source model's block linears, each once`, prefix);
    checkSpqrWeights(w, want.N, want.K, this.spqr, prefix);
    this.linears.set(prefix, w);
  }

  /**
   * Writes every tensor and config.json into a temporary directory and renames it into place.
   * `beforeRename` sees the complete temporary directory just before (the scheduler records it
   * for --resume). Linears never handed over stay dense.
   */
  async finish(beforeRename?: (work: string) => Promise<void>): Promise<string> {
    const { source, target } = this;
    const replaced = new Set<string>();
    const quantized: { prefix: string; w: SpqrWeights }[] = [];
    const facts: Record<string, SpqrLayerFacts> = {};
    let bits = 0;
    let weights = 0;
    for (const [prefix, d] of this.expected) {
      const w = this.linears.get(prefix);
      if (!w) continue;
      quantized.push({ prefix, w });
      replaced.add(d.weight);
      const stored = linearTensors(prefix, w).reduce((n, t) => n + 8 * t.data.byteLength, 0);
      facts[prefix] = { bitsPerWeight: stored / (d.N * d.K), outlierRate: w.outlierCols.length / (d.N * d.K) };
      bits += stored;
      weights += d.N * d.K;
    }
    const kept = source.names.filter((n) => !replaced.has(n));
    const tensors = quantized.flatMap(({ prefix, w }) => linearTensors(prefix, w));
    const specs: TensorSpec[] = [
      ...kept.map((name) => ({ name, dtype: SAFETENSORS_DTYPE_OF[source.dtypeOf(name)], shape: source.shapeOf(name) })),
      ...tensors.map((t) => t.spec),
    ];
    this.work = tempPath(target);
    await mkdir(this.work, { recursive: true });
    const work = this.work;
    try {
      this.writer = await CheckpointWriter.create(work, specs);
      for (const name of kept) await this.writer.put(name, await source.readTensor(name));
      for (const t of tensors) await this.writer.put(t.spec.name, t.data);
      await this.writer.finish();
      this.writer = undefined;
      const baseConfig = source instanceof HfModel ? { ...source.config.raw } : hfConfigJson(source.config);
      const config = {
        ...baseConfig,
        quantization_config: spqrQuantizationConfigJson(this.spqr, facts, weights ? bits / weights : 0),
      };
      await writeFileAtomic(join(work, 'config.json'), JSON.stringify(config, null, 2) + '\n');
      if (this.tokenizerFrom) {
        for (const f of TOKENIZER_FILES) {
          const from = join(this.tokenizerFrom, f);
          if (await stat(from).catch(() => undefined)) await writeFileAtomic(join(work, f), await readFile(from));
        }
      }
      await syncDir(work);
      await beforeRename?.(work);
      const existing = await stat(target).catch(() => undefined);
      if (existing) {
        if (!existing.isDirectory() || (await readdir(target)).length > 0)
          throw new LowbitError(
            'E_IO',
            `${target} appeared during the run and is not empty; lowbit does not overwrite what it did not write`,
            { file: target },
          );
        await rm(target, { recursive: true });
      }
      await renameDurable(work, target);
      this.work = undefined;
    } catch (err) {
      await this.abort();
      throw err;
    }
    return target;
  }

  async abort(): Promise<void> {
    await this.writer?.abort().catch(() => undefined);
    this.writer = undefined;
    if (this.work) await rm(this.work, { recursive: true, force: true });
    this.work = undefined;
  }
}

/** An open SpQR checkpoint: its config, its quantization parameters, and a reader per linear. */
export interface SpqrCheckpoint {
  dir: string;
  quantization: SpqrCheckpointConfig;
  checkpoint: Checkpoint;
  /** whether `prefix` is stored in SpQR form */
  has(prefix: string): boolean;
  /** one linear, every length and index checked (E_SPQR_FORMAT otherwise) */
  readLinear(prefix: string, N: number, K: number): Promise<SpqrWeights>;
  close(): Promise<void>;
}

/**
 * Reads one SpQR linear `prefix` (N × K) from an open checkpoint, every length and index checked
 * (E_SPQR_FORMAT / E_MISSING_TENSOR naming the tensor).
 */
export async function readSpqrTensors(
  checkpoint: Checkpoint,
  root: string,
  q: SpqrQuantizationConfig,
  prefix: string,
  N: number,
  K: number,
): Promise<SpqrWeights> {
  const read = async (
    part: (typeof SPQR_TENSOR_SUFFIXES)[number],
    dtypes: readonly string[],
    shape?: readonly number[],
  ): Promise<Tensor> => {
    const name = spqrTensorName(prefix, part);
    if (!checkpoint.has(name))
      throw new LowbitError('E_MISSING_TENSOR', `${root}: '${name}' is missing`, { file: root, tensor: name });
    const t = await checkpoint.readTensor(name);
    if (!dtypes.includes(t.dtype))
      throw formatError(root, `'${name}' is ${t.dtype}, expected ${dtypes.join(' or ')}`, name);
    if (shape && (t.shape.length !== shape.length || t.shape.some((d, i) => d !== shape[i])))
      throw formatError(root, `'${name}' has shape [${t.shape.join(', ')}], expected [${shape.join(', ')}]`, name);
    return t;
  };
  // I16 tensors (read as i32, sign-extended) hold unsigned 16-bit indices.
  const index = (t: Tensor): Int32Array => {
    const d = t.data as Int32Array;
    return K <= 65536 ? d.map((v) => v & 0xffff) : d;
  };
  const G = Math.ceil(K / q.beta1);
  const NB = Math.ceil(N / q.beta2);
  const w: SpqrWeights = {
    bits: q.bits,
    statBits: q.statBits,
    N,
    K,
    beta1: q.beta1,
    beta2: q.beta2,
    qweight: (await read('qweight', ['u8'], [bitstreamBytes(N * K, q.bits)])).data as Uint8Array,
    scaleCodes: (await read('scale_codes', ['u8'], [bitstreamBytes(N * G, q.statBits)])).data as Uint8Array,
    zeroCodes: (await read('zero_codes', ['u8'], [bitstreamBytes(N * G, q.statBits)])).data as Uint8Array,
    scaleStats: (await read('scale_stats', ['f16'], [G, NB, 2])).data as Uint16Array,
    zeroStats: (await read('zero_stats', ['f16'], [G, NB, 2])).data as Uint16Array,
    outlierRowptr: new Int32Array(N + 1),
    outlierCols: new Int32Array(0),
    outlierValues: new Uint16Array(0),
  };
  if (outlierTensorsPresent(prefix, (name) => checkpoint.has(name), root)) {
    // Row pointers are I16 (unsigned, where nnz ≤ 65535) or I32 (any nnz; every checkpoint before
    // 16-bit row pointers); both are read as i32, so the stored dtype says whether to unsign.
    const rowptrName = spqrTensorName(prefix, 'outlier_rowptr');
    const rowptr16 = checkpoint.info(rowptrName).dtype === 'I16';
    const rowptr = (await read('outlier_rowptr', ['i32'], [N + 1])).data as Int32Array;
    w.outlierRowptr = rowptr16 ? rowptr.map((v) => v & 0xffff) : rowptr;
    w.outlierValues = (await read('outlier_values', ['f16'])).data as Uint16Array;
    if (rowptr16 && w.outlierValues.length > ROWPTR16_MAX_NNZ)
      throw formatError(
        root,
        `'${rowptrName}' is I16 but the linear has ${w.outlierValues.length} outliers (16-bit row pointers hold at most ${ROWPTR16_MAX_NNZ})`,
        rowptrName,
      );
    w.outlierCols = index(await read('outlier_cols', ['i32'], [w.outlierValues.length]));
  }
  if (q.actOrder) w.perm = index(await read('perm', ['i32'], [K]));
  else if (checkpoint.has(spqrTensorName(prefix, 'perm')))
    throw formatError(
      root,
      `'${spqrTensorName(prefix, 'perm')}' present but act_order is false`,
      spqrTensorName(prefix, 'perm'),
    );
  checkSpqrWeights(w, N, K, q, prefix);
  return w;
}

/** Block `block`'s linear `name` of a SpQR checkpoint opened as an HfModel (its config holds the SpQR parameters). */
export async function readSpqrLinear(model: HfModel, block: number, name: LinearName): Promise<SpqrWeights> {
  const q = model.config.spqr;
  if (!q) throw formatError(model.dir, 'config.json has no SpQR quantization_config');
  const { K, N } = linearDims(model.config, name);
  return readSpqrTensors(model.checkpoint, model.dir, q, model.tensors.blocks[block]![name].prefix, N, K);
}

export async function openSpqrCheckpoint(dir: string): Promise<SpqrCheckpoint> {
  const root = resolve(dir);
  let config: Record<string, unknown>;
  try {
    config = JSON.parse(await readFile(join(root, 'config.json'), 'utf8')) as Record<string, unknown>;
  } catch (err) {
    throw new LowbitError(
      'E_CONFIG',
      `${root}: cannot read config.json: ${(err as Error).message}`,
      { file: root },
      { cause: err },
    );
  }
  const quantization = parseSpqrQuantizationConfig(config.quantization_config, root);
  const checkpoint = await Checkpoint.open(root);
  return {
    dir: root,
    quantization,
    checkpoint,
    has: (prefix) => checkpoint.has(spqrTensorName(prefix, 'qweight')),
    readLinear: (prefix, N, K) => readSpqrTensors(checkpoint, root, quantization, prefix, N, K),
    close: () => checkpoint.close(),
  };
}

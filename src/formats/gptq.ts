/**
 * GPTQ checkpoints in the layout transformers, vLLM and GPTQModel load: per quantized linear
 * `<prefix>.qweight` (int32 [packed(K), N]), `.qzeros` (int32 [groups, packed(N)]), `.scales`
 * (fp16 [groups, N]) and `.g_idx` (int32 [K]); every other tensor kept as it was;
 * `quantize_config.json` and config.json's `quantization_config`; tokenizer files copied.
 *
 * Packing is the addon's (native().packQweight / packQzeros); this module only moves the packed
 * words between files and PackedWeights, checking every shape on the way in.
 *
 * Padding: a model whose intermediate_size does not divide into whole pack words and groups
 * (stories260K's 172) is written with intermediate_size enlarged and the MLP padded with exact
 * zeros (./padding.ts), so that the checkpoint has the shapes transformers, GPTQModel and vLLM
 * expect. Checkpoints of earlier lowbit versions, which packed such a K into a partial last unit
 * (qweight rows ceil(K / unit), `lowbit.padded_in_features` in the config), still read.
 */
import { readdir, stat } from 'node:fs/promises';
import { join, resolve } from 'node:path';
import { LowbitError, invalidArgument } from '../errors.js';
import type { PackedWeights } from '../native.js';
import {
  GPTQ_BITS,
  GPTQ_BITS_TEXT,
  gptqTensors,
  groupsOf,
  isGptqBits,
  packedWords,
  type GptqBits,
} from '../weights/formats.js';
import { Tensor } from '../tensor.js';
import { hfConfigJson } from './convert.js';
import {
  HfModel,
  LINEAR_NAMES,
  type LinearName,
  type LinearTensors,
  type LlamaConfig,
  type ModelReader,
  type ModelTensors,
  type QuantizedLinearTensors,
} from './hf.js';
import {
  copyFileAtomic,
  ioError,
  mkdirDurable,
  removeTree,
  renameDurable,
  syncDir,
  tempPath,
  writeFileAtomic,
} from './durable.js';
import { padPackedWeights, padTensor, paddedIntermediateSize } from './padding.js';
import { CheckpointWriter, type TensorSpec } from './safetensors-writer.js';
import { SAFETENSORS_DTYPE_OF } from './safetensors.js';

export { packedWords, packedCount } from '../weights/formats.js';

export interface GptqConfig {
  bits: GptqBits;
  /** columns per group along K; -1 for one group per output channel */
  groupSize: number;
  /** act-order was used; written as desc_act only without static groups (whose g_idx stays trivial) */
  descAct: boolean;
  sym: boolean;
  dampPercent: number;
  trueSequential: boolean;
  staticGroups: boolean;
  /** "gptq" stores zero − 1 (v1); "gptq_v2" stores the zero itself */
  checkpointFormat: 'gptq' | 'gptq_v2';
  /** lm_head is quantized too (GPTQModel's lm_head: true; a tied embedding is untied: it stays dense) */
  lmHead?: boolean;
}

/** Input (K) and output (N) features of a block's linear. */
export function linearDims(config: LlamaConfig, name: LinearName): { K: number; N: number } {
  const { hiddenSize: h, intermediateSize: f, numHeads, numKvHeads, headDim } = config;
  const dims: Record<LinearName, [number, number]> = {
    q: [h, numHeads * headDim],
    k: [h, numKvHeads * headDim],
    v: [h, numKvHeads * headDim],
    o: [numHeads * headDim, h],
    gate: [h, f],
    up: [h, f],
    down: [f, h],
  };
  const [K, N] = dims[name];
  return { K, N };
}

/** The JSON written both as quantize_config.json and as config.json's quantization_config. */
export function quantizationConfigJson(q: GptqConfig): Record<string, unknown> {
  return {
    quant_method: 'gptq',
    bits: q.bits,
    group_size: q.groupSize,
    // desc_act tells loaders that g_idx is permuted; act-order through static groups keeps it
    // trivial, and loaders (vLLM under tensor parallelism) take such a checkpoint only as desc_act false
    desc_act: q.descAct && !q.staticGroups,
    sym: q.sym,
    damp_percent: q.dampPercent,
    true_sequential: q.trueSequential,
    static_groups: q.staticGroups,
    checkpoint_format: q.checkpointFormat,
    model_file_base_name: 'model',
    meta: { quantizer: ['lowbit:0.1.0'] },
    // written only when true, as GPTQModel reads an absent lm_head as false
    ...(q.lmHead ? { lm_head: true } : {}),
  };
}

function checkGptqConfig(q: GptqConfig): void {
  if (!isGptqBits(q.bits)) invalidArgument('bits', GPTQ_BITS_TEXT, q.bits, 'E_BITS');
  if (!(q.groupSize === -1 || (Number.isSafeInteger(q.groupSize) && q.groupSize > 0)))
    invalidArgument('groupSize', '-1 or a positive integer', q.groupSize, 'E_GROUP_SIZE');
  if (q.checkpointFormat !== 'gptq' && q.checkpointFormat !== 'gptq_v2')
    invalidArgument('checkpointFormat', '"gptq" or "gptq_v2"', q.checkpointFormat);
  if (!(q.dampPercent >= 0)) invalidArgument('dampPercent', 'a non-negative number', q.dampPercent);
}

const TOKENIZER_FILES = [
  'tokenizer.json',
  'tokenizer_config.json',
  'tokenizer.model',
  'special_tokens_map.json',
  'added_tokens.json',
  'generation_config.json',
];

export interface GptqWriterOptions {
  /** where tokenizer files (and generation_config.json) are copied from (default: the source model's directory, if it has one) */
  tokenizerFrom?: string;
  maxShardBytes?: number;
  /** linears left unquantized (module prefixes); default none */
  skip?: (prefix: string) => boolean;
}

/** A linear's dimensions in the source model (what putLinear takes) and in the checkpoint (padded). */
interface PendingLinear {
  K: number;
  N: number;
  groups: number;
  written: { K: number; N: number; groups: number };
}

/**
 * The config a checkpoint is written with: the source's, with intermediate_size padded to whole pack
 * words and groups (./padding.ts).
 */
export function writtenConfig(config: LlamaConfig, groupSize: number, lmHead = false): LlamaConfig {
  const intermediateSize = paddedIntermediateSize(config.intermediateSize, groupSize);
  const untie = lmHead && config.tieWordEmbeddings;
  if (intermediateSize === config.intermediateSize && !untie) return config;
  const raw: Record<string, unknown> = { ...config.raw, intermediate_size: intermediateSize };
  // a quantized lm_head is its own tensor: the embedding it was tied to stays dense
  if (untie) raw.tie_word_embeddings = false;
  return { ...config, intermediateSize, tieWordEmbeddings: config.tieWordEmbeddings && !untie, raw };
}

/**
 * Writes a GPTQ checkpoint directory, streamed: `create` declares every tensor and copies the
 * unquantized ones from the source model; then `putLinear` takes each quantized linear as it is
 * produced (block by block) and `finish` renames the directory into place. The MLP is padded on the
 * way (see the module comment): putLinear takes the source's shapes, the files hold the padded ones.
 */
export class GptqWriter {
  private constructor(
    readonly target: string,
    private readonly work: string,
    private readonly writer: CheckpointWriter,
    /** the config written (intermediate_size padded) */
    readonly config: LlamaConfig,
    readonly gptq: GptqConfig,
    /** prefix → expected dims, in the source and in the checkpoint */
    private readonly pending: Map<string, PendingLinear>,
  ) {}

  static async create(
    outDir: string,
    source: ModelReader,
    gptq: GptqConfig,
    options: GptqWriterOptions = {},
  ): Promise<GptqWriter> {
    checkGptqConfig(gptq);
    const target = resolve(outDir);
    await checkEmptyTarget(target);
    const config = writtenConfig(source.config, gptq.groupSize, gptq.lmHead);
    const quantized = new Map<string, PendingLinear>();
    const replaced = new Set<string>();
    // kept tensors of the MLP that grow with intermediate_size: name → [axis, size]
    const padded = new Map<string, [number, number]>();
    for (const block of source.tensors.blocks) {
      for (const name of LINEAR_NAMES) {
        const linear = block[name];
        const { K, N } = linearDims(source.config, name);
        const written = linearDims(config, name);
        if (N !== written.N && linear.bias) padded.set(linear.bias, [0, written.N]);
        if (!linear.weight) continue;
        if (options.skip?.(linear.prefix)) {
          if (N !== written.N) padded.set(linear.weight, [0, written.N]);
          if (K !== written.K) padded.set(linear.weight, [1, written.K]);
          continue;
        }
        quantized.set(linear.prefix, {
          K,
          N,
          groups: groupsOf(K, gptq.groupSize),
          written: { ...written, groups: groupsOf(written.K, gptq.groupSize) },
        });
        replaced.add(linear.weight);
      }
    }
    if (gptq.lmHead) {
      const { hiddenSize: K, vocabSize: N } = config;
      const groups = groupsOf(K, gptq.groupSize);
      quantized.set('lm_head', { K, N, groups, written: { K, N, groups } });
      if (!source.tensors.tied) replaced.add(source.tensors.lmHead);
    }
    const kept = source.names.filter((n) => !replaced.has(n));
    const specs: TensorSpec[] = [];
    for (const name of kept) {
      const shape = [...source.shapeOf(name)];
      const pad = padded.get(name);
      if (pad) shape[pad[0]] = pad[1];
      specs.push({ name, dtype: SAFETENSORS_DTYPE_OF[source.dtypeOf(name)], shape });
    }
    for (const [prefix, d] of quantized) {
      for (const t of gptqTensors(gptq.bits, d.written.K, d.written.N, d.written.groups))
        specs.push({ name: `${prefix}.${t.suffix}`, dtype: t.dtype, shape: t.shape });
    }
    const work = tempPath(target);
    await mkdirDurable(work);
    let writer: CheckpointWriter | undefined;
    try {
      writer = await CheckpointWriter.create(work, specs, { maxShardBytes: options.maxShardBytes });
      for (const name of kept) {
        const pad = padded.get(name);
        const t = await source.readTensor(name);
        await writer.put(name, pad ? padTensor(t, pad[0], pad[1]) : t);
      }
      const q = quantizationConfigJson(gptq);
      const sourceDir = source instanceof HfModel ? source.dir : undefined;
      const baseConfig =
        source instanceof HfModel
          ? { ...config.raw }
          : hfConfigJson(config, dtypeName(source.dtypeOf(source.tensors.embedding)));
      await writeFileAtomic(
        join(work, 'config.json'),
        JSON.stringify({ ...baseConfig, quantization_config: q }, null, 2) + '\n',
      );
      await writeFileAtomic(join(work, 'quantize_config.json'), JSON.stringify(q, null, 2) + '\n');
      const tokenizerDir = options.tokenizerFrom ?? sourceDir;
      if (tokenizerDir) {
        for (const f of TOKENIZER_FILES) {
          if (await stat(join(tokenizerDir, f)).catch(() => undefined))
            await copyFileAtomic(join(tokenizerDir, f), join(work, f));
        }
      }
    } catch (err) {
      await writer?.abort();
      await removeTree(work).catch(() => undefined);
      throw err;
    }
    return new GptqWriter(target, work, writer, config, gptq, quantized);
  }

  /** The module prefixes still waiting for their packed weights, in file order. */
  get remaining(): string[] {
    return [...this.pending.keys()];
  }

  /** Hands over one linear's packed weights (and writes them as soon as their turn comes). */
  async putLinear(prefix: string, w: PackedWeights): Promise<void> {
    const want = this.pending.get(prefix);
    if (!want)
      throw new LowbitError(
        'E_ARGUMENT',
        `'${prefix}' is not a quantized linear of this checkpoint, or was already written`,
        { tensor: prefix },
      );
    const where = { tensor: prefix };
    if (w.bits !== this.gptq.bits)
      throw new LowbitError(
        'E_BITS',
        `${prefix}: packed at ${w.bits} bits, the checkpoint is ${this.gptq.bits}-bit`,
        where,
      );
    if (w.K !== want.K || w.N !== want.N)
      throw new LowbitError(
        'E_SHAPE',
        `${prefix}: packed K×N ${w.K}×${w.N}, the model needs ${want.K}×${want.N}`,
        where,
      );
    const groupSize = this.gptq.groupSize === -1 ? want.K : this.gptq.groupSize;
    if (w.groupSize !== groupSize || w.groups !== want.groups) {
      throw new LowbitError(
        'E_GROUP_SIZE',
        `${prefix}: group size ${w.groupSize} with ${w.groups} groups, the checkpoint needs ${groupSize} with ${want.groups}`,
        where,
      );
    }
    const zeroOffset = this.gptq.checkpointFormat === 'gptq' ? 1 : 0;
    if (w.zeroOffset !== zeroOffset)
      throw new LowbitError(
        'E_GPTQ_FORMAT',
        `${prefix}: zeros packed with offset ${w.zeroOffset}, ${this.gptq.checkpointFormat} stores offset ${zeroOffset}`,
        where,
      );
    const { K, N, groups } = want.written;
    const p = padPackedWeights(w, K, N, this.gptq.groupSize === -1 ? K : groupSize);
    let gIdx = p.gIdx;
    if (!gIdx) {
      gIdx = new Int32Array(K);
      for (let k = 0; k < K; k++) gIdx[k] = Math.floor(k / groupSize);
    }
    this.pending.delete(prefix);
    await this.writer.put(`${prefix}.qweight`, new Tensor('i32', [packedWords(w.bits, K), N], p.qweight));
    await this.writer.put(`${prefix}.qzeros`, new Tensor('i32', [groups, packedWords(w.bits, N)], p.qzeros));
    await this.writer.put(`${prefix}.scales`, new Tensor('f16', [groups, N], p.scales));
    await this.writer.put(`${prefix}.g_idx`, new Tensor('i32', [K], gIdx));
  }

  /**
   * Closes the files and renames the directory into place. `beforeRename` sees the complete
   * temporary directory just before (the scheduler records it for --resume). The target is never
   * removed: an empty directory is replaced, anything else that appeared there fails with E_IO.
   */
  async finish(beforeRename?: (work: string) => Promise<void>): Promise<string> {
    if (this.pending.size > 0) {
      throw new LowbitError(
        'E_MISSING_TENSOR',
        `${this.pending.size} quantized linears were never written (first: '${this.remaining[0]}')`,
        { file: this.target, tensor: this.remaining[0] },
      );
    }
    try {
      await this.writer.finish();
      await syncDir(this.work);
      await beforeRename?.(this.work);
      try {
        await renameDurable(this.work, this.target);
      } catch (err) {
        const code = ((err as LowbitError).cause as NodeJS.ErrnoException | undefined)?.code;
        if (code === 'ENOTEMPTY' || code === 'EEXIST' || code === 'ENOTDIR' || code === 'EISDIR') {
          throw new LowbitError(
            'E_IO',
            `${this.target} appeared during the run and is not empty; lowbit does not overwrite what it did not write (move it away, then run again with resume)`,
            { file: this.target },
            { cause: err },
          );
        }
        throw err;
      }
    } catch (err) {
      await this.abort();
      throw ioError('finish', this.target, err);
    }
    return this.target;
  }

  async abort(): Promise<void> {
    await this.writer.abort();
    await removeTree(this.work).catch(() => undefined);
  }
}

/** Throws E_IO unless `target` is absent or an empty directory. */
export async function checkEmptyTarget(target: string): Promise<void> {
  let existing;
  try {
    existing = await stat(target);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return;
    throw ioError('use', target, err);
  }
  let empty = false;
  if (existing.isDirectory()) {
    try {
      empty = (await readdir(target)).length === 0;
    } catch (err) {
      throw ioError('list', target, err);
    }
  }
  if (!empty) throw new LowbitError('E_IO', `${target} exists and is not an empty directory`, { file: target });
}

function dtypeName(d: Tensor['dtype'] | undefined): string {
  return d === 'f16' ? 'float16' : d === 'bf16' ? 'bfloat16' : 'float32';
}

// ---------------------------------------------------------------------------------------------
// Reading

function gptqError(file: string, message: string, tensor?: string): LowbitError {
  return new LowbitError('E_GPTQ_FORMAT', `${file}: ${message}`, tensor ? { file, tensor } : { file });
}

/** How a checkpoint stores one tensor, from its header alone. */
export interface StoredTensor {
  dtype: string;
  shape: readonly number[];
}

/**
 * Checks every GPTQ linear's tensors against the quantization config from the headers alone (no
 * tensor is read), so that a checkpoint whose bits, group size or dtypes contradict its tensors is
 * refused when it is opened, naming the values that disagree: qweight I32 [packed(K), N], qzeros
 * I32 [groups, packed(N)], scales F16/BF16/F32 [groups, N], g_idx I32 [K].
 */
export function checkQuantizedTensors(
  config: LlamaConfig,
  tensors: ModelTensors,
  stored: (name: string) => StoredTensor,
  file: string,
): void {
  const q = config.quantization;
  const linears: { t: QuantizedLinearTensors; K: number; N: number }[] = [];
  for (const block of tensors.blocks) {
    for (const name of LINEAR_NAMES) {
      const t = block[name].quantized;
      if (t) linears.push({ t, ...linearDims(config, name) });
    }
  }
  if (tensors.lmHeadQuantized) linears.push({ t: tensors.lmHeadQuantized, K: config.hiddenSize, N: config.vocabSize });
  for (const { t, K, N } of linears) {
    if (!q)
      throw gptqError(
        file,
        `'${t.qweight}' is GPTQ-packed, but config.json has no quantization_config (and there is no quantize_config.json)`,
        t.qweight,
      );
    const bits = q.bits;
    const check = (
      tensor: string,
      dtypes: string[],
      want: (shape: readonly number[]) => number[],
      what: string,
      hint?: (shape: readonly number[]) => string,
    ): readonly number[] => {
      const s = stored(tensor);
      if (!dtypes.includes(s.dtype))
        throw gptqError(file, `${what} '${tensor}' is stored as ${s.dtype}, expected ${dtypes.join(' or ')}`, tensor);
      const w = want(s.shape);
      if (s.shape.length !== w.length || s.shape.some((d, i) => d !== w[i])) {
        throw gptqError(
          file,
          `${what} '${tensor}' has shape [${s.shape.join(', ')}]; quantization_config.bits ${bits} with K=${K}, N=${N} needs [${w.join(', ')}]${hint?.(s.shape) ?? ''}`,
          tensor,
        );
      }
      return s.shape;
    };
    const bitsHint =
      (count: number) =>
      (shape: readonly number[]): string => {
        const fits = GPTQ_BITS.filter((b) => b !== bits && packedWords(b, count) === shape[0]);
        return fits.length ? ` (the shape of ${fits.join(' or ')}-bit weights)` : '';
      };
    check(t.qweight, ['I32'], () => [packedWords(bits, K), N], 'qweight', bitsHint(K));
    const scales = check(t.scales, ['F16', 'BF16', 'F32'], (shape) => [Math.max(1, shape[0] ?? 0), N], 'scales');
    const groups = scales[0]!;
    check(
      t.qzeros,
      ['I32'],
      () => [groups, packedWords(bits, N)],
      'qzeros',
      (shape) => (shape[1] !== undefined && packedWords(bits, N) !== shape[1] ? bitsHint(N)([shape[1]]) : ''),
    );
    if (t.gIdx) check(t.gIdx, ['I32'], () => [K], 'g_idx');
    else if (groups !== groupsOf(K, q.groupSize)) {
      throw gptqError(
        file,
        `'${t.scales}' has ${groups} groups, K=${K} with quantization_config.group_size ${q.groupSize} needs ${groupsOf(K, q.groupSize)}`,
        t.scales,
      );
    }
  }
}

/** Opens a GPTQ checkpoint directory (an HfModel whose config has a gptq quantization_config). */
export async function openGptqModel(dir: string): Promise<HfModel> {
  const model = await HfModel.open(dir);
  if (!model.config.quantization) {
    await model.close();
    throw gptqError(model.dir, 'config.json has no quantization_config: not a GPTQ checkpoint');
  }
  return model;
}

/** Reads one quantized linear into PackedWeights, checking every shape against the config. */
export async function readPackedLinear(model: HfModel, block: number, name: LinearName): Promise<PackedWeights> {
  const b = model.tensors.blocks[block];
  if (!b) invalidArgument('block', `a block index below ${model.tensors.blocks.length}`, block);
  const linear: LinearTensors = b[name];
  if (!linear.quantized)
    throw gptqError(model.dir, `'${linear.prefix}' is stored dense (no qweight)`, `${linear.prefix}.qweight`);
  const { K, N } = linearDims(model.config, name);
  return readPacked(model, linear.quantized, K, N);
}

/** Reads a quantized lm_head (GPTQModel's lm_head: true) into PackedWeights: K = hidden size, N = vocabulary. */
export async function readPackedHead(model: HfModel): Promise<PackedWeights> {
  const t = model.tensors.lmHeadQuantized;
  if (!t) throw gptqError(model.dir, 'lm_head is not stored quantized (no lm_head.qweight)', 'lm_head.qweight');
  return readPacked(model, t, model.config.hiddenSize, model.config.vocabSize);
}

async function readPacked(model: HfModel, t: QuantizedLinearTensors, K: number, N: number): Promise<PackedWeights> {
  const q = model.config.quantization;
  const file = model.dir;
  if (!q) throw gptqError(file, 'config.json has no quantization_config');
  const bits = q.bits;
  // A group as large as K (or larger: a model whose smaller linears have K under the configured
  // group size, such as stories260K's K = 64 at group size 128) is one group per output channel.
  const groupSize = q.groupSize === -1 || q.groupSize > K ? K : q.groupSize;

  const expectShape = (tensor: string, shape: readonly number[], want: number[], what: string): void => {
    if (shape.length !== want.length || shape.some((d, i) => d !== want[i])) {
      throw gptqError(
        file,
        `${what} '${tensor}' has shape [${shape.join(', ')}], ${bits}-bit K=${K} N=${N} needs [${want.join(', ')}]`,
        tensor,
      );
    }
  };
  const int32 = async (tensor: string): Promise<Tensor<'i32'>> => {
    // the stored dtype, not the read one: I16/I8/I64 are widened to i32 on read, and packed words must not be
    const storedAs = model.checkpoint.info(tensor).dtype;
    if (storedAs !== 'I32') throw gptqError(file, `'${tensor}' is stored as ${storedAs}, expected I32`, tensor);
    return (await model.readTensor(tensor)) as Tensor<'i32'>;
  };

  const qweight = await int32(t.qweight);
  expectShape(t.qweight, qweight.shape, [packedWords(bits, K), N], 'qweight');
  const scalesRaw = await model.readTensor(t.scales);
  if (scalesRaw.dtype === 'i32' || scalesRaw.dtype === 'u8')
    throw gptqError(file, `'${t.scales}' is ${scalesRaw.dtype}, expected a float type`, t.scales);
  const scales = scalesRaw.dtype === 'f16' ? (scalesRaw as Tensor<'f16'>) : scalesRaw.to('f16');
  if (scales.shape.length !== 2 || scales.shape[1] !== N)
    expectShape(t.scales, scales.shape, [groupsOf(K, q.groupSize), N], 'scales');
  const groups = scales.shape[0]!;
  const qzeros = await int32(t.qzeros);
  expectShape(t.qzeros, qzeros.shape, [groups, packedWords(bits, N)], 'qzeros');

  let gIdx: Int32Array | undefined;
  if (t.gIdx) {
    const g = await int32(t.gIdx);
    expectShape(t.gIdx, g.shape, [K], 'g_idx');
    gIdx = g.data;
    let trivial = true;
    for (let k = 0; k < K; k++) {
      const v = gIdx[k]!;
      if (v < 0 || v >= groups) throw gptqError(file, `g_idx[${k}] = ${v} is outside [0, ${groups})`, t.gIdx);
      if (v !== Math.floor(k / groupSize)) trivial = false;
    }
    // g_idx = k / group_size is what every writer stores without act-order: the kernels' fast path
    if (trivial) gIdx = undefined;
  }
  if (!gIdx && groups !== groupsOf(K, q.groupSize)) {
    throw gptqError(
      file,
      `'${t.scales}' has ${groups} groups, K=${K} with group size ${q.groupSize} needs ${groupsOf(K, q.groupSize)}`,
      t.scales,
    );
  }
  const w: PackedWeights = {
    bits,
    K,
    N,
    groupSize,
    groups,
    zeroOffset: q.checkpointFormat === 'gptq' ? 1 : 0,
    qweight: qweight.data,
    qzeros: qzeros.data,
    scales: scales.data,
  };
  if (gIdx) w.gIdx = gIdx;
  return w;
}

/**
 * A description of a model file or directory for `lowbit inspect`: architecture, tensors (name,
 * dtype, shape, bytes), quantization config, bits per weight and total size.
 */
import { existsSync, statSync } from 'node:fs';
import { basename, join, resolve } from 'node:path';
import { LowbitError } from '../errors.js';
import { Checkpoint } from './checkpoint.js';
import { checkPath } from './read-bounded.js';
import { checkQuantizedTensors, linearDims } from './gptq.js';
import {
  LINEAR_MODULES,
  LINEAR_NAMES,
  checkLayerCount,
  describeTensors,
  readLlamaConfig,
  type LlamaConfig,
} from './hf.js';
import { Llama2cModel } from './llama2c.js';
import { SAFETENSORS_DTYPES } from './safetensors.js';
import { GPTQ_TENSOR_SUFFIXES } from '../weights/formats.js';
import { SPQR_TENSOR_SUFFIXES, checkSpqrTensors, spqrTensorName } from './spqr.js';

export interface TensorReport {
  name: string;
  dtype: string;
  shape: number[];
  bytes: number;
}

/** The config facts a report shows, in this order. */
const CONFIG_FACTS = [
  'modelType',
  'hiddenSize',
  'intermediateSize',
  'numLayers',
  'numHeads',
  'numKvHeads',
  'headDim',
  'vocabSize',
  'maxPositionEmbeddings',
  'tieWordEmbeddings',
  'rope',
] as const;

export interface InspectReport {
  path: string;
  format: 'hf-directory' | 'safetensors' | 'llama2c';
  architecture?: string;
  config?: Pick<LlamaConfig, (typeof CONFIG_FACTS)[number]>;
  /** quantization_config as the checkpoint states it */
  quantization?: Record<string, unknown>;
  /** llama2.c header facts (version, shared classifier, Q8_0 group size) */
  llama2c?: Record<string, unknown>;
  metadata?: Record<string, unknown>;
  files: string[];
  tensors: TensorReport[];
  /** bytes of tensor data */
  totalBytes: number;
  /** logical weights (a quantized linear counts K×N) */
  parameters: number;
  bitsPerWeight: {
    /** over every tensor */
    overall: number;
    /** over the quantized linears only (qweight + qzeros + scales + g_idx), when there are any */
    quantizedLinears?: number;
  };
  /** SpQR checkpoints: each quantized linear's stored bits per weight and outlier rate */
  spqrLayers?: SpqrLayerReport[];
}

export interface SpqrLayerReport {
  prefix: string;
  N: number;
  K: number;
  /** every spqr_* tensor of the linear, in bits, over N·K */
  bitsPerWeight: number;
  outliers: number;
  /** outliers / (N·K) */
  outlierRate: number;
}

function summary(c: LlamaConfig): InspectReport['config'] {
  return Object.fromEntries(CONFIG_FACTS.map((key) => [key, c[key]])) as InspectReport['config'];
}

export async function inspectModel(path: string): Promise<InspectReport> {
  checkPath(path, 'path', 'a model directory or file');
  const target = resolve(path);
  let isDir: boolean;
  try {
    isDir = statSync(target).isDirectory();
  } catch (err) {
    throw new LowbitError('E_IO', `cannot open ${target}: ${(err as Error).message}`, { file: target }, { cause: err });
  }
  if (!isDir && basename(target).endsWith('.bin')) return inspectLlama2c(target);

  // a directory of safetensors without config.json is still described (its tensors only)
  const config = isDir && existsSync(join(target, 'config.json')) ? await readLlamaConfig(target) : undefined;
  const ckpt = await Checkpoint.open(target);
  try {
    if (config) {
      checkLayerCount(config, ckpt.names, target);
      if (config.quantization)
        checkQuantizedTensors(
          config,
          describeTensors(config, (n) => ckpt.has(n), target),
          (n) => ckpt.info(n),
          target,
        );
      if (config.spqr)
        checkSpqrTensors(
          config,
          describeTensors(config, (n) => ckpt.has(n), target),
          (n) => ckpt.has(n),
          (n) => ckpt.info(n),
          target,
        );
    }
    const tensors: TensorReport[] = ckpt.names.map((name) => {
      const i = ckpt.info(name);
      return { name, dtype: i.dtype, shape: i.shape, bytes: i.end - i.begin };
    });
    const byName = new Map(tensors.map((t) => [t.name, t]));
    let parameters = 0;
    let quantBits = 0;
    let quantWeights = 0;
    const counted = new Set<string>();
    // quantized linears: K×N logical weights for all four tensors' bytes
    if (config?.quantization) {
      const linears: [string, { K: number; N: number }][] = [];
      for (let l = 0; l < config.numLayers; l++)
        for (const name of LINEAR_NAMES)
          linears.push([`model.layers.${l}.${LINEAR_MODULES[name]}`, linearDims(config, name)]);
      // a quantized lm_head (lm_head: true)
      linears.push(['lm_head', { K: config.hiddenSize, N: config.vocabSize }]);
      for (const [prefix, { K, N }] of linears) {
        if (!byName.has(`${prefix}.qweight`)) continue;
        let bytes = 0;
        for (const part of GPTQ_TENSOR_SUFFIXES) {
          const t = byName.get(`${prefix}.${part}`);
          if (t) {
            bytes += t.bytes;
            counted.add(t.name);
          }
        }
        parameters += K * N;
        quantWeights += K * N;
        quantBits += bytes * 8;
      }
    }
    // SpQR linears: every spqr_* tensor counts toward the layer's bits
    const spqrLayers: SpqrLayerReport[] = [];
    if (config?.spqr) {
      for (let l = 0; l < config.numLayers; l++) {
        for (const name of LINEAR_NAMES) {
          const prefix = `model.layers.${l}.${LINEAR_MODULES[name]}`;
          if (!byName.has(spqrTensorName(prefix, 'qweight'))) continue;
          const { K, N } = linearDims(config, name);
          let bytes = 0;
          for (const part of SPQR_TENSOR_SUFFIXES) {
            const t = byName.get(spqrTensorName(prefix, part));
            if (t) {
              bytes += t.bytes;
              counted.add(t.name);
            }
          }
          const outliers = byName.get(spqrTensorName(prefix, 'outlier_values'))?.shape[0] ?? 0;
          spqrLayers.push({
            prefix,
            N,
            K,
            bitsPerWeight: (bytes * 8) / (N * K),
            outliers,
            outlierRate: outliers / (N * K),
          });
          parameters += K * N;
          quantWeights += K * N;
          quantBits += bytes * 8;
        }
      }
    }
    for (const t of tensors) {
      if (counted.has(t.name)) continue;
      parameters += t.bytes / SAFETENSORS_DTYPES[t.dtype as keyof typeof SAFETENSORS_DTYPES];
    }
    const totalBytes = ckpt.dataBytes;
    const report: InspectReport = {
      path: target,
      format: isDir ? 'hf-directory' : 'safetensors',
      files: ckpt.files,
      metadata: ckpt.metadata,
      tensors,
      totalBytes,
      parameters,
      bitsPerWeight: { overall: parameters ? (totalBytes * 8) / parameters : 0 },
    };
    if (quantWeights) report.bitsPerWeight.quantizedLinears = quantBits / quantWeights;
    if (spqrLayers.length) report.spqrLayers = spqrLayers;
    if (config) {
      report.architecture = config.architecture;
      report.config = summary(config);
      if (config.quantization) report.quantization = config.quantization.raw;
      if (config.spqr) report.quantization = config.raw.quantization_config as Record<string, unknown>;
    }
    return report;
  } finally {
    await ckpt.close();
  }
}

async function inspectLlama2c(path: string): Promise<InspectReport> {
  const model = await Llama2cModel.open(path);
  try {
    const h = model.header;
    const tensors = model.names.map((name) => ({ name, shape: [...model.shapeOf(name)], ...model.storageOf(name) }));
    const parameters = tensors.reduce((a, t) => a + t.shape.reduce((x, y) => x * y, 1), 0);
    const totalBytes = statSync(path).size - h.headerBytes;
    return {
      path,
      format: 'llama2c',
      architecture: model.config.architecture,
      config: summary(model.config),
      llama2c: {
        version: h.version,
        sharedClassifier: h.sharedClassifier,
        ...(h.groupSize ? { q8GroupSize: h.groupSize } : {}),
      },
      files: [path],
      tensors,
      totalBytes,
      parameters,
      bitsPerWeight: { overall: (totalBytes * 8) / parameters },
    };
  } finally {
    await model.close();
  }
}

function formatBytes(n: number): string {
  if (n < 1024) return `${n} B`;
  const units = ['KiB', 'MiB', 'GiB', 'TiB'];
  let v = n / 1024;
  let i = 0;
  while (v >= 1024 && i < units.length - 1) {
    v /= 1024;
    i++;
  }
  return `${v.toFixed(2)} ${units[i]}`;
}

/** The report as text for a terminal. */
export function formatReport(r: InspectReport): string {
  const lines: string[] = [`${r.path}  (${r.format})`];
  if (r.architecture && r.config) {
    const c = r.config;
    lines.push(
      `architecture  ${r.architecture} (${c.modelType}): hidden ${c.hiddenSize}, intermediate ${c.intermediateSize}, ${c.numLayers} layers, ` +
        `${c.numHeads} heads (${c.numKvHeads} kv, dim ${c.headDim}), vocab ${c.vocabSize}, context ${c.maxPositionEmbeddings}, ` +
        `RoPE ${c.rope.type} θ=${c.rope.theta}${c.tieWordEmbeddings ? ', tied embeddings' : ''}`,
    );
  }
  if (r.llama2c) lines.push(`llama2.c      ${JSON.stringify(r.llama2c)}`);
  if (r.quantization) {
    // (SpQR's per-layer facts are shown as the table below)
    const { lowbit: _perLayer, ...q } = r.quantization;
    lines.push(`quantization  ${JSON.stringify(r.spqrLayers ? q : r.quantization)}`);
  }
  lines.push(`files         ${r.files.map((f) => basename(f)).join(', ')}`);
  const bpw = r.bitsPerWeight;
  lines.push(
    `size          ${formatBytes(r.totalBytes)} of tensors, ${r.parameters.toLocaleString('en-US')} weights, ${bpw.overall.toFixed(3)} bits/weight` +
      (bpw.quantizedLinears !== undefined ? ` (quantized linears: ${bpw.quantizedLinears.toFixed(3)})` : ''),
  );
  if (r.spqrLayers) {
    const outliers = r.spqrLayers.reduce((a, l) => a + l.outliers, 0);
    const weights = r.spqrLayers.reduce((a, l) => a + l.N * l.K, 0);
    const w = Math.max(...r.spqrLayers.map((l) => l.prefix.length), 5);
    lines.push('', `SpQR linears (${r.spqrLayers.length}): bits/weight and outlier rate`);
    for (const l of r.spqrLayers)
      lines.push(
        `  ${l.prefix.padEnd(w)}  ${`${l.N}x${l.K}`.padStart(11)}  ${l.bitsPerWeight.toFixed(3)} bits/weight  ${(100 * l.outlierRate).toFixed(3)}% outliers (${l.outliers})`,
      );
    lines.push(
      `  ${'total'.padEnd(w)}  ${''.padStart(11)}  ${(bpw.quantizedLinears ?? 0).toFixed(3)} bits/weight  ${((100 * outliers) / weights).toFixed(3)}% outliers (${outliers})`,
    );
  }
  lines.push('', `tensors (${r.tensors.length}):`);
  const width = Math.max(...r.tensors.map((t) => t.name.length), 4);
  for (const t of r.tensors)
    lines.push(`  ${t.name.padEnd(width)}  ${t.dtype.padEnd(4)}  [${t.shape.join(', ')}]  ${formatBytes(t.bytes)}`);
  return lines.join('\n');
}

/**
 * Resume state of a quantization run, kept next to the output directory until the run finishes:
 *   state.json        the options' fingerprint, the finished blocks and their summary rows
 *   block-<b>.bin     block b's packed linears (a JSON header, then the arrays, 8-byte aligned)
 *   hidden.f32        the calibration hidden states after the last finished block (GPTQ only)
 * Every file is written to a temporary name and renamed; state.json is written last, so a kill at
 * any point leaves a consistent state.
 */
import { mkdir, readFile, rm } from 'node:fs/promises';
import { basename, dirname, join, resolve } from 'node:path';
import { LowbitError } from '../errors.js';
import { writeFileAtomic } from '../formats/safetensors-writer.js';
import type { PackedWeights } from '../native.js';

export interface LayerReport {
  block: number;
  linear: string;
  prefix: string;
  N: number;
  K: number;
  /** GPTQ: the objective (mean over calibration tokens of ||(W - Q) x||^2); RTN: null */
  loss: number | null;
  damp: number | null;
  dampRaises: number;
  warnings: string[];
  bitsPerWeight: number;
  bytes: number;
  seconds: number;
}

export interface ResumeState {
  fingerprint: string;
  finishedBlocks: number;
  layers: LayerReport[];
}

export function resumeDir(out: string): string {
  const target = resolve(out);
  return join(dirname(target), `.${basename(target)}.lowbit-resume`);
}

export async function readState(dir: string): Promise<ResumeState | undefined> {
  try {
    return JSON.parse(await readFile(join(dir, 'state.json'), 'utf8')) as ResumeState;
  } catch {
    return undefined;
  }
}

export async function writeState(dir: string, state: ResumeState): Promise<void> {
  await mkdir(dir, { recursive: true });
  await writeFileAtomic(join(dir, 'state.json'), JSON.stringify(state));
}

export async function clearState(dir: string): Promise<void> {
  await rm(dir, { recursive: true, force: true });
}

type ArrayKey = 'qweight' | 'qzeros' | 'scales' | 'gIdx';
const ARRAY_KEYS: ArrayKey[] = ['qweight', 'qzeros', 'scales', 'gIdx'];

interface BlockHeader {
  linears: { prefix: string; meta: Omit<PackedWeights, ArrayKey>; arrays: Partial<Record<ArrayKey, [offset: number, bytes: number]>> }[];
}

/** Writes block b's packed linears (prefix -> weights). */
export async function writeBlock(dir: string, block: number, linears: Map<string, PackedWeights>): Promise<void> {
  const header: BlockHeader = { linears: [] };
  const chunks: Uint8Array[] = [];
  let offset = 0;
  for (const [prefix, w] of linears) {
    const { qweight, qzeros, scales, gIdx, ...meta } = w;
    const arrays: BlockHeader['linears'][number]['arrays'] = {};
    for (const [key, a] of [['qweight', qweight], ['qzeros', qzeros], ['scales', scales], ['gIdx', gIdx]] as const) {
      if (!a) continue;
      const bytes = new Uint8Array(a.buffer, a.byteOffset, a.byteLength);
      arrays[key] = [offset, bytes.byteLength];
      chunks.push(bytes);
      const pad = (8 - (bytes.byteLength % 8)) % 8;
      if (pad) chunks.push(new Uint8Array(pad));
      offset += bytes.byteLength + pad;
    }
    header.linears.push({ prefix, meta, arrays });
  }
  const json = new TextEncoder().encode(JSON.stringify(header));
  const headLen = Math.ceil((json.byteLength + 8) / 8) * 8;
  const out = new Uint8Array(headLen + offset);
  new DataView(out.buffer).setUint32(0, json.byteLength, true);
  out.set(json, 8);
  let at = headLen;
  for (const c of chunks) {
    out.set(c, at);
    at += c.byteLength;
  }
  await mkdir(dir, { recursive: true });
  await writeFileAtomic(join(dir, `block-${block}.bin`), out);
}

export async function readBlock(dir: string, block: number): Promise<Map<string, PackedWeights>> {
  const file = join(dir, `block-${block}.bin`);
  let data: Buffer;
  try {
    data = await readFile(file);
  } catch (err) {
    throw new LowbitError('E_IO', `resume state is missing ${file}: ${(err as Error).message}`, { file }, { cause: err });
  }
  const bytes = new Uint8Array(data.buffer, data.byteOffset, data.byteLength).slice(); // own, aligned copy
  const jsonLen = new DataView(bytes.buffer).getUint32(0, true);
  const header = JSON.parse(new TextDecoder().decode(bytes.subarray(8, 8 + jsonLen))) as BlockHeader;
  const base = Math.ceil((jsonLen + 8) / 8) * 8;
  const out = new Map<string, PackedWeights>();
  for (const l of header.linears) {
    const view = (key: ArrayKey) => {
      const r = l.arrays[key];
      if (!r) return undefined;
      const [off, len] = r;
      return key === 'scales' ? new Uint16Array(bytes.buffer, base + off, len / 2) : new Int32Array(bytes.buffer, base + off, len / 4);
    };
    const w = { ...l.meta } as PackedWeights;
    for (const key of ARRAY_KEYS) {
      const a = view(key);
      if (a) (w as unknown as Record<string, unknown>)[key] = a;
    }
    out.set(l.prefix, w);
  }
  return out;
}

export async function writeHidden(dir: string, hidden: Float32Array): Promise<void> {
  await writeFileAtomic(join(dir, 'hidden.f32'), new Uint8Array(hidden.buffer, hidden.byteOffset, hidden.byteLength));
}

export async function readHidden(dir: string, length: number): Promise<Float32Array> {
  const file = join(dir, 'hidden.f32');
  const data = await readFile(file).catch(() => undefined);
  if (!data || data.byteLength !== length * 4) {
    throw new LowbitError('E_IO', `resume state ${file} is missing or has the wrong size (expected ${length * 4} bytes)`, { file });
  }
  const out = new Float32Array(length);
  new Uint8Array(out.buffer).set(data);
  return out;
}

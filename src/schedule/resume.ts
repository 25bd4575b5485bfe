/**
 * Resume state of a quantization run, kept beside the output directory (`.<out>.lowbit-resume/`)
 * until the checkpoint is in place:
 *   state.json        the commit record: the options' fingerprint, the finished blocks and their
 *                     summary rows, the name of the hidden-state file that belongs to them, and
 *                     (while the output is being renamed into place) the identity of that output
 *   block-<b>.bin     block b's packed linears (a JSON header, then the arrays, 8-byte aligned)
 *   hidden-<b>.f32    the calibration hidden states entering block b (GPTQ only), same framing
 * Only state.json decides what is finished: every other file is written durably (temporary name,
 * fsync, rename, directory fsync) before the state.json that names it, and carries the fingerprint
 * and block index it belongs to, checked on reading. A kill at any step therefore resumes from the
 * last committed block; files no commit names are leftovers and are removed (`prune`).
 */
import { existsSync } from 'node:fs';
import { open, readFile, type FileHandle } from 'node:fs/promises';
import { basename, dirname, join, resolve } from 'node:path';
import { LowbitError } from '../errors.js';
import { listDir, mkdirDurable, removeTree, renameDurable, tempPath, writeFileAtomic } from '../formats/durable.js';
import { checkSpqrWeights } from '../formats/spqr.js';
import type { PackedWeights } from '../native.js';
import { GPTQ_TENSOR_SUFFIXES, gptqTensors, type SpqrLinearWeights } from '../weights/index.js';

export interface LayerReport {
  block: number;
  linear: string;
  prefix: string;
  N: number;
  K: number;
  /** GPTQ: the objective (mean over calibration tokens of ||(W - Q) x||^2); RTN: null */
  loss: number | null;
  /** GPTQ: the dampening fraction of mean(diag H) finally used, and the absolute λ added to diag(H); RTN: null */
  damp: number | null;
  lambda: number | null;
  dampRaises: number;
  warnings: string[];
  bitsPerWeight: number;
  bytes: number;
  seconds: number;
  /** SpQR: outliers / weights */
  outlierRate?: number;
}

/** The output directory as it was renamed into place: enough to recognise it afterwards. */
export interface Publishing {
  /** the temporary directory that is renamed to the output */
  work: string;
  dev: number;
  ino: number;
  /** file name -> size */
  files: Record<string, number>;
}

export interface ResumeState {
  version: 2;
  fingerprint: string;
  finishedBlocks: number;
  layers: LayerReport[];
  /** the hidden-state file entering block `finishedBlocks` (GPTQ, before the last block), else null */
  hidden: string | null;
  /** set just before the final rename of the output */
  publishing?: Publishing;
}

const STATE_FILE = 'state.json';
const VERSION = 2;

export function resumeDir(out: string): string {
  const target = resolve(out);
  return join(dirname(target), `.${basename(target)}.lowbit-resume`);
}

export function hiddenName(block: number): string {
  return `hidden-${block}.f32`;
}

function corrupt(file: string, why: string): LowbitError {
  return new LowbitError('E_IO', `resume state ${file} is damaged (${why}); run without resume to start over`, {
    file,
  });
}

/** A block file's JSON header, checked to belong to block `block` of run `fingerprint`. */
function blockHeader<H extends { fingerprint: string; block: number }>(
  file: string,
  json: Uint8Array,
  fingerprint: string,
  block: number,
): H {
  let header: H;
  try {
    header = JSON.parse(new TextDecoder().decode(json)) as H;
  } catch {
    throw corrupt(file, 'header is not JSON');
  }
  if (header.fingerprint !== fingerprint || header.block !== block) {
    throw corrupt(
      file,
      `it belongs to block ${String(header.block)} of run ${String(header.fingerprint).slice(0, 12)}, not block ${block} of ${fingerprint.slice(0, 12)}`,
    );
  }
  return header;
}

/** The committed state, or undefined when there is none. */
export async function readState(dir: string): Promise<ResumeState | undefined> {
  const file = join(dir, STATE_FILE);
  let text: string;
  try {
    text = await readFile(file, 'utf8');
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT' || (err as NodeJS.ErrnoException).code === 'ENOTDIR')
      return undefined;
    throw new LowbitError('E_IO', `cannot read ${file}: ${(err as Error).message}`, { file }, { cause: err });
  }
  let state: ResumeState;
  try {
    state = JSON.parse(text) as ResumeState;
  } catch {
    throw corrupt(file, 'not JSON');
  }
  if (state?.version !== VERSION)
    throw corrupt(file, `version ${String(state?.version)}, this lowbit writes ${VERSION}`);
  if (
    typeof state.fingerprint !== 'string' ||
    !Number.isInteger(state.finishedBlocks) ||
    state.finishedBlocks < 0 ||
    !Array.isArray(state.layers)
  ) {
    throw corrupt(file, 'missing fields');
  }
  return state;
}

/** Creates the state directory (once, before the first write into it). */
export async function createStateDir(dir: string): Promise<void> {
  if (!existsSync(dir)) await mkdirDurable(dir);
}

/** Commits `state` (the one atomic step that makes a block finished). */
export async function writeState(dir: string, state: ResumeState): Promise<void> {
  await writeFileAtomic(join(dir, STATE_FILE), JSON.stringify(state));
}

/**
 * Removes the resume state in one atomic step (the directory renamed to a temporary name beside
 * it, then deleted: a kill in between leaves only an orphan that the next run removes).
 */
export async function clearState(dir: string): Promise<void> {
  if (!existsSync(dir)) return;
  const aside = tempPath(dir);
  await renameDurable(dir, aside);
  await removeTree(aside);
}

/**
 * Removes every file of `dir` that the committed state does not name (blocks at or past
 * finishedBlocks, other hidden-state files, temporary files): the leftovers of a stopped run.
 * With state null, removes everything but state.json. Returns the names removed.
 */
export async function pruneState(dir: string, state: ResumeState | undefined | null): Promise<string[]> {
  const keep = new Set<string>([STATE_FILE]);
  if (state) {
    for (let b = 0; b < state.finishedBlocks; b++) keep.add(`block-${b}.bin`);
    if (state.hidden) keep.add(state.hidden);
  }
  const removed: string[] = [];
  for (const name of await listDir(dir)) {
    if (keep.has(name)) continue;
    await removeTree(join(dir, name));
    removed.push(name);
  }
  return removed;
}

/**
 * A file of a JSON header (length-prefixed, padded to 8 bytes) followed by 8-byte aligned arrays,
 * as the parts to write in order (never one array: calibration states can exceed a typed array's
 * largest length, 4 GiB at 128 × 2048 tokens of dim 4096).
 */
function frame(header: object, chunks: Uint8Array[]): Uint8Array[] {
  const json = new TextEncoder().encode(JSON.stringify(header));
  const head = new Uint8Array(Math.ceil((json.byteLength + 8) / 8) * 8);
  new DataView(head.buffer).setUint32(0, json.byteLength, true);
  head.set(json, 8);
  const parts: Uint8Array[] = [head];
  for (const c of chunks) {
    parts.push(c);
    const pad = (8 - (c.byteLength % 8)) % 8;
    if (pad) parts.push(new Uint8Array(pad));
  }
  return parts;
}

/** Views of at most 1 GiB over the bytes of `a` (a typed array's byteLength can exceed a Uint8Array's). */
function byteViews(a: Float32Array): Uint8Array[] {
  const views: Uint8Array[] = [];
  for (let off = 0; off < a.byteLength; off += 1 << 30)
    views.push(new Uint8Array(a.buffer, a.byteOffset + off, Math.min(1 << 30, a.byteLength - off)));
  return views;
}

async function unframe<H extends { fingerprint: string; block: number }>(
  file: string,
  fingerprint: string,
  block: number,
): Promise<{ header: H; bytes: Uint8Array; base: number }> {
  let data: Buffer;
  try {
    data = await readFile(file);
  } catch (err) {
    throw new LowbitError(
      'E_IO',
      `resume state is missing ${file}: ${(err as Error).message}`,
      { file },
      { cause: err },
    );
  }
  const bytes = new Uint8Array(data.byteLength);
  bytes.set(data); // own, aligned copy
  if (bytes.byteLength < 8) throw corrupt(file, 'too short');
  const jsonLen = new DataView(bytes.buffer).getUint32(0, true);
  if (8 + jsonLen > bytes.byteLength) throw corrupt(file, 'header past the end');
  const header = blockHeader<H>(file, bytes.subarray(8, 8 + jsonLen), fingerprint, block);
  return { header, bytes, base: Math.ceil((jsonLen + 8) / 8) * 8 };
}

/**
 * The arrays of a GPTQ linear, keyed by their checkpoint suffix from the weight-format table
 * (src/weights: qweight, qzeros, scales, g_idx), each with its PackedWeights field and element type.
 */
type ArrayKey = 'qweight' | 'qzeros' | 'scales' | 'gIdx';
type Suffix = (typeof GPTQ_TENSOR_SUFFIXES)[number];
const FIELD: Record<Suffix, ArrayKey> = { qweight: 'qweight', qzeros: 'qzeros', scales: 'scales', g_idx: 'gIdx' };
const ARRAYS = GPTQ_TENSOR_SUFFIXES.map((suffix) => ({ suffix, field: FIELD[suffix] }));

/** The arrays of a SpQR linear (fields of SpqrWeights) and their element types. */
const SPQR_ARRAYS = {
  qweight: Uint8Array,
  scaleCodes: Uint8Array,
  zeroCodes: Uint8Array,
  scaleStats: Uint16Array,
  zeroStats: Uint16Array,
  perm: Int32Array,
  outlierRowptr: Int32Array,
  outlierCols: Int32Array,
  outlierValues: Uint16Array,
} as const;
type SpqrArrayKey = keyof typeof SPQR_ARRAYS;

interface BlockHeader {
  fingerprint: string;
  block: number;
  linears: {
    prefix: string;
    /** absent: gptq (the layout of earlier versions) */
    format?: 'gptq' | 'spqr';
    meta: Record<string, unknown>;
    arrays: Partial<Record<string, [offset: number, bytes: number]>>;
  }[];
}

/** Writes block b's quantized linears (prefix -> weights: GPTQ PackedWeights, or tagged SpQR weights). */
export async function writeBlock(
  dir: string,
  fingerprint: string,
  block: number,
  linears: Map<string, PackedWeights | SpqrLinearWeights>,
): Promise<void> {
  const header: BlockHeader = { fingerprint, block, linears: [] };
  const chunks: Uint8Array[] = [];
  let offset = 0;
  for (const [prefix, w] of linears) {
    const meta: Record<string, unknown> = { ...w };
    const arrays: BlockHeader['linears'][number]['arrays'] = {};
    // Moves field `field` of w out of the metadata into the frame, under `key`, 8-byte aligned.
    const put = (key: string, field: string, a: ArrayBufferView | undefined) => {
      delete meta[field];
      if (!a) return;
      const bytes = new Uint8Array(a.buffer, a.byteOffset, a.byteLength);
      arrays[key] = [offset, bytes.byteLength];
      chunks.push(bytes);
      offset += bytes.byteLength + ((8 - (bytes.byteLength % 8)) % 8);
    };
    if ((w as { format?: string }).format === 'spqr') {
      for (const field of Object.keys(SPQR_ARRAYS) as SpqrArrayKey[])
        put(field, field, (w as SpqrLinearWeights)[field]);
      header.linears.push({ prefix, format: 'spqr', meta, arrays });
      continue;
    }
    for (const { suffix, field } of ARRAYS) put(suffix, field, (w as PackedWeights)[field]);
    header.linears.push({ prefix, meta, arrays });
  }
  await writeFileAtomic(join(dir, `block-${block}.bin`), frame(header, chunks));
}

export async function readBlock(
  dir: string,
  fingerprint: string,
  block: number,
): Promise<Map<string, PackedWeights | SpqrLinearWeights>> {
  const file = join(dir, `block-${block}.bin`);
  const { header, bytes, base } = await unframe<BlockHeader>(file, fingerprint, block);
  const out = new Map<string, PackedWeights | SpqrLinearWeights>();
  for (const l of header.linears) {
    if (l.format === 'spqr') {
      out.set(l.prefix, readSpqrLinear(file, l, bytes, base));
      continue;
    }
    const w = { ...l.meta } as unknown as PackedWeights;
    const specs = gptqTensors(w.bits, w.K, w.N, w.groups);
    for (const { suffix, field } of ARRAYS) {
      const r = l.arrays[suffix];
      if (!r) continue;
      const [off, len] = r;
      const spec = specs.find((t) => t.suffix === suffix)!;
      if (len !== spec.bytes || !(off >= 0 && base + off + len <= bytes.byteLength))
        throw corrupt(
          file,
          `${l.prefix}.${suffix} is not the ${spec.bytes} bytes its format needs, or lies past the end`,
        );
      const a =
        spec.dtype === 'F16'
          ? new Uint16Array(bytes.buffer, base + off, len / 2)
          : new Int32Array(bytes.buffer, base + off, len / 4);
      (w as unknown as Record<string, unknown>)[field] = a;
    }
    out.set(l.prefix, w);
  }
  return out;
}

/** A SpQR linear of a block file: its arrays bounds-checked in the file, then the format's own check. */
function readSpqrLinear(
  file: string,
  l: BlockHeader['linears'][number],
  bytes: Uint8Array,
  base: number,
): SpqrLinearWeights {
  const w = { ...l.meta, format: 'spqr' } as Record<string, unknown>;
  for (const [field, Type] of Object.entries(SPQR_ARRAYS)) {
    const r = l.arrays[field];
    if (!r) continue;
    const [off, len] = r;
    if (
      !(Number.isInteger(off) && Number.isInteger(len) && off >= 0 && len >= 0) ||
      base + off + len > bytes.byteLength
    )
      throw corrupt(file, `${l.prefix}.${field} lies past the end`);
    if (len % Type.BYTES_PER_ELEMENT !== 0 || (base + off) % Type.BYTES_PER_ELEMENT !== 0)
      throw corrupt(file, `${l.prefix}.${field} is not whole ${Type.name} elements`);
    w[field] = new Type(bytes.buffer as ArrayBuffer, base + off, len / Type.BYTES_PER_ELEMENT);
  }
  const s = w as unknown as SpqrLinearWeights;
  try {
    checkSpqrWeights(
      s,
      s.N,
      s.K,
      {
        bits: s.bits,
        statBits: s.statBits,
        beta1: s.beta1,
        beta2: s.beta2,
        actOrder: s.perm !== undefined,
        outlierThreshold: 1,
        outlierBudget: 0.5,
        damp: 0,
      },
      l.prefix,
    );
  } catch (err) {
    throw corrupt(file, (err as Error).message);
  }
  return s;
}

/** Writes the hidden states entering `block` as hiddenName(block). */
export async function writeHidden(
  dir: string,
  fingerprint: string,
  block: number,
  hidden: Float32Array,
): Promise<void> {
  // 1 GiB views are multiples of 8 bytes: no padding between them, the layout of one array
  await writeFileAtomic(
    join(dir, hiddenName(block)),
    frame({ fingerprint, block, length: hidden.length }, byteViews(hidden)),
  );
}

export async function readHidden(
  dir: string,
  fingerprint: string,
  block: number,
  length: number,
): Promise<Float32Array> {
  // Read in place, in 1 GiB pieces (the file may exceed what readFile or one Uint8Array holds).
  const file = join(dir, hiddenName(block));
  let handle: FileHandle;
  try {
    handle = await open(file, 'r');
  } catch (err) {
    throw new LowbitError(
      'E_IO',
      `resume state is missing ${file}: ${(err as Error).message}`,
      { file },
      { cause: err },
    );
  }
  try {
    const size = (await handle.stat()).size;
    const readAt = async (into: Uint8Array, position: number) => {
      let done = 0;
      while (done < into.byteLength) {
        const { bytesRead } = await handle.read(into, done, into.byteLength - done, position + done);
        if (bytesRead === 0) throw corrupt(file, 'shorter than its header says');
        done += bytesRead;
      }
    };
    if (size < 8) throw corrupt(file, 'too short');
    const lenBytes = new Uint8Array(8);
    await readAt(lenBytes, 0);
    const jsonLen = new DataView(lenBytes.buffer).getUint32(0, true);
    if (8 + jsonLen > size) throw corrupt(file, 'header past the end');
    const json = new Uint8Array(jsonLen);
    await readAt(json, 8);
    const header = blockHeader<{ fingerprint: string; block: number; length: number }>(file, json, fingerprint, block);
    const base = Math.ceil((jsonLen + 8) / 8) * 8;
    if (header.length !== length || size - base < length * 4) throw corrupt(file, `expected ${length} values`);
    const out = new Float32Array(length);
    let at = base;
    for (const view of byteViews(out)) {
      await readAt(view, at);
      at += view.byteLength;
    }
    return out;
  } finally {
    await handle.close().catch(() => undefined);
  }
}

/**
 * safetensors writing, streamed: every tensor's dtype and shape are declared up front (the header
 * comes first in the file), then the bytes are handed over one tensor at a time and go straight to
 * disk. A tensor handed over before its turn waits in memory until the ones before it arrive.
 *
 * Each file is written under a temporary name in the target directory and renamed when complete,
 * so a crash never leaves a half-written file under the final name. Sharded output writes
 * model-0000i-of-0000n.safetensors files and model.safetensors.index.json (renamed last).
 */
import type { FileHandle } from 'node:fs/promises';
import { basename, dirname, join } from 'node:path';
import { LowbitError, invalidArgument } from '../errors.js';
import {
  createFile,
  mkdirDurable,
  removeFile,
  renameDurable,
  syncClose,
  tempPath,
  writeAll,
  writeFileAtomic,
} from './durable.js';
import { Tensor, numel } from '../tensor.js';
import { INDEX_FILE, SINGLE_FILE } from './checkpoint.js';
import { SAFETENSORS_DTYPES, SAFETENSORS_DTYPE_OF, type SafetensorsDType } from './safetensors.js';

export interface TensorSpec {
  name: string;
  dtype: SafetensorsDType;
  shape: readonly number[];
}

function byteSize(spec: TensorSpec): number {
  return numel(spec.shape) * SAFETENSORS_DTYPES[spec.dtype];
}

export { tempPath, writeFileAtomic } from './durable.js';

/** The header bytes (length prefix + JSON padded with spaces to a multiple of 8) for specs in order. */
export function encodeHeader(specs: readonly TensorSpec[], metadata?: Record<string, string>): Uint8Array {
  const header: Record<string, unknown> = {};
  if (metadata && Object.keys(metadata).length > 0) header.__metadata__ = metadata;
  let offset = 0;
  for (const s of specs) {
    const size = byteSize(s);
    header[s.name] = { dtype: s.dtype, shape: [...s.shape], data_offsets: [offset, offset + size] };
    offset += size;
  }
  let json = Buffer.from(JSON.stringify(header), 'utf8');
  const padded = Math.ceil(json.length / 8) * 8;
  if (padded !== json.length) json = Buffer.concat([json, Buffer.alloc(padded - json.length, 0x20)]);
  const out = new Uint8Array(8 + json.length);
  new DataView(out.buffer).setBigUint64(0, BigInt(json.length), true);
  out.set(json, 8);
  return out;
}

/** One safetensors file being written. */
class FileWriter {
  private next = 0;
  private readonly waiting = new Map<number, Uint8Array>();
  private constructor(
    readonly path: string,
    readonly tmp: string,
    private handle: FileHandle | undefined,
    readonly specs: readonly TensorSpec[],
    private position: number,
  ) {}

  static async create(
    path: string,
    specs: readonly TensorSpec[],
    metadata?: Record<string, string>,
  ): Promise<FileWriter> {
    const tmp = tempPath(path);
    const handle = await createFile(tmp);
    const w = new FileWriter(path, tmp, handle, specs, 0);
    await w.append(encodeHeader(specs, metadata));
    return w;
  }

  private async append(bytes: Uint8Array): Promise<void> {
    await writeAll(this.handle!, this.tmp, bytes, this.position);
    this.position += bytes.byteLength;
  }

  /** Writes tensor `index` now if it is next, else keeps it until its turn. */
  async put(index: number, bytes: Uint8Array): Promise<void> {
    this.waiting.set(index, bytes);
    while (this.waiting.has(this.next)) {
      const b = this.waiting.get(this.next)!;
      this.waiting.delete(this.next);
      await this.append(b);
      this.next++;
    }
  }

  get complete(): boolean {
    return this.next === this.specs.length;
  }

  async close(): Promise<void> {
    const h = this.handle;
    this.handle = undefined;
    if (h) await syncClose(h, this.tmp);
  }

  async discard(): Promise<void> {
    const h = this.handle;
    this.handle = undefined;
    await h?.close().catch(() => undefined);
    await removeFile(this.tmp).catch(() => undefined);
  }
}

export interface CheckpointWriterOptions {
  /** start a new shard when the current one would pass this many bytes (default: one file) */
  maxShardBytes?: number;
  /** each file's __metadata__ (default {format: "pt"}, as transformers writes) */
  metadata?: Record<string, string>;
  /** file name for a single-file checkpoint (default model.safetensors) */
  fileName?: string;
}

/**
 * Writes a checkpoint (one safetensors file, or shards + index) from declared specs. Call `put`
 * for every tensor (any order; the file order is the specs' order), then `finish`.
 */
export class CheckpointWriter {
  private finished = false;
  private constructor(
    readonly dir: string,
    private readonly files: FileWriter[],
    /** tensor name → [file, index in file] */
    private readonly where: Map<string, [FileWriter, number, TensorSpec]>,
    private readonly sharded: boolean,
  ) {}

  static async create(
    dir: string,
    specs: readonly TensorSpec[],
    options: CheckpointWriterOptions = {},
  ): Promise<CheckpointWriter> {
    const seen = new Set<string>();
    for (const s of specs) {
      if (typeof s.name !== 'string' || s.name === '' || s.name === '__metadata__')
        invalidArgument('spec.name', 'a tensor name other than __metadata__', s.name);
      if (seen.has(s.name)) invalidArgument('spec.name', 'unique tensor names', s.name);
      seen.add(s.name);
      if (!Object.hasOwn(SAFETENSORS_DTYPES, s.dtype))
        invalidArgument(
          `dtype of ${s.name}`,
          `one of ${Object.keys(SAFETENSORS_DTYPES).join(', ')}`,
          s.dtype,
          'E_SAFETENSORS_DTYPE',
        );
      if (!s.shape.every((d) => Number.isSafeInteger(d) && d >= 0))
        invalidArgument(`shape of ${s.name}`, 'non-negative integer dimensions', s.shape, 'E_SHAPE');
    }
    const max = options.maxShardBytes ?? Infinity;
    if (!(max > 0)) invalidArgument('maxShardBytes', 'a positive number of bytes', options.maxShardBytes);
    // Greedy shards in declaration order, as transformers' save_pretrained does.
    const groups: TensorSpec[][] = [[]];
    let size = 0;
    for (const s of specs) {
      const b = byteSize(s);
      if (size > 0 && size + b > max) {
        groups.push([]);
        size = 0;
      }
      groups[groups.length - 1]!.push(s);
      size += b;
    }
    await mkdirDurable(dir);
    const sharded = groups.length > 1;
    const metadata = options.metadata ?? { format: 'pt' };
    const files: FileWriter[] = [];
    const where = new Map<string, [FileWriter, number, TensorSpec]>();
    try {
      for (let i = 0; i < groups.length; i++) {
        const n = String(groups.length).padStart(5, '0');
        const name = sharded
          ? `model-${String(i + 1).padStart(5, '0')}-of-${n}.safetensors`
          : (options.fileName ?? SINGLE_FILE);
        const f = await FileWriter.create(join(dir, name), groups[i]!, metadata);
        files.push(f);
        groups[i]!.forEach((s, j) => where.set(s.name, [f, j, s]));
      }
    } catch (err) {
      await Promise.all(files.map((f) => f.discard()));
      throw err;
    }
    return new CheckpointWriter(dir, files, where, sharded);
  }

  /** Hands over one tensor's data (a Tensor of the declared dtype, or its raw little-endian bytes). */
  async put(name: string, data: Tensor | Uint8Array): Promise<void> {
    if (this.finished)
      throw new LowbitError('E_CLOSED', `the checkpoint writer for ${this.dir} is finished`, { file: this.dir });
    const entry = this.where.get(name);
    if (!entry)
      throw new LowbitError('E_ARGUMENT', `tensor '${name}' was not declared to the writer`, {
        file: this.dir,
        tensor: name,
      });
    const [file, index, spec] = entry;
    let bytes: Uint8Array;
    if (data instanceof Tensor) {
      if (SAFETENSORS_DTYPE_OF[data.dtype] !== spec.dtype)
        throw new LowbitError('E_DTYPE', `tensor '${name}' was declared ${spec.dtype} but is ${data.dtype}`, {
          tensor: name,
        });
      if (data.shape.length !== spec.shape.length || data.shape.some((d, i) => d !== spec.shape[i])) {
        throw new LowbitError(
          'E_SHAPE',
          `tensor '${name}' was declared [${spec.shape.join(', ')}] but has shape [${data.shape.join(', ')}]`,
          { tensor: name },
        );
      }
      bytes = data.bytes();
    } else bytes = data;
    if (bytes.byteLength !== byteSize(spec)) {
      throw new LowbitError(
        'E_SHAPE',
        `tensor '${name}' (${spec.dtype} [${spec.shape.join(', ')}]) needs ${byteSize(spec)} bytes, got ${bytes.byteLength}`,
        { tensor: name },
      );
    }
    this.where.delete(name);
    await file.put(index, bytes);
  }

  /** Closes every file, renames them into place (the index last) and returns their paths. */
  async finish(): Promise<string[]> {
    if (this.finished)
      throw new LowbitError('E_CLOSED', `the checkpoint writer for ${this.dir} is finished`, { file: this.dir });
    if (this.where.size > 0) {
      const missing = [...this.where.keys()];
      throw new LowbitError(
        'E_MISSING_TENSOR',
        `${missing.length} declared tensors were never written (first: '${missing[0]}')`,
        { file: this.dir, tensor: missing[0] },
      );
    }
    this.finished = true;
    try {
      for (const f of this.files) await f.close();
      for (const f of this.files) await renameDurable(f.tmp, f.path);
    } catch (err) {
      await this.abort();
      if (err instanceof LowbitError) throw err;
      throw new LowbitError(
        'E_IO',
        `cannot finish the checkpoint in ${this.dir}: ${(err as Error).message}`,
        { file: this.dir },
        { cause: err },
      );
    }
    const paths = this.files.map((f) => f.path);
    if (this.sharded) {
      const weightMap: Record<string, string> = {};
      let total = 0;
      for (const f of this.files) {
        for (const s of f.specs) {
          weightMap[s.name] = basename(f.path);
          total += byteSize(s);
        }
      }
      const index = join(this.dir, INDEX_FILE);
      await writeFileAtomic(
        index,
        JSON.stringify({ metadata: { total_size: total }, weight_map: weightMap }, null, 2) + '\n',
      );
      paths.push(index);
    }
    return paths;
  }

  /** Removes the temporary files (nothing under a final name is touched). */
  async abort(): Promise<void> {
    this.finished = true;
    await Promise.all(this.files.map((f) => f.discard()));
  }
}

/** Writes named tensors to one safetensors file (through a temporary name). */
export async function writeSafetensors(
  path: string,
  tensors: Iterable<[string, Tensor]>,
  metadata?: Record<string, string>,
): Promise<void> {
  const entries = [...tensors];
  const specs = entries.map(([name, t]) => ({ name, dtype: SAFETENSORS_DTYPE_OF[t.dtype], shape: t.shape }));
  const writer = await CheckpointWriter.create(dirname(path), specs, { metadata, fileName: basename(path) });
  try {
    for (const [name, t] of entries) await writer.put(name, t);
    await writer.finish();
  } catch (err) {
    await writer.abort();
    throw err;
  }
}

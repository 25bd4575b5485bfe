/**
 * A checkpoint: the safetensors files of one model, single-file (model.safetensors) or sharded
 * (model.safetensors.index.json naming a shard for each tensor), seen as one lazy tensor store.
 */
import { existsSync, statSync } from 'node:fs';
import { MAX_INDEX_BYTES, checkPath, readBounded } from './read-bounded.js';
import { basename, dirname, join, resolve } from 'node:path';
import { LowbitError } from '../errors.js';
import type { Tensor } from '../tensor.js';
import { SafetensorsFile, type TensorInfo } from './safetensors.js';

export const INDEX_FILE = 'model.safetensors.index.json';
export const SINGLE_FILE = 'model.safetensors';

export interface TensorLocation extends TensorInfo {
  /** the shard file that holds it */
  file: string;
}

export class Checkpoint {
  private constructor(
    readonly dir: string,
    /** shard path → open file */
    private readonly shards: Map<string, SafetensorsFile>,
    private readonly where: Map<string, SafetensorsFile>,
    /** the index's "metadata" (sharded), or the single file's __metadata__ */
    readonly metadata: Record<string, unknown>,
  ) {}

  /**
   * Opens `path`: a directory holding model.safetensors.index.json or model.safetensors, an index
   * file, or one .safetensors file. All shards are opened and their headers validated up front.
   */
  static async open(path: string): Promise<Checkpoint> {
    checkPath(path);
    const target = resolve(path);
    let st;
    try {
      st = statSync(target);
    } catch (err) {
      throw new LowbitError(
        'E_IO',
        `cannot open ${target}: ${(err as Error).message}`,
        { file: target },
        { cause: err },
      );
    }
    if (st.isDirectory()) {
      if (existsSync(join(target, INDEX_FILE))) return Checkpoint.openIndex(join(target, INDEX_FILE));
      if (existsSync(join(target, SINGLE_FILE))) return Checkpoint.openSingle(join(target, SINGLE_FILE));
      throw new LowbitError('E_IO', `${target} holds neither ${INDEX_FILE} nor ${SINGLE_FILE}`, { file: target });
    }
    if (basename(target).endsWith('.index.json')) return Checkpoint.openIndex(target);
    return Checkpoint.openSingle(target);
  }

  private static async openSingle(file: string): Promise<Checkpoint> {
    const st = await SafetensorsFile.open(file);
    const where = new Map(st.names.map((n) => [n, st] as const));
    return new Checkpoint(dirname(file), new Map([[file, st]]), where, st.metadata);
  }

  private static async openIndex(indexFile: string): Promise<Checkpoint> {
    const index = await readIndex(indexFile);
    const dir = dirname(indexFile);
    const shards = new Map<string, SafetensorsFile>();
    const where = new Map<string, SafetensorsFile>();
    try {
      for (const shardName of new Set(Object.values(index.weight_map))) {
        const shardPath = join(dir, shardName);
        if (!existsSync(shardPath)) {
          throw new LowbitError('E_MISSING_SHARD', `${indexFile} names shard ${shardName}, which is not in ${dir}`, {
            file: shardPath,
          });
        }
        shards.set(shardName, await SafetensorsFile.open(shardPath));
      }
      for (const [tensor, shardName] of Object.entries(index.weight_map)) {
        const shard = shards.get(shardName)!;
        if (!shard.has(tensor)) {
          throw new LowbitError(
            'E_MISSING_TENSOR',
            `${indexFile} puts '${tensor}' in ${shardName}, which does not hold it`,
            { file: shard.path, tensor },
          );
        }
        where.set(tensor, shard);
      }
    } catch (err) {
      await Promise.all([...shards.values()].map((s) => s.close()));
      throw err;
    }
    return new Checkpoint(dir, new Map([...shards.values()].map((s) => [s.path, s])), where, index.metadata ?? {});
  }

  /** every tensor name */
  get names(): string[] {
    return [...this.where.keys()];
  }
  /** the shard files */
  get files(): string[] {
    return [...this.shards.keys()];
  }
  has(name: string): boolean {
    return this.where.has(name);
  }

  private fileOf(name: string): SafetensorsFile {
    const f = this.where.get(name);
    if (!f)
      throw new LowbitError('E_MISSING_TENSOR', `no tensor named '${name}' in the checkpoint at ${this.dir}`, {
        file: this.dir,
        tensor: name,
      });
    return f;
  }

  info(name: string): TensorLocation {
    const f = this.fileOf(name);
    return { ...f.info(name), file: f.path };
  }

  readTensor(name: string): Promise<Tensor> {
    return this.fileOf(name).readTensor(name);
  }

  readBytes(name: string): Promise<Uint8Array> {
    return this.fileOf(name).readBytes(name);
  }

  /** total bytes of tensor data */
  get dataBytes(): number {
    let total = 0;
    for (const s of this.shards.values()) total += s.header.dataBytes;
    return total;
  }

  async close(): Promise<void> {
    await Promise.all([...this.shards.values()].map((s) => s.close()));
    this.shards.clear();
    this.where.clear();
  }
}

interface IndexJson {
  metadata?: Record<string, unknown>;
  weight_map: Record<string, string>;
}

async function readIndex(file: string): Promise<IndexJson> {
  const text = (await readBounded(file, MAX_INDEX_BYTES, 'E_SAFETENSORS_HEADER')).toString('utf8');
  let parsed: unknown;
  try {
    parsed = JSON.parse(text);
  } catch (err) {
    throw new LowbitError('E_SAFETENSORS_HEADER', `${file} is not valid JSON (${(err as Error).message})`, { file });
  }
  const map = (parsed as { weight_map?: unknown } | null)?.weight_map;
  if (typeof map !== 'object' || map === null || Array.isArray(map)) {
    throw new LowbitError('E_SAFETENSORS_HEADER', `${file} has no weight_map object`, { file });
  }
  for (const [tensor, shard] of Object.entries(map)) {
    // Shards are plain file names next to the index: refuse paths that climb out of the directory.
    if (
      typeof shard !== 'string' ||
      shard === '' ||
      shard.includes('/') ||
      shard.includes('\\') ||
      shard === '..' ||
      shard === '.'
    ) {
      throw new LowbitError(
        'E_SAFETENSORS_HEADER',
        `${file}: weight_map entry for '${tensor}' is not a shard file name`,
        { file, tensor },
      );
    }
  }
  const metadata = (parsed as { metadata?: unknown }).metadata;
  return {
    weight_map: map as Record<string, string>,
    metadata: typeof metadata === 'object' && metadata !== null ? (metadata as Record<string, unknown>) : {},
  };
}

/**
 * safetensors reading: an 8-byte little-endian header length N, N bytes of JSON
 * ({name: {dtype, shape, data_offsets: [begin, end]}, __metadata__?: {string: string}}), then the
 * data section. Offsets are relative to the start of the data section.
 *
 * The header is validated completely when a file is opened (bounded length, JSON shape, known
 * dtypes, sizes equal to dtype × shape, offsets inside the data section with no overlaps and no
 * gaps, the data section exactly covered), so that reading a tensor later can trust its range.
 * Tensors are read lazily, one byte range at a time, through positional reads on a file handle:
 * a model larger than memory can be walked block by block.
 */
import { open, type FileHandle } from 'node:fs/promises';
import { LowbitError, type LowbitErrorCode } from '../errors.js';
import { Tensor, numel, type DType } from '../tensor.js';
import { checkPath } from './read-bounded.js';

/** The dtypes of the safetensors format that lowbit reads. */
export const SAFETENSORS_DTYPES = {
  F64: 8,
  F32: 4,
  F16: 2,
  BF16: 2,
  I64: 8,
  I32: 4,
  I16: 2,
  I8: 1,
  U8: 1,
  BOOL: 1,
} as const;

export type SafetensorsDType = keyof typeof SAFETENSORS_DTYPES;

/** The safetensors dtype each Tensor dtype is stored as. */
export const SAFETENSORS_DTYPE_OF: Record<DType, SafetensorsDType> = {
  f32: 'F32',
  f16: 'F16',
  bf16: 'BF16',
  i32: 'I32',
  u8: 'U8',
};

/** Upper bound on the JSON header (the reference implementation uses 100 MB as well). */
export const MAX_HEADER_BYTES = 100_000_000;

export interface TensorInfo {
  name: string;
  dtype: SafetensorsDType;
  shape: number[];
  /** byte range inside the data section */
  begin: number;
  end: number;
}

export interface SafetensorsHeader {
  /** the free-form string map under __metadata__ (empty when absent) */
  metadata: Record<string, string>;
  /** tensors in header order */
  tensors: Map<string, TensorInfo>;
  /** absolute file offset of the data section (8 + header length) */
  dataOffset: number;
  /** bytes in the data section */
  dataBytes: number;
}

function headerError(code: LowbitErrorCode, file: string, message: string, tensor?: string): LowbitError {
  const details: Record<string, unknown> = { file };
  if (tensor !== undefined) details.tensor = tensor;
  return new LowbitError(code, `${file}: ${message}`, details);
}

function isPlainObject(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

/** Reads the header length from the first 8 bytes and checks it against the file size. */
export function parseHeaderLength(prefix: Uint8Array, fileSize: number, file = '<buffer>'): number {
  if (fileSize < 8 || prefix.byteLength < 8) {
    throw headerError(
      'E_SAFETENSORS_HEADER',
      file,
      `file of ${fileSize} bytes is too short for a safetensors header length (8 bytes)`,
    );
  }
  const n = new DataView(prefix.buffer, prefix.byteOffset, 8).getBigUint64(0, true);
  if (n < 2n) throw headerError('E_SAFETENSORS_HEADER', file, `header length ${n} is too small for a JSON object`);
  if (n > BigInt(MAX_HEADER_BYTES)) {
    throw headerError('E_SAFETENSORS_HEADER', file, `header length ${n} exceeds the ${MAX_HEADER_BYTES}-byte limit`);
  }
  if (8n + n > BigInt(fileSize)) {
    throw headerError(
      'E_SAFETENSORS_HEADER',
      file,
      `header length ${n} runs past the end of the file (${fileSize} bytes)`,
    );
  }
  return Number(n);
}

/**
 * Parses and validates a header's JSON bytes. `fileSize` is the whole file's size, so the data
 * section is fileSize - 8 - json.byteLength bytes.
 */
export function parseHeaderJson(json: Uint8Array, fileSize: number, file = '<buffer>'): SafetensorsHeader {
  const dataOffset = 8 + json.byteLength;
  const dataBytes = fileSize - dataOffset;
  if (dataBytes < 0) throw headerError('E_SAFETENSORS_HEADER', file, `header runs past the end of the file`);
  let text: string;
  try {
    text = new TextDecoder('utf-8', { fatal: true }).decode(json);
  } catch {
    throw headerError('E_SAFETENSORS_HEADER', file, 'header is not valid UTF-8');
  }
  if (!text.startsWith('{')) throw headerError('E_SAFETENSORS_HEADER', file, 'header does not start with "{"');
  let parsed: unknown;
  try {
    parsed = JSON.parse(text);
  } catch (err) {
    throw headerError('E_SAFETENSORS_HEADER', file, `header is not valid JSON (${(err as Error).message})`);
  }
  if (!isPlainObject(parsed)) throw headerError('E_SAFETENSORS_HEADER', file, 'header is not a JSON object');

  const metadata: Record<string, string> = {};
  const tensors = new Map<string, TensorInfo>();
  for (const [name, entry] of Object.entries(parsed)) {
    if (name === '__metadata__') {
      if (!isPlainObject(entry))
        throw headerError('E_SAFETENSORS_HEADER', file, '__metadata__ is not an object of strings');
      for (const [k, v] of Object.entries(entry)) {
        if (typeof v !== 'string') throw headerError('E_SAFETENSORS_HEADER', file, `__metadata__.${k} is not a string`);
        metadata[k] = v;
      }
      continue;
    }
    tensors.set(name, parseEntry(name, entry, file));
  }
  checkOffsets([...tensors.values()], dataBytes, file);
  return { metadata, tensors, dataOffset, dataBytes };
}

function parseEntry(name: string, entry: unknown, file: string): TensorInfo {
  if (!isPlainObject(entry))
    throw headerError('E_SAFETENSORS_HEADER', file, `entry for tensor '${name}' is not an object`, name);
  const { dtype, shape, data_offsets: offsets } = entry;
  if (typeof dtype !== 'string')
    throw headerError('E_SAFETENSORS_HEADER', file, `tensor '${name}' has no string dtype`, name);
  if (!Object.hasOwn(SAFETENSORS_DTYPES, dtype)) {
    throw headerError(
      'E_SAFETENSORS_DTYPE',
      file,
      `tensor '${name}' has dtype ${JSON.stringify(dtype.slice(0, 40))}, expected one of ${Object.keys(SAFETENSORS_DTYPES).join(', ')}`,
      name,
    );
  }
  if (!Array.isArray(shape) || !shape.every((d) => Number.isSafeInteger(d) && d >= 0)) {
    throw headerError(
      'E_SAFETENSORS_HEADER',
      file,
      `tensor '${name}' has a shape that is not a list of non-negative integers`,
      name,
    );
  }
  if (!Array.isArray(offsets) || offsets.length !== 2 || !offsets.every((o) => Number.isSafeInteger(o) && o >= 0)) {
    throw headerError(
      'E_SAFETENSORS_HEADER',
      file,
      `tensor '${name}' has data_offsets that are not two non-negative integers`,
      name,
    );
  }
  const [begin, end] = offsets as [number, number];
  if (end < begin)
    throw headerError(
      'E_SAFETENSORS_OFFSETS',
      file,
      `tensor '${name}' ends (${end}) before it begins (${begin})`,
      name,
    );
  const elementBytes = SAFETENSORS_DTYPES[dtype as SafetensorsDType];
  // numel in floating point first: a hostile shape must not wrap around.
  const elements = (shape as number[]).reduce((a, b) => a * b, 1);
  if (!Number.isSafeInteger(elements * elementBytes) || elements * elementBytes !== end - begin) {
    throw headerError(
      'E_SAFETENSORS_OFFSETS',
      file,
      `tensor '${name}' of dtype ${dtype} and shape [${(shape as number[]).join(', ')}] needs ${elements * elementBytes} bytes but its data_offsets span ${end - begin}`,
      name,
    );
  }
  return { name, dtype: dtype as SafetensorsDType, shape: [...(shape as number[])], begin, end };
}

/** Offsets, sorted, must tile [0, dataBytes) exactly: no overlaps, no gaps, nothing past the end. */
function checkOffsets(infos: TensorInfo[], dataBytes: number, file: string): void {
  const sorted = [...infos].sort((a, b) => a.begin - b.begin || a.end - b.end);
  let cursor = 0;
  for (const t of sorted) {
    if (t.begin < cursor)
      throw headerError(
        'E_SAFETENSORS_OFFSETS',
        file,
        `tensor '${t.name}' [${t.begin}, ${t.end}) overlaps the tensor before it (which ends at ${cursor})`,
        t.name,
      );
    if (t.begin > cursor)
      throw headerError(
        'E_SAFETENSORS_OFFSETS',
        file,
        `gap of ${t.begin - cursor} bytes before tensor '${t.name}' at ${cursor}`,
        t.name,
      );
    if (t.end > dataBytes)
      throw headerError(
        'E_SAFETENSORS_OFFSETS',
        file,
        `tensor '${t.name}' ends at ${t.end}, past the data section (${dataBytes} bytes); the file may be truncated`,
        t.name,
      );
    cursor = t.end;
  }
  if (cursor !== dataBytes) {
    throw headerError(
      'E_SAFETENSORS_OFFSETS',
      file,
      `the tensors cover ${cursor} of the data section's ${dataBytes} bytes (trailing bytes or a truncated header)`,
    );
  }
}

/** Where a safetensors file's bytes come from: a file handle, or memory (tests, fuzzing). */
export interface ByteSource {
  readonly name: string;
  readonly size: number;
  /** exactly `length` bytes at `position` (throws E_IO when fewer exist) */
  read(position: number, length: number): Promise<Uint8Array>;
  close(): Promise<void>;
}

/** Largest single read (fs reads are limited to 2 GiB - 1). */
const READ_CHUNK = 1 << 30;

class FileSource implements ByteSource {
  constructor(
    readonly name: string,
    readonly size: number,
    private handle: FileHandle | undefined,
  ) {}

  async read(position: number, length: number): Promise<Uint8Array> {
    if (!this.handle) throw new LowbitError('E_CLOSED', `${this.name}: the file was closed`, { file: this.name });
    // A fresh, zero-offset ArrayBuffer: every typed-array view of it is aligned.
    const out = new Uint8Array(length);
    let done = 0;
    while (done < length) {
      const want = Math.min(READ_CHUNK, length - done);
      let bytesRead: number;
      try {
        ({ bytesRead } = await this.handle.read(out, done, want, position + done));
      } catch (err) {
        throw new LowbitError(
          'E_IO',
          `${this.name}: read of ${want} bytes at ${position + done} failed: ${(err as Error).message}`,
          { file: this.name },
          { cause: err },
        );
      }
      if (bytesRead === 0) {
        throw new LowbitError(
          'E_IO',
          `${this.name}: unexpected end of file at ${position + done} (wanted ${length} bytes at ${position}); was it truncated?`,
          { file: this.name },
        );
      }
      done += bytesRead;
    }
    return out;
  }

  async close(): Promise<void> {
    const h = this.handle;
    this.handle = undefined;
    await h?.close();
  }
}

export class BufferSource implements ByteSource {
  constructor(
    private readonly bytes: Uint8Array,
    readonly name = '<buffer>',
  ) {}
  get size(): number {
    return this.bytes.byteLength;
  }
  async read(position: number, length: number): Promise<Uint8Array> {
    if (position < 0 || length < 0 || position + length > this.bytes.byteLength) {
      throw new LowbitError(
        'E_IO',
        `${this.name}: read of ${length} bytes at ${position} is past the end (${this.bytes.byteLength} bytes)`,
        { file: this.name },
      );
    }
    return this.bytes.slice(position, position + length);
  }
  async close(): Promise<void> {}
}

/** Opens a file for positional reads, mapping fs errors to E_IO. */
export async function openFileSource(path: string): Promise<ByteSource> {
  let handle: FileHandle;
  try {
    handle = await open(path, 'r');
  } catch (err) {
    throw new LowbitError('E_IO', `cannot open ${path}: ${(err as Error).message}`, { file: path }, { cause: err });
  }
  try {
    const stat = await handle.stat();
    if (!stat.isFile()) throw new LowbitError('E_IO', `${path} is not a regular file`, { file: path });
    return new FileSource(path, stat.size, handle);
  } catch (err) {
    await handle.close();
    if (err instanceof LowbitError) throw err;
    throw new LowbitError('E_IO', `cannot stat ${path}: ${(err as Error).message}`, { file: path }, { cause: err });
  }
}

/** Converts the dtypes a Tensor cannot hold as they are (F64, I64, I16, I8, BOOL). */
function widenToTensor(info: TensorInfo, bytes: Uint8Array, file: string): Tensor {
  const n = numel(info.shape);
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  switch (info.dtype) {
    case 'F64': {
      const out = new Float32Array(n);
      for (let i = 0; i < n; i++) out[i] = view.getFloat64(i * 8, true);
      return new Tensor('f32', info.shape, out);
    }
    case 'I64': {
      const out = new Int32Array(n);
      for (let i = 0; i < n; i++) {
        const v = view.getBigInt64(i * 8, true);
        if (v < -2147483648n || v > 2147483647n) {
          throw new LowbitError(
            'E_SAFETENSORS_DTYPE',
            `${file}: I64 tensor '${info.name}' holds ${v}, outside the int32 range lowbit reads it into`,
            { file, tensor: info.name },
          );
        }
        out[i] = Number(v);
      }
      return new Tensor('i32', info.shape, out);
    }
    case 'I16': {
      const out = new Int32Array(n);
      for (let i = 0; i < n; i++) out[i] = view.getInt16(i * 2, true);
      return new Tensor('i32', info.shape, out);
    }
    case 'I8': {
      const out = new Int32Array(n);
      for (let i = 0; i < n; i++) out[i] = view.getInt8(i);
      return new Tensor('i32', info.shape, out);
    }
    case 'BOOL':
      return Tensor.fromBytes('u8', info.shape, bytes);
    default:
      throw new LowbitError('E_INTERNAL', `no conversion for ${info.dtype}`);
  }
}

const DIRECT: Partial<Record<SafetensorsDType, DType>> = { F32: 'f32', F16: 'f16', BF16: 'bf16', I32: 'i32', U8: 'u8' };

/** The Tensor dtype a stored dtype is read as (F64 → f32, I64/I16/I8 → i32, BOOL → u8). */
export function tensorDTypeOf(dtype: SafetensorsDType): DType {
  return DIRECT[dtype] ?? (dtype === 'F64' ? 'f32' : dtype === 'BOOL' ? 'u8' : 'i32');
}

/**
 * One safetensors file, open for lazy reads. Tensors keep their stored dtype where Tensor has it
 * (F32, F16, BF16, I32, U8); F64 is read as f32, I64/I16/I8 as i32 (I64 values must fit), BOOL as u8.
 */
export class SafetensorsFile {
  private constructor(
    private readonly source: ByteSource,
    readonly header: SafetensorsHeader,
  ) {}

  static async open(path: string): Promise<SafetensorsFile> {
    checkPath(path);
    return SafetensorsFile.fromSource(await openFileSource(path));
  }

  /** Validates the header of any byte source; closes the source if the header is bad. */
  static async fromSource(source: ByteSource): Promise<SafetensorsFile> {
    try {
      const prefix = source.size >= 8 ? await source.read(0, 8) : new Uint8Array(0);
      const n = parseHeaderLength(prefix, source.size, source.name);
      const json = await source.read(8, n);
      return new SafetensorsFile(source, parseHeaderJson(json, source.size, source.name));
    } catch (err) {
      await source.close();
      throw err;
    }
  }

  get path(): string {
    return this.source.name;
  }
  get metadata(): Record<string, string> {
    return this.header.metadata;
  }
  /** tensor names in header order */
  get names(): string[] {
    return [...this.header.tensors.keys()];
  }
  has(name: string): boolean {
    return this.header.tensors.has(name);
  }

  info(name: string): TensorInfo {
    const info = this.header.tensors.get(name);
    if (!info)
      throw new LowbitError('E_MISSING_TENSOR', `${this.path}: no tensor named '${name}'`, {
        file: this.path,
        tensor: name,
      });
    return info;
  }

  /** The tensor's raw little-endian bytes, in a fresh aligned buffer. */
  async readBytes(name: string): Promise<Uint8Array> {
    const info = this.info(name);
    return this.source.read(this.header.dataOffset + info.begin, info.end - info.begin);
  }

  async readTensor(name: string): Promise<Tensor> {
    const info = this.info(name);
    const bytes = await this.readBytes(name);
    const direct = DIRECT[info.dtype];
    return direct ? Tensor.fromBytes(direct, info.shape, bytes) : widenToTensor(info, bytes, this.path);
  }

  async close(): Promise<void> {
    await this.source.close();
  }
}

/** Reading small metadata files (JSON configs, indexes, tokenizers) with a size bound. */
import { readFile, stat } from 'node:fs/promises';
import { LowbitError, invalidArgument, type LowbitErrorCode } from '../errors.js';

/**
 * The file's bytes; E_IO when it cannot be read, `code` when it is larger than `maxBytes` (a
 * config or index that large is malformed, and reading it whole would exhaust memory).
 */
export async function readBounded(path: string, maxBytes: number, code: LowbitErrorCode): Promise<Buffer> {
  let size: number;
  try {
    size = (await stat(path)).size;
  } catch (err) {
    throw new LowbitError('E_IO', `cannot read ${path}: ${(err as Error).message}`, { file: path }, { cause: err });
  }
  if (size > maxBytes)
    throw new LowbitError(code, `${path} is ${size} bytes, more than the ${maxBytes} this kind of file may have`, {
      file: path,
    });
  try {
    return await readFile(path);
  } catch (err) {
    throw new LowbitError('E_IO', `cannot read ${path}: ${(err as Error).message}`, { file: path }, { cause: err });
  }
}

export const MAX_CONFIG_BYTES = 16 << 20;
export const MAX_INDEX_BYTES = 100 << 20;
export const MAX_TOKENIZER_BYTES = 256 << 20;

/** E_ARGUMENT unless `path` is a non-empty string (path functions throw TypeErrors otherwise). */
export function checkPath(path: unknown, name = 'path', what = 'a file or directory path'): asserts path is string {
  if (typeof path !== 'string' || path === '') invalidArgument(name, what, path);
}

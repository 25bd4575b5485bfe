/**
 * Tensors: a dtype, a shape and a typed-array view over an ArrayBuffer (zero-copy: a view into a
 * file's bytes or a native result stays where it is). Conversions between the float types go through
 * the addon's fast converters.
 */
import { LowbitError, invalidArgument } from './errors.js';
import { native } from './native.js';

export type DType = 'f32' | 'f16' | 'bf16' | 'i32' | 'u8';

/** The typed array that holds each dtype (f16 and bf16 as their 16-bit patterns). */
export interface DTypeArrays {
  f32: Float32Array;
  f16: Uint16Array;
  bf16: Uint16Array;
  i32: Int32Array;
  u8: Uint8Array;
}

export const DTYPE_BYTES: Record<DType, number> = { f32: 4, f16: 2, bf16: 2, i32: 4, u8: 1 };

export function numel(shape: readonly number[]): number {
  return shape.reduce((a, b) => a * b, 1);
}

export class Tensor<D extends DType = DType> {
  readonly dtype: D;
  readonly shape: readonly number[];
  readonly data: DTypeArrays[D];

  constructor(dtype: D, shape: readonly number[], data: DTypeArrays[D]) {
    for (const d of shape)
      if (!Number.isInteger(d) || d < 0) invalidArgument('shape', 'non-negative integer dimensions', shape, 'E_SHAPE');
    if (data.length !== numel(shape)) {
      throw new LowbitError(
        'E_SHAPE',
        `a ${dtype} tensor of shape [${shape.join(', ')}] needs ${numel(shape)} elements, got ${data.length}`,
      );
    }
    this.dtype = dtype;
    this.shape = Object.freeze([...shape]);
    this.data = data;
  }

  get size(): number {
    return this.data.length;
  }
  get byteLength(): number {
    return this.data.byteLength;
  }

  /** A zero-copy view of `bytes` as a tensor; the bytes must be aligned to the element size. */
  static fromBytes<D extends DType>(dtype: D, shape: readonly number[], bytes: Uint8Array): Tensor<D> {
    const n = numel(shape);
    const size = DTYPE_BYTES[dtype];
    if (bytes.byteLength !== n * size) {
      throw new LowbitError(
        'E_SHAPE',
        `${bytes.byteLength} bytes cannot hold a ${dtype} tensor of shape [${shape.join(', ')}]`,
      );
    }
    // Typed arrays need aligned offsets; copy once when the source is not aligned.
    const src = bytes.byteOffset % size === 0 ? bytes : bytes.slice();
    const views = {
      f32: () => new Float32Array(src.buffer, src.byteOffset, n),
      f16: () => new Uint16Array(src.buffer, src.byteOffset, n),
      bf16: () => new Uint16Array(src.buffer, src.byteOffset, n),
      i32: () => new Int32Array(src.buffer, src.byteOffset, n),
      u8: () => new Uint8Array(src.buffer, src.byteOffset, n),
    } as const;
    return new Tensor(dtype, shape, views[dtype]() as DTypeArrays[D]);
  }

  bytes(): Uint8Array {
    return new Uint8Array(this.data.buffer, this.data.byteOffset, this.data.byteLength);
  }

  /** This tensor as f32 (a copy, except for f32 tensors, which are returned as they are). */
  toFloat32(): Tensor<'f32'> {
    if (this.dtype === 'f32') return this as unknown as Tensor<'f32'>;
    return this.to('f32');
  }

  /** Converts between f32, f16 and bf16 (round to nearest even). */
  to<T extends 'f32' | 'f16' | 'bf16'>(dtype: T): Tensor<T> {
    if (this.dtype !== 'f32' && this.dtype !== 'f16' && this.dtype !== 'bf16') {
      throw new LowbitError('E_DTYPE', `cannot convert a ${this.dtype} tensor to ${dtype}`);
    }
    const out = (dtype === 'f32' ? new Float32Array(this.size) : new Uint16Array(this.size)) as DTypeArrays[T];
    native().convert(this.bytes(), this.dtype, new Uint8Array(out.buffer), dtype, this.size);
    return new Tensor(dtype, this.shape, out);
  }
}

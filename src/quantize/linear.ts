/**
 * Prepared linears: one weight (dense or packed, see src/weights) turned once into the operator a
 * device runs, which may repack it into the device's own layout; every product after that reuses
 * it. Benchmarks and callers that multiply by the same weight many times use this instead of
 * packedMatmul (which takes the checkpoint layout on every call).
 */
import { resolveDevice, type DeviceSpec } from '../devices.js';
import { LowbitError, invalidArgument } from '../errors.js';
import { native, toLowbitError, type NativePreparedLinear } from '../native.js';
import { WEIGHT_FORMATS } from '../weights/formats.js';
import type { LinearWeights } from '../weights/types.js';
import { validatePackedWeights } from './packed.js';

export interface PrepareLinearOptions {
  /** 'cpu' (default), 'cuda', 'cuda:<index>' or 'auto' */
  device?: DeviceSpec;
  /** a kernel of the device's table by name (native().linearKernels()); default: the table's choice */
  kernel?: string;
}

function isPositiveInteger(v: unknown): v is number {
  return typeof v === 'number' && Number.isInteger(v) && v > 0;
}

function checkWeights(w: unknown): asserts w is LinearWeights {
  if (w === null || typeof w !== 'object') invalidArgument('weights', 'an object {format, ...}', w);
  const o = w as Record<string, unknown>;
  if (!(WEIGHT_FORMATS as readonly unknown[]).includes(o.format)) invalidArgument('weights.format', `one of ${WEIGHT_FORMATS.map((f) => `'${f}'`).join(', ')}`, o.format);
  if (o.format === 'gptq') {
    validatePackedWeights(o, 'weights');
  } else {
    if (!isPositiveInteger(o.N)) invalidArgument('weights.N', 'positive integer', o.N, 'E_SHAPE');
    if (!isPositiveInteger(o.K)) invalidArgument('weights.K', 'positive integer', o.K, 'E_SHAPE');
    const want = o.dtype === 'f32' ? Float32Array : o.dtype === 'f16' || o.dtype === 'bf16' ? Uint16Array : undefined;
    if (!want) invalidArgument('weights.dtype', "'f32', 'f16' or 'bf16'", o.dtype, 'E_DTYPE');
    if (!(o.data instanceof want)) invalidArgument('weights.data', want.name, o.data, 'E_DTYPE');
    if (o.data.length !== o.N * o.K) {
      throw new LowbitError('E_SHAPE', `Expected weights.data to hold N × K = ${o.N * o.K} values but it holds ${o.data.length}`, { option: 'weights.data' });
    }
  }
  const N = o.N as number;
  if (o.bias !== undefined && !(o.bias instanceof Float32Array && o.bias.length === N)) invalidArgument('weights.bias', `Float32Array of N = ${N} values`, o.bias, 'E_SHAPE');
}

/** A weight prepared for products on one device. close() frees it (the GC does too, later). */
export class PreparedLinear {
  /** input features */
  readonly K: number;
  /** output features */
  readonly N: number;
  /** the device kernel that runs it (the table entry's name) */
  readonly kernel: string;

  private constructor(private readonly handle: NativePreparedLinear) {
    this.K = handle.K;
    this.N = handle.N;
    this.kernel = handle.kernel;
  }

  static create(weights: LinearWeights, options: PrepareLinearOptions = {}): PreparedLinear {
    checkWeights(weights);
    if (options === null || typeof options !== 'object') invalidArgument('options', 'object', options);
    if (options.kernel !== undefined && typeof options.kernel !== 'string') invalidArgument('options.kernel', 'string', options.kernel);
    const device = resolveDevice(options.device ?? 'cpu');
    const opts: { device: number; kernel?: string } = { device };
    if (options.kernel !== undefined) opts.kernel = options.kernel;
    return new PreparedLinear(native().linearCreate(weights, opts));
  }

  /** memory held for the weight (the device's for CUDA); 0 once closed */
  get bytes(): number {
    return this.handle.bytes;
  }

  private check(x: unknown, M: unknown, out: unknown): void {
    if (!isPositiveInteger(M)) invalidArgument('M', 'positive integer (rows of x)', M, 'E_SHAPE');
    if (!(x instanceof Float32Array)) invalidArgument('x', 'Float32Array', x, 'E_DTYPE');
    if (x.length !== M * this.K) throw new LowbitError('E_SHAPE', `Expected x to hold M × K = ${M * this.K} values but it holds ${x.length}`, { option: 'x' });
    if (out !== undefined) {
      if (!(out instanceof Float32Array)) invalidArgument('out', 'Float32Array', out, 'E_DTYPE');
      if (out.length !== M * this.N) throw new LowbitError('E_SHAPE', `Expected out to hold M × N = ${M * this.N} values but it holds ${out.length}`, { option: 'out' });
    }
  }

  /** Y [M, N] = x [M, K] · Wᵀ + bias, row-major f32, off the event loop. */
  async matmul(x: Float32Array, M: number, out?: Float32Array): Promise<Float32Array> {
    this.check(x, M, out);
    try {
      return await this.handle.matmul(x, M, out);
    } catch (err) {
      throw toLowbitError(err);
    }
  }

  /** The same product, blocking the calling thread. */
  matmulSync(x: Float32Array, M: number, out?: Float32Array): Float32Array {
    this.check(x, M, out);
    try {
      return this.handle.matmulSync(x, M, out);
    } catch (err) {
      throw toLowbitError(err);
    }
  }

  close(): void {
    this.handle.close();
  }
}

/** Prepares `weights` for products on a device (see PreparedLinear). */
export function prepareLinear(weights: LinearWeights, options?: PrepareLinearOptions): PreparedLinear {
  return PreparedLinear.create(weights, options);
}

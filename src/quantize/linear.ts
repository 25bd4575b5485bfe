/**
 * Prepared linears: one weight (dense or packed, see src/weights) turned once into the operator a
 * device runs, which may repack it into the device's own layout; every product after that reuses
 * it. Benchmarks and callers that multiply by the same weight many times use this instead of
 * packedMatmul (which takes the checkpoint layout on every call).
 */
import { resolveDevice, type DeviceSpec } from '../devices.js';
import { LowbitError, invalidArgument } from '../errors.js';
import { native, toLowbitError, type CpuActivations, type NativePreparedLinear } from '../native.js';
import { WEIGHT_FORMATS } from '../weights/formats.js';
import type { LinearWeights } from '../weights/types.js';
import { validatePackedWeights } from './packed.js';

/** The dtype of a prepared linear's activations (x and its output). */
export type LinearActivations = 'f32' | 'f16' | 'bf16';
const ACTIVATIONS: readonly LinearActivations[] = ['f32', 'f16', 'bf16'];

/** x and out of a product: f32 values, or f16/bf16 bit patterns (the convention of fp16 scales). */
export type ActivationArray<A extends LinearActivations> = A extends 'f32' ? Float32Array : Uint16Array;

export interface PrepareLinearOptions<A extends LinearActivations = 'f32'> {
  /** 'cpu' (default), 'cuda', 'cuda:<index>' or 'auto' */
  device?: DeviceSpec;
  /** a kernel of the device's table by name (native().linearKernels()); default: the table's choice */
  kernel?: string;
  /**
   * 'f32' (default), or 'f16'/'bf16': x and out are then Uint16Arrays of bit patterns, accumulation
   * is f32 and the output is rounded once to the dtype. 16-bit activations run on CUDA's tensor-core
   * GPTQ kernel (gptq-tc: GPTQ 2/3/4-bit); the CPU and the other kernels take f32 only (E_UNSUPPORTED).
   * Where that is faster gptq-tc dequantizes the weight once per product into a 16-bit scratch and
   * multiplies with cuBLAS (compute capability 9.0: past 128 rows of x on weights up to 4096·4096;
   * older GPUs: from 128 rows, from 64 when K ≤ 4096): the prepared linear then keeps that scratch
   * (2 bytes per weight) on the GPU until it is freed.
   */
  activations?: A;
  /**
   * CPU only: the precision of the activations inside a packed GPTQ 2/3/4-bit or SpQR product. 'f32'
   * (default) is exact to f32 rounding (gptq-packed, spqr-cpu); 'int8' quantizes x per 128-input
   * segment for the repacked integer kernels (gptq-int8, and spqr-int8 for SpQR with β1 of 16, 32, 48,
   * 64, 96 or 128, β2 a multiple of 16, statistics of ≤ 4 bits and K ≤ 65535: fast; per output
   * |Δy| ≤ ‖x‖∞ · ‖w_n‖₁ / 254, SpQR's outliers exact). The forward pass (Model) defaults to 'int8'
   * instead. Dense weights and CUDA ignore it.
   */
  cpuActivations?: CpuActivations;
}

const CPU_ACTIVATIONS: readonly CpuActivations[] = ['int8', 'f32'];

function isPositiveInteger(v: unknown): v is number {
  return typeof v === 'number' && Number.isInteger(v) && v > 0;
}

function checkWeights(w: unknown): asserts w is LinearWeights {
  if (w === null || typeof w !== 'object') invalidArgument('weights', 'an object {format, ...}', w);
  const o = w as Record<string, unknown>;
  if (!(WEIGHT_FORMATS as readonly unknown[]).includes(o.format))
    invalidArgument('weights.format', `one of ${WEIGHT_FORMATS.map((f) => `'${f}'`).join(', ')}`, o.format);
  if (o.format === 'gptq') {
    validatePackedWeights(o, 'weights');
  } else if (o.format === 'spqr') {
    // shapes here; every buffer, index and option is checked natively (validate_spqr)
    if (!isPositiveInteger(o.N)) invalidArgument('weights.N', 'positive integer', o.N, 'E_SHAPE');
    if (!isPositiveInteger(o.K)) invalidArgument('weights.K', 'positive integer', o.K, 'E_SHAPE');
  } else {
    if (!isPositiveInteger(o.N)) invalidArgument('weights.N', 'positive integer', o.N, 'E_SHAPE');
    if (!isPositiveInteger(o.K)) invalidArgument('weights.K', 'positive integer', o.K, 'E_SHAPE');
    const want = o.dtype === 'f32' ? Float32Array : o.dtype === 'f16' || o.dtype === 'bf16' ? Uint16Array : undefined;
    if (!want) invalidArgument('weights.dtype', "'f32', 'f16' or 'bf16'", o.dtype, 'E_DTYPE');
    if (!(o.data instanceof want)) invalidArgument('weights.data', want.name, o.data, 'E_DTYPE');
    if (o.data.length !== o.N * o.K) {
      throw new LowbitError(
        'E_SHAPE',
        `Expected weights.data to hold N × K = ${o.N * o.K} values but it holds ${o.data.length}`,
        { option: 'weights.data' },
      );
    }
  }
  const N = o.N as number;
  if (o.bias !== undefined && !(o.bias instanceof Float32Array && o.bias.length === N))
    invalidArgument('weights.bias', `Float32Array of N = ${N} values`, o.bias, 'E_SHAPE');
}

/** A weight prepared for products on one device. close() frees it (the GC does too, later). */
export class PreparedLinear<A extends LinearActivations = 'f32'> {
  /** input features */
  readonly K: number;
  /** output features */
  readonly N: number;
  /** the device kernel that runs it (the table entry's name) */
  readonly kernel: string;
  /** the dtype of x and out */
  readonly activations: A;

  private constructor(private readonly handle: NativePreparedLinear) {
    this.K = handle.K;
    this.N = handle.N;
    this.kernel = handle.kernel;
    this.activations = handle.activations as A;
  }

  static create<A extends LinearActivations = 'f32'>(
    weights: LinearWeights,
    options: PrepareLinearOptions<A> = {},
  ): PreparedLinear<A> {
    checkWeights(weights);
    if (options === null || typeof options !== 'object') invalidArgument('options', 'object', options);
    if (options.kernel !== undefined && typeof options.kernel !== 'string')
      invalidArgument('options.kernel', 'string', options.kernel);
    const activations: LinearActivations = options.activations ?? 'f32';
    if (!ACTIVATIONS.includes(activations))
      invalidArgument('options.activations', "'f32', 'f16' or 'bf16'", activations, 'E_DTYPE');
    const device = resolveDevice(options.device ?? 'cpu');
    if (activations !== 'f32' && device < 0) {
      throw new LowbitError(
        'E_UNSUPPORTED',
        `options.activations '${activations}' needs a CUDA device: the CPU's linear operators take f32 activations only`,
        {
          option: 'options.activations',
        },
      );
    }
    const cpuActivations = options.cpuActivations ?? 'f32';
    if (!CPU_ACTIVATIONS.includes(cpuActivations))
      invalidArgument('options.cpuActivations', "'int8' or 'f32'", cpuActivations);
    const opts: {
      device: number;
      kernel?: string;
      activations: LinearActivations;
      cpuActivations: CpuActivations;
    } = { device, activations, cpuActivations };
    if (options.kernel !== undefined) opts.kernel = options.kernel;
    try {
      return new PreparedLinear<A>(native().linearCreate(weights, opts));
    } catch (err) {
      throw toLowbitError(err);
    }
  }

  /** memory held for the weight (the device's for CUDA); 0 once closed */
  get bytes(): number {
    return this.handle.bytes;
  }

  private check(x: unknown, M: unknown, out: unknown): void {
    if (!isPositiveInteger(M)) invalidArgument('M', 'positive integer (rows of x)', M, 'E_SHAPE');
    const [want, what] =
      this.activations === 'f32'
        ? [Float32Array, 'Float32Array']
        : [Uint16Array, `Uint16Array (${this.activations} bit patterns: activations '${this.activations}')`];
    if (!(x instanceof want)) invalidArgument('x', what, x, 'E_DTYPE');
    if (x.length !== M * this.K)
      throw new LowbitError('E_SHAPE', `Expected x to hold M × K = ${M * this.K} values but it holds ${x.length}`, {
        option: 'x',
      });
    if (out !== undefined) {
      if (!(out instanceof want)) invalidArgument('out', what, out, 'E_DTYPE');
      if (out.length !== M * this.N)
        throw new LowbitError(
          'E_SHAPE',
          `Expected out to hold M × N = ${M * this.N} values but it holds ${out.length}`,
          { option: 'out' },
        );
    }
  }

  /** Y [M, N] = x [M, K] · Wᵀ + bias, row-major, in the activations' dtype, off the event loop. */
  async matmul(x: ActivationArray<A>, M: number, out?: ActivationArray<A>): Promise<ActivationArray<A>> {
    this.check(x, M, out);
    try {
      return await this.handle.matmul(x, M, out);
    } catch (err) {
      throw toLowbitError(err);
    }
  }

  /** The same product, blocking the calling thread. */
  matmulSync(x: ActivationArray<A>, M: number, out?: ActivationArray<A>): ActivationArray<A> {
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
export function prepareLinear<A extends LinearActivations = 'f32'>(
  weights: LinearWeights,
  options?: PrepareLinearOptions<A>,
): PreparedLinear<A> {
  return PreparedLinear.create<A>(weights, options);
}

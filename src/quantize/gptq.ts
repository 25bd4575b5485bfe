/**
 * GPTQ for one linear layer: accumulate the Hessian of its inputs (Hessian), then quantize its weight
 * against it (gptqQuantize). The math is native (native/core/gptq.cpp); this module validates every
 * argument first, with messages that name the option, the value and what was expected.
 */
import { LowbitError, invalidArgument } from '../errors.js';
import { native, type NativeGptqResult, type NativeHessian, type PackedWeights } from '../native.js';
import { Tensor } from '../tensor.js';
import { resolveDevice, type DeviceSpec } from '../devices.js';
import { GPTQ_BITS, isGptqBits, type GptqBits } from '../weights/formats.js';

export interface GptqOptions {
  bits: GptqBits;
  /** columns per group along the input dimension; -1 = one group per output channel (default 128) */
  groupSize?: number;
  /** symmetric grid (default false) */
  sym?: boolean;
  /** sweep columns by descending diag(H) (default false) */
  actOrder?: boolean;
  /** fit every group's grid on the original weights up front (default false) */
  staticGroups?: boolean;
  /** dampening as a fraction of mean(diag H) (default 0.01) */
  damp?: number;
  /** how many times to raise the dampening ×10 when the Cholesky factorization fails (default 3) */
  maxDampRaises?: number;
  /** search shrunken grid ranges for the lowest error (default false) */
  mse?: boolean;
  /** columns per lazy-update block (default 128) */
  blockSize?: number;
  /** "gptq" (v1, default: zero points stored minus one) or "gptq_v2" */
  checkpointFormat?: 'gptq' | 'gptq_v2';
  /** where the factorization and the sweep run: 'cpu' (default), 'cuda', 'cuda:N' or 'auto' */
  device?: DeviceSpec;
}

export interface GptqResult {
  /** the packed layer in the GPTQ layout (kernels and the checkpoint writer take this) */
  packed: PackedWeights & { gIdx: Int32Array };
  /** [N * K] integer codes in the original column order */
  q: Uint8Array;
  /** [groups * N] scales (fp16-exact) and zero points */
  scales: Float32Array;
  zeros: Int32Array;
  /** the dampening fraction of mean(diag H) finally used (after any raises) and the absolute λ added to diag(H) */
  damp: number;
  lambda: number;
  dampRaises: number;
  deadInputs: number;
  /** GPTQ's objective: mean over calibration tokens of ||(W - Q) x||^2 (with the dampened H) */
  loss: number;
  warnings: string[];
}

function positiveInteger(name: string, v: unknown): number {
  if (typeof v !== 'number' || !Number.isInteger(v) || v <= 0) invalidArgument(name, 'positive integer', v);
  return v;
}

function optionalBoolean(name: string, v: unknown): boolean | undefined {
  if (v !== undefined && typeof v !== 'boolean') invalidArgument(name, 'boolean', v);
  return v;
}

/** Checks GPTQ options and fills in the defaults. */
export function resolveGptqOptions(options: GptqOptions): Required<Omit<GptqOptions, 'device'>> {
  if (options === null || typeof options !== 'object') invalidArgument('options', 'object', options);
  const { bits } = options;
  if (!isGptqBits(bits)) invalidArgument('bits', `one of ${GPTQ_BITS.join(', ')}`, bits, 'E_BITS');
  const groupSize = options.groupSize ?? 128;
  if (groupSize !== -1 && !(Number.isInteger(groupSize) && groupSize > 0)) {
    invalidArgument('groupSize', 'positive integer or -1 (per channel)', groupSize, 'E_GROUP_SIZE');
  }
  const damp = options.damp ?? 0.01;
  if (typeof damp !== 'number' || !Number.isFinite(damp) || damp < 0)
    invalidArgument('damp', 'finite number >= 0', damp);
  const maxDampRaises = options.maxDampRaises ?? 3;
  if (!Number.isInteger(maxDampRaises) || maxDampRaises < 0 || maxDampRaises > 20) {
    invalidArgument('maxDampRaises', 'integer in [0, 20]', maxDampRaises);
  }
  const blockSize = positiveInteger('blockSize', options.blockSize ?? 128);
  const checkpointFormat = options.checkpointFormat ?? 'gptq';
  if (checkpointFormat !== 'gptq' && checkpointFormat !== 'gptq_v2') {
    invalidArgument('checkpointFormat', '"gptq" or "gptq_v2"', checkpointFormat);
  }
  const staticGroups = optionalBoolean('staticGroups', options.staticGroups) ?? false;
  return {
    bits,
    groupSize,
    sym: optionalBoolean('sym', options.sym) ?? false,
    actOrder: optionalBoolean('actOrder', options.actOrder) ?? false,
    staticGroups,
    damp,
    maxDampRaises,
    mse: optionalBoolean('mse', options.mse) ?? false,
    blockSize,
    checkpointFormat,
  };
}

/** The running-mean Hessian H = (2/n) Σ x xᵀ of one layer's inputs, held natively (fp32, K×K). */
export class Hessian {
  readonly K: number;
  #handle: NativeHessian | undefined;

  private constructor(K: number, handle: NativeHessian) {
    this.K = K;
    this.#handle = handle;
  }

  /** A zero Hessian for K input features, in host memory or (device 'cuda[:N]') on a GPU. */
  static create(K: number, options: { device?: DeviceSpec } = {}): Hessian {
    positiveInteger('K', K);
    if (K > 65536) invalidArgument('K', 'integer in [1, 65536]', K, 'E_SHAPE');
    return new Hessian(K, native().hessianCreate(K, resolveDevice(options.device ?? 'cpu')));
  }

  /** -1 for host memory, else the CUDA device holding H. */
  get device(): number {
    return this.handle.device;
  }

  /** The native handle (throws E_CLOSED after free()). */
  get handle(): NativeHessian {
    if (!this.#handle) throw new LowbitError('E_CLOSED', 'this Hessian was freed');
    return this.#handle;
  }

  /** Folds a batch of inputs ([rows, K], f32) into H; resolves with the tokens seen so far. */
  async addBatch(X: Float32Array | Tensor, rows?: number): Promise<number> {
    let data: Float32Array;
    if (X instanceof Tensor) {
      if (X.dtype !== 'f32') invalidArgument('X', 'f32 tensor', X.dtype, 'E_DTYPE');
      data = X.data as Float32Array;
    } else if (X instanceof Float32Array) {
      data = X;
    } else {
      invalidArgument('X', 'Float32Array or f32 Tensor', X, 'E_DTYPE');
    }
    const n = rows ?? data.length / this.K;
    if (!Number.isInteger(n) || n < 0)
      invalidArgument('rows', `non-negative integer (X holds ${data.length} values, K = ${this.K})`, n, 'E_SHAPE');
    if (n * this.K > data.length) {
      throw new LowbitError('E_SHAPE', `X holds ${data.length} values, ${n} rows of K = ${this.K} need ${n * this.K}`);
    }
    return native().hessianAddBatch(this.handle, data, n);
  }

  /** Calibration tokens folded in so far. */
  get samples(): number {
    return native().hessianSamples(this.handle);
  }

  /** A copy of H as a [K, K] f32 tensor. */
  read(): Tensor<'f32'> {
    return new Tensor('f32', [this.K, this.K], native().hessianRead(this.handle));
  }

  /** Releases the native K×K buffer now. */
  free(): void {
    if (this.#handle) native().hessianFree(this.#handle);
    this.#handle = undefined;
  }
}

/**
 * Quantizes W ([N, K] out × in, f32) with GPTQ against H (a Hessian, or its [K, K] values).
 * Rejects with E_NAN for NaN/infinity in W or H, E_HESSIAN_SINGULAR when H stays singular after
 * raising the dampening (a raise is reported in `warnings`).
 */
export async function gptqQuantize(
  W: Tensor | Float32Array,
  shape: readonly [number, number] | undefined,
  H: Hessian | Tensor | Float32Array,
  options: GptqOptions,
): Promise<GptqResult> {
  let data: Float32Array;
  let N: number, K: number;
  if (W instanceof Tensor) {
    if (W.dtype !== 'f32') invalidArgument('W', 'f32 tensor', W.dtype, 'E_DTYPE');
    if (W.shape.length !== 2) invalidArgument('W', '2-D tensor [out, in]', `shape [${W.shape.join(', ')}]`, 'E_SHAPE');
    [N, K] = W.shape as [number, number];
    data = W.data as Float32Array;
  } else if (W instanceof Float32Array) {
    if (!shape) invalidArgument('shape', '[N, K] for a Float32Array W', shape, 'E_SHAPE');
    [N, K] = shape;
    data = W;
  } else {
    invalidArgument('W', 'f32 Tensor or Float32Array', W, 'E_DTYPE');
  }
  positiveInteger('N', N);
  positiveInteger('K', K);
  if (data.length !== N * K)
    throw new LowbitError('E_SHAPE', `W holds ${data.length} values, [${N}, ${K}] needs ${N * K}`);
  const opts = resolveGptqOptions(options);

  let h: Float32Array | NativeHessian;
  if (H instanceof Hessian) {
    if (H.K !== K) throw new LowbitError('E_SHAPE', `the Hessian is ${H.K} x ${H.K} but W has K = ${K} input features`);
    h = H.handle;
  } else {
    const hData =
      H instanceof Tensor
        ? H.dtype === 'f32'
          ? (H.data as Float32Array)
          : invalidArgument('H', 'f32 tensor', H.dtype, 'E_DTYPE')
        : H;
    if (!(hData instanceof Float32Array)) invalidArgument('H', 'Hessian, f32 Tensor or Float32Array', H, 'E_DTYPE');
    if (hData.length !== K * K)
      throw new LowbitError('E_SHAPE', `H holds ${hData.length} values, K x K = ${K} x ${K} needs ${K * K}`);
    h = hData;
  }

  const zeroOffset = opts.checkpointFormat === 'gptq' ? 1 : 0;
  const device = resolveDevice(options.device ?? 'cpu');
  const r: NativeGptqResult = await native().gptqQuantize(data, N, K, h, {
    bits: opts.bits,
    groupSize: opts.groupSize,
    sym: opts.sym,
    mse: opts.mse,
    actOrder: opts.actOrder,
    staticGroups: opts.staticGroups,
    dampPercent: opts.damp,
    maxDampRaises: opts.maxDampRaises,
    blockSize: opts.blockSize,
    zeroOffset,
    device,
  });
  const groupSize = opts.groupSize === -1 || opts.groupSize >= K ? K : opts.groupSize;
  return {
    packed: {
      bits: opts.bits,
      K,
      N,
      groupSize,
      groups: r.groups,
      zeroOffset,
      qweight: r.qweight,
      qzeros: r.qzeros,
      scales: r.scalesF16,
      gIdx: r.gIdx,
    },
    q: r.q,
    scales: r.scales,
    zeros: r.zeros,
    damp: r.dampPercent,
    lambda: r.damp,
    dampRaises: r.dampRaises,
    deadInputs: r.deadInputs,
    loss: r.loss,
    warnings: r.warnings,
  };
}

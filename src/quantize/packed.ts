/**
 * Packed low-bit weights in the GPTQ layout (docs/FORMATS.md): checking them, expanding them, and
 * multiplying by them. Every argument is checked here, with a message that names it, before the
 * native kernels see a pointer (and the kernels check the lengths again).
 */
import { LowbitError, describe, invalidArgument } from '../errors.js';
import { resolveDevice, type DeviceSpec } from '../devices.js';
import { native, type PackedWeights } from '../native.js';
import { Tensor } from '../tensor.js';
import { GPTQ_BITS, isGptqBits, packedWords } from '../weights/formats.js';

export { packUnit, packedWords } from '../weights/formats.js';

/** The bit widths packed weights come in (src/weights/formats.ts). */
export const PACKED_BITS = GPTQ_BITS;

function isPositiveInteger(v: unknown): v is number {
  return typeof v === 'number' && Number.isInteger(v) && v > 0;
}

function checkArray(
  name: string,
  value: unknown,
  type: Int32ArrayConstructor | Uint16ArrayConstructor,
  length: number,
  what: string,
): void {
  if (!(value instanceof type)) invalidArgument(name, `${type.name} (${what})`, value, 'E_DTYPE');
  if (value.length !== length) {
    throw new LowbitError(
      value.length < length ? 'E_BUFFER' : 'E_SHAPE',
      `Expected ${name} to hold ${length} elements (${what}) but it holds ${value.length}`,
      { option: name },
    );
  }
}

/**
 * Checks that W is a consistent packed weight: bits, shapes, every buffer's type and exact length,
 * and every g_idx entry. Throws LowbitError (E_BITS, E_SHAPE, E_GROUP_SIZE, E_DTYPE, E_BUFFER,
 * E_ARGUMENT) naming the field.
 */
export function validatePackedWeights(W: unknown, name = 'W'): asserts W is PackedWeights {
  if (W === null || typeof W !== 'object') invalidArgument(name, 'packed weights object', W);
  const w = W as Record<string, unknown>;
  if (!isGptqBits(w.bits)) invalidArgument(`${name}.bits`, `one of ${GPTQ_BITS.join(', ')}`, w.bits, 'E_BITS');
  const bits = w.bits;
  if (!isPositiveInteger(w.K)) invalidArgument(`${name}.K`, 'positive integer', w.K, 'E_SHAPE');
  if (!isPositiveInteger(w.N)) invalidArgument(`${name}.N`, 'positive integer', w.N, 'E_SHAPE');
  const K = w.K,
    N = w.N;
  if (!isPositiveInteger(w.groupSize) || w.groupSize > K) {
    invalidArgument(`${name}.groupSize`, `integer in [1, K = ${K}] (K for per-channel)`, w.groupSize, 'E_GROUP_SIZE');
  }
  if (!isPositiveInteger(w.groups)) invalidArgument(`${name}.groups`, 'positive integer', w.groups, 'E_SHAPE');
  const groups = w.groups;
  if (w.gIdx === undefined && groups !== Math.ceil(K / w.groupSize)) {
    invalidArgument(
      `${name}.groups`,
      `ceil(K / groupSize) = ${Math.ceil(K / w.groupSize)} (no gIdx)`,
      groups,
      'E_SHAPE',
    );
  }
  if (w.zeroOffset !== 0 && w.zeroOffset !== 1)
    invalidArgument(`${name}.zeroOffset`, '0 ("gptq_v2") or 1 ("gptq")', w.zeroOffset);
  const kWords = packedWords(bits, K),
    nWords = packedWords(bits, N);
  checkArray(`${name}.qweight`, w.qweight, Int32Array, kWords * N, `[${kWords}, ${N}] words`);
  checkArray(`${name}.qzeros`, w.qzeros, Int32Array, groups * nWords, `[${groups}, ${nWords}] words`);
  checkArray(`${name}.scales`, w.scales, Uint16Array, groups * N, `[${groups}, ${N}] fp16 bit patterns`);
  if (w.gIdx !== undefined) {
    checkArray(`${name}.gIdx`, w.gIdx, Int32Array, K, `[${K}] group of each input column`);
    const gIdx = w.gIdx as Int32Array;
    for (let k = 0; k < K; k++) {
      const g = gIdx[k]!;
      if (g < 0 || g >= groups) {
        throw new LowbitError('E_GROUP_SIZE', `Expected ${name}.gIdx[${k}] in [0, ${groups}) but received ${gIdx[k]}`, {
          option: `${name}.gIdx`,
        });
      }
    }
  }
}

/** W expanded to f32, shape [N, K]: w[n, k] = scale[g, n] · (q[k, n] − zero[g, n]) with g the group of k. */
export function dequantizeWeights(W: PackedWeights): Tensor<'f32'> {
  validatePackedWeights(W);
  return new Tensor('f32', [W.N, W.K], native().dequantize(W));
}

export interface PackedMatmulOptions {
  /** 'cpu' (default), 'cuda', 'cuda:<index>' or 'auto' */
  device?: DeviceSpec;
  /** write Y here (M × N values) instead of a new array; it is also what is returned */
  out?: Float32Array;
}

function outputArray(options: PackedMatmulOptions | undefined, length: number): Float32Array {
  const out = options?.out;
  if (out === undefined) return new Float32Array(length);
  if (!(out instanceof Float32Array)) invalidArgument('options.out', 'Float32Array', out, 'E_DTYPE');
  if (out.length !== length)
    throw new LowbitError(
      'E_SHAPE',
      `Expected options.out to hold M × N = ${length} values but it holds ${out.length}`,
      { option: 'options.out' },
    );
  return out;
}

/** The activations as a f32 array of M × K values (f16/bf16 tensors are converted). */
function activations(x: Float32Array | Tensor, M: number, K: number): Float32Array {
  if (!isPositiveInteger(M)) invalidArgument('M', 'positive integer (rows of x)', M, 'E_SHAPE');
  let data: Float32Array;
  if (x instanceof Tensor) {
    if (x.dtype !== 'f32' && x.dtype !== 'f16' && x.dtype !== 'bf16')
      invalidArgument('x', 'f32, f16 or bf16 tensor', `${x.dtype} tensor`, 'E_DTYPE');
    const rows = x.shape.length === 1 ? 1 : x.shape.slice(0, -1).reduce((a, b) => a * b, 1);
    const cols = x.shape[x.shape.length - 1];
    if (x.shape.length === 0 || cols !== K || rows !== M) {
      throw new LowbitError(
        'E_SHAPE',
        `Expected x of shape [${M}, ${K}] (M rows of K = W.K inputs) but received shape [${x.shape.join(', ')}]`,
        { option: 'x' },
      );
    }
    data = x.toFloat32().data;
  } else if (x instanceof Float32Array) {
    data = x;
  } else {
    invalidArgument('x', 'Float32Array or Tensor', x, 'E_DTYPE');
  }
  if (data.length !== M * K) {
    throw new LowbitError(
      'E_SHAPE',
      `Expected x to hold M × K = ${M} × ${K} = ${M * K} values but it holds ${data.length}`,
      { option: 'x' },
    );
  }
  return data;
}

function deviceIndex(options: PackedMatmulOptions | undefined): number {
  if (options !== undefined && (options === null || typeof options !== 'object'))
    invalidArgument('options', 'object', options);
  return resolveDevice(options?.device ?? 'cpu');
}

/**
 * Rows up to which a CPU product runs in place on the calling thread: the asynchronous path copies W
 * into native memory first (a worker may never read JavaScript memory, which could be transferred
 * meanwhile: docs/RELIABILITY.md), and that copy takes the event loop about as long as a product of
 * one or two rows (4096 × 4096 4-bit: ~0.7 ms copy, ~0.8 ms product, measured).
 */
const IN_PLACE_ROWS = 2;

/** Y = X · Wᵀ, X [M, K] and Y [M, N] row-major f32, W packed; runs off the event loop (products of ≤ 2 rows on the CPU run in place). */
export async function packedMatmul(
  x: Float32Array | Tensor,
  M: number,
  W: PackedWeights,
  options?: PackedMatmulOptions,
): Promise<Float32Array> {
  validatePackedWeights(W);
  const X = activations(x, M, W.K);
  const device = deviceIndex(options);
  const Y = outputArray(options, M * W.N);
  if (device < 0 && M <= IN_PLACE_ROWS) native().packedGemmSync(X, M, W, Y, device);
  else await native().packedGemm(X, M, W, Y, device);
  return Y;
}

/** The same product, blocking the calling thread (for small products where a Promise costs more). */
export function packedMatmulSync(
  x: Float32Array | Tensor,
  M: number,
  W: PackedWeights,
  options?: PackedMatmulOptions,
): Float32Array {
  validatePackedWeights(W);
  const X = activations(x, M, W.K);
  const device = deviceIndex(options);
  const Y = outputArray(options, M * W.N);
  native().packedGemmSync(X, M, W, Y, device);
  return Y;
}

/** The dense f32 product Y = X · Wᵀ (W [N, K] row-major) on the CPU: the baseline the packed kernels are measured against. */
export async function denseMatmul(
  x: Float32Array,
  M: number,
  W: Float32Array,
  N: number,
  K: number,
): Promise<Float32Array> {
  if (!isPositiveInteger(N)) invalidArgument('N', 'positive integer', N, 'E_SHAPE');
  if (!isPositiveInteger(K)) invalidArgument('K', 'positive integer', K, 'E_SHAPE');
  const X = activations(x, M, K);
  if (!(W instanceof Float32Array)) invalidArgument('W', 'Float32Array', W, 'E_DTYPE');
  if (W.length !== N * K)
    throw new LowbitError('E_SHAPE', `Expected W to hold N × K = ${N * K} values but received ${describe(W)}`, {
      option: 'W',
    });
  const Y = new Float32Array(M * N);
  await native().denseGemm(X, M, W, N, K, Y);
  return Y;
}

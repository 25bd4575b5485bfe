/**
 * Round-to-nearest quantization of one linear weight [N, K] (out × in): the baseline every other
 * method is measured against. Each group of `groupSize` consecutive input columns of a row gets its
 * own affine grid (shared METHODS.md); the math runs natively, off the event loop.
 */
import { LowbitError, invalidArgument } from '../errors.js';
import { native, type PackedWeights } from '../native.js';
import { Tensor } from '../tensor.js';
import { GPTQ_BITS, isGptqBits, type GptqBits } from '../weights/formats.js';

export interface RtnOptions {
  bits: GptqBits;
  /** input columns per group; -1 = one group per output channel (default 128; larger than K = one group) */
  groupSize?: number;
  /** symmetric grid, zero point fixed at 2^(bits-1) (default false) */
  sym?: boolean;
  /** search shrunken ranges for the grid with the lowest error (default false) */
  mse?: boolean;
  /**
   * "gptq" (v1, default) stores zero − 1 in qzeros, so a zero point of 0 cannot be written: groups
   * whose zero would round to 0 get a grid widened to zero 1 (docs/FORMATS.md). "gptq_v2" stores
   * the zero point itself.
   */
  checkpointFormat?: 'gptq' | 'gptq_v2';
}

/** The unpacked result: integer codes, fp16-exact scales and zero points. */
export interface RtnCodes {
  /** [N * K] codes in [0, 2^bits), row-major (one output channel per row) */
  q: Uint8Array;
  /** [groups * N] scales, each exactly representable in fp16 */
  scales: Float32Array;
  /** [groups * N] integer zero points */
  zeros: Int32Array;
  groups: number;
  /** the group size used (K when per channel) */
  groupSize: number;
  N: number;
  K: number;
  bits: GptqBits;
  zeroOffset: 0 | 1;
}

interface ResolvedRtn {
  bits: GptqBits;
  groupSize: number;
  sym: boolean;
  mse: boolean;
  zeroOffset: 0 | 1;
}

function resolveOptions(options: RtnOptions): ResolvedRtn {
  if (options === null || typeof options !== 'object') invalidArgument('options', 'object', options);
  const { bits } = options;
  if (!isGptqBits(bits)) invalidArgument('bits', `one of ${GPTQ_BITS.join(', ')}`, bits, 'E_BITS');
  const groupSize = options.groupSize ?? 128;
  if (groupSize !== -1 && !(typeof groupSize === 'number' && Number.isInteger(groupSize) && groupSize > 0)) {
    invalidArgument('groupSize', 'positive integer or -1 (per channel)', groupSize, 'E_GROUP_SIZE');
  }
  const sym = options.sym ?? false;
  if (typeof sym !== 'boolean') invalidArgument('sym', 'boolean', sym);
  const mse = options.mse ?? false;
  if (typeof mse !== 'boolean') invalidArgument('mse', 'boolean', mse);
  const format = options.checkpointFormat ?? 'gptq';
  if (format !== 'gptq' && format !== 'gptq_v2') invalidArgument('checkpointFormat', '"gptq" or "gptq_v2"', format);
  return { bits, groupSize, sym, mse, zeroOffset: format === 'gptq' ? 1 : 0 };
}

function weightMatrix(weight: unknown): { data: Float32Array; N: number; K: number } {
  if (!(weight instanceof Tensor)) invalidArgument('weight', 'Tensor of shape [N, K]', weight, 'E_DTYPE');
  if (weight.dtype !== 'f32' && weight.dtype !== 'f16' && weight.dtype !== 'bf16') {
    invalidArgument('weight', 'f32, f16 or bf16 tensor', `${weight.dtype} tensor`, 'E_DTYPE');
  }
  const [N, K] = weight.shape;
  if (weight.shape.length !== 2 || N === undefined || K === undefined || N < 1 || K < 1) {
    invalidArgument(
      'weight',
      'a 2-D tensor [N, K] (out × in) with N, K >= 1',
      `tensor of shape [${weight.shape.join(', ')}]`,
      'E_SHAPE',
    );
  }
  return { data: weight.toFloat32().data, N, K };
}

async function runRtn(weight: Tensor, options: RtnOptions, pack: boolean) {
  const opts = resolveOptions(options);
  const { data, N, K } = weightMatrix(weight);
  const minZero = opts.sym ? 0 : opts.zeroOffset; // symmetric zero points (2^(bits-1)) are never 0
  const r = await native().rtnQuantize(data, N, K, {
    bits: opts.bits,
    groupSize: opts.groupSize,
    sym: opts.sym,
    mse: opts.mse,
    minZero,
    ...(pack ? { packZeroOffset: opts.zeroOffset } : {}),
  });
  const groupSize = opts.groupSize === -1 || opts.groupSize >= K ? K : opts.groupSize;
  const codes: RtnCodes = {
    q: r.q,
    scales: r.scales,
    zeros: r.zeros,
    groups: r.groups,
    groupSize,
    N,
    K,
    bits: opts.bits,
    zeroOffset: opts.zeroOffset,
  };
  return { codes, r };
}

/** RTN-quantizes weight [N, K] and returns the integer codes, scales and zero points unpacked. */
export async function rtnQuantizeCodes(weight: Tensor, options: RtnOptions): Promise<RtnCodes> {
  return (await runRtn(weight, options, false)).codes;
}

function checkCount(name: string, v: unknown): number {
  if (typeof v !== 'number' || !Number.isSafeInteger(v) || v < 1)
    invalidArgument(name, 'positive safe integer', v, 'E_SHAPE');
  return v;
}

function checkCodesArray(
  name: string,
  v: unknown,
  type: Uint8ArrayConstructor | Float32ArrayConstructor | Int32ArrayConstructor,
  length: number,
  what: string,
): void {
  if (!(v instanceof type)) invalidArgument(name, `${type.name} (${what})`, v, 'E_DTYPE');
  if (v.length !== length)
    throw new LowbitError(
      v.length < length ? 'E_BUFFER' : 'E_SHAPE',
      `Expected ${name} to hold ${what} = ${length} values but it holds ${v.length}`,
      { option: name },
    );
}

/** Checks RtnCodes the way every other export checks its input: types, shapes (safe integers), lengths. */
function validateCodes(codes: unknown): asserts codes is RtnCodes {
  if (codes === null || typeof codes !== 'object')
    invalidArgument('codes', 'RtnCodes object ({q, scales, zeros, groups, groupSize, N, K, bits, zeroOffset})', codes);
  const c = codes as Record<string, unknown>;
  if (!isGptqBits(c.bits)) invalidArgument('codes.bits', `one of ${GPTQ_BITS.join(', ')}`, c.bits, 'E_BITS');
  const N = checkCount('codes.N', c.N),
    K = checkCount('codes.K', c.K),
    groups = checkCount('codes.groups', c.groups);
  if (!Number.isSafeInteger(N * K) || !Number.isSafeInteger(groups * N)) {
    throw new LowbitError('E_SHAPE', `codes.N × codes.K = ${N} × ${K} (or groups × N) is too large`, {
      option: 'codes.K',
    });
  }
  const groupSize = checkCount('codes.groupSize', c.groupSize);
  if (groupSize > K || groups !== Math.ceil(K / groupSize)) {
    invalidArgument(
      'codes.groupSize',
      `a group size in [1, K = ${K}] with groups = ceil(K / groupSize) = ${groups}`,
      groupSize,
      'E_GROUP_SIZE',
    );
  }
  if (c.zeroOffset !== 0 && c.zeroOffset !== 1)
    invalidArgument('codes.zeroOffset', '0 ("gptq_v2") or 1 ("gptq")', c.zeroOffset);
  const NK = N * K,
    GN = groups * N;
  checkCodesArray('codes.q', c.q, Uint8Array, NK, 'N × K');
  checkCodesArray('codes.scales', c.scales, Float32Array, GN, 'groups × N');
  checkCodesArray('codes.zeros', c.zeros, Int32Array, GN, 'groups × N');
}

/** Packs codes (from RTN or elsewhere) into the GPTQ layout; scales are rounded to fp16 (RTN's already are). */
export function packCodes(codes: RtnCodes): PackedWeights {
  validateCodes(codes);
  const addon = native();
  const { q, N, K, bits, groups, zeroOffset } = codes;
  const qweight = addon.packQweight(q, N, K, bits);
  const qzeros = addon.packQzeros(codes.zeros, groups, N, bits, zeroOffset);
  const scales = new Uint16Array(groups * N);
  addon.convert(
    new Uint8Array(codes.scales.buffer, codes.scales.byteOffset, codes.scales.byteLength),
    'f32',
    new Uint8Array(scales.buffer),
    'f16',
    groups * N,
  );
  return { bits, K, N, groupSize: codes.groupSize, groups, zeroOffset, qweight, qzeros, scales };
}

/**
 * RTN-quantizes weight [N, K] (f32, f16 or bf16) into packed GPTQ weights ready for packedMatmul
 * and the checkpoint writer. Groups are contiguous (no gIdx). Quantizing and packing both run
 * natively off the event loop.
 */
export async function rtnQuantize(weight: Tensor, options: RtnOptions): Promise<PackedWeights> {
  const { codes, r } = await runRtn(weight, options, true);
  if (!r.qweight || !r.qzeros || !r.scalesF16)
    throw new LowbitError('E_INTERNAL', 'the addon returned no packed RTN result (stale build?)');
  return {
    bits: codes.bits,
    K: codes.K,
    N: codes.N,
    groupSize: codes.groupSize,
    groups: codes.groups,
    zeroOffset: codes.zeroOffset,
    qweight: r.qweight,
    qzeros: r.qzeros,
    scales: r.scalesF16,
  };
}

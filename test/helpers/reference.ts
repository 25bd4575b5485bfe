/**
 * Plain float64 reference implementations, written from the definitions (shared METHODS.md,
 * docs/FORMATS.md) and independently of the native code, for tests to compare kernels against:
 *   - fp16 / bf16 rounding and decoding
 *   - the affine grid and RTN
 *   - the GPTQ layout: packing and unpacking qweight / qzeros, bit by bit
 *   - dequantization and the packed product Y = X · Wᵀ
 * Nothing here is fast; everything here is meant to be obviously right.
 */
import type { PackedWeights } from '../../src/native.js';
import { shuffledGroupIndex, type Rng } from './random.js';

export type Bits = 2 | 3 | 4 | 8;

/** Round half to even (what torch.round and C's nearbyint do). */
export function roundHalfEven(x: number): number {
  const f = Math.floor(x);
  const d = x - f;
  if (d > 0.5) return f + 1;
  if (d < 0.5) return f;
  return f % 2 === 0 ? f : f + 1;
}

/** The exponent e with 2^e <= a < 2^(e+1), for a > 0. */
function exponentOf(a: number): number {
  let e = Math.floor(Math.log2(a));
  while (2 ** e > a) e--;
  while (2 ** (e + 1) <= a) e++;
  return e;
}

// ------------------------------------------------------------------------------------- fp16, bf16

/** IEEE half bits of x, rounded to nearest even (NaN → sign | 0x7e00). */
export function f16Bits(x: number): number {
  const sign = x < 0 || Object.is(x, -0) ? 0x8000 : 0;
  if (Number.isNaN(x)) return sign | 0x7e00;
  const a = Math.abs(x);
  if (a >= 65520) return sign | 0x7c00; // 65504 plus half an ulp and beyond round to infinity
  if (a < 2 ** -14) return sign | roundHalfEven(a * 2 ** 24); // subnormal (1024 = smallest normal's bits)
  const e = exponentOf(a);
  const m = roundHalfEven(a / 2 ** (e - 10)); // in [1024, 2048]; 2048 carries into the exponent
  return sign | (((e + 15) << 10) + (m - 1024));
}

/** The value of IEEE half bits. */
export function f16Value(h: number): number {
  const sign = h & 0x8000 ? -1 : 1;
  const e = (h >> 10) & 0x1f;
  const m = h & 0x3ff;
  if (e === 0x1f) return m ? NaN : sign * Infinity;
  if (e === 0) return sign * m * 2 ** -24;
  return sign * (1 + m / 1024) * 2 ** (e - 15);
}

/** x rounded to the nearest fp16 value. */
export function fp16Round(x: number): number {
  return f16Value(f16Bits(x));
}

/** bfloat16 bits of x, rounded to nearest even (NaN → a quiet NaN). */
export function bf16Bits(x: number): number {
  const sign = x < 0 || Object.is(x, -0) ? 0x8000 : 0;
  if (Number.isNaN(x)) return sign | 0x7fc0;
  const a = Math.abs(x);
  const maxFinite = (2 - 2 ** -7) * 2 ** 127;
  if (a >= maxFinite + 2 ** (127 - 8)) return sign | 0x7f80;
  if (a < 2 ** -126) return sign | roundHalfEven(a * 2 ** 133); // subnormal, in units of 2^-133
  const e = exponentOf(a);
  const m = roundHalfEven(a / 2 ** (e - 7)); // in [128, 256]
  return sign | (((e + 127) << 7) + (m - 128));
}

/** The value of bfloat16 bits. */
export function bf16Value(h: number): number {
  const sign = h & 0x8000 ? -1 : 1;
  const e = (h >> 7) & 0xff;
  const m = h & 0x7f;
  if (e === 0xff) return m ? NaN : sign * Infinity;
  if (e === 0) return sign * m * 2 ** -133;
  return sign * (1 + m / 128) * 2 ** (e - 127);
}

// ------------------------------------------------------------------------------------ grid and RTN

export interface GridRef {
  scale: number;
  zero: number;
}

/** A positive scale rounded to the fp16 value a checkpoint stores (degenerate ranges get 1e-5). */
export function roundScale(scale: number): number {
  let s = scale > 0 ? scale : 1e-5;
  s = fp16Round(s);
  if (s === 0) s = 2 ** -24;
  if (s === Infinity) s = 65504;
  return s;
}

/**
 * The affine grid of shared METHODS.md for one group: the range always includes 0; asymmetric
 * zero = round(−xmin / scale); symmetric zero = (maxq + 1) / 2. Scales are fp16-rounded before the
 * zero point is computed (lowbit stores fp16 scales and quantizes against exactly those).
 * minZero (1 for "gptq" v1) widens an asymmetric grid whose zero would fall below it.
 */
export function fitGridRef(w: ArrayLike<number>, bits: Bits, sym: boolean, minZero = 0): GridRef {
  const maxq = 2 ** bits - 1;
  let xmin = 0;
  let xmax = 0;
  for (let i = 0; i < w.length; i++) {
    xmin = Math.min(xmin, w[i]);
    xmax = Math.max(xmax, w[i]);
  }
  if (sym) {
    const amax = Math.max(-xmin, xmax);
    return { scale: roundScale((2 * amax) / maxq), zero: (maxq + 1) / 2 };
  }
  const scale = roundScale((xmax - xmin) / maxq);
  const zero = Math.min(Math.max(roundHalfEven(-xmin / scale), 0), maxq);
  if (zero >= minZero) return { scale, zero };
  return { scale: roundScale(Math.max(xmax / (maxq - minZero), -xmin / minZero)), zero: minZero };
}

/** q = clamp(round(w / scale) + zero, 0, maxq). */
export function quantizeRef(w: number, grid: GridRef, bits: Bits): number {
  const maxq = 2 ** bits - 1;
  return Math.min(Math.max(roundHalfEven(w / grid.scale) + grid.zero, 0), maxq);
}

/** ŵ = scale · (q − zero). */
export function dequantizeValueRef(q: number, grid: GridRef): number {
  return grid.scale * (q - grid.zero);
}

/** Columns per group and the group count for K inputs (groupSize −1 or >= K: one group). */
export function groupLayout(K: number, groupSize: number): { groupSize: number; groups: number } {
  const gs = groupSize <= 0 || groupSize >= K ? K : groupSize;
  return { groupSize: gs, groups: Math.ceil(K / gs) };
}

export interface RtnRef {
  /** [N * K] codes */
  q: Uint8Array;
  /** [groups * N] */
  scales: Float64Array;
  zeros: Int32Array;
  groups: number;
  groupSize: number;
}

/** RTN of W [N, K] (row-major) with contiguous groups of groupSize input columns. */
export function rtnRef(
  W: ArrayLike<number>,
  N: number,
  K: number,
  groupSize: number,
  bits: Bits,
  sym: boolean,
  minZero = 0,
): RtnRef {
  const { groupSize: gs, groups } = groupLayout(K, groupSize);
  const q = new Uint8Array(N * K);
  const scales = new Float64Array(groups * N);
  const zeros = new Int32Array(groups * N);
  const group: number[] = [];
  for (let n = 0; n < N; n++) {
    for (let g = 0; g < groups; g++) {
      group.length = 0;
      for (let k = g * gs; k < Math.min(K, (g + 1) * gs); k++) group.push(W[n * K + k]);
      const grid = fitGridRef(group, bits, sym, minZero);
      scales[g * N + n] = grid.scale;
      zeros[g * N + n] = grid.zero;
      for (let k = g * gs; k < Math.min(K, (g + 1) * gs); k++) q[n * K + k] = quantizeRef(W[n * K + k], grid, bits);
    }
  }
  return { q, scales, zeros, groups, groupSize: gs };
}

// ------------------------------------------------------------------------------------- the layout

/** Values per pack unit and the int32 words it takes: 32/bits in one word, 3 bits: 32 in 3 words. */
export function packUnitRef(bits: Bits): { values: number; words: number } {
  return bits === 3 ? { values: 32, words: 3 } : { values: 32 / bits, words: 1 };
}

/** Words needed for `count` values along the packed dimension (a partial last unit is padded). */
export function packedWordsRef(bits: Bits, count: number): number {
  const u = packUnitRef(bits);
  return Math.ceil(count / u.values) * u.words;
}

/**
 * Sets value i (of `bits` bits) in a little-endian bit stream whose word j is out[word(j)]: value i
 * occupies stream bits [i·bits, (i+1)·bits), so a 3-bit value can straddle two words.
 */
function putBits(out: Int32Array, word: (j: number) => number, i: number, v: number, bits: number): void {
  for (let b = 0; b < bits; b++) {
    if ((v >> b) & 1) {
      const pos = i * bits + b;
      out[word(Math.floor(pos / 32))] |= 1 << (pos % 32);
    }
  }
}

function getBits(src: Int32Array, word: (j: number) => number, i: number, bits: number): number {
  let v = 0;
  for (let b = 0; b < bits; b++) {
    const pos = i * bits + b;
    if ((src[word(Math.floor(pos / 32))] >>> (pos % 32)) & 1) v |= 1 << b;
  }
  return v;
}

/** qweight [packedWords(K), N] from codes q [N, K]: column n is one stream along K. */
export function packQweightRef(q: ArrayLike<number>, N: number, K: number, bits: Bits): Int32Array {
  const out = new Int32Array(packedWordsRef(bits, K) * N);
  for (let n = 0; n < N; n++) for (let k = 0; k < K; k++) putBits(out, (j) => j * N + n, k, q[n * K + k], bits);
  return out;
}

export function unpackQweightRef(qweight: Int32Array, N: number, K: number, bits: Bits): Uint8Array {
  const q = new Uint8Array(N * K);
  for (let n = 0; n < N; n++) for (let k = 0; k < K; k++) q[n * K + k] = getBits(qweight, (j) => j * N + n, k, bits);
  return q;
}

/** qzeros [G, packedWords(N)] from zero points [G, N], storing zero − zeroOffset (masked to bits). */
export function packQzerosRef(
  zeros: ArrayLike<number>,
  G: number,
  N: number,
  bits: Bits,
  zeroOffset: 0 | 1,
): Int32Array {
  const cols = packedWordsRef(bits, N);
  const out = new Int32Array(G * cols);
  const mask = 2 ** bits - 1;
  for (let g = 0; g < G; g++)
    for (let n = 0; n < N; n++) putBits(out, (j) => g * cols + j, n, (zeros[g * N + n] - zeroOffset) & mask, bits);
  return out;
}

export function unpackQzerosRef(qzeros: Int32Array, G: number, N: number, bits: Bits, zeroOffset: 0 | 1): Int32Array {
  const cols = packedWordsRef(bits, N);
  const zeros = new Int32Array(G * N);
  for (let g = 0; g < G; g++)
    for (let n = 0; n < N; n++) zeros[g * N + n] = getBits(qzeros, (j) => g * cols + j, n, bits) + zeroOffset;
  return zeros;
}

export interface CodesToPack {
  bits: Bits;
  N: number;
  K: number;
  /** [N * K] */
  q: ArrayLike<number>;
  /** [groups * N], fp16-representable (rounded to fp16 here anyway) */
  scales: ArrayLike<number>;
  /** [groups * N] */
  zeros: ArrayLike<number>;
  groups: number;
  groupSize: number;
  zeroOffset: 0 | 1;
  gIdx?: Int32Array;
}

/** PackedWeights built by the reference packers (so kernel tests do not depend on the native packer). */
export function packWeightsRef(c: CodesToPack): PackedWeights {
  const scales = new Uint16Array(c.groups * c.N);
  for (let i = 0; i < scales.length; i++) scales[i] = f16Bits(c.scales[i]);
  return {
    bits: c.bits,
    K: c.K,
    N: c.N,
    groupSize: c.groupSize,
    groups: c.groups,
    zeroOffset: c.zeroOffset,
    qweight: packQweightRef(c.q, c.N, c.K, c.bits),
    qzeros: packQzerosRef(c.zeros, c.groups, c.N, c.bits, c.zeroOffset),
    scales,
    ...(c.gIdx ? { gIdx: c.gIdx } : {}),
  };
}

/** W expanded from its packed buffers: [N * K], w[n, k] = scale[g, n] · (q[k, n] − zero[g, n]). */
export function dequantizeRef(W: PackedWeights): Float64Array {
  const { N, K, bits } = W;
  const q = unpackQweightRef(W.qweight, N, K, bits);
  const zeros = unpackQzerosRef(W.qzeros, W.groups, N, bits, W.zeroOffset);
  const out = new Float64Array(N * K);
  for (let n = 0; n < N; n++) {
    for (let k = 0; k < K; k++) {
      const g = W.gIdx ? W.gIdx[k] : Math.floor(k / W.groupSize);
      out[n * K + k] = f16Value(W.scales[g * N + n]) * (q[n * K + k] - zeros[g * N + n]);
    }
  }
  return out;
}

/** Y = X · Wᵀ in float64 for a dense W [N, K]; X [M, K]. */
export function matmulRef(X: ArrayLike<number>, M: number, W: ArrayLike<number>, N: number, K: number): Float64Array {
  const Y = new Float64Array(M * N);
  for (let m = 0; m < M; m++) {
    for (let n = 0; n < N; n++) {
      let s = 0;
      for (let k = 0; k < K; k++) s += X[m * K + k] * W[n * K + k];
      Y[m * N + n] = s;
    }
  }
  return Y;
}

/** Y = X · Wᵀ in float64 for packed W (dequantized by the reference). */
export function packedMatmulRef(X: ArrayLike<number>, M: number, W: PackedWeights): Float64Array {
  return matmulRef(X, M, dequantizeRef(W), W.N, W.K);
}

/** Root mean square of a − b (of a when b is omitted), in float64. */
export function rms(a: ArrayLike<number>, b?: ArrayLike<number>): number {
  let s = 0;
  for (let i = 0; i < a.length; i++) s += (a[i]! - (b ? b[i]! : 0)) ** 2;
  return Math.sqrt(s / a.length);
}

/** ‖y − ref‖ / ‖ref‖ in float64 (‖y‖ when ref is all zero). */
export function relativeError(y: ArrayLike<number>, ref: ArrayLike<number>): number {
  if (y.length !== ref.length) throw new Error(`length ${y.length} != reference length ${ref.length}`);
  let num = 0;
  let den = 0;
  for (let i = 0; i < y.length; i++) {
    const d = y[i] - ref[i];
    num += d * d;
    den += ref[i] * ref[i];
  }
  return den === 0 ? Math.sqrt(num) : Math.sqrt(num / den);
}

export interface RandomPackedOptions {
  N: number;
  K: number;
  bits: Bits;
  /** −1 or >= K: per channel */
  groupSize: number;
  /** non-monotone act-order g_idx (see shuffledGroupIndex) */
  actOrder?: boolean;
  /** 1 ("gptq", default) or 0 ("gptq_v2") */
  zeroOffset?: 0 | 1;
}

/**
 * Random packed weights: random codes, zero points (>= 1 for v1, which cannot store 0), fp16
 * scales around 0.01, and with actOrder a shuffled g_idx. Packed by the reference packers.
 */
export function randomPackedWeights(
  rng: Rng,
  o: RandomPackedOptions,
): PackedWeights & { q: Uint8Array; zeros: Int32Array } {
  const { N, K, bits } = o;
  const zeroOffset = o.zeroOffset ?? 1;
  const { groupSize, groups } = groupLayout(K, o.groupSize);
  const maxq = 2 ** bits - 1;
  const q = new Uint8Array(N * K);
  for (let i = 0; i < q.length; i++) q[i] = rng.int(maxq + 1);
  const zeros = new Int32Array(groups * N);
  for (let i = 0; i < zeros.length; i++) zeros[i] = zeroOffset + rng.int(maxq + 1 - zeroOffset);
  const scales = new Float64Array(groups * N);
  for (let i = 0; i < scales.length; i++) scales[i] = fp16Round(0.01 * (0.5 + rng.next()));
  let gIdx: Int32Array | undefined;
  if (o.actOrder) gIdx = shuffledGroupIndex(rng, K, groupSize);
  const W = packWeightsRef({ bits, N, K, q, scales, zeros, groups, groupSize, zeroOffset, gIdx });
  return { ...W, q, zeros };
}

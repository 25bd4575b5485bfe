/**
 * Plain references for the CUDA tests: a seeded PRNG (the seed drawn at random and reported), fp16
 * decoding, random packed matrices in the GPTQ layout, and the float64 product they should give.
 */
import { native, type PackedWeights } from '../../src/native.js';
import { Rng, randomSeed } from '../helpers/random.js';
import { f16Value } from '../helpers/reference.js';

/** A seeded uniform [0, 1) source over the shared test PRNG (test/helpers/random.ts). */
export function rng(seed: number): () => number {
  const r = new Rng(seed);
  return () => r.next();
}

export { randomSeed };

/** A standard normal draw (Box–Muller). */
export function gaussian(rand: () => number): number {
  const u = 1 - rand();
  return Math.sqrt(-2 * Math.log(u)) * Math.cos(2 * Math.PI * rand());
}

/** The value of fp16 bits, exactly. */
export const f16ToNumber = f16Value;

export interface RandomPacked {
  W: PackedWeights;
  /** q [N*K], zeros [G*N] and scales [G*N] as plain numbers, for the reference */
  q: Uint8Array;
  zeros: Int32Array;
  scales: Float64Array;
  groupOf: (k: number) => number;
}

/**
 * A random packed matrix: N outputs, K inputs, groups of `groupSize` along K (the last one partial
 * when K is not a multiple), and with `shuffled` a g_idx that assigns those groups to columns in a
 * random order (as act-order checkpoints do).
 */
export function randomPacked(
  rand: () => number,
  opts: { bits: 2 | 3 | 4 | 8; N: number; K: number; groupSize: number; shuffled: boolean; zeroOffset?: 0 | 1 },
): RandomPacked {
  const { bits, N, K, groupSize, shuffled } = opts;
  const zeroOffset = opts.zeroOffset ?? 1;
  const maxq = 2 ** bits - 1;
  const G = Math.ceil(K / groupSize);
  const q = new Uint8Array(N * K);
  for (let i = 0; i < q.length; i++) q[i] = Math.floor(rand() * (maxq + 1));
  const zeros = new Int32Array(G * N);
  // v1 stores zero − 1, so a zero of 0 is not representable there.
  for (let i = 0; i < zeros.length; i++) zeros[i] = zeroOffset + Math.floor(rand() * (maxq + 1 - zeroOffset));
  // Scales: random positive fp16 values between 2^-9 and 2^-3.
  const scaleBits = new Uint16Array(G * N);
  const scales = new Float64Array(G * N);
  for (let i = 0; i < scaleBits.length; i++) {
    scaleBits[i] = ((6 + Math.floor(rand() * 6)) << 10) | Math.floor(rand() * 1024);
    scales[i] = f16ToNumber(scaleBits[i]);
  }
  let gIdx: Int32Array | undefined;
  if (shuffled) {
    gIdx = new Int32Array(K);
    for (let k = 0; k < K; k++) gIdx[k] = Math.floor(k / groupSize);
    for (let k = K - 1; k > 0; k--) {
      const j = Math.floor(rand() * (k + 1));
      [gIdx[k], gIdx[j]] = [gIdx[j], gIdx[k]];
    }
  }
  // Packed here in TypeScript, not with the addon under test: a packing bug there must not hide in
  // the reference.
  const qweight = new Int32Array(packedWords(bits, K) * N);
  for (let n = 0; n < N; n++) for (let k = 0; k < K; k++) writePacked(qweight, N, n, bits, k, q[n * K + k]);
  const qzeros = new Int32Array(G * packedWords(bits, N));
  const zcols = packedWords(bits, N);
  for (let g = 0; g < G; g++)
    for (let n = 0; n < N; n++) writePacked(qzeros, 1, g * zcols, bits, n, zeros[g * N + n] - zeroOffset);
  const W: PackedWeights = {
    bits,
    K,
    N,
    groupSize,
    groups: G,
    zeroOffset,
    qweight,
    qzeros,
    scales: scaleBits,
    ...(gIdx ? { gIdx } : {}),
  };
  const groupOf = gIdx ? (k: number) => gIdx[k] : (k: number) => Math.floor(k / groupSize);
  return { W, q, zeros, scales, groupOf };
}

/**
 * int32 words holding `count` values of `bits` in the GPTQ layout: packing units of 8 (4 bits),
 * 16 (2), 4 (8) values per word, and 32 values in 3 words for 3 bits.
 */
export function packedWords(bits: number, count: number): number {
  return bits === 3 ? Math.ceil(count / 32) * 3 : Math.ceil((count * bits) / 32);
}

/**
 * Writes value i of a little-endian bit stream of `bits`-wide values whose consecutive words lie
 * `stride` int32s apart, starting at `offset` (3-bit values may straddle two words).
 */
function writePacked(words: Int32Array, stride: number, offset: number, bits: number, i: number, v: number): void {
  const bit = i * bits;
  const w = bit >>> 5;
  const sh = bit & 31;
  const mask = (1 << bits) - 1;
  words[offset + w * stride] |= (v & mask) << sh;
  if (sh + bits > 32) words[offset + (w + 1) * stride] |= (v & mask) >>> (32 - sh);
}

/** Y = X · Wᵀ in float64 from the unpacked integers, scales and zeros. */
export function referenceProduct(X: Float32Array, M: number, p: RandomPacked): Float64Array {
  const { N, K } = p.W;
  const w = new Float64Array(N * K);
  for (let n = 0; n < N; n++)
    for (let k = 0; k < K; k++) {
      const g = p.groupOf(k);
      w[n * K + k] = p.scales[g * N + n] * (p.q[n * K + k] - p.zeros[g * N + n]);
    }
  const Y = new Float64Array(M * N);
  for (let m = 0; m < M; m++)
    for (let n = 0; n < N; n++) {
      let acc = 0;
      for (let k = 0; k < K; k++) acc += X[m * K + k] * w[n * K + k];
      Y[m * N + n] = acc;
    }
  return Y;
}

/** ‖a − b‖ / ‖b‖ (NaN anywhere gives NaN, which fails every bound). */
export function relativeError(a: ArrayLike<number>, b: ArrayLike<number>): number {
  let num = 0;
  let den = 0;
  for (let i = 0; i < b.length; i++) {
    num += (a[i] - b[i]) ** 2;
    den += b[i] ** 2;
  }
  return Math.sqrt(num) / Math.sqrt(den);
}

export function randomMatrix(rand: () => number, rows: number, cols: number): Float32Array {
  const out = new Float32Array(rows * cols);
  for (let i = 0; i < out.length; i++) out[i] = gaussian(rand);
  return out;
}

/** The CUDA device tests run on, or the reason there is none. */
export function cudaAvailability(): { ok: boolean; reason: string } {
  const { devices, reason } = native().cudaDevices();
  return devices.length > 0 ? { ok: true, reason: '' } : { ok: false, reason: reason || 'no CUDA device' };
}

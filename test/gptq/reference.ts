/**
 * A plain float64 GPTQ, written for clarity and independently of the native code: the textbook
 * algorithm with no blocking (every column's error is fed to all later columns at once), the inverse
 * Hessian formed explicitly (chol(H) -> H^-1 -> chol(H^-1)), and the same grid rules as
 * native/core/quant_grid.cpp. One detail of the reference implementation is modelled on purpose:
 * a group's grid is fitted on W as it stood at the start of the 128-column block holding the group's
 * first column (the blocked sweep has not yet applied that block's own updates).
 */

/** The shared seeded PRNG (mulberry32, with a normal sampler); the seed goes into failure messages. */
import { Rng } from '../helpers/random.js';
import { dampenedFactor, permuted, withDeadInputs } from '../helpers/sweep-ref.js';

export { Rng, randomSeed } from '../helpers/random.js';

/** Round half to even (C's nearbyint in the default rounding mode). */
export function roundHalfEven(x: number): number {
  const r = Math.round(x);
  return Math.abs(x % 1) === 0.5 && r % 2 !== 0 ? r - 1 : r;
}

/** The nearest fp16 value (round to nearest even), for positive finite x in fp16's range. */
export function roundToF16(x: number): number {
  const e = Math.max(Math.floor(Math.log2(x)), -14);
  const quantum = 2 ** (e - 10);
  return Math.min(roundHalfEven(x / quantum) * quantum, 65504);
}

export interface Grid {
  scale: number;
  zero: number;
}

export interface RefOptions {
  bits: number;
  groupSize: number; // -1: per channel
  sym: boolean;
  actOrder: boolean;
  staticGroups: boolean;
  damp: number;
  minZero: number;
  blockSize?: number;
}

/** The common affine grid (METHODS.md), with scales rounded to fp16 and v1's minimum zero point. */
export function fitGrid(w: ArrayLike<number>, bits: number, sym: boolean, minZero: number): Grid {
  const maxq = 2 ** bits - 1;
  let xmin = 0;
  let xmax = 0;
  for (let i = 0; i < w.length; i++) {
    xmin = Math.min(xmin, w[i]!);
    xmax = Math.max(xmax, w[i]!);
  }
  const scaleOf = (lo: number, hi: number) => {
    const s = (hi - lo) / maxq;
    return roundToF16(s > 0 ? s : 1e-5);
  };
  if (sym) {
    const amax = Math.max(-xmin, xmax);
    return { scale: scaleOf(-amax, amax), zero: (maxq + 1) / 2 };
  }
  const scale = scaleOf(xmin, xmax);
  const zero = Math.min(Math.max(roundHalfEven(-xmin / scale), 0), maxq);
  if (zero >= minZero) return { scale, zero };
  // v1's minimum zero point: zero at minZero, step wide enough to still cover [xmin, xmax].
  return { scale: roundToF16(Math.max(xmax / (maxq - minZero), -xmin / minZero)), zero: minZero };
}

export function quantizeValue(w: number, g: Grid, maxq: number): number {
  return Math.min(Math.max(roundHalfEven(w / g.scale) + g.zero, 0), maxq);
}

/** Lower Cholesky factor of a symmetric positive definite A [n, n]; null when a pivot is not positive. */
export function cholesky(A: Float64Array, n: number): Float64Array | null {
  const L = new Float64Array(n * n);
  for (let j = 0; j < n; j++) {
    let d = A[j * n + j]!;
    for (let k = 0; k < j; k++) d -= L[j * n + k]! ** 2;
    if (!(d > 0)) return null;
    L[j * n + j] = Math.sqrt(d);
    for (let i = j + 1; i < n; i++) {
      let s = A[i * n + j]!;
      for (let k = 0; k < j; k++) s -= L[i * n + k]! * L[j * n + k]!;
      L[i * n + j] = s / L[j * n + j]!;
    }
  }
  return L;
}

/** A^-1 from its lower Cholesky factor: solve L Y = I, then A^-1 = Y^T Y. */
function inverseFromCholesky(L: Float64Array, n: number): Float64Array {
  const Y = new Float64Array(n * n); // L^-1, lower
  for (let c = 0; c < n; c++) {
    for (let i = c; i < n; i++) {
      let s = i === c ? 1 : 0;
      for (let k = c; k < i; k++) s -= L[i * n + k]! * Y[k * n + c]!;
      Y[i * n + c] = s / L[i * n + i]!;
    }
  }
  const inv = new Float64Array(n * n);
  for (let i = 0; i < n; i++)
    for (let j = 0; j < n; j++) {
      let s = 0;
      for (let k = Math.max(i, j); k < n; k++) s += Y[k * n + i]! * Y[k * n + j]!;
      inv[i * n + j] = s;
    }
  return inv;
}

export interface RefResult {
  q: Uint8Array; // [N, K], original order
  scales: Float64Array; // [G, N]
  zeros: Int32Array; // [G, N]
  gIdx: Int32Array;
  loss: number;
  dampPercent: number;
}

/** GPTQ in float64. W [N, K] and H [K, K] are not modified. */
export function gptqReference(
  W0: ArrayLike<number>,
  H0: ArrayLike<number>,
  N: number,
  K: number,
  o: RefOptions,
): RefResult {
  const maxq = 2 ** o.bits - 1;
  const gs = o.groupSize === -1 || o.groupSize >= K ? K : o.groupSize;
  const G = Math.ceil(K / gs);
  const B = o.blockSize ?? 128;
  const { W, H } = withDeadInputs(W0, H0, N, K);

  const scales = new Float64Array(G * N);
  const zeros = new Int32Array(G * N);
  const staticGrids: Grid[] = [];
  if (o.staticGroups)
    for (let g = 0; g < G; g++)
      for (let n = 0; n < N; n++) {
        const grid = fitGrid(W.subarray(n * K + g * gs, n * K + Math.min(K, (g + 1) * gs)), o.bits, o.sym, o.minZero);
        staticGrids[g * N + n] = grid;
        scales[g * N + n] = grid.scale;
        zeros[g * N + n] = grid.zero;
      }

  // Act-order: columns by descending diag(H) (ties keep their order); dampening raised x10 while the
  // factorization fails (up to 3 times).
  const { perm, Wp, Hp } = permuted(W, H, N, K, o.actOrder);
  const { factor: L, percent } = dampenedFactor(Hp, K, o.damp, cholesky);
  // U: upper Cholesky factor of H^-1 (H^-1 = U^T U), i.e. the transpose of chol(H^-1).
  const Linv = cholesky(inverseFromCholesky(L, K), K)!;
  const U = (i: number, j: number) => Linv[j * K + i]!;

  // The sweep, column by column, unblocked.
  const Q = new Uint8Array(N * K);
  const blockStartW = new Float64Array(N * K);
  const grids: Grid[] = new Array<Grid>(N);
  let loss = 0;
  for (let col = 0; col < K; col++) {
    if (col % B === 0) blockStartW.set(Wp);
    for (let n = 0; n < N; n++) {
      if (o.staticGroups) {
        grids[n] = staticGrids[Math.floor(perm[col]! / gs) * N + n]!;
      } else if (col % gs === 0) {
        const grid = fitGrid(
          blockStartW.subarray(n * K + col, n * K + Math.min(K, col + gs)),
          o.bits,
          o.sym,
          o.minZero,
        );
        grids[n] = grid;
        scales[(col / gs) * N + n] = grid.scale;
        zeros[(col / gs) * N + n] = grid.zero;
      }
      const g = grids[n]!;
      const w = Wp[n * K + col]!;
      const q = quantizeValue(w, g, maxq);
      Q[n * K + col] = q;
      const err = (w - g.scale * (q - g.zero)) / U(col, col);
      loss += (err * err) / 2;
      for (let j = col + 1; j < K; j++) Wp[n * K + j] -= err * U(col, j);
    }
  }

  const q = new Uint8Array(N * K);
  for (let n = 0; n < N; n++) for (let p = 0; p < K; p++) q[n * K + perm[p]!] = Q[n * K + p]!;
  const gIdx = new Int32Array(K);
  for (let p = 0; p < K; p++) {
    const k = perm[p]!;
    gIdx[k] = o.actOrder && !o.staticGroups ? Math.floor(p / gs) : Math.floor(k / gs);
  }
  return { q, scales, zeros, gIdx, loss, dampPercent: percent };
}

/** Dequantized weights [N, K] from codes, per-group grids and g_idx. */
export function dequantize(
  q: Uint8Array,
  scales: ArrayLike<number>,
  zeros: ArrayLike<number>,
  gIdx: Int32Array,
  N: number,
  K: number,
): Float64Array {
  const out = new Float64Array(N * K);
  for (let n = 0; n < N; n++)
    for (let k = 0; k < K; k++) {
      const g = gIdx[k]!;
      out[n * K + k] = scales[g * N + n]! * (q[n * K + k]! - zeros[g * N + n]!);
    }
  return out;
}

/** Mean over the tokens of X [T, K] of ||(W - What) x||^2. */
export function outputError(
  W: ArrayLike<number>,
  What: ArrayLike<number>,
  X: ArrayLike<number>,
  N: number,
  K: number,
  T: number,
): number {
  let total = 0;
  const D = new Float64Array(N * K);
  for (let i = 0; i < N * K; i++) D[i] = W[i]! - What[i]!;
  for (let t = 0; t < T; t++)
    for (let n = 0; n < N; n++) {
      let s = 0;
      for (let k = 0; k < K; k++) s += D[n * K + k]! * X[t * K + k]!;
      total += s * s;
    }
  return total / T;
}

/** Correlated random inputs X [T, K]: mixed Gaussian factors, with a few loud channels. */
export function correlatedInputs(rng: Rng, T: number, K: number, factors = 16): Float32Array {
  const mix = new Float64Array(factors * K);
  for (let i = 0; i < mix.length; i++) mix[i] = rng.normal();
  const loud = new Float64Array(K).map(() => (rng.uniform() < 0.05 ? 5 + 10 * rng.uniform() : 1));
  const X = new Float32Array(T * K);
  for (let t = 0; t < T; t++) {
    const z = Array.from({ length: factors }, () => rng.normal());
    for (let k = 0; k < K; k++) {
      let s = 0.3 * rng.normal();
      for (let f = 0; f < factors; f++) s += z[f]! * mix[f * K + k]!;
      X[t * K + k] = s * loud[k]! * 0.3;
    }
  }
  return X;
}

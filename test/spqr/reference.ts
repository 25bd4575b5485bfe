/**
 * A plain float64 SpQR, written from docs/SPQR.md and independently of the native code: the
 * textbook sweep with no blocking (every column's error reaches all later columns at once), the
 * inverse Hessian factor formed explicitly (chol(H) → H⁻¹ → chol(H⁻¹)), leave-one-out outlier
 * candidates, bilevel statistics with fp16 offsets and steps, the cumulative outlier budget. Plus an
 * independent decoder of the stored layout (bit streams, CSR) and the float64 product.
 */
import type { SpqrWeights } from '../../src/weights/types.js';
import { f16Bits, f16Value, roundHalfEven } from '../helpers/reference.js';
import { cholesky } from '../gptq/reference.js';
import { dampenedFactor, permuted, withDeadInputs } from '../helpers/sweep-ref.js';

export interface SpqrRefOptions {
  bits: number;
  beta1: number;
  beta2: number;
  statBits: number;
  tau: number; // Infinity: no outliers
  budget: number;
  damp: number;
  actOrder: boolean;
  /** docs/SPQR.md "grid search" (default true) */
  gridSearch?: boolean;
  /** docs/SPQR.md "second-level search" (default: gridSearch) */
  statSearch?: boolean;
}

export interface SpqrRefResult {
  codes: Uint8Array; // [N, K] sweep order
  scaleCodes: Uint8Array; // [N, G]
  zeroCodes: Uint8Array;
  scaleStats: Uint16Array; // [G, NB, 2]
  zeroStats: Uint16Array;
  perm: Int32Array;
  outliers: Map<number, number>; // n * K + p → fp16 bits of the residual
  loss: number;
  typical: number;
  dampPercent: number;
  What: Float64Array; // [N, K] original order: the reconstruction the sweep used
}

/** Upper U with (H)⁻¹ = Uᵀ U, via chol(H) → H⁻¹ → chol(H⁻¹). */
function inverseFactor(H: Float64Array, K: number): Float64Array | null {
  const L = cholesky(H, K);
  if (!L) return null;
  const Y = new Float64Array(K * K); // L⁻¹
  for (let c = 0; c < K; c++)
    for (let i = c; i < K; i++) {
      let s = i === c ? 1 : 0;
      for (let k = c; k < i; k++) s -= L[i * K + k]! * Y[k * K + c]!;
      Y[i * K + c] = s / L[i * K + i]!;
    }
  const inv = new Float64Array(K * K);
  for (let i = 0; i < K; i++)
    for (let j = 0; j < K; j++) {
      let s = 0;
      for (let k = Math.max(i, j); k < K; k++) s += Y[k * K + i]! * Y[k * K + j]!;
      inv[i * K + j] = s;
    }
  const C = cholesky(inv, K)!; // lower; U = Cᵀ
  const U = new Float64Array(K * K);
  for (let i = 0; i < K; i++) for (let j = i; j < K; j++) U[i * K + j] = C[j * K + i]!;
  return U;
}

/** Min–max grid with a real zero; a (nearly) constant range is widened to include 0. */
function realGrid(values: number[], maxq: number): { scale: number; zero: number } {
  let lo = Math.min(...values);
  let hi = Math.max(...values);
  if (hi - lo <= 1e-3 * Math.max(Math.abs(lo), Math.abs(hi))) {
    lo = Math.min(lo, 0);
    hi = Math.max(hi, 0);
  }
  const scale = Math.max((hi - lo) / maxq, 1e-7);
  return { scale, zero: -lo / scale };
}

function quantize(w: number, scale: number, zero: number, maxq: number): { q: number; w: number } {
  const q = Math.min(Math.max(roundHalfEven(w / scale + zero), 0), maxq);
  return { q, w: scale * (q - zero) };
}

/** The search takes a candidate only if it lowers the error by more than 1e-4 of it (docs/SPQR.md). */
const better = (e: number, best: number) => e < best * (1 - 1e-4);

/** Σ c[i] (w[i] − ŵ[i])²: a group's scaled squared error on a grid. */
function gridError(w: number[], c: number[], scale: number, zero: number, maxq: number): number {
  let e = 0;
  for (let i = 0; i < w.length; i++) e += c[i]! * (w[i]! - quantize(w[i]!, scale, zero, maxq).w) ** 2;
  return e;
}

/**
 * The searched grid (docs/SPQR.md): the best of the ranges [lo + a·0.03·R, hi − b·0.03·R], a, b in
 * 0..12 (a = b = 0 is min–max), then up to 4 rounds of weighted least squares of w on its codes,
 * each kept only if it lowers the error.
 */
function searchGrid(w: number[], c: number[], maxq: number): { scale: number; zero: number } {
  const mm = realGrid(w, maxq);
  let best = mm;
  let bestE = gridError(w, c, mm.scale, mm.zero, maxq);
  const lo = -mm.zero * mm.scale;
  const range = mm.scale * maxq;
  for (let a = 0; a <= 12; a++)
    for (let b = 0; b <= 12; b++) {
      const l = lo + a * 0.03 * range;
      const h = lo + range - b * 0.03 * range;
      const scale = Math.max((h - l) / maxq, 1e-7);
      const e = gridError(w, c, scale, -l / scale, maxq);
      if (better(e, bestE)) [best, bestE] = [{ scale, zero: -l / scale }, e];
    }
  for (let round = 0; round < 4; round++) {
    let [sc, sq, sw, sqq, sqw] = [0, 0, 0, 0, 0];
    w.forEach((x, i) => {
      const q = quantize(x, best.scale, best.zero, maxq).q;
      sc += c[i]!;
      sq += c[i]! * q;
      sw += c[i]! * x;
      sqq += c[i]! * q * q;
      sqw += c[i]! * q * x;
    });
    const det = sc * sqq - sq * sq;
    if (!(det > 1e-12 * sc * sqq)) break;
    const scale = (sc * sqw - sq * sw) / det;
    if (!(scale >= 1e-7)) break;
    const zero = -(sw - scale * sq) / sc / scale;
    const e = gridError(w, c, scale, zero, maxq);
    if (!better(e, bestE)) break;
    [best, bestE] = [{ scale, zero }, e];
  }
  return best;
}

/** The fp16 (offset, step) of a statBits grid from lo to hi. */
function statGrid(lo: number, hi: number, statBits: number): { off: number; step: number } {
  const clamp16 = (x: number) => f16Bits(Math.min(Math.max(x, -65504), 65504));
  const off = clamp16(lo);
  const step = hi > f16Value(off) ? clamp16((hi - f16Value(off)) / (2 ** statBits - 1)) : 0;
  return { off, step };
}

/** The nearest code of v on a grid. */
function statCode(v: number, g: { off: number; step: number }, statBits: number): number {
  const s = f16Value(g.step);
  return s > 0 ? Math.min(Math.max(roundHalfEven((v - f16Value(g.off)) / s), 0), 2 ** statBits - 1) : 0;
}

/** Codes and fp16 (offset, step) of values on a statBits min–max grid. */
function quantizeStats(v: number[], statBits: number): { codes: number[]; off: number; step: number } {
  const g = statGrid(Math.min(...v), Math.max(...v), statBits);
  return { codes: v.map((x) => statCode(x, g, statBits)), ...g };
}

export function spqrReference(
  W0: ArrayLike<number>,
  H0: ArrayLike<number>,
  N: number,
  K: number,
  o: SpqrRefOptions,
): SpqrRefResult {
  const maxq = 2 ** o.bits - 1;
  const G = Math.ceil(K / o.beta1);
  const NB = Math.ceil(N / o.beta2);
  const { W, H } = withDeadInputs(W0, H0, N, K);
  const { perm, Wp, Hp } = permuted(W, H, N, K, o.actOrder);
  const { factor: U, percent } = dampenedFactor(Hp, K, o.damp, inverseFactor);
  const d = (p: number) => U[p * K + p]!;

  let typical = 0;
  for (let p = 0; p < K; p++) {
    let mean = 0;
    for (let n = 0; n < N; n++) mean += Wp[n * K + p]!;
    mean /= N;
    let sq = 0;
    for (let n = 0; n < N; n++) sq += (Wp[n * K + p]! - mean) ** 2;
    typical += sq / N / d(p) ** 2;
  }
  typical /= K;
  const T = o.tau * typical;
  const outliersOn = Number.isFinite(o.tau);

  const codes = new Uint8Array(N * K);
  const scaleCodes = new Uint8Array(N * G);
  const zeroCodes = new Uint8Array(N * G);
  const scaleStats = new Uint16Array(G * NB * 2);
  const zeroStats = new Uint16Array(G * NB * 2);
  const outliers = new Map<number, number>();
  const WhatP = new Float64Array(N * K);
  const scale = new Float64Array(N);
  const zero = new Float64Array(N);
  let loss = 0;
  let used = 0;
  let pending = 0;
  const allowance = (g: number) => Math.floor(o.budget * N * Math.min(K, (g + 1) * o.beta1));
  const reserved = new Int32Array(N).fill(-1);
  for (let p = 0; p < K; p++) {
    const g = Math.floor(p / o.beta1);
    if (p % o.beta1 === 0) {
      const len = Math.min(o.beta1, K - p);
      const rows = Array.from({ length: N }, (_, n) => Array.from(Wp.subarray(n * K + p, n * K + p + len)));
      // leave-one-out candidates: per row the weight with the largest error drop, if over T
      reserved.fill(-1);
      pending = 0;
      if (outliersOn) {
        const cands: { n: number; i: number; drop: number }[] = [];
        rows.forEach((w, n) => {
          const err = (grid: { scale: number; zero: number }, skip: number) => {
            let e = 0;
            for (let j = 0; j < len; j++)
              if (j !== skip) e += (w[j]! - quantize(w[j]!, grid.scale, grid.zero, maxq).w) ** 2 / d(p + j) ** 2;
            return e;
          };
          const base = err(realGrid(w, maxq), -1);
          let best = -1;
          let bestDrop = T;
          for (let i = 0; i < len; i++) {
            const drop =
              base -
              err(
                realGrid(
                  w.filter((_, j) => j !== i),
                  maxq,
                ),
                i,
              );
            if (drop > bestDrop) [best, bestDrop] = [i, drop];
          }
          if (best >= 0) cands.push({ n, i: best, drop: bestDrop });
        });
        const room = Math.max(0, allowance(g) - used);
        const kept = [...cands].sort((a, b) => b.drop - a.drop || a.n - b.n).slice(0, room);
        for (const c of kept) reserved[c.n] = p + c.i;
        pending = kept.length;
      }
      // each row's fitted weights (without its reserved one) and their error weights 1/d²
      const fitted = rows.map((w, n) => w.filter((_, i) => p + i !== reserved[n]));
      const weightsOf = rows.map((w, n) => w.map((_, i) => 1 / d(p + i) ** 2).filter((_, i) => p + i !== reserved[n]));
      const minmax = fitted.map((w) => realGrid(w, maxq));
      const searched = o.gridSearch === false ? null : fitted.map((w, n) => searchGrid(w, weightsOf[n]!, maxq));
      for (let b = 0; b < NB; b++) {
        const n0 = b * o.beta2;
        const n1 = Math.min(N, n0 + o.beta2);
        const dec = (st: { off: number; step: number }, code: number) =>
          Math.fround(f16Value(st.off) + Math.fround(f16Value(st.step) * code));
        // a row's best (scale code, zero code) under grids (s, z), starting from (s0, z0): every pair
        // within 4 of them (all at <= 3 bits); the start unless another is better
        const maxc = 2 ** o.statBits - 1;
        const radius = o.statBits <= 3 ? maxc : 4;
        type Grid = { off: number; step: number };
        const rowCodes = (n: number, s: Grid, z: Grid, s0: number, z0: number) => {
          const err = (sc: number, zc: number) => gridError(fitted[n]!, weightsOf[n]!, dec(s, sc), dec(z, zc), maxq);
          let best = { e: err(s0, z0), sc: s0, zc: z0 };
          for (let sc = Math.max(0, s0 - radius); sc <= Math.min(maxc, s0 + radius); sc++)
            for (let zc = Math.max(0, z0 - radius); zc <= Math.min(maxc, z0 + radius); zc++) {
              const e = err(sc, zc);
              if (better(e, best.e)) best = { e, sc, zc };
            }
          return best;
        };
        // the block's second-level grids from a set of fits, and each row's codes under them
        const level2 = (fits: { scale: number; zero: number }[]) => {
          const s = quantizeStats(
            fits.slice(n0, n1).map((x) => x.scale),
            o.statBits,
          );
          const z = quantizeStats(
            fits.slice(n0, n1).map((x) => x.zero),
            o.statBits,
          );
          let total = 0;
          if (searched) {
            for (let n = n0; n < n1; n++) {
              const r = rowCodes(n, s, z, s.codes[n - n0]!, z.codes[n - n0]!);
              [s.codes[n - n0], z.codes[n - n0]] = [r.sc, r.zc];
              total += r.e;
            }
          }
          return { s, z, total };
        };
        const a = level2(minmax);
        let best = searched ? [a, level2(searched)].reduce((x, y) => (better(y.total, x.total) ? y : x)) : a;
        if (searched && (o.statSearch ?? true)) best = searchSecondLevel(best, searched.slice(n0, n1));
        // docs/SPQR.md: per component (scales, then zeros), every shrunken range of the rows' searched
        // fits, then the least-squares (offset, step) of the fits on their codes; each scored by the
        // block's total error with every row re-taking its best code pair; up to 2 rounds
        function searchSecondLevel(cur: ReturnType<typeof level2>, fits: { scale: number; zero: number }[]) {
          let state = { s: { ...cur.s }, z: { ...cur.z }, total: cur.total };
          const score = (comp: 0 | 1, g: Grid) => {
            const s = comp === 0 ? { ...g, codes: [] as number[] } : { ...state.s, codes: [] as number[] };
            const z = comp === 1 ? { ...g, codes: [] as number[] } : { ...state.z, codes: [] as number[] };
            let total = 0;
            for (let n = n0; n < n1; n++) {
              const s0 = comp === 0 ? statCode(fits[n - n0]!.scale, g, o.statBits) : state.s.codes[n - n0]!;
              const z0 = comp === 1 ? statCode(fits[n - n0]!.zero, g, o.statBits) : state.z.codes[n - n0]!;
              const r = rowCodes(n, s, z, s0, z0);
              s.codes.push(r.sc);
              z.codes.push(r.zc);
              total += r.e;
            }
            return { s, z, total };
          };
          const usable = (comp: 0 | 1, g: Grid) => comp === 1 || f16Value(g.off) >= 1e-7;
          for (let round = 0; round < 2; round++) {
            const start = state.total;
            for (const comp of [0, 1] as const) {
              const v = fits.map((f) => (comp === 0 ? f.scale : f.zero));
              const [lo, hi] = [Math.min(...v), Math.max(...v)];
              for (let a = 0; a <= 6; a++)
                for (let b = 0; b <= 6; b++) {
                  const [l, h] = [lo + a * 0.05 * (hi - lo), hi - b * 0.05 * (hi - lo)];
                  if (h < l) continue;
                  const g = statGrid(l, h, o.statBits);
                  if (!usable(comp, g)) continue;
                  const t = score(comp, g);
                  if (better(t.total, state.total)) state = t;
                }
              const codes = comp === 0 ? state.s.codes : state.z.codes;
              const m = codes.length;
              const [sc, sf] = [codes.reduce((x, y) => x + y, 0), v.reduce((x, y) => x + y, 0)];
              const scc = codes.reduce((x, c) => x + c * c, 0);
              const scf = codes.reduce((x, c, i) => x + c * v[i]!, 0);
              const det = m * scc - sc * sc;
              if (det > 0) {
                const step = (m * scf - sc * sf) / det;
                const off = (sf - step * sc) / m;
                if (step > 0 && Math.abs(off) <= 65504 && step <= 65504) {
                  const g = { off: f16Bits(off), step: f16Bits(step) };
                  if (f16Value(g.step) > 0 && usable(comp, g)) {
                    const t = score(comp, g);
                    if (better(t.total, state.total)) state = t;
                  }
                }
              }
            }
            if (!better(state.total, start)) break;
          }
          return state;
        }
        scaleStats.set([best.s.off, best.s.step], (g * NB + b) * 2);
        zeroStats.set([best.z.off, best.z.step], (g * NB + b) * 2);
        for (let n = n0; n < n1; n++) {
          scaleCodes[n * G + g] = best.s.codes[n - n0]!;
          zeroCodes[n * G + g] = best.z.codes[n - n0]!;
          scale[n] = dec(best.s, best.s.codes[n - n0]!);
          zero[n] = dec(best.z, best.z.codes[n - n0]!);
        }
      }
    }
    const col = Array.from({ length: N }, (_, n) => {
      const r = quantize(Wp[n * K + p]!, scale[n]!, zero[n]!, maxq);
      return { n, q: r.q, w: r.w, e2: ((Wp[n * K + p]! - r.w) / d(p)) ** 2 };
    });
    const chosen = new Set<number>();
    if (outliersOn) {
      for (const c of col) if (reserved[c.n] === p) chosen.add(c.n);
      used += chosen.size;
      pending -= chosen.size;
      const room = Math.max(0, allowance(g) - used - pending);
      const cands = col.filter((c) => reserved[c.n] !== p && c.e2 > T).sort((a, b) => b.e2 - a.e2 || a.n - b.n);
      for (const c of cands.slice(0, room)) chosen.add(c.n);
      used += Math.min(room, cands.length);
    }
    for (const c of col) {
      const w = Wp[c.n * K + p]!;
      let wHat = c.w;
      if (chosen.has(c.n)) {
        const r = f16Bits(w - wHat);
        outliers.set(c.n * K + p, r);
        wHat += f16Value(r);
      }
      codes[c.n * K + p] = c.q;
      WhatP[c.n * K + p] = wHat;
      const err = (w - wHat) / d(p);
      loss += (err * err) / 2;
      for (let j = p + 1; j < K; j++) Wp[c.n * K + j] -= err * U[p * K + j]!;
    }
  }
  const What = new Float64Array(N * K);
  for (let n = 0; n < N; n++) for (let p = 0; p < K; p++) What[n * K + perm[p]!] = WhatP[n * K + p]!;
  return {
    codes,
    scaleCodes,
    zeroCodes,
    scaleStats,
    zeroStats,
    perm,
    outliers,
    loss,
    typical,
    dampPercent: percent,
    What,
  };
}

// ------------------------------------------------------------------------- the stored layout

/** Value i of an LSB-first bit stream of `bits`-bit values. */
export function bitstreamGet(stream: Uint8Array, i: number, bits: number): number {
  let v = 0;
  for (let b = 0; b < bits; b++) {
    const j = i * bits + b;
    v |= ((stream[j >> 3]! >> (j & 7)) & 1) << b;
  }
  return v;
}

/** Packs values into an LSB-first bit stream. */
export function bitstreamPack(values: ArrayLike<number>, bits: number): Uint8Array {
  const out = new Uint8Array(Math.ceil((values.length * bits) / 8));
  for (let i = 0; i < values.length; i++)
    for (let b = 0; b < bits; b++) {
      const j = i * bits + b;
      if ((values[i]! >> b) & 1) out[j >> 3]! |= 1 << (j & 7);
    }
  return out;
}

/** The stored layout: the library's own type (the reference decodes it independently). */
export type SpqrLayout = SpqrWeights;

/** Every array of the layout, for tests that compare two copies field by field. */
export const SPQR_ARRAYS = [
  'qweight',
  'scaleCodes',
  'zeroCodes',
  'scaleStats',
  'zeroStats',
  'perm',
  'outlierRowptr',
  'outlierCols',
  'outlierValues',
] as const satisfies readonly (keyof SpqrWeights)[];

/**
 * W [N, K] in original column order, decoded from the stored layout in float64 (statistics in f32, as
 * the format says). With `magnitude`, also the size of what each weight sums: |s·(q − z)| plus its
 * outlier's |value|, which bounds the rounding of an f32 decoder where the two cancel.
 */
export function decodeSpqrRef(W: SpqrLayout, magnitude?: Float64Array): Float64Array {
  const { N, K } = W;
  const G = Math.ceil(K / W.beta1);
  const NB = Math.ceil(N / W.beta2);
  const f32 = Math.fround;
  const out = new Float64Array(N * K);
  for (let n = 0; n < N; n++) {
    const b = Math.floor(n / W.beta2);
    for (let p = 0; p < K; p++) {
      const g = Math.floor(p / W.beta1);
      const at = (g * NB + b) * 2;
      const s = f32(
        f16Value(W.scaleStats[at]!) +
          f32(f16Value(W.scaleStats[at + 1]!) * bitstreamGet(W.scaleCodes, n * G + g, W.statBits)),
      );
      const z = f32(
        f16Value(W.zeroStats[at]!) +
          f32(f16Value(W.zeroStats[at + 1]!) * bitstreamGet(W.zeroCodes, n * G + g, W.statBits)),
      );
      const i = n * K + (W.perm ? W.perm[p]! : p);
      out[i] = s * (bitstreamGet(W.qweight, n * K + p, W.bits) - z);
      if (magnitude) magnitude[i] = Math.abs(out[i]!);
    }
    for (let e = W.outlierRowptr[n]!; e < W.outlierRowptr[n + 1]!; e++) {
      const p = W.outlierCols[e]!;
      const i = n * K + (W.perm ? W.perm[p]! : p);
      const value = f16Value(W.outlierValues[e]!);
      out[i]! += value;
      if (magnitude) magnitude[i]! += Math.abs(value);
    }
  }
  return out;
}

/** Random SpQR weights with planted outliers, built directly in the layout (for kernel and format tests). */
export function randomSpqrLayout(
  rng: { next(): number; normal(): number; int(n: number): number },
  o: {
    N: number;
    K: number;
    bits: number;
    statBits?: number;
    beta1?: number;
    beta2?: number;
    outlierRate?: number;
    perm?: boolean;
  },
): SpqrLayout {
  const { N, K, bits } = o;
  const statBits = o.statBits ?? 3;
  const beta1 = o.beta1 ?? 16;
  const beta2 = o.beta2 ?? 16;
  const G = Math.ceil(K / beta1);
  const NB = Math.ceil(N / beta2);
  const codes = Array.from({ length: N * K }, () => rng.int(2 ** bits));
  const sc = Array.from({ length: N * G }, () => rng.int(2 ** statBits));
  const zc = Array.from({ length: N * G }, () => rng.int(2 ** statBits));
  const scaleStats = new Uint16Array(G * NB * 2);
  const zeroStats = new Uint16Array(G * NB * 2);
  for (let i = 0; i < G * NB; i++) {
    scaleStats[2 * i] = f16Bits(0.005 + 0.02 * rng.next());
    scaleStats[2 * i + 1] = f16Bits(0.003 * rng.next());
    zeroStats[2 * i] = f16Bits(-1 + 2 * rng.next());
    zeroStats[2 * i + 1] = f16Bits(2 * rng.next());
  }
  let perm: Int32Array | undefined;
  if (o.perm ?? true) {
    perm = Int32Array.from({ length: K }, (_, i) => i);
    for (let i = K - 1; i > 0; i--) {
      const j = rng.int(i + 1);
      [perm[i], perm[j]] = [perm[j]!, perm[i]!];
    }
  }
  const rowptr = new Int32Array(N + 1);
  const cols: number[] = [];
  const values: number[] = [];
  const rate = o.outlierRate ?? 0.01;
  for (let n = 0; n < N; n++) {
    for (let p = 0; p < K; p++)
      if (rng.next() < rate) {
        cols.push(p);
        values.push(f16Bits(rng.normal() * 2));
      }
    rowptr[n + 1] = cols.length;
  }
  return {
    bits,
    statBits,
    N,
    K,
    beta1,
    beta2,
    qweight: bitstreamPack(codes, bits),
    scaleCodes: bitstreamPack(sc, statBits),
    zeroCodes: bitstreamPack(zc, statBits),
    scaleStats,
    zeroStats,
    perm,
    outlierRowptr: rowptr,
    outlierCols: Int32Array.from(cols),
    outlierValues: Uint16Array.from(values),
  };
}

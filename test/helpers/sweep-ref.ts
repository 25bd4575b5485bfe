/**
 * The float64 steps GPTQ's and SpQR's references (test/gptq/reference.ts, test/spqr/reference.ts)
 * take before their column sweeps, in the order of IST-DASLab's gptq.py and SpQR: dead inputs, the
 * act-order permutation, the dampened factorization of the permuted Hessian.
 */

/** Copies of W [N, K] and H [K, K] with every dead input (diag(H) = 0) given H_ii = 1 and a zero weight column. */
export function withDeadInputs(
  W0: ArrayLike<number>,
  H0: ArrayLike<number>,
  N: number,
  K: number,
): { W: Float64Array; H: Float64Array } {
  const W = Float64Array.from(W0);
  const H = Float64Array.from(H0);
  for (let i = 0; i < K; i++)
    if (H[i * K + i] === 0) {
      H[i * K + i] = 1;
      for (let n = 0; n < N; n++) W[n * K + i] = 0;
    }
  return { W, H };
}

/**
 * The column order (by descending diag(H), ties in their order, with act-order; else the identity)
 * and W, H permuted into it: Wp[n, p] = W[n, perm[p]], Hp[a, b] = H[perm[a], perm[b]].
 */
export function permuted(
  W: Float64Array,
  H: Float64Array,
  N: number,
  K: number,
  actOrder: boolean,
): { perm: Int32Array; Wp: Float64Array; Hp: Float64Array } {
  const perm = Int32Array.from({ length: K }, (_, i) => i);
  if (actOrder) perm.sort((a, b) => H[b * K + b]! - H[a * K + a]! || a - b);
  const Wp = new Float64Array(N * K);
  for (let n = 0; n < N; n++) for (let p = 0; p < K; p++) Wp[n * K + p] = W[n * K + perm[p]!]!;
  const Hp = new Float64Array(K * K);
  for (let a = 0; a < K; a++) for (let b = 0; b < K; b++) Hp[a * K + b] = H[perm[a]! * K + perm[b]!]!;
  return { perm, Wp, Hp };
}

/**
 * `factor` of Hp + percent · mean(diag Hp) · I, the percent starting at `damp` and raised ×10 (0 → 0.01)
 * while the factorization fails, up to 3 times; throws when it never succeeds.
 */
export function dampenedFactor<T>(
  Hp: Float64Array,
  K: number,
  damp: number,
  factor: (H: Float64Array, K: number) => T | null,
): { factor: T; percent: number } {
  let meanDiag = 0;
  for (let i = 0; i < K; i++) meanDiag += Hp[i * K + i]!;
  meanDiag /= K;
  let percent = damp;
  for (let attempt = 0; attempt <= 3; attempt++) {
    const Hd = Float64Array.from(Hp);
    for (let i = 0; i < K; i++) Hd[i * K + i] += percent * meanDiag;
    const f = factor(Hd, K);
    if (f) return { factor: f, percent };
    percent = percent > 0 ? percent * 10 : 0.01;
  }
  throw new Error('reference: Hessian singular');
}

/**
 * Random test data from a seeded PRNG. Draw the seed at random (randomSeed()) so each run sees fresh
 * data, and put `rng.seed` in failure messages so a failing case can be replayed.
 */

/** A fresh seed for a test run. */
export function randomSeed(): number {
  return Math.floor(Math.random() * 2 ** 32) >>> 0;
}

/** A small, fast, seeded generator (mulberry32) with the draws tests need. */
export class Rng {
  readonly seed: number;
  private state: number;
  private spare: number | undefined;

  constructor(seed: number = randomSeed()) {
    this.seed = seed >>> 0;
    this.state = this.seed;
  }

  /** Uniform in [0, 1). */
  next(): number {
    this.state = (this.state + 0x6d2b79f5) >>> 0;
    let t = this.state;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  }

  /** Uniform in [lo, hi). */
  uniform(lo = 0, hi = 1): number {
    return lo + (hi - lo) * this.next();
  }

  /** Integer in [0, n). */
  int(n: number): number {
    return Math.floor(this.next() * n);
  }

  /** Standard normal (Box–Muller). */
  normal(): number {
    if (this.spare !== undefined) {
      const s = this.spare;
      this.spare = undefined;
      return s;
    }
    let u = 0;
    while (u === 0) u = this.next();
    const v = this.next();
    const r = Math.sqrt(-2 * Math.log(u));
    this.spare = r * Math.sin(2 * Math.PI * v);
    return r * Math.cos(2 * Math.PI * v);
  }

  /** A uniformly random 32-bit pattern. */
  uint32(): number {
    return Math.floor(this.next() * 2 ** 32) >>> 0;
  }
}

export interface MatrixOptions {
  /** 'normal' (default): N(0, scale²); 'uniform': U(-scale, scale); 'positive': |N(0, scale²)| */
  distribution?: 'normal' | 'uniform' | 'positive';
  scale?: number;
  /** fraction of rows scaled up 10× (weight matrices have such outlier channels) */
  outlierRows?: number;
}

/** A random rows × cols row-major f32 matrix. */
export function randomMatrix(rng: Rng, rows: number, cols: number, options: MatrixOptions = {}): Float32Array {
  const { distribution = 'normal', scale = 1, outlierRows = 0 } = options;
  const out = new Float32Array(rows * cols);
  for (let r = 0; r < rows; r++) {
    const rowScale = rng.next() < outlierRows ? 10 * scale : scale;
    for (let c = 0; c < cols; c++) {
      const z = distribution === 'uniform' ? rng.uniform(-1, 1) : rng.normal();
      out[r * cols + c] = (distribution === 'positive' ? Math.abs(z) : z) * rowScale;
    }
  }
  return out;
}

/** Random integers in [0, 2^bits), e.g. quantization codes. */
export function randomCodes(rng: Rng, count: number, bits: number): Uint8Array {
  const out = new Uint8Array(count);
  for (let i = 0; i < count; i++) out[i] = rng.int(2 ** bits);
  return out;
}

/** A uniformly random permutation of 0..n-1 (Fisher–Yates). */
export function randomPermutation(rng: Rng, n: number): Int32Array {
  const p = new Int32Array(n);
  for (let i = 0; i < n; i++) p[i] = i;
  for (let i = n - 1; i > 0; i--) {
    const j = rng.int(i + 1);
    const t = p[i];
    p[i] = p[j];
    p[j] = t;
  }
  return p;
}

/**
 * An act-order style group index: column k belongs to group floor(perm[k] / groupSize) for a random
 * permutation, so every group keeps its size (the last one partial) but the index is non-monotone,
 * as GPTQ with act-order and without static groups produces.
 */
export function shuffledGroupIndex(rng: Rng, K: number, groupSize: number): Int32Array {
  const perm = randomPermutation(rng, K);
  const gIdx = new Int32Array(K);
  for (let k = 0; k < K; k++) gIdx[k] = Math.floor(perm[k] / groupSize);
  return gIdx;
}

/**
 * RTN against the float64 reference of shared METHODS.md (test/helpers/reference.ts): identical
 * scales, zero points and codes, except where the reference sits on an exact rounding tie that the
 * native f32 arithmetic may break the other way (counted, and required to be rare). Random
 * weights with outlier rows, all widths, per-group (partial last group) and per-channel, sym and
 * asym, v1 and v2; then a real linear layer of stories260K, quantized and multiplied.
 */
import { describe, expect, it } from 'vitest';
import { Tensor } from '../../src/tensor.js';
import { packCodes, rtnQuantize, rtnQuantizeCodes, type RtnCodes } from '../../src/quantize/rtn.js';
import { dequantizeWeights, packedMatmul } from '../../src/quantize/packed.js';
import {
  fitGridRef,
  fp16Round,
  groupLayout,
  roundScale,
  packWeightsRef,
  packedMatmulRef,
  quantizeRef,
  relativeError,
  type Bits,
  type GridRef,
} from '../helpers/reference.js';
import { Rng, randomMatrix } from '../helpers/random.js';
import { readSafetensors, dataFile } from '../helpers/data.js';

const BITS: Bits[] = [2, 3, 4, 8];

/** True when x lies within a relative 1e-6 of an fp16 rounding boundary. */
function nearFp16Tie(x: number): boolean {
  return fp16Round(x * (1 + 1e-6)) !== fp16Round(x * (1 - 1e-6));
}

/** True when x lies within 1e-4 of a half-integer (where f32 and f64 rounding may disagree). */
function nearHalf(x: number): boolean {
  return Math.abs(Math.abs(x - Math.floor(x)) - 0.5) < 1e-4;
}

interface Comparison {
  /** groups whose grid differs from the reference at a rounding tie */
  tieGroups: number;
  /** codes that differ by one at a rounding tie */
  tieCodes: number;
  groups: number;
  codes: number;
  /** anything else: must stay empty */
  bad: string[];
}

/** Compares native RTN codes with the float64 reference group by group. */
function compareWithReference(W: Float32Array, c: RtnCodes, sym: boolean, minZero: number): Comparison {
  const { N, K, bits } = c;
  const { groupSize, groups } = groupLayout(K, c.groupSize);
  const maxq = 2 ** bits - 1;
  const out: Comparison = { tieGroups: 0, tieCodes: 0, groups: N * groups, codes: N * K, bad: [] };
  const bad = (s: string) => out.bad.length < 10 && out.bad.push(s);
  if (c.groups !== groups) bad(`groups ${c.groups}, want ${groups}`);
  for (let n = 0; n < N; n++) {
    for (let g = 0; g < groups; g++) {
      const k0 = g * groupSize,
        k1 = Math.min(K, k0 + groupSize);
      const values = Array.from(W.subarray(n * K + k0, n * K + k1));
      const ref = fitGridRef(values, bits, sym, minZero);
      const got: GridRef = { scale: c.scales[g * N + n], zero: c.zeros[g * N + n] };
      const xmin = Math.min(0, ...values),
        xmax = Math.max(0, ...values);
      const raw = sym ? (2 * Math.max(-xmin, xmax)) / maxq : (xmax - xmin) / maxq;
      if (got.scale !== ref.scale || got.zero !== ref.zero) {
        // v1's widened grid has its own raw scale (see fitGridRef)
        const rawWide = minZero > 0 ? Math.max(xmax / (maxq - minZero), -xmin / minZero) : raw;
        // (or the plain zero point sat on a tie between 0, which v1 widens, and 1, which it keeps)
        const tie =
          got.scale !== ref.scale
            ? nearFp16Tie(raw) || nearFp16Tie(rawWide) || nearHalf(-xmin / roundScale(raw))
            : nearHalf(-xmin / ref.scale);
        if (tie) out.tieGroups++;
        else bad(`row ${n} group ${g}: grid ${JSON.stringify(got)}, want ${JSON.stringify(ref)}`);
        continue;
      }
      for (let k = k0; k < k1; k++) {
        const want = quantizeRef(W[n * K + k], ref, bits);
        const q = c.q[n * K + k];
        if (q === want) continue;
        if (Math.abs(q - want) === 1 && nearHalf(W[n * K + k] / ref.scale)) out.tieCodes++;
        else bad(`q[${n}, ${k}] = ${q}, want ${want} (w ${W[n * K + k]}, grid ${JSON.stringify(ref)})`);
      }
    }
  }
  return out;
}

function expectMatches(cmp: Comparison, what: string): void {
  expect(cmp.bad, what).toEqual([]);
  expect(cmp.tieGroups, `${what}: groups off at ties`).toBeLessThanOrEqual(Math.max(1, 0.01 * cmp.groups));
  expect(cmp.tieCodes, `${what}: codes off at ties`).toBeLessThanOrEqual(Math.max(2, 0.001 * cmp.codes));
}

describe.each(BITS)('%i-bit RTN', (bits) => {
  it('matches the float64 reference: groups of 32, 64 and per channel; sym and asym; v1 and v2', async () => {
    const rng = new Rng();
    const N = 37,
      K = 172;
    const W = randomMatrix(rng, N, K, { outlierRows: 0.1, scale: 0.02 });
    const weight = new Tensor('f32', [N, K], W);
    for (const groupSize of [32, 64, -1]) {
      for (const sym of [false, true]) {
        for (const checkpointFormat of ['gptq', 'gptq_v2'] as const) {
          const codes = await rtnQuantizeCodes(weight, { bits, groupSize, sym, checkpointFormat });
          const minZero = !sym && checkpointFormat === 'gptq' ? 1 : 0;
          expectMatches(
            compareWithReference(W, codes, sym, minZero),
            `seed ${rng.seed}, group ${groupSize}, sym ${sym}, ${checkpointFormat}`,
          );
          if (sym) expect(codes.zeros.every((z) => z === 2 ** (bits - 1))).toBe(true);
        }
      }
    }
  });

  it('keeps every weight inside the grid within half a step', async () => {
    const rng = new Rng();
    const N = 20,
      K = 172;
    const W = randomMatrix(rng, N, K);
    const c = await rtnQuantizeCodes(new Tensor('f32', [N, K], W), { bits, groupSize: 32 });
    const maxq = 2 ** bits - 1;
    for (let n = 0; n < N; n++) {
      for (let k = 0; k < K; k++) {
        const i = Math.floor(k / 32) * N + n;
        const s = c.scales[i],
          z = c.zeros[i],
          w = W[n * K + k];
        if (w < -z * s || w > (maxq - z) * s) continue;
        expect(Math.abs(s * (c.q[n * K + k] - z) - w), `seed ${rng.seed} n ${n} k ${k}`).toBeLessThanOrEqual(
          s / 2 + 1e-6 * s,
        );
      }
    }
  });

  it('v1 ("gptq") never uses a zero point of 0: such groups get a grid widened to zero 1', async () => {
    const rng = new Rng();
    const N = 16,
      K = 96;
    // Non-negative weights: every asymmetric group would have its zero point at 0.
    const W = randomMatrix(rng, N, K, { distribution: 'positive' });
    const weight = new Tensor('f32', [N, K], W);
    const v2 = await rtnQuantizeCodes(weight, { bits, groupSize: 32, checkpointFormat: 'gptq_v2' });
    const v1 = await rtnQuantizeCodes(weight, { bits, groupSize: 32, checkpointFormat: 'gptq' });
    expect(
      v2.zeros.some((z) => z === 0),
      `seed ${rng.seed}`,
    ).toBe(true);
    expect(
      v1.zeros.every((z) => z >= 1),
      `seed ${rng.seed}`,
    ).toBe(true);
    expectMatches(compareWithReference(W, v1, false, 1), `seed ${rng.seed}`);
    // The packed v1 weights read back with the zero points that were used.
    const packed = await rtnQuantize(weight, { bits, groupSize: 32 });
    const deq = dequantizeWeights(packed).data;
    for (let n = 0; n < N; n++) {
      for (let k = 0; k < K; k++) {
        const i = Math.floor(k / 32) * N + n;
        expect(deq[n * K + k]).toBe(Math.fround(v1.scales[i] * (v1.q[n * K + k] - v1.zeros[i])));
      }
    }
  });

  it('with the MSE grid search, never does worse than the plain grid', async () => {
    const rng = new Rng();
    const N = 12,
      K = 172;
    const W = randomMatrix(rng, N, K, { outlierRows: 0.2 });
    const weight = new Tensor('f32', [N, K], W);
    const plain = await rtnQuantizeCodes(weight, { bits, groupSize: 32 });
    const mse = await rtnQuantizeCodes(weight, { bits, groupSize: 32, mse: true });
    const err = (c: RtnCodes, n: number, g: number) => {
      let e = 0;
      for (let k = g * 32; k < Math.min(K, (g + 1) * 32); k++) {
        const i = g * N + n;
        e += Math.abs(c.scales[i] * (c.q[n * K + k] - c.zeros[i]) - W[n * K + k]) ** 2.4;
      }
      return e;
    };
    for (let n = 0; n < N; n++) {
      for (let g = 0; g < plain.groups; g++) {
        expect(err(mse, n, g), `seed ${rng.seed} n ${n} g ${g}`).toBeLessThanOrEqual(err(plain, n, g) * (1 + 1e-5));
        // the codes are RTN against the chosen grid
        const grid = { scale: mse.scales[g * N + n], zero: mse.zeros[g * N + n] };
        for (let k = g * 32; k < Math.min(K, (g + 1) * 32); k++) {
          const want = quantizeRef(W[n * K + k], grid, bits);
          const q = mse.q[n * K + k];
          if (q !== want)
            expect(
              Math.abs(q - want) === 1 && nearHalf(W[n * K + k] / grid.scale),
              `seed ${rng.seed} q[${n},${k}]`,
            ).toBe(true);
        }
      }
    }
  });
});

describe('RTN inputs', () => {
  it('rtnQuantize packs its codes exactly as the reference packers would (v1 and v2)', async () => {
    const rng = new Rng();
    for (const bits of BITS) {
      for (const checkpointFormat of ['gptq', 'gptq_v2'] as const) {
        const weight = new Tensor('f32', [33, 172], randomMatrix(rng, 33, 172, { distribution: 'uniform' }));
        const codes = await rtnQuantizeCodes(weight, { bits, groupSize: 32, checkpointFormat });
        const packed = await rtnQuantize(weight, { bits, groupSize: 32, checkpointFormat });
        const want = packWeightsRef({ ...codes, zeroOffset: checkpointFormat === 'gptq' ? 1 : 0 });
        expect(packed, `seed ${rng.seed}, ${bits}-bit ${checkpointFormat}`).toEqual(want);
        expect(packCodes(codes), `seed ${rng.seed}`).toEqual(want);
      }
    }
  });

  it('quantizes f16 and bf16 weights as their f32 values', async () => {
    const rng = new Rng();
    const W = new Tensor('f32', [10, 70], randomMatrix(rng, 10, 70));
    for (const dtype of ['f16', 'bf16'] as const) {
      const w = W.to(dtype);
      const a = await rtnQuantizeCodes(w, { bits: 4, groupSize: 32 });
      const b = await rtnQuantizeCodes(w.toFloat32(), { bits: 4, groupSize: 32 });
      expect(a, `seed ${rng.seed} ${dtype}`).toEqual(b);
    }
  });
});

describe('RTN on real weights (stories260K)', () => {
  const path = dataFile('stories260K-hf/model.safetensors');
  it.each([
    ['model.layers.0.mlp.down_proj.weight', 4, 32], // K = 172: partial last group of 12
    ['model.layers.2.mlp.gate_proj.weight', 3, 32],
    ['model.layers.4.self_attn.q_proj.weight', 2, -1],
    ['model.layers.1.mlp.down_proj.weight', 8, 64],
  ] as const)('%s at %i bits, group %i: codes as the reference, product as float64', async (name, bits, groupSize) => {
    const tensors = readSafetensors(path);
    const t = tensors.get(name);
    expect(t, `${name} in ${path}`).toBeDefined();
    const [N, K] = t!.shape;
    const weight = new Tensor('f32', [N, K], t!.data);
    const codes = await rtnQuantizeCodes(weight, { bits, groupSize });
    expectMatches(compareWithReference(t!.data, codes, false, 1), name);
    const packed = await rtnQuantize(weight, { bits, groupSize });
    // A sane quantization error for the width...
    const deq = dequantizeWeights(packed).data;
    expect(relativeError(deq, t!.data), name).toBeLessThan({ 2: 0.6, 3: 0.3, 4: 0.15, 8: 0.01 }[bits]);
    // ...and the packed product matches float64 on its dequantized weights.
    const rng = new Rng();
    for (const M of [1, 5]) {
      const X = randomMatrix(rng, M, K);
      expect(
        relativeError(await packedMatmul(X, M, packed), packedMatmulRef(X, M, packed)),
        `seed ${rng.seed} M ${M}`,
      ).toBeLessThan(1e-5);
    }
  });
});

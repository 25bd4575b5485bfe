/**
 * Packing into the GPTQ layout against the bit-by-bit reference packer: every bit width, K and N
 * that are and are not multiples of the pack unit, v1 and v2 zero points. Pack → unpack is exact.
 */
import { describe, expect, it } from 'vitest';
import { native } from '../../src/native.js';
import { packedWords } from '../../src/quantize/packed.js';
import {
  packQweightRef,
  packQzerosRef,
  packUnitRef,
  packedWordsRef,
  unpackQweightRef,
  unpackQzerosRef,
  type Bits,
} from '../helpers/reference.js';
import { Rng, randomCodes } from '../helpers/random.js';

const BITS: Bits[] = [2, 3, 4, 8];
const SHAPES: Array<[number, number]> = [
  [100, 172], // N, K: stories260K's hidden 172 is not a multiple of 32
  [3, 7],
  [5, 32],
  [17, 33],
  [64, 256],
  [1, 1],
];

describe.each(BITS)('%i-bit packing', (bits) => {
  it('packs qweight exactly as the reference, and unpacks back to the codes', () => {
    const addon = native();
    const rng = new Rng();
    for (const [N, K] of SHAPES) {
      const what = `seed ${rng.seed}, N ${N} K ${K}`;
      const q = randomCodes(rng, N * K, bits);
      const qweight = addon.packQweight(q, N, K, bits);
      expect(qweight.length, what).toBe(packedWordsRef(bits, K) * N);
      expect(packedWords(bits, K), what).toBe(packedWordsRef(bits, K));
      expect(qweight, what).toEqual(packQweightRef(q, N, K, bits));
      expect(addon.unpackQweight(qweight, N, K, bits), what).toEqual(q);
      expect(unpackQweightRef(qweight, N, K, bits), what).toEqual(q);
    }
  });

  it('pads a partial last unit with zero bits', () => {
    const rng = new Rng();
    const N = 5,
      K = 45;
    const q = randomCodes(rng, N * K, bits);
    const qweight = native().packQweight(q, N, K, bits);
    const padded = Math.ceil(K / packUnitRef(bits).values) * packUnitRef(bits).values;
    const all = unpackQweightRef(qweight, N, padded, bits);
    for (let n = 0; n < N; n++)
      for (let k = K; k < padded; k++) expect(all[n * padded + k], `seed ${rng.seed} n ${n} k ${k}`).toBe(0);
  });

  it('packs qzeros along N: v2 stores the zero point, v1 stores zero − 1; both round-trip', () => {
    const addon = native();
    const rng = new Rng();
    const maxq = 2 ** bits - 1;
    for (const [N, G] of [
      [100, 6],
      [7, 1],
      [33, 3],
    ]) {
      for (const offset of [0, 1] as const) {
        const what = `seed ${rng.seed}, N ${N} G ${G} offset ${offset}`;
        const zeros = new Int32Array(G * N).map(() => offset + rng.int(maxq + 1 - offset));
        const qzeros = addon.packQzeros(zeros, G, N, bits, offset);
        expect(qzeros, what).toEqual(packQzerosRef(zeros, G, N, bits, offset));
        expect(addon.unpackQzeros(qzeros, G, N, bits, offset), what).toEqual(zeros);
        expect(unpackQzerosRef(qzeros, G, N, bits, offset), what).toEqual(zeros);
      }
    }
  });

  it('v1 cannot hold a zero point of 0: it is stored as all ones and reads back as 2^bits', () => {
    const addon = native();
    const zeros = new Int32Array([0, 1, 2 ** bits - 1]);
    const back = addon.unpackQzeros(addon.packQzeros(zeros, 1, 3, bits, 1), 1, 3, bits, 1);
    expect(Array.from(back)).toEqual([2 ** bits, 1, 2 ** bits - 1]);
  });
});

describe('3-bit units', () => {
  it('put 32 values in 3 words, values 10 and 21 straddling word boundaries', () => {
    // Value i occupies stream bits [3i, 3i + 3): value 10 takes bits 30–31 of word 0 and bit 0 of
    // word 1; value 21 takes bit 31 of word 1 and bits 0–1 of word 2.
    const addon = native();
    for (const [index, words] of [
      [10, [0, 1]],
      [21, [1, 2]],
    ] as const) {
      const q = new Uint8Array(32);
      q[index] = 7;
      const qw = addon.packQweight(q, 1, 32, 3);
      expect(qw.length).toBe(3);
      const set: number[] = [];
      for (let w = 0; w < 3; w++) for (let b = 0; b < 32; b++) if ((qw[w] >>> b) & 1) set.push(w * 32 + b);
      expect(set).toEqual([3 * index, 3 * index + 1, 3 * index + 2]);
      expect(new Set(set.map((bit) => Math.floor(bit / 32)))).toEqual(new Set(words));
    }
  });
});

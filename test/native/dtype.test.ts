/**
 * Float conversions (f32 ↔ f16 ↔ bf16) at every SIMD level against the float64 reference: every
 * 16-bit pattern one way, random and hand-picked f32 values (ties, subnormals, overflow, NaN) the
 * other, with lengths that leave a tail after the last full vector.
 */
import { afterAll, describe, expect, it } from 'vitest';
import { native } from '../../src/native.js';
import { Tensor } from '../../src/tensor.js';
import { bf16Bits, bf16Value, f16Bits, f16Value } from '../helpers/reference.js';
import { Rng } from '../helpers/random.js';
import { availableSimdLevels, forceSimd } from '../helpers/simd.js';

afterAll(() => forceSimd('auto'));

type FloatType = 'f32' | 'f16' | 'bf16';

function convert(src: Float32Array | Uint16Array, from: FloatType, to: FloatType): Float32Array | Uint16Array {
  const out = to === 'f32' ? new Float32Array(src.length) : new Uint16Array(src.length);
  native().convert(
    new Uint8Array(src.buffer, src.byteOffset, src.byteLength),
    from,
    new Uint8Array(out.buffer),
    to,
    src.length,
  );
  return out;
}

/** Collects disagreements (the first 10) so one expect covers a whole array. */
class Mismatches {
  readonly list: string[] = [];
  check(ok: boolean, what: () => string): void {
    if (!ok && this.list.length < 10) this.list.push(what());
  }
}

function isNanBits16(h: number, exponentBits: number): boolean {
  const expMask = exponentBits === 5 ? 0x7c00 : 0x7f80;
  return (h & expMask) === expMask && (h & ~expMask & 0x7fff) !== 0;
}

/** Every 16-bit pattern, plus a few extra so the length is not a multiple of 8 or 16. */
function all16(): Uint16Array {
  const a = new Uint16Array(65536 + 5);
  for (let i = 0; i < a.length; i++) a[i] = i & 0xffff;
  return a;
}

/** f32 inputs: random bit patterns, random normals, and the cases rounding gets wrong. */
function f32Cases(rng: Rng): Float32Array {
  const values: number[] = [
    0,
    -0,
    Infinity,
    -Infinity,
    NaN,
    65504,
    65519.99,
    65520,
    65536,
    1e-8,
    2 ** -24,
    2 ** -25,
    3 * 2 ** -26,
    2 ** -149,
    3.4e38,
  ];
  // Exact ties between neighbouring fp16 and bf16 values, normal and subnormal.
  for (let e = -24; e <= 15; e++)
    for (const m of [1, 3, 1025, 2047]) values.push(m * 2 ** (e - 11), -m * 2 ** (e - 11));
  for (let e = -130; e <= 127; e += 7) for (const m of [1, 3, 257, 511]) values.push(m * 2 ** (e - 8));
  const bits = new Uint32Array(20000);
  for (let i = 0; i < bits.length; i++) bits[i] = rng.uint32();
  const out = new Float32Array(values.length + bits.length + 3001);
  out.set(values);
  out.set(new Float32Array(bits.buffer), values.length);
  for (let i = values.length + bits.length; i < out.length; i++) out[i] = rng.normal() * 10 ** rng.uniform(-8, 5);
  return out;
}

describe.each(availableSimdLevels())('dtype conversion at SIMD level %s', (level) => {
  it('f16 → f32 is exact for every pattern', () => {
    forceSimd(level);
    const h = all16();
    const f = convert(h, 'f16', 'f32') as Float32Array;
    const bad = new Mismatches();
    for (let i = 0; i < h.length; i++) {
      const ref = f16Value(h[i]);
      bad.check(
        Number.isNaN(ref) ? Number.isNaN(f[i]) : Object.is(f[i], ref),
        () => `0x${h[i].toString(16)} → ${f[i]}, want ${ref}`,
      );
    }
    expect(bad.list).toEqual([]);
  });

  it('bf16 → f32 is exact for every pattern', () => {
    forceSimd(level);
    const h = all16();
    const f = convert(h, 'bf16', 'f32') as Float32Array;
    const bad = new Mismatches();
    for (let i = 0; i < h.length; i++) {
      const ref = bf16Value(h[i]);
      bad.check(
        Number.isNaN(ref) ? Number.isNaN(f[i]) : Object.is(f[i], ref),
        () => `0x${h[i].toString(16)} → ${f[i]}, want ${ref}`,
      );
    }
    expect(bad.list).toEqual([]);
  });

  it('f32 → f16 and f32 → bf16 round to nearest even', () => {
    forceSimd(level);
    const rng = new Rng();
    const x = f32Cases(rng);
    const h = convert(x, 'f32', 'f16') as Uint16Array;
    const b = convert(x, 'f32', 'bf16') as Uint16Array;
    const bad = new Mismatches();
    for (let i = 0; i < x.length; i++) {
      const nan = Number.isNaN(x[i]);
      bad.check(
        nan ? isNanBits16(h[i], 5) : h[i] === f16Bits(x[i]),
        () => `f16 of ${x[i]}: 0x${h[i].toString(16)}, want 0x${f16Bits(x[i]).toString(16)}`,
      );
      bad.check(
        nan ? isNanBits16(b[i], 8) : b[i] === bf16Bits(x[i]),
        () => `bf16 of ${x[i]}: 0x${b[i].toString(16)}, want 0x${bf16Bits(x[i]).toString(16)}`,
      );
    }
    expect(bad.list, `seed ${rng.seed}`).toEqual([]);
  });

  it('f16 ↔ bf16 go through f32 exactly', () => {
    forceSimd(level);
    const h = all16();
    const b = convert(h, 'f16', 'bf16') as Uint16Array;
    const back = convert(h, 'bf16', 'f16') as Uint16Array;
    const bad = new Mismatches();
    for (let i = 0; i < h.length; i++) {
      bad.check(
        isNanBits16(h[i], 5) ? isNanBits16(b[i], 8) : b[i] === bf16Bits(f16Value(h[i])),
        () => `f16 0x${h[i].toString(16)} → bf16 0x${b[i].toString(16)}`,
      );
      bad.check(
        isNanBits16(h[i], 8) ? isNanBits16(back[i], 5) : back[i] === f16Bits(bf16Value(h[i])),
        () => `bf16 0x${h[i].toString(16)} → f16 0x${back[i].toString(16)}`,
      );
    }
    expect(bad.list).toEqual([]);
  });

  it('Tensor.to round-trips f32 → f16 → f32 to the fp16 grid', () => {
    forceSimd(level);
    const rng = new Rng();
    const data = new Float32Array(1003).map(() => rng.normal());
    const t = new Tensor('f32', [17, 59], data);
    const back = t.to('f16').to('f32');
    expect(back.shape).toEqual([17, 59]);
    const bad = new Mismatches();
    for (let i = 0; i < data.length; i++)
      bad.check(back.data[i] === f16Value(f16Bits(data[i])), () => `${data[i]} → ${back.data[i]}`);
    expect(bad.list, `seed ${rng.seed}`).toEqual([]);
  });
});

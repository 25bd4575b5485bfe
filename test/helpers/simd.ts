/** The SIMD levels this machine can run, for tests that must exercise every one of them. */
import { native } from '../../src/native.js';

export type SimdLevel = 'scalar' | 'avx2' | 'avx512';
const ORDER: SimdLevel[] = ['scalar', 'avx2', 'avx512'];

/** Every level up to the processor's own (scalar always; avx2, avx512 where present). */
export function availableSimdLevels(): SimdLevel[] {
  const top = native().buildInfo().simd;
  return ORDER.slice(0, ORDER.indexOf(top) + 1);
}

/** Caps the kernels' level (native forceSimd); 'auto' restores the processor's own. */
export function forceSimd(level: SimdLevel | 'auto'): void {
  const active = native().forceSimd(level);
  if (level !== 'auto' && active !== level) throw new Error(`forceSimd(${level}) left ${active} active`);
}

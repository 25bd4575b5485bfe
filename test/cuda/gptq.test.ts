/**
 * GPTQ on CUDA against the CPU implementation: same codes except rare rounding ties (the lazy batch
 * update sums in another order on the GPU), same grids, g_idx, dampening and loss. Skips with the
 * reason where there is no GPU; the last block checks the error for a device that does not exist.
 */
import { describe, expect, it } from 'vitest';
import { LowbitError } from '../../src/errors.js';
import { native, type NativeGptqOptions } from '../../src/native.js';
import { cudaAvailability, gaussian, randomSeed, rng } from './ref.js';

const cuda = cudaAvailability();
if (!cuda.ok) console.log(`test/cuda/gptq.test.ts: CUDA tests skipped: ${cuda.reason}`);

/** Calibration tokens with correlated features of different scales, and a weight with a few outliers. */
function layer(rand: () => number, N: number, K: number, tokens: number, dead = 0) {
  const X = new Float32Array(tokens * K);
  for (let t = 0; t < tokens; t++) {
    const common = gaussian(rand);
    for (let k = 0; k < K; k++) X[t * K + k] = k < dead ? 0 : (0.3 + (k % 11) / 5) * gaussian(rand) + 0.7 * common;
  }
  const W = new Float32Array(N * K);
  for (let i = 0; i < W.length; i++) W[i] = 0.05 * gaussian(rand) + (rand() < 0.01 ? 0.3 * gaussian(rand) : 0);
  return { X, W };
}

async function compare(name: string, N: number, K: number, options: NativeGptqOptions, dead = 0): Promise<void> {
  const seed = randomSeed();
  const rand = rng(seed);
  const tokens = 3 * K;
  const { X, W } = layer(rand, N, K, tokens, dead);
  const addon = native();
  const handle = addon.hessianCreate(K);
  await addon.hessianAddBatch(handle, X.subarray(0, (tokens >> 1) * K), tokens >> 1);
  await addon.hessianAddBatch(handle, X.subarray((tokens >> 1) * K), tokens - (tokens >> 1));
  const H = addon.hessianRead(handle);
  addon.hessianFree(handle);

  const cpu = await addon.gptqQuantize(W, N, K, H, { ...options, device: -1 });
  const gpu = await addon.gptqQuantize(W, N, K, H, { ...options, device: 0 });
  const what = `${name}, N ${N} K ${K}, seed ${seed}`;
  let qDiff = 0;
  for (let i = 0; i < N * K; i++) if (cpu.q[i] !== gpu.q[i]) qDiff++;
  let gridDiff = 0;
  for (let i = 0; i < cpu.scales.length; i++)
    if (cpu.scales[i] !== gpu.scales[i] || cpu.zeros[i] !== gpu.zeros[i]) gridDiff++;
  // A tie flipped by rounding changes one code, and through the error feedback perhaps a few more.
  expect(qDiff, `codes differing, ${what}`).toBeLessThanOrEqual(Math.ceil((N * K) / 1000));
  expect(gridDiff, `grids differing, ${what}`).toBeLessThanOrEqual(Math.ceil(cpu.scales.length / 200));
  expect(Array.from(gpu.gIdx), `g_idx, ${what}`).toEqual(Array.from(cpu.gIdx));
  expect(gpu.damp, what).toBe(cpu.damp);
  expect(gpu.dampRaises, what).toBe(cpu.dampRaises);
  expect(gpu.deadInputs, what).toBe(cpu.deadInputs);
  expect(Math.abs(gpu.loss - cpu.loss) / cpu.loss, `loss, ${what}`).toBeLessThan(1e-3);
}

describe.skipIf(!cuda.ok)(`GPTQ on CUDA vs the CPU (skipped without a GPU: ${cuda.reason || 'none'})`, () => {
  it('4-bit, groups of 32 with a partial last group (K 172)', async () => {
    await compare('4-bit g32', 100, 172, { bits: 4, groupSize: 32 });
  });
  it('3-bit per channel, act-order', async () => {
    await compare('3-bit act-order', 96, 256, { bits: 3, groupSize: -1, actOrder: true, zeroOffset: 0 });
  });
  it('2-bit g32 act-order (groups follow the sweep), and static groups', async () => {
    await compare('2-bit g32 act-order', 120, 300, { bits: 2, groupSize: 32, actOrder: true });
    await compare('4-bit g32 act-order static', 64, 172, {
      bits: 4,
      groupSize: 32,
      actOrder: true,
      staticGroups: true,
    });
  });
  it('symmetric grid, MSE grid search, 8 bits with dead inputs', async () => {
    await compare('4-bit g64 sym', 80, 200, { bits: 4, groupSize: 64, sym: true, zeroOffset: 0 });
    await compare('3-bit g32 mse', 64, 172, { bits: 3, groupSize: 32, mse: true });
    await compare('8-bit g128 dead inputs', 70, 384, { bits: 8, groupSize: 128, actOrder: true }, 9);
  });
  it('several sweep blocks and a block size that does not divide K', async () => {
    await compare('4-bit g128 K 1000', 200, 1000, { bits: 4, groupSize: 128 });
    await compare('3-bit g32 block 100', 50, 333, { bits: 3, groupSize: 32, blockSize: 100 });
  });
  it('a Hessian that stays singular fails the same way', async () => {
    const K = 40;
    const H = new Float32Array(K * K).fill(1); // rank one, and no dampening to rescue it
    const W = new Float32Array(8 * K).fill(0.5);
    const opts: NativeGptqOptions = { bits: 4, groupSize: -1, dampPercent: 0, maxDampRaises: 0, device: 0 };
    const err = await native()
      .gptqQuantize(W, 8, K, H, opts)
      .then(
        () => undefined,
        (e: unknown) => e,
      );
    expect(err).toBeInstanceOf(LowbitError);
    expect((err as LowbitError).code).toBe('E_HESSIAN_SINGULAR');
  });
});

describe('GPTQ on a CUDA device that does not exist', () => {
  it('rejects with E_CUDA_UNAVAILABLE (not a crash, and not a silent CPU run)', async () => {
    const K = 16;
    const H = new Float32Array(K * K);
    for (let i = 0; i < K; i++) H[i * K + i] = 1;
    const W = new Float32Array(4 * K).fill(0.25);
    const missing = native().cudaDevices().devices.length;
    const err = await native()
      .gptqQuantize(W, 4, K, H, { bits: 4, groupSize: -1, device: missing })
      .then(
        () => undefined,
        (e: unknown) => e,
      );
    expect(err).toBeInstanceOf(LowbitError);
    expect((err as LowbitError).code).toBe('E_CUDA_UNAVAILABLE');
  });
});

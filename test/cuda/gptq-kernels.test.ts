/**
 * The fast GPTQ kernels (cuda/gptq_kernels, fp16/bf16) are reached from Node only through the choice
 * gptq_matmul makes for a shape (test/cuda/linear-half.test.ts), so every configuration and split is
 * checked by the standalone program bench/cuda-gemm.cu: each against float64 on fresh random
 * checkpoints (2/3/4 bits, odd K and N, groups of 32/64/128/per-channel, shuffled g_idx, v1/v2
 * zeros, fp16 and bf16, M = 1..256, outputs poisoned with NaN, each run twice and once through a CUDA
 * graph) and the exact round trip of the repack. This test runs it where there is a CUDA device and
 * the program was built (`bench/device.sh --build-only`, or $LOWBIT_CUDA_GEMM naming the binary);
 * elsewhere it skips with the reason.
 */
import { spawnSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { cudaAvailability } from './ref.js';

const program = process.env.LOWBIT_CUDA_GEMM ?? join(import.meta.dirname, '../../build-cuda/bench/cuda-gemm');
const cuda = cudaAvailability();
const reason = !cuda.ok
  ? cuda.reason
  : !existsSync(program)
    ? `${program} not built (bench/device.sh --build-only)`
    : '';
if (reason) console.log(`test/cuda/gptq-kernels.test.ts: skipped: ${reason}`);

describe.skipIf(reason !== '')('GPTQ GPU kernels (bench/cuda-gemm.cu check)', () => {
  it('every configuration matches float64 within fp16/bf16 rounding, and the repack round-trips', () => {
    const run = spawnSync(program, ['check'], { encoding: 'utf8', timeout: 600_000 });
    const out = `${run.stdout}${run.stderr}`;
    expect(out, out.slice(-4000)).toMatch(/check: passed \(0 failures\)/);
    expect(out).not.toMatch(/FAIL/);
    expect(run.status).toBe(0);
  }, 620_000);
});

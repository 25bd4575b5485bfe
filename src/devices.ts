/** The devices lowbit can compute on: the CPU always, CUDA GPUs where the addon and driver allow. */
import { LowbitError, invalidArgument } from './errors.js';
import { native } from './native.js';

export interface CpuDevice {
  kind: 'cpu';
  threads: number;
  simd: 'scalar' | 'avx2' | 'avx512';
}
export interface CudaDevice {
  kind: 'cuda';
  index: number;
  name: string;
  computeCapability: string;
  multiprocessors: number;
  totalMemory: number;
}
export type Device = CpuDevice | CudaDevice;

export function devices(): Device[] {
  const addon = native();
  const info = addon.buildInfo();
  const cpu: CpuDevice = { kind: 'cpu', threads: info.threads, simd: info.activeSimd };
  return [cpu, ...addon.cudaDevices().devices.map((d) => ({ kind: 'cuda' as const, ...d }))];
}

/** Sets the addon's worker threads (0: one per hardware thread). Returns the count in use. */
export function setThreads(threads: number): number {
  if (!Number.isInteger(threads) || threads < 0 || threads > 1024)
    invalidArgument('threads', 'an integer in [0, 1024]', threads);
  return native().setThreads(threads);
}

/** A device choice as users write it: 'cpu', 'cuda', 'cuda:1' or 'auto'. */
export type DeviceSpec = 'cpu' | 'cuda' | 'auto' | `cuda:${number}`;

/** Resolves a device choice to -1 (CPU) or a CUDA index; 'cuda' without a GPU throws E_CUDA_UNAVAILABLE. */
export function resolveDevice(spec: DeviceSpec | undefined): number {
  const s = spec ?? 'auto';
  if (s === 'cpu') return -1;
  const { devices: gpus, reason } = native().cudaDevices();
  if (s === 'auto') return gpus.length > 0 ? 0 : -1;
  const m = /^cuda(?::(\d+))?$/.exec(s);
  if (!m) invalidArgument('device', "'cpu', 'cuda', 'cuda:<index>' or 'auto'", spec);
  const index = m[1] === undefined ? 0 : Number(m[1]);
  if (gpus.length === 0) throw new LowbitError('E_CUDA_UNAVAILABLE', `device '${s}' requested, but ${reason}`);
  if (index >= gpus.length)
    throw new LowbitError(
      'E_CUDA_UNAVAILABLE',
      `device '${s}' requested, but only ${gpus.length} CUDA device(s) exist`,
    );
  return index;
}

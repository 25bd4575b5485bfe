/** lowbit's public API. */
export { LowbitError, ERROR_CODES, type LowbitErrorCode } from './errors.js';
export { devices, setThreads, resolveDevice, type Device, type CpuDevice, type CudaDevice, type DeviceSpec } from './devices.js';
export type { PackedWeights, BuildInfo } from './native.js';

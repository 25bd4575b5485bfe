/**
 * Every failure lowbit reports is a LowbitError with a stable `code`, so callers can branch on
 * `err.code` instead of parsing messages. Native errors cross the addon boundary as plain Errors
 * with a `code` property and are re-thrown as LowbitError by src/native.ts.
 */
export const ERROR_CODES = [
  'E_ADDON_LOAD', // the native addon could not be loaded
  'E_ARGUMENT', // an option or argument has the wrong type or value
  'E_DTYPE', // a tensor has a dtype the operation does not accept
  'E_SHAPE', // shapes do not agree
  'E_BITS', // bits outside {2, 3, 4, 8}
  'E_GROUP_SIZE', // a group size that does not fit the input dimension
  'E_BUFFER', // a buffer is too short or misaligned for what it should hold
  'E_CUDA_UNAVAILABLE', // CUDA asked for, but no device or driver
  'E_CUDA', // a CUDA call failed
  'E_IO', // a file could not be read or written
  'E_SAFETENSORS_HEADER', // a safetensors header is malformed
  'E_SAFETENSORS_DTYPE', // unknown or unsupported safetensors dtype
  'E_SAFETENSORS_OFFSETS', // tensor offsets out of range, overlapping or with gaps
  'E_MISSING_SHARD', // a shard named by an index file is missing
  'E_MISSING_TENSOR', // a tensor the config implies is not in the checkpoint
  'E_CONFIG', // config.json is malformed or unsupported
  'E_UNSUPPORTED', // a valid input lowbit does not support yet
  'E_LLAMA2C', // malformed llama2.c checkpoint
  'E_TOKENIZER', // malformed or unsupported tokenizer
  'E_GPTQ_FORMAT', // malformed GPTQ checkpoint
  'E_SPQR_FORMAT', // malformed SpQR checkpoint or weights
  'E_HESSIAN_SINGULAR', // Cholesky failed even after raising the dampening
  'E_NAN', // NaN or infinity in weights or activations
  'E_CALIBRATION', // calibration data missing or too short
  'E_MEMORY_BUDGET', // the requested work does not fit the memory budget
  'E_KV_FULL', // the KV cache pool has no free page for the step (close sessions or raise kvCacheTokens)
  'E_ABORTED', // cancelled through an AbortSignal
  'E_LOCKED', // another live run holds the output directory's lock
  'E_HUB', // a Hugging Face Hub request failed, or a download did not match its checksum
  'E_HUB_AUTH', // the Hub refused access (gated or private repository): set HF_TOKEN
  'E_HUB_NOT_FOUND', // no such repository, revision or file on the Hub
  'E_OFFLINE', // HF_HUB_OFFLINE=1 and the model is not in the local Hub cache
  'E_CLOSED', // the object was closed
  'E_BUSY', // a scheduler's queue is full: retry later (backpressure)
  'E_DETACHED', // a typed array's buffer was detached (transferred) before or while a call used it
  'E_INTERNAL', // a bug in lowbit: please report it
] as const;

export type LowbitErrorCode = (typeof ERROR_CODES)[number];

export class LowbitError extends Error {
  readonly code: LowbitErrorCode;
  /** The file, tensor or option the error concerns, where there is one. */
  readonly details: Readonly<Record<string, unknown>>;

  constructor(
    code: LowbitErrorCode,
    message: string,
    details: Record<string, unknown> = {},
    options?: { cause?: unknown },
  ) {
    super(message, options);
    this.name = 'LowbitError';
    this.code = code;
    this.details = details;
  }
}

export function isLowbitErrorCode(code: unknown): code is LowbitErrorCode {
  return typeof code === 'string' && (ERROR_CODES as readonly string[]).includes(code);
}

/** Describes a value for an error message: "-1 of type number". */
export function describe(value: unknown): string {
  if (value === null) return 'null';
  if (ArrayBuffer.isView(value))
    return `${value.constructor.name}(${(value as { length?: number }).length ?? value.byteLength})`;
  if (typeof value === 'string')
    return `${JSON.stringify(value.length > 60 ? value.slice(0, 57) + '...' : value)} of type string`;
  if (typeof value === 'object') return `${Array.isArray(value) ? 'array' : 'object'}`;
  return `${String(value)} of type ${typeof value}`;
}

/** Throws E_ARGUMENT naming the option, what was expected and what came. */
export function invalidArgument(
  name: string,
  expected: string,
  value: unknown,
  code: LowbitErrorCode = 'E_ARGUMENT',
): never {
  throw new LowbitError(code, `Expected ${expected} for ${name} but received ${describe(value)}`, { option: name });
}

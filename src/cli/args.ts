/**
 * A small, strict argument parser for the CLI (node:util parseArgs underneath), turning unknown or
 * malformed options into LowbitError('E_ARGUMENT') with the option's name.
 */
import { parseArgs, type ParseArgsConfig } from 'node:util';
import { LowbitError } from '../errors.js';

export type OptionSpec = NonNullable<ParseArgsConfig['options']>;

export function parse(
  argv: string[],
  options: OptionSpec,
  usage: string,
): { values: Record<string, string | boolean | (string | boolean)[] | undefined>; positionals: string[] } {
  try {
    return parseArgs({ args: argv, options, allowPositionals: true, strict: true });
  } catch (err) {
    throw new LowbitError('E_ARGUMENT', `${(err as Error).message}\n\n${usage}`);
  }
}

/**
 * A numeric option: `fallback` when absent; a usage error naming the option and what it accepts
 * (`expected`, e.g. "2, 3, 4 or 8") when it is no number or fails `check`.
 */
export function numberOption(
  value: string | undefined,
  name: string,
  fallback: number,
  check?: (n: number) => boolean,
  expected = 'a valid number',
): number {
  if (value === undefined) return fallback;
  const n = value.trim() === '' ? NaN : Number(value);
  if (!Number.isFinite(n) || (check && !check(n))) {
    throw new LowbitError('E_ARGUMENT', `--${name} must be ${expected}, not ${JSON.stringify(value)}`, {
      option: name,
    });
  }
  return n;
}

/** An integer option in [lo, hi]; `note` says what it counts, in the error message. */
export function integerOption(
  value: string | undefined,
  name: string,
  fallback: number,
  lo: number,
  hi: number,
  note?: string,
): number {
  const expected = `an integer in [${lo}, ${hi}]${note ? ` (${note})` : ''}`;
  return numberOption(value, name, fallback, (n) => Number.isInteger(n) && n >= lo && n <= hi, expected);
}

/** --cpu-activations: 'int8' or 'f32' (undefined when absent: the model's default, int8). */
export function cpuActivationsOption(value: string | undefined): 'int8' | 'f32' | undefined {
  if (value === undefined || value === 'int8' || value === 'f32') return value;
  throw new LowbitError('E_ARGUMENT', `--cpu-activations must be int8 or f32, not ${JSON.stringify(value)}`, {
    option: 'cpu-activations',
  });
}

/**
 * --dtype: bf16, fp16 (or f16), f32 (or fp32) or auto; absent: auto (bf16 on a GPU, f32 on the CPU).
 */
export function dtypeOption(value: string | undefined): 'f32' | 'f16' | 'bf16' | 'auto' {
  const names: Record<string, 'f32' | 'f16' | 'bf16' | 'auto'> = {
    auto: 'auto',
    bf16: 'bf16',
    fp16: 'f16',
    f16: 'f16',
    fp32: 'f32',
    f32: 'f32',
  };
  if (value === undefined) return 'auto';
  const dtype = names[value];
  if (!dtype)
    throw new LowbitError('E_ARGUMENT', `--dtype must be bf16, fp16, f32 or auto, not ${JSON.stringify(value)}`, {
      option: 'dtype',
    });
  return dtype;
}

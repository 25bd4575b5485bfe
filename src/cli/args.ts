/**
 * A small, strict argument parser for the CLI (node:util parseArgs underneath), turning unknown or
 * malformed options into LowbitError('E_ARGUMENT') with the option's name.
 */
import { parseArgs, type ParseArgsConfig } from 'node:util';
import { LowbitError } from '../errors.js';

export type OptionSpec = NonNullable<ParseArgsConfig['options']>;

export function parse(argv: string[], options: OptionSpec, usage: string): { values: Record<string, string | boolean | (string | boolean)[] | undefined>; positionals: string[] } {
  try {
    return parseArgs({ args: argv, options, allowPositionals: true, strict: true });
  } catch (err) {
    throw new LowbitError('E_ARGUMENT', `${(err as Error).message}\n\n${usage}`);
  }
}

export function numberOption(value: string | undefined, name: string, fallback: number, check?: (n: number) => boolean): number {
  if (value === undefined) return fallback;
  const n = Number(value);
  if (!Number.isFinite(n) || (check && !check(n))) {
    throw new LowbitError('E_ARGUMENT', `Expected a valid number for --${name} but received ${JSON.stringify(value)}`, { option: name });
  }
  return n;
}

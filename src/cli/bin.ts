#!/usr/bin/env node
// The `lowbit` executable (package.json "bin"): runs the CLI and turns errors into a message and an
// exit code. Kept apart from main.ts so that importing the CLI never runs it.
import { LowbitError } from '../errors.js';
import { main } from './main.js';

main(process.argv.slice(2)).then(
  (code) => {
    process.exitCode = code;
  },
  (err: unknown) => {
    if (err instanceof LowbitError) console.error(`lowbit: ${err.message} [${err.code}]`);
    else console.error(err);
    // 2 for a usage error (as most command-line tools), 1 for anything else
    process.exitCode = err instanceof LowbitError && err.code === 'E_ARGUMENT' ? 2 : 1;
  },
);

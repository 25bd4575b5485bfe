/**
 * The `lowbit` command: a thin layer over the public API. Each subcommand lives in its own module
 * (src/cli/<name>.ts) exporting `run(argv: string[]): Promise<number>` (the exit code) and `usage`.
 */

import { readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';

interface Command {
  summary: string;
  load: () => Promise<{ run(argv: string[]): Promise<number>; usage: string }>;
}

const COMMANDS: Record<string, Command> = {
  devices: { summary: 'list the CPU and CUDA devices lowbit can use', load: () => import('./devices.js') },
  ppl: { summary: 'perplexity of a text under a model (non-overlapping windows)', load: () => import('./ppl.js') },
  generate: {
    summary: 'generate text from a prompt, streaming tokens as they come',
    load: () => import('./generate.js'),
  },
  convert: {
    summary: 'convert a llama2.c checkpoint into a Hugging Face directory',
    load: () => import('./convert.js'),
  },
  inspect: {
    summary: 'show a model file or directory: architecture, tensors, quantization, size',
    load: () => import('./inspect.js'),
  },
  quantize: {
    summary: 'quantize a model: GPTQ or RTN (2/3/4/8 bits) into a GPTQ checkpoint, or SpQR (2/3/4 bits)',
    load: () => import('./quantize.js'),
  },
};

function help(): string {
  const width = Math.max(...Object.keys(COMMANDS).map((c) => c.length));
  return [
    'usage: lowbit <command> [options]',
    '',
    ...Object.entries(COMMANDS).map(([name, c]) => `  ${name.padEnd(width)}  ${c.summary}`),
    '',
    'lowbit help <command> (or lowbit <command> --help) shows the options of one; lowbit --version the version.',
  ].join('\n');
}

/** The package's version (package.json, two levels above src/cli and dist/cli). */
export function version(): string {
  const pkg = JSON.parse(readFileSync(fileURLToPath(new URL('../../package.json', import.meta.url)), 'utf8')) as {
    version: string;
  };
  return pkg.version;
}

/** Runs the CLI; resolves to the exit code (2 for usage errors, as LowbitError E_ARGUMENT in bin.ts). */
export async function main(argv: string[]): Promise<number> {
  const [name, ...rest] = argv;
  if (name === '--version' || name === '-v') {
    console.log(version());
    return 0;
  }
  if (name === '--help' || name === '-h' || (name === 'help' && rest.length === 0)) {
    console.log(help());
    return 0;
  }
  if (!name) {
    console.error(help());
    return 2;
  }
  if (name === 'help') {
    const command = COMMANDS[rest[0]!];
    if (!command) {
      console.error(`lowbit: unknown command '${rest[0]}'\n\n${help()}`);
      return 2;
    }
    console.log((await command.load()).usage);
    return 0;
  }
  const command = COMMANDS[name];
  if (!command) {
    console.error(`lowbit: unknown command '${name}'\n\n${help()}`);
    return 2;
  }
  const mod = await command.load();
  if (rest.includes('--help') || rest.includes('-h')) {
    console.log(mod.usage);
    return 0;
  }
  return mod.run(rest);
}

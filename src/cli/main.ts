/**
 * The `lowbit` command: a thin layer over the public API. Each subcommand lives in its own module
 * (src/cli/<name>.ts) exporting `run(argv: string[]): Promise<number>` (the exit code) and `usage`.
 */

interface Command {
  summary: string;
  load: () => Promise<{ run(argv: string[]): Promise<number>; usage: string }>;
}

const COMMANDS: Record<string, Command> = {
  devices: { summary: 'list the CPU and CUDA devices lowbit can use', load: () => import('./devices.js') },
  ppl: { summary: 'perplexity of a text under a model (non-overlapping windows)', load: () => import('./ppl.js') },
  generate: { summary: 'generate text from a prompt, streaming tokens as they come', load: () => import('./generate.js') },
  convert: { summary: 'convert a llama2.c checkpoint into a Hugging Face directory', load: () => import('./convert.js') },
  inspect: { summary: 'show a model file or directory: architecture, tensors, quantization, size', load: () => import('./inspect.js') },
  quantize: { summary: 'quantize a model into a GPTQ checkpoint (GPTQ or RTN, 2/3/4/8 bits)', load: () => import('./quantize.js') },
};

function help(): string {
  const width = Math.max(...Object.keys(COMMANDS).map((c) => c.length));
  return [
    'usage: lowbit <command> [options]   (lowbit <command> --help for its options)',
    '',
    ...Object.entries(COMMANDS).map(([name, c]) => `  ${name.padEnd(width)}  ${c.summary}`),
  ].join('\n');
}

export async function main(argv: string[]): Promise<number> {
  const [name, ...rest] = argv;
  if (!name || name === '--help' || name === '-h') {
    console.log(help());
    return name ? 0 : 1;
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

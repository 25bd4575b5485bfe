import { LowbitError } from '../errors.js';
import { formatReport, inspectModel } from '../formats/inspect.js';
import { parse } from './args.js';
import { resolveModelArg } from './model-arg.js';

export const usage = `usage: lowbit inspect <file|dir> [--json]

Shows a model: a Hugging Face directory (single or sharded safetensors, GPTQ and SpQR included),
one .safetensors file, or a llama2.c .bin checkpoint. Prints the architecture, the quantization
config, bits per weight, the total size and every tensor (name, dtype, shape, bytes); for SpQR, each
linear's bits per weight and outlier rate.

  --json   print the report as JSON`;

export async function run(argv: string[]): Promise<number> {
  const { values, positionals } = parse(argv, { json: { type: 'boolean' } }, usage);
  if (positionals.length !== 1)
    throw new LowbitError('E_ARGUMENT', `expected one file or directory, got ${positionals.length}\n\n${usage}`);
  const report = await inspectModel(await resolveModelArg(positionals[0]!));
  console.log(values.json ? JSON.stringify(report, null, 2) : formatReport(report));
  return 0;
}

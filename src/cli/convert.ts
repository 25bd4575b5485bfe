import { LowbitError } from '../errors.js';
import { convertLlama2c } from '../formats/convert.js';
import { parse } from './args.js';

export const usage = `usage: lowbit convert <model.bin> --out <dir> [--tokenizer <tokenizer.bin|tokenizer.model|dir>] [--keep-extra-whitespace]

Converts a llama2.c checkpoint (v0, v1 or v2) into a Hugging Face directory: config.json,
model.safetensors (float32; q/k rows permuted to Hugging Face's RoPE layout), generation_config.json,
and, with --tokenizer, tokenizer.model + tokenizer.json + tokenizer_config.json (a llama2.c
tokenizer.bin is written out as a SentencePiece model and converted as transformers would; a
.model is copied and converted; a directory's tokenizer files are copied).

  --out <dir>               the new directory (must not exist, or be empty)
  --tokenizer <path>        the tokenizer to ship with it
  --keep-extra-whitespace   the tokenizer.bin's SentencePiece model did not remove extra
                            whitespace (Llama 2's 32000-token vocabulary); default: it did (tok512)`;

export async function run(argv: string[]): Promise<number> {
  const { values, positionals } = parse(
    argv,
    { out: { type: 'string' }, tokenizer: { type: 'string' }, 'keep-extra-whitespace': { type: 'boolean' } },
    usage,
  );
  if (positionals.length !== 1)
    throw new LowbitError('E_ARGUMENT', `expected one llama2.c checkpoint, got ${positionals.length}\n\n${usage}`);
  if (typeof values.out !== 'string')
    throw new LowbitError('E_ARGUMENT', `--out <dir> is required\n\n${usage}`, { option: 'out' });
  const result = await convertLlama2c(positionals[0]!, values.out, {
    tokenizer: values.tokenizer as string | undefined,
    normalizer: values['keep-extra-whitespace'] ? { removeExtraWhitespaces: false } : undefined,
  });
  console.log(`wrote ${result.dir}: ${result.files.join(', ')}`);
  return 0;
}

import { LowbitError } from '../errors.js';
import type { DeviceSpec } from '../devices.js';
import { openModel } from '../model/model.js';
import { generateTokens } from '../model/generate.js';
import { StreamDecoder } from '../formats/tokenizer.js';
import { cpuActivationsOption, dtypeOption, numberOption, parse } from './args.js';
import { resolveModelArg } from './model-arg.js';

export const usage = `usage: lowbit generate --model <dir|file> --prompt "..." [options]

Generates text after a prompt with a KV cache, printing tokens as they come.

  --model <path>      Hugging Face directory (fp32/fp16/bf16, GPTQ or SpQR), llama2.c checkpoint, or Hub id
                      org/name[@revision]
  --tokenizer <path>  tokenizer to use (default: the model directory's; required for llama2.c)
  --prompt <text>     the prompt (BOS is added)
  --max-tokens <n>    tokens to generate at most (default 128)
  --temperature <t>   0 for greedy (default 1)
  --top-p <p>         nucleus sampling threshold in (0, 1] (default 0.9)
  --seed <n>          sampler seed (default random)
  --device <d>        cpu, cuda, cuda:N or auto (default auto)
  --cpu-activations <a>
                      int8 (default) or f32: activations inside the CPU's packed GPTQ 2/3/4-bit
                      products (int8: the fast repacked kernels; f32: exact, slower)
  --dtype <t>         what the GPU computes in: bf16, fp16 or f32 (default auto: bf16 on a GPU,
                      f32 on the CPU; f32 reproduces the float64 reference)`;

export async function run(argv: string[]): Promise<number> {
  const { values, positionals } = parse(
    argv,
    {
      model: { type: 'string' },
      tokenizer: { type: 'string' },
      prompt: { type: 'string' },
      'max-tokens': { type: 'string' },
      temperature: { type: 'string' },
      'top-p': { type: 'string' },
      seed: { type: 'string' },
      device: { type: 'string' },
      'cpu-activations': { type: 'string' },
      dtype: { type: 'string' },
    },
    usage,
  );
  if (positionals.length > 0)
    throw new LowbitError('E_ARGUMENT', `unexpected argument '${positionals[0]}'\n\n${usage}`);
  const modelPath = values.model as string | undefined;
  const prompt = values.prompt as string | undefined;
  if (!modelPath) throw new LowbitError('E_ARGUMENT', `--model is required\n\n${usage}`, { option: 'model' });
  if (prompt === undefined)
    throw new LowbitError('E_ARGUMENT', `--prompt is required\n\n${usage}`, { option: 'prompt' });
  const maxTokens = numberOption(
    values['max-tokens'] as string | undefined,
    'max-tokens',
    128,
    (n) => Number.isInteger(n) && n >= 1,
    'a positive integer',
  );
  const temperature = numberOption(
    values.temperature as string | undefined,
    'temperature',
    1,
    (n) => n >= 0,
    'a number >= 0 (0: greedy)',
  );
  const topP = numberOption(
    values['top-p'] as string | undefined,
    'top-p',
    0.9,
    (n) => n > 0 && n <= 1,
    'a number in (0, 1]',
  );
  const seed =
    values.seed === undefined
      ? undefined
      : numberOption(values.seed as string, 'seed', 0, Number.isInteger, 'an integer');

  const cpuActivations = cpuActivationsOption(values['cpu-activations'] as string | undefined);
  const model = await openModel(await resolveModelArg(modelPath), {
    device: (values.device as DeviceSpec | undefined) ?? 'auto',
    dtype: dtypeOption(values.dtype as string | undefined),
    tokenizer: (values.tokenizer as string | undefined) ?? true,
    cpuActivations,
  });
  try {
    const tokenizer = model.tokenizer;
    if (!tokenizer) {
      // before anything is printed: a llama2.c checkpoint carries no vocabulary
      throw new LowbitError(
        'E_ARGUMENT',
        `${modelPath} has no tokenizer (a llama2.c checkpoint carries none): give one with --tokenizer <tokenizer.bin|tokenizer.model|tokenizer.json>`,
        { option: 'tokenizer' },
      );
    }
    const ids = tokenizer.encode(prompt, { bos: tokenizer.bosId !== undefined });
    if (ids.length >= model.maxSeq) {
      throw new LowbitError(
        'E_ARGUMENT',
        `--prompt is ${ids.length} tokens; the model's context is ${model.maxSeq} tokens, so it must be shorter`,
        { option: 'prompt' },
      );
    }
    const decoder = new StreamDecoder(tokenizer);
    for (const id of ids) decoder.push(id);
    process.stdout.write(prompt);
    let produced = 0;
    for await (const id of generateTokens(model, ids, { maxTokens, temperature, topP, seed })) {
      produced++;
      process.stdout.write(decoder.push(id));
    }
    process.stdout.write('\n');
    if (produced < maxTokens && ids.length + produced >= model.maxSeq) {
      process.stderr.write(
        `(stopped after ${produced} tokens: the model's context of ${model.maxSeq} tokens is full)\n`,
      );
    }
    return 0;
  } finally {
    await model.close();
  }
}

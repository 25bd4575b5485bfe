import { readFile } from 'node:fs/promises';
import { LowbitError } from '../errors.js';
import type { DeviceSpec } from '../devices.js';
import { openModel } from '../model/model.js';
import { perplexity, type PerplexityProgress } from '../model/perplexity.js';
import { cpuActivationsOption, dtypeOption, numberOption, parse } from './args.js';
import { resolveModelArg } from './model-arg.js';
import { Progress } from './progress.js';

export const usage = `usage: lowbit ppl --model <dir|file> --data <text file> [options]

Perplexity of a text under a model: the text is tokenized once (BOS at the start), cut into
non-overlapping windows of --seq-len tokens (the remainder dropped), and ppl = exp(mean NLL) over
the seq-len - 1 next-token predictions of every window.

  --model <path>     Hugging Face directory (fp32/fp16/bf16, GPTQ or SpQR), llama2.c checkpoint, or a
                     Hub id org/name[@revision] (downloaded into the Hub cache)
  --tokenizer <path> tokenizer to use (default: the model directory's)
  --data <file>      the text (UTF-8, used as-is)
  --seq-len <n>      window length (default: the model's context, at most 2048)
  --max-windows <n>  evaluate only the first n windows
  --device <d>       cpu, cuda, cuda:N or auto (default auto)
  --cpu-activations <a>
                     int8 (default) or f32: activations inside the CPU's packed GPTQ 2/3/4-bit
                     products (int8: the fast repacked kernels; f32: exact, slower)
  --dtype <t>        what the GPU computes in: bf16, fp16 or f32 (default auto: bf16 on a GPU,
                     f32 on the CPU; f32 reproduces the float64 reference)
  --json             print the result as JSON`;

export async function run(argv: string[]): Promise<number> {
  const { values, positionals } = parse(
    argv,
    {
      model: { type: 'string' },
      tokenizer: { type: 'string' },
      data: { type: 'string' },
      'seq-len': { type: 'string' },
      'max-windows': { type: 'string' },
      device: { type: 'string' },
      'cpu-activations': { type: 'string' },
      dtype: { type: 'string' },
      json: { type: 'boolean' },
    },
    usage,
  );
  if (positionals.length > 0)
    throw new LowbitError('E_ARGUMENT', `unexpected argument '${positionals[0]}'\n\n${usage}`);
  const modelPath = values.model as string | undefined;
  const dataPath = values.data as string | undefined;
  if (!modelPath) throw new LowbitError('E_ARGUMENT', `--model is required\n\n${usage}`, { option: 'model' });
  if (!dataPath) throw new LowbitError('E_ARGUMENT', `--data is required\n\n${usage}`, { option: 'data' });
  const isCount = (n: number) => Number.isInteger(n) && n >= 1;
  const seqLen =
    values['seq-len'] === undefined
      ? undefined
      : numberOption(
          values['seq-len'] as string,
          'seq-len',
          0,
          (n) => Number.isInteger(n) && n >= 2,
          'an integer >= 2',
        );
  const maxWindows =
    values['max-windows'] === undefined
      ? undefined
      : numberOption(values['max-windows'] as string, 'max-windows', 0, isCount, 'a positive integer');

  const cpuActivations = cpuActivationsOption(values['cpu-activations'] as string | undefined);

  let text: string;
  try {
    text = await readFile(dataPath, 'utf8');
  } catch (err) {
    throw new LowbitError(
      'E_IO',
      `cannot read ${dataPath}: ${(err as Error).message}`,
      { file: dataPath },
      { cause: err },
    );
  }
  const model = await openModel(await resolveModelArg(modelPath), {
    device: (values.device as DeviceSpec | undefined) ?? 'auto',
    dtype: dtypeOption(values.dtype as string | undefined),
    tokenizer: (values.tokenizer as string | undefined) ?? true,
    cpuActivations,
  });
  const progress = new Progress('perplexity');
  try {
    const result = await perplexity(model, text, {
      seqLen,
      maxWindows,
      batch: 4,
      onProgress: (p: PerplexityProgress) =>
        progress.update(
          p.windows,
          p.totalWindows,
          `${p.windows}/${p.totalWindows} windows, ${Math.round(p.seconds > 0 ? p.tokens / p.seconds : 0)} tok/s, ppl ${Math.exp(p.nll).toFixed(4)}`,
        ),
    });
    progress.finish();
    const device = model.device < 0 ? 'cpu' : `cuda:${model.device}`;
    if (values.json) {
      console.log(JSON.stringify({ model: modelPath, data: dataPath, device, dtype: model.dtype, ...result }, null, 2));
    } else {
      console.log(`ppl ${result.ppl.toFixed(4)}  (NLL ${result.nll.toFixed(6)} nats/token)`);
      console.log(
        `${result.windows} windows x ${result.seqLen} tokens (${result.predicted} predictions of ${result.tokens} tokens), ${device} ${model.dtype}, ${result.seconds.toFixed(1)} s, ${Math.round((result.windows * result.seqLen) / result.seconds)} tok/s`,
      );
    }
    return 0;
  } finally {
    progress.finish();
    await model.close();
  }
}

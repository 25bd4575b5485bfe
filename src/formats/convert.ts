/**
 * llama2.c checkpoint → Hugging Face directory: config.json, generation_config.json,
 * model.safetensors (f32, HF names, q/k rows permuted to HF's RoPE layout, no lm_head.weight when
 * the classifier is shared), and the tokenizer: tokenizer.model (written from llama2.c's
 * tokenizer.bin, or copied), the tokenizer.json transformers converts it to, and
 * tokenizer_config.json; or a tokenizer.json copied with its config.
 */
import { copyFile, mkdir, readdir, rename, rm, stat } from 'node:fs/promises';
import { basename, dirname, join, resolve } from 'node:path';
import { LowbitError } from '../errors.js';
import type { LlamaConfig, ModelReader } from './hf.js';
import { Llama2cModel } from './llama2c.js';
import { CheckpointWriter, tempPath, writeFileAtomic } from './safetensors-writer.js';
import { SAFETENSORS_DTYPE_OF } from './safetensors.js';
import {
  readLlama2cTokenizer,
  readSentencePieceModel,
  serializeSentencePieceModel,
  toTokenizerJson,
  type NormalizerOptions,
} from './sentencepiece.js';

/** config.json for a model, in transformers-5 style plus the top-level rope_theta older versions read. */
export function hfConfigJson(config: LlamaConfig, dtype = 'float32'): Record<string, unknown> {
  return {
    architectures: [config.architecture],
    attention_bias: config.qkvBias,
    attention_dropout: 0.0,
    bos_token_id: config.bosTokenId ?? null,
    dtype,
    torch_dtype: dtype,
    eos_token_id:
      config.eosTokenIds.length === 1 ? config.eosTokenIds[0] : config.eosTokenIds.length ? config.eosTokenIds : null,
    head_dim: config.headDim,
    hidden_act: config.hiddenAct,
    hidden_size: config.hiddenSize,
    initializer_range: 0.02,
    intermediate_size: config.intermediateSize,
    max_position_embeddings: config.maxPositionEmbeddings,
    mlp_bias: config.mlpBias,
    model_type: config.modelType,
    num_attention_heads: config.numHeads,
    num_hidden_layers: config.numLayers,
    num_key_value_heads: config.numKvHeads,
    pad_token_id: config.padTokenId ?? null,
    pretraining_tp: 1,
    rms_norm_eps: config.rmsNormEps,
    rope_parameters: { rope_theta: config.rope.theta, rope_type: config.rope.type },
    rope_theta: config.rope.theta,
    tie_word_embeddings: config.tieWordEmbeddings,
    use_cache: true,
    vocab_size: config.vocabSize,
  };
}

/** Tensor names in the order transformers lays them out: embedding, blocks, norm, lm_head. */
export function orderedTensorNames(model: ModelReader): string[] {
  const t = model.tensors;
  const names: string[] = [t.embedding];
  for (const b of t.blocks) {
    names.push(b.inputLayernorm);
    for (const l of [b.q, b.k, b.v, b.o]) names.push(...[l.weight, l.bias].filter((n): n is string => n !== undefined));
    names.push(b.postAttentionLayernorm);
    for (const l of [b.gate, b.up, b.down])
      names.push(...[l.weight, l.bias].filter((n): n is string => n !== undefined));
  }
  names.push(t.norm);
  if (!t.tied) names.push(t.lmHead);
  // anything else the source holds (kept, after the known ones)
  const known = new Set(names);
  return [...names.filter((n) => model.names.includes(n)), ...model.names.filter((n) => !known.has(n))];
}

const TOKENIZER_FILES = [
  'tokenizer.json',
  'tokenizer_config.json',
  'tokenizer.model',
  'special_tokens_map.json',
  'added_tokens.json',
];

export interface ConvertOptions {
  /** tokenizer.bin (llama2.c), tokenizer.model, or a directory with tokenizer files */
  tokenizer?: string;
  /** for a llama2.c tokenizer.bin: the normalizer its SentencePiece model had (default SentencePiece's) */
  normalizer?: Partial<NormalizerOptions>;
}

function tokenizerConfigJson(maxLength: number): Record<string, unknown> {
  return {
    add_bos_token: true,
    add_eos_token: false,
    bos_token: '<s>',
    clean_up_tokenization_spaces: false,
    eos_token: '</s>',
    legacy: true,
    model_max_length: maxLength,
    pad_token: null,
    sp_model_kwargs: {},
    tokenizer_class: 'LlamaTokenizer',
    unk_token: '<unk>',
  };
}

/**
 * Converts a llama2.c checkpoint into a Hugging Face directory at `outDir`. The directory is built
 * under a temporary name beside it and renamed into place at the end; `outDir` must not exist or
 * be empty.
 */
export async function convertLlama2c(
  binPath: string,
  outDir: string,
  options: ConvertOptions = {},
): Promise<{ dir: string; files: string[] }> {
  const target = resolve(outDir);
  const existing = await stat(target).catch(() => undefined);
  if (existing && (!existing.isDirectory() || (await readdir(target)).length > 0)) {
    throw new LowbitError('E_IO', `${target} exists and is not an empty directory; choose a new --out`, {
      file: target,
    });
  }
  const model = await Llama2cModel.open(binPath);
  const work = tempPath(target);
  try {
    await mkdir(work, { recursive: true });
    const names = orderedTensorNames(model);
    const specs = names.map((name) => ({ name, dtype: SAFETENSORS_DTYPE_OF.f32, shape: model.shapeOf(name) }));
    const writer = await CheckpointWriter.create(work, specs);
    try {
      for (const name of names) await writer.put(name, await model.readTensor(name));
      await writer.finish();
    } catch (err) {
      await writer.abort();
      throw err;
    }
    await writeFileAtomic(join(work, 'config.json'), JSON.stringify(hfConfigJson(model.config), null, 2) + '\n');
    await writeFileAtomic(
      join(work, 'generation_config.json'),
      JSON.stringify(
        { _from_model_config: true, bos_token_id: model.config.bosTokenId, eos_token_id: model.config.eosTokenIds[0] },
        null,
        2,
      ) + '\n',
    );
    if (options.tokenizer) await writeTokenizer(options.tokenizer, work, model, options);
    if (existing) await rm(target, { recursive: true });
    await mkdir(dirname(target), { recursive: true });
    await rename(work, target);
  } catch (err) {
    await rm(work, { recursive: true, force: true });
    if (err instanceof LowbitError) throw err;
    throw new LowbitError(
      'E_IO',
      `converting ${binPath} to ${target} failed: ${(err as Error).message}`,
      { file: target },
      { cause: err },
    );
  } finally {
    await model.close();
  }
  return { dir: target, files: (await readdir(target)).sort() };
}

async function writeTokenizer(
  source: string,
  dir: string,
  model: Llama2cModel,
  options: ConvertOptions,
): Promise<void> {
  const st = await stat(source).catch(() => undefined);
  if (!st) throw new LowbitError('E_IO', `no tokenizer at ${source}`, { file: source });
  if (st.isDirectory()) {
    let copied = 0;
    for (const f of TOKENIZER_FILES) {
      const from = join(source, f);
      if (await stat(from).catch(() => undefined)) {
        await copyFile(from, join(dir, f));
        copied++;
      }
    }
    if (copied === 0)
      throw new LowbitError('E_TOKENIZER', `${source} holds none of ${TOKENIZER_FILES.join(', ')}`, { file: source });
    return;
  }
  const name = basename(source);
  if (name.endsWith('.json')) {
    await copyFile(source, join(dir, 'tokenizer.json'));
  } else {
    // a SentencePiece model (written from llama2.c's tokenizer.bin, or copied), and the
    // tokenizer.json transformers would convert it to
    const sp = name.endsWith('.bin')
      ? await readLlama2cTokenizer(source, { vocabSize: model.config.vocabSize, normalizer: options.normalizer })
      : await readSentencePieceModel(source);
    if (name.endsWith('.bin')) await writeFileAtomic(join(dir, 'tokenizer.model'), serializeSentencePieceModel(sp));
    else await copyFile(source, join(dir, 'tokenizer.model'));
    if (sp.modelType === 'bpe')
      await writeFileAtomic(join(dir, 'tokenizer.json'), JSON.stringify(toTokenizerJson(sp), null, 2) + '\n');
  }
  await writeFileAtomic(
    join(dir, 'tokenizer_config.json'),
    JSON.stringify(tokenizerConfigJson(model.config.maxPositionEmbeddings), null, 2) + '\n',
  );
}

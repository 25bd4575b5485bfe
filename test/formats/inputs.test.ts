/**
 * File and input defects of issue 8, one test each (the number is the item): every declared
 * size is checked against the file and sane bounds before anything proportional to it is built (4),
 * tokenizer ids are bounded (11), metadata that contradicts itself or the tensors is refused naming
 * both values (12), every user-caused failure is a LowbitError (13), and no error path leaks a file
 * handle (15).
 */
import { readdirSync, readlinkSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { LowbitError } from '../../src/errors.js';
import { CONFIG_LIMITS, HfModel } from '../../src/formats/hf.js';
import { inspectModel } from '../../src/formats/inspect.js';
import { Checkpoint } from '../../src/formats/checkpoint.js';
import { openModelFiles } from '../../src/formats/open.js';
import { SafetensorsFile } from '../../src/formats/safetensors.js';
import { LLAMA2C_LIMITS, LLAMA2C_MAGIC, Llama2cModel } from '../../src/formats/llama2c.js';
import { serializeSentencePieceModel } from '../../src/formats/sentencepiece.js';
import { loadTokenizer } from '../../src/formats/tokenizer.js';
import { openModel } from '../../src/model/model.js';
import { perplexity } from '../../src/model/perplexity.js';
import { prng, randomSeed, tempDir } from './helpers.js';
import {
  LLAMA2C_FIELDS,
  TINY,
  quantizeConfig,
  safetensorsBytes,
  tinyConfig,
  tinyLlama2c,
  tinyModelFiles,
  tinySentencePiece,
  tinyTensors,
  tinyTokenizerJson,
  writeFiles,
  type GptqSpec,
} from './tiny-model.js';

const tmp = tempDir('lowbit-inputs-');
afterAll(() => tmp.cleanup());
let n = 0;
const fresh = (name: string): string => join(tmp.dir, `${n++}-${name}`);

/** The LowbitError a promise rejects with (fails the test on success or on any other error). */
async function failure(p: Promise<unknown> | (() => unknown)): Promise<LowbitError> {
  try {
    await (typeof p === 'function' ? p() : p);
  } catch (err) {
    if (err instanceof LowbitError) return err;
    throw new Error(`expected a LowbitError, got ${String(err)}`, { cause: err });
  }
  throw new Error('expected a LowbitError, but it succeeded');
}

async function timed<T>(f: () => Promise<T>): Promise<[T, number]> {
  const t0 = performance.now();
  const r = await f();
  return [r, performance.now() - t0];
}

function llama2cHeader(fields: Partial<Record<(typeof LLAMA2C_FIELDS)[number], number>>): Uint8Array {
  const out = new Uint8Array(256);
  const v = new DataView(out.buffer);
  v.setUint32(0, LLAMA2C_MAGIC, true);
  v.setInt32(4, 1, true);
  const h = {
    dim: 64,
    hidden_dim: 172,
    n_layers: 5,
    n_heads: 8,
    n_kv_heads: 4,
    vocab_size: 512,
    seq_len: 512,
    ...fields,
  };
  LLAMA2C_FIELDS.forEach((f, i) => v.setInt32(8 + 4 * i, h[f], true));
  v.setUint8(36, 1);
  return out;
}

const GPTQ4: GptqSpec = { bits: 4, groupSize: 8, format: 'gptq' };

describe('4: declared sizes are checked before anything proportional to them is built', () => {
  it('a llama2.c header of 10^6 layers in a 256-byte file is refused at once (was 30 s and 2.8 GB)', async () => {
    const file = fresh('layers.bin');
    writeFileSync(file, llama2cHeader({ n_layers: 1_000_000 }));
    for (const [what, open] of [
      ['Llama2cModel.open', () => Llama2cModel.open(file)],
      ['inspect', () => inspectModel(file)],
      ['openModel', () => openModel(file, { device: 'cpu' })],
    ] as const) {
      const [err, ms] = await timed(() => failure(open()));
      expect(err.code, what).toBe('E_LLAMA2C');
      expect(err.message, what).toMatch(/n_layers = 1000000/);
      expect(ms, what).toBeLessThan(2000);
    }
  });

  it('a 1024-layer header (within bounds) is refused from its size, before the layout is built', async () => {
    const file = fresh('layers1024.bin');
    writeFileSync(file, llama2cHeader({ n_layers: 1024 }));
    const err = await failure(Llama2cModel.open(file));
    expect(err.code).toBe('E_LLAMA2C');
    expect(err.message).toMatch(/1024 layers.*needs \d+ bytes, the file has 256/);
  });

  it('every llama2.c header field above its bound is refused naming the field (seq_len 2^24 was accepted)', async () => {
    const rand = prng(randomSeed());
    for (const field of LLAMA2C_FIELDS) {
      const file = fresh(`${field}.bin`);
      // a file of exactly the size the header implies: only the bound can refuse it
      const over = LLAMA2C_LIMITS[field] + 1;
      if (field === 'seq_len') writeFileSync(file, tinyLlama2c(rand, { seq_len: 16_777_216 }));
      else writeFileSync(file, llama2cHeader({ [field]: over }));
      const err = await failure(Llama2cModel.open(file));
      expect(err.code, field).toBe('E_LLAMA2C');
      expect(err.message, field).toContain(`${field} = ${field === 'seq_len' ? 16_777_216 : over}`);
    }
    // and the bound itself is fine: a tiny model with seq_len at the limit opens
    const file = fresh('seq-ok.bin');
    writeFileSync(file, tinyLlama2c(rand, { seq_len: LLAMA2C_LIMITS.seq_len }));
    const m = await Llama2cModel.open(file);
    expect(m.config.maxPositionEmbeddings).toBe(LLAMA2C_LIMITS.seq_len);
    await m.close();
  });

  it('config.json sizes above their bounds are E_CONFIG naming the field; a GPTQ config of 10^7 layers no longer hangs inspect', async () => {
    const rand = prng(randomSeed());
    for (const field of Object.keys(CONFIG_LIMITS) as (keyof typeof CONFIG_LIMITS)[]) {
      const files = tinyModelFiles(rand, GPTQ4);
      const config = { ...tinyConfig(GPTQ4), [field]: CONFIG_LIMITS[field] + 1 };
      files.set('config.json', Buffer.from(JSON.stringify(config)));
      const dir = writeFiles(fresh(field), files);
      for (const [what, open] of [
        ['openModel', () => openModel(dir, { device: 'cpu' })],
        ['inspect', () => inspectModel(dir)],
      ] as const) {
        const err = await failure(open());
        expect(err.code, `${field} via ${what}`).toBe('E_CONFIG');
        expect(err.message, `${field} via ${what}`).toContain(field);
      }
    }
    // within the bound, the count is checked against the tensors (inspect looped 7·10^7 times before)
    const files = tinyModelFiles(rand, GPTQ4);
    files.set('config.json', Buffer.from(JSON.stringify({ ...tinyConfig(GPTQ4), num_hidden_layers: 4000 })));
    const dir = writeFiles(fresh('layers4000'), files);
    const [err, ms] = await timed(() => failure(inspectModel(dir)));
    expect(err.code).toBe('E_CONFIG');
    expect(ms).toBeLessThan(2000);
  });
});

describe('11: tokenizer.json ids are bounded by the vocabulary', () => {
  it('an id of 2^31 is E_TOKENIZER at once (was 84 s); so are negative, fractional and missing ids', async () => {
    const cases: [string, (j: Record<string, any>) => void][] = [
      ['vocab id 2^31', (j) => (j.model.vocab.ab = 2 ** 31)],
      ['vocab id = entries', (j) => (j.model.vocab.ab = Object.keys(j.model.vocab).length)],
      ['vocab id -1', (j) => (j.model.vocab.ab = -1)],
      ['vocab id 1.5', (j) => (j.model.vocab.ab = 1.5)],
      ['vocab id "7"', (j) => (j.model.vocab.ab = '7')],
      ['added token id 2^31', (j) => (j.added_tokens[1].id = 2 ** 31)],
      ['added token without id', (j) => delete j.added_tokens[2].id],
    ];
    for (const [what, edit] of cases) {
      const dir = fresh('tok');
      const json = tinyTokenizerJson() as Record<string, any>;
      edit(json);
      writeFiles(dir, new Map([['tokenizer.json', Buffer.from(JSON.stringify(json))]]));
      const [err, ms] = await timed(() => failure(loadTokenizer(join(dir, 'tokenizer.json'))));
      expect(err.code, what).toBe('E_TOKENIZER');
      expect(err.details.file, what).toBe(join(dir, 'tokenizer.json'));
      expect(ms, what).toBeLessThan(2000);
    }
    // the unedited file loads, and its ids round-trip
    const dir = writeFiles(
      fresh('tok'),
      new Map([['tokenizer.json', Buffer.from(JSON.stringify(tinyTokenizerJson()))]]),
    );
    const tok = await loadTokenizer(join(dir, 'tokenizer.json'));
    expect(tok.decode(tok.encode('ab ba c'))).toBe('ab ba c');
  });
});

describe('12: metadata that contradicts itself or the tensors is refused, naming both values', () => {
  it('num_hidden_layers smaller or larger than the layers present (layers were silently dropped)', async () => {
    const rand = prng(randomSeed());
    for (const layers of [1, 3]) {
      const files = tinyModelFiles(rand);
      files.set('config.json', Buffer.from(JSON.stringify({ ...tinyConfig(), num_hidden_layers: layers })));
      const dir = writeFiles(fresh('layers'), files);
      const opened = await failure(openModel(dir, { device: 'cpu' }));
      if (layers === 1) {
        expect(opened.code).toBe('E_CONFIG');
        expect(opened.message).toContain(`num_hidden_layers is 1, but the checkpoint holds layers 0 to 1 (2)`);
      } else {
        // a missing layer is named by its first missing tensor
        expect(opened.code).toBe('E_MISSING_TENSOR');
        expect(opened.details.tensor).toBe('model.layers.2.self_attn.q_proj.weight');
      }
      const inspected = await failure(inspectModel(dir));
      expect(inspected.code).toBe('E_CONFIG');
      expect(inspected.message).toContain(`num_hidden_layers is ${layers}, but the checkpoint holds layers 0 to 1 (2)`);
    }
  });

  it('checkpoint_format, bits or group_size of config.json contradicting quantize_config.json', async () => {
    const rand = prng(randomSeed());
    const cases: [string, Record<string, unknown>, string, string][] = [
      ['checkpoint_format', { checkpoint_format: 'gptq_v2' }, '"gptq"', '"gptq_v2"'],
      ['bits', { bits: 8 }, '4', '8'],
      ['group_size', { group_size: 16 }, '8', '16'],
      ['desc_act', { desc_act: true }, 'false', 'true'],
    ];
    for (const [field, change, inConfig, inQuantize] of cases) {
      const files = tinyModelFiles(rand, GPTQ4);
      files.set('quantize_config.json', Buffer.from(JSON.stringify({ ...quantizeConfig(GPTQ4), ...change })));
      const dir = writeFiles(fresh('qc'), files);
      for (const open of [() => openModel(dir, { device: 'cpu', load: 'globals' }), () => inspectModel(dir)]) {
        const err = await failure(open());
        expect(err.code, field).toBe('E_CONFIG');
        expect(err.message, field).toContain(`quantization_config.${field} is ${inConfig} but`);
        expect(err.message, field).toContain(`says ${inQuantize}`);
      }
    }
  });

  it('quantization_config bits contradicting the packed tensors is refused at open, not at first use', async () => {
    const rand = prng(randomSeed());
    const files = tinyModelFiles(rand, GPTQ4);
    const claimed = { ...GPTQ4, bits: 8 as const };
    files.set('config.json', Buffer.from(JSON.stringify(tinyConfig(claimed))));
    files.set('quantize_config.json', Buffer.from(JSON.stringify(quantizeConfig(claimed))));
    const dir = writeFiles(fresh('bits'), files);
    for (const open of [
      () => HfModel.open(dir),
      () => openModel(dir, { device: 'cpu', load: 'globals' }),
      () => inspectModel(dir),
    ]) {
      const err = await failure(open());
      expect(err.code).toBe('E_GPTQ_FORMAT');
      expect(err.message).toMatch(
        /qweight '.*' has shape \[2, 16\]; quantization_config.bits 8 .* needs \[4, 16\] \(the shape of 4-bit weights\)/,
      );
    }
  });

  it('an I16 qweight is refused, not widened to int32 words', async () => {
    const rand = prng(randomSeed());
    const tensors = tinyTensors(rand, GPTQ4).map((t) =>
      t.name.endsWith('.qweight') ? { ...t, dtype: 'I16' as const, bytes: t.bytes.slice(0, t.bytes.length / 2) } : t,
    );
    const files = tinyModelFiles(rand, GPTQ4);
    files.set('model.safetensors', safetensorsBytes(tensors));
    const dir = writeFiles(fresh('i16'), files);
    for (const open of [() => HfModel.open(dir), () => openModel(dir, { device: 'cpu' }), () => inspectModel(dir)]) {
      const err = await failure(open());
      expect(err.code).toBe('E_GPTQ_FORMAT');
      expect(err.message).toMatch(/qweight '.*' is stored as I16, expected I32/);
    }
  });

  it('GPTQ tensors without any quantization config are refused; quantize_config.json alone is enough', async () => {
    const rand = prng(randomSeed());
    const files = tinyModelFiles(rand, GPTQ4);
    files.set('config.json', Buffer.from(JSON.stringify(tinyConfig())));
    files.delete('quantize_config.json');
    const err = await failure(HfModel.open(writeFiles(fresh('noq'), files)));
    expect(err.code).toBe('E_GPTQ_FORMAT');
    expect(err.message).toMatch(/no quantization_config/);
    // older AutoGPTQ checkpoints: quantize_config.json only
    files.set('quantize_config.json', Buffer.from(JSON.stringify(quantizeConfig(GPTQ4))));
    const model = await openModel(writeFiles(fresh('onlyq'), files), { device: 'cpu' });
    try {
      expect(model.config.quantization).toMatchObject({ bits: 4, groupSize: 8, checkpointFormat: 'gptq' });
      const r = await perplexity(model, 'ab ba abc cab a b c', { seqLen: 4 });
      expect(Number.isFinite(r.ppl)).toBe(true);
    } finally {
      await model.close();
    }
  });
});

describe('12: a tokenizer.model whose special ids lie outside its vocabulary', () => {
  it('is E_TOKENIZER naming the field (encode with BOS emitted the id, refused later by the model)', async () => {
    for (const field of ['bosId', 'eosId', 'unkId'] as const) {
      const sp = tinySentencePiece();
      sp[field] = sp.pieces.length + 5;
      const dir = writeFiles(fresh('sp'), new Map([['tokenizer.model', serializeSentencePieceModel(sp)]]));
      const err = await failure(loadTokenizer(join(dir, 'tokenizer.model')));
      expect(err.code, field).toBe('E_TOKENIZER');
      expect(err.message, field).toContain(
        `${field.replace('Id', '_id')} ${sp.pieces.length + 5} is outside the vocabulary of ${sp.pieces.length} pieces`,
      );
    }
  });
});

describe('13: every failure a user can cause is a LowbitError naming the path or option', () => {
  it('decode of an empty list is "", of a non-list E_ARGUMENT, for both tokenizer kinds', async () => {
    const dir = writeFiles(fresh('tok'), tinyModelFiles(prng(randomSeed())));
    for (const kind of ['sentencepiece', 'tokenizer.json'] as const) {
      const tok = await loadTokenizer(dir, { kind });
      expect(tok.decode([]), kind).toBe('');
      expect(tok.decode(new Int32Array(0)), kind).toBe('');
      for (const bad of [null, undefined, 3, 'ab', { length: -1 }]) {
        const err = await failure(() => tok.decode(bad as never));
        expect(err.code, `${kind} ${String(bad)}`).toBe('E_ARGUMENT');
        expect(err.details.option).toBe('ids');
      }
    }
  });

  it('a model directory without config.json: openModel says so, inspect describes its tensors', async () => {
    const files = tinyModelFiles(prng(randomSeed()));
    files.delete('config.json');
    const dir = writeFiles(fresh('nocfg'), files);
    const err = await failure(openModel(dir, { device: 'cpu' }));
    expect(err.code).toBe('E_IO');
    expect(err.details.file).toBe(join(dir, 'config.json'));
    const report = await inspectModel(dir); // was a raw ENOENT
    expect(report.config).toBeUndefined();
    expect(report.tensors.length).toBe(2 + TINY.layers * 9);
    rmSync(join(dir, 'model.safetensors'));
    const empty = await failure(inspectModel(dir));
    expect(empty.code).toBe('E_IO');
  });

  it('a path that is not a string is E_ARGUMENT for every reader (was a TypeError from node:path)', async () => {
    const readers: [string, (p: never) => Promise<unknown>][] = [
      ['inspectModel', inspectModel],
      ['openModelFiles', openModelFiles],
      ['HfModel.open', HfModel.open],
      ['Checkpoint.open', Checkpoint.open],
      ['Llama2cModel.open', Llama2cModel.open],
      ['SafetensorsFile.open', SafetensorsFile.open],
      ['openModel', openModel],
      ['loadTokenizer', loadTokenizer],
    ];
    for (const [what, open] of readers) {
      for (const bad of [undefined, null, 3, '', {}]) {
        const err = await failure(() => open(bad as never));
        expect(err.code, `${what}(${String(bad)})`).toBe('E_ARGUMENT');
      }
    }
  });

  it('paths that are not there or not readable as asked are E_IO naming them', async () => {
    const missing = join(tmp.dir, 'no-such-thing');
    for (const open of [
      () => openModel(missing),
      () => inspectModel(missing),
      () => loadTokenizer(missing),
      () => loadTokenizer(join(missing, 'tokenizer.json')),
    ]) {
      const err = await failure(open());
      expect(err.code).toBe('E_IO');
      expect(String(err.details.file)).toContain('no-such-thing');
    }
  });
});

describe('15: no error path leaks a file handle', () => {
  // Descriptors open on this test's own files. (Not all descriptors: on a machine with a GPU the CUDA
  // driver keeps /dev/nvidia* open after its first initialisation, which is not a leak of ours.)
  const openFds = (): number =>
    readdirSync('/proc/self/fd').filter((fd) => {
      try {
        return readlinkSync(`/proc/self/fd/${fd}`).startsWith(tmp.dir);
      } catch {
        return false; // closed between the listing and the read
      }
    }).length;

  it.runIf(process.platform === 'linux')(
    'openModel failing on the device, maxSeq, the tokenizer or a weight closes every file',
    async () => {
      const rand = prng(randomSeed());
      const dir = writeFiles(fresh('fds'), tinyModelFiles(rand));
      const badTokenizer = writeFiles(fresh('fds-tok'), tinyModelFiles(rand));
      writeFileSync(join(badTokenizer, 'tokenizer.model'), 'not a model');
      const l2c = fresh('fds.bin');
      writeFileSync(l2c, tinyLlama2c(rand));
      const cases: [string, () => Promise<unknown>, string][] = [
        ['no such CUDA device', () => openModel(dir, { device: 'cuda:99' }), 'E_CUDA_UNAVAILABLE'],
        ['bad maxSeq', () => openModel(dir, { device: 'cpu', maxSeq: -1 }), 'E_ARGUMENT'],
        ['bad device name', () => openModel(dir, { device: 'tpu' as never }), 'E_ARGUMENT'],
        ['broken tokenizer', () => openModel(badTokenizer, { device: 'cpu' }), 'E_TOKENIZER'],
        ['llama2.c, no CUDA device', () => openModel(l2c, { device: 'cuda:99' }), 'E_CUDA_UNAVAILABLE'],
      ];
      const before = openFds();
      for (const [what, open, code] of cases) {
        expect((await failure(open())).code, what).toBe(code);
        expect(openFds(), `${what} left a file open`).toBe(before);
      }
    },
  );
});

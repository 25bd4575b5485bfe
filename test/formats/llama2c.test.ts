import { existsSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { LowbitError } from '../../src/errors.js';
import { convertLlama2c } from '../../src/formats/convert.js';
import { HfModel } from '../../src/formats/hf.js';
import { LLAMA2C_MAGIC, Llama2cModel } from '../../src/formats/llama2c.js';
import { inspectModel } from '../../src/formats/inspect.js';
import { loadTokenizer } from '../../src/formats/tokenizer.js';
import { run as convertCli } from '../../src/cli/convert.js';
import { dataPath, prng, randomSeed, sameBytes, tempDir } from './helpers.js';

const tmp = tempDir();
afterAll(() => tmp.cleanup());

interface Dims {
  dim: number;
  hidden: number;
  layers: number;
  heads: number;
  kvHeads: number;
  vocab: number;
  seqLen: number;
}

/** Random llama2.c weights in llama2.c's own layout ([out, in] rows, interleaved RoPE pairs). */
function randomWeights(d: Dims, shared: boolean, rand: () => number) {
  const hd = d.dim / d.heads;
  const r = (n: number) => Float32Array.from({ length: n }, () => rand() * 2 - 1);
  const perLayer = (n: number) => Array.from({ length: d.layers }, () => r(n));
  return {
    emb: r(d.vocab * d.dim),
    attNorm: perLayer(d.dim),
    wq: perLayer(d.heads * hd * d.dim),
    wk: perLayer(d.kvHeads * hd * d.dim),
    wv: perLayer(d.kvHeads * hd * d.dim),
    wo: perLayer(d.dim * d.heads * hd),
    ffnNorm: perLayer(d.dim),
    w1: perLayer(d.hidden * d.dim),
    w2: perLayer(d.dim * d.hidden),
    w3: perLayer(d.hidden * d.dim),
    norm: r(d.dim),
    cls: shared ? undefined : r(d.vocab * d.dim),
    hd,
  };
}
type Weights = ReturnType<typeof randomWeights>;

function ints(values: number[]): Buffer {
  return Buffer.from(new Int32Array(values).buffer);
}
function f32(...arrays: Float32Array[]): Buffer {
  return Buffer.concat(arrays.map((a) => Buffer.from(a.buffer, a.byteOffset, a.byteLength)));
}

function writeV0(path: string, d: Dims, w: Weights): void {
  const header = ints([d.dim, d.hidden, d.layers, d.heads, d.kvHeads, w.cls ? -d.vocab : d.vocab, d.seqLen]);
  const freqs = new Float32Array(d.seqLen * (w.hd / 2));
  writeFileSync(
    path,
    Buffer.concat([
      header,
      f32(
        w.emb,
        ...w.attNorm,
        ...w.wq,
        ...w.wk,
        ...w.wv,
        ...w.wo,
        ...w.ffnNorm,
        ...w.w1,
        ...w.w2,
        ...w.w3,
        w.norm,
        freqs,
        freqs,
      ),
      w.cls ? f32(w.cls) : Buffer.alloc(0),
    ]),
  );
}

function header256(version: number, d: Dims, shared: boolean, groupSize?: number): Buffer {
  const h = Buffer.alloc(256);
  h.writeUInt32LE(LLAMA2C_MAGIC, 0);
  h.writeInt32LE(version, 4);
  ints([d.dim, d.hidden, d.layers, d.heads, d.kvHeads, d.vocab, d.seqLen]).copy(h, 8);
  h.writeUInt8(shared ? 1 : 0, 36);
  if (groupSize !== undefined) h.writeInt32LE(groupSize, 37);
  return h;
}

function writeV1(path: string, d: Dims, w: Weights): void {
  writeFileSync(
    path,
    Buffer.concat([
      header256(1, d, !w.cls),
      f32(
        ...w.attNorm,
        ...w.ffnNorm,
        w.norm,
        w.emb,
        ...w.wq,
        ...w.wk,
        ...w.wv,
        ...w.wo,
        ...w.w1,
        ...w.w2,
        ...w.w3,
        ...(w.cls ? [w.cls] : []),
      ),
    ]),
  );
}

/** Q8_0 as llama2.c's export does it; returns the dequantized values the reader must produce. */
function writeV2(path: string, d: Dims, w: Weights, gs: number): Map<Float32Array, Float32Array> {
  const quantized = [w.emb, ...w.wq, ...w.wk, ...w.wv, ...w.wo, ...w.w1, ...w.w2, ...w.w3, ...(w.cls ? [w.cls] : [])];
  const qs: Buffer[] = [];
  const scales: Float32Array[] = [];
  const dequant = new Map<Float32Array, Float32Array>();
  for (const t of quantized) {
    const q = new Int8Array(t.length);
    const s = new Float32Array(t.length / gs);
    const back = new Float32Array(t.length);
    for (let g = 0; g < s.length; g++) {
      let max = 0;
      for (let i = g * gs; i < (g + 1) * gs; i++) max = Math.max(max, Math.abs(t[i]!));
      s[g] = Math.fround(max / 127);
      for (let i = g * gs; i < (g + 1) * gs; i++) {
        q[i] = Math.round(t[i]! / s[g]!);
        back[i] = Math.fround(q[i]! * s[g]!);
      }
    }
    qs.push(Buffer.from(q.buffer));
    scales.push(s);
    dequant.set(t, back);
  }
  writeFileSync(
    path,
    Buffer.concat([header256(2, d, !w.cls, gs), f32(...w.attNorm, ...w.ffnNorm, w.norm), ...qs, f32(...scales)]),
  );
  return dequant;
}

/** The HF layout of a q/k weight: numpy's reshape(heads, hd/2, 2, dim).transpose(1, 2) per head, by index. */
function hfPermuted(w: Float32Array, heads: number, cols: number): Float32Array {
  const hd = w.length / cols / heads;
  const out = new Float32Array(w.length);
  // out[h][t][i][c] = w[h][i][t][c]
  for (let h = 0; h < heads; h++)
    for (let t = 0; t < 2; t++)
      for (let i = 0; i < hd / 2; i++)
        for (let c = 0; c < cols; c++)
          out[((h * 2 + t) * (hd / 2) + i) * cols + c] = w[((h * (hd / 2) + i) * 2 + t) * cols + c]!;
  return out;
}

function expectedTensors(
  d: Dims,
  w: Weights,
  map: (t: Float32Array) => Float32Array = (t) => t,
): Map<string, Float32Array> {
  const m = new Map<string, Float32Array>([
    ['model.embed_tokens.weight', map(w.emb)],
    ['model.norm.weight', w.norm],
  ]);
  for (let l = 0; l < d.layers; l++) {
    const p = `model.layers.${l}.`;
    m.set(p + 'input_layernorm.weight', w.attNorm[l]!);
    m.set(p + 'post_attention_layernorm.weight', w.ffnNorm[l]!);
    m.set(p + 'self_attn.q_proj.weight', hfPermuted(map(w.wq[l]!), d.heads, d.dim));
    m.set(p + 'self_attn.k_proj.weight', hfPermuted(map(w.wk[l]!), d.kvHeads, d.dim));
    m.set(p + 'self_attn.v_proj.weight', map(w.wv[l]!));
    m.set(p + 'self_attn.o_proj.weight', map(w.wo[l]!));
    m.set(p + 'mlp.gate_proj.weight', map(w.w1[l]!));
    m.set(p + 'mlp.down_proj.weight', map(w.w2[l]!));
    m.set(p + 'mlp.up_proj.weight', map(w.w3[l]!));
  }
  if (w.cls) m.set('lm_head.weight', map(w.cls));
  return m;
}

async function expectModel(path: string, expected: Map<string, Float32Array>, seed: number): Promise<void> {
  const model = await Llama2cModel.open(path);
  try {
    expect(model.names.sort(), `seed ${seed}`).toEqual([...expected.keys()].sort());
    for (const [name, want] of expected) {
      const got = await model.readTensor(name);
      expect(sameBytes(got.data, want), `${name} (seed ${seed})`).toBe(true);
    }
  } finally {
    await model.close();
  }
}

describe('llama2.c checkpoints (synthetic, random weights)', () => {
  const dims: Dims = { dim: 24, hidden: 40, layers: 2, heads: 6, kvHeads: 2, vocab: 18, seqLen: 7 };

  for (const shared of [true, false]) {
    it(`v0 and v1, ${shared ? 'shared' : 'unshared'} classifier, read in HF layout`, async () => {
      const seed = randomSeed();
      const w = randomWeights(dims, shared, prng(seed));
      const expected = expectedTensors(dims, w);
      writeV0(join(tmp.dir, `v0-${shared}.bin`), dims, w);
      writeV1(join(tmp.dir, `v1-${shared}.bin`), dims, w);
      await expectModel(join(tmp.dir, `v0-${shared}.bin`), expected, seed);
      await expectModel(join(tmp.dir, `v1-${shared}.bin`), expected, seed);
      const m = await Llama2cModel.open(join(tmp.dir, `v0-${shared}.bin`));
      expect(m.config.tieWordEmbeddings).toBe(shared);
      expect(m.tensors.lmHead).toBe(shared ? 'model.embed_tokens.weight' : 'lm_head.weight');
      expect(m.config).toMatchObject({
        hiddenSize: 24,
        intermediateSize: 40,
        numLayers: 2,
        numHeads: 6,
        numKvHeads: 2,
        headDim: 4,
        vocabSize: 18,
        maxPositionEmbeddings: 7,
      });
      await m.close();
    });
  }

  it('v2 (Q8_0) is read dequantized', async () => {
    const seed = randomSeed();
    const w = randomWeights(dims, false, prng(seed));
    const dq = writeV2(join(tmp.dir, 'v2.bin'), dims, w, 8);
    await expectModel(
      join(tmp.dir, 'v2.bin'),
      expectedTensors(dims, w, (t) => dq.get(t)!),
      seed,
    );
    const report = await inspectModel(join(tmp.dir, 'v2.bin'));
    expect(report.llama2c).toMatchObject({ version: 2, sharedClassifier: false, q8GroupSize: 8 });
    const byName = new Map(report.tensors.map((t) => [t.name, t]));
    expect(byName.get('model.layers.1.mlp.down_proj.weight')).toMatchObject({
      dtype: 'Q8_0',
      shape: [24, 40],
      bytes: 24 * 40 + (4 * (24 * 40)) / 8,
    });
    expect(byName.get('model.norm.weight')).toMatchObject({ dtype: 'F32', bytes: 24 * 4 });
    expect(report.totalBytes).toBe(report.tensors.reduce((a, t) => a + t.bytes, 0));
  });

  it('rejects truncated, padded and implausible files with E_LLAMA2C', async () => {
    const w = randomWeights(dims, true, prng(1));
    const good = join(tmp.dir, 'good.bin');
    writeV1(good, dims, w);
    const bytes = readFileSync(good);
    const cases: [string, Buffer][] = [
      ['truncated', bytes.subarray(0, bytes.length - 4)],
      ['trailing bytes', Buffer.concat([bytes, Buffer.alloc(4)])],
      ['short header', bytes.subarray(0, 100)],
      ['tiny', bytes.subarray(0, 10)],
      ['version 7', Buffer.concat([Buffer.from([0x32, 0x34, 0x6b, 0x61, 7, 0, 0, 0]), bytes.subarray(8)])],
      ['negative dim', Buffer.concat([bytes.subarray(0, 8), ints([-24]), bytes.subarray(12)])],
      ['heads not dividing dim', Buffer.concat([bytes.subarray(0, 20), ints([5]), bytes.subarray(24)])],
    ];
    for (const [what, data] of cases) {
      const p = join(tmp.dir, `bad-${what.replace(/ /g, '-')}.bin`);
      writeFileSync(p, data);
      const err = await Llama2cModel.open(p).then(
        () => undefined,
        (e: unknown) => e,
      );
      expect(err, what).toBeInstanceOf(LowbitError);
      expect((err as LowbitError).code, what).toBe('E_LLAMA2C');
      expect((err as LowbitError).details.file, what).toBe(p);
    }
  });
});

describe('stories260K.bin', () => {
  it('loads (legacy v0, shared classifier) into the same tensors as stories260K-hf', async () => {
    const bin = await Llama2cModel.open(dataPath('stories260K.bin'));
    const hf = await HfModel.open(dataPath('stories260K-hf'));
    try {
      expect(bin.header).toMatchObject({
        version: 0,
        dim: 64,
        hiddenDim: 172,
        nLayers: 5,
        nHeads: 8,
        nKvHeads: 4,
        vocabSize: 512,
        seqLen: 512,
        sharedClassifier: true,
      });
      expect(bin.names.sort()).toEqual(hf.names.sort());
      for (const name of hf.names) {
        const a = await bin.readTensor(name);
        const b = await hf.readTensor(name);
        expect(a.shape, name).toEqual(b.shape);
        expect(sameBytes(a.data, b.data), name).toBe(true);
      }
    } finally {
      await Promise.all([bin.close(), hf.close()]);
    }
  });

  it('lowbit convert writes an HF directory whose tensors, config and tokenizer match stories260K-hf', async () => {
    const out = join(tmp.dir, 'converted');
    expect(await convertCli([dataPath('stories260K.bin'), '--tokenizer', dataPath('tok512.bin'), '--out', out])).toBe(
      0,
    );
    for (const f of [
      'config.json',
      'generation_config.json',
      'model.safetensors',
      'tokenizer.model',
      'tokenizer.json',
      'tokenizer_config.json',
    ])
      expect(existsSync(join(out, f)), f).toBe(true);
    // the tokenizer.json is the one transformers itself wrote for stories260K-hf
    expect(JSON.parse(readFileSync(join(out, 'tokenizer.json'), 'utf8'))).toEqual(
      JSON.parse(readFileSync(dataPath('stories260K-hf/tokenizer.json'), 'utf8')),
    );
    const mine = await HfModel.open(out);
    const ref = await HfModel.open(dataPath('stories260K-hf'));
    try {
      const { raw: _a, ...c1 } = mine.config;
      const { raw: _b, ...c2 } = ref.config;
      expect(c1).toEqual(c2);
      expect(mine.names.sort()).toEqual(ref.names.sort());
      for (const name of ref.names)
        expect(sameBytes((await mine.readTensor(name)).data, (await ref.readTensor(name)).data), name).toBe(true);
    } finally {
      await Promise.all([mine.close(), ref.close()]);
    }
    // the written tokenizer.model is a SentencePiece model giving the reference stream
    const tok = await loadTokenizer(out);
    expect(tok.kind).toBe('sentencepiece');
    const refStream = (
      JSON.parse(readFileSync(dataPath('reference.json'), 'utf8')) as {
        ppl: Record<string, { file: string; sentencepiece: { tokens: number; first16: number[] } }>;
      }
    ).ppl.tinystories_eval!;
    const ids = tok.encode(readFileSync(dataPath(refStream.file), 'utf8'), { bos: true });
    expect(ids.length).toBe(refStream.sentencepiece.tokens);
    expect(Array.from(ids.subarray(0, 16))).toEqual(refStream.sentencepiece.first16);
    // a second convert into the same, now non-empty, directory is refused
    await expect(convertLlama2c(dataPath('stories260K.bin'), out)).rejects.toMatchObject({ code: 'E_IO' });
  });
});

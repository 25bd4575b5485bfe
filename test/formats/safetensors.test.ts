import { existsSync, mkdirSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { LowbitError } from '../../src/errors.js';
import { Checkpoint } from '../../src/formats/checkpoint.js';
import { HfModel } from '../../src/formats/hf.js';
import {
  CheckpointWriter,
  encodeHeader,
  writeSafetensors,
  type TensorSpec,
} from '../../src/formats/safetensors-writer.js';
import { BufferSource, MAX_HEADER_BYTES, SafetensorsFile, type ByteSource } from '../../src/formats/safetensors.js';
import { Tensor } from '../../src/tensor.js';
import { prng, randomSeed, tempDir } from './helpers.js';

const tmp = tempDir();
afterAll(() => tmp.cleanup());

/** A safetensors file in memory from a raw header object and a data section. */
function fileOf(header: unknown, data: Uint8Array = new Uint8Array(0), pad = 0): Uint8Array {
  const json = Buffer.from(JSON.stringify(header) + ' '.repeat(pad));
  const out = new Uint8Array(8 + json.length + data.length);
  new DataView(out.buffer).setBigUint64(0, BigInt(json.length), true);
  out.set(json, 8);
  out.set(data, 8 + json.length);
  return out;
}

async function openBytes(bytes: Uint8Array): Promise<SafetensorsFile> {
  return SafetensorsFile.fromSource(new BufferSource(bytes, 'mem.safetensors'));
}

async function errorOf(p: Promise<unknown>): Promise<LowbitError> {
  const e = await p.then(
    () => undefined,
    (err: unknown) => err,
  );
  expect(e).toBeInstanceOf(LowbitError);
  return e as LowbitError;
}

describe('safetensors reader', () => {
  it('reads every dtype, with F64/I64/I16/I8/BOOL widened, and __metadata__', async () => {
    const seed = randomSeed();
    const rand = prng(seed);
    const f64 = Float64Array.from({ length: 6 }, () => rand() * 100 - 50);
    const i64 = BigInt64Array.from({ length: 3 }, () => BigInt(Math.floor(rand() * 2 ** 31) - 2 ** 30));
    const i16 = Int16Array.from({ length: 5 }, () => Math.floor(rand() * 65536) - 32768);
    const i8 = Int8Array.from({ length: 7 }, () => Math.floor(rand() * 256) - 128);
    const bool = Uint8Array.from({ length: 4 }, () => (rand() < 0.5 ? 1 : 0));
    const f32 = Float32Array.from({ length: 6 }, () => rand());
    const specs: [TensorSpec, ArrayBufferView][] = [
      [{ name: 'a.f64', dtype: 'F64', shape: [2, 3] }, f64],
      [{ name: 'b.i64', dtype: 'I64', shape: [3] }, i64],
      [{ name: 'c.i16', dtype: 'I16', shape: [5] }, i16],
      [{ name: 'd.i8', dtype: 'I8', shape: [7, 1] }, i8],
      [{ name: 'e.bool', dtype: 'BOOL', shape: [4] }, bool],
      [{ name: 'f.f32', dtype: 'F32', shape: [3, 2] }, f32],
      [{ name: 'g.empty', dtype: 'F16', shape: [0, 4] }, new Uint16Array(0)],
      [{ name: 'h.scalar', dtype: 'I32', shape: [] }, new Int32Array([-7])],
    ];
    const path = join(tmp.dir, 'dtypes.safetensors');
    const w = await CheckpointWriter.create(
      tmp.dir,
      specs.map(([s]) => s),
      { fileName: 'dtypes.safetensors', metadata: { format: 'pt', note: 'ünïcode' } },
    );
    for (const [s, data] of [...specs].reverse())
      await w.put(s.name, new Uint8Array(data.buffer, data.byteOffset, data.byteLength));
    await w.finish();
    const file = await SafetensorsFile.open(path);
    try {
      expect(file.metadata).toEqual({ format: 'pt', note: 'ünïcode' });
      expect(file.names).toEqual(specs.map(([s]) => s.name));
      expect(file.header.dataOffset % 8).toBe(0);
      const read = async (n: string) => file.readTensor(n);
      expect(Array.from((await read('a.f64')).data)).toEqual(Array.from(f64, (x) => Math.fround(x)));
      expect((await read('a.f64')).dtype).toBe('f32');
      expect(Array.from((await read('b.i64')).data)).toEqual(Array.from(i64, Number));
      expect(Array.from((await read('c.i16')).data)).toEqual(Array.from(i16));
      expect(Array.from((await read('d.i8')).data)).toEqual(Array.from(i8));
      expect((await read('d.i8')).shape).toEqual([7, 1]);
      expect(Array.from((await read('e.bool')).data)).toEqual(Array.from(bool));
      expect((await read('f.f32')).data).toEqual(f32);
      expect((await read('g.empty')).shape).toEqual([0, 4]);
      expect(Array.from((await read('h.scalar')).data)).toEqual([-7]);
      expect((await errorOf(read('nope'))).code).toBe('E_MISSING_TENSOR');
    } finally {
      await file.close();
    }
    expect(readdirSync(tmp.dir).filter((f) => f.includes('.tmp-'))).toEqual([]);
  });

  it('gives each kind of bad header its precise code and names the tensor', async () => {
    const data = new Uint8Array(16);
    const good = {
      __metadata__: { format: 'pt' },
      x: { dtype: 'F32', shape: [2], data_offsets: [0, 8] },
      y: { dtype: 'I32', shape: [2], data_offsets: [8, 16] },
    };
    const cases: [string, Uint8Array, string, string?][] = [
      ['empty file', new Uint8Array(0), 'E_SAFETENSORS_HEADER'],
      ['length past EOF', fileOf(good, data).subarray(0, 40), 'E_SAFETENSORS_HEADER'],
      [
        'not JSON',
        (() => {
          const b = fileOf(good, data);
          b[12] = 0x7b;
          b[13] = 0x7b;
          return b;
        })(),
        'E_SAFETENSORS_HEADER',
      ],
      ['not an object', fileOf([1, 2], data), 'E_SAFETENSORS_HEADER'],
      ['unknown dtype', fileOf({ ...good, y: { ...good.y, dtype: 'Q4' } }, data), 'E_SAFETENSORS_DTYPE', 'y'],
      ['bad shape', fileOf({ ...good, x: { ...good.x, shape: [-2] } }, data), 'E_SAFETENSORS_HEADER', 'x'],
      ['fractional shape', fileOf({ ...good, x: { ...good.x, shape: [1.5] } }, data), 'E_SAFETENSORS_HEADER', 'x'],
      ['size mismatch', fileOf({ ...good, x: { ...good.x, shape: [3] } }, data), 'E_SAFETENSORS_OFFSETS', 'x'],
      ['overlap', fileOf({ ...good, y: { ...good.y, data_offsets: [4, 12] } }, data), 'E_SAFETENSORS_OFFSETS', 'y'],
      [
        'gap',
        fileOf({ x: good.x, y: { ...good.y, data_offsets: [12, 20] } }, new Uint8Array(20)),
        'E_SAFETENSORS_OFFSETS',
        'y',
      ],
      ['past the data', fileOf(good, data.subarray(0, 12)), 'E_SAFETENSORS_OFFSETS', 'y'],
      ['trailing bytes', fileOf(good, new Uint8Array(20)), 'E_SAFETENSORS_OFFSETS'],
      [
        'reversed offsets',
        fileOf({ ...good, y: { ...good.y, data_offsets: [16, 8] } }, data),
        'E_SAFETENSORS_OFFSETS',
        'y',
      ],
      ['missing offsets', fileOf({ ...good, y: { dtype: 'I32', shape: [2] } }, data), 'E_SAFETENSORS_HEADER', 'y'],
      ['non-string metadata', fileOf({ ...good, __metadata__: { n: 1 } }, data), 'E_SAFETENSORS_HEADER'],
      [
        'huge shape',
        fileOf({ ...good, x: { ...good.x, shape: [2 ** 40, 2 ** 40] } }, data),
        'E_SAFETENSORS_OFFSETS',
        'x',
      ],
    ];
    for (const [what, bytes, code, tensor] of cases) {
      const err = await errorOf(openBytes(bytes));
      expect(err.code, what).toBe(code);
      expect(err.details.file, what).toBe('mem.safetensors');
      if (tensor) expect(err.details.tensor, what).toBe(tensor);
    }
    // a valid file with the header padded by spaces opens
    const ok = await openBytes(fileOf(good, data, 5));
    expect(ok.names).toEqual(['x', 'y']);
  });

  it('bounds the header length before reading it', async () => {
    let largestRead = 0;
    const huge: ByteSource = {
      name: 'huge.safetensors',
      size: 2 * MAX_HEADER_BYTES + 8,
      async read(position: number, length: number) {
        largestRead = Math.max(largestRead, length);
        const b = new Uint8Array(length);
        if (position === 0) new DataView(b.buffer).setBigUint64(0, BigInt(MAX_HEADER_BYTES + 1), true);
        return b;
      },
      async close() {},
    };
    const err = await errorOf(SafetensorsFile.fromSource(huge));
    expect(err.code).toBe('E_SAFETENSORS_HEADER');
    expect(err.message).toMatch(/limit/);
    expect(largestRead).toBe(8);
  });

  it('reports a file truncated after opening as E_IO', async () => {
    const path = join(tmp.dir, 'shrinks.safetensors');
    await writeSafetensors(path, [['w', new Tensor('f32', [4], new Float32Array(4))]]);
    const file = await SafetensorsFile.open(path);
    writeFileSync(path, readFileSync(path).subarray(0, 90));
    expect((await errorOf(file.readTensor('w'))).code).toBe('E_IO');
    await file.close();
    expect((await errorOf(SafetensorsFile.open(join(tmp.dir, 'absent.safetensors')))).code).toBe('E_IO');
  });

  it('the writer pads the header to 8 bytes, refuses wrong sizes and leaves nothing behind on abort', async () => {
    const header = encodeHeader([{ name: 'a', dtype: 'U8', shape: [3] }]);
    expect((header.length - 8) % 8).toBe(0);
    const dir = join(tmp.dir, 'abort');
    const w = await CheckpointWriter.create(dir, [{ name: 'a', dtype: 'F32', shape: [2] }]);
    expect((await errorOf(w.put('a', new Uint8Array(7)))).code).toBe('E_SHAPE');
    expect((await errorOf(w.put('a', new Tensor('i32', [2], new Int32Array(2))))).code).toBe('E_DTYPE');
    expect((await errorOf(w.finish())).code).toBe('E_MISSING_TENSOR');
    await w.abort();
    expect(readdirSync(dir)).toEqual([]);
    expect((await errorOf(CheckpointWriter.create(dir, [{ name: 'a', dtype: 'Q8' as 'U8', shape: [1] }]))).code).toBe(
      'E_SAFETENSORS_DTYPE',
    );
  });
});

describe('sharded checkpoints', () => {
  async function writeSharded(dir: string, rand: () => number): Promise<Map<string, Float32Array>> {
    const tensors = new Map<string, Float32Array>();
    for (let i = 0; i < 7; i++)
      tensors.set(
        `t${i}`,
        Float32Array.from({ length: 10 + i }, () => rand()),
      );
    const w = await CheckpointWriter.create(
      dir,
      [...tensors].map(([name, d]) => ({ name, dtype: 'F32', shape: [d.length] })),
      { maxShardBytes: 100 },
    );
    for (const [name, d] of tensors) await w.put(name, new Tensor('f32', [d.length], d));
    await w.finish();
    return tensors;
  }

  it('writes shards and an index that read back as one store', async () => {
    const seed = randomSeed();
    const dir = join(tmp.dir, 'sharded');
    const tensors = await writeSharded(dir, prng(seed));
    const files = readdirSync(dir).sort();
    expect(files).toContain('model.safetensors.index.json');
    expect(files.filter((f) => /^model-\d{5}-of-\d{5}\.safetensors$/.test(f)).length).toBeGreaterThan(1);
    const ckpt = await Checkpoint.open(dir);
    try {
      expect(ckpt.names.sort()).toEqual([...tensors.keys()].sort());
      for (const [name, d] of tensors) expect((await ckpt.readTensor(name)).data, `seed ${seed}`).toEqual(d);
    } finally {
      await ckpt.close();
    }
  });

  it('missing shards, tensors absent from their shard and escaping shard names are typed errors', async () => {
    const dir = join(tmp.dir, 'sharded-bad');
    await writeSharded(dir, prng(1));
    const indexPath = join(dir, 'model.safetensors.index.json');
    const index = JSON.parse(readFileSync(indexPath, 'utf8')) as { weight_map: Record<string, string> };

    writeFileSync(indexPath, JSON.stringify({ weight_map: { ...index.weight_map, extra: index.weight_map.t0 } }));
    let err = await errorOf(Checkpoint.open(dir));
    expect(err.code).toBe('E_MISSING_TENSOR');
    expect(err.details.tensor).toBe('extra');

    writeFileSync(
      indexPath,
      JSON.stringify({ weight_map: { ...index.weight_map, t0: '../model-00001-of-00002.safetensors' } }),
    );
    expect((await errorOf(Checkpoint.open(dir))).code).toBe('E_SAFETENSORS_HEADER');

    writeFileSync(indexPath, JSON.stringify(index));
    rmSync(join(dir, index.weight_map.t6!));
    err = await errorOf(Checkpoint.open(dir));
    expect(err.code).toBe('E_MISSING_SHARD');
    expect(String(err.details.file)).toContain(index.weight_map.t6);

    writeFileSync(indexPath, '{"weight_map": ');
    expect((await errorOf(Checkpoint.open(dir))).code).toBe('E_SAFETENSORS_HEADER');
  });
});

describe('Hugging Face directories with missing pieces', () => {
  it('a config naming tensors the checkpoint lacks gives E_MISSING_TENSOR with file and tensor', async () => {
    const dir = join(tmp.dir, 'hf-missing');
    mkdirSync(dir, { recursive: true });
    const config = {
      model_type: 'llama',
      hidden_size: 8,
      intermediate_size: 12,
      num_hidden_layers: 1,
      num_attention_heads: 2,
      vocab_size: 10,
      tie_word_embeddings: true,
    };
    writeFileSync(join(dir, 'config.json'), JSON.stringify(config));
    await writeSafetensors(join(dir, 'model.safetensors'), [
      ['model.embed_tokens.weight', new Tensor('f32', [10, 8], new Float32Array(80))],
      ['model.norm.weight', new Tensor('f32', [8], new Float32Array(8))],
    ]);
    const err = await errorOf(HfModel.open(dir));
    expect(err.code).toBe('E_MISSING_TENSOR');
    expect(err.details).toEqual({ file: dir, tensor: 'model.layers.0.self_attn.q_proj.weight' });
    writeFileSync(join(dir, 'config.json'), '{"model_type": "llama",');
    expect((await errorOf(HfModel.open(dir))).code).toBe('E_CONFIG');
    // a config too large to be one is refused before it is read
    writeFileSync(join(dir, 'config.json'), Buffer.alloc((16 << 20) + 1, 0x20));
    const huge = await errorOf(HfModel.open(dir));
    expect(huge.code).toBe('E_CONFIG');
    expect(huge.message).toMatch(/more than/);
    rmSync(join(dir, 'config.json'));
    expect((await errorOf(HfModel.open(dir))).code).toBe('E_IO');
    expect(existsSync(join(dir, 'model.safetensors'))).toBe(true);
  });
});

/**
 * SpQR checkpoints (src/formats/spqr.ts): a stories260K model quantized with SpQR, written, read back
 * bit for bit (perm and outlier columns through 16-bit tensors) and evaluated to the same
 * perplexity; atomic writing; the shared check (writer refuses, reader refuses) on mutated weights
 * and configs; fuzzed tensors and configs fail with typed errors only.
 */
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { LowbitError } from '../../src/errors.js';
import { HfModel } from '../../src/formats/hf.js';
import { linearDims } from '../../src/formats/gptq.js';
import {
  openSpqrCheckpoint,
  parseSpqrQuantizationConfig,
  readSpqrTensors,
  spqrTensorName,
  writeSpqrCheckpoint,
  type SpqrQuantizationConfig,
} from '../../src/formats/spqr.js';
import { CheckpointWriter, writeSafetensors, type TensorSpec } from '../../src/formats/safetensors-writer.js';
import { SAFETENSORS_DTYPE_OF } from '../../src/formats/safetensors.js';
import { Checkpoint } from '../../src/formats/checkpoint.js';
import { openModel } from '../../src/model/model.js';
import { perplexity } from '../../src/model/perplexity.js';
import { spqrDequantize, type SpqrWeights } from '../../src/quantize/spqr.js';
import { spqrQuantizeModel } from '../../src/quantize/spqr-model.js';
import { calibrationWindows } from '../../src/schedule/calibration.js';
import { dataDir } from '../helpers/data.js';
import { Rng } from '../helpers/random.js';
import { SPQR_ARRAYS, randomSpqrLayout } from './reference.js';

const modelDir = join(dataDir, 'stories260K-hf');
const Q: SpqrQuantizationConfig = {
  bits: 3,
  beta1: 16,
  beta2: 16,
  statBits: 3,
  outlierThreshold: 0.2,
  outlierBudget: 0.01,
  damp: 1,
  actOrder: true,
  gridSearch: true,
  statSearch: true,
};

describe('SpQR checkpoints', () => {
  let work: string;
  let linears: Map<string, SpqrWeights>;
  let out: string;
  let inMemoryPpl: number;
  let evalText: string;
  beforeAll(async () => {
    work = await mkdtemp(join(tmpdir(), 'lowbit-spqr-format-'));
    evalText = (await readFile(join(dataDir, 'tinystories-valid.eval.txt'), 'utf8')).slice(0, 20_000);
    const model = await openModel(modelDir, { device: 'cpu' });
    const ids = await calibrationWindows(model, {
      source: [join(dataDir, 'tinystories-valid.calib.txt')],
      samples: 8,
      seqLen: 128,
      seed: 1,
    });
    const layers = await spqrQuantizeModel(model, ids, 128, Q);
    inMemoryPpl = (await perplexity(model, evalText, { seqLen: 256 })).ppl;
    await model.close();
    const source = await HfModel.open(modelDir);
    linears = new Map(layers.map((l) => [source.tensors.blocks[l.block]![l.name].prefix, l.weights]));
    out = join(work, 'spqr');
    await writeSpqrCheckpoint(out, source, Q, linears);
    await source.close();
  });
  afterAll(async () => {
    await rm(work, { recursive: true, force: true });
  });

  it('reads back every array bit for bit, and the same perplexity', async () => {
    const ck = await openSpqrCheckpoint(out);
    const config = JSON.parse(await readFile(join(out, 'config.json'), 'utf8'));
    expect(config.quantization_config).toMatchObject({
      quant_method: 'spqr',
      bits: 3,
      beta1: 16,
      beta2: 16,
      stat_bits: 3,
      outlier_threshold: 0.2,
      outlier_budget: 0.01,
      damp_percent: 1,
      act_order: true,
    });
    const source = await HfModel.open(modelDir);
    const fp = await openModel(modelDir, { device: 'cpu' });
    let storedBits = 0;
    let weights = 0;
    for (const [b, block] of source.tensors.blocks.entries()) {
      for (const name of ['q', 'k', 'v', 'o', 'gate', 'up', 'down'] as const) {
        const prefix = block[name].prefix;
        const { N, K } = linearDims(source.config, name);
        const w = await ck.readLinear(prefix, N, K);
        const want = linears.get(prefix)!;
        for (const key of SPQR_ARRAYS) {
          expect(Array.from(w[key] as ArrayLike<number>), `${prefix} ${key}`).toEqual(
            Array.from(want[key] as ArrayLike<number>),
          );
        }
        const facts = ck.quantization.layers[prefix]!;
        expect(facts.outlierRate).toBe(w.outlierCols.length / (N * K));
        storedBits += facts.bitsPerWeight * N * K;
        weights += N * K;
        await fp.setLinear(b, name, { dtype: 'f32', data: spqrDequantize(w) });
      }
    }
    expect(config.quantization_config.average_bits_per_weight).toBeCloseTo(storedBits / weights, 9);
    expect((await perplexity(fp, evalText, { seqLen: 256 })).ppl).toBe(inMemoryPpl);
    await fp.close();
    await source.close();
    await ck.close();
  });

  it('writes atomically and refuses what the reader would refuse', async () => {
    const source = await HfModel.open(modelDir);
    await expect(writeSpqrCheckpoint(out, source, Q, linears)).rejects.toMatchObject({ code: 'E_IO' });
    const [prefix, w] = [...linears][0]!;
    const target = join(work, 'bad');
    const badPerm = { ...w, perm: w.perm!.map((v, i) => (i === 3 ? w.perm![4]! : v)) };
    await expect(
      writeSpqrCheckpoint(target, source, Q, new Map([...linears, [prefix, badPerm]])),
    ).rejects.toMatchObject({ code: 'E_SPQR_FORMAT', message: expect.stringMatching(/not a permutation/) });
    await expect(readFile(join(target, 'config.json'))).rejects.toThrow(); // nothing left behind
    // row 1's pointer above row 2's: decreasing whatever the outliers are
    const badRows = { ...w, outlierRowptr: w.outlierRowptr.map((v, i) => (i === 1 ? w.outlierRowptr[2]! + 1 : v)) };
    await expect(
      writeSpqrCheckpoint(target, source, Q, new Map([...linears, [prefix, badRows]])),
    ).rejects.toMatchObject({ code: 'E_SPQR_FORMAT', message: expect.stringMatching(/decreases at row 1/) });
    await expect(writeSpqrCheckpoint(target, source, { ...Q, bits: 4 }, linears)).rejects.toMatchObject({
      code: 'E_SPQR_FORMAT',
      message: expect.stringMatching(/3 bits/),
    });
    await expect(writeSpqrCheckpoint(target, source, { ...Q, outlierBudget: 1 }, linears)).rejects.toMatchObject({
      code: 'E_SPQR_FORMAT',
      message: expect.stringMatching(/outlier_budget/),
    });
    await source.close();
  });

  // Row pointers are I16 where nnz ≤ 65535 (16/K bits per weight instead of 32/K), I32 in every
  // checkpoint written before. Catches a writer that keeps I32 (the bits accounting would then be
  // wrong), a reader that refuses I32 (old checkpoints no longer load) or reads I16 signed, and a
  // corrupt I16 row pointer getting through.
  it('stores 16-bit row pointers, still reads 32-bit ones, refuses corrupt 16-bit ones', async () => {
    const ck = await Checkpoint.open(out);
    const names = ck.names;
    const rowptrs = names.filter((n) => n.endsWith('.spqr_outlier_rowptr'));
    expect(rowptrs.length).toBe(linears.size);
    for (const n of rowptrs) expect(ck.info(n).dtype, n).toBe('I16');
    const tensors = new Map(await Promise.all(names.map(async (n) => [n, await ck.readTensor(n)] as const)));
    await ck.close();
    const config = await readFile(join(out, 'config.json'), 'utf8');
    const source = await HfModel.open(modelDir);
    const dims = new Map(
      source.tensors.blocks.flatMap((block) =>
        (['q', 'k', 'v', 'o', 'gate', 'up', 'down'] as const).map(
          (name) => [block[name].prefix, linearDims(source.config, name)] as const,
        ),
      ),
    );
    await source.close();
    // every index tensor rewritten as I32 (as the checkpoints before 16-bit row pointers): same arrays
    const wide = join(work, 'rowptr-i32');
    await writeSafetensors(join(wide, 'model.safetensors'), tensors);
    await writeFile(join(wide, 'config.json'), config);
    const old = await openSpqrCheckpoint(wide);
    for (const [prefix, want] of linears) {
      const { N, K } = dims.get(prefix)!;
      const w = await old.readLinear(prefix, N, K);
      for (const key of SPQR_ARRAYS)
        expect(Array.from(w[key] as ArrayLike<number>), `${prefix} ${key}`).toEqual(
          Array.from(want[key] as ArrayLike<number>),
        );
    }
    await old.close();
    // one I16 row pointer tensor with a corrupt entry: 0xffff (65535 unsigned) in the middle
    const [prefix, w] = [...linears].find(([, l]) => l.outlierCols.length > 0)!;
    const name = `${prefix}.spqr_outlier_rowptr`;
    const bad = Uint16Array.from(w.outlierRowptr);
    bad[Math.floor(w.N / 2)] = 0xffff;
    const dir = join(work, 'rowptr-bad');
    const specs = [...tensors]
      .filter(([n]) => n !== name)
      .map(([n, t]) => ({ name: n, dtype: SAFETENSORS_DTYPE_OF[t.dtype], shape: t.shape }));
    specs.push({ name, dtype: 'I16', shape: [w.N + 1] });
    const writer = await CheckpointWriter.create(dir, specs, { fileName: 'model.safetensors' });
    for (const [n, t] of tensors) if (n !== name) await writer.put(n, t);
    await writer.put(name, new Uint8Array(bad.buffer));
    await writer.finish();
    await writeFile(join(dir, 'config.json'), config);
    const c = await openSpqrCheckpoint(dir);
    const { N, K } = dims.get(prefix)!;
    await expect(c.readLinear(prefix, N, K)).rejects.toMatchObject({
      code: 'E_SPQR_FORMAT',
      message: expect.stringMatching(/outlier_rowptr decreases/),
    });
    await c.close();
  });

  // Row pointers over 32767 (a linear with 32768..65535 outliers) are stored in I16 as unsigned
  // 16-bit values. Catches a reader that takes them signed (negative pointers) and one that
  // unsigns I32 pointers too. stories260K's linears are too small for it: a synthetic one.
  it('reads 16-bit row pointers above 32767 as unsigned', async () => {
    const rng = new Rng();
    const [N, K] = [200, 300];
    const w = randomSpqrLayout(rng, { N, K, bits: 3, outlierRate: 0.7 });
    expect(w.outlierCols.length, `seed ${rng.seed}`).toBeGreaterThan(32768);
    expect(w.outlierCols.length, `seed ${rng.seed}`).toBeLessThanOrEqual(65535);
    const bytes = (a: ArrayBufferView) => new Uint8Array(a.buffer, a.byteOffset, a.byteLength);
    const [G, NB] = [Math.ceil(K / 16), Math.ceil(N / 16)];
    for (const rowptrDtype of ['I16', 'I32'] as const) {
      const parts: [string, TensorSpec['dtype'], number[], Uint8Array][] = [
        ['qweight', 'U8', [w.qweight.length], w.qweight],
        ['scale_codes', 'U8', [w.scaleCodes.length], w.scaleCodes],
        ['zero_codes', 'U8', [w.zeroCodes.length], w.zeroCodes],
        ['scale_stats', 'F16', [G, NB, 2], bytes(w.scaleStats)],
        ['zero_stats', 'F16', [G, NB, 2], bytes(w.zeroStats)],
        ['perm', 'I16', [K], bytes(Uint16Array.from(w.perm!))],
        ['outlier_values', 'F16', [w.outlierValues.length], bytes(w.outlierValues)],
        ['outlier_cols', 'I16', [w.outlierCols.length], bytes(Uint16Array.from(w.outlierCols))],
        [
          'outlier_rowptr',
          rowptrDtype,
          [N + 1],
          bytes(rowptrDtype === 'I16' ? Uint16Array.from(w.outlierRowptr) : w.outlierRowptr),
        ],
      ];
      const dir = join(work, `synthetic-${rowptrDtype}`);
      const writer = await CheckpointWriter.create(
        dir,
        parts.map(([part, dtype, shape]) => ({ name: `x.spqr_${part}`, dtype, shape })),
        { fileName: 'model.safetensors' },
      );
      for (const [part, , , data] of parts) await writer.put(`x.spqr_${part}`, data);
      await writer.finish();
      const ck = await Checkpoint.open(join(dir, 'model.safetensors'));
      const r = await readSpqrTensors(ck, dir, { ...Q, bits: 3 }, 'x', N, K);
      await ck.close();
      for (const key of SPQR_ARRAYS)
        expect(Array.from(r[key] as ArrayLike<number>), `${rowptrDtype} ${key}`).toEqual(
          Array.from(w[key] as ArrayLike<number>),
        );
    }
  });

  // grid_search records how the statistics were fitted; checkpoints written before it lack it.
  // Catches a reader that requires it (old checkpoints refused) or takes any value.
  it('records grid_search, reads checkpoints without it and refuses a non-boolean', async () => {
    const config = JSON.parse(await readFile(join(out, 'config.json'), 'utf8'));
    expect(config.quantization_config.grid_search).toBe(true);
    expect(parseSpqrQuantizationConfig(config.quantization_config, 'c').gridSearch).toBe(true);
    const { grid_search: _, ...old } = config.quantization_config;
    expect(parseSpqrQuantizationConfig(old, 'c').gridSearch).toBeUndefined();
    expect(() => parseSpqrQuantizationConfig({ ...old, grid_search: 'yes' }, 'c')).toThrow(
      expect.objectContaining({
        code: 'E_SPQR_FORMAT',
        message: expect.stringMatching(/grid_search should be a boolean/),
      }),
    );
    // stat_search the same way
    expect(config.quantization_config.stat_search).toBe(true);
    expect(parseSpqrQuantizationConfig(config.quantization_config, 'c').statSearch).toBe(true);
    expect(parseSpqrQuantizationConfig(old, 'c').statSearch).toBe(true);
    const { stat_search: __, ...older } = old;
    expect(parseSpqrQuantizationConfig(older, 'c').statSearch).toBeUndefined();
    expect(() => parseSpqrQuantizationConfig({ ...old, stat_search: 1 }, 'c')).toThrow(
      expect.objectContaining({
        code: 'E_SPQR_FORMAT',
        message: expect.stringMatching(/stat_search should be a boolean/),
      }),
    );
  });

  // A linear without outliers stores no outlier tensors (FORMATS.md): catches a writer that still
  // stores the empty CSR (bits counted and stored would disagree), a reader that requires the
  // tensors, and one that takes a linear with only some of them.
  it('stores no outlier tensors for a linear without outliers, and refuses a partial set', async () => {
    const source = await HfModel.open(modelDir);
    const [prefix, w] = [...linears][0]!;
    const bare: SpqrWeights = {
      ...w,
      outlierRowptr: new Int32Array(w.N + 1),
      outlierCols: new Int32Array(0),
      outlierValues: new Uint16Array(0),
    };
    const dir = join(work, 'no-outliers');
    await writeSpqrCheckpoint(dir, source, Q, new Map([...linears, [prefix, bare]]));
    await source.close();
    const ck = await openSpqrCheckpoint(dir);
    for (const part of ['outlier_values', 'outlier_cols', 'outlier_rowptr'] as const)
      expect(ck.checkpoint.has(spqrTensorName(prefix, part)), part).toBe(false);
    const back = await ck.readLinear(prefix, w.N, w.K);
    for (const key of SPQR_ARRAYS)
      expect(Array.from(back[key] as ArrayLike<number>), key).toEqual(Array.from(bare[key] as ArrayLike<number>));
    const facts = ck.quantization.layers[prefix]!;
    expect(facts.outlierRate).toBe(0);
    await ck.close();
    // the main checkpoint with one of a linear's three outlier tensors removed
    const full = await Checkpoint.open(out);
    const tensors = new Map(await Promise.all(full.names.map(async (n) => [n, await full.readTensor(n)] as const)));
    await full.close();
    tensors.delete(spqrTensorName(prefix, 'outlier_cols'));
    const partial = join(work, 'partial-outliers');
    await writeSafetensors(join(partial, 'model.safetensors'), tensors);
    await writeFile(join(partial, 'config.json'), await readFile(join(out, 'config.json'), 'utf8'));
    const c = await openSpqrCheckpoint(partial);
    const { N, K } = bare;
    await expect(c.readLinear(prefix, N, K)).rejects.toMatchObject({
      code: 'E_SPQR_FORMAT',
      message: expect.stringMatching(/outlier_cols' is missing .* all three outlier tensors or none/),
    });
    await c.close();
  });

  it('fails with typed errors on fuzzed tensors and configs', async () => {
    const rng = new Rng();
    const ck = await Checkpoint.open(out);
    const names = ck.names;
    const tensors = new Map(await Promise.all(names.map(async (n) => [n, await ck.readTensor(n)] as const)));
    await ck.close();
    const config = JSON.parse(await readFile(join(out, 'config.json'), 'utf8'));
    const spqrNames = names.filter((n) => n.startsWith('model.layers.0.') && n.includes('.spqr_'));
    const source = await HfModel.open(modelDir);
    const prefix = source.tensors.blocks[0]!.q.prefix;
    const { N, K } = linearDims(source.config, 'q');
    await source.close();
    for (let iter = 0; iter < 40; iter++) {
      const dir = join(work, `fuzz-${iter}`);
      const mutated = new Map(tensors);
      const cfg = structuredClone(config);
      const what = rng.int(3);
      if (what === 0) {
        const name = spqrNames[rng.int(spqrNames.length)]!;
        const t = mutated.get(name)!;
        const data = t.data.slice() as typeof t.data;
        for (let k = 0; k < 3; k++) if (data.length) data[rng.int(data.length)] = rng.int(70000) - 2;
        mutated.set(
          name,
          new (t.constructor as typeof import('../../src/tensor.js').Tensor)(t.dtype, t.shape, data as never),
        );
      } else if (what === 1) {
        mutated.delete(spqrNames[rng.int(spqrNames.length)]!);
      } else {
        const field = [
          'bits',
          'beta1',
          'beta2',
          'stat_bits',
          'outlier_threshold',
          'outlier_budget',
          'act_order',
          'grid_search',
          'stat_search',
          'format_version',
          'quant_method',
        ][rng.int(11)]!;
        cfg.quantization_config[field] = [-1, 0, 1, 5, 0.5, 'x', null, true, 1e9][rng.int(9)];
      }
      await writeSafetensors(join(dir, 'model.safetensors'), mutated);
      await writeFile(join(dir, 'config.json'), JSON.stringify(cfg));
      try {
        const c = await openSpqrCheckpoint(dir);
        const w = await c.readLinear(prefix, N, K);
        spqrDequantize(w); // the native check agrees with the reader's
        await c.close();
      } catch (err) {
        expect(err, `seed ${rng.seed} iteration ${iter}: ${String(err)}`).toBeInstanceOf(LowbitError);
      }
    }
  });
});

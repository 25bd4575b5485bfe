import { join } from 'node:path';
import { afterAll, describe, expect, it, vi } from 'vitest';
import { run as inspectCli } from '../../src/cli/inspect.js';
import { GptqWriter, linearDims, packedWords } from '../../src/formats/gptq.js';
import { HfModel, LINEAR_NAMES } from '../../src/formats/hf.js';
import { inspectModel } from '../../src/formats/inspect.js';
import { native } from '../../src/native.js';
import { dataPath, tempDir } from './helpers.js';

const tmp = tempDir();
afterAll(() => tmp.cleanup());

describe('lowbit inspect', () => {
  it('describes HF directories, single files and llama2.c checkpoints', async () => {
    const fp32 = await inspectModel(dataPath('stories260K-hf'));
    expect(fp32.format).toBe('hf-directory');
    expect(fp32.architecture).toBe('LlamaForCausalLM');
    expect(fp32.config).toMatchObject({
      hiddenSize: 64,
      intermediateSize: 172,
      numLayers: 5,
      vocabSize: 512,
      tieWordEmbeddings: true,
    });
    expect(fp32.tensors).toHaveLength(47);
    const params = 512 * 64 + 5 * (2 * 64 + 64 * 64 * 2 + 32 * 64 * 2 + 3 * 172 * 64) + 64;
    expect(fp32.parameters).toBe(params);
    expect(fp32.totalBytes).toBe(params * 4);
    expect(fp32.bitsPerWeight.overall).toBe(32);
    expect(fp32.tensors.find((t) => t.name === 'model.layers.2.mlp.down_proj.weight')).toEqual({
      name: 'model.layers.2.mlp.down_proj.weight',
      dtype: 'F32',
      shape: [64, 172],
      bytes: 64 * 172 * 4,
    });

    const bf16 = await inspectModel(dataPath('stories260K-hf-bf16/model.safetensors'));
    expect(bf16.format).toBe('safetensors');
    expect(bf16.bitsPerWeight.overall).toBe(16);

    const bin = await inspectModel(dataPath('stories260K.bin'));
    expect(bin.format).toBe('llama2c');
    expect(bin.llama2c).toMatchObject({ version: 0, sharedClassifier: true });
    expect(bin.parameters).toBe(params);
  });

  it('reports the quantization config and bits per weight of a GPTQ directory, as text and JSON', async () => {
    const source = await HfModel.open(dataPath('stories260K-hf'));
    const gptq = {
      bits: 4 as const,
      groupSize: 32,
      descAct: false,
      sym: true,
      dampPercent: 0.01,
      trueSequential: true,
      staticGroups: false,
      checkpointFormat: 'gptq' as const,
    };
    const out = join(tmp.dir, 'gptq');
    const writer = await GptqWriter.create(out, source, gptq);
    let expectedBits = 0;
    let weights = 0;
    for (const block of source.tensors.blocks) {
      for (const name of LINEAR_NAMES) {
        const { K, N } = linearDims(source.config, name);
        const groups = Math.ceil(K / 32);
        // the file holds the MLP padded to whole groups (172 -> 192): the bits per weight are of that
        const written = linearDims(writer.config, name);
        const writtenGroups = Math.ceil(written.K / 32);
        await writer.putLinear(block[name].prefix, {
          bits: 4,
          K,
          N,
          groupSize: 32,
          groups,
          zeroOffset: 1,
          qweight: native().packQweight(new Uint8Array(N * K).fill(5), N, K, 4),
          qzeros: native().packQzeros(new Int32Array(groups * N).fill(8), groups, N, 4, 1),
          scales: new Uint16Array(groups * N).fill(0x3c00),
        });
        expectedBits +=
          32 * (packedWords(4, written.K) * written.N + writtenGroups * packedWords(4, written.N) + written.K) +
          16 * writtenGroups * written.N;
        weights += written.K * written.N;
      }
    }
    await writer.finish();
    await source.close();
    const report = await inspectModel(out);
    expect(report.quantization).toMatchObject({ quant_method: 'gptq', bits: 4, group_size: 32 });
    expect(report.bitsPerWeight.quantizedLinears).toBeCloseTo(expectedBits / weights, 12);
    expect(report.bitsPerWeight.overall).toBeLessThan(32);

    const log = vi.spyOn(console, 'log').mockImplementation(() => undefined);
    try {
      expect(await inspectCli([out, '--json'])).toBe(0);
      expect(JSON.parse(log.mock.calls[0]![0] as string)).toEqual(JSON.parse(JSON.stringify(report)));
      expect(await inspectCli([out])).toBe(0);
      const text = log.mock.calls[1]![0] as string;
      expect(text).toContain('quantization');
      expect(text).toContain('model.layers.4.mlp.down_proj.qweight');
      expect(text).toMatch(/quantized linears: \d\.\d{3}/);
    } finally {
      log.mockRestore();
    }
  });
});

/**
 * stories260K (fp32 HF copy) on TinyStories, by REFERENCE.md's protocol: the token stream is the
 * reference one (SHA256), window 0's logits match the reference table to 1e-4, and the perplexity
 * over all 767 windows matches 5.04681 to a relative 1e-4.
 */
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, expect, test } from 'vitest';
import { openModel, type Model } from '../../src/model/model.js';
import { perplexity, perplexityIds } from '../../src/model/perplexity.js';
import { dataPath, referenceJson, testDevice } from './data.js';
import { referenceLogitsTable, sha256OfIds } from './stories.js';

const modelDir = dataPath('stories260K-hf');
const textFile = dataPath('tinystories-valid.txt');
let model: Model;
let ids: Int32Array;

beforeAll(async () => {
  model = await openModel(modelDir, { device: testDevice });
  ids = perplexityIds(model, readFileSync(textFile, 'utf8'));
});
afterAll(async () => model?.close());

test('the SentencePiece token stream is the reference one', () => {
  const ref = referenceJson().ppl.tinystories!.sentencepiece;
  expect(ids.length).toBe(ref.tokens);
  expect(Array.from(ids.subarray(0, 16))).toEqual(ref.first16);
  expect(sha256OfIds(ids)).toBe(ref.sha256);
});

test("window 0's logits match REFERENCE.md's table to 1e-4", async () => {
  const table = referenceLogitsTable(readFileSync(join(modelDir, '../REFERENCE.md'), 'utf8'));
  expect(table.length).toBe(8);
  const logits = await model.logits(ids.subarray(0, 512));
  for (const row of table) {
    expect(ids[row.pos]).toBe(row.id);
    const got = Array.from(logits.subarray(row.pos * 512, row.pos * 512 + 5));
    for (let v = 0; v < 5; v++)
      expect(
        Math.abs(got[v]! - row.logits[v]!),
        `pos ${row.pos} id ${v}: ${got[v]} vs ${row.logits[v]}`,
      ).toBeLessThanOrEqual(1e-4);
  }
});

test('P1: perplexity over all 767 windows is 5.04681 (relative 1e-4)', async () => {
  const ref = referenceJson().ppl.tinystories!.sentencepiece;
  let calls = 0;
  const r = await perplexity(model, ids, { seqLen: 512, batch: 4, onProgress: () => calls++ });
  expect(r.windows).toBe(ref.windows);
  expect(r.predicted).toBe(ref.windows * 511);
  expect(calls).toBe(Math.ceil(ref.windows / 4));
  expect(Math.abs(r.ppl / ref.ppl - 1), `ppl ${r.ppl} vs ${ref.ppl}`).toBeLessThanOrEqual(1e-4);
});

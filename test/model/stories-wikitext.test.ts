/** stories260K (fp32) on WikiText-2 test, SentencePiece stream: 1580 windows, ppl 119.4306 (relative 1e-4). */
import { readFileSync } from 'node:fs';
import { expect, test } from 'vitest';
import { openModel } from '../../src/model/model.js';
import { perplexity, perplexityIds } from '../../src/model/perplexity.js';
import { dataPath, referenceJson, testDevice } from './data.js';
import { sha256OfIds } from './stories.js';

const modelDir = dataPath('stories260K-hf');
const textFile = dataPath('wiki.test.raw');

test('P2: perplexity of wiki.test.raw is 119.4306 (relative 1e-4)', async () => {
  const ref = referenceJson().ppl.wikitext!.sentencepiece;
  const model = await openModel(modelDir, { device: testDevice });
  try {
    const ids = perplexityIds(model, readFileSync(textFile, 'utf8'));
    expect(sha256OfIds(ids)).toBe(ref.sha256);
    const r = await perplexity(model, ids, { batch: 4 });
    expect(r.seqLen).toBe(512); // the default: the model's context
    expect(r.windows).toBe(ref.windows);
    expect(Math.abs(r.ppl / ref.ppl - 1), `ppl ${r.ppl} vs ${ref.ppl}`).toBeLessThanOrEqual(1e-4);
  } finally {
    await model.close();
  }
});

// Tokenizer throughput on the real data: node bench/tokenizers.mjs (after `npm run build:ts`).
// Prints ms and MB/s per file for SentencePiece (tok512.model) and tokenizer.json.
import { readFileSync } from 'node:fs';
import { dirname, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { loadTokenizer } from '../dist/formats/tokenizer.js';

const data = resolve(dirname(fileURLToPath(import.meta.url)), '../../shared/data');
const files = ['tinystories-valid.txt', 'wiki.test.raw'];
const sources = { sentencepiece: 'tok512.model', 'tokenizer.json': 'stories260K-hf/tokenizer.json' };
for (const [kind, src] of Object.entries(sources)) {
  const tok = await loadTokenizer(resolve(data, src));
  for (const file of files) {
    const text = readFileSync(resolve(data, file), 'utf8');
    const runs = [];
    let ids;
    for (let r = 0; r < 3; r++) {
      const t0 = performance.now();
      ids = tok.encode(text, { bos: true });
      runs.push(performance.now() - t0);
    }
    const first = runs[0];
    const best = Math.min(...runs);
    const mb = Buffer.byteLength(text) / 1e6;
    console.log(
      `${kind.padEnd(15)} ${file.padEnd(22)} ${ids.length} tokens  first ${first.toFixed(0)} ms  best ${best.toFixed(0)} ms  (${(mb / (best / 1000)).toFixed(2)} MB/s)`,
    );
  }
}

// Load test of the example server (examples/server.ts, issue 11): a fixed number of streaming
// requests at a fixed concurrency, over loopback only. Not a test. Needs dist/ and examples/dist/
// (`npm run build:ts && npx tsc -p examples`).
//
//   node bench/serve-load.mjs [--model PATH] [--device cpu|cuda|auto] [--requests 48]
//        [--concurrency 1,4,8,16] [--max-tokens 64] [--max-batch 16,1] [--warmup 8]
//
// For each server setting (--max-batch: 1 = no batching, the baseline) it starts the server on
// 127.0.0.1 with a free port, then for each concurrency level sends --requests POST /generate requests
// (greedy, prompts taken in turn from a fixed list, stop ids off so every request yields --max-tokens
// tokens) keeping that many in flight, and reads every event stream to its end. Per level: requests/s,
// generated tokens/s, p50/p95 latency (request sent → last event) and time to first token (request
// sent → first token event), and the server's mean decode batch (decodedTokens / steps from
// GET /stats). Prints a Markdown table; rows go to bench/results/serve-load.json.
import { spawn } from 'node:child_process';
import { mkdirSync, renameSync, writeFileSync } from 'node:fs';
import { cpus, loadavg } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { performance } from 'node:perf_hooks';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
function option(name, fallback) {
  const i = process.argv.indexOf(`--${name}`);
  return i >= 0 && i + 1 < process.argv.length ? process.argv[i + 1] : fallback;
}
const list = (text) => text.split(',').map(Number);
const REQUESTS = Number(option('requests', '48'));
const CONCURRENCY = list(option('concurrency', '1,4,8,16'));
const MAX_TOKENS = Number(option('max-tokens', '64'));
const MAX_BATCH = list(option('max-batch', '16,1'));
const WARMUP = Number(option('warmup', '8'));
const DEVICE = option('device', 'cpu');
const MODEL = option('model', undefined);
for (const [name, v] of [
  ['requests', REQUESTS],
  ['max-tokens', MAX_TOKENS],
  ...CONCURRENCY.map((c) => ['concurrency', c]),
  ...MAX_BATCH.map((b) => ['max-batch', b]),
]) {
  if (!Number.isInteger(v) || v < 1) throw new Error(`--${name} takes positive integers, got ${v}`);
}
if (REQUESTS > 10_000) throw new Error('--requests is bounded at 10000');

const PROMPTS = [
  'Once upon a time',
  'The little dog ran to the park and',
  'Lily had a red ball. She',
  'One day, a big bird',
  'Tom and his mom went to the store. They',
  'The sun was hot, so',
];

/** Starts the example server; resolves with its base URL and a stop function. */
function startServer(maxBatch) {
  const args = [join(root, 'examples/dist/server.js'), '--port', '0', '--host', '127.0.0.1', '--device', DEVICE];
  args.push('--max-batch', String(maxBatch), '--max-queue', String(REQUESTS + 16));
  if (MODEL) args.splice(1, 0, MODEL);
  const child = spawn(process.execPath, args, { cwd: root, stdio: ['ignore', 'pipe', 'inherit'] });
  return new Promise((resolve, reject) => {
    let out = '';
    child.once('exit', (code) => reject(new Error(`the server exited (${code}) before listening: ${out}`)));
    child.stdout.on('data', (chunk) => {
      out += chunk;
      const m = /listening on (http:\/\/127\.0\.0\.1:\d+)/.exec(out);
      if (m) {
        child.removeAllListeners('exit');
        resolve({
          url: m[1],
          stop: () =>
            new Promise((done) => {
              child.once('exit', done);
              child.kill('SIGTERM');
            }),
        });
      }
    });
  });
}

/** One streaming request: its latency, time to first token and token count. */
async function request(url, prompt) {
  const start = performance.now();
  const res = await fetch(`${url}/generate`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ prompt, maxTokens: MAX_TOKENS, temperature: 0, stopIds: [] }),
  });
  if (res.status !== 200) throw new Error(`status ${res.status}: ${await res.text()}`);
  let ttft;
  let tokens = 0;
  let buffer = '';
  let done = false;
  const decoder = new TextDecoder();
  for await (const chunk of res.body) {
    buffer += decoder.decode(chunk, { stream: true });
    let end;
    while ((end = buffer.indexOf('\n\n')) >= 0) {
      const event = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      if (event.startsWith('data: ')) {
        tokens++;
        ttft ??= performance.now() - start;
      } else if (event.startsWith('event: done')) done = true;
      else if (event.startsWith('event: error')) throw new Error(`stream error: ${event}`);
    }
  }
  if (!done) throw new Error('the stream ended without its done event');
  return { latency: performance.now() - start, ttft: ttft ?? NaN, tokens };
}

/** Sends `count` requests keeping `concurrency` in flight. */
async function level(url, count, concurrency) {
  const results = [];
  let next = 0;
  const worker = async () => {
    while (next < count) {
      const i = next++;
      results.push(await request(url, PROMPTS[i % PROMPTS.length]));
    }
  };
  const start = performance.now();
  await Promise.all(Array.from({ length: concurrency }, worker));
  return { seconds: (performance.now() - start) / 1000, results };
}

const quantile = (values, q) => {
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.min(sorted.length - 1, Math.floor(q * sorted.length))];
};
const stats = async (url) => (await fetch(`${url}/stats`)).json();

const rows = [];
for (const maxBatch of MAX_BATCH) {
  const server = await startServer(maxBatch);
  try {
    await level(server.url, WARMUP, 1);
    for (const concurrency of CONCURRENCY) {
      const before = await stats(server.url);
      const { seconds, results } = await level(server.url, REQUESTS, concurrency);
      const after = await stats(server.url);
      const tokens = results.reduce((n, r) => n + r.tokens, 0);
      rows.push({
        max_batch: maxBatch,
        concurrency,
        requests: REQUESTS,
        max_tokens: MAX_TOKENS,
        seconds,
        req_s: REQUESTS / seconds,
        tok_s: tokens / seconds,
        latency_p50_ms: quantile(
          results.map((r) => r.latency),
          0.5,
        ),
        latency_p95_ms: quantile(
          results.map((r) => r.latency),
          0.95,
        ),
        ttft_p50_ms: quantile(
          results.map((r) => r.ttft),
          0.5,
        ),
        ttft_p95_ms: quantile(
          results.map((r) => r.ttft),
          0.95,
        ),
        mean_batch: (after.decodedTokens - before.decodedTokens) / Math.max(1, after.steps - before.steps),
      });
      const r = rows[rows.length - 1];
      console.error(`max-batch ${maxBatch}, concurrency ${concurrency}: ${r.tok_s.toFixed(0)} tok/s`);
    }
  } finally {
    await server.stop();
  }
}

const fixed = (v, d = 1) => v.toFixed(d);
console.log(
  `\n${REQUESTS} requests × ${MAX_TOKENS} tokens per level, greedy, ${DEVICE}, model ${MODEL ?? 'stories260K'}\n`,
);
console.log(
  '| max batch | concurrency | req/s | tok/s | latency p50 / p95 (ms) | first token p50 / p95 (ms) | mean batch |',
);
console.log('| --- | --- | --- | --- | --- | --- | --- |');
for (const r of rows) {
  console.log(
    `| ${r.max_batch} | ${r.concurrency} | ${fixed(r.req_s)} | ${fixed(r.tok_s, 0)} | ` +
      `${fixed(r.latency_p50_ms, 0)} / ${fixed(r.latency_p95_ms, 0)} | ${fixed(r.ttft_p50_ms)} / ${fixed(r.ttft_p95_ms)} | ` +
      `${fixed(r.mean_batch, 2)} |`,
  );
}

const out = join(root, 'bench/results/serve-load.json');
mkdirSync(dirname(out), { recursive: true });
const doc = {
  device: DEVICE,
  model: MODEL ?? 'stories260K (bundled)',
  cpu: cpus()[0]?.model,
  cores: cpus().length,
  date: new Date().toISOString(),
  load_average: loadavg(),
  rows,
};
writeFileSync(`${out}.tmp`, JSON.stringify(doc, null, 1) + '\n');
renameSync(`${out}.tmp`, out);

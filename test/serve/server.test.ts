/**
 * The example server (examples/server.ts) as a client sees it, on loopback: compiled with tsc as a
 * user would (importing 'lowbit'), started on a free port with the bundled stories260K, then driven
 * over HTTP. Catches: a server that serializes clients instead of batching them, streams tokens other
 * than the model's own greedy ones, keeps generating for a client that went away, or queues without
 * bound instead of answering 503.
 */
import { execFileSync, spawn, type ChildProcess } from 'node:child_process';
import { join } from 'node:path';
import { afterAll, beforeAll, expect, test } from 'vitest';
import { openModel, type Model } from '../../src/model/model.js';
import { generateTokens } from '../../src/model/generate.js';
import { dataPath, projectRoot, testDevice } from '../model/data.js';

// its own output folder inside examples/dist (ignored by git), so the examples test's compile of the
// same sources into examples/dist cannot collide with this one
const outDir = join(projectRoot, 'examples/dist/server-test');
let server: ChildProcess;
let url: string;
let model: Model;

beforeAll(async () => {
  execFileSync(
    process.execPath,
    [join(projectRoot, 'node_modules/typescript/bin/tsc'), '-p', join(projectRoot, 'examples'), '--outDir', outDir],
    { stdio: 'pipe' },
  );
  model = await openModel(dataPath('stories260K-hf'), { device: testDevice });
  server = spawn(
    process.execPath,
    [join(outDir, 'server.js'), '--port', '0', '--device', testDevice, '--max-batch', '4', '--max-queue', '3'],
    { cwd: projectRoot, stdio: ['ignore', 'pipe', 'inherit'] },
  );
  url = await new Promise<string>((resolve, reject) => {
    let out = '';
    server.once('exit', (code) => reject(new Error(`server exited with ${code}: ${out}`)));
    server.stdout!.on('data', (chunk: Buffer) => {
      out += chunk.toString();
      const m = /listening on (http:\/\/127\.0\.0\.1:\d+)/.exec(out);
      if (m) resolve(m[1]!);
    });
  });
}, 120_000);

afterAll(async () => {
  if (server && server.exitCode === null) {
    const exited = new Promise((r) => server.once('exit', r));
    server.kill('SIGTERM');
    await exited;
  }
  await model?.close();
});

interface Stats {
  running: number;
  queued: number;
  largestBatch: number;
  completed: number;
  cancelled: number;
  decodedTokens: number;
}

const stats = async (): Promise<Stats> => (await fetch(`${url}/stats`)).json() as Promise<Stats>;

function post(body: unknown, signal?: AbortSignal): Promise<Response> {
  return fetch(`${url}/generate`, { method: 'POST', body: JSON.stringify(body), signal });
}

/** Reads an event stream: the token ids, and the done event's body. */
async function readEvents(
  res: Response,
  onToken?: (count: number) => void,
): Promise<{ ids: number[]; done?: { tokens: number } }> {
  const ids: number[] = [];
  let done: { tokens: number } | undefined;
  let buffer = '';
  const decoder = new TextDecoder();
  for await (const chunk of res.body!) {
    buffer += decoder.decode(chunk as Uint8Array, { stream: true });
    let end: number;
    while ((end = buffer.indexOf('\n\n')) >= 0) {
      const event = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      if (event.startsWith('data: ')) {
        ids.push((JSON.parse(event.slice(6)) as { id: number }).id);
        onToken?.(ids.length);
      } else if (event.startsWith('event: done\ndata: ')) done = JSON.parse(event.split('data: ')[1]!);
      else throw new Error(`unexpected event ${event}`);
    }
  }
  return { ids, done };
}

async function alone(prompt: string, maxTokens: number): Promise<number[]> {
  const ids = model.tokenizer!.encode(prompt, { bos: true });
  const out: number[] = [];
  for await (const id of generateTokens(model, ids, { temperature: 0, maxTokens, stopIds: [], scheduler: false }))
    out.push(id);
  return out;
}

test('concurrent clients get their own greedy tokens, streamed, from shared decode steps', async () => {
  const prompts = ['Once upon a time', 'The little dog ran to the park and', 'Lily had a red ball. She'];
  const responses = await Promise.all(
    prompts.map((prompt) => post({ prompt, maxTokens: 60, temperature: 0, stopIds: [] })),
  );
  for (const r of responses) {
    expect(r.status).toBe(200);
    expect(r.headers.get('content-type')).toBe('text/event-stream');
  }
  const got = await Promise.all(responses.map((r) => readEvents(r)));
  for (let i = 0; i < prompts.length; i++) {
    expect(got[i]!.ids).toEqual(await alone(prompts[i]!, 60));
    expect(got[i]!.done).toEqual({ tokens: 60 });
  }
  expect((await stats()).largestBatch).toBeGreaterThanOrEqual(2);
});

test('a client that disconnects mid-stream aborts its request; a full queue answers 503', async () => {
  const before = await stats();
  // the longest request the context allows (~500 tokens): the client leaves after its first token
  const controller = new AbortController();
  const res = await post(
    { prompt: 'Once upon a time', maxTokens: 500, temperature: 0, stopIds: [] },
    controller.signal,
  );
  expect(res.status).toBe(200);
  await readEvents(res, () => controller.abort()).catch(() => undefined);
  let now = await stats();
  for (let i = 0; i < 200 && now.running > 0; i++) {
    await new Promise((r) => setTimeout(r, 10));
    now = await stats();
  }
  expect(now.cancelled).toBe(before.cancelled + 1);
  expect(now.completed).toBe(before.completed);
  expect(now.decodedTokens - before.decodedTokens).toBeLessThan(500);

  // backpressure: max-batch 4 and max-queue 3, so long requests sent one after another are accepted
  // until at most 4 run and 3 wait (at least the 3 waiting ones), then refused at once: 503, Retry-After
  const holders: AbortController[] = [];
  const held: Response[] = [];
  let refused: Response | undefined;
  while (!refused && held.length < 10) {
    const c = new AbortController();
    const r = await post({ prompt: 'One day', maxTokens: 500, temperature: 0, stopIds: [] }, c.signal);
    if (r.status === 200) {
      holders.push(c);
      held.push(r);
    } else refused = r;
  }
  expect(held.length).toBeGreaterThanOrEqual(3);
  expect(held.length).toBeLessThanOrEqual(7);
  expect(refused!.status).toBe(503);
  expect(refused!.headers.get('retry-after')).toBe('1');
  expect(await refused!.json()).toMatchObject({ code: 'E_BUSY' });
  for (const c of holders) c.abort();
  await Promise.all(held.map((r) => readEvents(r).catch(() => undefined)));
  // bad input: 400 naming the problem
  const bad = await post({ prompt: 'x', maxTokens: -1 });
  expect(bad.status).toBe(400);
  expect(await bad.json()).toMatchObject({ code: 'E_ARGUMENT' });
});

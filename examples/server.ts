// A small generation server on Node's http: concurrent clients share one model through lowbit's
// batching scheduler (docs/SERVING.md). Streams tokens as server-sent events; a client that goes away
// aborts its request, which frees its slot for the others.
//
//   node examples/dist/server.js [model] [--port 8080] [--host 127.0.0.1] [--max-batch 16]
//                                [--max-queue 64] [--max-kv-tokens N] [--device cpu|cuda|auto]
//
//   curl -N -X POST localhost:8080/generate -d '{"prompt":"Once upon a time","maxTokens":64}'
//   curl localhost:8080/stats
//
// POST /generate takes JSON { prompt, maxTokens?, temperature?, topP?, seed?, stopIds? } and answers
// text/event-stream: one `data: {"id":…,"text":"…"}` event per token, then `event: done` with
// { tokens }, or `event: error` with { code, message } when the request fails mid-stream. Refusals
// come before the stream starts: 400 (bad request), 413 (too large for the KV bound), 503 with
// Retry-After (the queue is full: E_BUSY). The model defaults to the bundled stories260K.
import { createServer, type IncomingMessage, type ServerResponse } from 'node:http';
import { parseArgs } from 'node:util';
import { LowbitError, Scheduler, StreamDecoder, bundled, openModel, type TokenStream } from 'lowbit';

const { values, positionals } = parseArgs({
  allowPositionals: true,
  options: {
    port: { type: 'string', default: '8080' },
    host: { type: 'string', default: '127.0.0.1' },
    'max-batch': { type: 'string', default: '16' },
    'max-queue': { type: 'string', default: '64' },
    'max-kv-tokens': { type: 'string' },
    device: { type: 'string', default: 'auto' },
  },
});

const model = await openModel(positionals[0] ?? bundled.model, { device: values.device as 'auto' });
const tokenizer = model.tokenizer;
if (!tokenizer) throw new Error('the model has no tokenizer');
const scheduler = new Scheduler(model, {
  maxBatch: Number(values['max-batch']),
  maxQueue: Number(values['max-queue']),
  maxKvTokens: values['max-kv-tokens'] === undefined ? undefined : Number(values['max-kv-tokens']),
});

const MAX_BODY = 64 * 1024;

async function readJson(req: IncomingMessage): Promise<Record<string, unknown>> {
  let body = '';
  for await (const chunk of req) {
    body += chunk;
    if (body.length > MAX_BODY) throw new LowbitError('E_ARGUMENT', `the request body is over ${MAX_BODY} bytes`);
  }
  let value: unknown;
  try {
    value = JSON.parse(body);
  } catch {
    throw new LowbitError('E_ARGUMENT', 'the request body is not JSON');
  }
  if (value === null || typeof value !== 'object' || Array.isArray(value))
    throw new LowbitError('E_ARGUMENT', 'the request body must be a JSON object');
  return value as Record<string, unknown>;
}

/** The HTTP status of a refusal (before any token was sent). */
function statusOf(err: unknown): number {
  const code = err instanceof LowbitError ? err.code : undefined;
  if (code === 'E_ARGUMENT') return 400;
  if (code === 'E_MEMORY_BUDGET') return 413;
  if (code === 'E_BUSY' || code === 'E_CLOSED') return 503;
  return 500;
}

function sendJson(res: ServerResponse, status: number, value: unknown, headers: Record<string, string> = {}): void {
  res.writeHead(status, { 'content-type': 'application/json', ...headers }).end(JSON.stringify(value));
}

function errorBody(err: unknown): { code: string; message: string } {
  return err instanceof LowbitError
    ? { code: err.code, message: err.message }
    : { code: 'E_INTERNAL', message: String(err) };
}

async function handleGenerate(req: IncomingMessage, res: ServerResponse): Promise<void> {
  const controller = new AbortController();
  // the client went away before the answer ended: abort its request (frees its slot at once)
  res.on('close', () => {
    if (!res.writableFinished) controller.abort(new Error('client disconnected'));
  });
  let stream: TokenStream;
  let ids: Int32Array;
  try {
    const body = await readJson(req);
    if (typeof body.prompt !== 'string') throw new LowbitError('E_ARGUMENT', 'prompt must be a string');
    ids = tokenizer!.encode(body.prompt, { bos: tokenizer!.bosId !== undefined });
    stream = scheduler.submit(ids, {
      maxTokens: body.maxTokens as number | undefined,
      temperature: body.temperature as number | undefined,
      topP: body.topP as number | undefined,
      seed: body.seed as number | undefined,
      stopIds: body.stopIds as number[] | undefined,
      signal: controller.signal,
    });
  } catch (err) {
    const headers: Record<string, string> = statusOf(err) === 503 ? { 'retry-after': '1' } : {};
    sendJson(res, statusOf(err), errorBody(err), headers);
    return;
  }
  res.writeHead(200, { 'content-type': 'text/event-stream', 'cache-control': 'no-cache' });
  res.flushHeaders();
  const decoder = new StreamDecoder(tokenizer!);
  for (const id of ids) decoder.push(id); // so the first piece keeps its leading space
  let tokens = 0;
  try {
    for await (const id of stream) {
      tokens++;
      res.write(`data: ${JSON.stringify({ id, text: decoder.push(id) })}\n\n`);
    }
    res.end(`event: done\ndata: ${JSON.stringify({ tokens })}\n\n`);
  } catch (err) {
    if (!controller.signal.aborted) res.end(`event: error\ndata: ${JSON.stringify(errorBody(err))}\n\n`);
  }
}

const server = createServer((req, res) => {
  if (req.method === 'POST' && req.url === '/generate') {
    handleGenerate(req, res).catch((err) => {
      if (!res.headersSent) sendJson(res, 500, errorBody(err));
      else res.destroy();
    });
  } else if (req.method === 'GET' && req.url === '/stats') {
    sendJson(res, 200, scheduler.stats);
  } else {
    sendJson(res, 404, { code: 'E_NOT_FOUND', message: 'POST /generate or GET /stats' });
  }
});

server.listen(Number(values.port), values.host, () => {
  const address = server.address();
  const port = typeof address === 'object' && address ? address.port : values.port;
  // (the load test and the tests read this line to find the port when --port 0 picks one)
  console.log(`listening on http://${values.host}:${port}`);
});

async function shutdown(): Promise<void> {
  server.close();
  await scheduler.close(); // streams still open end with an error event
  await model.close();
  process.exit(0);
}
process.on('SIGINT', () => void shutdown());
process.on('SIGTERM', () => void shutdown());

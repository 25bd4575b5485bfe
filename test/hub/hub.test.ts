/**
 * Hugging Face Hub downloads (src/hub) against a local Hub on 127.0.0.1 (test/hub/server.ts) serving
 * the real stories260K files: the cache layout Python's huggingface_hub uses (so both share it), only
 * the files a model needs, resume after a cut connection (Range), the token sent to the Hub but never
 * to the storage it redirects to, 401 without a token, missing files and repositories, checksum
 * failures, and HF_HUB_OFFLINE=1.
 */
import { existsSync, lstatSync, mkdtempSync, readFileSync, readdirSync, readlinkSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, expect, test } from 'vitest';
import { downloadHubModel } from '../../src/hub/download.js';
import { parseHubModelId } from '../../src/hub/cache.js';
import { openModel } from '../../src/model/model.js';
import { perplexity } from '../../src/model/perplexity.js';
import { dataFile } from '../helpers/data.js';
import { lowbit } from '../cli/run.js';
import { gitSha1, sha256, startFakeHub, type FakeHub } from './server.js';

const COMMIT = 'a'.repeat(8) + '0123456789abcdef0123456789abcdef';
const model = (f: string) => readFileSync(dataFile(`stories260K-hf/${f}`));
let hub: FakeHub;
const work = mkdtempSync(join(tmpdir(), 'lowbit-hub-'));
let cacheN = 0;
const freshCache = () => join(work, `cache-${cacheN++}`);

beforeAll(async () => {
  hub = await startFakeHub();
  const files = new Map<string, Buffer>([
    ['config.json', model('config.json')],
    ['generation_config.json', model('generation_config.json')],
    ['tokenizer.json', model('tokenizer.json')],
    ['tokenizer_config.json', model('tokenizer_config.json')],
    ['tokenizer.model', model('tokenizer.model')],
    ['model.safetensors', model('model.safetensors')],
    ['README.md', Buffer.from('# stories260K\n')],
    ['pytorch_model.bin', Buffer.from('a pickle lowbit must not fetch')],
  ]);
  hub.repos.set('karpathy/stories260K', {
    commit: COMMIT,
    files,
    lfs: new Set(['model.safetensors', 'tokenizer.model', 'pytorch_model.bin']),
  });
  hub.repos.set('meta/gated', { commit: COMMIT, files, lfs: new Set(['model.safetensors']), token: 'hf_secret' });
  hub.repos.set('org/sharded', {
    commit: COMMIT,
    files: new Map([
      ['config.json', model('config.json')],
      [
        'model.safetensors.index.json',
        Buffer.from(
          JSON.stringify({
            weight_map: { a: 'model-00001-of-00002.safetensors', b: 'model-00002-of-00002.safetensors' },
          }),
        ),
      ],
      ['model-00001-of-00002.safetensors', Buffer.from('shard one')],
      ['model-00002-of-00002.safetensors', Buffer.from('shard two')],
      ['consolidated.safetensors', Buffer.from('the same weights in another layout')],
    ]),
    lfs: new Set(['model-00001-of-00002.safetensors', 'model-00002-of-00002.safetensors', 'consolidated.safetensors']),
  });
  hub.repos.set('org/broken-index', {
    commit: COMMIT,
    files: new Map([
      ['config.json', model('config.json')],
      [
        'model.safetensors.index.json',
        Buffer.from(
          JSON.stringify({
            weight_map: { a: 'model-00001-of-00002.safetensors', b: 'model-00002-of-00002.safetensors' },
          }),
        ),
      ],
      ['model-00001-of-00002.safetensors', Buffer.from('shard one')],
    ]),
    lfs: new Set(),
  });
});
afterAll(async () => {
  await hub.close();
  rmSync(work, { recursive: true, force: true });
});

test('model ids: org/name[@revision]; paths are not ids', () => {
  expect(parseHubModelId('karpathy/stories260K')).toEqual({ repo: 'karpathy/stories260K', revision: 'main' });
  expect(parseHubModelId('org/name@v1.0')).toEqual({ repo: 'org/name', revision: 'v1.0' });
  for (const p of ['./model', '/abs/model', 'model.bin', 'a/b/c', '../x/y', 'org/name@', 'org/..'])
    expect(parseHubModelId(p), p).toBeUndefined();
});

test("full download: the Hub cache layout, only the model's files, checksums as blob names, and the model opens", async () => {
  const cacheDir = freshCache();
  const seen: number[] = [];
  const snap = await downloadHubModel(
    { repo: 'karpathy/stories260K', revision: 'main' },
    { endpoint: hub.endpoint, cacheDir, token: undefined, offline: false, onProgress: (p) => seen.push(p.bytes) },
  );
  const folder = join(cacheDir, 'models--karpathy--stories260K');
  expect(snap.dir).toBe(join(folder, 'snapshots', COMMIT));
  expect(readFileSync(join(folder, 'refs', 'main'), 'utf8')).toBe(COMMIT);
  expect(readdirSync(snap.dir).sort()).toEqual([
    'config.json',
    'generation_config.json',
    'model.safetensors',
    'tokenizer.json',
    'tokenizer.model',
    'tokenizer_config.json',
  ]);
  // snapshots hold relative links to blobs named by the ETag: sha256 for LFS files, git's sha1 otherwise
  expect(readlinkSync(join(snap.dir, 'model.safetensors'))).toBe(`../../blobs/${sha256(model('model.safetensors'))}`);
  expect(readlinkSync(join(snap.dir, 'config.json'))).toBe(`../../blobs/${gitSha1(model('config.json'))}`);
  expect(lstatSync(join(snap.dir, 'config.json')).isSymbolicLink()).toBe(true);
  expect(readFileSync(join(snap.dir, 'model.safetensors')).equals(model('model.safetensors'))).toBe(true);
  expect(hub.requests.some((r) => r.url.includes('pytorch_model.bin') || r.url.includes('README.md'))).toBe(false);
  // progress ends at the total and never goes back
  const total = [
    ...'config.json generation_config.json tokenizer.json tokenizer_config.json tokenizer.model model.safetensors'.split(
      ' ',
    ),
  ].reduce((n, f) => n + model(f).length, 0);
  expect(seen.at(-1)).toBe(total);
  for (let i = 1; i < seen.length; i++) expect(seen[i]!).toBeGreaterThanOrEqual(seen[i - 1]!);

  // a second call downloads nothing
  const before = hub.requests.filter((r) => r.method === 'GET' && r.url.includes('/lfs/')).length;
  expect(
    (
      await downloadHubModel(
        { repo: 'karpathy/stories260K', revision: 'main' },
        { endpoint: hub.endpoint, cacheDir, offline: false },
      )
    ).cached,
  ).toBe(true);
  expect(hub.requests.filter((r) => r.method === 'GET' && r.url.includes('/lfs/')).length).toBe(before);

  // openModel('org/name') through HF_ENDPOINT / HF_HUB_CACHE scores as the local directory does
  const text = readFileSync(dataFile('tinystories-valid.eval.txt'), 'utf8').slice(0, 20_000);
  process.env.HF_ENDPOINT = hub.endpoint;
  process.env.HF_HUB_CACHE = cacheDir;
  try {
    const fromHub = await openModel('karpathy/stories260K', { device: 'cpu' });
    const local = await openModel(dataFile('stories260K-hf'), { device: 'cpu' });
    expect((await perplexity(fromHub, text)).nll).toBe((await perplexity(local, text)).nll);
    await fromHub.close();
    await local.close();
  } finally {
    delete process.env.HF_ENDPOINT;
    delete process.env.HF_HUB_CACHE;
  }
});

test('a sharded model: the index and the shards it names, not the consolidated copy; a shard the repository lacks is an error', async () => {
  const cacheDir = freshCache();
  const snap = await downloadHubModel(
    { repo: 'org/sharded', revision: 'main' },
    { endpoint: hub.endpoint, cacheDir, offline: false },
  );
  expect(readdirSync(snap.dir).sort()).toEqual([
    'config.json',
    'model-00001-of-00002.safetensors',
    'model-00002-of-00002.safetensors',
    'model.safetensors.index.json',
  ]);
  await expect(
    downloadHubModel(
      { repo: 'org/broken-index', revision: 'main' },
      { endpoint: hub.endpoint, cacheDir, offline: false },
    ),
  ).rejects.toMatchObject({
    code: 'E_HUB_NOT_FOUND',
    message: expect.stringContaining('model-00002-of-00002.safetensors'),
  });
});

test('a download cut mid-file resumes with a Range request from where it stopped, and the result is byte-exact', async () => {
  const cacheDir = freshCache();
  const weights = model('model.safetensors');
  const hash = sha256(weights);
  hub.cutNext.set(hash, 300_000);
  await expect(
    downloadHubModel(
      { repo: 'karpathy/stories260K', revision: 'main' },
      { endpoint: hub.endpoint, cacheDir, offline: false },
    ),
  ).rejects.toMatchObject({ code: 'E_HUB' });
  const partial = join(cacheDir, 'models--karpathy--stories260K', 'blobs', `${hash}.incomplete`);
  const kept = statSync(partial).size;
  expect(kept).toBeGreaterThan(0);
  expect(kept).toBeLessThanOrEqual(300_000);

  const snap = await downloadHubModel(
    { repo: 'karpathy/stories260K', revision: 'main' },
    { endpoint: hub.endpoint, cacheDir, offline: false },
  );
  const ranged = hub.requests.filter((r) => r.server === 'storage' && r.url.startsWith(`/lfs/${hash}`)).at(-1)!;
  expect(ranged.range).toBe(`bytes=${kept}-`);
  expect(readFileSync(join(snap.dir, 'model.safetensors')).equals(weights)).toBe(true);
  expect(existsSync(partial)).toBe(false);
});

test('a corrupted transfer fails its sha256 check and leaves no blob behind', async () => {
  const cacheDir = freshCache();
  const weights = model('model.safetensors');
  const bad = Buffer.from(weights);
  bad[1000] ^= 1;
  hub.corrupt.set(sha256(weights), bad);
  try {
    await expect(
      downloadHubModel(
        { repo: 'karpathy/stories260K', revision: 'main' },
        { endpoint: hub.endpoint, cacheDir, offline: false },
      ),
    ).rejects.toMatchObject({ code: 'E_HUB', message: expect.stringContaining('checksum mismatch') });
  } finally {
    hub.corrupt.clear();
  }
  const blobs = readdirSync(join(cacheDir, 'models--karpathy--stories260K', 'blobs'));
  expect(blobs.filter((b) => b.startsWith(sha256(weights)))).toEqual([]);
});

test('a gated repository: 401 without a token (the error says HF_TOKEN); with one, the token goes to the Hub and never to the storage', async () => {
  const cacheDir = freshCache();
  await expect(
    downloadHubModel(
      { repo: 'meta/gated', revision: 'main' },
      { endpoint: hub.endpoint, cacheDir, token: undefined, offline: false },
    ),
  ).rejects.toMatchObject({ code: 'E_HUB_AUTH', message: expect.stringContaining('HF_TOKEN') });
  await expect(
    downloadHubModel(
      { repo: 'meta/gated', revision: 'main' },
      { endpoint: hub.endpoint, cacheDir, token: 'hf_wrong', offline: false },
    ),
  ).rejects.toMatchObject({ code: 'E_HUB_AUTH' });
  const from = hub.requests.length;
  const snap = await downloadHubModel(
    { repo: 'meta/gated', revision: 'main' },
    { endpoint: hub.endpoint, cacheDir, token: 'hf_secret', offline: false },
  );
  expect(existsSync(join(snap.dir, 'model.safetensors'))).toBe(true);
  const requests = hub.requests.slice(from);
  expect(requests.filter((r) => r.server === 'hub').every((r) => r.authorization === 'Bearer hf_secret')).toBe(true);
  expect(requests.filter((r) => r.server === 'storage').length).toBeGreaterThan(0);
  expect(requests.filter((r) => r.server === 'storage').map((r) => r.authorization)).toEqual(
    requests.filter((r) => r.server === 'storage').map(() => undefined),
  );
});

test('no such repository or revision: E_HUB_NOT_FOUND', async () => {
  const cacheDir = freshCache();
  await expect(
    downloadHubModel(
      { repo: 'nobody/nothing', revision: 'main' },
      { endpoint: hub.endpoint, cacheDir, offline: false },
    ),
  ).rejects.toMatchObject({ code: 'E_HUB_NOT_FOUND' });
  await expect(
    downloadHubModel(
      { repo: 'karpathy/stories260K', revision: 'v9' },
      { endpoint: hub.endpoint, cacheDir, offline: false },
    ),
  ).rejects.toMatchObject({ code: 'E_HUB_NOT_FOUND' });
});

test('HF_HUB_OFFLINE: a cached model opens with no request at all; one not cached is E_OFFLINE', async () => {
  const cacheDir = freshCache();
  await downloadHubModel(
    { repo: 'karpathy/stories260K', revision: 'main' },
    { endpoint: hub.endpoint, cacheDir, offline: false },
  );
  const from = hub.requests.length;
  const snap = await downloadHubModel(
    { repo: 'karpathy/stories260K', revision: 'main' },
    { endpoint: hub.endpoint, cacheDir, offline: true },
  );
  expect(snap.commit).toBe(COMMIT);
  expect(
    (
      await downloadHubModel(
        { repo: 'karpathy/stories260K', revision: COMMIT },
        { endpoint: hub.endpoint, cacheDir, offline: true },
      )
    ).dir,
  ).toBe(snap.dir);
  await expect(
    downloadHubModel({ repo: 'org/sharded', revision: 'main' }, { endpoint: hub.endpoint, cacheDir, offline: true }),
  ).rejects.toMatchObject({ code: 'E_OFFLINE' });
  expect(hub.requests.length).toBe(from);
});

test('the CLI: lowbit inspect org/name downloads with progress lines (not a terminal) into HF_HUB_CACHE, then HF_HUB_OFFLINE=1 works', async () => {
  const cacheDir = freshCache();
  const env = { HF_ENDPOINT: hub.endpoint, HF_HUB_CACHE: cacheDir, HF_TOKEN: undefined, HF_HUB_OFFLINE: undefined };
  const run = await lowbit(['inspect', 'karpathy/stories260K'], { env });
  expect(run.code, run.stderr).toBe(0);
  expect(run.stderr).toMatch(/downloading karpathy\/stories260K .*100%/);
  expect(run.stderr).not.toContain('\r');
  expect(run.stdout).toContain('LlamaForCausalLM');
  const offline = await lowbit(['inspect', 'karpathy/stories260K'], {
    env: { ...env, HF_ENDPOINT: 'http://127.0.0.1:9', HF_HUB_OFFLINE: '1' },
  });
  expect(offline.code, offline.stderr).toBe(0);
  const missing = await lowbit(['inspect', 'nobody/nothing'], { env });
  expect(missing.code).toBe(1);
  expect(missing.stderr).toContain('E_HUB_NOT_FOUND');
});

/**
 * Downloads a model from the Hugging Face Hub into the Hub's standard cache (src/hub/cache.ts): the
 * config, the tokenizer files and the safetensors weights, nothing else. Resumes partial downloads
 * (HTTP Range), checks each file against the checksum the Hub gives (the ETag: sha256 for LFS files,
 * the git blob sha1 for small ones), reports progress, and with HF_HUB_OFFLINE=1 uses the cache only.
 *
 * The Hub's HTTP interface, as huggingface_hub uses it:
 *   GET  {endpoint}/api/models/{repo}/revision/{revision}  -> { sha, siblings: [{ rfilename }] }
 *   HEAD {endpoint}/{repo}/resolve/{commit}/{file}          -> ETag or X-Linked-Etag, X-Linked-Size or
 *        Content-Length, X-Repo-Commit; LFS files answer with a redirect (Location) to their storage
 *   GET  the same (or the Location), with Range: bytes=N- to resume
 *
 * Written here rather than with @huggingface/hub: its cache download has no resume, no progress, no
 * checksum check and no offline mode, and it brings a WebAssembly dependency lowbit does not need.
 */
import { createHash } from 'node:crypto';
import {
  createReadStream,
  existsSync,
  mkdirSync,
  readFileSync,
  renameSync,
  rmSync,
  statSync,
  symlinkSync,
  writeFileSync,
} from 'node:fs';
import { open } from 'node:fs/promises';
import { dirname, join, relative } from 'node:path';
import { LowbitError } from '../errors.js';
import { cachedCommit, hubSettings, isCommit, repoFolder, type HubModelId, type HubSettings } from './cache.js';

/** Files a model needs besides its weights (fetched when the repository has them). */
const MODEL_FILES = [
  'config.json',
  'generation_config.json',
  'tokenizer.json',
  'tokenizer_config.json',
  'tokenizer.model',
  'special_tokens_map.json',
  'quantize_config.json',
  'model.safetensors.index.json',
];

export interface HubProgress {
  /** the file being downloaded */
  file: string;
  /** bytes of every file so far (cached files count as done), and of all of them */
  bytes: number;
  totalBytes: number;
  /** files finished, and how many there are */
  filesDone: number;
  files: number;
}

export interface HubDownloadOptions extends Partial<HubSettings> {
  onProgress?: (p: HubProgress) => void;
  signal?: AbortSignal;
}

export interface HubSnapshot {
  /** the snapshot directory: open it as a local model */
  dir: string;
  repo: string;
  revision: string;
  commit: string;
  /** true when nothing was downloaded (everything was in the cache) */
  cached: boolean;
}

interface RemoteFile {
  name: string;
  /** normalized ETag: the blob's name in the cache */
  etag: string;
  size: number;
  /** where to GET it (a redirect target for LFS files) */
  url: string;
}

/** Fetch with the Hub's error mapping; redirects are followed by hand (the token never leaves the Hub's origin). */
async function hubFetch(
  url: string,
  init: { method?: string; headers?: Record<string, string>; signal?: AbortSignal },
  settings: HubSettings,
  what: string,
  follow = true,
): Promise<Response> {
  let current = url;
  for (let hop = 0; hop < 6; hop++) {
    const headers: Record<string, string> = { 'user-agent': 'lowbit', ...init.headers };
    if (settings.token && new URL(current).origin === new URL(settings.endpoint).origin)
      headers.authorization = `Bearer ${settings.token}`;
    let response: Response;
    try {
      response = await fetch(current, {
        method: init.method ?? 'GET',
        headers,
        redirect: 'manual',
        signal: init.signal,
      });
    } catch (err) {
      if (init.signal?.aborted) throw new LowbitError('E_ABORTED', `${what}: cancelled`, {}, { cause: err });
      throw new LowbitError(
        'E_HUB',
        `${what}: cannot reach ${new URL(current).origin} (${(err as Error).message}); with the model already downloaded, HF_HUB_OFFLINE=1 uses the cache only`,
        { url: current },
        { cause: err },
      );
    }
    if (response.status >= 300 && response.status < 400 && response.headers.has('location')) {
      if (!follow) return response;
      await response.body?.cancel();
      current = new URL(response.headers.get('location')!, current).toString();
      continue;
    }
    if (response.ok || response.status === 206 || response.status === 416) return response;
    await response.body?.cancel();
    if (response.status === 401 || response.status === 403) {
      throw new LowbitError(
        'E_HUB_AUTH',
        settings.token
          ? `${what}: the Hub refused the token (HTTP ${response.status}): does it have access to this repository (gated models need their terms accepted)?`
          : `${what}: the Hub needs a token for this repository (HTTP ${response.status}: gated or private): set HF_TOKEN`,
        { url: current, status: response.status },
      );
    }
    if (response.status === 404)
      throw new LowbitError('E_HUB_NOT_FOUND', `${what}: not found (HTTP 404)`, { url: current, status: 404 });
    throw new LowbitError('E_HUB', `${what}: HTTP ${response.status} from ${current}`, {
      url: current,
      status: response.status,
    });
  }
  throw new LowbitError('E_HUB', `${what}: too many redirects from ${url}`, { url });
}

const normalizeEtag = (etag: string) => etag.replace(/^W\//, '').replace(/^"|"$/g, '');

/** Checks a downloaded blob against its ETag: sha256 (LFS) or git's blob sha1 (small files). */
async function verify(path: string, etag: string, size: number, file: string): Promise<void> {
  const actual = statSync(path).size;
  if (actual !== size)
    throw new LowbitError('E_HUB', `${file}: downloaded ${actual} bytes, the Hub announced ${size}`, { file });
  let hash: ReturnType<typeof createHash>;
  if (/^[0-9a-f]{64}$/.test(etag)) hash = createHash('sha256');
  else if (/^[0-9a-f]{40}$/.test(etag)) hash = createHash('sha1').update(`blob ${size}\0`);
  else return; // an ETag that is no content hash: nothing to compare against
  for await (const chunk of createReadStream(path)) hash.update(chunk as Buffer);
  const digest = hash.digest('hex');
  if (digest !== etag)
    throw new LowbitError(
      'E_HUB',
      `${file}: checksum mismatch (got ${digest}, the Hub's ETag is ${etag}); the partial file was removed, run again`,
      { file },
    );
}

async function fileInfo(
  settings: HubSettings,
  repo: string,
  commit: string,
  name: string,
  signal?: AbortSignal,
): Promise<RemoteFile> {
  const url = `${settings.endpoint}/${repo}/resolve/${commit}/${name.split('/').map(encodeURIComponent).join('/')}`;
  const response = await hubFetch(url, { method: 'HEAD', signal }, settings, `${repo}: ${name}`, false);
  const h = response.headers;
  const etag = h.get('x-linked-etag') ?? h.get('etag');
  const size = Number(h.get('x-linked-size') ?? h.get('content-length'));
  if (!etag || !Number.isSafeInteger(size) || size < 0)
    throw new LowbitError('E_HUB', `${repo}: ${name}: the Hub gave no ETag or size`, { url });
  const location = h.get('location');
  return { name, etag: normalizeEtag(etag), size, url: location ? new URL(location, url).toString() : url };
}

/** Downloads one blob to blobs/{etag}, resuming blobs/{etag}.incomplete; returns when it is verified. */
async function downloadBlob(
  settings: HubSettings,
  file: RemoteFile,
  blob: string,
  onBytes: (n: number) => void,
  signal?: AbortSignal,
): Promise<void> {
  const partial = `${blob}.incomplete`;
  let have = existsSync(partial) ? statSync(partial).size : 0;
  if (have > file.size) {
    rmSync(partial);
    have = 0;
  }
  onBytes(have);
  if (have < file.size || file.size === 0) {
    const response = await hubFetch(
      file.url,
      { headers: have > 0 ? { range: `bytes=${have}-` } : {}, signal },
      settings,
      file.name,
    );
    if (response.status === 416) {
      await response.body?.cancel(); // asked past the end: the partial file is whole
    } else {
      if (response.status !== 206 && have > 0) {
        // the server sent it all again
        onBytes(-have);
        have = 0;
      }
      const handle = await open(partial, have > 0 ? 'a' : 'w');
      try {
        for await (const chunk of response.body as unknown as AsyncIterable<Uint8Array>) {
          await handle.write(chunk);
          onBytes(chunk.byteLength);
        }
      } catch (err) {
        if (signal?.aborted)
          throw new LowbitError(
            'E_ABORTED',
            `${file.name}: cancelled (the partial download is kept and resumed next time)`,
            {},
            { cause: err },
          );
        throw new LowbitError(
          'E_HUB',
          `${file.name}: the download broke off (${(err as Error).message}); run again to resume it`,
          { file: file.name },
          { cause: err },
        );
      } finally {
        await handle.close();
      }
    }
  }
  try {
    await verify(partial, file.etag, file.size, file.name);
  } catch (err) {
    rmSync(partial, { force: true });
    throw err;
  }
  renameSync(partial, blob);
}

function linkSnapshot(snapshot: string, name: string, blob: string): void {
  const link = join(snapshot, name);
  mkdirSync(dirname(link), { recursive: true });
  rmSync(link, { force: true });
  symlinkSync(relative(dirname(link), blob), link);
}

function snapshotComplete(dir: string): boolean {
  if (!existsSync(join(dir, 'config.json'))) return false;
  const index = join(dir, 'model.safetensors.index.json');
  if (existsSync(index)) {
    const shards = new Set(
      Object.values(
        (JSON.parse(readFileSync(index, 'utf8')) as { weight_map?: Record<string, string> }).weight_map ?? {},
      ),
    );
    return [...shards].every((s) => existsSync(join(dir, s)));
  }
  return existsSync(join(dir, 'model.safetensors'));
}

/** The cached snapshot of a model, for HF_HUB_OFFLINE=1. */
function offlineSnapshot(settings: HubSettings, id: HubModelId): HubSnapshot {
  const commit = cachedCommit(settings.cacheDir, id);
  const dir = commit && join(repoFolder(settings.cacheDir, id.repo), 'snapshots', commit);
  if (!dir || !snapshotComplete(dir)) {
    throw new LowbitError(
      'E_OFFLINE',
      `${id.repo}@${id.revision} is not in the Hub cache (${settings.cacheDir}) and HF_HUB_OFFLINE=1 forbids downloading it`,
      { repo: id.repo },
    );
  }
  return { dir, repo: id.repo, revision: id.revision, commit: commit!, cached: true };
}

/** Downloads (or finds in the cache) what lowbit needs of a Hub model; returns its snapshot directory. */
export async function downloadHubModel(id: HubModelId, options: HubDownloadOptions = {}): Promise<HubSnapshot> {
  const { onProgress, signal, ...overrides } = options;
  const settings = hubSettings(overrides);
  if (settings.offline) return offlineSnapshot(settings, id);
  const what = `${id.repo}@${id.revision}`;

  const info = await hubFetch(
    `${settings.endpoint}/api/models/${id.repo}/revision/${encodeURIComponent(id.revision)}`,
    { signal },
    settings,
    `model ${what} on ${settings.endpoint}`,
  );
  const meta = (await info.json()) as { sha?: string; siblings?: { rfilename: string }[] };
  if (!meta.sha || !isCommit(meta.sha) || !Array.isArray(meta.siblings))
    throw new LowbitError('E_HUB', `${what}: the Hub's answer has no commit or file list`, { repo: id.repo });
  const commit = meta.sha;
  const available = new Set(meta.siblings.map((s) => s.rfilename));
  const folder = repoFolder(settings.cacheDir, id.repo);
  const snapshot = join(folder, 'snapshots', commit);
  mkdirSync(join(folder, 'blobs'), { recursive: true });
  mkdirSync(snapshot, { recursive: true });
  if (id.revision !== commit) {
    mkdirSync(dirname(join(folder, 'refs', id.revision)), { recursive: true });
    writeFileSync(join(folder, 'refs', id.revision), commit);
  }
  if (!available.has('config.json'))
    throw new LowbitError('E_HUB_NOT_FOUND', `${what} has no config.json: not a transformers model`, { repo: id.repo });

  // The non-weight files first: the index (when sharded) names the weight files.
  const names = MODEL_FILES.filter((f) => available.has(f));
  const infos: RemoteFile[] = [];
  for (const name of names) infos.push(await fileInfo(settings, id.repo, commit, name, signal));
  let weights: string[];
  if (available.has('model.safetensors.index.json')) {
    const indexInfo = infos.find((f) => f.name === 'model.safetensors.index.json')!;
    const indexBlob = join(folder, 'blobs', indexInfo.etag);
    if (!existsSync(indexBlob)) await downloadBlob(settings, indexInfo, indexBlob, () => {}, signal);
    const map =
      (JSON.parse(readFileSync(indexBlob, 'utf8')) as { weight_map?: Record<string, string> }).weight_map ?? {};
    weights = [...new Set(Object.values(map))].sort();
    const missing = weights.filter((w) => !available.has(w));
    if (missing.length > 0)
      throw new LowbitError(
        'E_HUB_NOT_FOUND',
        `${what}: model.safetensors.index.json names ${missing.join(', ')}, which the repository lacks`,
        { repo: id.repo },
      );
  } else if (available.has('model.safetensors')) {
    weights = ['model.safetensors'];
  } else {
    throw new LowbitError(
      'E_HUB_NOT_FOUND',
      `${what} has no safetensors weights (model.safetensors or an index); lowbit does not download .bin/.pt pickles`,
      { repo: id.repo },
    );
  }
  for (const name of weights) infos.push(await fileInfo(settings, id.repo, commit, name, signal));

  const totalBytes = infos.reduce((n, f) => n + f.size, 0);
  let bytes = 0;
  let downloaded = false;
  for (const [i, file] of infos.entries()) {
    const blob = join(folder, 'blobs', file.etag);
    if (existsSync(blob) && statSync(blob).size === file.size) {
      bytes += file.size;
    } else {
      downloaded = true;
      let fileBytes = 0;
      await downloadBlob(
        settings,
        file,
        blob,
        (n) => {
          fileBytes += n;
          onProgress?.({ file: file.name, bytes: bytes + fileBytes, totalBytes, filesDone: i, files: infos.length });
        },
        signal,
      );
      bytes += file.size;
    }
    linkSnapshot(snapshot, file.name, blob);
    onProgress?.({ file: file.name, bytes, totalBytes, filesDone: i + 1, files: infos.length });
  }
  return { dir: snapshot, repo: id.repo, revision: id.revision, commit, cached: !downloaded };
}

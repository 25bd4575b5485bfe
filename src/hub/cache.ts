/**
 * Where Hugging Face Hub downloads live: the Hub's standard cache layout, shared with the Python
 * libraries (huggingface_hub, transformers) so a model downloaded by either is found by the other.
 *
 *   $HF_HUB_CACHE (default $HF_HOME/hub, $HF_HOME default ~/.cache/huggingface)
 *     models--{org}--{name}/
 *       blobs/{etag}                 file contents, named by the Hub's ETag (sha256 for LFS files)
 *       snapshots/{commit}/{file}    relative symlinks to ../../blobs/{etag}
 *       refs/{revision}              the commit a branch or tag name resolved to
 */
import { existsSync, readFileSync } from 'node:fs';
import { homedir } from 'node:os';
import { join } from 'node:path';
import { LowbitError } from '../errors.js';

export interface HubSettings {
  /** the Hub's address (HF_ENDPOINT, default https://huggingface.co) */
  endpoint: string;
  /** access token (HF_TOKEN, else the token file the Python login writes), or undefined */
  token: string | undefined;
  /** the cache root (HF_HUB_CACHE, else $HF_HOME/hub) */
  cacheDir: string;
  /** no network: the cache only (HF_HUB_OFFLINE=1) */
  offline: boolean;
}

const truthy = (v: string | undefined) => v !== undefined && ['1', 'true', 'yes', 'on'].includes(v.toLowerCase());

/** The settings from the environment, the way huggingface_hub reads them; `overrides` win. */
export function hubSettings(overrides: Partial<HubSettings> = {}, env: NodeJS.ProcessEnv = process.env): HubSettings {
  const home = env.HF_HOME ?? join(env.XDG_CACHE_HOME ?? join(homedir(), '.cache'), 'huggingface');
  let token = env.HF_TOKEN ?? env.HUGGING_FACE_HUB_TOKEN;
  if (token === undefined) {
    const file = env.HF_TOKEN_PATH ?? join(home, 'token');
    if (existsSync(file)) token = readFileSync(file, 'utf8').trim() || undefined;
  }
  return {
    endpoint: (overrides.endpoint ?? env.HF_ENDPOINT ?? 'https://huggingface.co').replace(/\/+$/, ''),
    token: overrides.token ?? token,
    cacheDir: overrides.cacheDir ?? env.HF_HUB_CACHE ?? env.HUGGINGFACE_HUB_CACHE ?? join(home, 'hub'),
    offline: overrides.offline ?? truthy(env.HF_HUB_OFFLINE),
  };
}

export interface HubModelId {
  /** "org/name" */
  repo: string;
  /** branch, tag or commit ("main" when not given) */
  revision: string;
}

const REPO = /^[A-Za-z0-9][A-Za-z0-9._-]*\/[A-Za-z0-9][A-Za-z0-9._-]*$/;
const REVISION = /^[A-Za-z0-9][A-Za-z0-9._/-]*$/;

/**
 * "org/name" or "org/name@revision" as a Hub model id, or undefined when `spec` is not one (a path
 * such as ./model, /models/x or model.bin). Callers check for a local path first.
 */
export function parseHubModelId(spec: string): HubModelId | undefined {
  const at = spec.indexOf('@');
  const repo = at < 0 ? spec : spec.slice(0, at);
  const revision = at < 0 ? 'main' : spec.slice(at + 1);
  if (!REPO.test(repo) || repo.includes('..') || !REVISION.test(revision) || revision.includes('..')) return undefined;
  return { repo, revision };
}

export function repoFolder(cacheDir: string, repo: string): string {
  return join(cacheDir, `models--${repo.replace('/', '--')}`);
}

export const isCommit = (revision: string) => /^[0-9a-f]{40}$/.test(revision);

/** The commit a revision names in the cache (the revision itself when it is a commit), or undefined. */
export function cachedCommit(cacheDir: string, id: HubModelId): string | undefined {
  if (isCommit(id.revision)) return id.revision;
  const ref = join(repoFolder(cacheDir, id.repo), 'refs', id.revision);
  if (!existsSync(ref)) return undefined;
  const commit = readFileSync(ref, 'utf8').trim();
  if (!isCommit(commit)) throw new LowbitError('E_IO', `${ref} does not hold a commit hash`, { file: ref });
  return commit;
}

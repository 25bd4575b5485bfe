/**
 * Models named by their Hugging Face Hub id ("org/name" or "org/name@revision") wherever lowbit takes
 * a model path: a local path that exists always wins; otherwise a Hub id is downloaded into (or found
 * in) the Hub cache and its snapshot directory is used.
 */
import { existsSync } from 'node:fs';
import { parseHubModelId } from './cache.js';
import { downloadHubModel, type HubDownloadOptions } from './download.js';

export { hubSettings, parseHubModelId, repoFolder, type HubSettings, type HubModelId } from './cache.js';
export { downloadHubModel, type HubDownloadOptions, type HubProgress, type HubSnapshot } from './download.js';

/** `path` itself when it exists locally or is no Hub id; else the downloaded snapshot's directory. */
export async function resolveModelPath(path: string, options: HubDownloadOptions = {}): Promise<string> {
  if (existsSync(path)) return path;
  const id = parseHubModelId(path);
  if (!id) return path;
  return (await downloadHubModel(id, options)).dir;
}

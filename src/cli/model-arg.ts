/** A command's --model: a local path, or a Hub id downloaded with a progress line (src/hub). */
import { existsSync } from 'node:fs';
import { parseHubModelId, resolveModelPath } from '../hub/index.js';
import { formatBytes, Progress } from './progress.js';

export async function resolveModelArg(path: string): Promise<string> {
  if (existsSync(path) || !parseHubModelId(path)) return path;
  const progress = new Progress(`downloading ${path}`);
  try {
    const dir = await resolveModelPath(path, {
      onProgress: (p) =>
        progress.update(p.bytes, p.totalBytes, `${formatBytes(p.bytes)} / ${formatBytes(p.totalBytes)}  ${p.file}`),
    });
    progress.finish();
    process.stderr.write(`${path}: ${dir}\n`);
    return dir;
  } catch (err) {
    progress.finish();
    throw err;
  }
}

/** A directory's files, for tests that compare what two runs wrote. */
import { createHash } from 'node:crypto';
import { readFile, readdir } from 'node:fs/promises';
import { join } from 'node:path';

/** Every file of `dir` (not recursive) by name, in sorted order. */
export async function filesOf(dir: string): Promise<Map<string, Buffer>> {
  const out = new Map<string, Buffer>();
  for (const f of (await readdir(dir)).sort()) out.set(f, await readFile(join(dir, f)));
  return out;
}

/** The SHA-256 (hex) of every file of `dir`, by name. */
export async function hashes(dir: string): Promise<Record<string, string>> {
  const out: Record<string, string> = {};
  for (const [name, bytes] of await filesOf(dir)) out[name] = createHash('sha256').update(bytes).digest('hex');
  return out;
}

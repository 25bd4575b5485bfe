/**
 * The committed real data (data/): every file is the byte-exact one that SHA256SUMS names (catches a
 * line-end conversion by git, a Git LFS pointer in place of a file, a truncated copy), and no file of
 * Meta's Llama 2 tokenizer was committed by mistake.
 */
import { createHash } from 'node:crypto';
import { existsSync, readFileSync, readdirSync } from 'node:fs';
import { join, relative } from 'node:path';
import { expect, test } from 'vitest';
import { dataDir } from '../helpers/data.js';

function filesUnder(dir: string): string[] {
  return readdirSync(dir, { withFileTypes: true }).flatMap((e) =>
    e.isDirectory() ? filesUnder(join(dir, e.name)) : [join(dir, e.name)],
  );
}

test('every file of data/ matches SHA256SUMS, and SHA256SUMS lists every data file', () => {
  const sums = new Map(
    readFileSync(join(dataDir, 'SHA256SUMS'), 'utf8')
      .trim()
      .split('\n')
      .map((line) => {
        const [hash, name] = line.split(/\s+/);
        return [name!.replace(/^\.\//, ''), hash!] as const;
      }),
  );
  expect(sums.size).toBeGreaterThan(15);
  for (const [name, hash] of sums) {
    const bytes = readFileSync(join(dataDir, name));
    expect(createHash('sha256').update(bytes).digest('hex'), name).toBe(hash);
  }
  const documentation = new Set(['SHA256SUMS', 'README.md', 'LICENSES.md']);
  const unlisted = filesUnder(dataDir)
    .map((p) => relative(dataDir, p))
    .filter((name) => !sums.has(name) && !documentation.has(name));
  expect(unlisted).toEqual([]);
});

test("Llama 2's tokenizer (Meta's licence) is not in data/", () => {
  expect(existsSync(join(dataDir, 'tokenizer.model'))).toBe(false);
  expect(existsSync(join(dataDir, 'tokenizer.bin'))).toBe(false);
});

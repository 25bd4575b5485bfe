#!/usr/bin/env node
// The hash of the native sources an addon is built from. Both builds (CMake and node-gyp) bake it
// into the addon; test/native/prebuilt.test.ts compares the committed prebuilt's hash with the
// sources' to catch a stale binary. Hashes paths and contents (CRLF normalised), sorted by path.
import { createHash } from 'node:crypto';
import { readdirSync, readFileSync, statSync } from 'node:fs';
import { join, relative, sep } from 'node:path';
import { fileURLToPath } from 'node:url';

const SOURCE_DIRS = ['native', 'cuda'];
const SOURCE_FILES = ['CMakeLists.txt'];
const EXTENSIONS = /\.(c|cc|cpp|h|hpp|cu|cuh)$/;

function walk(dir, out) {
  for (const name of readdirSync(dir)) {
    const path = join(dir, name);
    if (statSync(path).isDirectory()) walk(path, out);
    else if (EXTENSIONS.test(name)) out.push(path);
  }
  return out;
}

export function nativeSourceFiles(root) {
  const files = SOURCE_DIRS.flatMap((d) => walk(join(root, d), []));
  files.push(...SOURCE_FILES.map((f) => join(root, f)));
  return files.map((f) => relative(root, f).split(sep).join('/')).sort();
}

export function sourceHash(root) {
  const hash = createHash('sha256');
  for (const rel of nativeSourceFiles(root)) {
    const text = readFileSync(join(root, rel), 'utf8').replace(/\r\n/g, '\n');
    hash.update(rel).update('\0').update(text).update('\0');
  }
  return hash.digest('hex').slice(0, 16);
}

if (process.argv[1] && fileURLToPath(import.meta.url) === process.argv[1]) {
  const root = join(fileURLToPath(new URL('.', import.meta.url)), '..');
  process.stdout.write(sourceHash(root));
}

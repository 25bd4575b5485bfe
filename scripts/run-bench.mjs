#!/usr/bin/env node
// `npm run bench [-- <name> ...] [-- --runs N ...]`: runs the benchmarks bench/<name>.mjs (default:
// every bench/cpu-*.mjs) one after another. They import the package from dist/, so this builds it
// first when dist/ is missing. Extra --options are passed on to each benchmark.
import { execFileSync, spawnSync } from 'node:child_process';
import { existsSync, readdirSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
const args = process.argv.slice(2);
const firstOption = args.findIndex((a) => a.startsWith('--'));
const names = firstOption < 0 ? args : args.slice(0, firstOption);
const options = firstOption < 0 ? [] : args.slice(firstOption);

if (!existsSync(join(root, 'dist', 'index.js'))) {
  console.log('dist/ is missing: npm run build:ts');
  execFileSync('npm', ['run', 'build:ts'], { cwd: root, stdio: 'inherit' });
}

const all = readdirSync(join(root, 'bench'))
  .filter((f) => /^cpu-.*\.mjs$/.test(f))
  .sort();
const chosen = names.length === 0 ? all : names.map((n) => (n.endsWith('.mjs') ? n : `${n}.mjs`));
let failed = 0;
for (const file of chosen) {
  const path = join(root, 'bench', file);
  if (!existsSync(path)) {
    console.error(`no benchmark ${path} (have: ${all.join(', ')})`);
    failed++;
    continue;
  }
  console.log(`\n=== ${file}`);
  const r = spawnSync(process.execPath, [path, ...options], { cwd: root, stdio: 'inherit' });
  if (r.status !== 0) failed++;
}
process.exit(failed === 0 ? 0 : 1);

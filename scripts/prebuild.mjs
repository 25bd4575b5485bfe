#!/usr/bin/env node
// npm run prebuild: a clean CMake build (with CUDA when nvcc is present) copied to the name and place
// node-gyp-build looks for (prebuildify's naming: prebuilds/<platform>-<arch>/<name>.napi.node).
import { execFileSync } from 'node:child_process';
import { copyFileSync, mkdirSync, renameSync, rmSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = join(fileURLToPath(new URL('.', import.meta.url)), '..');
const out = join(root, 'build-prebuild');
rmSync(out, { recursive: true, force: true });
execFileSync('npx', ['cmake-js', 'rebuild', '--out', out], { cwd: root, stdio: 'inherit' });

const dir = join(root, 'prebuilds', `${process.platform}-${process.arch}`);
mkdirSync(dir, { recursive: true });
const target = join(dir, 'lowbit.napi.node');
copyFileSync(join(out, 'Release', 'lowbit.node'), target + '.tmp');
renameSync(target + '.tmp', target);
rmSync(out, { recursive: true, force: true });
console.log(`wrote ${target} (${(statSync(target).size / 1e6).toFixed(2)} MB)`);

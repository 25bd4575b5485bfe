#!/usr/bin/env node
// npm run prebuild: a clean CMake build (with CUDA when nvcc is present) copied to the name and place
// node-gyp-build looks for (prebuildify's naming: prebuilds/<platform>-<arch>/<name>.napi.node).
//
// The glibc floor: a binary needs the glibc it was linked against (and what its static libstdc++ and
// libgcc were built against). So the prebuilt is compiled with the GCC 10 of a Debian 11 build root
// (glibc 2.31) and --sysroot pointing at it, for C++ and as nvcc's host compiler, with
// scripts/glibc-compat.h forced in (pow bound to its old version: floor 2.28); make the root with
// scripts/make-sysroot.sh. LOWBIT_SYSROOT names it (default: .sysroot in the repository). Without one
// the build uses the machine's own compiler and glibc, and says what floor that gives.
// After the build the binary's ELF version needs are read back and checked against the floor.
//
//   node scripts/prebuild.mjs [--cpu-only] [--target FILE]   (a CPU-only build, or another destination,
//                                                            to check the toolchain without touching prebuilds/)
import { execFileSync } from 'node:child_process';
import { chmodSync, copyFileSync, existsSync, mkdirSync, renameSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';

const root = join(fileURLToPath(new URL('.', import.meta.url)), '..');
/** The newest glibc the prebuilt may need: Debian 10, Ubuntu 18.10, RHEL 8 and everything newer. */
export const GLIBC_FLOOR = '2.28';

const { values: options } = parseArgs({ options: { 'cpu-only': { type: 'boolean' }, target: { type: 'string' } } });
const out = join(root, 'build-prebuild');
const sysroot = resolve(process.env.LOWBIT_SYSROOT ?? join(root, '.sysroot'));
const sysrootCompiler = join(sysroot, 'usr', 'bin', 'x86_64-linux-gnu-g++-10');
const useSysroot = process.platform === 'linux' && process.arch === 'x64' && existsSync(sysrootCompiler);

rmSync(out, { recursive: true, force: true });
mkdirSync(out, { recursive: true });
const cmakeArgs = options['cpu-only'] ? ['--CDLOWBIT_CUDA=OFF'] : [];
if (useSysroot) {
  // One wrapper for the C++ compiler and nvcc's host compiler, so both see the same headers and libraries.
  // (outside the build folder: cmake-js rebuild empties that first)
  const toolchain = join(root, 'build-prebuild-toolchain');
  const wrapper = join(toolchain, 'g++');
  mkdirSync(toolchain, { recursive: true });
  const compat = join(root, 'scripts', 'glibc-compat.h');
  writeFileSync(wrapper, `#!/bin/sh\nexec '${sysrootCompiler}' --sysroot='${sysroot}' -include '${compat}' "$@"\n`);
  chmodSync(wrapper, 0o755);
  cmakeArgs.push(`--CDCMAKE_CXX_COMPILER=${wrapper}`, `--CDCMAKE_CUDA_HOST_COMPILER=${wrapper}`);
  console.log(`prebuild: compiling against the build root ${sysroot} (glibc floor ${GLIBC_FLOOR})`);
} else {
  console.warn(
    `prebuild: no build root at ${sysroot} (make one with scripts/make-sysroot.sh, or set LOWBIT_SYSROOT): ` +
      `compiling against this machine's glibc, which the binary will then require`,
  );
}
execFileSync('npx', ['cmake-js', 'rebuild', '--out', out, ...cmakeArgs], { cwd: root, stdio: 'inherit' });

const built = join(out, 'Release', 'lowbit.node');
const { readVersionNeeds, glibcNeeded, compareVersions } = await import(join(root, 'dist', 'elf.js'));
const needs = readVersionNeeds(built);
const glibc = glibcNeeded(needs);
const libraries = [...needs.keys()];
console.log(`prebuild: the binary needs glibc ${glibc} (${libraries.join(', ')})`);
if (libraries.some((l) => /^lib(stdc\+\+|gcc_s)\.so/.test(l)))
  throw new Error(
    `prebuild: ${built} needs a shared libstdc++/libgcc (${libraries.join(', ')}): they must be linked statically`,
  );
if (useSysroot && compareVersions(glibc, GLIBC_FLOOR) > 0)
  throw new Error(`prebuild: ${built} needs glibc ${glibc}, above the floor ${GLIBC_FLOOR}`);

const target = resolve(
  options.target ?? join(root, 'prebuilds', `${process.platform}-${process.arch}`, 'lowbit.napi.node'),
);
mkdirSync(dirname(target), { recursive: true });
copyFileSync(built, target + '.tmp');
renameSync(target + '.tmp', target);
rmSync(out, { recursive: true, force: true });
rmSync(join(root, 'build-prebuild-toolchain'), { recursive: true, force: true });
console.log(`wrote ${target} (${(statSync(target).size / 1e6).toFixed(2)} MB, glibc >= ${glibc})`);

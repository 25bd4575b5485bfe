// Both build systems must compile the same sources: CMake (the main build, with CUDA) and node-gyp
// (CPU only). A source added to one and forgotten in the other fails here, not on a user's machine.
import { readFileSync, readdirSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { packageRoot } from '../../src/native.js';

const root = packageRoot();

function cmakeList(name: string): string[] {
  const text = readFileSync(join(root, 'CMakeLists.txt'), 'utf8');
  const m = new RegExp(`set\\(${name}\\s+([^)]*)\\)`).exec(text);
  if (!m) throw new Error(`CMakeLists.txt has no set(${name} ...)`);
  return m[1].split(/\s+/).filter((s) => s && !s.startsWith('#'));
}

function gypSources(): string[] {
  // binding.gyp is a Python literal with comments; strip the comments and parse it as JSON.
  const text = readFileSync(join(root, 'binding.gyp'), 'utf8').replace(/^\s*#.*$/gm, '');
  const gyp = JSON.parse(text) as { targets: { sources: string[] }[] };
  return gyp.targets[0].sources;
}

function filesUnder(dir: string, ext: RegExp): string[] {
  return readdirSync(join(root, dir), { recursive: true, encoding: 'utf8' })
    .filter((f) => ext.test(f))
    .map((f) => `${dir}/${f.split('\\').join('/')}`);
}

describe('build files', () => {
  const cpu = cmakeList('LOWBIT_CPU_SOURCES');
  const noCuda = cmakeList('LOWBIT_NO_CUDA_SOURCES');
  const cudaSources = [...cmakeList('LOWBIT_CUDA_SOURCES'), ...cmakeList('LOWBIT_CUDA_SM90A_SOURCES')];

  it('binding.gyp names exactly the CPU sources of the CMake build', () => {
    expect([...gypSources()].sort()).toEqual([...cpu, ...noCuda].sort());
  });

  it('every C++ source under native/ is built', () => {
    expect(filesUnder('native', /\.cpp$/).sort()).toEqual(cpu.sort());
  });

  it('every CUDA source under cuda/ is built when nvcc is present', () => {
    expect(filesUnder('cuda', /\.cu$/).sort()).toEqual([...cudaSources].sort());
  });

  it('core stays free of Node headers and the binding free of CUDA headers', () => {
    for (const f of filesUnder('native/core', /\.(cpp|hpp)$/)) {
      expect(readFileSync(join(root, f), 'utf8'), f).not.toMatch(/#include\s*[<"](napi|node_api|node)\.h/);
    }
    for (const f of filesUnder('native/binding', /\.(cpp|hpp)$/)) {
      expect(readFileSync(join(root, f), 'utf8'), f).not.toMatch(/#include\s*<cuda/);
    }
  });
});

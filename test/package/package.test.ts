/**
 * What `npm pack` ships and what package.json promises: the bundled model and texts and the files
 * the README and docs link to are in the tarball (a link that works in the repository but 404s on
 * the package page is caught here), the licence files are there and Meta's tokenizer is not, engines
 * are stated the same way in the README, and `require('lowbit')` from CommonJS loads the package on
 * this Node (the reason engines says ^20.19.0 || >=22.12.0).
 */
import { execFileSync, spawnSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { dirname, join, normalize } from 'node:path';
import { beforeAll, expect, test } from 'vitest';
import { projectRoot } from '../helpers/data.js';

let packed: Set<string>;
beforeAll(() => {
  const npm = process.platform === 'win32' ? 'npm.cmd' : 'npm';
  const out = execFileSync(npm, ['pack', '--dry-run', '--json', '--ignore-scripts'], {
    cwd: projectRoot,
    encoding: 'utf8',
  });
  packed = new Set((JSON.parse(out) as { files: { path: string }[] }[])[0]!.files.map((f) => f.path));
});

const pkg = JSON.parse(readFileSync(join(projectRoot, 'package.json'), 'utf8')) as {
  engines: { node: string };
  os: string[];
  cpu: string[];
  libc: string[];
};

test('the tarball holds the bundled model and texts, the licences, the example, and no Llama 2 tokenizer', () => {
  for (const f of ['config.json', 'model.safetensors', 'tokenizer.json', 'tokenizer_config.json', 'tokenizer.model'])
    expect(packed, f).toContain(`data/stories260K-hf/${f}`);
  for (const f of [
    'data/tinystories-valid.calib.txt',
    'data/tinystories-valid.eval.txt',
    'data/LICENSES.md',
    'LICENSE',
    'CHANGELOG.md',
    'README.md',
    'examples/quickstart.ts',
    'dist/index.js',
    'dist/cli/bin.js',
  ]) {
    expect(packed, f).toContain(f);
  }
  expect([...packed].filter((f) => /(^|\/)tokenizer\.bin$/.test(f) || f === 'data/tokenizer.model')).toEqual([]);
  // test-only data stays out of the package (it would triple its size)
  expect([...packed].filter((f) => f.startsWith('data/') && /wiki|bf16|fp16|stories260K\.bin/.test(f))).toEqual([]);
});

test('every relative link of the shipped Markdown files points at a shipped file', () => {
  const broken: string[] = [];
  for (const doc of [...packed].filter((f) => f.endsWith('.md'))) {
    const text = readFileSync(join(projectRoot, doc), 'utf8');
    for (const m of text.matchAll(/\]\(([^)\s]+)\)/g)) {
      const target = m[1]!.split('#')[0]!;
      if (target === '' || /^[a-z]+:/i.test(target)) continue; // in-page anchor or absolute URL
      const path = normalize(join(dirname(doc), target)).replace(/\/$/, '');
      const shipped = packed.has(path) || [...packed].some((f) => f.startsWith(`${path}/`));
      if (!shipped) broken.push(`${doc}: ${m[1]}`);
    }
  }
  expect(broken).toEqual([]);
});

test('engines, README and platform fields agree', () => {
  expect(pkg.engines.node).toBe('^20.19.0 || >=22.12.0');
  const readme = readFileSync(join(projectRoot, 'README.md'), 'utf8');
  expect(readme).toContain(pkg.engines.node.replace(' || ', ' or '));
  expect([pkg.os, pkg.cpu, pkg.libc]).toEqual([['linux'], ['x64'], ['glibc']]);
});

test("require('lowbit') from a CommonJS program loads the package (ESM through require on this Node)", () => {
  const r = spawnSync(
    process.execPath,
    ['-e', "const l = require('lowbit'); console.log(typeof l.quantize, typeof l.openModel, l.bundled.model)"],
    {
      cwd: projectRoot,
      encoding: 'utf8',
    },
  );
  expect(r.status, r.stderr).toBe(0);
  expect(r.stdout).toMatch(/^function function .*data[\\/]stories260K-hf\n$/);
});

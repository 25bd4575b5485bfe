/**
 * The glibc floor of the prebuilt addon. A binary needs every symbol version it references; linked
 * on a new distribution it silently needs that distribution's glibc (2.36 here), and users on Debian
 * 11, Ubuntu 22.04 or RHEL 9 learn it at first use. scripts/prebuild.mjs builds against a Debian 11
 * root (scripts/make-sysroot.sh); this test reads the committed binary's ELF version needs and fails
 * above the floor, or when it needs a shared libstdc++/libgcc (they are linked statically).
 *
 * Also: the ELF reader (src/elf.ts) agrees with readelf, and a binary that needs a newer glibc than
 * the system's fails to load with an error that names both versions.
 */
import { execFileSync } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, expect, test } from 'vitest';
import { compareVersions, glibcNeeded, glibcRuntime, readVersionNeeds } from '../../src/elf.js';
import { loadFirstAddon, prebuiltPath } from '../../src/native.js';
import { projectRoot } from '../helpers/data.js';

const GLIBC_FLOOR = '2.28'; // scripts/prebuild.mjs's GLIBC_FLOOR
const prebuilt = prebuiltPath(projectRoot);
const sourceBuild = join(projectRoot, 'build', 'Release', 'lowbit.node');
const work = mkdtempSync(join(tmpdir(), 'lowbit-glibc-'));
afterAll(() => rmSync(work, { recursive: true, force: true }));

test(`the committed prebuilt needs glibc ${GLIBC_FLOOR} at most, and no shared libstdc++ or libgcc`, () => {
  const needs = readVersionNeeds(prebuilt);
  const glibc = glibcNeeded(needs)!;
  const fix = 'rebuild it against the Debian 11 root: bash scripts/make-sysroot.sh && npm run prebuild';
  expect(compareVersions(glibc, GLIBC_FLOOR), `${prebuilt} needs glibc ${glibc}: ${fix}`).toBeLessThanOrEqual(0);
  expect(
    [...needs.keys()].filter((lib) => /^lib(stdc\+\+|gcc_s)\.so/.test(lib)),
    fix,
  ).toEqual([]);
  expect(readFileSync(join(projectRoot, 'scripts/prebuild.mjs'), 'utf8')).toContain(`GLIBC_FLOOR = '${GLIBC_FLOOR}'`);
});

test('the ELF reader lists the same version needs as readelf -V', () => {
  for (const path of [prebuilt, sourceBuild].filter(existsSync)) {
    const text = execFileSync('readelf', ['-V', '-W', path], { encoding: 'utf8' });
    const section = text.slice(text.indexOf('.gnu.version_r'));
    const expected = new Map<string, string[]>();
    let file = '';
    for (const line of section.split('\n')) {
      const f = /File: (\S+)/.exec(line);
      if (f) expected.set((file = f[1]!), []);
      const n = /Name: (\S+)/.exec(line);
      if (n && file) expected.get(file)!.push(n[1]!);
    }
    expect(expected.size, path).toBeGreaterThan(0);
    expect(readVersionNeeds(path), path).toEqual(expected);
  }
});

test('a binary needing a newer glibc fails to load with the glibc found and the glibc needed', () => {
  const source = existsSync(sourceBuild) ? sourceBuild : prebuilt;
  const bytes = readFileSync(source);
  // Rename one version it needs, GLIBC_2.x -> GLIBC_9.x (same length): the loader cannot find it.
  const old = glibcNeeded(
    new Map([
      [
        'libc.so.6',
        readVersionNeeds(source)
          .get('libc.so.6')!
          .filter((v) => v.startsWith('GLIBC_2.')),
      ],
    ]),
  )!;
  const at = bytes.indexOf(Buffer.from(`GLIBC_${old}\0`, 'latin1'));
  expect(at).toBeGreaterThan(0);
  bytes.write('9', at + 'GLIBC_'.length, 'latin1');
  const patched = join(work, 'needs-glibc-9.node');
  writeFileSync(patched, bytes);
  const wanted = `9${old.slice(1)}`;
  expect(glibcNeeded(readVersionNeeds(patched))).toBe(wanted);

  let error: (Error & { code?: string }) | undefined;
  try {
    loadFirstAddon([patched]);
  } catch (err) {
    error = err as Error & { code?: string };
  }
  expect(error?.code).toBe('E_ADDON_LOAD');
  expect(error!.message).toContain(`GLIBC_${wanted}`);
  expect(error!.message).toContain(
    `this system has glibc ${glibcRuntime()}; this binary needs glibc ${wanted} or newer`,
  );
});

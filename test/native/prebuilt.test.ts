// The committed prebuilt addon is what users run: it must load here (no GPU, no compiler involved),
// be built from the current native sources, and carry the CUDA backend.
import { existsSync, writeFileSync, mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createRequire } from 'node:module';
import { describe, expect, it } from 'vitest';
import { LowbitError } from '../../src/errors.js';
import { loadAddonFrom, loadFirstAddon, native, packageRoot, prebuiltPath } from '../../src/native.js';
// @ts-expect-error: a plain .mjs script without type declarations
import { sourceHash } from '../../scripts/source-hash.mjs';

const root = packageRoot();
const require = createRequire(import.meta.url);

describe('prebuilt addon', () => {
  it('exists for linux-x64 and loads', () => {
    expect(existsSync(prebuiltPath(root))).toBe(true);
    const info = loadAddonFrom(prebuiltPath(root)).buildInfo();
    expect(info.buildSystem).toBe('cmake');
  });

  it('is built from the current native sources (run `npm run prebuild` when this fails)', () => {
    const info = loadAddonFrom(prebuiltPath(root)).buildInfo();
    expect(info.sourceHash, 'prebuilds/ is stale: rebuild it with `npm run prebuild`').toBe(sourceHash(root));
  });

  it('carries the CUDA backend and reports devices instead of failing without a GPU', () => {
    const addon = loadAddonFrom(prebuiltPath(root));
    expect(addon.buildInfo().cuda).toBe(true);
    const { devices, reason } = addon.cudaDevices();
    if (devices.length === 0) expect(reason.length).toBeGreaterThan(0);
    else for (const d of devices) expect(d.name.length).toBeGreaterThan(0);
  });

  it('is what node-gyp-build finds when there is no source build', () => {
    const nodeGypBuild = require('node-gyp-build') as { path(dir: string): string };
    if (existsSync(join(root, 'build', 'Release', 'lowbit.node'))) {
      expect(nodeGypBuild.path(root)).toBe(join(root, 'build', 'Release', 'lowbit.node'));
    } else {
      expect(nodeGypBuild.path(root)).toBe(prebuiltPath(root));
    }
  });
});

describe('loader', () => {
  it('lists every candidate and the fixes when nothing loads', () => {
    const dir = mkdtempSync(join(tmpdir(), 'lowbit-load-'));
    const bogus = join(dir, 'bogus.node');
    writeFileSync(bogus, 'not a shared object');
    let error: unknown;
    try {
      loadFirstAddon([join(dir, 'missing.node'), bogus]);
    } catch (err) {
      error = err;
    }
    expect(error).toBeInstanceOf(LowbitError);
    const e = error as LowbitError;
    expect(e.code).toBe('E_ADDON_LOAD');
    expect(e.message).toContain('missing.node: not found');
    expect(e.message).toContain('bogus.node:');
    expect(e.message).toContain('npm run build:native');
  });

  it('turns native errors into LowbitErrors with codes', () => {
    const addon = native();
    expect(() => addon.setThreads(-5)).toThrow(LowbitError);
    try {
      addon.packQweight(new Uint8Array(4), 2, 2, 5);
    } catch (err) {
      expect((err as LowbitError).code).toBe('E_BITS');
    }
    expect.assertions(2);
  });
});

/**
 * The symbol versions a Linux shared object needs (its ELF .gnu.version_r section), to tell which
 * glibc the native addon requires: the prebuilt's floor is checked by a test, by scripts/prebuild.mjs
 * after a build, and named in the load error when the system's glibc is older.
 *
 * ELF64 little-endian only (the one kind lowbit ships). Every offset read is checked against the file.
 */
import { readFileSync } from 'node:fs';
import { LowbitError } from './errors.js';

const SHT_GNU_VERNEED = 0x6ffffffe;

/** For each needed library (e.g. "libc.so.6"), the version names it must define ("GLIBC_2.17", ...). */
export type VersionNeeds = Map<string, string[]>;

export function readVersionNeeds(path: string): VersionNeeds {
  const bytes = readFileSync(path);
  const fail = (what: string): never => {
    throw new LowbitError('E_IO', `${path} is not a readable ELF64 little-endian shared object: ${what}`, {
      file: path,
    });
  };
  const at = (offset: number, size: number): number => {
    if (!Number.isSafeInteger(offset) || offset < 0 || offset + size > bytes.length)
      fail(`offset ${offset} + ${size} is past the end (${bytes.length} bytes)`);
    return offset;
  };
  if (bytes.length < 64 || bytes.readUInt32BE(0) !== 0x7f454c46) fail('no ELF magic');
  if (bytes[4] !== 2 || bytes[5] !== 1) fail('not 64-bit little-endian');
  const shoff = Number(bytes.readBigUInt64LE(0x28));
  const shentsize = bytes.readUInt16LE(0x3a);
  const shnum = bytes.readUInt16LE(0x3c);
  if (shentsize < 64) fail(`section header size ${shentsize}`);
  const section = (i: number) => {
    const base = at(shoff + i * shentsize, 64);
    return {
      type: bytes.readUInt32LE(base + 4),
      offset: Number(bytes.readBigUInt64LE(base + 0x18)),
      size: Number(bytes.readBigUInt64LE(base + 0x20)),
      link: bytes.readUInt32LE(base + 0x28),
      info: bytes.readUInt32LE(base + 0x2c),
    };
  };
  const needs: VersionNeeds = new Map();
  for (let i = 0; i < shnum; i++) {
    const verneed = section(i);
    if (verneed.type !== SHT_GNU_VERNEED) continue;
    if (verneed.link >= shnum) fail(`version section links to section ${verneed.link} of ${shnum}`);
    const strings = section(verneed.link);
    at(strings.offset, strings.size);
    const name = (offset: number): string => {
      if (offset >= strings.size) fail(`string offset ${offset} outside its table`);
      const end = bytes.indexOf(0, strings.offset + offset);
      if (end < 0 || end >= strings.offset + strings.size) fail('unterminated string');
      return bytes.toString('latin1', strings.offset + offset, end);
    };
    // Verneed entries (16 bytes), each with vn_cnt Vernaux entries (16 bytes), linked by relative offsets.
    let entry = verneed.offset;
    for (let n = 0; n < verneed.info; n++) {
      at(entry, 16);
      const count = bytes.readUInt16LE(entry + 2);
      const file = name(bytes.readUInt32LE(entry + 4));
      const versions: string[] = [];
      let aux = entry + bytes.readUInt32LE(entry + 8);
      for (let k = 0; k < count; k++) {
        at(aux, 16);
        versions.push(name(bytes.readUInt32LE(aux + 8)));
        const next = bytes.readUInt32LE(aux + 12);
        if (next === 0) break;
        aux += next;
      }
      needs.set(file, [...(needs.get(file) ?? []), ...versions]);
      const next = bytes.readUInt32LE(entry + 12);
      if (next === 0) break;
      entry += next;
    }
  }
  return needs;
}

/** Orders "2.17" < "2.28" < "2.3" correctly (numerically by component). */
export function compareVersions(a: string, b: string): number {
  const x = a.split('.').map(Number);
  const y = b.split('.').map(Number);
  for (let i = 0; i < Math.max(x.length, y.length); i++) {
    const d = (x[i] ?? 0) - (y[i] ?? 0);
    if (d !== 0) return d;
  }
  return 0;
}

/** The newest GLIBC_x.y any library of the object needs ("2.31"), or undefined when none. */
export function glibcNeeded(needs: VersionNeeds): string | undefined {
  let newest: string | undefined;
  for (const versions of needs.values()) {
    for (const v of versions) {
      const m = /^GLIBC_(\d+(?:\.\d+)+)$/.exec(v);
      if (m && (newest === undefined || compareVersions(m[1]!, newest) > 0)) newest = m[1];
    }
  }
  return newest;
}

/** The glibc this process runs on ("2.36"), or undefined on another C library. */
export function glibcRuntime(): string | undefined {
  const header = (process.report?.getReport() as { header?: { glibcVersionRuntime?: string } } | undefined)?.header;
  return header?.glibcVersionRuntime;
}

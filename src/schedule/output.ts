/**
 * Ownership of an output directory while a run writes it:
 * - a lock file beside it (`.<out>.lowbit-lock`, holding the owner's pid, host and a token), taken
 *   atomically (a complete file hard-linked into place), refused while its owner lives, taken over
 *   (with a warning) when the owner is a dead process of this machine;
 * - the leftovers of dead runs beside it (`.<out>.tmp-<pid>-<rand>` directories and files whose pid
 *   no longer runs) removed, with a warning each.
 * Nothing that lowbit did not name this way is ever removed.
 */
import { randomBytes } from 'node:crypto';
import { hostname } from 'node:os';
import { link, readFile, rename } from 'node:fs/promises';
import { basename, dirname, join } from 'node:path';
import { LowbitError } from '../errors.js';
import {
  createFile,
  faultPoint,
  ioError,
  listDir,
  mkdirDurable,
  processAlive,
  removeFile,
  removeTree,
  syncClose,
  syncDir,
  tempOwner,
  tempPath,
  writeAll,
} from '../formats/durable.js';

export type Warn = (message: string, path: string) => void;

interface LockRecord {
  pid: number;
  host: string;
  token: string;
  started: string;
}

export function lockPath(out: string): string {
  return join(dirname(out), `.${basename(out)}.lowbit-lock`);
}

export interface OutputLock {
  readonly path: string;
  release(): Promise<void>;
}

async function readLock(path: string): Promise<LockRecord | undefined | 'unreadable'> {
  let text: string;
  try {
    text = await readFile(path, 'utf8');
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
    throw ioError('read', path, err);
  }
  try {
    const r = JSON.parse(text) as LockRecord;
    return Number.isInteger(r.pid) && typeof r.host === 'string' && typeof r.token === 'string' ? r : 'unreadable';
  } catch {
    return 'unreadable';
  }
}

/** Takes the lock on `out` (an absolute path), or throws E_LOCKED naming the live owner. */
export async function lockOutput(out: string, warn: Warn): Promise<OutputLock> {
  const path = lockPath(out);
  await mkdirDurable(dirname(out));
  const mine: LockRecord = {
    pid: process.pid,
    host: hostname(),
    token: randomBytes(8).toString('hex'),
    started: new Date().toISOString(),
  };
  for (let attempt = 0; attempt < 5; attempt++) {
    // A complete lock file is linked into place: link fails if one exists, and never shows a half-written lock.
    const tmp = tempPath(path);
    const h = await createFile(tmp);
    try {
      await writeAll(h, tmp, new TextEncoder().encode(JSON.stringify(mine)), 0);
    } finally {
      await syncClose(h, tmp);
    }
    let taken = false;
    try {
      faultPoint('link', path);
      await link(tmp, path);
      taken = true;
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw ioError('create the lock', path, err);
    } finally {
      await removeFile(tmp);
    }
    if (taken) {
      await syncDir(dirname(path));
      return { path, release: () => releaseLock(path, mine.token) };
    }
    const owner = await readLock(path);
    if (owner === undefined) continue; // released meanwhile
    if (owner !== 'unreadable' && (owner.host !== mine.host || processAlive(owner.pid))) {
      throw new LowbitError(
        'E_LOCKED',
        `${out} is being written by another lowbit run (pid ${owner.pid} on ${owner.host}, since ${owner.started}); ` +
          `wait for it, or remove ${path} if no such run exists`,
        { file: out, pid: owner.pid },
      );
    }
    // The owner is dead: move its lock aside (only one contender can), check it is still the same, drop it.
    const aside = tempPath(path);
    try {
      faultPoint('rename', aside);
      await rename(path, aside);
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') continue;
      throw ioError('take over the lock', path, err);
    }
    const moved = await readLock(aside);
    if (owner !== 'unreadable' && (moved === 'unreadable' || moved?.token !== owner.token)) {
      // Someone else replaced it meanwhile: put theirs back and try again.
      await link(aside, path).catch(() => undefined);
      await removeFile(aside);
      continue;
    }
    await removeFile(aside);
    warn(
      owner === 'unreadable'
        ? `removed an unreadable lock file ${path}`
        : `took over the lock of a stopped run (pid ${owner.pid}) on ${out}`,
      path,
    );
  }
  throw new LowbitError(
    'E_LOCKED',
    `cannot take the lock ${path}: it keeps changing (several runs starting at once on ${out}?)`,
    { file: out },
  );
}

async function releaseLock(path: string, token: string): Promise<void> {
  const owner = await readLock(path).catch(() => undefined);
  if (owner && owner !== 'unreadable' && owner.token === token) await removeFile(path);
}

/**
 * Removes the temporary files and directories dead runs left beside `out` (`.<out>.tmp-<pid>-*`,
 * `..<out>.lowbit-lock.tmp-<pid>-*`, `..<out>.lowbit-resume.tmp-<pid>-*`) and, inside `dirs`, any
 * temporary file of a dead process.
 */
export async function removeOrphans(out: string, warn: Warn, dirs: string[] = []): Promise<void> {
  const parent = dirname(out);
  const names = [basename(out), basename(lockPath(out)), `.${basename(out)}.lowbit-resume`];
  for (const dir of [parent, ...dirs]) {
    for (const name of await listDir(dir)) {
      const pid =
        dir === parent ? names.map((n) => tempOwner(name, n)).find((p) => p !== undefined) : tempOwnerAny(name);
      if (pid === undefined || pid === process.pid || processAlive(pid)) continue;
      const path = join(dir, name);
      await removeTree(path);
      warn(`removed ${path}, left by a stopped run (pid ${pid})`, path);
    }
  }
}

/** The pid of any `.<name>.tmp-<pid>-<rand>` temporary name. */
function tempOwnerAny(name: string): number | undefined {
  const m = /^\..+\.tmp-(\d+)-[a-z0-9]+$/.exec(name);
  return m ? Number(m[1]) : undefined;
}

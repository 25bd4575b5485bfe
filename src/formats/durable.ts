/**
 * Durable, typed file-system steps for everything lowbit writes: files go to a temporary name, are
 * fsynced, renamed into place and their directory fsynced, so that after a crash or a power loss a
 * final name holds either nothing or the complete file. Every failure is a LowbitError (E_IO) that
 * names the path and the system's reason (ENOTDIR, EACCES, EPERM, ENOSPC...).
 *
 * Each step (write, fsync, rename, unlink, mkdir...) also passes through `faultPoint`, a test hook:
 * with LOWBIT_FAULT_AT=n the process kills itself (SIGKILL) just before its n-th step, the way a
 * `kill -9` or a power cut would stop it; LOWBIT_FAULT_TRACE=<file> appends one line per step.
 * test/schedule/crash.test.ts uses it to kill a quantization at every step and resume it.
 */
import { appendFileSync } from 'node:fs';
import { copyFile, mkdir, open, readdir, rename, rm, rmdir, unlink, type FileHandle } from 'node:fs/promises';
import { basename, dirname, join } from 'node:path';
import { LowbitError } from '../errors.js';

const FAULT_AT = Number(process.env.LOWBIT_FAULT_AT ?? 0);
const FAULT_TRACE = process.env.LOWBIT_FAULT_TRACE;
let steps = 0;

/** Counts one file-system step; the test hook may kill the process here. */
export function faultPoint(kind: string, path: string): void {
  steps++;
  if (FAULT_TRACE) appendFileSync(FAULT_TRACE, `${steps} ${kind} ${path}\n`);
  if (steps === FAULT_AT) process.kill(process.pid, 'SIGKILL');
}

/** A LowbitError for a failed file-system call, naming the path and the system's code. */
export function ioError(action: string, path: string, err: unknown): LowbitError {
  if (err instanceof LowbitError) return err;
  const code = (err as NodeJS.ErrnoException | undefined)?.code;
  const reason =
    code === 'EACCES' || code === 'EPERM'
      ? 'permission denied'
      : code === 'ENOTDIR' || code === 'EEXIST'
        ? 'the path or one of its parents exists and is not a directory'
        : (err as Error).message;
  return new LowbitError(
    'E_IO',
    `cannot ${action} ${path}: ${reason}${code ? ` (${code})` : ''}`,
    { file: path, ...(code ? { errno: code } : {}) },
    { cause: err },
  );
}

async function io<T>(kind: string, action: string, path: string, fn: () => Promise<T>): Promise<T> {
  faultPoint(kind, path);
  try {
    return await fn();
  } catch (err) {
    throw ioError(action, path, err);
  }
}

/** A temporary name beside `path`, unique to this process and call: `.<name>.tmp-<pid>-<random>`. */
export function tempPath(path: string): string {
  return join(dirname(path), `.${basename(path)}.tmp-${process.pid}-${Math.random().toString(36).slice(2, 10)}`);
}

/** The pid in a temporary name made by tempPath (for cleaning up after dead processes), else undefined. */
export function tempOwner(name: string, of: string): number | undefined {
  const prefix = `.${of}.tmp-`;
  if (!name.startsWith(prefix)) return undefined;
  const m = /^(\d+)-[a-z0-9]+$/.exec(name.slice(prefix.length));
  return m ? Number(m[1]) : undefined;
}

/** Whether a process with this pid is alive on this machine (EPERM: alive, owned by someone else). */
export function processAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'EPERM';
  }
}

/** fsyncs a directory, so the names created, renamed or removed in it survive a power loss. */
export async function syncDir(dir: string): Promise<void> {
  await io('fsync-dir', 'sync directory', dir, async () => {
    const h = await open(dir, 'r');
    try {
      await h.sync();
    } finally {
      await h.close();
    }
  });
}

/** Creates `dir` (and missing parents) and makes its name durable. */
export async function mkdirDurable(dir: string): Promise<void> {
  const made = await io('mkdir', 'create directory', dir, () => mkdir(dir, { recursive: true }));
  if (made !== undefined) await syncDir(dirname(made));
}

/** Opens a new file for writing (never an existing one). */
export async function createFile(path: string): Promise<FileHandle> {
  return io('create', 'create', path, () => open(path, 'wx'));
}

/** Writes all of `bytes` at `position`. */
export async function writeAll(handle: FileHandle, path: string, bytes: Uint8Array, position: number): Promise<void> {
  await io('write', 'write', path, async () => {
    let done = 0;
    while (done < bytes.byteLength) {
      const { bytesWritten } = await handle.write(
        bytes,
        done,
        Math.min(bytes.byteLength - done, 1 << 30),
        position + done,
      );
      done += bytesWritten;
    }
  });
}

/** fsyncs and closes a file. */
export async function syncClose(handle: FileHandle, path: string): Promise<void> {
  try {
    await io('fsync', 'sync', path, () => handle.sync());
  } finally {
    await handle.close().catch(() => undefined);
  }
}

/** Renames `from` to `to` and fsyncs the directories involved. */
export async function renameDurable(from: string, to: string): Promise<void> {
  await io('rename', `rename ${from} to`, to, () => rename(from, to));
  await syncDir(dirname(to));
  if (dirname(from) !== dirname(to)) await syncDir(dirname(from));
}

/** Writes `data` to `path` durably: temporary name, fsync, rename, fsync of the directory. */
export async function writeFileAtomic(path: string, data: string | Uint8Array | Uint8Array[]): Promise<void> {
  const tmp = tempPath(path);
  // (parts are written one after another: a file larger than one typed array can be)
  const parts = typeof data === 'string' ? [new TextEncoder().encode(data)] : Array.isArray(data) ? data : [data];
  try {
    const h = await createFile(tmp);
    try {
      let at = 0;
      for (const part of parts) {
        await writeAll(h, tmp, part, at);
        at += part.byteLength;
      }
    } finally {
      await syncClose(h, tmp);
    }
    await renameDurable(tmp, path);
  } catch (err) {
    await rm(tmp, { force: true }).catch(() => undefined);
    throw ioError('write', path, err);
  }
}

/** Copies a file durably (through a temporary name). */
export async function copyFileAtomic(from: string, to: string): Promise<void> {
  const tmp = tempPath(to);
  try {
    await io('copy', `copy ${from} to`, tmp, () => copyFile(from, tmp));
    const h = await io('open', 'open', tmp, () => open(tmp, 'r+'));
    await syncClose(h, tmp);
    await renameDurable(tmp, to);
  } catch (err) {
    await rm(tmp, { force: true }).catch(() => undefined);
    throw ioError('copy to', to, err);
  }
}

/** Removes a file if it exists. */
export async function removeFile(path: string): Promise<void> {
  await io('unlink', 'remove', path, () =>
    unlink(path).catch((err: NodeJS.ErrnoException) => (err.code === 'ENOENT' ? undefined : Promise.reject(err))),
  );
}

/** Removes a directory tree lowbit created (never called on a user's directory). */
export async function removeTree(path: string): Promise<void> {
  await io('rm', 'remove', path, () => rm(path, { recursive: true, force: true }));
}

/** Removes an empty directory (fails on a non-empty one: it holds something lowbit did not put there). */
export async function removeEmptyDir(path: string): Promise<void> {
  await io('rmdir', 'remove', path, () => rmdir(path));
}

/** Names in a directory ([] when it does not exist). */
export async function listDir(dir: string): Promise<string[]> {
  try {
    return await readdir(dir);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return [];
    throw ioError('list', dir, err);
  }
}

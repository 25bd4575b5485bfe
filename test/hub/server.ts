/**
 * A Hugging Face Hub on 127.0.0.1 for tests: one server answers the Hub's API and resolve URLs, a
 * second one (another origin) plays the LFS storage that large files redirect to. Headers as the Hub
 * sends them: X-Repo-Commit, ETag (git blob sha1) for small files, and for LFS files a 302 with
 * Location, X-Linked-Etag (sha256) and X-Linked-Size. Storage honours Range (206 + Content-Range).
 */
import { createHash } from 'node:crypto';
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';

export interface FakeRepo {
  commit: string;
  files: Map<string, Buffer>;
  /** files stored in LFS (redirected to storage, sha256 ETag) */
  lfs: Set<string>;
  /** when set, requests need `Authorization: Bearer <token>` */
  token?: string;
}

export interface RequestLog {
  server: 'hub' | 'storage';
  method: string;
  url: string;
  range?: string;
  authorization?: string;
}

export interface FakeHub {
  endpoint: string;
  requests: RequestLog[];
  repos: Map<string, FakeRepo>;
  /** the next storage response for this sha256 sends only this many bytes, then drops the connection */
  cutNext: Map<string, number>;
  /** storage serves these bytes instead of the real ones (a corrupted transfer) */
  corrupt: Map<string, Buffer>;
  close(): Promise<void>;
}

export const sha256 = (b: Buffer) => createHash('sha256').update(b).digest('hex');
export const gitSha1 = (b: Buffer) => createHash('sha1').update(`blob ${b.length}\0`).update(b).digest('hex');

function listen(server: Server): Promise<string> {
  return new Promise((resolve) =>
    server.listen(0, '127.0.0.1', () => resolve(`http://127.0.0.1:${(server.address() as AddressInfo).port}`)),
  );
}

export async function startFakeHub(): Promise<FakeHub> {
  const requests: RequestLog[] = [];
  const repos = new Map<string, FakeRepo>();
  const cutNext = new Map<string, number>();
  const corrupt = new Map<string, Buffer>();
  const blobs = new Map<string, Buffer>();
  const log = (server: 'hub' | 'storage', req: IncomingMessage) =>
    requests.push({
      server,
      method: req.method!,
      url: req.url!,
      range: req.headers.range,
      authorization: req.headers.authorization,
    });

  const storage = createServer((req: IncomingMessage, res: ServerResponse) => {
    log('storage', req);
    const hash = /^\/lfs\/([0-9a-f]{64})$/.exec(req.url!.split('?')[0]!)?.[1];
    const blob = hash && blobs.get(hash);
    if (!blob) return res.writeHead(404).end();
    const body = corrupt.get(hash!) ?? blob;
    const m = /^bytes=(\d+)-$/.exec(req.headers.range ?? '');
    const start = m ? Number(m[1]) : 0;
    if (start >= body.length && m) return res.writeHead(416, { 'content-range': `bytes */${body.length}` }).end();
    const part = body.subarray(start);
    res.writeHead(m ? 206 : 200, {
      'content-length': part.length,
      'accept-ranges': 'bytes',
      ...(m ? { 'content-range': `bytes ${start}-${body.length - 1}/${body.length}` } : {}),
    });
    const cut = cutNext.get(hash!);
    if (cut !== undefined) {
      cutNext.delete(hash!);
      res.write(part.subarray(0, cut), () => res.socket?.destroy());
      return;
    }
    res.end(part);
  });
  const storageUrl = await listen(storage);

  const hub = createServer((req: IncomingMessage, res: ServerResponse) => {
    log('hub', req);
    const url = decodeURIComponent(req.url!.split('?')[0]!);
    const api = /^\/api\/models\/([^/]+\/[^/]+)\/revision\/(.+)$/.exec(url);
    const resolve = /^\/([^/]+\/[^/]+)\/resolve\/([^/]+)\/(.+)$/.exec(url);
    const repoName = api?.[1] ?? resolve?.[1];
    const repo = repoName ? repos.get(repoName) : undefined;
    if (repo?.token !== undefined && req.headers.authorization !== `Bearer ${repo.token}`) {
      return res
        .writeHead(401, { 'x-error-code': 'GatedRepo', 'content-type': 'application/json' })
        .end(JSON.stringify({ error: 'Access to this model is restricted' }));
    }
    if (!repo) return res.writeHead(404, { 'x-error-code': 'RepoNotFound' }).end();
    const revision = api?.[2] ?? resolve![2]!;
    if (revision !== 'main' && revision !== repo.commit)
      return res.writeHead(404, { 'x-error-code': 'RevisionNotFound' }).end();
    if (api) {
      res.writeHead(200, { 'content-type': 'application/json' });
      return res.end(
        JSON.stringify({
          id: repoName,
          sha: repo.commit,
          siblings: [...repo.files.keys()].map((rfilename) => ({ rfilename })),
        }),
      );
    }
    const file = resolve![3]!;
    const content = repo.files.get(file);
    if (!content) return res.writeHead(404, { 'x-error-code': 'EntryNotFound', 'x-repo-commit': repo.commit }).end();
    if (repo.lfs.has(file)) {
      const hash = sha256(content);
      blobs.set(hash, content);
      return res
        .writeHead(302, {
          location: `${storageUrl}/lfs/${hash}?signed=1`,
          'x-repo-commit': repo.commit,
          'x-linked-etag': `"${hash}"`,
          'x-linked-size': String(content.length),
          etag: `"${gitSha1(Buffer.from(`pointer ${hash}`))}"`,
        })
        .end();
    }
    res.writeHead(200, {
      'content-length': content.length,
      etag: `"${gitSha1(content)}"`,
      'x-repo-commit': repo.commit,
    });
    res.end(req.method === 'HEAD' ? undefined : content);
  });
  const endpoint = await listen(hub);

  return {
    endpoint,
    requests,
    repos,
    cutNext,
    corrupt,
    close: () =>
      Promise.all([
        new Promise<void>((r) => hub.close(() => r())),
        new Promise<void>((r) => storage.close(() => r())),
      ]).then(() => undefined),
  };
}

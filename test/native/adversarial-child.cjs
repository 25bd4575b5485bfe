// Child process of test/native/adversarial.test.ts: adversarial calls that crashed (or silently
// corrupted) the whole process before issue 8's fixes, so they run here, away from the test runner.
// Usage: node --expose-gc adversarial-child.cjs <addon path> <scenario>
// Prints one JSON line per case: { case, outcome: 'same' | 'differs' | 'rejected', code?, detail? }
// and exits 0 if it survived. 'same': the call resolved with the result of an undisturbed call.
'use strict';
const addon = require(process.argv[2]);
const scenario = process.argv[3];

/** Moves a typed array's memory to a new ArrayBuffer and drops that, then collects and reuses the heap. */
function steal(array) {
  structuredClone(array.buffer, { transfer: [array.buffer] });
  churn();
}
let junk = [];
function churn() {
  global.gc();
  junk = [];
  for (let i = 0; i < 6; i++) junk.push(new Float32Array(1 << 21).fill(-1e30)); // reuse freed memory
}

let seed = 12345;
function random() {
  seed = (seed * 1103515245 + 12345) >>> 0;
  return seed / 2 ** 32;
}
function floats(n, scale = 1) {
  const a = new Float32Array(n);
  for (let i = 0; i < n; i++) a[i] = (random() * 2 - 1) * scale;
  return a;
}
function ints(n, max) {
  const a = new Int32Array(n);
  for (let i = 0; i < n; i++) a[i] = Math.floor(random() * max);
  return a;
}
function bytesEqual(a, b) {
  if (a.byteLength !== b.byteLength) return false;
  const x = new Uint8Array(a.buffer, a.byteOffset, a.byteLength),
    y = new Uint8Array(b.buffer, b.byteOffset, b.byteLength);
  for (let i = 0; i < x.length; i++) if (x[i] !== y[i]) return false;
  return true;
}

function report(name, outcome, extra = {}) {
  process.stdout.write(JSON.stringify({ case: name, outcome, ...extra }) + '\n');
}

/** Runs `call` (returns a promise) with `disturb` run right after it returns; compares with `expected`. */
async function check(name, call, disturb, same) {
  let result;
  try {
    const p = call();
    disturb();
    result = await p;
  } catch (err) {
    report(name, 'rejected', { code: err.code, detail: String(err.message).slice(0, 200) });
    return;
  }
  report(name, same(result) ? 'same' : 'differs');
}

// A 4-bit packed [N, K] weight, large enough that the product runs for a while.
function packedWeight(N, K) {
  const groupSize = 128,
    groups = K / groupSize;
  return {
    bits: 4,
    K,
    N,
    groupSize,
    groups,
    zeroOffset: 1,
    qweight: ints((K / 8) * N, 2 ** 31),
    qzeros: ints((groups * N) / 8, 2 ** 31),
    scales: new Uint16Array(groups * N).map(() => 0x2000 + Math.floor(random() * 0x1000)),
  };
}
function copyW(W) {
  return { ...W, qweight: W.qweight.slice(), qzeros: W.qzeros.slice(), scales: W.scales.slice() };
}

const scenarios = {
  async packedGemm() {
    const M = 48,
      N = 2048,
      K = 4096;
    const W = packedWeight(N, K),
      x = floats(M * K);
    const ref = new Float32Array(M * N);
    await addon.packedGemm(x, M, W, ref);
    const same = (y) => () => bytesEqual(y, ref);
    let x2 = x.slice(),
      y = new Float32Array(M * N);
    await check(
      'packedGemm: x transferred',
      () => addon.packedGemm(x2, M, W, y),
      () => steal(x2),
      same(y),
    );
    let W2 = copyW(W);
    y = new Float32Array(M * N);
    await check(
      'packedGemm: W.qweight transferred',
      () => addon.packedGemm(x, M, W2, y),
      () => steal(W2.qweight),
      same(y),
    );
    W2 = copyW(W);
    y = new Float32Array(M * N);
    await check(
      'packedGemm: W.scales transferred',
      () => addon.packedGemm(x, M, W2, y),
      () => steal(W2.scales),
      same(y),
    );
    y = new Float32Array(M * N);
    await check(
      'packedGemm: out transferred',
      () => addon.packedGemm(x, M, W, y),
      () => steal(y),
      () => false,
    );
    // Item 2: a getter returning a fresh array on every read (the old binding took the pointer from
    // one read and kept the other alive).
    const fresh = { ...W };
    Object.defineProperty(fresh, 'qweight', { get: () => W.qweight.slice(), enumerable: true });
    y = new Float32Array(M * N);
    await check(
      'packedGemm: qweight getter returns a fresh array',
      () => addon.packedGemm(x, M, fresh, y),
      churn,
      same(y),
    );
    // A getter that transfers another field's buffer after it was read (sync and async).
    for (const sync of [true, false]) {
      const W3 = copyW(W);
      const sneaky = { ...W3 };
      Object.defineProperty(sneaky, 'scales', { get: () => (steal(W3.qweight), W3.scales), enumerable: true });
      y = new Float32Array(M * N);
      const name = `packedGemm${sync ? 'Sync' : ''}: the scales getter transfers qweight`;
      await check(
        name,
        () =>
          sync
            ? Promise.resolve().then(() => addon.packedGemmSync(x, M, sneaky, y))
            : addon.packedGemm(x, M, sneaky, y),
        () => {},
        same(y),
      );
    }
  },

  async denseGemm() {
    const M = 32,
      N = 1024,
      K = 2048;
    const x = floats(M * K),
      W = floats(N * K);
    const ref = new Float32Array(M * N);
    await addon.denseGemm(x, M, W, N, K, ref);
    let W2 = W.slice(),
      y = new Float32Array(M * N);
    await check(
      'denseGemm: W transferred',
      () => addon.denseGemm(x, M, W2, N, K, y),
      () => steal(W2),
      () => bytesEqual(y, ref),
    );
    y = new Float32Array(M * N);
    await check(
      'denseGemm: Y transferred',
      () => addon.denseGemm(x, M, W, N, K, y),
      () => steal(y),
      () => false,
    );
  },

  async rtnQuantize() {
    const N = 1024,
      K = 4096;
    const W = floats(N * K);
    const opts = { bits: 4, groupSize: 128, packZeroOffset: 1 };
    const ref = await addon.rtnQuantize(W, N, K, opts);
    const W2 = W.slice();
    await check(
      'rtnQuantize: W transferred',
      () => addon.rtnQuantize(W2, N, K, opts),
      () => steal(W2),
      (r) => bytesEqual(r.qweight, ref.qweight) && bytesEqual(r.scales, ref.scales),
    );
  },

  async gptq() {
    const N = 256,
      K = 1024,
      rows = 2048;
    const X = floats(rows * K);
    const h = addon.hessianCreate(K);
    await addon.hessianAddBatch(h, X, rows);
    const H = addon.hessianRead(h);
    const h2 = addon.hessianCreate(K);
    const X2 = X.slice();
    await check(
      'hessianAddBatch: X transferred',
      () => addon.hessianAddBatch(h2, X2, rows),
      () => steal(X2),
      () => bytesEqual(addon.hessianRead(h2), H),
    );
    const W = floats(N * K);
    const opts = { bits: 4, groupSize: 128, actOrder: true };
    const ref = await addon.gptqQuantize(W, N, K, H, opts);
    const W2 = W.slice();
    await check(
      'gptqQuantize: W transferred',
      () => addon.gptqQuantize(W2, N, K, H, opts),
      () => steal(W2),
      (r) => bytesEqual(r.qweight, ref.qweight),
    );
    const H2 = H.slice();
    await check(
      'gptqQuantize: H transferred',
      () => addon.gptqQuantize(W, N, K, H2, opts),
      () => steal(H2),
      (r) => bytesEqual(r.qweight, ref.qweight),
    );
  },

  async model() {
    const c = {
      dim: 512,
      hidden: 1024,
      layers: 2,
      heads: 8,
      kvHeads: 4,
      headDim: 64,
      vocab: 2000,
      maxSeq: 64,
      normEps: 1e-5,
      tieEmbeddings: false,
    };
    c.invFreq = new Float32Array(c.headDim / 2).map((_, i) => 1 / 10000 ** ((2 * i) / c.headDim));
    const dims = {
      q: [c.heads * c.headDim, c.dim],
      k: [c.kvHeads * c.headDim, c.dim],
      v: [c.kvHeads * c.headDim, c.dim],
      o: [c.dim, c.heads * c.headDim],
      gate: [c.hidden, c.dim],
      up: [c.hidden, c.dim],
      down: [c.dim, c.hidden],
    };
    const globals = {
      embed: { dtype: 'f32', data: floats(c.vocab * c.dim) },
      finalNorm: floats(c.dim, 1).map((v) => 1 + 0.1 * v),
      head: { dtype: 'f32', data: floats(c.vocab * c.dim, 0.05) },
    };
    const blocks = [];
    for (let b = 0; b < c.layers; b++) {
      const w = { attnNorm: floats(c.dim).map((v) => 1 + 0.1 * v), mlpNorm: floats(c.dim).map((v) => 1 + 0.1 * v) };
      for (const [name, [N, K]] of Object.entries(dims))
        w[name] = { dtype: 'f32', data: floats(N * K, 1 / Math.sqrt(K)) };
      blocks.push(w);
    }
    const copyBlock = (w) =>
      Object.fromEntries(
        Object.entries(w).map(([k, v]) => [k, v instanceof Float32Array ? v.slice() : { ...v, data: v.data.slice() }]),
      );
    const a = new addon.NativeModel(c, -1);
    await a.setGlobals(globals);
    for (let b = 0; b < c.layers; b++) await a.setBlock(b, blocks[b]);
    const seq = 48,
      ids = ints(seq, c.vocab);
    const ref = new Float32Array(seq * c.vocab);
    await a.logits(ids, 1, seq, ref);

    const b2 = new addon.NativeModel(c, -1);
    await b2.setGlobals(globals);
    const weights = blocks.map(copyBlock);
    const calls = weights.map((w, b) => b2.setBlock(b, w));
    for (const w of weights) for (const name of Object.keys(dims)) steal(w[name].data);
    await Promise.all(calls);
    let out = new Float32Array(seq * c.vocab);
    await check(
      'NativeModel.setBlock: weights transferred',
      () => b2.logits(ids, 1, seq, out),
      () => {},
      () => bytesEqual(out, ref),
    );
    const ids2 = ids.slice();
    out = new Float32Array(seq * c.vocab);
    await check(
      'NativeModel.logits: ids transferred',
      () => a.logits(ids2, 1, seq, out),
      () => steal(ids2),
      () => bytesEqual(out, ref),
    );
    out = new Float32Array(seq * c.vocab);
    await check(
      'NativeModel.logits: out transferred',
      () => a.logits(ids, 1, seq, out),
      () => steal(out),
      () => false,
    );
    const nll = new Float32Array(seq - 1);
    await check(
      'NativeModel.nll: out transferred',
      () => a.nll(ids, 1, seq, nll),
      () => steal(nll),
      () => false,
    );
    let hidden = new Float32Array(seq * c.dim);
    await a.embed(ids, hidden);
    const hiddenRef = hidden.slice();
    await a.runBlock(0, hiddenRef, 1, seq);
    hidden = hidden.slice();
    await check(
      'NativeModel.runBlock: hidden (in place) transferred',
      () => a.runBlock(0, hidden, 1, seq),
      () => steal(hidden),
      () => false,
    );
    const embedOut = new Float32Array(seq * c.dim);
    await check(
      'NativeModel.embed: out transferred',
      () => a.embed(ids, embedOut),
      () => steal(embedOut),
      () => false,
    );
    const headIn = hiddenRef.slice(),
      headOut = new Float32Array(seq * c.vocab),
      headRef = new Float32Array(seq * c.vocab);
    await a.head(hiddenRef, seq, headRef);
    await check(
      'NativeModel.head: hidden transferred',
      () => a.head(headIn, seq, headOut),
      () => steal(headIn),
      () => bytesEqual(headOut, headRef),
    );
    const s = await a.createSequence(seq);
    const last = new Float32Array(c.vocab);
    const ids3 = ids.slice();
    await check(
      'NativeModel.decode: ids transferred',
      () => a.decode(s, ids3, last),
      () => steal(ids3),
      () => bytesEqual(last, ref.subarray((seq - 1) * c.vocab)),
    );
    const s2 = await a.createSequence(seq);
    const last2 = new Float32Array(c.vocab);
    await check(
      'NativeModel.decode: out transferred',
      () => a.decode(s2, ids, last2),
      () => steal(last2),
      () => false,
    );
    a.close();
    b2.close();
  },

  async spqr() {
    const N = 256,
      K = 512,
      rows = 1024;
    const h = addon.hessianCreate(K);
    await addon.hessianAddBatch(h, floats(rows * K), rows);
    const H = addon.hessianRead(h);
    const W = floats(N * K);
    const opts = { bits: 3, beta1: 16, beta2: 16, outlierThreshold: 0.2 };
    const ref = await addon.spqrQuantize(W, N, K, H, opts);
    const W2 = W.slice();
    await check(
      'spqrQuantize: W transferred',
      () => addon.spqrQuantize(W2, N, K, H, opts),
      () => steal(W2),
      (r) => bytesEqual(r.qweight, ref.qweight),
    );
    const dense = addon.spqrDequantize(ref);
    for (const field of ['qweight', 'scaleStats', 'outlierCols']) {
      const w = { ...ref };
      for (const k of Object.keys(ref)) if (ArrayBuffer.isView(ref[k])) w[k] = ref[k].slice();
      const sneaky = { ...w };
      Object.defineProperty(sneaky, 'outlierValues', {
        get: () => (steal(w[field]), w.outlierValues),
        enumerable: true,
      });
      await check(
        `spqrDequantize: the outlierValues getter transfers ${field}`,
        () => Promise.resolve().then(() => addon.spqrDequantize(sneaky)),
        () => {},
        (r) => bytesEqual(r, dense),
      );
    }
  },

  // Issue 8 item 10: setThreads while work runs on the pool it replaces.
  async setThreads() {
    const M = 16,
      N = 1024,
      K = 2048;
    const W = packedWeight(N, K),
      x = floats(M * K);
    const ref = new Float32Array(M * N);
    await addon.packedGemm(x, M, W, ref);
    const Wf = floats(512 * 2048);
    const rtnRef = await addon.rtnQuantize(Wf, 512, 2048, { bits: 3, groupSize: 64, packZeroOffset: 0 });
    let differs = 0,
      flips = 0;
    const jobs = [];
    for (let i = 0; i < 24; i++) {
      addon.setThreads(1 + (flips++ % 4)); // (while the jobs queued so far run)
      const y = new Float32Array(M * N);
      jobs.push(
        addon.packedGemm(x, M, W, y).then(() => {
          if (!bytesEqual(y, ref)) differs++;
        }),
      );
      jobs.push(
        addon.rtnQuantize(Wf, 512, 2048, { bits: 3, groupSize: 64, packZeroOffset: 0 }).then((r) => {
          if (!bytesEqual(r.qweight, rtnRef.qweight)) differs++;
        }),
      );
    }
    let done = false;
    Promise.all(jobs).then(() => (done = true));
    while (!done) {
      for (let k = 0; k < 5; k++) addon.setThreads(1 + (flips++ % 4));
      await new Promise((r) => setImmediate(r));
    }
    addon.setThreads(0);
    report('setThreads during work', differs === 0 ? 'same' : 'differs', { detail: `${flips} pool replacements` });
  },
};

scenarios[scenario]().then(
  () => process.exit(0),
  (err) => {
    process.stderr.write(`scenario ${scenario} threw: ${err && err.stack}\n`);
    process.exit(3);
  },
);

/** Shared helpers of the stories260K tests (real weights and text from ../shared/data). */
import { readFileSync } from 'node:fs';
import { createHash } from 'node:crypto';
import type { Model } from '../../src/model/model.js';
import { LINEAR_NAMES } from '../../src/formats/hf.js';
import type { RefModel } from './reference.js';

export function sha256OfIds(ids: Int32Array): string {
  return createHash('sha256')
    .update(new Uint8Array(ids.buffer, ids.byteOffset, ids.byteLength))
    .digest('hex');
}

/** The "Forward-pass check" table of REFERENCE.md: rows of [position, input id, logits of ids 0..4]. */
export function referenceLogitsTable(referenceMd: string): { pos: number; id: number; logits: number[] }[] {
  const section = referenceMd.slice(referenceMd.indexOf('## Forward-pass check'));
  const rows: { pos: number; id: number; logits: number[] }[] = [];
  for (const line of section.split('\n')) {
    const cells = line
      .split('|')
      .map((c) => c.trim())
      .filter((c) => c !== '');
    if (cells.length === 7 && /^\d+$/.test(cells[0]!))
      rows.push({ pos: Number(cells[0]), id: Number(cells[1]), logits: cells.slice(2).map(Number) });
    if (rows.length > 0 && line.startsWith('Tolerance')) break;
  }
  return rows;
}

/** The float64 reference's view of an open model's checkpoint (all weights as f32 values). */
export async function refModelOf(model: Model): Promise<RefModel> {
  const reader = model.reader!;
  const t = reader.tensors;
  const f32 = async (name: string) => (await reader.readFloat32(name)).data;
  const nc = model.nativeConfig;
  const blocks: RefModel['blocks'] = [];
  for (const b of t.blocks) {
    const weights = {} as RefModel['blocks'][number]['weights'];
    for (const n of LINEAR_NAMES) weights[n] = await f32(b[n].weight!);
    blocks.push({
      attnNorm: await f32(b.inputLayernorm),
      mlpNorm: await f32(b.postAttentionLayernorm),
      weights,
      biases: {},
    });
  }
  const embed = await f32(t.embedding);
  return {
    config: {
      dim: nc.dim,
      hidden: nc.hidden,
      layers: nc.layers,
      heads: nc.heads,
      kvHeads: nc.kvHeads,
      headDim: nc.headDim,
      vocab: nc.vocab,
      normEps: nc.normEps,
      invFreq: nc.invFreq,
      ropeScale: nc.ropeScale ?? 1,
    },
    embed,
    finalNorm: await f32(t.norm),
    head: t.tied ? embed : await f32(t.lmHead),
    blocks,
  };
}

export function readText(path: string): string {
  return readFileSync(path, 'utf8');
}

/**
 * Quantization presets: settings chosen for where the checkpoint will run.
 *
 * 'vllm': what vLLM's fast GPTQ kernels (Marlin/Machete, and on Hopper the only fast path) take:
 * 4 or 8 bits, symmetric grids, group size 128 (or 32/64, or one group per channel), and act-order
 * only through static groups, so that desc_act stays false and g_idx stays trivial (an unpermuted
 * act-order checkpoint cannot be split across GPUs by input rows). Every layer's output size must
 * divide by 64 and its input size by 128 and by the group size, per GPU shard.
 */
import type { LlamaConfig } from './formats/hf.js';

export type PresetName = 'vllm';
export const PRESETS: readonly PresetName[] = ['vllm'];

/** The settings a preset decides (the rest of the quantize options are left as given). */
export interface PresetSettings {
  bits: 2 | 3 | 4 | 8;
  /** -1: one group per output channel */
  groupSize: number;
  sym: boolean;
  actOrder: boolean;
  staticGroups: boolean;
  checkpointFormat: 'gptq' | 'gptq_v2';
}

/** The preset's settings, keeping what the caller chose explicitly (then checked by presetWarnings). */
export function applyPreset(name: PresetName, chosen: Partial<PresetSettings>): PresetSettings {
  if (name !== 'vllm') throw new Error(`unknown preset ${String(name)}`);
  const actOrder = chosen.actOrder ?? false;
  return {
    bits: chosen.bits ?? 4,
    groupSize: chosen.groupSize ?? 128,
    sym: chosen.sym ?? true,
    actOrder,
    // act-order through static groups: the quantization order changes, the stored layout does not
    staticGroups: chosen.staticGroups ?? actOrder,
    checkpointFormat: chosen.checkpointFormat ?? 'gptq',
  };
}

const MARLIN_GROUP_SIZES = [-1, 32, 64, 128];
const MARLIN_MIN_N = 64;
const MARLIN_MIN_K = 128;

/** The linear layers' [N, K] of a Llama-family model, by module name. */
function linearShapes(
  c: Pick<LlamaConfig, 'hiddenSize' | 'intermediateSize' | 'numHeads' | 'numKvHeads' | 'headDim'>,
): [string, number, number][] {
  const q = c.numHeads * c.headDim;
  const kv = c.numKvHeads * c.headDim;
  return [
    ['q_proj', q, c.hiddenSize],
    ['k_proj', kv, c.hiddenSize],
    ['v_proj', kv, c.hiddenSize],
    ['o_proj', c.hiddenSize, q],
    ['gate_proj', c.intermediateSize, c.hiddenSize],
    ['up_proj', c.intermediateSize, c.hiddenSize],
    ['down_proj', c.hiddenSize, c.intermediateSize],
  ];
}

/**
 * Why vLLM's fast GPTQ kernels would refuse a checkpoint with these settings (empty: they take it),
 * for the model's shapes when `config` is given, split over `tensorParallel` GPUs.
 */
export function vllmWarnings(
  s: PresetSettings,
  config?: Pick<LlamaConfig, 'hiddenSize' | 'intermediateSize' | 'numHeads' | 'numKvHeads' | 'headDim'>,
  tensorParallel = 1,
): string[] {
  const out: string[] = [];
  if (s.bits !== 4 && s.bits !== 8) out.push(`${s.bits}-bit: vLLM's fast kernels take 4 or 8 bits`);
  if (!s.sym) out.push("asymmetric grids (sym false): vLLM's Marlin kernels take symmetric GPTQ only");
  if (!MARLIN_GROUP_SIZES.includes(s.groupSize))
    out.push(`group size ${s.groupSize}: vLLM's fast kernels take 32, 64, 128 or per-channel`);
  if (s.actOrder && !s.staticGroups)
    out.push(
      'act-order without static groups writes desc_act true: vLLM cannot split such layers across GPUs by input rows (add --static-groups)',
    );
  if (s.checkpointFormat !== 'gptq')
    out.push(`checkpoint format ${s.checkpointFormat}: vLLM reads the gptq (v1) zero-point layout`);
  if (config) {
    for (const [name, N, K] of linearShapes(config)) {
      // column-parallel layers split N, row-parallel ones (o, down) split K
      const rowParallel = name === 'o_proj' || name === 'down_proj';
      const n = rowParallel ? N : N / tensorParallel;
      const k = rowParallel ? K / tensorParallel : K;
      const problems: string[] = [];
      if (!Number.isInteger(n) || n % MARLIN_MIN_N !== 0)
        problems.push(
          `output size ${N}${tensorParallel > 1 && !rowParallel ? `/${tensorParallel}` : ''} is not a multiple of ${MARLIN_MIN_N}`,
        );
      if (!Number.isInteger(k) || k % MARLIN_MIN_K !== 0)
        problems.push(
          `input size ${K}${tensorParallel > 1 && rowParallel ? `/${tensorParallel}` : ''} is not a multiple of ${MARLIN_MIN_K}`,
        );
      else if (s.groupSize > 0 && k % s.groupSize !== 0)
        problems.push(`input size ${k} is not a multiple of the group size ${s.groupSize}`);
      if (problems.length > 0) out.push(`${name} (${N}x${K}): ${problems.join(', ')}`);
    }
  }
  return out;
}

/**
 * The one TypeScript table of lowbit's weight formats: the twin of native/core/weights/format.hpp
 * (test/native/weight-formats.test.ts holds the two together through native().weightFormats()).
 * Readers, writer, inspect, the packed products and the scheduler take bit widths, pack units,
 * tensor names, dtypes, shapes and byte counts from here.
 *
 * Adding a format: an entry in WEIGHT_FORMATS, its weights type in ./types.ts, its tensors here
 * (like gptqTensors), and the native side (docs/ARCHITECTURE.md, "Adding a weight format").
 */

/** The formats a linear layer's weight may be in, in the native Format enum's order. */
export const WEIGHT_FORMATS = ['dense', 'gptq', 'spqr'] as const;
export type WeightFormatName = (typeof WEIGHT_FORMATS)[number];

/**
 * GPTQ's pack units: `values` values of `bits` bits packed into `words` int32 words, one
 * little-endian bit stream (3 bits: 32 values in 3 words).
 */
export const GPTQ_PACK_UNITS = [
  { bits: 2, values: 16, words: 1 },
  { bits: 3, values: 32, words: 3 },
  { bits: 4, values: 8, words: 1 },
  { bits: 8, values: 4, words: 1 },
] as const;

/** A bit width GPTQ packs: 2 | 3 | 4 | 8. */
export type GptqBits = (typeof GPTQ_PACK_UNITS)[number]['bits'];

/** The GPTQ bit widths, ascending. */
export const GPTQ_BITS: readonly GptqBits[] = GPTQ_PACK_UNITS.map((u) => u.bits);

/** The widths in words, for messages: "2, 3, 4 or 8". */
export const GPTQ_BITS_TEXT = `${GPTQ_BITS.slice(0, -1).join(', ')} or ${GPTQ_BITS[GPTQ_BITS.length - 1]}`;

export function isGptqBits(v: unknown): v is GptqBits {
  return (GPTQ_BITS as readonly unknown[]).includes(v);
}

/** Values packed together along the packed dimension, and the int32 words they take. */
export function packUnit(bits: GptqBits): { values: number; words: number } {
  const unit = GPTQ_PACK_UNITS.find((u) => u.bits === bits);
  if (!unit) throw new RangeError(`no GPTQ pack unit for ${String(bits)} bits`);
  return { values: unit.values, words: unit.words };
}

/** int32 words holding `count` values of `bits` bits along the packed dimension (a partial last unit padded). */
export function packedWords(bits: GptqBits, count: number): number {
  const unit = packUnit(bits);
  return Math.ceil(count / unit.values) * unit.words;
}

/** How many values `count` occupies once packed (count rounded up to whole units). */
export function packedCount(bits: GptqBits, count: number): number {
  const unit = packUnit(bits);
  return Math.ceil(count / unit.values) * unit.values;
}

/** Groups of a linear with K inputs: one per `groupSize` columns, or one for -1 (per channel). */
export function groupsOf(K: number, groupSize: number): number {
  return groupSize === -1 ? 1 : Math.ceil(K / groupSize);
}

/** SpQR's code widths (native kSpqrBits); its statistics take 1..8 bits. */
export const SPQR_BITS = [2, 3, 4] as const;
export type SpqrBits = (typeof SPQR_BITS)[number];

/** A tensor a quantized linear stores in a checkpoint, named `<prefix>.<suffix>`. */
export interface FormatTensor {
  suffix: string;
  dtype: 'I32' | 'F16';
  shape: number[];
  bytes: number;
}

/** The suffixes of a GPTQ linear's tensors, in the order the writer declares them. */
export const GPTQ_TENSOR_SUFFIXES = ['qweight', 'qzeros', 'scales', 'g_idx'] as const;

/**
 * The tensors of one GPTQ linear with K inputs, N outputs and `groups` groups:
 * qweight int32 [packed(K), N], qzeros int32 [groups, packed(N)], scales fp16 [groups, N], g_idx int32 [K].
 */
export function gptqTensors(bits: GptqBits, K: number, N: number, groups: number): FormatTensor[] {
  const spec = (suffix: string, dtype: 'I32' | 'F16', shape: number[]): FormatTensor => ({
    suffix,
    dtype,
    shape,
    bytes: shape.reduce((a, b) => a * b, 1) * (dtype === 'I32' ? 4 : 2),
  });
  return [
    spec('qweight', 'I32', [packedWords(bits, K), N]),
    spec('qzeros', 'I32', [groups, packedWords(bits, N)]),
    spec('scales', 'F16', [groups, N]),
    spec('g_idx', 'I32', [K]),
  ];
}

/** Stored bits per weight of a GPTQ linear (every tensor of gptqTensors over K × N weights). */
export function gptqBitsPerWeight(bits: GptqBits, K: number, N: number, groups: number): number {
  const bytes = gptqTensors(bits, K, N, groups).reduce((a, t) => a + t.bytes, 0);
  return (bytes * 8) / (K * N);
}

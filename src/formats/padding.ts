/**
 * Exact padding of the MLP width, so that every GPTQ checkpoint lowbit writes has the shapes other
 * loaders expect. transformers, GPTQModel and vLLM size a quantized linear from its in_features
 * alone: qweight [in // 32 · bits, out], qzeros [ceil(in / group), out // 32 · bits], scales
 * [ceil(in / group), out], g_idx [in], and vLLM needs in % group_size == 0. A width such as
 * stories260K's intermediate_size 172 fits none of that, so the writer enlarges it to the next
 * multiple of lcm(32, group size) (172 → 192 at group 32) and stores:
 *   - gate_proj / up_proj: extra output channels whose weights are exactly zero (scale 0, codes at
 *     the zero point), and zero biases;
 *   - down_proj: extra input columns (codes at their group's zero point, or as close as the code
 *     range allows, which only the v1 zero point 0 needs).
 * A padded channel's gate and up outputs are exactly 0, SwiGLU gives silu(0) · 0 = 0, and down_proj
 * multiplies its padded columns by that exact 0: the padded model computes the same function.
 * The hidden size cannot be padded this way (RMSNorm averages over it); it stays as it is.
 */
import type { PackedWeights } from '../native.js';
import { native } from '../native.js';
import { Tensor, type DType } from '../tensor.js';
import { groupsOf } from '../weights/formats.js';

/** Values per pack word boundary that every bit width fills exactly: 32 (3 bits packs 32 values into 3 words). */
const PACK_MULTIPLE = 32;

function gcd(a: number, b: number): number {
  while (b) [a, b] = [b, a % b];
  return a;
}

/** The intermediate_size a GPTQ checkpoint with this group size stores (-1: per channel). */
export function paddedIntermediateSize(intermediateSize: number, groupSize: number): number {
  const g = groupSize > 0 ? groupSize : 1;
  const multiple = (PACK_MULTIPLE / gcd(PACK_MULTIPLE, g)) * g;
  return Math.ceil(intermediateSize / multiple) * multiple;
}

/** A copy of `t` grown along `axis` to `size` with zeros (all-zero bits are 0 in every float dtype). */
export function padTensor<D extends DType>(t: Tensor<D>, axis: number, size: number): Tensor<D> {
  const shape = [...t.shape];
  const old = shape[axis]!;
  if (size === old) return t;
  if (size < old) throw new RangeError(`cannot pad axis ${axis} of [${shape.join(', ')}] down to ${size}`);
  const inner = shape.slice(axis + 1).reduce((a, b) => a * b, 1);
  const outer = shape.slice(0, axis).reduce((a, b) => a * b, 1);
  shape[axis] = size;
  const Ctor = t.data.constructor as new (n: number) => Tensor<D>['data'];
  const data = new Ctor(outer * size * inner);
  for (let o = 0; o < outer; o++)
    data.set(t.data.subarray(o * old * inner, (o + 1) * old * inner) as never, o * size * inner);
  return new Tensor(t.dtype, shape, data);
}

/**
 * `w` (K inputs, N outputs) grown to K2 inputs and N2 outputs that contribute exactly nothing (see the
 * module comment), with `groupSize2` columns per group (K2 for per channel). The result always carries
 * its g_idx: the logical columns keep their groups, the new ones get k / groupSize2.
 */
export function padPackedWeights(w: PackedWeights, K2: number, N2: number, groupSize2: number): PackedWeights {
  const { bits, K, N, groups, zeroOffset } = w;
  if (K2 === K && N2 === N) return w;
  if (K2 < K || N2 < N) throw new RangeError(`cannot pad ${N}x${K} packed weights down to ${N2}x${K2}`);
  const maxq = 2 ** bits - 1;
  const mid = 2 ** (bits - 1); // a zero point both v1 and v2 can store (and the symmetric grid's)
  const addon = native();
  const q = addon.unpackQweight(w.qweight, N, K, bits); // [N, K]
  const zeros = addon.unpackQzeros(w.qzeros, groups, N, bits, zeroOffset); // [groups, N]
  const groups2 = Math.max(groups, groupsOf(K2, groupSize2 === K2 ? -1 : groupSize2));
  const gIdx = new Int32Array(K2);
  for (let k = 0; k < K2; k++)
    gIdx[k] = k < K ? (w.gIdx ? w.gIdx[k]! : Math.floor(k / w.groupSize)) : Math.floor(k / groupSize2);

  const zeros2 = new Int32Array(groups2 * N2).fill(mid);
  const scales2 = new Uint16Array(groups2 * N2); // fp16 0 for every padded channel and group
  for (let g = 0; g < groups; g++) {
    zeros2.set(zeros.subarray(g * N, (g + 1) * N), g * N2);
    scales2.set(w.scales.subarray(g * N, (g + 1) * N), g * N2);
  }
  const q2 = new Uint8Array(N2 * K2).fill(mid);
  for (let n = 0; n < N; n++) {
    q2.set(q.subarray(n * K, (n + 1) * K), n * K2);
    // a padded column's code at its group's zero point dequantizes to 0; v1's zero point 0 reads back
    // as 2^bits, outside the codes: maxq is then the nearest, and the column's input is 0 anyway
    for (let k = K; k < K2; k++) q2[n * K2 + k] = Math.min(maxq, zeros2[gIdx[k]! * N2 + n]!);
  }
  return {
    bits,
    K: K2,
    N: N2,
    groupSize: groupSize2,
    groups: groups2,
    zeroOffset,
    qweight: addon.packQweight(q2, N2, K2, bits),
    qzeros: addon.packQzeros(zeros2, groups2, N2, bits, zeroOffset),
    scales: scales2,
    gIdx,
  };
}

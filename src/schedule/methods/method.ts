/**
 * The quantization-method seam: a method is a plug-in object that says what calibration it needs,
 * how it quantizes one linear (given that calibration), which weight format it produces and how its
 * options are checked. src/schedule/quantize.ts only orchestrates (blocks, stages, calibration
 * passes, resume, output); ./index.ts maps method names to plug-ins for the API, the CLI and help.
 * Adding a method: docs/ARCHITECTURE.md, "Adding a quantization method".
 */
import type { DeviceSpec } from '../../devices.js';
import type { GptqConfig } from '../../formats/gptq.js';
import type { PackedWeights } from '../../native.js';
import type { Hessian } from '../../quantize/gptq.js';
import type { Tensor } from '../../tensor.js';
import type { GptqBits } from '../../weights/index.js';

/** The options every method producing GPTQ-format weights has (the checkpoint's grid). */
export interface GridOptions {
  bits: GptqBits;
  /** input columns per group; -1 = one group per output channel */
  groupSize: number;
  /** symmetric grid (zero point 2^(bits-1)) */
  sym: boolean;
  /** search shrunken grid ranges for the lowest error */
  mse: boolean;
  /** "gptq" (v1: qzeros store zero - 1) or "gptq_v2" (the zero itself) */
  checkpointFormat: 'gptq' | 'gptq_v2';
}

/** What a method gets to quantize one linear. */
export interface LinearInput {
  /** the dense weight [N, K], checked finite */
  W: Tensor<'f32'>;
  /** with calibration 'hessian': H of this linear's inputs (as the block runs after the earlier stages) */
  hessian?: Hessian;
  device: DeviceSpec;
}

/** One quantized linear. */
export interface LinearOutput {
  /** what the checkpoint (and the resume state) stores */
  packed: PackedWeights;
  /** what the block runs on for the later stages and blocks (default: packed) */
  forBlock?: PackedWeights;
  /** the method's objective for this linear, or null (RTN) */
  loss: number | null;
  /** the dampening fraction of mean(diag H) finally used, and the absolute λ it came to (null without a Hessian) */
  damp: number | null;
  lambda: number | null;
  dampRaises: number;
  warnings: string[];
}

export interface QuantizationMethod<O extends GridOptions = GridOptions> {
  /** the name in options and on the command line */
  readonly name: string;
  /** one line for help texts */
  readonly description: string;
  /** 'none': each linear on its own weights; 'hessian': block by block over calibration text */
  readonly calibration: 'none' | 'hessian';
  /** the weight format of its output (src/weights' table) */
  readonly format: 'gptq';
  /** the options it reads from QuantizeOptions, checked, defaults filled in */
  resolve(options: Record<string, unknown>): O;
  quantizeLinear(input: LinearInput, options: O): Promise<LinearOutput>;
  /** the checkpoint's quantization config */
  checkpointConfig(options: O): GptqConfig;
  /** working memory to quantize one N × K linear (bytes), besides the scheduler's own */
  linearBytes(N: number, K: number): number;
}

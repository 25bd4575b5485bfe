/**
 * The quantization-method seam: a method is a plug-in object that says what calibration it needs,
 * how it quantizes one linear (given that calibration), which weight format it produces and how its
 * options are checked. src/schedule/quantize.ts only orchestrates (blocks, stages, calibration
 * passes, resume, output); ./index.ts maps method names to plug-ins for the API, the CLI and help.
 * Adding a method: docs/ARCHITECTURE.md, "Adding a quantization method".
 */
import type { DeviceSpec } from '../../devices.js';
import { LowbitError } from '../../errors.js';
import type { GptqConfig } from '../../formats/gptq.js';
import type { SpqrQuantizationConfig } from '../../formats/spqr.js';
import type { PackedWeights } from '../../native.js';
import { resolveGptqOptions, type GptqOptions, type Hessian } from '../../quantize/gptq.js';
import type { Tensor } from '../../tensor.js';
import type { GptqBits, SpqrLinearWeights } from '../../weights/index.js';

/** What every method's resolved options have. */
export interface MethodOptions {
  bits: number;
  /** GPTQ-format methods: input columns per group */
  groupSize?: number;
  /** quantize stage by stage (q/k/v, o, gate/up, down) */
  trueSequential?: boolean;
}

/** The options every method producing GPTQ-format weights has (the checkpoint's grid). */
export interface GridOptions extends MethodOptions {
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

/** A quantized linear in its method's format: GPTQ's PackedWeights (untagged), or tagged SpQR weights. */
export type QuantizedWeights = PackedWeights | SpqrLinearWeights;

export function isSpqrWeights(w: QuantizedWeights): w is SpqrLinearWeights {
  return (w as { format?: string }).format === 'spqr';
}

/** One quantized linear. */
export interface LinearOutput {
  /** what the checkpoint (and the resume state) stores */
  packed: QuantizedWeights;
  /** what the block runs on for the later stages and blocks (default: packed) */
  forBlock?: QuantizedWeights;
  /** the method's objective for this linear, or null (RTN) */
  loss: number | null;
  /** the dampening fraction of mean(diag H) finally used, and the absolute λ it came to (null without a Hessian) */
  damp: number | null;
  lambda: number | null;
  dampRaises: number;
  warnings: string[];
}

export interface QuantizationMethod<O extends MethodOptions = GridOptions> {
  /** the name in options and on the command line */
  readonly name: string;
  /** one line for help texts */
  readonly description: string;
  /** 'none': each linear on its own weights; 'hessian': block by block over calibration text */
  readonly calibration: 'none' | 'hessian';
  /** the weight format of its output (src/weights' table): which checkpoint writer the scheduler opens */
  readonly format: 'gptq' | 'spqr';
  /** the options it reads from QuantizeOptions, checked, defaults filled in */
  resolve(options: Record<string, unknown>): O;
  /** checks the options against the model's linears (N × K each) before anything runs */
  checkShapes?(options: O, dims: { N: number; K: number }[]): void;
  quantizeLinear(input: LinearInput, options: O): Promise<LinearOutput>;
  /** the checkpoint's quantization config (GptqConfig for format 'gptq', SpqrQuantizationConfig for 'spqr') */
  checkpointConfig(options: O): GptqConfig | SpqrQuantizationConfig;
  /** working memory to quantize one N × K linear (bytes), besides the scheduler's own */
  linearBytes(N: number, K: number): number;
}

/** The options of GridOptions, by name. */
export const GRID_OPTION_NAMES = ['bits', 'groupSize', 'sym', 'mse', 'checkpointFormat'] as const;

/** SpQR's own options, which the GPTQ-format methods refuse. */
export const SPQR_OPTION_NAMES = [
  'beta1',
  'beta2',
  'statBits',
  'outlierThreshold',
  'outlierBudget',
  'gridSearch',
  'statSearch',
] as const;

/** Each method option's `lowbit quantize` flag, so that errors name what the user typed. */
export const OPTION_FLAGS: Record<string, string> = {
  bits: '--bits',
  groupSize: '--group-size',
  sym: '--sym',
  mse: '--mse',
  checkpointFormat: '--format',
  actOrder: '--act-order',
  staticGroups: '--static-groups',
  damp: '--damp',
  trueSequential: '--no-true-sequential',
  beta1: '--beta1',
  beta2: '--beta2',
  statBits: '--stat-bits',
  outlierThreshold: '--tau',
  outlierBudget: '--outlier-budget',
  gridSearch: '--no-grid-search',
  statSearch: '--no-stat-search',
  'calibration.files': '--calib',
  'calibration.samples': '--samples',
  'calibration.seqLen': '--seq-len',
  'calibration.seed': '--seed',
};

type CheckedGptqOptions = ReturnType<typeof resolveGptqOptions>;

/**
 * The options `names` of `o`, checked and with their defaults, by the one validator of GPTQ-format
 * options (resolveGptqOptions): what every plug-in's `resolve` starts from.
 */
export function resolveNamed<N extends keyof CheckedGptqOptions>(
  o: Record<string, unknown>,
  names: readonly N[],
): Pick<CheckedGptqOptions, N> {
  const given: Record<string, unknown> = {};
  for (const name of names) given[name] = o[name];
  const checked = resolveGptqOptions(given as unknown as GptqOptions);
  const out = {} as Pick<CheckedGptqOptions, N>;
  for (const name of names) out[name] = checked[name];
  return out;
}

/**
 * E_ARGUMENT for the first of `names` that `o` sets (any value but undefined): an option the method
 * would otherwise ignore without a word. `why` says what the method does instead.
 */
export function rejectOptions(
  method: string,
  o: Record<string, unknown>,
  names: readonly string[],
  owner: string,
  why: string,
): void {
  for (const name of names) {
    if (o[name] === undefined) continue;
    const flag = OPTION_FLAGS[name] ?? name;
    throw new LowbitError(
      'E_ARGUMENT',
      `${flag} (${name}) is a ${owner} option and ${method} does not take it: ${why}; leave it out, or use --method ${owner.toLowerCase()}`,
      { option: name },
    );
  }
}

/**
 * Quantization entry points: quantize() runs the whole pipeline (src/schedule/quantize.ts); the
 * per-layer pieces (GPTQ with its Hessian, RTN) are exported for callers that schedule their own.
 */
export {
  quantize,
  parseBytes,
  QuantizeJob,
  type QuantizeOptions,
  type QuantizeProgress,
  type QuantizeSummary,
  type QuantizeWarning,
} from '../schedule/quantize.js';
export {
  METHODS,
  METHOD_NAMES,
  type MethodName,
  type QuantizationMethod,
  type GptqMethodOptions,
  type RtnMethodOptions,
} from '../schedule/methods/index.js';
export type { LayerReport } from '../schedule/resume.js';
export { Hessian, gptqQuantize, resolveGptqOptions, type GptqOptions, type GptqResult } from './gptq.js';
export {
  prepareLinear,
  PreparedLinear,
  type PrepareLinearOptions,
  type LinearActivations,
  type ActivationArray,
} from './linear.js';

/**
 * Quantization entry points: quantize() runs the whole pipeline (src/schedule/quantize.ts); the
 * per-layer pieces (GPTQ with its Hessian, RTN) are exported for callers that schedule their own.
 */
export { quantize, parseBytes, QuantizeJob, type QuantizeOptions, type QuantizeProgress, type QuantizeSummary } from '../schedule/quantize.js';
export type { LayerReport } from '../schedule/resume.js';
export { Hessian, gptqQuantize, resolveGptqOptions, type GptqOptions, type GptqResult } from './gptq.js';

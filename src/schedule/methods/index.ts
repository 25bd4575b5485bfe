/** The registry of quantization methods: name -> plug-in. The API, the CLI and its help read it. */
import { invalidArgument } from '../../errors.js';
import { gptq } from './gptq.js';
import type { MethodOptions, QuantizationMethod } from './method.js';
import { rtn } from './rtn.js';
import { spqr } from './spqr.js';

export type { GptqMethodOptions } from './gptq.js';
export type { RtnMethodOptions } from './rtn.js';
export type { SpqrMethodOptions } from './spqr.js';
export type {
  GridOptions,
  LinearInput,
  LinearOutput,
  MethodOptions,
  QuantizationMethod,
  QuantizedWeights,
} from './method.js';
export { OPTION_FLAGS, isSpqrWeights, rejectOptions } from './method.js';

export const METHODS = { gptq, rtn, spqr } as const;
export type MethodName = keyof typeof METHODS;
export const METHOD_NAMES = Object.keys(METHODS) as MethodName[];
export const DEFAULT_METHOD: MethodName = 'gptq';

/** The plug-in for `name`, or E_ARGUMENT listing the methods there are. */
export function methodOf(name: unknown, option = 'method'): QuantizationMethod<MethodOptions> {
  if (typeof name !== 'string' || !Object.hasOwn(METHODS, name))
    invalidArgument(option, METHOD_NAMES.map((n) => `"${n}"`).join(' or '), name);
  return METHODS[name as MethodName] as unknown as QuantizationMethod<MethodOptions>;
}

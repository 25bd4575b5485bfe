/** lowbit's public API. */
export { LowbitError, ERROR_CODES, type LowbitErrorCode } from './errors.js';
export {
  devices,
  setThreads,
  resolveDevice,
  type Device,
  type CpuDevice,
  type CudaDevice,
  type DeviceSpec,
} from './devices.js';
export type { PackedWeights, BuildInfo } from './native.js';
export { Tensor, DTYPE_BYTES, numel, type DType } from './tensor.js';
export {
  SafetensorsFile,
  BufferSource,
  type TensorInfo,
  type SafetensorsHeader,
  type SafetensorsDType,
  type ByteSource,
} from './formats/safetensors.js';
export { Checkpoint } from './formats/checkpoint.js';
export {
  HfModel,
  parseLlamaConfig,
  readLlamaConfig,
  describeTensors,
  type LlamaConfig,
  type ModelTensors,
  type BlockTensors,
  type LinearTensors,
  type ModelReader,
  type RopeConfig,
} from './formats/hf.js';
export {
  loadTokenizer,
  StreamDecoder,
  type TextTokenizer,
  type EncodeOptions,
  type LoadTokenizerOptions,
} from './formats/tokenizer.js';
export {
  spqrQuantize,
  spqrDequantize,
  spqrMatmul,
  spqrStorageBits,
  resolveSpqrOptions,
  type SpqrWeights,
  type SpqrOptions,
  type SpqrReport,
  type SpqrStorageBits,
} from './quantize/spqr.js';
export { rtnQuantize, rtnQuantizeCodes, packCodes, type RtnOptions, type RtnCodes } from './quantize/rtn.js';
export {
  prepareLinear,
  PreparedLinear,
  type PrepareLinearOptions,
  type LinearActivations,
  type ActivationArray,
} from './quantize/linear.js';
export {
  WEIGHT_FORMATS,
  GPTQ_PACK_UNITS,
  GPTQ_BITS,
  gptqTensors,
  gptqBitsPerWeight,
  type GptqBits,
  type WeightFormatName,
  type LinearWeights,
  type DenseWeights,
  type GptqWeights,
} from './weights/index.js';
export {
  packedMatmul,
  packedMatmulSync,
  denseMatmul,
  dequantizeWeights,
  validatePackedWeights,
  packedWords,
  packUnit,
  type PackedMatmulOptions,
} from './quantize/packed.js';
export { CheckpointWriter, writeSafetensors, type TensorSpec } from './formats/safetensors-writer.js';
export { Llama2cModel, type Llama2cHeader } from './formats/llama2c.js';
export { convertLlama2c, type ConvertOptions } from './formats/convert.js';
export {
  GptqWriter,
  openGptqModel,
  readPackedLinear,
  readPackedHead,
  linearDims,
  writtenConfig,
  type GptqConfig,
} from './formats/gptq.js';
export { inspectModel, type InspectReport } from './formats/inspect.js';
export { openModelFiles } from './formats/open.js';
export {
  openModel,
  Model,
  HiddenStates,
  Session,
  nativeModelConfig,
  CAPTURE_POINTS,
  type OpenModelOptions,
  type CapturePointName,
  type CpuActivations,
  type NativeBlockWeights,
  type NativeLinear,
  type NativeLinearName,
} from './model/model.js';
export {
  perplexity,
  perplexityIds,
  type PerplexityOptions,
  type PerplexityResult,
  type PerplexityProgress,
} from './model/perplexity.js';
export { generate, generateTokens, sampleToken, seededRandom, type GenerateOptions } from './model/generate.js';
export { type SamplingOptions } from './model/sampling.js';
export {
  Scheduler,
  TokenStream,
  schedulerOf,
  type SchedulerOptions,
  type SchedulerStats,
  type SubmitOptions,
} from './serve/scheduler.js';
export { ropeFrequencies, type RopeFrequencies } from './model/rope.js';
export { bundled } from './bundled.js';
export {
  quantize,
  parseBytes,
  QuantizeJob,
  Hessian,
  gptqQuantize,
  type QuantizeOptions,
  type QuantizeProgress,
  type QuantizeSummary,
  type LayerReport,
  type GptqOptions,
  type GptqResult,
} from './quantize/index.js';
export {
  downloadHubModel,
  resolveModelPath,
  hubSettings,
  parseHubModelId,
  type HubDownloadOptions,
  type HubProgress,
  type HubSnapshot,
  type HubSettings,
  type HubModelId,
} from './hub/index.js';
export { applyPreset, vllmWarnings, PRESETS, type PresetName, type PresetSettings } from './presets.js';

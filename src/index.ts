/** lowbit's public API. */
export { LowbitError, ERROR_CODES, type LowbitErrorCode } from './errors.js';
export { devices, setThreads, resolveDevice, type Device, type CpuDevice, type CudaDevice, type DeviceSpec } from './devices.js';
export type { PackedWeights, BuildInfo } from './native.js';
export { SafetensorsFile, BufferSource, type TensorInfo, type SafetensorsHeader, type SafetensorsDType, type ByteSource } from './formats/safetensors.js';
export { Checkpoint } from './formats/checkpoint.js';
export { HfModel, parseLlamaConfig, readLlamaConfig, describeTensors, type LlamaConfig, type ModelTensors, type BlockTensors, type LinearTensors, type ModelReader, type RopeConfig } from './formats/hf.js';
export { loadTokenizer, StreamDecoder, type TextTokenizer, type EncodeOptions, type LoadTokenizerOptions } from './formats/tokenizer.js';
export { rtnQuantize, rtnQuantizeCodes, packCodes, type RtnOptions, type RtnCodes } from './quantize/rtn.js';
export { packedMatmul, packedMatmulSync, denseMatmul, dequantizeWeights, validatePackedWeights, packedWords, packUnit, type PackedMatmulOptions } from './quantize/packed.js';
export { CheckpointWriter, writeSafetensors, type TensorSpec } from './formats/safetensors-writer.js';
export { Llama2cModel, type Llama2cHeader } from './formats/llama2c.js';
export { convertLlama2c, type ConvertOptions } from './formats/convert.js';
export { GptqWriter, openGptqModel, readPackedLinear, linearDims, type GptqConfig } from './formats/gptq.js';
export { inspectModel, type InspectReport } from './formats/inspect.js';
export { openModelFiles } from './formats/open.js';

/**
 * One entry point for model files: a Hugging Face directory (dense or GPTQ, single or sharded) or
 * a llama2.c checkpoint, as a ModelReader with Hugging Face names and layout.
 */
import { statSync } from 'node:fs';
import { LowbitError } from '../errors.js';
import { HfModel, type ModelReader } from './hf.js';
import { Llama2cModel } from './llama2c.js';
import { checkPath } from './read-bounded.js';

export async function openModelFiles(path: string): Promise<ModelReader> {
  checkPath(path, 'path', 'a model directory or llama2.c file');
  let isDir: boolean;
  try {
    isDir = statSync(path).isDirectory();
  } catch (err) {
    throw new LowbitError('E_IO', `cannot open ${path}: ${(err as Error).message}`, { file: path }, { cause: err });
  }
  return isDir ? HfModel.open(path) : Llama2cModel.open(path);
}

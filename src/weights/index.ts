/** Weight formats: the table (formats.ts) and the weights types (types.ts). */
export * from './formats.js';
export * from './types.js';

/**
 * Where GPTQ's calibration hidden states live between passes, and how one pass of a block over them
 * feeds the stage's Hessians:
 * - HostStates: a Float32Array on the host; each call copies its rows to the model's device, the
 *   captures come back to the host and go into the Hessians from there (the CPU, and the f32
 *   calibration on a GPU, whose checkpoints equal the CPU's).
 * - ResidentStates: the model holds them (a GPU's memory on the 16-bit path); the captures go into
 *   the Hessians where they are. Only read() crosses to the host (checkpoints for resume, lm_head).
 */
import type { Model, CapturePointName, HiddenStates } from '../model/model.js';
import type { Hessian } from '../quantize/gptq.js';

/** Seconds spent, accumulated over the run (QuantizeTimings). */
export interface PassTimings {
  forward: number;
  hessian: number;
  io: number;
}

export interface CalibrationStates {
  /**
   * Block `block` over every sample: with Hessians, each capture point's inputs folded into its
   * Hessian and the states left unchanged after `stopAfter`; without, the block's outputs replace the
   * states (the next block's inputs). `checkAbort` runs before each call.
   */
  pass(
    block: number,
    hessians: Map<CapturePointName, Hessian>,
    stopAfter: CapturePointName | undefined,
    checkAbort: () => void,
  ): Promise<void>;
  /** the states on the host, [tokens, dim] (a view for HostStates, a copy for ResidentStates) */
  read(): Promise<Float32Array>;
  free(): void;
}

interface Shape {
  samples: number;
  seqLen: number;
  dim: number;
  /** sequences per forward call */
  perCall: number;
}

export class HostStates implements CalibrationStates {
  constructor(
    private readonly model: Model,
    private readonly hidden: Float32Array,
    private readonly shape: Shape,
    private readonly timings: PassTimings,
  ) {}

  async pass(
    block: number,
    hessians: Map<CapturePointName, Hessian>,
    stopAfter: CapturePointName | undefined,
    checkAbort: () => void,
  ): Promise<void> {
    const { samples, seqLen, dim, perCall } = this.shape;
    const capture = [...hessians.keys()];
    for (let s0 = 0; s0 < samples; s0 += perCall) {
      checkAbort();
      const batch = Math.min(perCall, samples - s0);
      const x = this.hidden.subarray(s0 * seqLen * dim, (s0 + batch) * seqLen * dim);
      const t0 = performance.now();
      const { inputs } =
        capture.length > 0
          ? await this.model.runBlock(block, x, { batch, seq: seqLen, capture, stopAfter })
          : await this.model.runBlock(block, x, { batch, seq: seqLen, inPlace: true });
      const t1 = performance.now();
      for (const [point, H] of hessians) await H.addBatch(inputs[point]!, batch * seqLen);
      this.timings.forward += (t1 - t0) / 1000;
      this.timings.hessian += (performance.now() - t1) / 1000;
    }
  }

  read(): Promise<Float32Array> {
    return Promise.resolve(this.hidden);
  }

  free(): void {}
}

export class ResidentStates implements CalibrationStates {
  private constructor(
    private readonly states: HiddenStates,
    private readonly shape: Shape,
    private readonly timings: PassTimings,
  ) {}

  static async create(model: Model, hidden: Float32Array, shape: Shape, timings: PassTimings): Promise<ResidentStates> {
    const t0 = performance.now();
    const states = await model.createStates(hidden, shape.samples * shape.seqLen);
    timings.io += (performance.now() - t0) / 1000;
    return new ResidentStates(states, shape, timings);
  }

  async pass(
    block: number,
    hessians: Map<CapturePointName, Hessian>,
    stopAfter: CapturePointName | undefined,
    checkAbort: () => void,
  ): Promise<void> {
    const { samples, seqLen, perCall } = this.shape;
    const byPoint = Object.fromEntries(hessians) as Partial<Record<CapturePointName, Hessian>>;
    for (let s0 = 0; s0 < samples; s0 += perCall) {
      checkAbort();
      const batch = Math.min(perCall, samples - s0);
      const t0 = performance.now();
      const inHessians = await this.states.runBlock(block, {
        row0: s0 * seqLen,
        batch,
        seq: seqLen,
        hessians: byPoint,
        stopAfter: hessians.size > 0 ? stopAfter : undefined,
      });
      this.timings.forward += (performance.now() - t0) / 1000 - inHessians;
      this.timings.hessian += inHessians;
    }
  }

  async read(): Promise<Float32Array> {
    const t0 = performance.now();
    const out = await this.states.read();
    this.timings.io += (performance.now() - t0) / 1000;
    return out;
  }

  free(): void {
    this.states.free();
  }
}

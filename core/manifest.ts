// The contract between tools/ and agent/: what an artifact directory holds and how to drive it.
// The agent reads only this; it never guesses tensor names.

/**
 * The preset as the manifest records it: the whole of tools/artifacts/presets.ts's Preset is written,
 * but only these fields are part of the contract (the runtime reads them; the rest is kept as a record).
 * Declared here rather than imported so the runtime does not depend on the compiler's types.
 */
export interface ManifestPreset {
  name: string;
  image: { size: number; mean: number[]; std: number[] };
  encoder: { widths: number[] };
  /** Present for SimSiam-style (two-view, predictor) steps. */
  predictor?: unknown;
  crops: number;
  batch: number;
  lr: number;
  agent: { newPerArrival: number; updatesPerArrival: number; bufferSize: number; replay: 'mixed' | 'buffer' };
}

export const MANIFEST_FORMAT = 'ssocl-artifacts/1';

export interface TensorInfo {
  name: string;
  shape: (number | string)[];
  dtype: 'float32' | 'float64' | 'int64' | 'uint8';
}

export interface StateInfo {
  /** Graph input name; the training step's output of the new value is `next`. */
  name: string;
  next: string;
  shape: number[];
  dtype: 'float32';
  role: 'param' | 'buffer' | 'optim' | 'diag';
  /** Where the initial value comes from: init.safetensors, or zeros. */
  init: 'file' | 'zeros';
  /** Also an input of embed.onnx. */
  embed: boolean;
}

/** P: the writer's full preset type (tools/ passes its Preset, so the compiler checks it fits). */
export interface Manifest<P extends ManifestPreset = ManifestPreset> {
  format: typeof MANIFEST_FORMAT;
  name: string;
  generator: { name: string; version: string };
  opset: number;
  preset: P;
  trainStep: {
    file: string;
    crops: TensorInfo & { layout: string; views: number; images: number; range: [number, number] };
    lr: string;
    step: string;
    loss: string;
    terms: Record<string, string>;
    zbar: string;
    gradNorm: string;
    gradCos: string | null;
    inputs: TensorInfo[];
    outputs: TensorInfo[];
  };
  embed: {
    file: string;
    images: TensorInfo & { range: [number, number] };
    features: string;
    embedding: string;
    inputs: TensorInfo[];
    outputs: TensorInfo[];
  };
  state: StateInfo[];
  init: string;
  /** sha256 of every file in the directory other than the manifest. */
  files: Record<string, string>;
}

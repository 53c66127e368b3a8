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

/**
 * A training step that runs K updates of one arrival in one graph run. `crops` (above) then describes
 * one inner step's batch; `lr` names the [K] learning-rate input and `step` the first update's number.
 * Per-step outputs (loss, terms, zbar, gradNorm, gradCos, applied) gain a leading [K] axis; the state
 * outputs are the state after the K updates.
 */
export interface FusedStep {
  /** Updates per run, K. */
  updates: number;
  /**
   * float32 [K]: entry i is the learning rate of the run's i-th applied update. Inner step k uses the
   * entry (and the update number `step` + that count) of the updates applied before it, so a skipped
   * update does not count, as with single steps.
   */
  lrs: string;
  /** float32 [K]: 1 where inner step k was applied, 0 where the guard kept the state as it was. */
  applied: string;
  /** Crops made on the host: float32 [K, ...crops.shape], inner step k's at [k]; null when the graph makes them. */
  crops: (TensorInfo & { layout: string }) | null;
  /** Crops made in the graph (all three, or all null): the arrival's distinct images, uint8 [U, 3, S, S] at the training size. */
  images: (TensorInfo & { range: [number, number] }) | null;
  /** int64 [K, b]: row k lists, as rows of `images`, the images of inner step k's batch in batch order. */
  index: TensorInfo | null;
  /** float32 [K, N*b, P]: inner step k's crop draws, rows as crops.layout, columns as core/crop-params.ts packs them. */
  cropParams: (TensorInfo & { layout: string }) | null;
}

/**
 * A step that distils toward a frozen past model (SCALE's IRD): each step takes the past model's
 * backbone features of the batch's first view, computed by embed.onnx with the snapshot's weights, and
 * the distillation weight (0 until the first applied step reports the one it set).
 */
export interface DistillStep {
  /** float32 [b, F]: embed.onnx `features` of crops rows 0..b-1 (view 0) under the past model's weights. */
  pastFeatures: TensorInfo & { layout: string };
  /** float32 scalar input: the weight kept from the first step; 0 asks the step to set it. */
  weight: string;
  /** float32 scalar output: the weight this step used (keep it once the step is applied). */
  weightUsed: string;
  /** When the host refreshes the snapshot; SCALE copies the model before each stream batch's updates. */
  refresh: 'arrival';
}

/**
 * An imported model (ssocl artifacts --from-onnx): the source file, kept whole, into which an export
 * writes the learnt state, so the exported model has the source's inputs, outputs, opset and metadata.
 */
export interface SourceInfo {
  /** The source model as imported (its sha256 in `files`). */
  file: string;
  /** Its image input (it takes normalised images: preset.image.mean/std). */
  input: string;
  /** Each source output -> the embed.onnx output that computes it (the export is checked against these). */
  outputs: Record<string, string>;
  /** State tensor -> the source tensor it is. */
  weights: Record<string, string>;
  /** Source tensors that were an Identity copy of an initializer (torch's deduplication): name -> the initializer copied. */
  copies: Record<string, string>;
  /** The source's ai.onnx opset. */
  opset: number;
  /** The feature tensor, and how it became [batch, width] (core/onnx/model.ts EncoderView). */
  feature: string;
  reduce: 'none' | 'flatten' | 'pool';
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
    /**
     * Present when the step's Convs run in ORT's NCHWc kernels (x86-64 CPU EP only): MLAS's block size
     * on the machine it was built for, which the machine that runs it must have, and how many Convs.
     */
    nchwc?: { block: number; convs: number };
    inputs: TensorInfo[];
    outputs: TensorInfo[];
    /** Present when one run makes K updates (artifact option `fuse`); absent in single-step artifacts. */
    fused?: FusedStep;
    /** Present when the step distils toward a past-model snapshot (SCALE). */
    distill?: DistillStep;
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
  /** Present in artifacts imported from an ONNX model. */
  source?: SourceInfo;
  /** sha256 of every file in the directory other than the manifest. */
  files: Record<string, string>;
}

// A tiny preset for whole-network tests: the edge architecture shrunk so a step takes milliseconds.
import { applyOverrides, getPreset, type Preset } from '../../tools/artifacts/presets.ts';

export function tinyPreset(sets: string[] = []): Preset {
  return applyOverrides(getPreset('edge'), [
    'encoder.widths=[4,8]',
    'encoder.blocks=[1,1]',
    'image.size=8',
    'batch=4',
    'crops=3',
    'projector=[{"out":16,"bn":true,"act":true},{"out":8}]',
    'gradCos=false',
    ...sets,
  ]);
}

/** The tiny preset with K updates fused into one graph run (K updates per arrival), crops from the host or made in the graph. */
export function tinyFusedPreset(k: number, cropsInGraph = false, sets: string[] = []): Preset {
  return tinyPreset([`fuse=${k}`, `agent.updatesPerArrival=${k}`, ...(cropsInGraph ? ['cropsInGraph=true'] : []), ...sets]);
}

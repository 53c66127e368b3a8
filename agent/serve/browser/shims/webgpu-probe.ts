// node:child_process, node:os and node:url for the page's training bundle: only trainer/webgpu.ts
// imports them, to probe onnxruntime-node's WebGPU in a child process, which the page never does (it
// runs onnxruntime-web's own WebGPU or WASM).

const notHere = (name: string) => () => {
  throw new Error(`${name}: not in the browser`);
};
export const spawnSync = notHere('child_process.spawnSync');
export const userInfo = notHere('os.userInfo');
export const pathToFileURL = notHere('url.pathToFileURL');

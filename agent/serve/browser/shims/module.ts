// node:module for the page's training bundle: backend.ts asks createRequire only to find the CUDA
// provider's files, which a browser has none of.

export function createRequire(_from: string) {
  const req = () => {
    throw new Error('require: not in the browser');
  };
  req.resolve = req;
  return req;
}

// The environment the PyTorch reference runs in, for every peer bench (bench/peer, bench/byom-peer): the
// same malloc tunables, thread counts and BLAS folder on each, so their PyTorch figures compare.

/** At glibc's defaults the PyTorch child page-faults and its step time swings 2-4x (shared/notes/cpu-peer.md). */
export const GLIBC_TUNABLES = 'glibc.malloc.mmap_threshold=268435456:glibc.malloc.trim_threshold=1073741824';

/** The child's environment: `threads` for OpenMP and the BLAS libraries, `ldPath` (e.g. an OpenBLAS folder) first on LD_LIBRARY_PATH. */
export function torchEnv(threads: number, ldPath: string | undefined): NodeJS.ProcessEnv {
  return {
    ...process.env,
    GLIBC_TUNABLES,
    OMP_NUM_THREADS: String(threads),
    OPENBLAS_NUM_THREADS: String(threads),
    MKL_NUM_THREADS: String(threads),
    ...(ldPath ? { LD_LIBRARY_PATH: [ldPath, process.env.LD_LIBRARY_PATH].filter(Boolean).join(':') } : {}),
  };
}

#!/usr/bin/env bash
# bench/gpu/run.sh: ours against the PyTorch reference on the GPU machine (../shared/device/README.md), in
# one device call of at most 10 minutes. bench/peer.ts at the edge shape (128 crops, committed
# training-artifacts/edge) and the paper-cifar shape (ResNet-18-CIFAR + 4096-4096-1024 head, 20 views x
# 200 images = 4,000 crops, compiled on the machine), ours on --ep cuda and --ep webgpu, the reference on
# CUDA, both in pure float32 (--tf32 off: TF32 would leave the loss check without a verdict). Each part
# has its own time limit and writes its own JSON and table under $OUT, so a part that stalls or runs out
# of memory costs only itself; the tables are printed together at the end.
#
# How to call it (the `device` tool; nothing here can run it on a machine without a GPU):
#   1. Here, from the repository root, after `npm ci`:
#        bash ../shared/device/pack.sh        # -> .device/ (Node, node_modules, Vulkan loader; ~40 MiB)
#        bash ../shared/device/pack-cuda.sh   # -> .device-cuda/ (ORT's CUDA 13 provider in parts of <= 45 MB)
#      Both folders are git-ignored. The rest of the working tree travels with every call (tracked and
#      untracked-but-not-ignored files, ~10 MB), so keep untracked clutter out of the tree. Artifacts:
#      training-artifacts/edge is committed and travels by itself; paper-cifar (134 MB of weights, over
#      the 64 MiB a call may carry) is compiled on the machine by bench/peer.ts into bench/out/ (~10 s).
#   2. `status` (free): can_start_another must be true. The machine's start counts against the 15 minutes.
#   3. On one warm machine, in quick succession (it is given back ~30 s after a call ends), one call per
#      CUDA part, each a few seconds, as pack-cuda.sh prints:
#        run(command="bash .device-cuda/stash.sh", carry=[".device-cuda/stash.sh", ".device-cuda/part-0",
#            ".device-cuda/libonnxruntime_providers_shared.so"])       (likewise part-1, part-2, ...)
#      Without them the cuda rows say "not run" and the webgpu rows still run.
#   4. The benchmark:
#        run(command="bash .device/run.sh bash bench/gpu/run.sh", carry=[".device"], timeout_s=600)
#      .device/run.sh unpacks Node and node_modules, installs the Vulkan loader (WebGPU), puts the stashed
#      CUDA provider into node_modules, and runs this script. Results: $OUT/summary.md (also printed
#      last), $OUT/peer-*.json, one log per part. Then give_back.
#
# Knobs (environment): GPU_EPS ("cuda webgpu"), GPU_THREADS (4: ORT intra-op / torch threads; the work is
# on the GPU), GPU_BUDGET_S (540: parts that would start too late are skipped), EDGE_STEPS (20),
# EDGE_WARMUP (3), EDGE_EMBED (20 timed inference batches), PC_STEPS (5), PC_WARMUP (2), PC_EMBED (5), PC_SET (extra --set for paper-cifar, e.g. "batch=64"), PC_TF32_ON (1: one more paper-cifar
# cuda run with TF32 on both sides if time is left, timing only).
# A CPU dry run here (checks everything up to the GPU flags; tiny shapes):
#   GPU_EPS=cpu GPU_THREADS=2 EDGE_STEPS=1 EDGE_WARMUP=2 EDGE_EMBED=1 PC_STEPS=1 PC_WARMUP=2 PC_EMBED=1 \
#     PC_SET="crops=4 batch=4" OUT=/tmp/gpu-dry bash bench/gpu/run.sh
set -uo pipefail # no -e: one part failing must not lose the others

cd "$(dirname "$0")/../.."
OUT=${OUT:-bench/out/gpu}
mkdir -p "$OUT"
EPS=${GPU_EPS:-cuda webgpu}
THREADS=${GPU_THREADS:-4}
BUDGET=${GPU_BUDGET_S:-540}
EDGE_STEPS=${EDGE_STEPS:-20}
EDGE_WARMUP=${EDGE_WARMUP:-3}
EDGE_EMBED=${EDGE_EMBED:-20}
PC_STEPS=${PC_STEPS:-5}
PC_WARMUP=${PC_WARMUP:-2}
PC_EMBED=${PC_EMBED:-5}
PC_TF32_ON=${PC_TF32_ON:-1}
pc_set=()
for s in ${PC_SET:-}; do pc_set+=(--set "$s"); done
start=$SECONDS

{
  echo "date: $(date -u +%FT%TZ)"
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || echo "no nvidia-smi"
  echo "cpu: $(lscpu 2>/dev/null | sed -n 's/^Model name: *//p' | head -1), $(nproc) cores"
  echo "node $(node --version); onnxruntime-node $(node -p "require('onnxruntime-node/package.json').version") backends: $(node -e "import('onnxruntime-node').then(o => console.log(o.listSupportedBackends().map(b => b.name).join(' ')))")"
  python3 -c 'import torch; print("python torch", torch.__version__, "cuda", torch.version.cuda, "available", torch.cuda.is_available())' 2>&1
} | tee "$OUT/env.txt"

cuda_lib=node_modules/onnxruntime-node/bin/napi-v6/linux/x64/libonnxruntime_providers_cuda.so
if [[ " $EPS " == *" cuda "* && ! -s $cuda_lib ]]; then
  echo "note: $cuda_lib is missing (the pack-cuda.sh parts were not stashed in this machine's session): cuda rows will say why they did not run" | tee -a "$OUT/env.txt"
fi

# part NAME LIMIT_S peer-args...: runs bench/peer.ts under its own time limit if the budget allows it.
part() {
  local name=$1 limit=$2
  shift 2
  local left=$((BUDGET - (SECONDS - start)))
  if ((left < 30)); then
    echo "== $name: skipped, ${left} s of the ${BUDGET} s budget left" | tee -a "$OUT/skipped.txt"
    return
  fi
  ((limit > left)) && limit=$left
  echo "== $name (limit ${limit} s, $((SECONDS - start)) s in)"
  timeout -k 10 "$limit" node --import tsx bench/peer.ts --progress --threads "$THREADS" --json "$OUT/peer-$name.json" "$@" \
    > "$OUT/$name.txt" 2> "$OUT/$name.log"
  local rc=$?
  case $rc in
    0) ;;
    1) echo "   (loss agreement failed: see the table)" ;;
    124 | 137) echo "   (stopped at ${limit} s; $OUT/peer-$name.json holds what finished)" | tee -a "$OUT/$name.txt" ;;
    *) echo "   (exit $rc: $(grep -v '^\s*$' "$OUT/$name.log" | tail -2 | tr '\n' ' '))" | tee -a "$OUT/$name.txt" ;;
  esac
  tail -3 "$OUT/$name.log" | sed 's/^/   log: /'
}

for ep in $EPS; do
  part "edge-$ep" 120 --preset edge --ep "$ep" --steps "$EDGE_STEPS" --warmup "$EDGE_WARMUP" --tf32 off --embed-iters "$EDGE_EMBED"
done
for ep in $EPS; do
  part "paper-cifar-$ep" 200 --preset paper-cifar ${pc_set[@]+"${pc_set[@]}"} --ep "$ep" --steps "$PC_STEPS" --warmup "$PC_WARMUP" --tf32 off --embed-iters "$PC_EMBED"
done
if [[ $PC_TF32_ON == 1 && " $EPS " == *" cuda "* ]]; then
  part "paper-cifar-cuda-tf32" 150 --preset paper-cifar ${pc_set[@]+"${pc_set[@]}"} --ep cuda --steps "$PC_STEPS" --warmup "$PC_WARMUP" --tf32 on --embed-iters "$PC_EMBED"
fi

{
  echo "# bench/gpu/run.sh, $(date -u +%F), $(head -2 "$OUT/env.txt" | tail -1)"
  echo
  for f in "$OUT"/*.txt; do
    case $(basename "$f") in env.txt | skipped.txt) continue ;; esac
    echo "## $(basename "$f" .txt)"
    grep -v '^wrote ' "$f"
    echo
  done
  [[ -f $OUT/skipped.txt ]] && cat "$OUT/skipped.txt"
  echo "total $((SECONDS - start)) s"
} > "$OUT/summary.md"
cat "$OUT/summary.md"

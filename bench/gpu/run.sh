#!/usr/bin/env bash
# The Huber CUDA core on a GPU machine, in one go: device and toolchain, build
# (sm_90 + compute_90 PTX, ptxas report), then bench/gpu/harness.py
# (correctness checks, then the bandwidth table). Needs nvcc, python3 with
# NumPy and CuPy or PyTorch; no TensorFlow, no network. A few minutes at most.
#
#   bash bench/gpu/run.sh [harness options, e.g. --quick or --no-bench]
#
# Everything printed also goes to $OUT/gpu_results.txt when OUT is set, and the
# bandwidth rows to $OUT/gpu_results.json, which the benchmark report reads next to
# the CPU suites' JSON (one table, one plot):
#
#   python -m fastcustom.bench report bench/out/results.json "$OUT/gpu_results.json"
# Exits non-zero when the build or any correctness check fails.
set -euo pipefail
cd "$(dirname "$0")/../.."
log=/dev/null
json=()
if [[ -n "${OUT:-}" ]]; then
  mkdir -p "$OUT"; log="$OUT/gpu_results.txt"; json=(--json "$OUT/gpu_results.json")
fi
build=$(mktemp -d)
trap 'rm -rf "$build"' EXIT

{
  echo "== $(date -u '+%Y-%m-%d %H:%M:%S UTC') on $(hostname)"
  nvidia-smi -L
  nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm,clocks.mem,memory.total,temperature.gpu \
    --format=csv || true
  nvcc --version | tail -n 2
  python3 --version
  git log -1 --format='commit %h %s' 2>/dev/null || true

  echo "== build"
  flags=(-std=c++17 -O3 -Xcompiler -fPIC -Xptxas -v
         -gencode arch=compute_90,code=sm_90 -gencode arch=compute_90,code=compute_90)
  start=$SECONDS
  nvcc "${flags[@]}" -c csrc/cuda/huber_cuda.cu -o "$build/huber_cuda.o" 2>"$build/ptxas.log" &
  core=$!
  nvcc "${flags[@]}" -c csrc/cuda/huber_capi.cu -o "$build/huber_capi.o" 2>"$build/capi.log" \
    || { cat "$build/capi.log"; exit 1; }
  wait "$core" || { cat "$build/ptxas.log"; exit 1; }
  nvcc -shared "$build/huber_cuda.o" "$build/huber_capi.o" -o "$build/libfastcustom_huber_cuda.so"
  echo "built in $((SECONDS - start)) s; ptxas (registers, stack frame and spill bytes per kernel):"
  awk '
    /Compiling entry function/ { fn = $0; sub(/^[^'\'']*'\''/, "", fn); sub(/'\''.*$/, "", fn) }
    /bytes stack frame/        { frame = $1; st = $5; ld = $9 }
    /Used [0-9]+ registers/    { regs = $0; sub(/^.*Used /, "", regs); sub(/ registers.*$/, "", regs)
                                 printf "  regs=%-3s frame=%-3s spill_st=%-3s spill_ld=%-3s %s\n", regs, frame, st, ld, fn }
  ' "$build/ptxas.log" | (c++filt 2>/dev/null || cat) \
    | sed -e 's/fastcustom::gpu::(anonymous namespace):://' -e 's/([A-Za-z_:]*)\([0-9-]\)/\1/g' -e 's/(.*$//' -e 's/ void / /' | sort -k5

  echo "== harness"
  PYTHONUNBUFFERED=1 python3 bench/gpu/harness.py --lib "$build/libfastcustom_huber_cuda.so" \
    "${json[@]}" "$@"
} 2>&1 | tee "$log"

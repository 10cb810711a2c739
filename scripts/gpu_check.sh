#!/usr/bin/env bash
# On a GPU machine, without the project venv (python3 with torch and pytest, a CUDA toolkit): build the
# CUDA kernels in place; run the CUDA tests and, alongside, the same less the slow ones, gradcheck and
# opcheck under compute-sanitizer memcheck; then the Triton kernels' tests compiled for the GPU (not the
# interpreter), the Triton and C++ CUDA kernels against each other among them (needs triton); then the
# GPU benchmark alone. About 6 minutes on an H200.
#   bash scripts/gpu_check.sh [--dry-run] [--skip-build|tests|memcheck|bench] OUTDIR
# OUTDIR gets summary.txt (the machine, then per step: status, seconds, command), build.log, tests.log,
# memcheck.log, bench.log, bench.md (the benchmark tables) and bench.tar.gz (all the benchmark reports).
# --dry-run checks the wiring anywhere: collects the two test selections, prints the commands. Exit status
# 1 if a step failed. Environment: PYTHON (python3), TORCH_CUDA_ARCH_LIST (9.0), MAX_JOBS (nproc).
set -uo pipefail
DRY=0 SKIP='' OUT=''
for a in "$@"; do
  case "$a" in --dry-run) DRY=1 ;; --skip-*) SKIP="$SKIP ${a#--skip-} " ;; -*) sed -n 5p "$0"; exit 2 ;; *) OUT="$a" ;; esac
done
[ -n "$OUT" ] || { sed -n 5p "$0"; exit 2; }
mkdir -p "$OUT" && OUT="$(cd "$OUT" && pwd)" && cd "$(dirname "${BASH_SOURCE[0]}")/.." || exit 2
PY="${PYTHON:-python3}" B="$(mktemp -d)" fail=0; trap 'rm -rf "$B"' EXIT
export FORCE_CUDA=1 TORCH_CUDA_ARCH_LIST="${TORCH_CUDA_ARCH_LIST:-9.0}" MAX_JOBS="${MAX_JOBS:-$(nproc)}"
export PYTHONUNBUFFERED=1 MPLBACKEND=Agg DCN_TEST_THREADS=8
source scripts/cuda_env.sh
use_cuda_toolkit "$PY" || echo "[gpu_check] no CUDA toolkit found: the build will have no CUDA kernels" >&2
SANITIZER="$(command -v compute-sanitizer || echo "${CUDA_HOME:-/usr/local/cuda}/bin/compute-sanitizer")"
TESTS=(-m cuda tests/test_ops)
MEMCHECK=(-m 'cuda and not slow' -k 'not gradcheck and not opcheck' tests/test_ops)
TRITON=(tests/test_ops/test_triton_conv.py tests/test_ops/test_triton_roi_pool.py tests/test_ops/test_triton_backend.py)
note() { echo "[gpu_check] $*" | tee -a "$OUT/summary.txt"; }
step() {  # step NAME LIMIT_S CMD...: CMD into OUT/NAME.log, with a time limit; one line into summary.txt
  local name=$1 limit=$2 t0=$SECONDS rc=0; shift 2
  if [[ "$SKIP" == *" $name "* ]]; then note "$name: skipped (--skip-$name)"; return 0; fi
  if [ "$DRY" = 1 ]; then note "$name: would run: $*"; return 0; fi
  { echo "+ $*"; timeout -k 10 "$limit" "$@"; } >> "$OUT/$name.log" 2>&1 || rc=$?
  note "$name: $(case $rc in 0) echo ok ;; 124|137) echo "TIMED OUT (${limit} s)" ;; *) echo "FAILED (rc $rc)" ;; esac)" \
    "in $((SECONDS - t0)) s: $* | $(tail -n1 "$OUT/$name.log" | cut -c1-200)"
  return $rc
}
note "$(date -u +%FT%TZ) $(nvidia-smi --query-gpu=name,driver_version --format=csv,noheader 2>&1 | head -n1);" \
  "$("$PY" -c 'import torch; print("torch", torch.__version__, "CUDA", torch.version.cuda)' 2>&1 | tail -n1);" \
  "nvcc: $("${CUDA_HOME:-}/bin/nvcc" --version 2>&1 | tail -n1); $(nproc) cores, MAX_JOBS=$MAX_JOBS"
if [ "$DRY" = 1 ]; then
  note "tests: $("$PY" -m pytest -p no:cacheprovider "${TESTS[@]}" --collect-only -q 2>&1 | tail -n1)"
  note "memcheck: $("$PY" -m pytest -p no:cacheprovider "${MEMCHECK[@]}" --collect-only -q 2>&1 | tail -n1)"
  note "triton: $("$PY" -m pytest -p no:cacheprovider "${TRITON[@]}" --collect-only -q 2>&1 | tail -n1)"
  "$PY" tools/benchmark.py --help > /dev/null 2>&1 && note "tools/benchmark.py: runs" || note "tools/benchmark.py: MISSING"
fi
step build 180 "$PY" setup.py build_ext --inplace || { note "no build: nothing else runs"; exit 1; }
step tests 200 "$PY" -m pytest -p no:cacheprovider "${TESTS[@]}" -v -rfEs --durations=15 & tests=$!
# without the caching allocator every tensor is an allocation of its own: memcheck sees its bounds
step memcheck 200 env PYTORCH_NO_CUDA_MEMORY_CACHING=1 "$SANITIZER" --tool memcheck --report-api-errors no \
  --error-exitcode 99 --print-limit 50 "$PY" -m pytest -p no:cacheprovider "${MEMCHECK[@]}" -q -rfEs || fail=1
wait $tests || fail=1
step triton 240 env -u TRITON_INTERPRET "$PY" -m pytest -p no:cacheprovider "${TRITON[@]}" -v -rfEs --durations=10 \
  || fail=1
for dtype in float32 'float32 --tf32' bfloat16; do  # $dtype unquoted: the --tf32 flag
  step bench 70 "$PY" tools/benchmark.py op --device cuda --dtype $dtype --shapes r50-1333x800 \
    --out-dir "$B/op-${dtype// /}" || fail=1
done
if [ "$DRY" = 1 ] || "$PY" -c 'import mmdet, mmcv' > /dev/null 2>&1; then
  step bench 120 "$PY" tools/benchmark.py model configs/dcn/faster-rcnn_r50-mdconv-c3-c5_fpn_1x_coco.py --baseline \
    configs/dcn/faster-rcnn_r50_fpn_1x_coco.py --part backbone --mode both --image-size 800 1333 --batch 2 \
    --device cuda --out-dir "$B/model" || fail=1
else note "bench model: skipped: mmdet/mmcv cannot be imported here (the model benchmark builds mmdet models)"; fi
shopt -s nullglob; for f in "$B"/*/*.md; do printf '## %s\n\n' "${f#"$B"/}"; cat "$f"; echo; done > "$OUT/bench.md"
[ "$DRY" = 1 ] || tar -czf "$OUT/bench.tar.gz" -C "$B" .
note "done: $([ $fail = 0 ] && echo 'every step passed' || echo 'a step FAILED'); logs in $OUT"
exit $fail

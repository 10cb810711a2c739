#!/usr/bin/env bash
# GPU check (issue 7): build dcn_plugin's CUDA kernels, run the CUDA tests, benchmark the op against
# torchvision.ops.deform_conv2d and cuDNN F.conv2d; logs, JUnit XML, benchmark JSON/MD/PNG and a
# summary (summary.json, summary.txt) go to OUTDIR.
#
#   tools/gpu_check.sh OUTDIR                    # on a GPU machine, from anywhere
#   tools/gpu_check.sh --dry-run OUTDIR          # no GPU needed: all but the build; benchmark on CPU
#   tools/gpu_check.sh --archive FILE OUTDIR     # also pack OUTDIR into FILE (.tar.gz)
#   --skip-build (use the dcn_plugin/_C already built here), --skip-tests, --skip-bench: split a run
#
# Needs python3 with torch (CUDA build), torchvision and pytest, and nvcc; not mmcv or mmdet (without
# mmdet the op package imports only torch); no network. The extension is built in place
# (setup.py build_ext --inplace, FORCE_CUDA=1), nothing is installed.
#
# Steps (each with its own log and time limit; a failing step does not stop the later ones, except
# that tests and benchmarks need a successful build):
#   env        versions, GPU, toolkit                                   -> env.log, env.json
#   build      FORCE_CUDA=1 TORCH_CUDA_ARCH_LIST=9.0 build_ext --inplace -> build.log
#   import     import dcn_plugin, CUDA kernels present, one op call       -> import.log
#   tests      pytest tests/test_ops/test_cuda.py                        -> tests.log, tests.xml
#   bench_*    tools/benchmark_op.py --device cuda --dtype {float32,tf32,bfloat16}, batch 2,
#              ResNet-50 c3-c5 at 1333x800 (+ a deform_groups=4 case)   -> bench_<dtype>.log,
#              op_benchmark_cuda_<dtype>.{json,md,png}
#   summary    dcn_plugin/benchmark/gpu_summary.py                       -> summary.json, summary.txt
# Exit status 0 when every step passed.
#
# Environment: PYTHON (python3), TORCH_CUDA_ARCH_LIST (9.0), MAX_JOBS (nproc), CUDA_HOME (found from
# torch or nvcc), BENCH_DTYPES ("float32 tf32 bfloat16"), BENCH_REPEAT (20), BENCH_WARMUP (5),
# BUILD_TIMEOUT (420), TEST_TIMEOUT (300), BENCH_TIMEOUT (120) in seconds.
# Typical times on one H100 with 16 cores: build 1-3 min, tests about 1 min, benchmarks under 1 min.
set -uo pipefail

usage() { sed -n '2,10p' "$0" | sed 's/^# \{0,1\}//'; exit 2; }

DRY_RUN=0
SKIP_BUILD=0
SKIP_TESTS=0
SKIP_BENCH=0
ARCHIVE=''
OUTDIR=''
while [ $# -gt 0 ]; do
  case "$1" in
    --dry-run) DRY_RUN=1 ;;
    --skip-build) SKIP_BUILD=1 ;;
    --skip-tests) SKIP_TESTS=1 ;;
    --skip-bench) SKIP_BENCH=1 ;;
    --archive) [ $# -ge 2 ] || usage; ARCHIVE="$2"; shift ;;
    -h|--help) usage ;;
    -*) echo "gpu_check: unknown option $1" >&2; usage ;;
    *) [ -z "$OUTDIR" ] || usage; OUTDIR="$1" ;;
  esac
  shift
done
[ -n "$OUTDIR" ] || usage

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
mkdir -p "$OUTDIR" && OUT="$(cd "$OUTDIR" && pwd)" || { echo "gpu_check: cannot create $OUTDIR" >&2; exit 2; }
cd "$ROOT" || exit 2
PY="${PYTHON:-python3}"
export OUT ROOT PY DRY_RUN  # for the step functions, which run in child shells
BENCH_DTYPES="${BENCH_DTYPES:-float32 tf32 bfloat16}"
: > "$OUT/steps.tsv"

export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
export CUBLAS_WORKSPACE_CONFIG=:4096:8          # cuBLAS reproducibility under use_deterministic_algorithms
export FORCE_CUDA=1
export TORCH_CUDA_ARCH_LIST="${TORCH_CUDA_ARCH_LIST:-9.0}"
export MAX_JOBS="${MAX_JOBS:-$(nproc 2>/dev/null || echo 4)}"
export MPLBACKEND=Agg
export DCN_PLUGIN_NO_STALE_CHECK=1             # sources and build are fresh here by construction

log() { printf '[gpu_check] %s\n' "$*"; }

# step NAME LIMIT_S LOGFILE -- CMD...: run CMD (a command or a function of this script) with a time limit, log its output, record it
step() {
  local name="$1" limit="$2" logf="$3"; shift 4
  local t0 rc status
  t0=$(date +%s)
  log "$name: $* (limit ${limit}s, log $logf)"
  if declare -F "$1" > /dev/null; then  # a function of this script: run it in a child bash
    timeout --kill-after=15 "$limit" bash -c "$(declare -f "$1"); $(printf '%q ' "$@")" > "$OUT/$logf" 2>&1
  else
    timeout --kill-after=15 "$limit" "$@" > "$OUT/$logf" 2>&1
  fi
  rc=$?
  case $rc in
    0) status=ok ;;
    124|137) status=timeout ;;
    *) status=failed ;;
  esac
  printf '%s\t%s\t%s\t%s\t%s\n' "$name" "$status" "$rc" "$(( $(date +%s) - t0 ))" "$logf" >> "$OUT/steps.tsv"
  log "$name: $status (rc $rc, $(( $(date +%s) - t0 ))s)"
  [ "$status" = ok ]
}
skip_step() {  # skip_step NAME WHY
  printf '%s\t%s\t%s\t%s\t%s\n' "$1" skipped '' 0 "$2" >> "$OUT/steps.tsv"
  log "$1: skipped ($2)"
}

# ------------------------------------------------------------------ CUDA toolkit
# torch.utils.cpp_extension finds CUDA_HOME from the environment, nvcc on PATH or /usr/local/cuda; a
# wrapper script named nvcc can mislead it, so resolve the real toolkit when its guess has no nvcc.
is_toolkit() { [ -n "$1" ] && [ -x "$1/bin/nvcc" ] && [ -f "$1/include/cuda_runtime.h" ]; }
if ! is_toolkit "${CUDA_HOME:-}"; then
  guess="$("$PY" -c 'from torch.utils.cpp_extension import CUDA_HOME; print(CUDA_HOME or "")' 2>/dev/null | tail -n1)"
  if is_toolkit "$guess"; then
    export CUDA_HOME="$guess"
  elif command -v nvcc > /dev/null 2>&1; then
    nv="$(readlink -f "$(command -v nvcc)")"
    home="$(dirname "$(dirname "$nv")")"
    if [ ! -f "$home/include/cuda_runtime.h" ]; then  # a wrapper: take the nvcc it hands over to
      target="$(grep -oE '/[^ "]*/bin/nvcc' "$nv" 2>/dev/null | head -n1)"
      [ -n "$target" ] && [ -x "$target" ] && home="$(dirname "$(dirname "$(readlink -f "$target")")")"
    fi
    is_toolkit "$home" && export CUDA_HOME="$home"
  fi
  is_toolkit "${CUDA_HOME:-}" || log "no CUDA toolkit found (CUDA_HOME=${CUDA_HOME:-unset}); the build will be CPU-only"
fi
# torch's CUDA headers include cusparse.h, cublas_v2.h, ...; a minimal toolkit may lack them while the
# pip packages of the CUDA libraries that torch depends on (nvidia/*/include) have them
if is_toolkit "${CUDA_HOME:-}" && [ ! -f "$CUDA_HOME/include/cusparse.h" ]; then
  extra="$("$PY" -c '
import glob, os
try:
    import nvidia
    roots = list(nvidia.__path__)
except Exception:
    roots = []
print(":".join(sorted({os.path.dirname(h) for r in roots
                       for h in glob.glob(os.path.join(r, "**", "include", "cusparse.h"), recursive=True)})))
' 2>/dev/null | tail -n1)"
  if [ -n "$extra" ]; then
    export CPATH="$extra${CPATH:+:$CPATH}"
    log "$CUDA_HOME has no cusparse.h: adding the pip CUDA library headers ($extra) to CPATH"
  fi
fi

# ------------------------------------------------------------------ env
env_report() {
  echo "== date";    date -u
  echo "== host";    uname -a; echo "cores: $(nproc 2>/dev/null)"
  echo "== git";     git -C "$ROOT" rev-parse HEAD 2>/dev/null || echo "(no git metadata)"
  echo "== nvidia-smi"; nvidia-smi 2>&1 || echo "(nvidia-smi not available)"
  echo "== nvcc (CUDA_HOME=${CUDA_HOME:-unset})"; "${CUDA_HOME:+$CUDA_HOME/bin/}nvcc" --version 2>&1 || echo "(nvcc not found)"
  echo "== build settings: FORCE_CUDA=$FORCE_CUDA TORCH_CUDA_ARCH_LIST=$TORCH_CUDA_ARCH_LIST MAX_JOBS=$MAX_JOBS CPATH=${CPATH:-}"
  echo "== python"
  "$PY" - "$OUT/env.json" <<'EOF'
import importlib, json, platform, sys
info = {'python': platform.python_version(), 'executable': sys.executable}
for mod in ('torch', 'torchvision', 'pytest', 'tqdm', 'matplotlib', 'numpy', 'mmcv', 'mmdet', 'mmengine'):
    try:
        info[mod] = getattr(importlib.import_module(mod), '__version__', '?')
    except Exception as e:  # noqa: BLE001
        info[mod] = None
try:
    import torch
    info['torch_cuda'] = torch.version.cuda
    info['cuda_available'] = torch.cuda.is_available()
    if torch.cuda.is_available():
        p = torch.cuda.get_device_properties(0)
        info.update(gpu=p.name, gpu_capability=f'{p.major}.{p.minor}', gpu_memory_gib=round(p.total_memory / 2**30, 1),
                    cudnn=torch.backends.cudnn.version())
except Exception as e:  # noqa: BLE001
    info['torch_error'] = repr(e)
print(json.dumps(info, indent=1))
json.dump(info, open(sys.argv[1], 'w'), indent=1)
EOF
}
step env 120 env.log -- env_report

# ------------------------------------------------------------------ build
built=0
if [ "$DRY_RUN" = 1 ]; then
  skip_step build "dry run: would run FORCE_CUDA=1 TORCH_CUDA_ARCH_LIST=$TORCH_CUDA_ARCH_LIST $PY setup.py build_ext --inplace"
  built=1  # use whatever dcn_plugin/_C is already here
elif [ "$SKIP_BUILD" = 1 ]; then
  skip_step build '--skip-build: using the dcn_plugin/_C built earlier'
  built=1
else
  step build "${BUILD_TIMEOUT:-420}" build.log -- "$PY" setup.py build_ext --inplace && built=1
fi

# ------------------------------------------------------------------ import + smoke call
import_check() {
  "$PY" - "$DRY_RUN" <<'EOF'
import sys
import torch
import dcn_plugin
from dcn_plugin.ops import has_cuda_kernels, modulated_deform_conv2d
dry = sys.argv[1] == '1'
print(f'dcn_plugin {dcn_plugin.__version__} from {dcn_plugin.__file__}; torch {torch.__version__} '
      f'(CUDA {torch.version.cuda}); cuda available {torch.cuda.is_available()}; CUDA kernels {has_cuda_kernels()}')
for mod in ('mmcv', 'mmdet'):
    print(f'{mod} imported: {mod in sys.modules}')
dev = 'cuda' if torch.cuda.is_available() else 'cpu'
if not dry and (dev != 'cuda' or not has_cuda_kernels()):
    sys.exit('no CUDA device or no CUDA kernels in dcn_plugin._C')
x = torch.randn(2, 8, 9, 9, device=dev)
off = torch.randn(2, 18, 9, 9, device=dev)
mask = torch.rand(2, 9, 9, 9, device=dev)
w = torch.randn(8, 8, 3, 3, device=dev)
y = modulated_deform_conv2d(x, off, mask, w, None, 1, 1)
print(f'one call on {dev}: output {tuple(y.shape)}, finite {bool(torch.isfinite(y).all())}')
EOF
}
imported=0
if [ "$built" = 1 ]; then
  step import 120 import.log -- import_check && imported=1
else
  skip_step import 'build failed'
fi

# ------------------------------------------------------------------ CUDA tests
# --noconftest: the file is self-contained; a conftest that needs mmdet must not stop it here
if [ "$SKIP_TESTS" = 1 ]; then
  skip_step tests '--skip-tests'
elif [ "$imported" = 1 ] || [ "$DRY_RUN" = 1 ]; then
  step tests "${TEST_TIMEOUT:-300}" tests.log -- "$PY" -m pytest tests/test_ops/test_cuda.py -v -rfEs \
    --noconftest -p no:cacheprovider --junitxml="$OUT/tests.xml" -o junit_family=xunit2
else
  skip_step tests 'no working build'
fi

# ------------------------------------------------------------------ benchmarks
for dt in $BENCH_DTYPES; do
  if [ "$SKIP_BENCH" = 1 ]; then
    skip_step "bench_$dt" '--skip-bench'
    continue
  fi
  if [ "$imported" != 1 ]; then
    skip_step "bench_$dt" 'no working build'
    continue
  fi
  if [ "$DRY_RUN" = 1 ]; then  # the same pipeline on the CPU, tiny and float32 (tf32/bf16 are GPU modes)
    step "bench_$dt" "${BENCH_TIMEOUT:-120}" "bench_$dt.log" -- "$PY" tools/benchmark_op.py --device cpu \
      --dtype float32 --shapes tiny --quick --no-progress --out-dir "$OUT" --tag "dry_$dt"
  else
    step "bench_$dt" "${BENCH_TIMEOUT:-120}" "bench_$dt.log" -- "$PY" tools/benchmark_op.py --device cuda \
      --dtype "$dt" --batch 2 --repeat "${BENCH_REPEAT:-20}" --warmup "${BENCH_WARMUP:-5}" --no-progress \
      --out-dir "$OUT"
  fi
done

# ------------------------------------------------------------------ summary
"$PY" "$ROOT/dcn_plugin/benchmark/gpu_summary.py" "$OUT"
rc=$?
if [ -n "$ARCHIVE" ]; then
  tar -czf "$ARCHIVE" -C "$(dirname "$OUT")" "$(basename "$OUT")" && log "packed $OUT into $ARCHIVE"
fi
log "outputs in $OUT (summary.txt, summary.json)"
exit $rc

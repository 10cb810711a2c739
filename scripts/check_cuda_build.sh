#!/usr/bin/env bash
# Compile dcn_plugin's CUDA kernels without a GPU (FORCE_CUDA=1) into a scratch folder, for the
# architectures in TORCH_CUDA_ARCH_LIST (default "8.0;9.0"), and check the library loads and reports
# CUDA kernels. Fails on any compile error. Leaves the checkout's own build untouched.
# Needs the project venv (scripts/setup_env.sh; PYTHON=... to use another interpreter with torch) and a
# CUDA toolkit matching torch's CUDA (found by scripts/cuda_env.sh).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VPY="${PYTHON:-$ROOT/.venv/bin/python}"
# shellcheck source=scripts/cuda_env.sh
source "$ROOT/scripts/cuda_env.sh"
[ -x "$VPY" ] || { echo "check_cuda_build: no venv; run scripts/setup_env.sh first" >&2; exit 1; }
use_cuda_toolkit "$VPY" || { echo "check_cuda_build: no CUDA toolkit found (nvcc on PATH or CUDA_HOME)" >&2; exit 1; }
export FORCE_CUDA=1 TORCH_CUDA_ARCH_LIST="${TORCH_CUDA_ARCH_LIST:-8.0;9.0}" MAX_JOBS="${MAX_JOBS:-$(nproc)}"
OUT="$(mktemp -d)"; trap 'rm -rf "$OUT"' EXIT
echo "[check_cuda_build] compiling the CUDA kernels for sm ${TORCH_CUDA_ARCH_LIST} with $CUDA_HOME/bin/nvcc" >&2
start=$(date +%s)
( cd "$ROOT" && "$VPY" setup.py build_ext -b "$OUT/lib" -t "$OUT/tmp" > "$OUT/build.log" 2>&1 ) \
  || { { grep -E ": (fatal )?error" "$OUT/build.log" || tail -n 40 "$OUT/build.log"; } | cut -c1-400 | head -n 40 >&2 || true
       echo "[check_cuda_build] FAILED: the CUDA build did not compile (messages above)" >&2; exit 1; }
LIB="$(ls "$OUT"/lib/dcn_plugin/_C*.so)"
"$VPY" -c 'import sys, torch; torch.ops.load_library(sys.argv[1]); sys.exit(not torch.ops.dcn_plugin._built_with_cuda())' \
  "$LIB" || { echo "[check_cuda_build] FAILED: $(basename "$LIB") has no CUDA kernels" >&2; exit 1; }
echo "[check_cuda_build] ok: $(basename "$LIB") has CUDA kernels; the CUDA compile took $(( $(date +%s) - start )) s" >&2

#!/usr/bin/env bash
# Compile dcn_plugin's CUDA kernels without a GPU (FORCE_CUDA=1) into a scratch folder, for the
# architectures in TORCH_CUDA_ARCH_LIST (default "8.0;9.0"), and check the library loads and reports
# CUDA kernels; print ptxas's registers and spills of every C++ kernel per architecture, then compile
# the Triton kernels the same way (scripts/check_triton_build.py). Fails on any compile error and on
# any spill. Leaves the checkout's own build untouched.
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
export NVCC_APPEND_FLAGS="${NVCC_APPEND_FLAGS:-} -Xptxas -v"  # registers and spills into the build log
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
# ptxas -v's report, one line per kernel and architecture (nvcc prints it per entry function)
awk '/Compiling entry function/ { fn = $0; sub(/.*function \047/, "", fn); sub(/\047.*/, "", fn);
                                  arch = $0; sub(/.*for \047/, "", arch); sub(/\047.*/, "", arch) }
     /bytes spill stores/ { spills[fn "\t" arch] = $5 + $9 }
     /Used [0-9]+ registers/ { regs[fn "\t" arch] = $5 }
     END { for (k in regs) print k "\t" regs[k] "\t" (k in spills ? spills[k] : 0) }' "$OUT/build.log" \
  | sort > "$OUT/ptxas.tsv"
[ -s "$OUT/ptxas.tsv" ] || { echo "[check_cuda_build] FAILED: no ptxas -v report in the build log" >&2; exit 1; }
{ printf '%-8s %5s %8s  %s\n' arch regs 'spill B' kernel
  while IFS=$'\t' read -r fn arch regs spill; do
    printf '%-8s %5s %8s  %s\n' "$arch" "$regs" "$spill" "$( (c++filt "$fn" 2>/dev/null || echo "$fn") | cut -c1-90)"
  done < "$OUT/ptxas.tsv"; } >&2
spilling=$(awk -F'\t' '$4 > 0' "$OUT/ptxas.tsv" | wc -l)
[ "$spilling" = 0 ] || { echo "[check_cuda_build] FAILED: $spilling C++ kernel builds spill registers" >&2; exit 1; }
echo "[check_cuda_build] ok: no C++ kernel spills; now the Triton kernels" >&2
env -u TRITON_INTERPRET "$VPY" "$ROOT/scripts/check_triton_build.py" >&2 \
  || { echo "[check_cuda_build] FAILED: a Triton kernel spills or does not compile (table above)" >&2; exit 1; }

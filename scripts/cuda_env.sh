# The one place that finds the CUDA toolkit for a build of the CUDA kernels (ours and mmcv's).
# Sourced by scripts/setup_env.sh, scripts/check_cuda_build.sh and scripts/gpu_check.sh.

# find_cuda_home: print the toolkit folder, or nothing when there is none. CUDA_HOME when it holds
# nvcc; else the nvcc on PATH, resolved: torch guesses CUDA_HOME from that nvcc's folder, and a
# wrapper script there (as /usr/local/bin/nvcc on some machines: `exec /usr/local/cuda-13.0/bin/nvcc
# "$@"`) makes it guess wrong; else /usr/local/cuda (torch's own last guess).
find_cuda_home() {
  if [ -n "${CUDA_HOME:-}" ] && [ -x "$CUDA_HOME/bin/nvcc" ]; then echo "$CUDA_HOME"; return; fi
  local nv home target
  if nv="$(command -v nvcc 2>/dev/null)"; then
    nv="$(readlink -f "$nv")"
    home="$(dirname "$(dirname "$nv")")"
    if [ -f "$home/include/cuda_runtime.h" ]; then echo "$home"; return; fi
    target="$(grep -oE '/[^ "]*/bin/nvcc' "$nv" 2>/dev/null | head -n1 || true)"
    if [ -n "$target" ] && [ -x "$target" ]; then dirname "$(dirname "$(readlink -f "$target")")"; return; fi
  fi
  if [ -x /usr/local/cuda/bin/nvcc ]; then readlink -f /usr/local/cuda; fi
}

# use_cuda_toolkit PYTHON: find the toolkit and export CUDA_HOME; fails (status 1, nothing exported)
# when there is none. torch's CUDA headers include cusparse.h, cublas_v2.h & co., which a slim toolkit
# lacks: then the headers of pip's CUDA 13 libraries (nvidia/cu13/include in PYTHON's site-packages,
# installed with torch) go on the include paths. A full toolkit keeps its own headers only.
use_cuda_toolkit() {
  local home site inc
  home="$(find_cuda_home)"
  [ -n "$home" ] || return 1
  export CUDA_HOME="$home"
  [ -f "$home/include/cusparse.h" ] && return 0
  site="$("$1" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])' 2>/dev/null)" || return 0
  inc="$site/nvidia/cu13/include"
  if [ -d "$inc" ]; then
    export CPLUS_INCLUDE_PATH="${CPLUS_INCLUDE_PATH:+$CPLUS_INCLUDE_PATH:}$inc"
    export NVCC_APPEND_FLAGS="${NVCC_APPEND_FLAGS:-} -I$inc"
  fi
}

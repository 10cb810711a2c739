# Sourced by tools/setup_env.sh and tools/check_cuda_build.sh: find the CUDA toolkit and set the
# variables torch.utils.cpp_extension needs to compile CUDA sources with it.

# torch guesses CUDA_HOME from the nvcc on PATH; a wrapper script there (as /usr/local/bin/nvcc on
# some machines: `exec /usr/local/cuda-13.0/bin/nvcc "$@"`) makes it guess wrong, so resolve the real
# toolkit folder. Prints nothing when no toolkit is found.
find_cuda_home() {
  if [ -n "${CUDA_HOME:-}" ] && [ -x "$CUDA_HOME/bin/nvcc" ]; then echo "$CUDA_HOME"; return; fi
  local nv; nv="$(command -v nvcc 2>/dev/null)" || return 0
  nv="$(readlink -f "$nv")"
  local home; home="$(dirname "$(dirname "$nv")")"
  if [ -f "$home/include/cuda_runtime.h" ]; then echo "$home"; return; fi
  local target; target="$(grep -oE '/[^ "]*/bin/nvcc' "$nv" 2>/dev/null | head -n1 || true)"
  if [ -n "$target" ] && [ -x "$target" ]; then dirname "$(dirname "$(readlink -f "$target")")"; fi
}

# cuda_env CUDA_HOME SITE_PACKAGES: export CUDA_HOME, and add pip's CUDA 13 headers (cusparse.h & co.,
# which torch's CUDA headers include and a slim toolkit may lack) to the include paths.
cuda_env() {
  export CUDA_HOME="$1"
  local inc="$2/nvidia/cu13/include"
  if [ -d "$inc" ]; then
    export CPLUS_INCLUDE_PATH="${CPLUS_INCLUDE_PATH:+$CPLUS_INCLUDE_PATH:}$inc"
    export NVCC_APPEND_FLAGS="${NVCC_APPEND_FLAGS:-} -I$inc"
  fi
}

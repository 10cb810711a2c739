#!/usr/bin/env bash
# Create or update the project's virtualenv at .venv/ with a pinned, working OpenMMLab stack:
#   torch 2.14.1 / torchvision 0.29.1, mmengine 0.10.x, mmcv 2.1.0, mmdet 3.3.0, pycocotools, test and lint
#   tools, and this package (editable, with its compiled extension dcn_plugin._C and its configs linked as
#   dcn_plugin/.mim).
#
# mmcv, two ways:
#   default       mmcv-lite 2.1.0 (mmcv's Python without its compiled operators; seconds to install) plus
#                 compat/mmcv_ext, this repository's one-file distribution of mmcv._ext: nms and RoIAlign run
#                 on torchvision, mmcv's deformable layers on dcn_plugin's operators, and every other mmcv
#                 operator raises a NotImplementedError that says what to install (compat/mmcv_ext/mmcv/_ext.py)
#   --full-mmcv   (or DCN_PLUGIN_FULL_MMCV=1) mmcv 2.1.0 compiled from source with all its operators. Its
#                 setup.py neither imports on current setuptools (pkg_resources) nor compiles against torch
#                 2.14's headers (C++17; torch needs C++20): the script patches both in a private copy, builds
#                 a wheel once (about 16 minutes CPU-only on 2 cores) and caches it under $DCN_PLUGIN_CACHE
#                 (default ~/.cache/dcn_plugin), keyed by torch version and CUDA/arch.
# Switching between the two uninstalls the other one.
#
# Idempotent: when everything is in place it only checks and prints one line.
# Environment:
#   DCN_PLUGIN_FULL_MMCV=1  the same as --full-mmcv
#   DCN_PLUGIN_CACHE   cache folder for the full mmcv wheel (default ~/.cache/dcn_plugin)
#   FORCE_CUDA=1       build CUDA kernels (ours, and mmcv's with --full-mmcv) even when no GPU is visible
#   TORCH_CUDA_ARCH_LIST, MAX_JOBS   honoured by both builds
#   PYTHON             the Python 3.11 interpreter to create the venv with (default python3.11/python3)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$ROOT/.venv"
CACHE="${DCN_PLUGIN_CACHE:-$HOME/.cache/dcn_plugin}"
TORCH_VER=2.14.1
TV_VER=0.29.1
MMCV_VER=2.1.0
MMENGINE_SPEC="mmengine>=0.10.5,<0.11"
MMDET_VER=3.3.0
RUFF_SPEC="ruff>=0.17,<0.18"
PIP_QUIET=(-q --disable-pip-version-check)
FULL_MMCV="${DCN_PLUGIN_FULL_MMCV:-0}"
for arg in "$@"; do
  case "$arg" in
    --full-mmcv) FULL_MMCV=1 ;;
    -h|--help) awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; exit 0 ;;
    *) echo "setup_env.sh: unknown argument $arg (try --help)" >&2; exit 2 ;;
  esac
done
[ "$FULL_MMCV" = 0 ] || [ "$FULL_MMCV" = 1 ] || { echo "setup_env.sh: DCN_PLUGIN_FULL_MMCV must be 0 or 1" >&2; exit 2; }

SETUP_START=$(date +%s)
log() { printf '[setup_env] %s (%d s)\n' "$*" "$(( $(date +%s) - SETUP_START ))" >&2; }
mkdir -p "$ROOT/work_dirs"

# shellcheck source=scripts/cuda_env.sh
source "$ROOT/scripts/cuda_env.sh"

# ---------------------------------------------------------------- venv + pinned stack
if [ ! -x "$VENV/bin/python" ]; then
  PY="${PYTHON:-$(command -v python3.11 || command -v python3)}"
  log "creating $VENV with $("$PY" --version 2>&1)"
  "$PY" -m venv "$VENV"
fi
VPY="$VENV/bin/python"
# pip, minus the noise of this machine's local index folders
vpip() {
  local rc=0
  "$VPY" -m pip "${PIP_QUIET[@]}" "$@" > "$ROOT/work_dirs/.pip.log" 2>&1 || rc=$?
  grep -vE "is ignored: it is neither a file nor a directory|Running pip as the 'root' user|dependency resolver does not|requires .*, but you have|^$" "$ROOT/work_dirs/.pip.log" >&2 || true
  return $rc
}

if ! "$VPY" -c "import packaging" 2>/dev/null; then vpip install packaging; fi

# One resolver run for torch and everything that installs with its dependencies: the build tools of our
# extension, the runtime needs of mmengine/mmdet/mmcv (opencv as the headless build: mmcv-lite's metadata asks
# for the GUI one, so mmcv-lite itself installs without dependencies below), the 'tests' and 'deploy' extras.
# torch needs setuptools>=77; mmengine 0.10 finds 'mmdet::' base configs through pkg_resources, which
# setuptools 81 removed: keep it below 81.
REQS=("torch==$TORCH_VER" "torchvision==$TV_VER" "setuptools>=77,<81" wheel ninja numpy pytest pytest-timeout
      "$RUFF_SPEC" "$MMENGINE_SPEC" pycocotools six scipy terminaltables shapely tqdm matplotlib
      opencv-python-headless addict pillow pyyaml yapf rich termcolor regex "onnx>=1.23" "onnxscript>=0.7"
      "onnxruntime>=1.32")
HAVE_SPECS=("mmdet;==$MMDET_VER")
for r in "${REQS[@]}"; do
  name="${r%%[<>=]*}"; spec="${r:${#name}}"
  if [ -n "$spec" ]; then HAVE_SPECS+=("$name;$spec"); else HAVE_SPECS+=("$name"); fi
done
EXT_SRC="$ROOT/compat/mmcv_ext/mmcv/_ext.py"
# everything there is to know, from one Python start (sets REQS_MET GPU_VISIBLE MMCV_OK EXT_OK INSTALL_OK STACK_OK)
env_status() {
  eval "$("$VPY" "$ROOT/scripts/env_status.py" --mmcv "$([ "$FULL_MMCV" = 1 ] && echo full || echo lite)" \
    --mmcv-version "$MMCV_VER" --ext-src "$EXT_SRC" -- "${HAVE_SPECS[@]}" 2>/dev/null || echo REQS_MET=0)"
}
env_status
CHANGED=0
if [ "${REQS_MET:-0}" != 1 ]; then
  log "installing torch==$TORCH_VER torchvision==$TV_VER and the build, runtime and test requirements"
  vpip install "${REQS[@]}"
  vpip install --no-deps "mmdet==$MMDET_VER"  # its requirements are in REQS
  CHANGED=1
  env_status
fi

CUDA_HOME_FOUND="$(find_cuda_home || true)"
WANT_CUDA=0
if [ -n "$CUDA_HOME_FOUND" ] && { [ "${GPU_VISIBLE:-0}" = 1 ] || [ "${FORCE_CUDA:-0}" = 1 ]; }; then WANT_CUDA=1; fi

# ---------------------------------------------------------------- mmcv 2.1.0: lite + our _ext, or the full build
if [ "$FULL_MMCV" = 1 ]; then
  if [ "$WANT_CUDA" = 1 ]; then
    MMCV_FLAVOUR="full_cu$("$VPY" -c 'import torch; print(torch.version.cuda.replace(".", ""))')_$(echo "${TORCH_CUDA_ARCH_LIST:-native}" | tr -c 'A-Za-z0-9.\n' '-')"
  else
    MMCV_FLAVOUR=full_cpu
  fi
else
  MMCV_FLAVOUR=lite
fi
MMCV_STAMP="$VENV/.mmcv-flavour"
if [ "${MMCV_OK:-0}" != 1 ] || [ "$(cat "$MMCV_STAMP" 2>/dev/null)" != "$MMCV_FLAVOUR" ]; then
  CHANGED=1
  # one mmcv at a time: the other way's files go first (both write the mmcv package)
  "$VPY" -m pip "${PIP_QUIET[@]}" uninstall -y mmcv mmcv-lite dcn-plugin-mmcv-ext > /dev/null 2>&1 || true
  if [ "$FULL_MMCV" = 0 ]; then
    log "installing mmcv-lite $MMCV_VER and mmcv._ext from compat/mmcv_ext (no mmcv compile)"
    vpip install --no-deps --no-build-isolation "mmcv-lite==$MMCV_VER" "$ROOT/compat/mmcv_ext"
  else
    MMCV_CACHE="$CACHE/mmcv-${MMCV_VER}_torch${TORCH_VER}_${MMCV_FLAVOUR#full_}"
    WHEEL="$(ls "$MMCV_CACHE"/mmcv-*.whl 2>/dev/null | head -n1 || true)"
    if [ -z "$WHEEL" ]; then
      log "building the full mmcv $MMCV_VER with its operators ($MMCV_FLAVOUR) once; cached in $MMCV_CACHE"
      log "  (CPU-only: about 16 min measured on 2 cores; with CUDA ops much longer, not measured here)"
      WORK="$(mktemp -d)"; trap 'rm -rf "$WORK"' EXIT
      # pip runs setup.py egg_info even to download an sdist, and mmcv's imports pkg_resources:
      # fetch it from a throwaway venv whose setuptools still has it.
      "$VPY" -m venv "$WORK/dlenv"
      "$WORK/dlenv/bin/python" -m pip "${PIP_QUIET[@]}" install "setuptools<70" wheel > "$WORK/dl.log" 2>&1 \
        && "$WORK/dlenv/bin/python" -m pip "${PIP_QUIET[@]}" download --no-deps --no-binary=:all: --no-build-isolation \
             "mmcv==$MMCV_VER" -d "$WORK" >> "$WORK/dl.log" 2>&1 \
        || { cat "$WORK/dl.log" >&2; log "could not download the mmcv $MMCV_VER source"; exit 1; }
      tar -xzf "$WORK"/mmcv-"$MMCV_VER".tar.gz -C "$WORK"
      "$VPY" "$ROOT/scripts/patch_mmcv_setup.py" "$WORK/mmcv-$MMCV_VER/setup.py"
      (
        cd "$WORK/mmcv-$MMCV_VER"
        export MMCV_WITH_OPS=1 MAX_JOBS="${MAX_JOBS:-$(nproc)}"
        if [ "$WANT_CUDA" = 1 ]; then use_cuda_toolkit "$VPY"; export FORCE_CUDA=1; else export FORCE_CUDA=0; unset CUDA_HOME || true; fi
        start=$(date +%s)
        "$VPY" -m pip wheel "${PIP_QUIET[@]}" --no-deps --no-build-isolation -w "$WORK/dist" . > "$WORK/build.log" 2>&1 \
          || { tail -n 60 "$WORK/build.log" >&2; log "mmcv build failed (full log: $WORK/build.log)"; trap - EXIT; exit 1; }
        log "mmcv built in $(( $(date +%s) - start )) s"
      )
      mkdir -p "$MMCV_CACHE"
      cp "$WORK"/dist/mmcv-*.whl "$MMCV_CACHE/"
      WHEEL="$(ls "$MMCV_CACHE"/mmcv-*.whl | head -n1)"
    fi
    log "installing $(basename "$WHEEL")"
    vpip install --force-reinstall --no-deps "$WHEEL"
  fi
  echo "$MMCV_FLAVOUR" > "$MMCV_STAMP"
fi

# ---------------------------------------------------------------- this package (editable) + _C
# missing, built from other sources, or built against another torch (the package's own import check), or
# installed from another version or another checkout (the version, the configs linked under .mim)
DCN_FLAVOUR="$([ "$WANT_CUDA" = 1 ] && echo "cuda_${TORCH_CUDA_ARCH_LIST:-native}" || echo cpu)"
DCN_STAMP="$VENV/.dcn-plugin-flavour"
if [ "${INSTALL_OK:-0}" != 1 ] || [ "${EXT_OK:-0}" != 1 ] || [ "$(cat "$DCN_STAMP" 2>/dev/null)" != "$DCN_FLAVOUR" ]; then
  CHANGED=1
  log "building dcn_plugin._C ($([ "$WANT_CUDA" = 1 ] && echo "CPU + CUDA" || echo "CPU only: no GPU visible; FORCE_CUDA=1 adds the CUDA kernels"))"
  ( cd "$ROOT"
    if [ "$WANT_CUDA" = 1 ]; then use_cuda_toolkit "$VPY"; export FORCE_CUDA=1; fi
    export MAX_JOBS="${MAX_JOBS:-$(nproc)}"
    "$VPY" -m pip install "${PIP_QUIET[@]}" --no-deps --no-build-isolation -e . > "$ROOT/work_dirs/.build_ext.log" 2>&1 \
      || { tail -n 80 "$ROOT/work_dirs/.build_ext.log" >&2; log "building dcn_plugin._C failed"; exit 1; } )
  echo "$DCN_FLAVOUR" > "$DCN_STAMP"
fi

if [ "$CHANGED" = 1 ] || [ "${STACK_OK:-0}" != 1 ]; then
  "$VPY" -c "import dcn_plugin, mmcv.ops, mmdet.models, torch; torch.ops.dcn_plugin" \
    || { log "environment check failed"; exit 1; }
fi
log "ready: $VENV (torch $TORCH_VER, mmcv $MMCV_VER [$MMCV_FLAVOUR], mmdet $MMDET_VER, dcn_plugin)"

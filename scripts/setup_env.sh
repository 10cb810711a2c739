#!/usr/bin/env bash
# Create or update the project's virtualenv at .venv/ with a pinned, working OpenMMLab stack:
#   torch 2.14.1 / torchvision 0.29.1, mmengine 0.10.x, mmcv 2.1.0 WITH its compiled ops, mmdet 3.3.0,
#   pycocotools, test and lint tools, and this package (editable, with its compiled extension dcn_plugin._C
#   and its configs linked as dcn_plugin/.mim).
#
# mmcv 2.1.0 (the newest mmcv that mmdet 3.3.0 accepts) is only published as source, and its setup.py
# neither imports on current setuptools (pkg_resources) nor compiles against torch 2.14's headers
# (it passes -std=c++17; torch needs C++20). This script patches those two things in a private copy
# of the source, builds a wheel once and caches it under $DCN_PLUGIN_CACHE (default
# ~/.cache/dcn_plugin), keyed by torch version and CUDA/arch, so later runs and CI reuse it.
#
# Idempotent: when everything is in place it only checks and prints one line.
# Environment:
#   DCN_PLUGIN_CACHE   cache folder for the mmcv wheel (default ~/.cache/dcn_plugin)
#   FORCE_CUDA=1       build CUDA kernels (ours and mmcv's) even when no GPU is visible
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

log() { printf '[setup_env] %s\n' "$*" >&2; }

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

# have SPEC...: every distribution installed in an allowed version ("name" or "name;specifier")
have() { "$VPY" "$ROOT/scripts/requirements_met.py" "$@" 2>/dev/null; }

if ! "$VPY" -c "import packaging" 2>/dev/null; then vpip install packaging; fi

if ! have "torch;==$TORCH_VER" "torchvision;==$TV_VER"; then
  log "installing torch==$TORCH_VER torchvision==$TV_VER (about a minute from the local wheel cache)"
  vpip install "torch==$TORCH_VER" "torchvision==$TV_VER"
fi
# build tools for our extension and mmcv. torch needs setuptools>=77; mmengine 0.10 finds 'mmdet::'
# base configs through pkg_resources, which setuptools 81 removed: keep it below 81 (mmcv's setup.py
# is patched below and needs neither).
# (onnx, onnxscript, onnxruntime: the package's 'deploy' extra, for ONNX export and its tests; pytest,
# pytest-timeout, ruff: its 'tests' extra, for the tests and the lint)
if ! have "setuptools;>=77,<81" wheel ninja numpy pytest pytest-timeout "${RUFF_SPEC/>=/;>=}" "${MMENGINE_SPEC/>=/;>=}" pycocotools six scipy terminaltables shapely tqdm matplotlib "onnx;>=1.23" "onnxscript;>=0.7" "onnxruntime;>=1.32"; then
  log "installing build and runtime requirements"
  vpip install "setuptools>=77,<81" wheel ninja numpy pytest pytest-timeout "$RUFF_SPEC" "$MMENGINE_SPEC" pycocotools six scipy terminaltables shapely tqdm matplotlib opencv-python-headless "onnx>=1.23" "onnxscript>=0.7" "onnxruntime>=1.32"
fi

CUDA_HOME_FOUND="$(find_cuda_home || true)"
GPU_VISIBLE="$("$VPY" -c 'import torch; print(int(torch.cuda.is_available()))' 2>/dev/null || echo 0)"
WANT_CUDA=0
if [ -n "$CUDA_HOME_FOUND" ] && { [ "$GPU_VISIBLE" = 1 ] || [ "${FORCE_CUDA:-0}" = 1 ]; }; then WANT_CUDA=1; fi

# ---------------------------------------------------------------- mmcv 2.1.0 with ops
mmcv_ok() { "$VPY" -c "import mmcv, mmcv.ops; from mmcv.ops import nms, RoIAlign; assert mmcv.__version__ == '$MMCV_VER'" 2>/dev/null; }
mmcv_has_cuda() { "$VPY" -c "import mmcv.ops, torch, sys; from mmcv.utils import ext_loader; e = ext_loader.load_ext('_ext', ['nms']); sys.exit(0)" 2>/dev/null; }
if [ "$WANT_CUDA" = 1 ]; then
  MMCV_FLAVOUR="cu$("$VPY" -c 'import torch; print(torch.version.cuda.replace(".", ""))')_$(echo "${TORCH_CUDA_ARCH_LIST:-native}" | tr -c 'A-Za-z0-9.\n' '-')"
else
  MMCV_FLAVOUR=cpu
fi
MMCV_CACHE="$CACHE/mmcv-${MMCV_VER}_torch${TORCH_VER}_${MMCV_FLAVOUR}"
MMCV_STAMP="$VENV/.mmcv-flavour"
if ! mmcv_ok || [ "$(cat "$MMCV_STAMP" 2>/dev/null)" != "$MMCV_FLAVOUR" ]; then
  WHEEL="$(ls "$MMCV_CACHE"/mmcv-*.whl 2>/dev/null | head -n1 || true)"
  if [ -z "$WHEEL" ]; then
    log "building mmcv $MMCV_VER with ops ($MMCV_FLAVOUR) once; cached in $MMCV_CACHE"
    log "  (CPU-only: about 8-10 min measured on 2 cores; with CUDA ops much longer, not measured here)"
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
  vpip install addict rich termcolor yapf pyyaml regex "opencv-python-headless" pillow
  echo "$MMCV_FLAVOUR" > "$MMCV_STAMP"
fi

if ! have "mmdet;==$MMDET_VER"; then
  log "installing mmdet==$MMDET_VER"
  vpip install --no-deps "mmdet==$MMDET_VER"
  vpip install pycocotools scipy shapely six terminaltables tqdm matplotlib
fi

# ---------------------------------------------------------------- this package (editable) + _C
# missing, built from other sources, or built against another torch (the package's own import check), or
# installed from another version or another checkout (the version, the configs linked under .mim)
ext_stale() { ! "$VPY" -c "import dcn_plugin.ops" 2>/dev/null; }
install_stale() {
  ! "$VPY" -c "import importlib.metadata as m, dcn_plugin.version as v; assert m.version('dcn_plugin') == v.__version__" \
      2>/dev/null || [ ! -e "$ROOT/dcn_plugin/.mim/configs" ]
}
DCN_FLAVOUR="$([ "$WANT_CUDA" = 1 ] && echo "cuda_${TORCH_CUDA_ARCH_LIST:-native}" || echo cpu)"
DCN_STAMP="$VENV/.dcn-plugin-flavour"
if install_stale || ext_stale \
    || [ "$(cat "$DCN_STAMP" 2>/dev/null)" != "$DCN_FLAVOUR" ]; then
  log "building dcn_plugin._C ($([ "$WANT_CUDA" = 1 ] && echo "CPU + CUDA" || echo CPU))"
  ( cd "$ROOT"
    if [ "$WANT_CUDA" = 1 ]; then use_cuda_toolkit "$VPY"; export FORCE_CUDA=1; fi
    "$VPY" -m pip install "${PIP_QUIET[@]}" --no-deps --no-build-isolation -e . > "$ROOT/work_dirs/.build_ext.log" 2>&1 \
      || { tail -n 80 "$ROOT/work_dirs/.build_ext.log" >&2; log "building dcn_plugin._C failed"; exit 1; } )
  echo "$DCN_FLAVOUR" > "$DCN_STAMP"
fi

"$VPY" -c "import dcn_plugin, mmcv.ops, mmdet, torch; torch.ops.dcn_plugin" \
  || { log "environment check failed"; exit 1; }
log "ready: $VENV (torch $TORCH_VER, mmcv $MMCV_VER [$MMCV_FLAVOUR], mmdet $MMDET_VER, dcn_plugin)"

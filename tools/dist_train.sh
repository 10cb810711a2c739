#!/usr/bin/env bash
# Distributed training through torchrun:  bash tools/dist_train.sh CONFIG NPROC [train.py args...]
# Multi-node: NNODES, NODE_RANK, MASTER_ADDR, PORT (as mmdet's). On a machine without GPUs the
# processes use the gloo backend on the CPU (set up by tools/train.py), so NPROC CPU processes work.
# PYTHON picks the interpreter (default: the repo's .venv, else python). The launch: tools/dist_run.sh.
set -euo pipefail
[ $# -ge 2 ] || { sed -n 2p "$0" >&2; exit 2; }
exec bash "$(dirname "${BASH_SOURCE[0]}")/dist_run.sh" train.py "$2" "$1" "${@:3}"

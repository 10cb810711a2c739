#!/usr/bin/env bash
# Distributed testing through torchrun:  bash tools/dist_test.sh CONFIG CHECKPOINT NPROC [test.py args...]
# Multi-node: NNODES, NODE_RANK, MASTER_ADDR, PORT (as mmdet's). Without GPUs: gloo on the CPU.
# PYTHON picks the interpreter (default: the repo's .venv, else python). The launch: tools/dist_run.sh.
set -euo pipefail
[ $# -ge 3 ] || { sed -n 2p "$0" >&2; exit 2; }
exec bash "$(dirname "${BASH_SOURCE[0]}")/dist_run.sh" test.py "$3" "$1" "$2" "${@:4}"

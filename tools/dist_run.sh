#!/usr/bin/env bash
# Run one of the tools in NPROC processes per node through torchrun (what dist_train.sh and dist_test.sh do):
#   bash tools/dist_run.sh TOOL NPROC [TOOL args...]      e.g.  bash tools/dist_run.sh train.py 8 CONFIG
# Multi-node: NNODES, NODE_RANK, MASTER_ADDR, PORT (as mmdet's). On a machine without GPUs the processes use
# the gloo backend on the CPU (set up by the tools), so NPROC CPU processes work; OMP_NUM_THREADS defaults
# to 1 per process so that they do not oversubscribe the cores. PYTHON picks the interpreter (default: the
# repo's .venv, else python).
set -euo pipefail
[ $# -ge 2 ] || { sed -n 3p "$0" >&2; exit 2; }
TOOL=$1
NPROC=$2
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PY=${PYTHON:-$([ -x "$ROOT/.venv/bin/python" ] && echo "$ROOT/.venv/bin/python" || echo python)}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}" \
exec "$PY" -m torch.distributed.run \
    --nnodes="${NNODES:-1}" \
    --node_rank="${NODE_RANK:-0}" \
    --master_addr="${MASTER_ADDR:-127.0.0.1}" \
    --master_port="${PORT:-29500}" \
    --nproc_per_node="$NPROC" \
    "$ROOT/tools/$TOOL" "${@:3}" --launcher pytorch

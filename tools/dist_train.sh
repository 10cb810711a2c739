#!/usr/bin/env bash
# Distributed training through torchrun:  bash tools/dist_train.sh CONFIG NPROC [train.py args...]
# Multi-node: NNODES, NODE_RANK, MASTER_ADDR, PORT (as mmdet's). On a machine without GPUs the
# processes use the gloo backend on the CPU (set up by tools/train.py), so NPROC CPU processes work.
# PYTHON picks the interpreter (default: the repo's .venv, else python).
set -euo pipefail
CONFIG=$1
NPROC=$2
NNODES=${NNODES:-1}
NODE_RANK=${NODE_RANK:-0}
PORT=${PORT:-29500}
MASTER_ADDR=${MASTER_ADDR:-127.0.0.1}
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
PY=${PYTHON:-$([ -x "$ROOT/.venv/bin/python" ] && echo "$ROOT/.venv/bin/python" || echo python)}
# one thread per process unless told otherwise, so NPROC processes do not oversubscribe the cores
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}" \
exec "$PY" -m torch.distributed.run \
    --nnodes="$NNODES" \
    --node_rank="$NODE_RANK" \
    --master_addr="$MASTER_ADDR" \
    --master_port="$PORT" \
    --nproc_per_node="$NPROC" \
    "$ROOT/tools/train.py" "$CONFIG" --launcher pytorch "${@:3}"

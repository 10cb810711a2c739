#!/usr/bin/env bash
# Distributed testing through torchrun:  bash tools/dist_test.sh CONFIG CHECKPOINT NPROC [test.py args...]
# Multi-node: NNODES, NODE_RANK, MASTER_ADDR, PORT (as mmdet's). Without GPUs: gloo on the CPU.
# PYTHON picks the interpreter (default: the repo's .venv, else python).
set -euo pipefail
CONFIG=$1
CHECKPOINT=$2
NPROC=$3
NNODES=${NNODES:-1}
NODE_RANK=${NODE_RANK:-0}
PORT=${PORT:-29500}
MASTER_ADDR=${MASTER_ADDR:-127.0.0.1}
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
PY=${PYTHON:-$([ -x "$ROOT/.venv/bin/python" ] && echo "$ROOT/.venv/bin/python" || echo python)}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}" \
exec "$PY" -m torch.distributed.run \
    --nnodes="$NNODES" \
    --node_rank="$NODE_RANK" \
    --master_addr="$MASTER_ADDR" \
    --master_port="$PORT" \
    --nproc_per_node="$NPROC" \
    "$ROOT/tools/test.py" "$CONFIG" "$CHECKPOINT" --launcher pytorch "${@:4}"

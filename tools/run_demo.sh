#!/usr/bin/env bash
# The README's main command: see DCNv2 detect deformed shapes on your own CPU in about 15 minutes.
#
#   bash tools/run_demo.sh            # DCNv2 model (ResNet-18 + DCNv2 c3-c5, GN, from scratch)
#   bash tools/run_demo.sh --plain    # the same model and schedule with plain convs, for comparison
#   bash tools/run_demo.sh --fresh    # discard an earlier run of the same model and start over
#   bash tools/run_demo.sh --no-setup # skip scripts/setup_env.sh (.venv already set up)
#
# Steps: set up .venv (scripts/setup_env.sh, idempotent) -> generate data/demo/ if missing ->
# train (an interrupted run continues from its newest intact checkpoint; a final checkpoint left
# incomplete by a crash does not count as done) -> tools/test.py on val (COCO metrics
# table, saved to work_dirs/<config>/test_metrics.json) -> offset visualisation PNG (DCN model).
# On a busy machine, OMP_NUM_THREADS=1 is much faster than torch's default of one thread per core.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

MODEL=dcn
FRESH=0
SETUP=1
for arg in "$@"; do
  case "$arg" in
    --plain) MODEL=plain ;;
    --fresh) FRESH=1 ;;
    --no-setup) SETUP=0 ;;
    -h|--help) sed -n '2,13p' "$0"; exit 0 ;;
    *) echo "run_demo.sh: unknown argument $arg (try --help)" >&2; exit 2 ;;
  esac
done
if [ "$MODEL" = dcn ]; then
  CONFIG=configs/demo/faster-rcnn_r18-mdconv-c3-c5_fpn_gn-all_demo-shapes.py
else
  CONFIG=configs/demo/faster-rcnn_r18_fpn_gn-all_demo-shapes.py
fi
NAME="$(basename "$CONFIG" .py)"
WORK_DIR="work_dirs/$NAME"
DATA=data/demo
say() { printf '\n[run_demo] %s\n' "$*"; }
START=$(date +%s)

if [ "$SETUP" = 1 ]; then
  say "1/5 environment (scripts/setup_env.sh)"
  bash scripts/setup_env.sh
else
  say "1/5 environment: skipped (--no-setup)"
fi
PY="$ROOT/.venv/bin/python"

say "2/5 demo data in $DATA"
"$PY" tools/generate_demo_data.py --out "$DATA" --if-missing

if [ "$FRESH" = 1 ] && [ -d "$WORK_DIR" ]; then
  say "removing the earlier run in $WORK_DIR (--fresh)"
  rm -rf "$WORK_DIR"
fi
FINAL="$WORK_DIR/iter_$("$PY" -c "import dcn_plugin.apis as a; print(a.load_config('$CONFIG').train_cfg.max_iters)").pth"
T0=$(date +%s)
# the final checkpoint counts only if it is complete (checked without unpickling it)
PROBLEM=""
if [ -e "$FINAL" ]; then
  PROBLEM="$("$PY" -c "import sys; from dcn_plugin.utils.checkpoint import checkpoint_problem as p; print(p(sys.argv[1]) or '')" "$FINAL")"
fi
if [ -e "$FINAL" ] && [ -z "$PROBLEM" ]; then
  say "3/5 training: already done ($FINAL; --fresh trains again)"
  CKPT="$FINAL"
else
  if [ -n "$PROBLEM" ]; then
    say "3/5 the final checkpoint $FINAL $PROBLEM: training resumes from the newest intact checkpoint"
  fi
  # the newest intact checkpoint of an earlier run, the one train.py --resume takes (none: from scratch)
  RESUME_FROM="$("$PY" -c "import sys; from dcn_plugin.utils.checkpoint import find_resume_checkpoint as f; print(f(sys.argv[1])[0] or '')" "$WORK_DIR")"
  if [ -n "$RESUME_FROM" ]; then
    say "3/5 training $NAME: continues the interrupted run from $RESUME_FROM (log and checkpoints in $WORK_DIR)"
  else
    say "3/5 training $NAME from scratch (log and checkpoints in $WORK_DIR)"
  fi
  "$PY" tools/train.py "$CONFIG" --work-dir "$WORK_DIR" --resume
  CKPT="$(cat "$WORK_DIR/last_checkpoint")"
fi
TRAIN_S=$(( $(date +%s) - T0 ))

say "4/5 COCO evaluation on val ($CKPT)"
T0=$(date +%s)
"$PY" tools/test.py "$CONFIG" "$CKPT" --work-dir "$WORK_DIR"
TEST_S=$(( $(date +%s) - T0 ))

if [ "$MODEL" = dcn ]; then
  say "5/5 offset visualisation"
  # stage c3 (stride 8): on 256 px images the c5 layers learn offsets that reach outside the image
  "$PY" tools/visualize_offsets.py "$CONFIG" "$CKPT" "$DATA/val/000000.png" --layers backbone.layer2 \
    --out "$WORK_DIR/offsets_val_000000.png"
else
  say "5/5 offset visualisation: skipped (the plain model has no deformable layers)"
fi

TOTAL_S=$(( $(date +%s) - START ))
printf '\n[run_demo] %s' "$("$PY" tools/collect_metrics.py "$WORK_DIR" --brief)"
minsec() { echo "$(( $1 / 60 )) min $(( $1 % 60 )) s"; }
printf '\n[run_demo] time: train %s, test %s s, total %s  (metrics: %s)\n' \
  "$(minsec "$TRAIN_S")" "$TEST_S" "$(minsec "$TOTAL_S")" "$WORK_DIR/test_metrics.json"

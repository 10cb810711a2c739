#!/usr/bin/env bash
# The R-CNN feature mimicking study on the demo data: DCNv2 and plain conv, each with and without
# mimicking, same data and schedule, several seeds; then one table of each arm's mean and spread.
#
#   bash tools/mimic_study.sh [--seeds "0 1"] [--data DIR] [--out DIR] [--iters N] [--arms "CFG ..."]
#
#   --seeds   seeds per arm (default "0 1"); each run trains with --cfg-options randomness.seed=S
#   --data    demo data root (default data/demo, generated when missing)
#   --out     where the runs go: OUT/<config>/seed<S>/ (default work_dirs/mimic_study)
#   --iters   override the configs' 1500 iterations (a smoke test of the pipeline: use its own --out; the
#             learning-rate schedule stays the configs', so short runs say nothing about the study)
#   --arms    config names under configs/demo/ (default: the plain and the DCNv2 demo models, each
#             without and with mimicking)
#   --options extra "key=value ..." config overrides for training and testing (an ablation, e.g.
#             "model.roi_head.loss_mimic_weight=0.01"); needs --variant
#   --variant name of the ablation: its runs go to OUT/<config>@<variant>/seed<S>/ and form the arm
#             <config>@<variant> of the table
#
# A finished run (test_metrics.json present) is skipped; an interrupted one continues from its last
# checkpoint. The table goes to OUT/results.md (tools/collect_metrics.py). Python: $PYTHON, else .venv.
# Runs one process with one thread at a time: OMP_NUM_THREADS defaults to 1 here.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
PY="${PYTHON:-$ROOT/.venv/bin/python}"

SEEDS="0 1"
DATA=data/demo
OUT=work_dirs/mimic_study
ITERS=""
EXTRA=""
VARIANT=""
ARMS="faster-rcnn_r18_fpn_gn-all_demo-shapes faster-rcnn_r18_fpn_gn-all_mimic_demo-shapes
faster-rcnn_r18-mdconv-c3-c5_fpn_gn-all_demo-shapes faster-rcnn_r18-mdconv-c3-c5_fpn_gn-all_mimic_demo-shapes"
while [ $# -gt 0 ]; do
  case "$1" in
    --seeds) SEEDS="$2"; shift 2 ;;
    --data) DATA="$2"; shift 2 ;;
    --out) OUT="$2"; shift 2 ;;
    --iters) ITERS="$2"; shift 2 ;;
    --arms) ARMS="$2"; shift 2 ;;
    --options) EXTRA="$2"; shift 2 ;;
    --variant) VARIANT="$2"; shift 2 ;;
    -h|--help) sed -n '2,22p' "$0"; exit 0 ;;
    *) echo "mimic_study.sh: unknown argument $1 (try --help)" >&2; exit 2 ;;
  esac
done
if [ -n "$ITERS" ] && ! [[ "$ITERS" =~ ^[1-9][0-9]*$ ]]; then
  echo "mimic_study.sh: --iters needs a positive integer, got '$ITERS'" >&2; exit 2
fi
for seed in $SEEDS; do
  [[ "$seed" =~ ^[0-9]+$ ]] || { echo "mimic_study.sh: --seeds needs integers >= 0, got '$seed'" >&2; exit 2; }
done
if [ -n "$EXTRA" ] && [ -z "$VARIANT" ]; then
  echo "mimic_study.sh: --options needs --variant NAME (the runs of an ablation need their own folder)" >&2; exit 2
fi
if [ -n "$VARIANT" ] && ! [[ "$VARIANT" =~ ^[A-Za-z0-9._-]+$ ]]; then
  echo "mimic_study.sh: --variant takes letters, digits, '.', '_' and '-', got '$VARIANT'" >&2; exit 2
fi
[ -n "$SEEDS" ] && [ -n "$ARMS" ] || { echo "mimic_study.sh: --seeds and --arms must not be empty" >&2; exit 2; }
for arm in $ARMS; do
  [ -f "configs/demo/$arm.py" ] || { echo "mimic_study.sh: no config configs/demo/$arm.py" >&2; exit 2; }
done

"$PY" tools/generate_demo_data.py --out "$DATA" --if-missing
OPTIONS=("data_root=$DATA")
[ -z "$ITERS" ] || OPTIONS+=("train_cfg.max_iters=$ITERS")
# shellcheck disable=SC2206  # word splitting of "key=value ..." is the point
[ -z "$EXTRA" ] || OPTIONS+=($EXTRA)

RUNS=()
for arm in $ARMS; do
  for seed in $SEEDS; do
    WD="$OUT/$arm${VARIANT:+@$VARIANT}/seed$seed"
    RUNS+=("$WD")
    if [ -f "$WD/test_metrics.json" ]; then
      echo "[mimic_study] $arm seed $seed: done ($WD/test_metrics.json)"
      continue
    fi
    echo "[mimic_study] $arm seed $seed: training in $WD"
    "$PY" tools/train.py "configs/demo/$arm.py" --work-dir "$WD" --resume \
      --cfg-options "${OPTIONS[@]}" "randomness.seed=$seed"
    "$PY" tools/test.py "configs/demo/$arm.py" "$(cat "$WD/last_checkpoint")" --work-dir "$WD" \
      --cfg-options "${OPTIONS[@]}"
  done
done
"$PY" tools/collect_metrics.py "${RUNS[@]}" --arm-from dir --out "$OUT/results.md"
echo "[mimic_study] table: $OUT/results.md"

#!/bin/bash
# IsoFLOP sweep on a CPU: tiny MDMs and ARMs (byte tokenizer) on the built-in synthetic corpus or
# a text file of yours (DATA=...), three compute budgets, final validation losses fitted with
# L(C) = a * C^(-alpha). See README.md here.
#
#   bash examples/scaling_law/run_cpu.sh               # from anywhere; ~15 min on 2 idle cores
#   DATA=path/to/input.txt bash examples/scaling_law/run_cpu.sh      # e.g. tinyshakespeare
#   OUT=runs/my_sweep BUDGETS="1e11 3e11" bash examples/scaling_law/run_cpu.sh
#
# Re-running continues an interrupted sweep: finished runs are skipped.
set -eu -o pipefail
DATA=${DATA:-}   # a plain-text file (relative to where you run this); empty: the synthetic corpus
if [ -n "$DATA" ]; then
    DATA=$(realpath -m -- "$DATA")
fi
cd "$(dirname "$0")/../.."

PY=${PY:-.venv/bin/python}
OUT=${OUT:-runs/scaling_law_cpu}
RESULTS=${RESULTS:-examples/scaling_law/results}
BUDGETS=${BUDGETS:-"3e10 1e11 3e11"}
SIZES=${SIZES:-"1x16x1,1x24x2,1x32x2,1x48x3,2x48x3,2x64x4"}
TOKENS_PER_PARAM=${TOKENS_PER_PARAM:-"2.5 400"}
ROUNDS=${ROUNDS:-3}   # train + bracket rounds (0: plan only, then `run` trains the plan as is)
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}

DATA_ARGS=()
CORPUS="synthetic corpus"
if [ -n "$DATA" ]; then
    if [ ! -f "$DATA" ]; then
        echo "run_cpu.sh: DATA=$DATA: no such file" >&2
        exit 2
    fi
    DATA_ARGS=(--override "data.text_file=$DATA")
    CORPUS=$(basename "$DATA")
fi
TITLE=${TITLE:-"tiny MDM vs ARM, $CORPUS, CPU"}   # the plot's title

# One config per (objective, size, budget), sizes kept where 2.5 <= tokens/params <= 400 (a
# window around each budget's optimum: 4 sizes per budget). seq 128 x 8 sequences = 1024 tokens
# per step: at these budgets loss is limited by optimizer steps, and bigger batches hand every
# minimum to the smallest model. Validation: 16 batches of 8 (half the valid split). No
# checkpoints (runs are short), no TensorBoard. With ROUNDS > 0 the sweep trains too: after each
# round it fits every IsoFLOP parabola and, where the minimum is at the smallest or largest size,
# adds the next two sizes of the ladder (1x6x1 ... 4x128x8) that way, up to ROUNDS rounds.
# shellcheck disable=SC2086  # BUDGETS and TOKENS_PER_PARAM are lists
"$PY" tools/scaling_law.py sweep --budgets $BUDGETS --sizes "$SIZES" --objectives mdm,arm \
    --tokens-per-param $TOKENS_PER_PARAM \
    --out "$OUT" --seq-length 128 --global-batch 8 --micro-batch 8 --eval-iters 16 \
    "${DATA_ARGS[@]}" \
    --override checkpoint.save_interval=0 --override checkpoint.save_at_end=false \
    --override logging.tensorboard=false --override logging.progress=false \
    --rounds "$ROUNDS"
if [ "$ROUNDS" = 0 ]; then
    "$PY" tools/scaling_law.py run "$OUT"
fi
echo "sweep wall time: $SECONDS s"

mkdir -p "$RESULTS"
"$PY" tools/scaling_law.py collect "$OUT" -o "$RESULTS/results.csv"
"$PY" tools/scaling_law.py fit "$RESULTS/results.csv" --plot "$RESULTS/isoflop.png" \
    --title "$TITLE" | tee "$RESULTS/fit.txt"

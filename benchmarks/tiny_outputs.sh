#!/bin/bash
# Runs the demo and every experiment's tiny run (4 training steps, 2 seeds where the script
# trains several) into OUT_DIR, so that a refactor can be checked to change no number:
#
#   bash benchmarks/tiny_outputs.sh /tmp/before      # on the old commit
#   bash benchmarks/tiny_outputs.sh /tmp/after       # on the new one
#   python -m benchmarks.compare_outputs /tmp/before /tmp/after
#
# About 28 CPU-minutes on a 2-core CPU. PYTHON defaults to .venv/bin/python.
set -u
OUT=$(realpath -m "$1"); mkdir -p "$OUT"
PY=${PYTHON:-.venv/bin/python}
export MPLBACKEND=Agg XLA_PYTHON_CLIENT_PREALLOCATE=false
DATA=$OUT/tfds
TINY="--config tiny --config.data_dir=$DATA --config.num_train_steps=4"
run() {
  name=$1; shift; echo "== $name $(date +%T)"
  ( time "$PY" -m "$@" ) > "$OUT/$name.log" 2>&1 || echo "FAILED $name (see $OUT/$name.log)"
}
run demo experiments.demo --workdir "$OUT/demo" --config.num_train_steps=4 \
  --config.data_dir="$DATA" --num_seeds=2 --full_size_flops=false
run ce_spectrum experiments.ce_spectrum --workdir "$OUT/ce_spectrum" $TINY --num_seeds=2
run band_limit_sweep experiments.band_limit_sweep --workdir "$OUT/band_limit_sweep" \
  --from_ce_spectrum="$OUT/ce_spectrum"
run flops_table experiments.flops_table --workdir "$OUT/flops"
run spectral_gradient experiments.spectral_gradient --workdir "$OUT/spectral_gradient" $TINY
run feature_truncation experiments.feature_truncation --workdir "$OUT/feature_truncation" \
  $TINY --num_seeds=2
run blockwise_annotation experiments.blockwise_annotation \
  --workdir "$OUT/blockwise_annotation" $TINY --num_seeds=2
run aliasing experiments.aliasing --workdir "$OUT/aliasing" $TINY
run frequency_input experiments.frequency_input --workdir "$OUT/frequency_input" $TINY
run frequency_masking experiments.frequency_masking --workdir "$OUT/frequency_masking" $TINY
run train experiments.train --workdir "$OUT/train" $TINY
echo "== done $(date +%T)"

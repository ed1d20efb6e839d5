#!/usr/bin/env bash
# The accelerator check in one command (benchmarks/README.md, "Accelerator check").
#
#   benchmarks/accelerator_check.sh [OUT_DIR] [options of benchmarks.accelerator_check]
#
# Run from anywhere; it works in the repository root. OUT_DIR (default: $OUT, the device
# tool's result folder, else runs/accelerator_check) receives accelerator_check.json,
# accelerator_check.md and the log. If accelerator_wheels/ holds wheels
# (benchmarks/fetch_accelerator_wheels.sh, on a machine with network access), they are
# installed first, offline and without resolving dependencies, into a private folder put
# first on PYTHONPATH. The check stops after CHECK_TIMEOUT_S seconds (default 570) with
# what it measured so far written out.
set -euo pipefail
cd "$(dirname "$0")/.."

python="${PYTHON:-python3}"
out="${OUT:-runs/accelerator_check}"
if [ $# -gt 0 ] && [ "${1#-}" = "$1" ]; then
  out="$1"
  shift
fi
wheels="${WHEELS:-accelerator_wheels}"
if compgen -G "$wheels/*.whl" >/dev/null; then
  site="${SITE:-/tmp/accelerator_site}"
  "$python" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target "$site" "$wheels"/*.whl
  export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}"
fi
# JAX takes device memory as it needs it (PyTorch runs in the same process).
export XLA_PYTHON_CLIENT_PREALLOCATE=false PYTHONUNBUFFERED=1
mkdir -p "$out"
timeout --signal=INT --kill-after=20 "${CHECK_TIMEOUT_S:-570}" \
  "$python" -m benchmarks.accelerator_check --out "$out" "$@" 2>&1 | tee "$out/accelerator_check.log"

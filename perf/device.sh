#!/usr/bin/env bash
# One GPU call: the whole test suite on the H100, then the benchmarks, then a results table.
#   bash perf/device.sh [tests|perf|all] [extra pytest args for the perf step...]
# Writes under $OUT (the device tool's output folder; ./.out elsewhere): env.txt, tests.log,
# perf.log, bench.json, report.md. The regression gate: when perf/baseline/ holds a stored run
# for this machine, the benchmarks are compared against it and a median more than 25% slower fails.
set -uo pipefail
mode=${1:-all}; shift || true
OUT=${OUT:-$PWD/.out}; mkdir -p "$OUT"
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1 HYPOTHESIS_PROFILE=${HYPOTHESIS_PROFILE:-gpu}
# Side-by-side peers (flash-linear-attention) travel as wheels in .whl/, never into the package.
if compgen -G ".whl/*.whl" >/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH=$PYTHONPATH:/tmp/site
fi
{ date -u; nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.max.sm --format=csv;
  python3 -c 'import torch, triton, transformers; print("torch", torch.__version__, "triton", triton.__version__, "transformers", transformers.__version__)'; } | tee "$OUT/env.txt"
rc=0
if [[ $mode == tests || $mode == all ]]; then
  timeout 330 python3 -m pytest tests -q -x -p no:cacheprovider --durations=15 2>&1 | tee "$OUT/tests.log"; rc=$((rc | $?))
fi
if [[ $mode == perf || $mode == all ]]; then
  gate=()
  if compgen -G "perf/baseline/*/*.json" >/dev/null; then
    gate=(--benchmark-storage=file://perf/baseline --benchmark-compare --benchmark-compare-fail=median:25%)
  fi
  timeout 420 python3 -m pytest perf -q -p no:cacheprovider --benchmark-json="$OUT/bench.json" \
    --benchmark-columns=median,rounds --benchmark-sort=name "${gate[@]}" "$@" 2>&1 | tee "$OUT/perf.log"; rc=$((rc | $?))
  python3 perf/report.py "$OUT/bench.json" | tee "$OUT/report.md"
fi
exit $rc

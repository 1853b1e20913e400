#!/usr/bin/env bash
# One GPU call: the whole test suite on the H100, then the benchmarks, then a results table.
#   bash perf/device.sh [tests|eval|perf|graph|ncu|all] [extra pytest args for the perf step...]
# graph: perf/graph_sweep.py (kernel-only times in CUDA graphs; sections from $GRAPH_SECTIONS).
# ncu: Nsight Compute stall profile of one kernel (NCU_TARGET gemv|kv, NCU_KERNEL regex).
# On the lent H100 (10 minutes per call) "all" does not fit one call: the tests alone take ~5.5 min
# with 8 workers; run the modes in separate calls (TEST_PATHS / PERF_FILES narrow them).
# Writes under $OUT (the device tool's output folder; ./.out elsewhere): env.txt, tests.log,
# eval.jsonl, perf.log, bench.json, report.md. The regression gate: when perf/baseline/ holds a stored run
# for this machine, the benchmarks are compared against it and a median more than 25% slower fails.
set -uo pipefail
mode=${1:-all}; shift || true
OUT=${OUT:-$PWD/.out}; mkdir -p "$OUT"
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1 HYPOTHESIS_PROFILE=${HYPOTHESIS_PROFILE:-gpu}
# Side-by-side peers (flash-linear-attention) travel as wheels in .whl/, never into the package,
# and only the benchmarks see them: with fla importable, transformers switches its GDN to fla's
# kernels, which the tests' reference comparisons must not pick up.
peers=""
if compgen -G ".whl/*.whl" >/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && peers=/tmp/site
fi
# The trained fixture lives beside the checkout (../shared/fixtures); the device copy carries it as .fixtures/.
if [[ -d .fixtures && ! -e ../shared/fixtures ]]; then mkdir -p ../shared && ln -s "$PWD/.fixtures" ../shared/fixtures; fi
{ date -u; nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.max.sm --format=csv;
  python3 -c 'import torch, triton, transformers; print("torch", torch.__version__, "triton", triton.__version__, "transformers", transformers.__version__)'; } | tee "$OUT/env.txt"
rc=0
if [[ $mode == tests || $mode == all ]]; then
  # 8 workers: each new kernel specialization is a CPU-bound compile (16 cores here)
  xd=(); python3 -c 'import xdist' 2>/dev/null && xd=(-n 8)
  timeout ${TESTS_TIMEOUT:-270} python3 -m pytest ${TEST_PATHS:-tests} -v -p no:cacheprovider -rf --durations=15 "${xd[@]}" 2>&1 | tee "$OUT/tests.log"; rc=$((rc | $?))
fi
if [[ $mode == eval || $mode == all ]]; then
  # Quality on the trained fixture: held-out bits/byte (256 x 1024-byte windows) in bf16, with
  # HLWQ weights (all linears) and with an HLWQ KV cache (attention reads the codes).
  for q in "" "--wbits 8" "--wbits 5" "--wbits 4" "--wbits 3" "--kvbits 4" "--kvbits 3" "--kvbits 2" "--wbits 5 --kvbits 3"; do
    timeout 120 python3 -m hlwq_models.cli eval --windows 256 --json --no-progress $q 2>&1 | tail -n 1 | tee -a "$OUT/eval.jsonl"
  done
fi
if [[ $mode == perf || $mode == all ]]; then
  gate=()
  if compgen -G "perf/baseline/*/*.json" >/dev/null; then
    gate=(--benchmark-storage=file://perf/baseline --benchmark-compare --benchmark-compare-fail=median:25%)
  fi
  PYTHONPATH=$PYTHONPATH${peers:+:$peers} timeout ${PERF_TIMEOUT:-300} python3 -m pytest ${PERF_FILES:-perf} -q -p no:cacheprovider --benchmark-json="$OUT/bench.json" \
    --benchmark-columns=median,rounds --benchmark-sort=name "${gate[@]}" "$@" 2>&1 | tee "$OUT/perf.log"; rc=$((rc | $?))
  python3 perf/report.py "$OUT/bench.json" | tee "$OUT/report.md"
fi
if [[ $mode == graph || $mode == all ]]; then
  PYTHONPATH=$PYTHONPATH${peers:+:$peers} timeout ${GRAPH_TIMEOUT:-240} python3 perf/graph_sweep.py ${GRAPH_SECTIONS:-} 2>&1 \
    | tee "$OUT/graph.log"; rc=$((rc | $?))
fi
if [[ $mode == ncu ]]; then  # stall profile of one kernel: NCU_TARGET (gemv|kv), NCU_KERNEL (regex)
  # NCU_SECTIONS: "--section X ..." (default: the stall profile below; "--section SpeedOfLight" for durations)
  secs=${NCU_SECTIONS:-"--section SpeedOfLight --section Occupancy --section LaunchStats --section SchedulerStats
    --section WarpStateStats --section MemoryWorkloadAnalysis --section ComputeWorkloadAnalysis"}
  timeout ${NCU_TIMEOUT:-120} ncu --clock-control none -k "regex:${NCU_KERNEL:-_gemv_kernel}" -s ${NCU_SKIP:-2} \
    -c ${NCU_COUNT:-1} $secs \
    python3 perf/ncu_target.py ${NCU_TARGET:-gemv} 2>&1 | tee "$OUT/ncu-${NCU_TARGET:-gemv}.txt"; rc=$((rc | $?))
fi
exit $rc

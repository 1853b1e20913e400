"""GPU benchmark harness for pytest-benchmark.

``gpu_bench(benchmark, fn, nbytes=..., flops=..., **info)`` times ``fn`` two ways:
* ``triton.testing.do_bench`` (CUDA events, L2 flushed before each call, median): the
  per-call time reported as ``us``, ``GBps`` and ``TFLOPs`` in ``extra_info`` (what
  perf/RESULTS.md quotes);
* pytest-benchmark rounds of ``calls_per_round`` back-to-back calls + one synchronize, stored
  per call (round time / calls_per_round), which ``--benchmark-compare-fail`` gates against the
  stored baseline. With ``graph=True`` the
  round replays one CUDA graph holding those calls, so the gate sees GPU time: eager rounds of
  a few-microsecond kernel measure the host's launch overhead, which differs between machines
  (run 5 of 2026-11-27: fla's unchanged decode kernel 3.3x "slower" than in run 4). A function
  that cannot be captured falls back to eager rounds (``extra_info["rounds"]`` says which).
Everything here skips without CUDA: CPU timings of interpreted kernels mean nothing.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))


def pytest_collection_modifyitems(config, items):
    if not torch.cuda.is_available():
        skip = pytest.mark.skip(reason="benchmarks need a CUDA device")
        for item in items:
            item.add_marker(skip)


def _capture(fn, reps: int):
    """A CUDA graph of ``reps`` calls of ``fn`` (warmed up on a side stream first)."""
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        fn()
    torch.cuda.current_stream().wait_stream(s)
    torch.cuda.synchronize()
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        for _ in range(reps):
            fn()
    torch.cuda.synchronize()
    return g


def _gpu_bench(benchmark, fn, *, nbytes: float, flops: float = 0.0, graph: bool = False, **info):
    import triton

    fn()
    torch.cuda.synchronize()
    ms = triton.testing.do_bench(fn, warmup=25, rep=100, return_mode="median")
    reps = max(1, min(1000, int(2.0 / max(ms, 1e-4))))
    rounds = "eager"
    g = None
    if graph:
        try:
            # calls per round from the GPU time per call (a probe graph of 16 calls), not from the eager
            # do_bench time, which for a few-us kernel is mostly host overhead: a round of ~2 ms
            # amortizes the replay's fixed cost (~10 us) whatever the host does
            probe = _capture(fn, 16)
            t0, t1 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            t0.record()
            for _ in range(3):
                probe.replay()
            t1.record()
            torch.cuda.synchronize()
            del probe
            reps = max(1, min(1000, int(2.0 / max(t0.elapsed_time(t1) / 48, 1e-4))))
            g = _capture(fn, reps)
            rounds = "cuda-graph"
        except Exception as exc:  # noqa: BLE001  (host syncs, non-capturable peers): eager rounds
            torch.cuda.synchronize()
            rounds = f"eager (capture failed: {type(exc).__name__})"

    # pytest-benchmark divides each round by ``iterations`` and calls the target that many times per
    # round: the first call of a round runs all ``reps`` calls (graph replay or eager loop) and
    # synchronizes, the other reps - 1 calls return at once (~0.1 us each of Python). So the stored
    # median is per call, comparable between runs whatever ``reps`` the do_bench calibration chose
    # (session 2 stored per-round times, which moved with reps: S3-3's false "regressions").
    state = {"i": 0}

    def one_call():
        if state["i"] % reps == 0:
            if g is not None:
                g.replay()
            else:
                for _ in range(reps):
                    fn()
            torch.cuda.synchronize()
        state["i"] += 1

    benchmark.pedantic(one_call, rounds=15, warmup_rounds=2, iterations=reps)
    benchmark.extra_info.update(
        us=round(ms * 1e3, 2), GBps=round(nbytes / (ms * 1e-3) / 1e9, 1),
        TFLOPs=round(flops / (ms * 1e-3) / 1e12, 2), nbytes=int(nbytes), flops=int(flops),
        calls_per_round=reps, rounds=rounds, device=torch.cuda.get_device_name(), **info)
    return ms


@pytest.fixture
def gpu_bench():
    return _gpu_bench


@pytest.fixture(autouse=True)
def _log_each_result(request):
    """Append each benchmark's extra_info to $OUT/bench.jsonl as soon as it finishes: a run cut
    off by the device's time limit still keeps what it measured (the JSON report comes at the end)."""
    # take the benchmark fixture before yielding, so it is torn down after this one
    b = request.getfixturevalue("benchmark") if "benchmark" in request.fixturenames else None
    yield
    out = os.environ.get("OUT")
    if out and b is not None:
        stats = getattr(getattr(b, "stats", None), "stats", None)
        row = {"test": request.node.nodeid, **b.extra_info,
               "round_median_s": getattr(stats, "median", None)}
        with open(os.path.join(out, "bench.jsonl"), "a") as f:
            f.write(json.dumps(row, default=str) + "\n")

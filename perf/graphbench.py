"""Steady-state kernel time: many calls captured in one CUDA graph, rotating over input sets.

``graph_us(fns)`` takes closures that each do the same work on a *different* set of buffers,
captures ``reps`` passes over all of them in one CUDA graph, replays it, and returns the median
microseconds per call. Two artefacts of per-call timing go away, for our kernels and the
baselines alike:

* launch gaps: inside a graph the next kernel starts within ~1 us, as it does in the model's
  captured decode step (Python launch overhead is gone too);
* outputs: every call's result is kept alive while the graph is captured, so each call writes
  fresh memory as it would in a real pipeline (a reused output buffer would stay in the L2 and
  its writes would never reach DRAM inside the timing, flattering ops that allocate their output);
* the L2 flush: ``triton.testing.do_bench`` zeroes a 256 MB buffer before each call, which leaves
  the 50 MB L2 full of dirty lines that the timed kernel must write back to DRAM as it reads its
  own data. Rotating over input sets whose total is several times the L2 keeps every read a DRAM
  read (nothing is served from the L2) without that write-back.

``sets_for(nbytes)`` picks how many input sets make one pass at least ``min_pass`` bytes.
"""

from __future__ import annotations

import statistics

import torch

L2_BYTES = 50 * 2**20


def sets_for(nbytes_per_call: float, min_pass: float = 4 * L2_BYTES, max_sets: int = 32) -> int:
    return int(max(1, min(max_sets, -(-min_pass // max(nbytes_per_call, 1)))))


def graph_us(fns, *, min_calls: int = 64, replays: int = 15) -> float:
    """Median microseconds per call over ``replays`` replays of a graph that calls every fn in
    ``fns`` round-robin at least ``min_calls`` times in total."""
    fns = list(fns)
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):  # compile, autotune and allocate outside the capture
        for _ in range(2):
            for f in fns:
                f()
    torch.cuda.current_stream().wait_stream(s)
    torch.cuda.synchronize()
    passes = max(1, -(-min_calls // len(fns)))
    g = torch.cuda.CUDAGraph()
    keep = []  # outputs stay allocated: every call of the graph writes its own memory
    with torch.cuda.graph(g):
        for _ in range(passes):
            for f in fns:
                keep.append(f())
    calls = passes * len(fns)
    g.replay()
    g.replay()
    torch.cuda.synchronize()
    times = []
    for _ in range(replays):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        g.replay()
        b.record()
        b.synchronize()
        times.append(a.elapsed_time(b) * 1e3 / calls)
    del g, keep
    return statistics.median(times)

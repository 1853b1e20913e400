"""Where a gemv2 call's time goes across the GPU: every program writes %globaltimer at its start, at the start of its
second and of its last loop trip, and at its end, plus its %smid (``_gemv2_kernel`` PROBE). M = 1, 5 bits, the
default configs; CALLS back-to-back calls on rotating weights captured in one CUDA graph (as graph_sweep times them),
each with its own probe buffer; the last replay is read.

    PYTHONPATH=$PWD python .notes/dq_probe.py [name ...]     (gate_up, down, q, square, kv; default: all but down)
"""
import os
import statistics
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "perf"))

import torch  # noqa: E402
from graph_sweep import _hlwq_weight  # noqa: E402

from hlwq_kernels.dequant_matmul import triton as dq  # noqa: E402

SHAPES = {"gate_up": (24576, 4096), "q": (8192, 4096), "square": (4096, 4096), "kv": (2048, 4096),
          "down": (4096, 12288)}
CALLS = 8


def q(v, p):
    return sorted(v)[min(len(v) - 1, int(p * len(v)))]


def graph_calls(call):
    """CALLS calls ``call(c)`` captured in one CUDA graph, replayed 3 times, then timed once: (graph, the outputs,
    us per call). The probe buffers hold the timed replay's stamps."""
    g = torch.cuda.CUDAGraph()
    keep = []
    with torch.cuda.graph(g):
        for c in range(CALLS):
            keep.append(call(c))
    for _ in range(3):
        g.replay()
    torch.cuda.synchronize()
    ev = [torch.cuda.Event(enable_timing=True) for _ in range(2)]
    ev[0].record()
    g.replay()
    ev[1].record()
    torch.cuda.synchronize()
    return g, keep, ev[0].elapsed_time(ev[1]) * 1e3 / CALLS


def main(names):
    for name in names:
        n, k = SHAPES[name]
        cfg = dq._pick(1, n, k, 128, "auto", 5)
        nsets = max(2, -(-200_000_000 // (n * k * 5 // 8)))
        ws = [_hlwq_weight(n, k, 5, s) for s in range(nsets)]
        x = torch.randn(1, k, device="cuda", dtype=torch.bfloat16)
        probes = [torch.zeros(1 << 16, dtype=torch.int64, device="cuda") for _ in range(CALLS)]
        for i in range(2):  # compile outside the capture
            dq._gemv2(x, ws[0], torch.bfloat16, cfg, probes[0])
        torch.cuda.synchronize()
        g, keep, per_call = graph_calls(lambda c: dq._gemv2(x, ws[c % nsets], torch.bfloat16, cfg, probes[c]))
        print(f"== {name} {n}x{k} cfg {cfg.BN=} {cfg.unroll=} {cfg.lean=}: graph {per_call:.2f} us per call "
              f"(with probes)", flush=True)
        rows = []
        for c in range(CALLS):
            p = probes[c].view(-1, 8).cpu()
            p = p[p[:, 0] > 0]
            rows.append(p)
        if os.environ.get("OUT"):  # the raw timestamps as text: one line per (call, program)
            with open(os.path.join(os.environ["OUT"], f"probe_{name}.csv"), "w") as f:
                f.write("call,program,start_ns,trip2_ns,last_trip_ns,end_ns,smid\n")
                for c, p in enumerate(rows):
                    for i, r in enumerate(p[:, :5].tolist()):
                        f.write(f"{c},{i}," + ",".join(str(v) for v in r) + "\n")
        t00 = int(rows[0][:, 0].min())
        prev_end = None
        for c, p in enumerate(rows):
            st, t1, t2, en, sm = (p[:, i].tolist() for i in range(5))
            first, last = min(st), max(en)
            nprog = len(st)
            per_sm = {}
            for s_, e_ in zip(sm, en):
                per_sm.setdefault(s_, []).append(e_)
            sm_end = [max(v) - first for v in per_sm.values()]
            counts = [len(v) for v in per_sm.values()]
            gap = "" if prev_end is None else f"gap {(first - prev_end) / 1e3:5.2f}"
            prev_end = last
            trip1 = [(b - a) / 1e3 for a, b in zip(st, t1) if b > 0]
            tail = [(b - a) / 1e3 for a, b in zip(t2, en) if a > 0]
            print(f"call {c}: start {(first - t00) / 1e3:7.2f} us, span {(last - first) / 1e3:6.2f} {gap}; "
                  f"{nprog} programs on {len(per_sm)} SMs ({min(counts)}-{max(counts)} each); "
                  f"start spread p50/p90/max {(q(st, .5) - first) / 1e3:.2f}/{(q(st, .9) - first) / 1e3:.2f}/"
                  f"{(max(st) - first) / 1e3:.2f}; end p10/p50/max {(q(en, .1) - first) / 1e3:.2f}/"
                  f"{(q(en, .5) - first) / 1e3:.2f}/{(last - first) / 1e3:.2f}; SM ends min {min(sm_end) / 1e3:.2f}; "
                  f"first trip p50 {statistics.median(trip1) if trip1 else 0:.2f}; last trip+end p50 "
                  f"{statistics.median(tail) if tail else 0:.2f}", flush=True)
        del ws, keep, g


if __name__ == "__main__":
    main(sys.argv[1:] or ["gate_up", "q", "square", "kv"])

"""Where a gemvt call's time goes (hlwq_kernels/dequant_matmul/gemvt.py, PROBE): every program writes %globaltimer at
its start, when its first ring slot has landed, at the start of its last step and at its end, plus its %smid. M = 1,
GEMVT_BITS bits (default 5); CALLS back-to-back calls on rotating weights in one CUDA graph (as graph_sweep times them); the last replay
is read. Options from the environment: GEMVT_ROWS, GEMVT_STAGES, GEMVT_PER_SM, GEMVT_STAGGER, GEMVT_DYN.

    PYTHONPATH=$PWD python .notes/gemvt_probe.py [name ...]     (gate_up, q, square, kv, lm_head)
"""
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "perf"))
sys.path.insert(0, os.path.dirname(__file__))

import dq_probe  # noqa: E402  (gemv2's probe script: the shapes, the call count and the quantile helper)
import torch  # noqa: E402
from dq_probe import CALLS, graph_calls, q  # noqa: E402
from graph_sweep import _hlwq_weight  # noqa: E402

from hlwq_kernels.dequant_matmul.gemvt import gemvt  # noqa: E402

SHAPES = {**dq_probe.SHAPES, "lm_head": (248320, 4096)}


def main(names):
    e = os.environ.get
    opts = dict(rows=int(e("GEMVT_ROWS", "8")), stages=int(e("GEMVT_STAGES", "4")), per_sm=int(e("GEMVT_PER_SM", "2")),
                stagger=e("GEMVT_STAGGER", "0") == "1")
    bits = int(e("GEMVT_BITS", "5"))
    if e("GEMVT_DYN", "0") == "1":  # row tiles handed out at run time
        opts["counter"] = torch.zeros(2, dtype=torch.int32, device="cuda")
    for name in names:
        n, k = SHAPES[name]
        nsets = max(2, -(-200_000_000 // (n * k * bits // 8)))
        ws = [_hlwq_weight(n, k, bits, s) for s in range(nsets)]
        x = torch.randn(1, k, device="cuda", dtype=torch.bfloat16)
        probes = [torch.zeros(1 << 14, dtype=torch.int64, device="cuda") for _ in range(CALLS)]
        for _ in range(2):  # compile outside the capture
            gemvt(x, ws[0], torch.bfloat16, probe=probes[0], **opts)
        torch.cuda.synchronize()
        g, keep, per_call = graph_calls(lambda c: gemvt(x, ws[c % nsets], torch.bfloat16, probe=probes[c], **opts))
        print(f"== {name} {n}x{k} {bits} bits {dict(opts, counter='yes' if 'counter' in opts else 'no')}: graph {per_call:.2f} us per call (with probes); times in us from the call's "
              "first program start", flush=True)
        prev_end = None
        for c in range(CALLS):
            p = probes[c].view(-1, 8).cpu()
            p = p[p[:, 0] > 0]
            st, t1, t2, en, sm = (p[:, i].tolist() for i in range(5))
            t0, last = min(st), max(en)
            f = [(v - t0) / 1e3 for v in t1 if v > 0]
            l2 = [(v - t0) / 1e3 for v in t2 if v > 0]
            per_sm = {}
            for s_, e_ in zip(sm, en):
                per_sm.setdefault(s_, []).append(e_)
            sm_end = sorted((max(v) - t0) / 1e3 for v in per_sm.values())
            gap = "" if prev_end is None else f" gap {(t0 - prev_end) / 1e3:.2f}"
            prev_end = last
            print(f"call {c}: span {(last - t0) / 1e3:6.2f}{gap}; start max {(max(st) - t0) / 1e3:.2f}; first slot "
                  f"p10/p50/p90 {q(f, .1):.2f}/{q(f, .5):.2f}/{q(f, .9):.2f}; last step p50 {q(l2, .5):.2f}; end "
                  f"p10/p50/max {(q(en, .1) - t0) / 1e3:.2f}/{(q(en, .5) - t0) / 1e3:.2f}/{(last - t0) / 1e3:.2f}; "
                  f"SM ends p10/p50 {q(sm_end, .1):.2f}/{q(sm_end, .5):.2f}", flush=True)
        del ws, keep, g


if __name__ == "__main__":
    main(sys.argv[1:] or ["gate_up", "q", "square"])

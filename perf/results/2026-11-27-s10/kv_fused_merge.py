"""The in-kernel merge of the Gluon KV decode (``merge=None``: ``_merge_tail``, one cooperative launch) against the
separate merge kernel (``merge=False``), whole calls, CUDA-graph timing with caches rotated through DRAM
(perf/graphbench.py), interleaved twice; outputs compared.

    PYTHONPATH=$PWD python .notes/kv_fused_merge.py
"""
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "perf"))

import torch  # noqa: E402
from graph_sweep import _packed_cache  # noqa: E402  (random packed K/V caches, 4 KV heads, D = 256)

from hlwq_kernels.kv_quant_attn import gluon as G  # noqa: E402
from hlwq_kernels.quantize_kv import default_codebook  # noqa: E402

D = 256
VARIANTS = {"separate": dict(merge=False), "in-kernel": dict(merge=None)}
if os.environ.get("KV_MERGE_VARIANTS"):  # e.g. "coop0=coop:0 poll1=coop:0,poll:1"
    VARIANTS = {"separate": dict(merge=False)}
    for item in os.environ["KV_MERGE_VARIANTS"].split():
        name, _, opts = item.partition("=")
        VARIANTS[name] = {k: int(v) for k, v in (o.split(":") for o in opts.split(",") if o)}
CASES = os.environ.get("KV_CASES", "2k 32k 128k 8x8k").split()
BITS = [int(b) for b in os.environ.get("KV_BITS", "3 2").split()]


def main():
    from graphbench import graph_us, sets_for

    cases = {"2k": (1, 2048), "32k": (1, 32768), "128k": (1, 131072), "8x8k": (8, 8192)}
    for bits in BITS:
        cb = default_codebook(bits, "cuda")
        for name, (b, lmax) in cases.items():
            if name not in CASES:
                continue
            if bits == 2 and name == "2k":
                continue
            q = torch.randn(b, 16, 1, D, device="cuda", dtype=torch.bfloat16)
            lens = torch.full((b,), lmax, device="cuda", dtype=torch.int32)
            qb = b * lmax * 4 * 2 * (D * bits // 8 + 2)
            caches = [_packed_cache(b, lmax, bits, i) for i in range(sets_for(qb))]
            ref = G.kv_attn_decode_gluon(q, *caches[0], lens, None, bits, D ** -0.5, True, cb, merge=False).float()
            new = G.kv_attn_decode_gluon(q, *caches[0], lens, None, bits, D ** -0.5, True, cb, merge=True).float()
            diff = ((new - ref).abs().max() / ref.abs().max()).item()
            res = {}
            for _ in range(2):
                for label, m in VARIANTS.items():
                    fns = [lambda c=c, m=m: G.kv_attn_decode_gluon(q, *c, lens, None, bits, D ** -0.5, True, cb,
                                                                   **m) for c in caches]
                    res.setdefault(label, []).append(graph_us(fns))
            zero = all(int(t.abs().sum()) == 0 for t in G._MERGE_COUNTERS.values())
            print(f"{name} {bits}b: " + " | ".join(f"{k} {min(v):.2f} us ({', '.join(f'{x:.2f}' for x in v)})"
                                                  for k, v in res.items())
                  + f" | max diff {diff:.1e} | counters zero {zero}", flush=True)


if __name__ == "__main__":
    main()

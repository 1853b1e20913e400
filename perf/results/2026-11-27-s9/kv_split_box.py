"""The int8 KV kernel's TMA ring with split boxes at 3 bits (``split_box=True``: words 0-15 in [64, 16] boxes, the
1-bit plane's words 16-23 in [64, 8] boxes, so a slot is 12 KB instead of 16 KB and 3 slots fit 4 programs per SM)
against the [64, 32] boxes and the register loads: outputs bit-equal to the register path, CUDA-graph timing with
caches rotated through DRAM (perf/graphbench.py), SDPA not included (see perf/graph_sweep.py kv).

    PYTHONPATH=$PWD python .notes/kv_split_box.py
"""
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "perf"))

import torch  # noqa: E402

from hlwq_kernels.kv_quant_attn import gluon as G  # noqa: E402
from hlwq_kernels.quantize_kv import default_codebook  # noqa: E402

D = 256


def main():
    from graphbench import graph_us, sets_for

    bits = 3
    cb = default_codebook(bits, "cuda")
    variants = {"regs": {"tma": False}, "tma [64,32] 2 slots": {"tma": True},
                "split 2 slots": {"tma": True, "split_box": True},
                "split 3 slots": {"tma": True, "split_box": True, "stages": 3}}
    for name, (b, lmax) in {"32k": (1, 32768), "128k": (1, 131072), "8x8k": (8, 8192), "2x5000": (2, 5000)}.items():
        q = torch.randn(b, 16, 1, D, device="cuda", dtype=torch.bfloat16)
        lens = torch.full((b,), lmax, device="cuda", dtype=torch.int32)
        if b == 2:
            lens[1] = 3001
        w = D * bits // 32
        qb = b * lmax * 4 * 2 * (D * bits // 8 + 2)
        caches = [(torch.randint(-2**31, 2**31 - 1, (b, 4, lmax, w), device="cuda", dtype=torch.int32),
                   (torch.rand(b, 4, lmax, device="cuda") + 0.5).half(),
                   torch.randint(-2**31, 2**31 - 1, (b, 4, lmax, w), device="cuda", dtype=torch.int32),
                   (torch.rand(b, 4, lmax, device="cuda") + 0.5).half()) for _ in range(sets_for(qb))]
        ref = G.kv_attn_decode_gluon(q, *caches[0], lens, None, bits, D ** -0.5, True, cb, tma=False)
        for splits in (None, 3):
            for label, opt in variants.items():
                out = G.kv_attn_decode_gluon(q, *caches[0], lens, None, bits, D ** -0.5, True, cb, splits, **opt)
                r2 = G.kv_attn_decode_gluon(q, *caches[0], lens, None, bits, D ** -0.5, True, cb, splits, tma=False)
                torch.cuda.synchronize()
                assert torch.equal(out, r2), f"{name} splits={splits} {label}: differs from the register path"
        if b == 2:
            print(f"{name}: outputs equal", flush=True)
            continue
        res = {}
        for rep in range(2):
            for label, opt in variants.items():
                fns = [lambda c=c, o=opt: G.kv_attn_decode_gluon(q, *c, lens, None, bits, D ** -0.5, True, cb, **o)
                       for c in caches]
                res.setdefault(label, []).append(graph_us(fns))
        print(f"{name} 3b (outputs equal): " + " | ".join(
            f"{k} {min(v):.2f} us ({', '.join(f'{x:.2f}' for x in v)})" for k, v in res.items()), flush=True)


if __name__ == "__main__":
    main()

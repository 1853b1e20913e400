"""How much of a Gluon int8 KV decode call is the merge: the whole call vs the split kernel alone (launch_merge
replaced by a no-op), CUDA-graph timing with caches rotated through DRAM (perf/graphbench.py).

    python .notes/kv_parts.py
"""
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "perf"))

import torch  # noqa: E402
from graph_sweep import _packed_cache  # noqa: E402  (random packed K/V caches, 4 KV heads, D = 256)

from hlwq_kernels.kv_quant_attn import triton as T  # noqa: E402
from hlwq_kernels.kv_quant_attn import gluon as G  # noqa: E402
from hlwq_kernels.quantize_kv import default_codebook  # noqa: E402

D = 256


def main():
    from graphbench import graph_us, sets_for

    real_merge = T.launch_merge
    for name, (b, lmax) in {"2k": (1, 2048), "8k": (1, 8192), "32k": (1, 32768), "128k": (1, 131072)}.items():
        q = torch.randn(b, 16, 1, D, device="cuda", dtype=torch.bfloat16)
        lens = torch.full((b,), lmax, device="cuda", dtype=torch.int32)
        bits = 3
        cb = default_codebook(bits, "cuda")
        qb = b * lmax * 4 * 2 * (D * bits // 8 + 2)
        caches = [_packed_cache(b, lmax, bits, i) for i in range(sets_for(qb))]
        res = []
        for label, opt in (("int8", {}), ("int8+tma", {"tma": True})):
            fns = [lambda c=c: G.kv_attn_decode_gluon(q, *c, lens, None, bits, D ** -0.5, True, cb, int8=True, **opt)
                   for c in caches]
            full = graph_us(fns)
            T.launch_merge = lambda *a, **k: None
            try:
                split = graph_us(fns)
            finally:
                T.launch_merge = real_merge
            res.append(f"{label}: call {full:.2f} us, split kernel alone {split:.2f}, merge + gap {full - split:.2f}")
        print(f"{name} 3b: " + " | ".join(res), flush=True)


if __name__ == "__main__":
    main()

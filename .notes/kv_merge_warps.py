"""The merge launch in the whole Gluon KV decode call: Triton's ``_merge_kernel`` as launched now (4 warps, 32 or
64 columns per program) against one-warp programs of 16 or 32 columns (whose reductions over splits stay inside a
warp). CUDA-graph timing, caches rotated through DRAM (perf/graphbench.py); outputs compared.

    PYTHONPATH=$PWD python .notes/kv_merge_warps.py
"""
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "perf"))

import torch  # noqa: E402
from graph_sweep import _packed_cache  # noqa: E402  (random packed K/V caches, 4 KV heads, D = 256)

from hlwq_kernels._common import next_pow2  # noqa: E402
from hlwq_kernels.kv_quant_attn import gluon as G  # noqa: E402
from hlwq_kernels.kv_quant_attn import triton as T  # noqa: E402
from hlwq_kernels.quantize_kv import default_codebook  # noqa: E402

D = 256


def merge_with(dc, nw):
    def launch(op, lse, out, splits, n_rows, Hkv, Gq, sms):
        total, d = op.shape[1] * n_rows, op.shape[-1]
        sb = max(2, min(128, next_pow2(splits), 4096 // dc))
        T._merge_kernel[(total, d // dc)](op, lse, out, splits, total, n_rows, Hkv, Gq, out.stride(0), out.stride(1),
                                          out.stride(2), D=d, DC=dc, SB=sb, num_warps=nw)
    return launch


def main():
    from graphbench import graph_us, sets_for

    bits = 3
    cb = default_codebook(bits, "cuda")
    real = T.launch_merge
    merges = {"now": real, "1 warp DC 32": merge_with(32, 1), "1 warp DC 16": merge_with(16, 1)}
    for name, (b, lmax) in {"2k": (1, 2048), "32k": (1, 32768), "128k": (1, 131072), "8x8k": (8, 8192)}.items():
        q = torch.randn(b, 16, 1, D, device="cuda", dtype=torch.bfloat16)
        lens = torch.full((b,), lmax, device="cuda", dtype=torch.int32)
        qb = b * lmax * 4 * 2 * (D * bits // 8 + 2)
        caches = [_packed_cache(b, lmax, bits, i) for i in range(sets_for(qb))]
        ref = G.kv_attn_decode_gluon(q, *caches[0], lens, None, bits, D ** -0.5, True, cb).float()
        res, errs = {}, {}
        for rep in range(2):
            for label, m in merges.items():
                T.launch_merge = m
                try:
                    if rep == 0:
                        o = G.kv_attn_decode_gluon(q, *caches[0], lens, None, bits, D ** -0.5, True, cb).float()
                        errs[label] = ((o - ref).abs().max() / ref.abs().max()).item()
                    fns = [lambda c=c: G.kv_attn_decode_gluon(q, *c, lens, None, bits, D ** -0.5, True, cb)
                           for c in caches]
                    res.setdefault(label, []).append(graph_us(fns))
                finally:
                    T.launch_merge = real
        print(f"{name} 3b: " + " | ".join(f"{k} {min(v):.2f} us ({', '.join(f'{x:.2f}' for x in v)}; "
                                          f"diff {errs[k]:.1e})" for k, v in res.items()), flush=True)


if __name__ == "__main__":
    main()

"""What the ~3 us of merge + gap after the Gluon KV split kernel is made of (CUDA-graph timing,
perf/graphbench.py): an empty Triton kernel (1 and 128 programs), ``_merge_kernel`` alone on
32k-shaped partials (128 splits x 16 rows x 256) in several configurations (columns per program DC, splits
per block SB, warps), and the split kernel followed by an empty kernel instead of the merge.

    PYTHONPATH=$PWD python .notes/kv_merge_cost.py
"""
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "perf"))

import torch  # noqa: E402
from graph_sweep import _packed_cache  # noqa: E402  (random packed K/V caches, 4 KV heads, D = 256)
import triton  # noqa: E402
import triton.language as tl  # noqa: E402

from hlwq_kernels.kv_quant_attn import triton as T  # noqa: E402
from hlwq_kernels.kv_quant_attn import gluon as G  # noqa: E402
from hlwq_kernels.quantize_kv import default_codebook  # noqa: E402


@triton.jit
def _empty(x_ptr):
    pass


def main():
    from graphbench import graph_us

    x = torch.zeros(1, device="cuda")
    for n in (1, 128, 528):
        print(f"empty kernel, {n} programs: {graph_us([lambda n=n: _empty[(n,)](x)]):.2f} us", flush=True)
    splits, bh, rows, D = 128, 4, 4, 256
    ops = [torch.randn(splits, bh, rows, D, device="cuda") for _ in range(8)]
    lses = [torch.randn(splits, bh, rows, device="cuda") for _ in range(8)]
    out = torch.empty(1, 16, 1, D, device="cuda", dtype=torch.bfloat16)
    total = bh * rows
    for dc, sb, nw in ((32, 128, 4), (64, 64, 4), (32, 128, 8), (64, 64, 8), (128, 32, 4), (16, 128, 4),
                       (8, 128, 1), (16, 128, 1), (32, 128, 1), (16, 128, 2), (32, 128, 2), (8, 128, 2)):
        def f(i, dc=dc, sb=sb, nw=nw):
            T._merge_kernel[(total, D // dc)](ops[i], lses[i], out, splits, total, rows, 4, 4, out.stride(0),
                                              out.stride(1), out.stride(2), D=D, DC=dc, SB=sb, num_warps=nw)
            return None
        print(f"merge alone 32k shape, DC {dc} SB {sb} warps {nw}: "
              f"{graph_us([lambda i=i: f(i) for i in range(8)]):.2f} us", flush=True)
    # the split kernel then an empty kernel, vs the split kernel then the merge
    b, lmax, bits = 1, 32768, 3
    q = torch.randn(b, 16, 1, D, device="cuda", dtype=torch.bfloat16)
    lens = torch.full((b,), lmax, device="cuda", dtype=torch.int32)
    cb = default_codebook(bits, "cuda")
    caches = [_packed_cache(b, lmax, bits, i) for i in range(8)]
    fns = [lambda c=c: G.kv_attn_decode_gluon(q, *c, lens, None, bits, D ** -0.5, True, cb) for c in caches]
    real = T.launch_merge
    for label, repl in (("merge", real), ("empty kernel", lambda *a, **k: _empty[(1,)](x)),
                        ("nothing", lambda *a, **k: None)):
        T.launch_merge = repl
        try:
            print(f"32k split kernel + {label}: {graph_us(fns):.2f} us", flush=True)
        finally:
            T.launch_merge = real


if __name__ == "__main__":
    main()

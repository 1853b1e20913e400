"""A/B timing of the default KV decode (``kv_quant_attn``, 16 q / 4 KV heads, D = 256) and SDPA bf16 in the same
process: CUDA-graph timing with caches rotated through DRAM (perf/graphbench.py). Run it once per code version
(PYTHONPATH picks which ``hlwq_kernels`` is imported) and alternate the runs:

    PYTHONPATH=_base:$PWD python .notes/kv_ab.py base; PYTHONPATH=$PWD python .notes/kv_ab.py new
"""
import os
import sys

sys.path.insert(1, os.path.join(os.path.dirname(__file__), "..", "perf"))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from graph_sweep import _packed_cache  # noqa: E402  (random packed K/V caches, 4 KV heads, D = 256)
from graphbench import graph_us, sets_for  # noqa: E402

import hlwq_kernels  # noqa: E402
from hlwq_kernels import kv_quant_attn  # noqa: E402

D = 256
CASES = {"32k": (1, 32768), "128k": (1, 131072), "8x8k": (8, 8192)}


def main():
    label = sys.argv[1] if len(sys.argv) > 1 else "?"
    sdpa = os.environ.get("KV_AB_SDPA", "1") == "1"
    print(f"{label}: hlwq_kernels from {os.path.dirname(hlwq_kernels.__file__)}", flush=True)
    for name, (b, lmax) in CASES.items():
        q = torch.randn(b, 16, 1, D, device="cuda", dtype=torch.bfloat16)
        lens = torch.full((b,), lmax, device="cuda", dtype=torch.int32)
        row = f"{label} {name}:"
        if sdpa:
            sb = b * lmax * 4 * 2 * D * 2
            kvs = [(torch.randn(b, 4, lmax, D, device="cuda", dtype=torch.bfloat16),
                    torch.randn(b, 4, lmax, D, device="cuda", dtype=torch.bfloat16)) for _ in range(sets_for(sb))]
            t = graph_us([lambda k=k, v=v: F.scaled_dot_product_attention(q, k, v, enable_gqa=True) for k, v in kvs])
            row += f" sdpa {t:.2f}"
            del kvs
        for bits in (3, 2):
            caches = [_packed_cache(b, lmax, bits, s) for s in range(sets_for(b * lmax * 8 * (D * bits // 8 + 2)))]
            ts = [graph_us([lambda c=c: kv_quant_attn(q, *c, bits=bits, kv_lens=lens) for c in caches])
                  for _ in range(2)]
            row += f" | {bits}b {min(ts):.2f} ({', '.join(f'{x:.2f}' for x in ts)})"
            del caches
        print(row, flush=True)


if __name__ == "__main__":
    main()

"""Where a Gluon int8 KV decode program spends its time: %globaltimer / %clock64 read by every program at its start,
before its tile loop, after it, and after its stores (``kv_attn_decode_gluon(probe=)``, the kernel's PROBE option).
Caches rotated through DRAM in a plain loop (the last call is read); 3 bits, 16 q / 4 KV heads, D = 256.

    PYTHONPATH=$PWD python .notes/kv_probe.py
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
CASES = {"2k": (1, 2048), "8k": (1, 8192), "32k": (1, 32768), "128k": (1, 131072), "8x8k": (8, 8192)}


def q(t, p):
    return torch.quantile(t.double(), p).item()


def main():
    bits = 3
    for name in os.environ.get("KV_CASES", ",".join(CASES)).split(","):
        b, lmax = CASES[name]
        qq = torch.randn(b, 16, 1, D, device="cuda", dtype=torch.bfloat16)
        lens = torch.full((b,), lmax, device="cuda", dtype=torch.int32)
        cb = default_codebook(bits, "cuda")
        n_sets = max(2, min(16, int(200e6 // (b * lmax * 4 * 2 * 100))))
        caches = [_packed_cache(b, lmax, bits, i) for i in range(n_sets)]
        for label, opt in (("regs", {"tma": False}), ("tma", {"tma": True})):
            probe = torch.zeros(4096, 10, dtype=torch.int64, device="cuda")
            for i in range(3 * n_sets):
                G.kv_attn_decode_gluon(qq, *caches[i % n_sets], lens, None, bits, D ** -0.5, True, cb, probe=probe,
                                       **opt)
            torch.cuda.synchronize()
            p = probe[(probe[:, 0] != 0)]
            n = p.shape[0]
            t = p[:, 0:8:2] - p[:, 0].min()  # ns from the first program's start
            c = p[:, 1:8:2]
            pro, loop, epi = (c[:, 1] - c[:, 0]), (c[:, 2] - c[:, 1]), (c[:, 3] - c[:, 2])
            print(f"{name} {label}: {n} programs; ns from first start: start p50 {q(t[:, 0], .5):.0f} "
                  f"max {t[:, 0].max().item()}, end p10 {q(t[:, 3], .1):.0f} p50 {q(t[:, 3], .5):.0f} max "
                  f"{t[:, 3].max().item()} | cycles p50 (p90): prologue {q(pro, .5):.0f} ({q(pro, .9):.0f}), "
                  f"loop {q(loop, .5):.0f} ({q(loop, .9):.0f}), epilogue {q(epi, .5):.0f} ({q(epi, .9):.0f})",
                  flush=True)
            sm = p[:, 8]
            per_sm = torch.bincount(sm, minlength=int(sm.max()) + 1)
            cnt = per_sm[sm]  # programs on this program's SM
            end = t[:, 3].double()
            by_cnt = {int(k): (int((cnt == k).sum()), end[cnt == k].mean().item()) for k in cnt.unique()}
            sm_max = torch.zeros(per_sm.shape[0], dtype=torch.float64, device=p.device).scatter_reduce(
                0, sm, end, "amax", include_self=False)
            sm_min = torch.full_like(sm_max, 1e18).scatter_reduce(0, sm, end, "amin", include_self=False)
            used = per_sm > 0
            spread = (sm_max - sm_min)[used]
            print(f"    programs per SM -> (programs, mean end ns): {by_cnt}; within-SM end spread p50 "
                  f"{q(spread, .5):.0f} max {spread.max().item():.0f}; SM last-end p10 {q(sm_max[used], .1):.0f} "
                  f"p50 {q(sm_max[used], .5):.0f} max {sm_max[used].max().item():.0f}", flush=True)
            slow = torch.argsort(sm_max, descending=True)[:6].tolist()
            print(f"    slowest SMs {slow}, their programs {[int(per_sm[i]) for i in slow]}", flush=True)


if __name__ == "__main__":
    main()

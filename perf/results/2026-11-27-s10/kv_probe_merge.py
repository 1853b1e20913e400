"""Timeline of the in-kernel merge (probe point 4) against the separate merge: PYTHONPATH=$PWD python .notes/kv_probe_merge.py"""
import os, sys
sys.path.insert(0, os.getcwd()); sys.path.insert(0, os.path.join(os.getcwd(), "perf"))
import torch
from graph_sweep import _packed_cache
from hlwq_kernels.kv_quant_attn import gluon as G
from hlwq_kernels.quantize_kv import default_codebook
D = 256
def qt(t, p): return torch.quantile(t.double(), p).item()
for name, (b, lmax) in {"2k": (1, 2048), "32k": (1, 32768)}.items():
  for poll, loads in ((0, 0), (0, 1), (0, 2)):
    qq = torch.randn(b, 16, 1, D, device="cuda", dtype=torch.bfloat16)
    lens = torch.full((b,), lmax, device="cuda", dtype=torch.int32)
    cb = default_codebook(3, "cuda")
    caches = [_packed_cache(b, lmax, 3, i) for i in range(8)]
    for label, opt in ((f"fused poll {poll} loads {loads}", {"merge": None, "poll": poll, "loads": loads}),):
        probe = torch.zeros(4096, 16, dtype=torch.int64, device="cuda")
        for i in range(24):
            G.kv_attn_decode_gluon(qq, *caches[i % 8], lens, None, 3, D ** -0.5, True, cb, probe=probe, **opt)
        torch.cuda.synchronize()
        p = probe[(probe[:, 0] != 0)]
        t0 = p[:, 0].min()
        t = (p[:, [0, 2, 4, 6, 10, 11, 12, 13, 14]] - t0).double()
        t[:, 4:] = torch.where(p[:, 10:15] > 0, t[:, 4:], float('nan'))
        s = f"{name} {label}: n {p.shape[0]} | "
        for j, nm in enumerate(["start", "loop0", "loop1", "stored", "arrived", "waited", "merged", "out", "end"]):
            col = t[:, j][~torch.isnan(t[:, j])]
            if col.numel():
                s += f"{nm} p10 {qt(col,.1):.0f} p50 {qt(col,.5):.0f} max {col.max().item():.0f} | "
        print(s, flush=True)

"""A few launches of one kernel for Nsight Compute (device.sh's ncu mode):
    ncu --clock-control none -k regex:_gemv_kernel -c 1 --section ... python3 perf/ncu_target.py gemv
Targets: gemv (dequant_matmul M=1, 5 bits, gate_up 24576x4096), gemv-small (the same, 2048x4096), dot16 (M=16,
the dot2 default; DOT16_N rows, default gate_up), gemv8 (the opt-in int8 GEMV on gate_up), gemvt (the TMA-ring
GEMV, GEMVT_* options; session 13),
kv (kv_quant_attn 3 bits, 32k or KV_LEN keys, batch 1), gdn (gated_delta_decode_step, batch 1)."""

import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
import graph_sweep as gs  # noqa: E402

what = sys.argv[1] if len(sys.argv) > 1 else "gemv"
if what in ("gemv", "gemv-small"):
    from hlwq_kernels.dequant_matmul.triton import dequant_matmul_rotated
    w = gs._hlwq_weight(24576 if what == "gemv" else 2048, 4096, 5, 0)
    x = torch.randn(1, 4096, device="cuda", dtype=torch.bfloat16)
    for _ in range(3):
        dequant_matmul_rotated(x, w, torch.bfloat16)
elif what == "dot16":
    from hlwq_kernels.dequant_matmul.triton import dequant_matmul_rotated
    w = gs._hlwq_weight(int(os.environ.get("DOT16_N", "24576")), 4096, 5, 0)
    x = torch.randn(16, 4096, device="cuda", dtype=torch.bfloat16)
    for _ in range(3):
        dequant_matmul_rotated(x, w, torch.bfloat16)
elif what == "gemv8":  # the opt-in int8 GEMV, 24576x4096 5 bits (GEMV8_BITS, GEMV8_KS, GEMV8_PF from the environment)
    import os

    from hlwq_kernels.dequant_matmul.gluon import gemv8
    from hlwq_kernels.quant.grid import int8_tables
    bits = int(os.environ.get("GEMV8_BITS", "5"))
    w = gs._hlwq_weight(24576, 4096, bits, 0, grid=True)
    x = torch.randn(1, 4096, device="cuda", dtype=torch.bfloat16)
    ks = int(os.environ["GEMV8_KS"]) if "GEMV8_KS" in os.environ else None
    for _ in range(3):
        gemv8(x, w, torch.bfloat16, int8_tables(w.codebook, bits), ks=ks, pf=int(os.environ.get("GEMV8_PF", "2")))
elif what == "gemvt":  # the TMA-ring GEMV on gate_up (GEMVT_BITS, GEMVT_ROWS, GEMVT_STAGES, GEMVT_PER_SM, GEMVT_WG)
    from hlwq_kernels.dequant_matmul.gemvt import gemvt
    e = os.environ.get
    w = gs._hlwq_weight(int(e("GEMVT_N", "24576")), 4096, int(e("GEMVT_BITS", "5")), 0)
    x = torch.randn(1, 4096, device="cuda", dtype=torch.bfloat16)
    for _ in range(3):
        gemvt(x, w, torch.bfloat16, rows=int(e("GEMVT_ROWS", "8")), stages=int(e("GEMVT_STAGES", "4")),
              per_sm=int(e("GEMVT_PER_SM", "2")), wg=int(e("GEMVT_WG", "1")))
elif what == "kv":
    from hlwq_kernels import kv_quant_attn
    n = int(os.environ.get("KV_LEN", "32768"))  # (KV_LEN: the context length)
    c = gs._packed_cache(1, n, 3, 0)
    q = torch.randn(1, 16, 1, 256, device="cuda", dtype=torch.bfloat16)
    lens = torch.full((1,), n, device="cuda", dtype=torch.int32)
    for _ in range(3):
        kv_quant_attn(q, *c, bits=3, kv_lens=lens)
torch.cuda.synchronize()

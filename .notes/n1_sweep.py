"""Where does gemv2 on the GPU disagree with the fp32 reference beyond fp32 rounding (S15-9's M = 3, N = 1, 1-bit
case)? x already rotated (no fwht), fp32 out; prints the max relative error per case.
    PYTHONPATH=.:tests python .notes/n1_sweep.py
"""
import torch

from hlwq_kernels.dequant_matmul import dequant_matmul, dequant_matmul_reference
from test_dequant_matmul import make_weight, make_x

dev = "cuda" if torch.cuda.is_available() else "cpu"
for bits in (1, 2, 5, 8):
    for m in (1, 3):
        for n in (1, 8):
            for k, block in ((7, 64), (64, 64), (200, 128)):
                qw = make_weight(n, k, bits, block, 1928, dev)
                x = make_x((m,), qw.padded_in_features, torch.bfloat16, 1928, dev)
                y = dequant_matmul(x, qw, x_rotated=True, out_dtype=torch.float32).cpu().double()
                ref = dequant_matmul_reference(x.cpu().float(), qw.to("cpu"), True, torch.float32).double()
                rel = float(((y - ref).abs() / ref.abs().max().clamp_min(1e-30)).max())
                print(f"bits={bits} m={m} n={n} k={k} block={block}: rel err {rel:.2e}{'  <-- ' if rel > 1e-5 else ''}")

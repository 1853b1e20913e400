"""Replay two N = 1 hypothesis draws that failed on the H100 in S15-9 (tests/test_dequant_matmul.py), with the
code on PYTHONPATH, printing the kernel, the fp32 reference and the bf16 plain-PyTorch rival; then, if the tests on
PYTHONPATH have ``rounding_floor`` (after S15-11), both through their ``check``:
    PYTHONPATH=<tree>:tests python .notes/n1_tolerance_repro.py
"""
import torch

import hlwq_kernels
from hlwq_kernels.dequant_matmul import Config, dequant_matmul, dequant_matmul_reference, dequant_matmul_triton_method
import test_dequant_matmul as T
from test_dequant_matmul import make_weight, make_x, torch_rival

dev = "cuda" if torch.cuda.is_available() else "cpu"
print(hlwq_kernels.__file__, dev)
# test_dequant_matmul_matches_reference(m=3, n=1, k=7, bits=1, block=64, bf16, out fp32, x_rotated=True, seed=1928)
qw = make_weight(1, 7, 1, 64, 1928, dev)
x = make_x((3,), 64, torch.bfloat16, 1928, dev)
y2 = dequant_matmul(x, qw, x_rotated=True, out_dtype=torch.float32)
case2 = (x, qw)
ref = dequant_matmul_reference(x.cpu().float(), qw.to("cpu"), True, torch.float32)
riv = torch_rival(x.cpu(), qw.to("cpu"), True, torch.float32)
print("case 2: kernel", y2.flatten().tolist(), "ref", ref.flatten().tolist(), "rival", riv.flatten().tolist())
# test_gemv2_configs(n=1, k=227, bits=6, block=64, bf16, seed=1324, BN=1, G=1)
qw = make_weight(1, 227, 6, 64, 1324, dev)
x = make_x((1,), 227, torch.bfloat16, 1324, dev)
cfg = Config("gemv2", BN=1, G=1, split_k=0, row_tiles=0, prefetch=False, depth=1, unroll=1)
y = dequant_matmul_triton_method(x, qw, False, torch.bfloat16, config=cfg)
ref = dequant_matmul_reference(x.cpu().float(), qw.to("cpu"), False, torch.float32)
riv = torch_rival(x.cpu(), qw.to("cpu"), False, torch.bfloat16)
print("case 1: kernel", y.item(), "ref", ref.item(), "rival", riv.item())
if hasattr(T, "rounding_floor"):
    T.check(y2, *case2, True, torch.float32, "case 2")
    T.check(y, x, qw, False, torch.bfloat16, "case 1")
    print("both pass the tests' check (floors", T.rounding_floor(*case2, True), T.rounding_floor(x, qw, False), ")")

"""S15-9's two failing draws through the tests' current ``check`` (with ``rounding_floor``), on this machine's device.
    PYTHONPATH=.:tests python .notes/n1_check_gpu.py
"""
import torch

from hlwq_kernels.dequant_matmul import Config, dequant_matmul, dequant_matmul_triton_method
from test_dequant_matmul import check, make_weight, make_x, rounding_floor

dev = "cuda" if torch.cuda.is_available() else "cpu"
qw = make_weight(1, 7, 1, 64, 1928, dev)
x = make_x((3,), 64, torch.bfloat16, 1928, dev)
print("case 2 floor", rounding_floor(x, qw, True))
check(dequant_matmul(x, qw, x_rotated=True, out_dtype=torch.float32), x, qw, True, torch.float32, "case 2")
qw = make_weight(1, 227, 6, 64, 1324, dev)
x = make_x((1,), 227, torch.bfloat16, 1324, dev)
cfg = Config("gemv2", BN=1, G=1, split_k=0, row_tiles=0, prefetch=False, depth=1, unroll=1)
print("case 1 floor", rounding_floor(x, qw, False))
check(dequant_matmul_triton_method(x, qw, False, torch.bfloat16, config=cfg), x, qw, False, torch.bfloat16, "case 1")
print("both pass")

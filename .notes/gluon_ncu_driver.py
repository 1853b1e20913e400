"""Driver for ncu: a few calls of the Gluon split kernel at 32k, 3 bits (and the Triton op for comparison)."""
import os, sys
sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
import torch
from hlwq_kernels import kv_quant_attn
from hlwq_kernels.kv_quant_attn import gluon as G
from hlwq_kernels.quantize_kv import default_codebook
bits = int(os.environ.get("BITS", 3)); lmax = 32768
g = torch.Generator(device="cuda").manual_seed(0)
w = 256 * bits // 32
c = (torch.randint(-2**31, 2**31 - 1, (1, 4, lmax, w), device="cuda", dtype=torch.int32, generator=g),
     (torch.rand(1, 4, lmax, device="cuda", generator=g) + 0.5).half(),
     torch.randint(-2**31, 2**31 - 1, (1, 4, lmax, w), device="cuda", dtype=torch.int32, generator=g),
     (torch.rand(1, 4, lmax, device="cuda", generator=g) + 0.5).half())
q = torch.randn(1, 16, 1, 256, device="cuda", dtype=torch.bfloat16)
lens = torch.full((1,), lmax, device="cuda", dtype=torch.int32)
cb = default_codebook(bits, "cuda")
ps, mr = int(os.environ.get("PS", 3)), int(os.environ.get("MR", 168)) or None
for _ in range(3):
    G.kv_attn_decode_gluon(q, *c, lens, None, bits, 256 ** -0.5, True, cb, per_sm=ps, maxnreg=mr)
    kv_quant_attn(q, *c, bits=bits, kv_lens=lens)
torch.cuda.synchronize()

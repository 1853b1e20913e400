"""Host (Python + launch) cost per eager call of kv_quant_attn at 32k, 3 bits: the Gluon path vs the Triton
tile, and a cProfile of the Gluon call."""
import cProfile, os, pstats, sys, time
sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
import torch
from hlwq_kernels import kv_quant_attn
from hlwq_kernels.kv_quant_attn import kv_quant_attn_triton_splits
from hlwq_kernels.quantize_kv import default_codebook
bits, lmax = 3, 32768
w = 256 * bits // 32
c = (torch.randint(-2**31, 2**31 - 1, (1, 4, lmax, w), device="cuda", dtype=torch.int32), (torch.rand(1, 4, lmax, device="cuda") + 0.5).half(),
     torch.randint(-2**31, 2**31 - 1, (1, 4, lmax, w), device="cuda", dtype=torch.int32), (torch.rand(1, 4, lmax, device="cuda") + 0.5).half())
q = torch.randn(1, 16, 1, 256, device="cuda", dtype=torch.bfloat16)
lens = torch.full((1,), lmax, device="cuda", dtype=torch.int32)
cb = default_codebook(bits, "cuda")
fns = {"gluon (default)": lambda: kv_quant_attn(q, *c, bits=bits, kv_lens=lens),
       "triton tile": lambda: kv_quant_attn_triton_splits(q, *c, lens, None, bits, 256 ** -0.5, True, cb,
                                                          variant="dsplit4-rep-lacc-pf")}
for name, f in fns.items():
    for _ in range(20):
        f()
    torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(200):
        f()
    host = (time.perf_counter() - t) / 200 * 1e6
    torch.cuda.synchronize()
    wall = (time.perf_counter() - t) / 200 * 1e6
    print(f"{name}: host {host:.1f} us per call, wall {wall:.1f} us per call (200 calls back to back)")
pr = cProfile.Profile()
pr.enable()
for _ in range(100):
    fns["gluon (default)"]()
pr.disable()
torch.cuda.synchronize()
pstats.Stats(pr).sort_stats("cumulative").print_stats(18)

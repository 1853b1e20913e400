"""GPU sweep for dequant_matmul (run on the device: python .notes/dq_tune.py [parts]).

Every time is the median of triton.testing.do_bench over a CUDA-graph replay of the call (L2
flushed between replays), so Python launch overhead is out of the numbers for both our
kernels and the cuBLAS bf16 baseline (decode runs in CUDA graphs). Prints us, GB/s of
codes+norms+x+y, TFLOP/s, the ratio vs cuBLAS bf16 F.linear of the same shape measured in the
same run, and the relative error vs an fp32 reference. Writes SASS of chosen kernels to $OUT.
Smoke test on CPU: DQ_DEVICE=cpu TRITON_INTERPRET=1 PYTHONPATH=. python .notes/dq_tune.py
"""

import collections
import os
import re
import sys
import time

import torch
import torch.nn.functional as F
import triton

from hlwq_kernels.dequant_matmul import triton as dq
from hlwq_kernels.dequant_matmul.triton import Config, dequant_matmul_rotated
from hlwq_kernels.lloyd_max import gaussian_codebook
from hlwq_kernels.quant import HLWQWeight, dequantize_weight

OUT = os.environ.get("OUT", "/tmp/dq_out")
os.makedirs(OUT, exist_ok=True)
LOG = open(os.path.join(OUT, "tune.txt"), "a")
T0 = time.time()
BUDGET = float(os.environ.get("DQ_BUDGET", "170"))
DEV = os.environ.get("DQ_DEVICE", "cuda")
SMALL = DEV == "cpu"  # smoke test of this script through the interpreter


def say(*a):
    s = " ".join(str(x) for x in a)
    print(s, flush=True)
    LOG.write(s + "\n")
    LOG.flush()


def S(n, k):
    return (min(n, 80), min(k, 256)) if SMALL else (n, k)


def MM(m):
    return min(m, 20) if SMALL else m


def left():
    return BUDGET - (time.time() - T0)


def bench(fn):
    """us per call: CUDA-graph replay timed by do_bench (L2 flushed before each replay)."""
    if SMALL:
        fn()
        t = time.time()
        fn()
        return (time.time() - t) * 1e6
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        fn()
        fn()
    torch.cuda.current_stream().wait_stream(s)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        fn()
    return triton.testing.do_bench(g.replay, warmup=10, rep=40, return_mode="median") * 1e3


def rand_weight(n, k, bits, block=128):
    g = torch.Generator(device=DEV).manual_seed(n + bits)
    packed = torch.randint(-2**31, 2**31 - 1, (n, k * bits // 32), dtype=torch.int32, device=DEV, generator=g)
    norms = (torch.rand(n, k // block, device=DEV, generator=g) * 0.02 + 0.01).half()
    return HLWQWeight(packed, norms, gaussian_codebook(bits, device=DEV), bits, block, (n, k))


def rel(y, x, w):
    rows = min(w.shape[0], 4096)
    sub = HLWQWeight(w.packed[:rows], w.norms[:rows], w.codebook, w.bits, w.block, (rows, w.shape[1]))
    ref = x.float() @ dequantize_weight(sub, rotated=True).T
    return float((y[:, :rows].float() - ref).norm() / ref.norm())


def nbytes(w, m):
    n, k = w.shape
    return w.packed.numel() * 4 + w.norms.numel() * 2 + m * k * 2 + m * n * 2


def try_cfg(x, w, cfg, base_us, tag=""):
    try:
        y = dequant_matmul_rotated(x, w, torch.bfloat16, config=cfg)
        err = rel(y, x, w)
        us = bench(lambda: dequant_matmul_rotated(x, w, torch.bfloat16, config=cfg))
    except Exception as e:  # noqa: BLE001 - report and go on
        say(f"   FAILED {tag}{cfg}: {type(e).__name__}: {str(e)[:400]}")
        return None
    m = x.shape[0]
    flops = 2 * m * w.shape[0] * w.shape[1]
    say(f"{us:9.2f} us {nbytes(w, m) / us / 1e3:7.0f} GB/s {flops / us / 1e6:7.1f} TF/s x{base_us / us:5.2f} vs bf16"
        f"  err {err:.1e}  {tag}{tuple(cfg)}")
    return us


_BASE = {}


def baseline(m, n, k):
    if (m, n, k) not in _BASE:
        a = torch.randn(m, k, device=DEV, dtype=torch.bfloat16)
        b = torch.randn(n, k, device=DEV, dtype=torch.bfloat16)
        us = bench(lambda: F.linear(a, b))
        say(f"{us:9.2f} us  cuBLAS bf16 F.linear M={m} {n}x{k}  ({2 * m * n * k / us / 1e6:.1f} TF/s, "
            f"{(n * k + m * k + m * n) * 2 / us / 1e3:.0f} GB/s)")
        del a, b
        _BASE[(m, n, k)] = us
    return _BASE[(m, n, k)]


def dump_last(fn_kernel, name):
    """SASS of the most recently compiled specialisation of a kernel."""
    if SMALL:
        return
    try:
        caches = fn_kernel.device_caches
        dev = torch.cuda.current_device()
        kernels = list(caches[dev][0].values())
        k = kernels[-1]
        sass = k.asm["sass"]
        with open(os.path.join(OUT, f"{name}.sass"), "w") as f:
            f.write(sass)
        ops = collections.Counter()
        for line in sass.splitlines():
            mm = re.match(r"^[^\t]*\t(@!?U?P\w+\s+)?([A-Z][A-Z0-9_]+)", line)
            if mm:
                ops[mm.group(2)] += 1
        say(f"SASS {name}: {sum(ops.values())} instrs, regs {k.n_regs}, spills {k.n_spills}; "
            + ", ".join(f"{a}:{b}" for a, b in ops.most_common(20)))
    except Exception as e:  # noqa: BLE001
        say(f"dump {name} failed: {type(e).__name__}: {e}")


# (BN, G, warps, prefetch, unroll): the first is the measured default of 2026-11-27 03:25
GEMV_SWEEP = [(32, 4, 4, False, 1), (32, 4, 4, False, 2), (32, 4, 4, False, 4), (32, 4, 4, False, 8),
              (16, 4, 2, False, 4), (64, 4, 8, False, 4), (32, 4, 4, True, 4), (16, 4, 4, False, 4),
              (64, 4, 4, False, 2), (128, 4, 8, False, 4)]


def part_gemv_sweep():
    say("\n== GEMV sweep, M=1, 5 bits, 24576x4096 (split_k=1) ==")
    n, k = S(24576, 4096)
    w = rand_weight(n, k, 5)
    x = torch.randn(1, k, device=DEV, dtype=torch.bfloat16)
    base = baseline(1, n, k)
    res = []
    for bn, g, nw, pf, un in GEMV_SWEEP:
        if left() < 5:
            break
        cfg = Config("gemv", BN=bn, G=g, split_k=1, num_warps=nw, prefetch=pf, unroll=un)
        us = try_cfg(x, w, cfg, base)
        if us:
            res.append((us, cfg))
    best = min(res, key=lambda r: r[0])[1] if res else Config("gemv", BN=32, G=4)
    return best


SHAPES = [(8192, 4096), (4096, 4096), (24576, 4096), (4096, 12288), (2048, 4096), (248320, 4096)]
if SMALL:
    SHAPES = [(64, 256), (96, 128)]


def part_gemv_shapes(best):
    say(f"\n== GEMV all shapes, M=1, best {best} with split-K variants ==")
    for bits in (5, 4, 3):
        for n, k in SHAPES:
            if left() < 75:
                return
            w = rand_weight(n, k, bits)
            x = torch.randn(1, k, device=DEV, dtype=torch.bfloat16)
            base = baseline(1, n, k)
            splits = (0, 1, 2, 4, 8) if n * k <= 8192 * 4096 and bits == 5 else (0,)
            for sk in splits:
                try_cfg(x, w, best._replace(split_k=sk), base, f"bits={bits} {n}x{k} ")
            if bits == 5 and n * k <= 8192 * 4096:
                try_cfg(x, w, best._replace(BN=8, split_k=0), base, f"bits={bits} {n}x{k} ")
            del w


def part_rotation():
    from hlwq_kernels import fwht
    for m in (1, 16, 2048):
        xr = torch.randn(MM(m), S(24576, 4096)[1], device=DEV, dtype=torch.bfloat16)
        say(f"fwht [{xr.shape[0]}, {xr.shape[1]}] bf16 block 128 (graph): {bench(lambda: fwht(xr, block=128)):.2f} us")


def part_dot(m, cfgs, shapes, budget_floor):
    say(f"\n== dot kernel, M={m}, 5 bits ==")
    for n, k in shapes:
        w = rand_weight(n, k, 5)
        x = torch.randn(m, k, device=DEV, dtype=torch.bfloat16)
        base = baseline(m, n, k)
        for cfg in cfgs:
            if left() < budget_floor:
                return
            try_cfg(x, w, cfg, base, f"{n}x{k} ")
        del w


def main():
    parts = sys.argv[1:] or ["gemv", "dot16", "dot2048"]
    say(f"# {torch.cuda.get_device_name() if DEV == 'cuda' else DEV} torch {torch.__version__} triton {triton.__version__}")
    if "gemv" in parts:
        best = part_gemv_sweep()
        say(f"best gemv: {best}")
        if "shapes" in parts:
            part_rotation()
            part_gemv_shapes(best)
    if "dot16" in parts:
        part_dot(MM(16), [Config("dot", BN=64, G=4, BM=16, num_warps=4, num_stages=1),
                          Config("dot", BN=64, G=4, BM=16, num_warps=4, num_stages=1, unroll=2),
                          Config("dot", BN=64, G=4, BM=16, num_warps=4, num_stages=1, unroll=4),
                          Config("dot", BN=128, G=4, BM=16, num_warps=8, num_stages=1, unroll=2),
                          Config("dot", BN=64, G=2, BM=16, num_warps=4, num_stages=1, unroll=4)],
                 [S(24576, 4096), S(2048, 4096), S(4096, 12288)], 40)
        dump_last(dq._dot_kernel, "dot16")
    if "dot2048" in parts:
        part_dot(MM(2048), [Config("slab", BN=32, G=4), Config("slab", BN=64, G=4, num_warps=8),
                            Config("dot", BN=64, G=2, BM=32, num_warps=4, num_stages=1, split_k=1)],
                 [S(24576, 4096)], 8)
        dump_last(dq._dot_kernel, "dot2048")
    say(f"done in {time.time() - T0:.0f} s")


if __name__ == "__main__":
    main()

"""dequant_matmul on the GPU against cuBLAS bf16 ``F.linear`` on the same Qwen3.5-9B shapes.

Cases (issue #4): M=1 at 3/4/5 bits, M=16 and M=2048 at 5 bits, every shape of ``LINEARS``
(M=2048 skips lm_head: 4 TFLOP per call). ``hlwq`` times the kernel on an already rotated x
(``x_rotated=True``: several projections share one rotation); ``hlwq+rot`` includes the fwht
pass. Every function is captured in a CUDA graph and ``gpu_bench`` times graph replays (L2
flushed between them by do_bench): decode runs in graphs, and without one the Python launch
cost (~20-40 us for a Triton launch) would be timed instead of the GPU. The baseline gets the
same treatment. ``extra_info``: nbytes = packed codes + norms + x + y, flops = 2*M*N*K, and
``vs_bf16`` (baseline us / ours, the baseline of the same shape timed earlier in this run);
``test_zz_summary`` prints the table.

Floors (H100, 3.02 TB/s copy rate): M=1 5 bits gate_up 64.5 MB -> 21 us, down 32.2 MB -> 11 us,
lm_head 651 MB -> 216 us; M=16 same bytes; M=2048 2*M*N*K at 790 TFLOP/s (gate_up 0.52 ms).
"""

import pytest
import torch
import torch.nn.functional as F

from shapes import HLWQ_BLOCK, LINEARS

from hlwq_kernels import fwht
from hlwq_kernels.dequant_matmul import dequant_matmul
from hlwq_kernels.lloyd_max import gaussian_codebook
from hlwq_kernels.quant import HLWQWeight

RESULTS: dict = {}  # (M, shape name, bits or "bf16", impl) -> us
_WEIGHTS: dict = {}


def _weight(n, k, bits):
    """Random codes and norms (speed does not depend on the values; quantizing lm_head would
    take longer than the benchmark). One weight alive at a time."""
    key = (n, k, bits)
    if key not in _WEIGHTS:
        _WEIGHTS.clear()
        torch.cuda.empty_cache()
        g = torch.Generator(device="cuda").manual_seed(n + bits)
        packed = torch.randint(-2**31, 2**31 - 1, (n, k * bits // 32), dtype=torch.int32, device="cuda", generator=g)
        norms = (torch.rand(n, k // HLWQ_BLOCK, device="cuda", generator=g) * 0.02 + 0.01).half()
        _WEIGHTS[key] = HLWQWeight(packed, norms, gaussian_codebook(bits, device="cuda"), bits, HLWQ_BLOCK, (n, k))
    return _WEIGHTS[key]


def _graphed(fn):
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        for _ in range(2):
            fn()
    torch.cuda.current_stream().wait_stream(s)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        fn()
    return g.replay


def _run(benchmark, gpu_bench, m, name, n, k, bits, impl):
    x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
    flops = 2 * m * n * k
    if impl == "bf16":
        wt = torch.randn(n, k, device="cuda", dtype=torch.bfloat16)
        nbytes = (n * k + m * k + m * n) * 2
        fn = lambda: F.linear(x, wt)  # noqa: E731
    else:
        w = _weight(n, k, bits)
        nbytes = w.packed.numel() * 4 + w.norms.numel() * 2 + (m * k + m * n) * 2
        if impl == "hlwq":
            xr = fwht(x, block=HLWQ_BLOCK)
            fn = lambda: dequant_matmul(xr, w, x_rotated=True)  # noqa: E731
        else:
            fn = lambda: dequant_matmul(x, w)  # noqa: E731
    ms = gpu_bench(benchmark, _graphed(fn), nbytes=nbytes, flops=flops, M=m, shape=f"{n}x{k}", bits=bits, impl=impl)
    us = ms * 1e3
    RESULTS[(m, name, bits, impl)] = us
    base = RESULTS.get((m, name, "bf16", "bf16"))
    if base and impl != "bf16":
        benchmark.extra_info["vs_bf16"] = round(base / us, 2)
        benchmark.extra_info["note"] = f"x{base / us:.2f} vs bf16"
    print(f"\n[dequant_matmul] M={m} {name} {n}x{k} bits={bits} {impl}: {us:.2f} us, "
          f"{nbytes / us / 1e3:.0f} GB/s, {flops / us / 1e6:.1f} TFLOP/s"
          + (f", x{base / us:.2f} vs bf16" if base and impl != "bf16" else ""), flush=True)
    if impl == "bf16":
        del wt


def _cases(m, bits_list, impls, names=None):
    out = []
    for name, n, k in LINEARS:
        if names and name not in names:
            continue
        out.append(pytest.param(name, n, k, "bf16", "bf16", id=f"{name}-bf16"))
        for bits in bits_list:
            for impl in impls:
                out.append(pytest.param(name, n, k, bits, impl, id=f"{name}-q{bits}-{impl}"))
    return out


@pytest.mark.benchmark(group="dequant_matmul M=1")
@pytest.mark.parametrize("name, n, k, bits, impl", _cases(1, [5, 4, 3], ["hlwq"]) + [
    pytest.param(name, n, k, 5, "hlwq+rot", id=f"{name}-q5-hlwq+rot") for name, n, k in LINEARS])
def test_m1(benchmark, gpu_bench, name, n, k, bits, impl):
    _run(benchmark, gpu_bench, 1, name, n, k, bits, impl)


@pytest.mark.benchmark(group="dequant_matmul M=16")
@pytest.mark.parametrize("name, n, k, bits, impl", _cases(16, [5], ["hlwq", "hlwq+rot"]))
def test_m16(benchmark, gpu_bench, name, n, k, bits, impl):
    _run(benchmark, gpu_bench, 16, name, n, k, bits, impl)


@pytest.mark.benchmark(group="dequant_matmul M=2048")
@pytest.mark.parametrize("name, n, k, bits, impl", _cases(2048, [5], ["hlwq"],
                                                          names=[nm for nm, _, _ in LINEARS if nm != "lm_head"]))
def test_m2048(benchmark, gpu_bench, name, n, k, bits, impl):
    _run(benchmark, gpu_bench, 2048, name, n, k, bits, impl)


def test_zz_summary():
    """Speed ratios vs cuBLAS bf16 (ours must be faster: see issue #4's targets)."""
    if not RESULTS:
        pytest.skip("no benchmark ran")
    lines = ["| M | shape | bits | impl | us | bf16 us | x vs bf16 |", "|---|---|---|---|---|---|---|"]
    for (m, name, bits, impl), us in sorted(RESULTS.items(), key=lambda kv: (kv[0][0], kv[0][1], str(kv[0][2]))):
        if impl == "bf16":
            continue
        base = RESULTS.get((m, name, "bf16", "bf16"))
        ratio = f"{base / us:.2f}" if base else "-"
        lines.append(f"| {m} | {name} | {bits} | {impl} | {us:.1f} | {base:.1f} | {ratio} |" if base else
                     f"| {m} | {name} | {bits} | {impl} | {us:.1f} | - | - |")
    print("\n" + "\n".join(lines))

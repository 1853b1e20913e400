"""``dequant_matmul(pdl=True)``: the GEMV kernels launched with programmatic dependent launch.

A kernel launched that way may start while the kernel before it on the stream still runs; it streams its first
weight tiles, then waits (``griddepcontrol.wait``) before it reads x or writes y. What can go wrong is reading x
before the kernel that writes it has finished, or a different result. So, on the GPU: each GEMV kernel (gemvt with and
without the fused rotation, gemv2, gemv2's split-K sum) gives the same bits launched either way; the public op with PDL
(which may pick another kernel: ``gemvt.pdl_options``) is right; and chains in a CUDA graph where each call reads the
output of the call just before it, replayed with new inputs, give the bits of the same calls run one at a time (a
call that read its x early would see the previous replay's values). On the CPU (the interpreter) the flag is accepted
and changes nothing.
"""

from __future__ import annotations

import pytest
import torch

from hlwq_kernels.dequant_matmul import dequant_matmul, dequant_matmul_reference
from test_dequant_matmul import check, make_weight, make_x

needs_gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


def test_pdl_is_checked_and_ignored_on_cpu():
    qw = make_weight(40, 300, 5, 128, 0, "cpu")
    x = make_x((2,), 300, torch.float32, 0, "cpu")
    with pytest.raises(TypeError, match="pdl"):
        dequant_matmul(x, qw, pdl=1)
    from hlwq_kernels._common import interpreting

    for impl in ("reference", "triton") if interpreting() else ("reference",):  # (the GPU run: CPU tensors)
        y = dequant_matmul(x, qw, impl=impl, pdl=True)
        assert torch.equal(y, dequant_matmul(x, qw, impl=impl))
        assert torch.allclose(y, dequant_matmul_reference(x, qw, False, torch.float32), atol=1e-4, rtol=1e-4)


def test_extra_slots():
    """The unused ring slots that hold a PDL grid to ``per_sm`` programs per SM (228 KiB per SM, 1 KiB reserved and
    4 KiB of scratch per program): 3 bits, 8 rows x 2 stages, 4 per SM: 25616 ring bytes + 3 x 8192 = 50192 (5
    programs need > 45670 each, 4 fit up to 53248 + scratch); 4 bits: 33808 + 16384; 5 bits, 4 stages, 2 per SM:
    the ring alone (100384) keeps a third out."""
    from hlwq_kernels.dequant_matmul.gemvt import extra_slots

    assert extra_slots(8, 2, 3, 4) == 3
    assert extra_slots(8, 2, 4, 4) == 1
    assert extra_slots(8, 4, 5, 2) == 0
    assert extra_slots(8, 2, 3, 5) == 0  # no count of 8 KiB slots lands between the bounds
    for rows, stages, bits, per_sm in [(8, 2, 3, 3), (4, 2, 3, 5), (2, 2, 5, 1), (8, 3, 4, 2)]:
        xs = extra_slots(rows, stages, bits, per_sm)
        w = 4 * rows * 32 * (2 if bits == 3 else 4) * 4
        ring = stages * (w + (4 * rows * 128 if bits != 4 else 0) + 64 * rows + 8) + xs * w
        assert (per_sm + 1) * (ring + 1024) > 228 * 1024 >= per_sm * (ring + 1024 + 4096), (rows, stages, bits, xs)


# (bits, N, K, M): gemvt (3/4 bits everywhere, 5 bits at N >= 16384), gemv2 (5 bits at N = 2048 / 8192, M = 2..4,
# a ragged N and K), gemv2 with split-K and its sum kernel (5 bits, N = 4096, K = 12288)
PATHS = [(5, 16384, 4096, 1), (4, 4096, 4096, 1), (3, 2048, 8192, 1), (5, 2048, 4096, 1), (5, 8192, 4096, 1),
         (5, 4096, 12288, 1), (4, 1000, 300, 3), (3, 64, 4096, 2)]


@needs_gpu
@pytest.mark.parametrize("bits,n,k,m", PATHS)
@pytest.mark.parametrize("x_rotated", [False, True])
def test_gpu_pdl_public_op(bits, n, k, m, x_rotated):
    qw = make_weight(n, k, bits, 128, n + k, "cuda")
    x = make_x((m,), qw.padded_in_features if x_rotated else k, torch.bfloat16, bits, "cuda")
    y = dequant_matmul(x, qw, x_rotated=x_rotated, pdl=True)
    check(y, x, qw, x_rotated, torch.bfloat16, f"pdl {bits} bits {n}x{k} M={m}")


@needs_gpu
@pytest.mark.parametrize("bits,n,k,m", PATHS)
def test_gpu_pdl_same_bits_per_kernel(bits, n, k, m):
    """gemvt (rotated x and the fused rotation, where it applies) and gemv2 (+ its split-K sum), each launched with
    and without PDL."""
    from hlwq_kernels.dequant_matmul import gemvt as T
    from hlwq_kernels.dequant_matmul.triton import _gemv2, _pick
    from hlwq_kernels.fwht import fwht

    qw = make_weight(n, k, bits, 128, n + k, "cuda")
    x = make_x((m,), k, torch.bfloat16, bits, "cuda")
    xr = fwht(torch.nn.functional.pad(x, (0, qw.padded_in_features - k)), block=128)
    if T.supported(m, bits, 128, qw.padded_in_features, qw.packed, qw.norms):
        for rotated in (True, False) if k == qw.padded_in_features else (True,):
            xin = xr if rotated else x
            a = T.gemvt(xin, qw, torch.bfloat16, rows=8, stages=2, per_sm=4, rotated=rotated, pdl=True)
            assert torch.equal(a, T.gemvt(xin, qw, torch.bfloat16, rows=8, stages=2, per_sm=4, rotated=rotated))
    cfg = _pick(m, n, qw.padded_in_features, 128, "gemv2", bits)
    a = _gemv2(xr, qw, torch.bfloat16, cfg, pdl=True)
    check(a, xr, qw, True, torch.bfloat16, "gemv2 pdl")
    assert torch.equal(a, _gemv2(xr, qw, torch.bfloat16, cfg))


@needs_gpu
@pytest.mark.parametrize("x_rotated", [False, True])
def test_gpu_pdl_chain_in_a_graph(x_rotated):
    """Six calls with PDL, each on the output of the one before (gemvt at 3, 4 and 5 bits, at K = 4096 with the fused
    rotation where x is not rotated; gemv2 at K = 2048), captured in one CUDA graph and replayed with new inputs:
    the bits of the same calls run one at a time."""
    layers = [make_weight(16384, 4096, 5, 128, 1, "cuda"),   # gemvt, 5 bits
              make_weight(4096, 16384, 5, 128, 2, "cuda"),   # gemv2, split-K + sum
              make_weight(8192, 4096, 3, 128, 3, "cuda"),    # gemvt, 3 bits
              make_weight(4096, 8192, 4, 128, 4, "cuda"),    # gemvt, 4 bits, two K slices
              make_weight(2048, 4096, 5, 128, 5, "cuda"),    # gemv2
              make_weight(4096, 2048, 3, 128, 6, "cuda")]    # gemv2 (K < 4096)

    def chain(x, sync=False):
        for qw in layers:
            x = dequant_matmul(x, qw, x_rotated=x_rotated, pdl=True)
            if sync:  # one call at a time: nothing can overlap
                torch.cuda.synchronize()
            x = x / 64  # (an elementwise kernel between the calls, as in a model; keeps the values in range)
        return x

    xs = make_x((1,), 4096, torch.bfloat16, 0, "cuda")
    chain(xs)  # compile outside the capture
    torch.cuda.synchronize()
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        ys = chain(xs)
    for seed in (1, 2, 3):
        x = make_x((1,), 4096, torch.bfloat16, seed, "cuda")
        xs.copy_(x)
        g.replay()
        torch.cuda.synchronize()
        want = chain(x, sync=True)
        assert torch.isfinite(want).all() and want.abs().max() > 0
        assert torch.equal(ys, want), f"replay {seed}: max diff {(ys.float() - want.float()).abs().max()}"


@needs_gpu
def test_gpu_pdl_back_to_back_in_a_graph():
    """Calls with no kernel between them (each GEMV's x is the previous GEMV's output, read right after its wait)."""
    a = make_weight(4096, 4096, 3, 128, 7, "cuda")  # gemvt
    b = make_weight(4096, 4096, 5, 128, 8, "cuda")  # gemv2

    def chain(x, sync=False):
        for qw in (a, b, a, b, a):
            x = dequant_matmul(x, qw, x_rotated=True, pdl=True)
            if sync:
                torch.cuda.synchronize()
        return x

    xs = make_x((1,), 4096, torch.bfloat16, 0, "cuda") / 64
    chain(xs)
    torch.cuda.synchronize()
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        ys = chain(xs)
    for seed in (1, 2):
        x = make_x((1,), 4096, torch.bfloat16, seed, "cuda") / 64
        xs.copy_(x)
        g.replay()
        torch.cuda.synchronize()
        want = chain(x, sync=True)
        assert torch.isfinite(want).all() and want.abs().max() > 0
        assert torch.equal(ys, want)

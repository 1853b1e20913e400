"""The int8 tensor-core GEMV (hlwq_kernels/dequant_matmul/gluon.py) and the int8-grid weight codebooks.

On the CPU (Triton's interpreter cannot run Gluon): the lookup programs executed by ``lut.run`` on real packed
words, assembled into the MMA operand by the kernel's maps and checked level by level against the codebook,
then the kernel's whole arithmetic (x planes, integer MMA, block scaling) replayed in numpy against the
reference. On the GPU: the compiled kernel against the reference, and that the dispatch takes it.
"""

from __future__ import annotations


import numpy as np
import pytest
import torch
from hypothesis import example, given, settings
from hypothesis import strategies as st

from hlwq_kernels import quantize_weight
from hlwq_kernels.dequant_matmul import dequant_matmul
from hlwq_kernels.dequant_matmul import gluon as G
from hlwq_kernels.kv_quant_attn import lut
from hlwq_kernels.lloyd_max import gaussian_codebook
from hlwq_kernels.pack_bits import unpack_bits
from hlwq_kernels.quant import grid
from test_dequant_matmul import check, make_x

ON_GPU = torch.cuda.is_available()
needs_gpu = pytest.mark.skipif(not ON_GPU, reason="needs CUDA")


def make_grid_weight(n, k, bits, seed, device="cpu"):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(n, k, generator=g) * (0.02 + torch.rand(n, 1, generator=g))
    return quantize_weight(w.to(device), bits, block=128, impl="reference",
                           codebook=grid.weight_codebook(bits, device=device))


# ---------------------------------------------------------------------------------------------
# the codebooks
@pytest.mark.parametrize("bits", grid.GRID_BITS)
def test_grid_codebook(bits):
    """The int8-grid 3/4/5-bit weight codebook (opt-in; the default stays Lloyd-Max) is on an int8 grid: multiples of
    1 / alpha, |k| <= 126, symmetric, nonzero, and its N(0, 1) MSE within the stated cost of the exact optimum
    (0.0024% / 0.055% / 0.59%; bounds 0.01% / 0.1% / 0.7%)."""
    alpha, k = grid.grid(bits)
    cb = grid.weight_codebook(bits)
    assert cb.dtype == torch.float32 and cb.shape == (1 << bits,)
    assert torch.equal(cb, (torch.tensor(k, dtype=torch.float64) / alpha).float())
    assert all(abs(v) <= 126 and v != 0 for v in k) and list(k) == sorted(k) and list(k) == [-v for v in k[::-1]]
    c = gaussian_codebook(bits).double()
    base, snapped = grid._cell_mse(c[None]), grid._cell_mse(cb.double()[None])
    assert float(snapped / base - 1) <= {3: 1e-4, 4: 1e-3, 5: 7e-3}[bits]
    assert float((cb.double() - c).abs().max()) < 0.5 / alpha + 1e-6
    assert torch.equal(quantize_weight(torch.randn(4, 128), bits, impl="reference").codebook, gaussian_codebook(bits))
    assert torch.equal(grid.weight_codebook(6), gaussian_codebook(6))


def test_int8_tables_only_for_the_grid_codebook():
    for bits in grid.GRID_BITS:
        cb = grid.weight_codebook(bits)
        t = grid.int8_tables(cb, bits)
        assert t is not None and t.dtype == torch.int32 and t.tolist() == list(grid.table_words(bits))
        assert grid.int8_tables(cb, bits) is t  # cached per codebook tensor
        assert grid.int8_tables(gaussian_codebook(bits), bits) is None
        other = cb.clone()
        other[0] -= 0.01
        assert grid.int8_tables(other, bits) is None
    assert grid.int8_tables(gaussian_codebook(6), 6) is None


def test_code_of_slot_is_a_permutation():
    for bits in grid.GRID_BITS:
        assert sorted(G.code_of_slot(s, bits) for s in range(128)) == list(range(128))
    assert G.code_of_slot(1, 5) == 1 and G.code_of_slot(4, 5) == 32 and G.code_of_slot(1, 3) == 2


# ---------------------------------------------------------------------------------------------
# the replay
def _operand(qw) -> np.ndarray:
    """int32 [N, nblk, 128 k-slots]: what the kernel's lookups put in the MMA operand (4 bits: the sum of its two
    operands), from the packed words through ``lut.run`` and the kernel's register -> k-slot map."""
    bits, kp = qw.bits, qw.padded_in_features
    p = qw.packed.numpy().view(np.uint32)
    n, nblk = p.shape[0], kp // 128
    tab = grid.table_words(bits)
    names = {3: ("LT0", "LT1"), 4: ("TL0", "TL1", "TH0", "TH1"), 5: G._T5}[bits]
    tables = {nm: np.uint32(v & 0xFFFFFFFF) for nm, v in zip(names, tab)}
    out = np.zeros((n, nblk, 128), dtype=np.int64)
    blk = np.arange(nblk)[None, :, None, None]
    t = np.arange(4)[None, None, :, None]
    rows = np.arange(n)[:, None, None, None]

    def byte(reg, e):
        b = ((reg >> np.uint32(8 * e)) & np.uint32(0xFF)).astype(np.int64)
        return b - 256 * (b >> 7)  # int8 value of byte e

    if bits == 3:
        u = np.arange(2)[None, None, None, :]
        w = p[rows, blk * 8 + 2 * t + u]
        s = p[rows, kp // 16 + blk * 4 + t]  # [n, nblk, 4, 1]
        regs = lut.run(G.PROGRAMS[3], {"W": w, "H": (s >> (16 * u).astype(np.uint32)) & np.uint32(0xFFFF), **tables})
        for g in range(4):
            for e in range(4):
                kk, h = 2 * u + (g >> 1), g & 1
                slot = 32 * kk + 16 * h + 4 * t + e  # [1, 1, 4, 2]
                np.put_along_axis(out, np.broadcast_to(slot, w.shape).reshape(n, nblk, -1),
                                  byte(regs[f"$o{g}"], e).reshape(n, nblk, -1), axis=2)
        return out
    q = np.arange(4)[None, None, None, :]
    nw = p[rows, blk * 16 + 4 * t + q]
    inputs = {"N": nw, **tables}
    if bits == 5:
        inputs["S"] = p[rows, kp // 8 + blk * 4 + t] >> (8 * q).astype(np.uint32)
    regs = lut.run(G.PROGRAMS[bits], inputs)
    for h in range(2):
        for e in range(4):
            slot = np.broadcast_to(32 * q + 16 * h + 4 * t + e, nw.shape).reshape(n, nblk, -1)
            v = byte(regs[f"$o{h}"], e)
            if bits == 4:
                v = v + byte(regs[f"$o{h + 2}"], e)
            np.put_along_axis(out, slot, v.reshape(n, nblk, -1), axis=2)
    return out


@pytest.mark.parametrize("bits", grid.GRID_BITS)
def test_lookup_programs_give_the_codebook_levels(bits):
    """Every k-slot of the MMA operand holds alpha * codebook[code] of the code ``code_of_slot`` names, for
    weights covering all 2**bits codes in every position."""
    qw = make_grid_weight(70, 384, bits, bits)
    codes = unpack_bits(qw.packed, bits, qw.padded_in_features).numpy()  # [N, Kp]
    n, nblk = codes.shape[0], codes.shape[1] // 128
    assert len(np.unique(codes)) == 1 << bits
    k = np.array(grid.grid(bits)[1])
    perm = np.array([G.code_of_slot(s, bits) for s in range(128)])
    want = k[codes.reshape(n, nblk, 128)[:, :, perm]]
    got = _operand(qw)
    assert np.array_equal(got, want)


def test_lookup_replay_can_fail():
    """The same check with a wrong table or a wrong map does not pass."""
    qw = make_grid_weight(8, 128, 5, 0)
    codes = unpack_bits(qw.packed, 5, 128).numpy().reshape(8, 1, 128)
    k = np.array(grid.grid(5)[1])
    perm = np.array([G.code_of_slot(s, 3) for s in range(128)])  # the 3-bit map
    assert not np.array_equal(_operand(qw), k[codes[:, :, perm]])


def replay(x: torch.Tensor, qw) -> torch.Tensor:
    """The kernel's arithmetic for rotated x [M, Kp]: per 128-block the int8 planes hi, lo of x / (max|x| / 127),
    the integer MMA with the operand, scaled by norm * scale / alpha (lo: / 254), summed over blocks in fp32."""
    bits, kp = qw.bits, qw.padded_in_features
    alpha = grid.grid(bits)[0]
    a = torch.tensor(_operand(qw), dtype=torch.float64)  # [N, nblk, 128]
    perm = torch.tensor([G.code_of_slot(s, bits) for s in range(128)])
    xb = x.float().view(x.shape[0], kp // 128, 128)[:, :, perm]  # k-slot order
    sx = (xb.abs().amax(-1) / 127).where(xb.abs().amax(-1) > 0, torch.ones(()))
    xn = xb / sx[..., None]
    hi = torch.floor(xn + 0.5)
    lo = torch.floor((xn - hi) * 254 + 0.5)
    assert hi.abs().max() <= 127 and lo.abs().max() <= 127
    acc_h = torch.einsum("nbk,mbk->mnb", a, hi.double())
    acc_l = torch.einsum("nbk,mbk->mnb", a, lo.double())
    f = (acc_h * sx[:, None, :] + acc_l * (sx[:, None, :] / 254)) / alpha
    return (f * qw.norms.double()[None]).sum(-1).float()


@pytest.mark.parametrize("bits", grid.GRID_BITS)
@pytest.mark.parametrize("m", [1, 3, 4])
def test_x_planes_kernel(bits, m):
    """``_xq8_kernel`` (Triton; the interpreter on the CPU): column 2 j / 2 j + 1 = token j's hi / lo planes in
    k-slot order, zero past M, with scales s / alpha and s / (254 alpha); hi + lo / 254 recovers x to ~2^-15."""
    scales = torch.tensor([1.0, 1e-3, 30.0]).repeat_interleave(128)
    x = torch.randn(m, 384, generator=torch.Generator().manual_seed(m)) * scales
    x[0, 128:256] = 0.0  # an all-zero block: scale 1, planes 0
    dev = "cuda" if ON_GPU else "cpu"
    xq, f = G.x_planes(x.to(dev), bits)
    xq, f = xq.cpu().long(), f.cpu().double()
    alpha = grid.grid(bits)[0]
    perm = torch.tensor([G.code_of_slot(s, bits) for s in range(128)])
    xb = x.double().view(m, 3, 128)[:, :, perm]  # [m, blk, slot]
    for j in range(4):
        hi, lo = xq[:, 2 * j].double(), xq[:, 2 * j + 1].double()  # [blk, 128]
        if j >= m:
            assert not hi.any() and not lo.any()
            continue
        s = f[:, 2 * j] * alpha
        assert torch.allclose(f[:, 2 * j + 1] * 254 * alpha, s)
        rec = (hi + lo / 254) * s[:, None]
        amax = xb[j].abs().amax(-1)
        # half a lo step, + 0.2% for the kernel's fp32 x / s (measured up to 0.50014 of a step)
        assert torch.all((rec - xb[j]).abs() <= amax[:, None] / 127 / 254 * 0.502 + 1e-30)
        assert hi.abs().max() <= 127 and lo.abs().max() <= 127
    assert not xq[1, 0].any() and abs(float(f[1, 0]) * alpha - 1.0) < 1e-6  # the zero block: planes 0, scale 1


@settings(max_examples=12, deadline=None)
@given(bits=st.sampled_from(grid.GRID_BITS), m=st.integers(1, 4), nt=st.integers(1, 3), nblk=st.integers(1, 4),
       dtype=st.sampled_from([torch.bfloat16, torch.float16]), seed=st.integers(0, 2**16))
@example(bits=5, m=1, nt=2, nblk=3, dtype=torch.bfloat16, seed=0)
def test_replay_matches_reference(bits, m, nt, nblk, dtype, seed):
    qw = make_grid_weight(64 * nt, 128 * nblk, bits, seed)
    x = make_x((m,), 128 * nblk, dtype, seed, "cpu")
    y = replay(x.float(), qw)  # x_rotated: x is taken as already rotated
    check(y.to(dtype), x, qw, True, dtype, "replay")


# ---------------------------------------------------------------------------------------------
# GPU
@needs_gpu
@settings(max_examples=25, deadline=None)
@given(bits=st.sampled_from(grid.GRID_BITS), m=st.integers(1, 4), n=st.sampled_from([64, 192, 4096]),
       k=st.sampled_from([128, 384, 4096, 12288]), dtype=st.sampled_from([torch.bfloat16, torch.float16]),
       out_dtype=st.sampled_from([None, torch.float32]), seed=st.integers(0, 2**16))
@example(bits=5, m=1, n=4096, k=4096, dtype=torch.bfloat16, out_dtype=None, seed=0)
@example(bits=4, m=2, n=192, k=384, dtype=torch.float16, out_dtype=torch.float32, seed=1)
@example(bits=3, m=4, n=64, k=12288, dtype=torch.bfloat16, out_dtype=None, seed=2)
def test_gpu_gemv8_matches_reference(bits, m, n, k, dtype, out_dtype, seed):
    qw = make_grid_weight(n, k, bits, seed, "cuda")
    x = make_x((m,), k, dtype, seed, "cuda")
    table = grid.int8_tables(qw.codebook, bits)
    assert table is not None
    out_dtype = out_dtype or dtype
    y = G.gemv8(x, qw, out_dtype, table)
    check(y, x, qw, True, out_dtype, f"gemv8 bits={bits} m={m} {n}x{k}")


@needs_gpu
@pytest.mark.parametrize("bits", grid.GRID_BITS)
@pytest.mark.parametrize("ks,rt,pf,pair,early", [(1, 1, 1, False, False), (2, 3, 2, True, False),
                                                 (4, 2, 1, False, False), (8, 5, 2, True, False),
                                                 (8, 2, 2, False, False), (4, 1, 1, True, False),
                                                 (8, 2, 2, True, True)])
def test_gpu_gemv8_plans(ks, rt, pf, pair, early, bits):
    """K slices of 1-8 blocks, 1-5 row tiles per program (a ragged last program), prefetch 1 and 2 steps, one or
    two blocks per trip, the early loads."""
    qw = make_grid_weight(640, 1024, bits, ks, "cuda")
    x = make_x((2,), 1024, torch.bfloat16, rt, "cuda")
    y = G.gemv8(x, qw, torch.bfloat16, grid.int8_tables(qw.codebook, bits), ks=ks, rt=rt, pf=pf, pair=pair,
                early=early)
    check(y, x, qw, True, torch.bfloat16, f"ks={ks} rt={rt} pf={pf} pair={pair} early={early}")


@needs_gpu
def test_gpu_gemv8_is_opt_in():
    """dequant_matmul's default never runs gemv8 (measured slower than gemv2, perf/RESULTS.md S7-2); the method
    "gemv8" runs it for the grid codebook and refuses other cases with a clear error."""
    from hlwq_kernels.dequant_matmul import dequant_matmul_triton_method

    calls = []
    real = G.gemv8
    G.gemv8 = lambda *a, **kw: calls.append(1) or real(*a, **kw)
    try:
        qw = make_grid_weight(256, 512, 5, 0, "cuda")
        x = make_x((1,), 512, torch.bfloat16, 1, "cuda")
        check(dequant_matmul(x, qw), x, qw, False, torch.bfloat16, "auto")
        assert not calls
        check(dequant_matmul_triton_method(x, qw, False, torch.bfloat16, method="gemv8"), x, qw, False,
              torch.bfloat16, "gemv8")
        assert calls
        other = quantize_weight(torch.randn(256, 512, device="cuda"), 5)  # the exact Lloyd-Max codebook
        for xx, w in ((x, other), (x.float(), qw), (make_x((5,), 512, torch.bfloat16, 2, "cuda"), qw)):
            with pytest.raises(ValueError, match="gemv8"):
                dequant_matmul_triton_method(xx, w, False, torch.bfloat16, method="gemv8")
    finally:
        G.gemv8 = real

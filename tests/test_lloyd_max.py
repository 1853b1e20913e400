"""Lloyd-Max codebooks: the exact N(0, 1) optimum and Lloyd's algorithm on samples."""

import math
import time

import pytest
import torch
from hypothesis import example, given, settings
from hypothesis import strategies as st

from hlwq_kernels.lloyd_max import (IMPLS, LloydMaxFit, gaussian_codebook, gaussian_mse, lloyd_assign,
                                    lloyd_assign_reference, lloyd_max_fit)
from hlwq_kernels.lloyd_max.reference import gaussian_levels

from helpers import assert_close_verbose

# ANCHORS.md: Lloyd-Max for N(0, 1), optimal MSE by bits (Max 1960, recomputed)
OPTIMAL_MSE = {1: 0.36338, 2: 0.117482, 3: 0.0345478, 4: 0.00950101, 5: 0.00250467, 6: 0.00064424,
               7: 0.000163478, 8: 4.11851e-05}


def test_impls_pairs():
    assert IMPLS == ((lloyd_assign_reference, IMPLS[0][1]),)


# ---------------------------------------------------------------------------------------------
# gaussian_codebook
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("bits", range(1, 9))
def test_gaussian_codebook_is_the_optimum(bits):
    cb = gaussian_codebook(bits)
    assert cb.dtype == torch.float32 and cb.shape == (1 << bits,)
    assert bool((cb[1:] > cb[:-1]).all())
    torch.testing.assert_close(cb, -cb.flip(0), atol=1e-6, rtol=0)
    mse = gaussian_mse(cb)  # exact, from the density
    assert abs(mse / OPTIMAL_MSE[bits] - 1) <= 5e-4, (bits, mse, OPTIMAL_MSE[bits])
    # float64 levels are a fixed point of Lloyd's update: each level is its cell's centroid
    y = torch.tensor(gaussian_levels(bits), dtype=torch.float64)
    t = torch.cat([torch.tensor([-math.inf]), (y[1:] + y[:-1]) / 2, torch.tensor([math.inf])]).double()
    # upper half only (symmetric, checked above): the mass from erfc avoids 1 - cdf cancelling
    a, b = t[:-1][y.numel() // 2:], t[1:][y.numel() // 2:]
    pdf_a = torch.exp(-a * a / 2) / math.sqrt(2 * math.pi)
    pdf_b = torch.where(torch.isinf(b), torch.zeros_like(b), torch.exp(-b * b / 2) / math.sqrt(2 * math.pi))
    mass = 0.5 * (torch.erfc(a / math.sqrt(2)) - torch.erfc(b / math.sqrt(2)))
    centroid = (pdf_a - pdf_b) / mass
    assert float((centroid - y[y.numel() // 2:]).abs().max()) < 1e-9


def test_gaussian_mse_known_values():
    # 1 bit: levels +-sqrt(2/pi), MSE 1 - 2/pi; a single level at 0 would be 1 (here 2 equal levels)
    assert gaussian_mse(torch.tensor([-math.sqrt(2 / math.pi), math.sqrt(2 / math.pi)])) == pytest.approx(
        1 - 2 / math.pi, rel=1e-12)
    assert gaussian_mse(torch.tensor([0.0, 0.0])) == pytest.approx(1.0, rel=1e-12)
    assert gaussian_mse(torch.tensor([-1.0, 1.0])) == pytest.approx(2 - 2 * 2 / math.sqrt(2 * math.pi), rel=1e-12)


def test_gaussian_codebook_fast_and_cached():
    gaussian_levels.cache_clear()
    t0 = time.perf_counter()
    for b in range(1, 9):
        gaussian_codebook(b)
    assert time.perf_counter() - t0 < 2.0  # ~0.05 s on the 2-core dev machine; the old Lloyd loop took 5 s
    hits = gaussian_levels.cache_info().hits
    a = gaussian_codebook(8)
    assert gaussian_levels.cache_info().hits == hits + 1
    a[0] = 123.0  # callers get a fresh tensor: mutating it does not poison the cache
    assert float(gaussian_codebook(8)[0]) != 123.0


def test_gaussian_codebook_rejects_bits():
    with pytest.raises(ValueError, match="bits must be in 1..8, got 9"):
        gaussian_codebook(9)


# ---------------------------------------------------------------------------------------------
# lloyd_assign: Triton vs reference
# ---------------------------------------------------------------------------------------------

@settings(max_examples=6)
@given(n=st.integers(1, 3000), bits=st.integers(1, 8), seed=st.integers(0, 2**16), dtype=st.sampled_from(
    [torch.float32, torch.bfloat16, torch.float16]))
@example(n=1, bits=1, seed=0, dtype=torch.float32)
@example(n=781, bits=8, seed=1, dtype=torch.float32)
@example(n=63, bits=5, seed=2, dtype=torch.bfloat16)
def test_assign_triton_matches_reference(device, n, bits, seed, dtype):
    g = torch.Generator().manual_seed(seed)
    x = (torch.randn(n, generator=g) * 2 + 0.5).to(dtype)
    levels = torch.sort(torch.randn(1 << bits, generator=g) * 2).values
    # put some samples exactly on thresholds (ties go to the lower level in both paths)
    thr = (levels[1:] + levels[:-1]) * 0.5
    k = min(n, thr.numel())
    x[:k] = thr[:k].to(dtype)
    ref = lloyd_assign(x, levels, impl="reference")
    tri = lloyd_assign(x.to(device), levels.to(device), impl="triton")
    assert torch.equal(tri.counts.cpu(), ref.counts), "counts differ"
    scale = float(x.float().abs().sum()) + 1.0
    assert_close_verbose(tri.sums, ref.sums, atol=2e-6 * scale, what="sums")
    assert abs(float(tri.sse) - float(ref.sse)) <= 1e-5 * float(ref.sse) + 1e-6


def test_assign_ties_go_to_lower_level(device):
    levels = torch.tensor([-1.0, 0.0, 1.0, 3.0])
    x = torch.tensor([-0.5, 0.5, 2.0, 2.0000002, -10.0, 10.0])
    for impl in ("reference", "triton"):
        st_ = lloyd_assign(x.to(device) if impl == "triton" else x, levels.to(device) if impl == "triton" else levels,
                           impl=impl)
        assert st_.counts.cpu().tolist() == [2.0, 1.0, 1.0, 2.0], impl  # -0.5|0.5|2.0 tie low


# ---------------------------------------------------------------------------------------------
# lloyd_max_fit
# ---------------------------------------------------------------------------------------------

def _check_monotone(fit: LloydMaxFit):
    d = fit.distortion
    assert len(d) >= 1
    assert all(b <= a for a, b in zip(d, d[1:])), d


@pytest.mark.parametrize("bits", [1, 2, 4])
def test_fit_reference_converges_to_gaussian_codebook(bits):
    x = torch.randn(1 << 16, generator=torch.Generator().manual_seed(bits))
    bad_init = 0.3 * gaussian_codebook(bits)  # far from optimal: Lloyd has work to do
    fit = lloyd_max_fit(x, bits, init=bad_init, max_iter=300, tol=1e-8, impl="reference")
    _check_monotone(fit)
    assert fit.distortion[-1] < 0.9 * fit.distortion[0]
    assert fit.levels.dtype == torch.float32 and bool((fit.levels[1:] > fit.levels[:-1]).all())
    # 2**16 samples: the fit is near the N(0, 1) optimum, within sampling noise (at 4 bits this
    # sample's empirical optimum is shifted by ~0.08: the near-flat translation mode)
    torch.testing.assert_close(fit.levels, gaussian_codebook(bits), atol=0.2, rtol=0)
    assert gaussian_mse(fit.levels) <= OPTIMAL_MSE[bits] * 1.02
    # the last entry is the returned levels' distortion
    final = float(lloyd_assign(x, fit.levels, impl="reference").sse) / x.numel()
    assert fit.distortion[-1] == pytest.approx(final, rel=1e-9)


@settings(max_examples=4)
@given(n=st.integers(2, 1500), bits=st.integers(1, 6), seed=st.integers(0, 2**16), heavy=st.booleans())
@example(n=781, bits=4, seed=0, heavy=True)
def test_fit_triton_matches_reference_and_is_monotone(device, n, bits, seed, heavy):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, generator=g)
    if heavy:
        x = x / torch.rand(n, generator=g).clamp_min(0.05)  # heavy tails
    init = torch.sort(torch.rand(1 << bits, generator=g) * 2 - 1).values
    ref = lloyd_max_fit(x, bits, init=init, max_iter=8, tol=0.0, impl="reference")
    tri = lloyd_max_fit(x.to(device), bits, init=init, max_iter=8, tol=0.0, impl="triton")
    _check_monotone(ref)
    _check_monotone(tri)
    k = min(len(ref.distortion), len(tri.distortion))
    assert k >= 2 or ref.distortion[0] == 0
    # the paths differ only in fp32 summation order: same trajectory while it is not at a tie
    for a, b in zip(ref.distortion[:k], tri.distortion[:k]):
        assert abs(a - b) <= 1e-4 * a + 1e-9, (ref.distortion, tri.distortion)


def test_fit_default_init_and_large_input():
    x = torch.randn(1 << 20, generator=torch.Generator().manual_seed(0)) * 3 + 7
    fit = lloyd_max_fit(x, 4, impl="reference")
    _check_monotone(fit)
    # tolerance 0.02 sigma: the outer levels' sampling noise
    torch.testing.assert_close(fit.levels, gaussian_codebook(4) * 3 + 7, atol=0.02 * 3, rtol=0)


def test_fit_constant_samples(device):
    for impl, dev in (("reference", "cpu"), ("triton", device)):
        fit = lloyd_max_fit(torch.full((100,), 2.5, device=dev), 3, impl=impl)
        assert fit.levels.tolist() == [2.5] * 8 and fit.distortion == (0.0,), impl


def test_fit_fewer_distinct_values_than_levels(device):
    x = torch.tensor([0.0, 1.0, 1.0, 5.0] * 10)
    for impl, dev in (("reference", "cpu"), ("triton", device)):
        fit = lloyd_max_fit(x.to(dev), 3, impl=impl, max_iter=50)
        lv = fit.levels.cpu()
        assert bool((lv[1:] > lv[:-1]).all()), lv  # strictly increasing: distinct and defined
        assert {0.0, 1.0, 5.0} <= set(lv.tolist())
        assert fit.distortion[-1] == 0.0
        _check_monotone(fit)


def test_fit_empty_cells_keep_their_level():
    x = torch.tensor([-1.0, -1.1, 1.0, 1.1])
    init = torch.tensor([-1.0, 0.0, 0.05, 1.0])  # cells 1 and 2 hold no sample
    fit = lloyd_max_fit(x, 2, init=init, max_iter=1, tol=0.0, impl="reference")
    assert fit.levels.tolist() == pytest.approx([-1.05, 0.0, 0.05, 1.05])


def test_fit_errors():
    x = torch.randn(10)
    with pytest.raises(ValueError, match="samples must be non-empty"):
        lloyd_max_fit(torch.empty(0), 2)
    with pytest.raises(ValueError, match="samples must be finite, got 1 NaN and 0 inf"):
        lloyd_max_fit(torch.tensor([0.0, float("nan")]), 2)
    with pytest.raises(ValueError, match="samples must be finite, got 0 NaN and 1 inf"):
        lloyd_max_fit(torch.tensor([0.0, float("inf")]), 2)
    with pytest.raises(TypeError, match="samples.dtype"):
        lloyd_max_fit(torch.arange(10), 2)
    with pytest.raises(ValueError, match="bits must be in 1..8, got 0"):
        lloyd_max_fit(x, 0)
    with pytest.raises(ValueError, match=r"init must have shape \[4\], got \[3\]"):
        lloyd_max_fit(x, 2, init=torch.zeros(3))
    with pytest.raises(ValueError, match="init must be sorted"):
        lloyd_max_fit(x, 1, init=torch.tensor([1.0, 0.0]))
    with pytest.raises(ValueError, match="init must be finite"):
        lloyd_max_fit(x, 1, init=torch.tensor([0.0, float("inf")]))
    with pytest.raises(ValueError, match="tol must be a finite float >= 0"):
        lloyd_max_fit(x, 2, tol=-1.0)
    with pytest.raises(ValueError, match="max_iter must be in 0..inf, got -1"):
        lloyd_max_fit(x, 2, max_iter=-1)
    with pytest.raises(ValueError, match="impl must be one of"):
        lloyd_max_fit(x, 2, impl="fast")


def test_fit_max_iter_zero_returns_init():
    x = torch.randn(100)
    init = torch.tensor([-1.0, 0.0, 0.5, 2.0])
    fit = lloyd_max_fit(x, 2, init=init, max_iter=0)
    assert torch.equal(fit.levels, init) and len(fit.distortion) == 1

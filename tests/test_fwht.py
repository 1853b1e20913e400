"""fwht: properties against the dense Hadamard matrix; Triton (GPU or interpreter) vs reference."""

import math

import pytest
import torch
from hypothesis import assume, example, given
from hypothesis import strategies as st

from hlwq_kernels import fwht, hadamard_matrix
from hlwq_kernels.fwht import fwht_triton_method
from helpers import assert_close_verbose

DTYPES = [torch.float32, torch.bfloat16, torch.float16]
# bf16/fp16 outputs are rounded once from fp32; 2 ulps of |y| plus a tiny atol covers that and the
# interpreter's truncating fp32->bf16 conversion (TRITON_CPU.md).
ULP = {torch.float32: 2e-6, torch.bfloat16: 2 * 2**-8, torch.float16: 2 * 2**-11}


def dense_ref(x: torch.Tensor, block: int) -> torch.Tensor:
    h = hadamard_matrix(block, dtype=torch.float64)
    y = x.to(torch.float64).reshape(*x.shape[:-1], x.shape[-1] // block, block) @ h
    return y.reshape(x.shape)


def check_against_dense(y, x, block):
    ref = dense_ref(x, block)
    tol = ULP[x.dtype] * (ref.abs() + 1e-2 * ref.abs().max())
    err = (y.to(torch.float64) - ref).abs()
    assert bool((err <= tol + 1e-6).all()), f"max err {err.max():.3g} (block {block}, {x.dtype})"


@given(lead=st.sampled_from([(1,), (3,), (63,), (2, 5), (781,)]), log_block=st.integers(1, 10),
       n_blocks=st.integers(1, 3), dtype=st.sampled_from(DTYPES), seed=st.integers(0, 2**31 - 1))
@example(lead=(781,), log_block=7, n_blocks=1, dtype=torch.bfloat16, seed=0)
@example(lead=(1,), log_block=10, n_blocks=1, dtype=torch.float32, seed=1)
def test_fwht_triton_matches_dense(device, lead, log_block, n_blocks, dtype, seed):
    block = 1 << log_block
    assume(math.prod(lead) * block * n_blocks <= 40_000)
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(*lead, block * n_blocks, generator=g).to(dtype)
    y = fwht(x.to(device), block=block, impl="triton")
    assert y.dtype == dtype and y.shape == x.shape
    check_against_dense(y.cpu(), x, block)


@pytest.mark.parametrize("method", ["butterfly", "dot"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("block", [16, 64, 128])
def test_fwht_triton_each_kernel(device, method, dtype, block):
    x = torch.randn(67, 2 * block).to(dtype)
    y = fwht_triton_method(x.to(device), block, method)
    check_against_dense(y.cpu(), x, block)


@given(dtype=st.sampled_from(DTYPES), log_block=st.integers(1, 12), seed=st.integers(0, 100))
def test_fwht_reference_properties(dtype, log_block, seed):
    block = 1 << log_block
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(3, block, generator=g).to(dtype)
    y = fwht(x, impl="reference")
    if block <= 1024:
        check_against_dense(y, x, block)
    # involution and norm preservation in fp32
    x32 = x.float()
    assert_close_verbose(fwht(fwht(x32, impl="reference"), impl="reference"), x32, atol=1e-5, what="H(Hx)")
    assert_close_verbose(fwht(x32, impl="reference").norm(dim=-1), x32.norm(dim=-1), atol=1e-4, rtol=1e-5)


@given(seed=st.integers(0, 1000), a=st.floats(-3, 3), b=st.floats(-3, 3))
def test_fwht_linear_and_involution(device, seed, a, b):
    g = torch.Generator().manual_seed(seed)
    x, z = torch.randn(2, 5, 256, generator=g).to(device)
    lhs = fwht(a * x + b * z, block=128, impl="triton")
    rhs = a * fwht(x, block=128, impl="triton") + b * fwht(z, block=128, impl="triton")
    assert_close_verbose(lhs, rhs, atol=1e-4, rtol=1e-5, what="linearity")
    assert_close_verbose(fwht(fwht(x, block=128, impl="triton"), block=128, impl="triton"), x, atol=1e-5)
    assert_close_verbose(fwht(x, block=128, impl="triton").norm(dim=-1), x.norm(dim=-1), atol=1e-4, rtol=1e-5)


def test_fwht_non_contiguous_input(device):
    x = torch.randn(64, 48, device=device).t()  # [48, 64], strides (1, 48)
    assert not x.is_contiguous()
    y = fwht(x, block=32, impl="triton")
    assert_close_verbose(y, fwht(x.contiguous(), block=32, impl="reference"), atol=1e-5)
    assert torch.equal(x, x.clone())  # input untouched


def test_fwht_does_not_mutate(device):
    x = torch.randn(4, 128, device=device)
    x0 = x.clone()
    fwht(x, impl="triton")
    assert torch.equal(x, x0)


@pytest.mark.parametrize("bad, err, match", [
    (dict(x=torch.randn(4, 12)), ValueError, "power of two"),
    (dict(x=torch.randn(4, 96), block=64), ValueError, "multiple of block"),
    (dict(x=torch.randn(4, 64), block=1), ValueError, "block must be in"),
    (dict(x=torch.randn(4, 64).to(torch.float64)), TypeError, "x.dtype"),
    (dict(x=torch.arange(64)), TypeError, "x.dtype"),
    (dict(x=[1.0, 2.0]), TypeError, "x must be a torch.Tensor"),
    (dict(x=torch.randn(4, 64), impl="cuda"), ValueError, "impl must be one of"),
])
def test_fwht_validation(bad, err, match):
    with pytest.raises(err, match=match):
        fwht(**bad)


def test_fwht_triton_block_limit(device):
    x = torch.randn(1, 8192, device=device)
    with pytest.raises(ValueError, match="block must be <= 4096"):
        fwht(x, impl="triton")

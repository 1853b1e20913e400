"""``fwht``: orthonormal Walsh-Hadamard transform over blocks of the last dimension."""

from __future__ import annotations

import torch

from .._common import FLOAT_DTYPES, check_power_of_two, check_tensor, resolve_impl
from .reference import fwht_reference, hadamard_matrix
from .triton import fwht_triton, fwht_triton_method

IMPLS = ((fwht_reference, fwht_triton),)  # reference/launcher pairs: same arguments (tests)

__all__ = ["fwht", "fwht_reference", "fwht_triton", "fwht_triton_method", "hadamard_matrix", "MAX_TRITON_BLOCK"]

MAX_TRITON_BLOCK = 4096


def fwht(x: torch.Tensor, *, block: int | None = None, impl: str = "auto") -> torch.Tensor:
    """Orthonormal Walsh-Hadamard transform (Sylvester order, scaled by ``1/sqrt(block)``).

    Applied independently to consecutive blocks of ``block`` elements along the last
    dimension. It is its own inverse: ``fwht(fwht(x)) == x``.

    Args:
        x: ``[..., D]`` float32/bfloat16/float16, any leading shape, any strides.
        block: power of two dividing ``D``; default ``D`` (which must then be a power of two).
            The Triton kernel takes 2..4096; the reference any power of two.
    Returns:
        ``[..., D]`` in ``x.dtype`` (computed in fp32).
    """
    check_tensor(x, "x", min_ndim=1, dtypes=FLOAT_DTYPES)
    d = x.shape[-1]
    if block is None:
        block = d
    check_power_of_two(block, "block", lo=2)
    if d % block:
        raise ValueError(f"x.shape[-1] must be a multiple of block={block}, got {d}")
    if resolve_impl(impl, x) == "triton":
        if block > MAX_TRITON_BLOCK:
            raise ValueError(f"block must be <= {MAX_TRITON_BLOCK} for impl='triton', got {block}")
        return fwht_triton(x, block)
    return fwht_reference(x, block)

"""``pack_bits`` / ``unpack_bits``: dense bit-packing of integer codes (layout in ``layout.py``)."""

from __future__ import annotations

import torch

from .._common import INT_CODE_DTYPES, check_bits, check_int, check_tensor, resolve_impl
from .layout import packed_words, padded_len, plane_offsets, plane_widths
from .reference import pack_bits_reference, unpack_bits_reference
from .triton import pack_bits_triton, unpack_bits_triton

IMPLS = ((pack_bits_reference, pack_bits_triton), (unpack_bits_reference, unpack_bits_triton))

__all__ = [
    "pack_bits", "unpack_bits", "packed_words", "padded_len", "plane_widths", "plane_offsets",
    "pack_bits_reference", "unpack_bits_reference", "pack_bits_triton", "unpack_bits_triton",
]


def pack_bits(codes: torch.Tensor, bits: int, *, impl: str = "auto") -> torch.Tensor:
    """Pack integer codes densely, ``bits`` bits each, along the last dimension.

    Args:
        codes: ``[..., N]`` integer tensor (uint8/int8/int16/int32/int64), values in ``[0, 2**bits)``.
        bits: 1..8.
    Returns:
        ``[..., ceil(N / 32) * bits]`` int32 words in the bit-sliced plane layout
        (docs/FORMAT.md); a row is padded with zero codes to a multiple of 32.
    """
    check_bits(bits)
    check_tensor(codes, "codes", min_ndim=1, dtypes=INT_CODE_DTYPES)
    if codes.numel():
        lo, hi = int(codes.min()), int(codes.max())
        if lo < 0 or hi >= (1 << bits):
            raise ValueError(f"codes must be in [0, {1 << bits}) for bits={bits}, got values in [{lo}, {hi}]")
    if resolve_impl(impl, codes) == "triton":
        return pack_bits_triton(codes, bits)
    return pack_bits_reference(codes, bits)


def unpack_bits(packed: torch.Tensor, bits: int, n: int, *, impl: str = "auto") -> torch.Tensor:
    """Inverse of :func:`pack_bits`.

    Args:
        packed: ``[..., W]`` int32 words, ``W == ceil(n / 32) * bits``.
        bits: 1..8.
        n: number of codes per row to return.
    Returns:
        ``[..., n]`` uint8 codes.
    """
    check_bits(bits)
    check_int(n, "n", 0)
    check_tensor(packed, "packed", min_ndim=1, dtypes=(torch.int32,))
    want = packed_words(n, bits)
    if packed.shape[-1] != want:
        raise ValueError(f"packed.shape[-1] must be ceil(n/32)*bits = {want} for n={n}, bits={bits}, "
                         f"got {packed.shape[-1]}")
    if resolve_impl(impl, packed) == "triton":
        return unpack_bits_triton(packed, bits, n)
    return unpack_bits_reference(packed, bits, n)

"""KV-cache quantization: ``quantize_kv``, ``dequantize_kv`` and the in-place ``kv_cache_write_``
(one tensor) / ``kv_cache_write_kv_`` (keys and values of one step, one launch).

A key or value vector ``x [D]`` (D a power of two, 64..256) is stored as
* one fp16 ``norm = rms(H x)`` (H the orthonormal Walsh-Hadamard matrix over D, so also
  ``||x|| / sqrt(D)``; saturated at the fp16 maximum 65504), and
* D Lloyd-Max codes of ``bits`` bits, ``code[d]`` = the level of ``codebook`` nearest to
  ``(H x)[d] / norm`` (rotated coordinates are ~N(0, 1), whatever the outliers of x),
  packed into ``D * bits / 32`` int32 words in the bit-sliced plane layout
  (``hlwq_kernels/pack_bits/layout.py``; docs/FORMAT.md, "KV cache").
Dequantized: ``x ~= H (norm * codebook[code])`` (H is its own inverse).

Why ``kv_cache_write_`` mutates: the cache is owned by the model and preallocated with static
shapes (``[B, H, Lmax, words]`` + ``[B, H, Lmax]``); a functional append would copy the whole
cache (O(context) bytes) per decode step, which is exactly the failure this format exists to
avoid. So it (and its K+V twin) are the ops that write into their arguments; the trailing
underscore says so (PyTorch's convention), and they touch only the new tokens' words and norms.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from .._common import (FLOAT_DTYPES, check_bits, check_finite, check_power_of_two, check_same_device,
                       check_tensor, resolve_impl)
from .codebooks import default_codebook, tables
from .reference import (dequantize_kv_reference, kv_cache_write_kv_reference, kv_cache_write_reference,
                        quantize_kv_reference)
from .triton import kv_cache_write_kv_triton, kv_cache_write_triton, quantize_kv_triton

IMPLS = ((quantize_kv_reference, quantize_kv_triton), (kv_cache_write_reference, kv_cache_write_triton),
         (kv_cache_write_kv_reference, kv_cache_write_kv_triton))

__all__ = ["QuantizedKV", "quantize_kv", "dequantize_kv", "kv_cache_write_", "kv_cache_write_kv_",
           "default_codebook", "tables", "quantize_kv_reference", "quantize_kv_triton", "kv_cache_write_reference",
           "kv_cache_write_triton", "kv_cache_write_kv_reference", "kv_cache_write_kv_triton",
           "dequantize_kv_reference", "check_codebook", "MIN_D", "MAX_D"]

MIN_D, MAX_D = 64, 256
INDEX_DTYPES = (torch.int32, torch.int64)


class QuantizedKV(NamedTuple):
    """``packed``: int32 ``[..., D * bits / 32]``; ``norms``: fp16 ``[...]``."""

    packed: torch.Tensor
    norms: torch.Tensor


def check_codebook(codebook, bits: int, device: torch.device) -> torch.Tensor:
    """Resolve ``codebook=None`` to the cached N(0,1) Lloyd-Max levels (at 2/3 bits on their int8 grid,
    ``codebooks``); else check it."""
    if codebook is None:
        return default_codebook(bits, device)
    check_tensor(codebook, "codebook", shape=(1 << bits,), dtypes=(torch.float32,))
    if codebook.device != device:
        raise ValueError(f"codebook must be on {device}, got {codebook.device}")
    return codebook


def _check_d(d: int, name: str) -> None:
    check_power_of_two(d, name, lo=MIN_D, hi=MAX_D)


def quantize_kv(x: torch.Tensor, bits: int, *, codebook: torch.Tensor | None = None,
                impl: str = "auto") -> QuantizedKV:
    """Quantize key/value vectors along the last dimension.

    Args:
        x: ``[..., D]`` float32/bfloat16/float16, D a power of two in 64..256.
        bits: 1..8 (the attention kernel is tested at 2, 3, 4 and 8).
        codebook: sorted float32 ``[2**bits]``; default: Lloyd-Max levels for N(0, 1) (at 2 and 3 bits
            snapped to an int8 grid, which the int8 GPU attention kernel needs; MSE +0.0024% at most).
    Returns:
        ``QuantizedKV(packed int32 [..., D*bits/32], norms fp16 [...])``.
    """
    check_tensor(x, "x", min_ndim=1, dtypes=FLOAT_DTYPES)
    check_bits(bits)
    _check_d(x.shape[-1], "x.shape[-1]")
    if not x.is_cuda:  # a device-wide finiteness check would cost a host sync per decode step
        check_finite(x, "x")
    codebook = check_codebook(codebook, bits, x.device)
    if resolve_impl(impl, x) == "triton":
        return QuantizedKV(*quantize_kv_triton(x, bits, codebook))
    return QuantizedKV(*quantize_kv_reference(x, bits, codebook))


def dequantize_kv(packed: torch.Tensor, norms: torch.Tensor, *, bits: int, codebook: torch.Tensor | None = None,
                  rotated: bool = False) -> torch.Tensor:
    """Rebuild fp32 vectors ``[..., D]`` from ``packed [..., D*bits/32]`` and ``norms [...]``;
    with ``rotated=True`` the rotated ``norm * codebook[code]`` the attention kernel works with.
    Plain PyTorch (for references, tests and quality measurements; the kernels never do this)."""
    check_bits(bits)
    check_tensor(packed, "packed", min_ndim=1, dtypes=(torch.int32,))
    check_tensor(norms, "norms", shape=tuple(packed.shape[:-1]), dtypes=(torch.float16,))
    check_same_device(packed=packed, norms=norms)
    if (packed.shape[-1] * 32) % bits:
        raise ValueError(f"packed.shape[-1]*32 must be a multiple of bits={bits}, got {packed.shape[-1]}")
    _check_d(packed.shape[-1] * 32 // bits, "packed.shape[-1]*32/bits (D)")
    codebook = check_codebook(codebook, bits, packed.device)
    return dequantize_kv_reference(packed, norms, bits, codebook, rotated)


def check_cache(packed, norms, name: str, bits: int) -> tuple[int, int, int, int]:
    """Check a cache pair ``packed [B, H, L, D*bits/32]`` int32 (words contiguous), ``norms [B, H, L]``
    fp16; return (B, H, L, D)."""
    check_tensor(packed, f"{name}_packed", ndim=4, dtypes=(torch.int32,))
    b, h, lmax, w = packed.shape
    if (w * 32) % bits:
        raise ValueError(f"{name}_packed.shape[-1]*32 must be a multiple of bits={bits}, got {w}")
    d = w * 32 // bits
    _check_d(d, f"{name}_packed.shape[-1]*32/bits (D)")
    if packed.stride(-1) != 1:
        raise ValueError(f"{name}_packed must have contiguous words (stride(-1) == 1), got strides {packed.stride()}")
    check_tensor(norms, f"{name}_norms", shape=(b, h, lmax), dtypes=(torch.float16,))
    return b, h, lmax, d


def _check_new(x, name: str, b: int, h: int, d: int) -> None:
    """New vectors ``[B, H, T, D]`` matching a cache of ``[B, H, L, D*bits/32]``."""
    check_tensor(x, name, ndim=4, dtypes=FLOAT_DTYPES)
    if x.shape[0] != b or x.shape[1] != h or x.shape[3] != d:
        raise ValueError(f"{name} must have shape [{b}, {h}, T, {d}] to match the cache, got {list(x.shape)}")


def _check_start_range(start: torch.Tensor, t: int, lmax: int) -> None:
    """``0 <= start[b]`` and ``start[b] + T <= L``: CPU only (on CUDA it would cost a host sync)."""
    if start.numel() and (int(start.min()) < 0 or int(start.max()) + t > lmax):
        raise ValueError(f"start must be in [0, L - T] = [0, {lmax - t}], got values in "
                         f"[{int(start.min())}, {int(start.max())}]")


def kv_cache_write_(cache_packed: torch.Tensor, cache_norms: torch.Tensor, x: torch.Tensor, start: torch.Tensor,
                    *, bits: int, codebook: torch.Tensor | None = None, impl: str = "auto") -> None:
    """Quantize new vectors and write them into a cache **in place** (a mutating op; see the
    module docstring). Token ``t`` of sequence ``b`` goes to position ``start[b] + t``.

    Args:
        cache_packed: ``[B, H, L, D*bits/32]`` int32, words contiguous (other strides free, e.g. a
            slice of a larger cache).
        cache_norms: ``[B, H, L]`` float16.
        x: ``[B, H, T, D]`` float32/bfloat16/float16, any strides (e.g. ``k.transpose(1, 2)``).
        start: ``[B]`` int32/int64, the cached length of each sequence before this write.
    CPU tensors are checked for ``0 <= start[b]`` and ``start[b] + T <= L``; on CUDA that would
    cost a host sync per step, so positions outside ``[0, L)`` are skipped instead (never written).
    """
    check_bits(bits)
    b, h, lmax, d = check_cache(cache_packed, cache_norms, "cache", bits)
    _check_new(x, "x", b, h, d)
    check_tensor(start, "start", shape=(b,), dtypes=INDEX_DTYPES)
    check_same_device(cache_packed=cache_packed, cache_norms=cache_norms, x=x, start=start)
    if not x.is_cuda:
        check_finite(x, "x")
        _check_start_range(start, x.shape[2], lmax)
    codebook = check_codebook(codebook, bits, x.device)
    if resolve_impl(impl, cache_packed, cache_norms, x, start) == "triton":
        kv_cache_write_triton(cache_packed, cache_norms, x, start, bits, codebook)
    else:
        kv_cache_write_reference(cache_packed, cache_norms, x, start, bits, codebook)


def kv_cache_write_kv_(k_packed: torch.Tensor, k_norms: torch.Tensor, v_packed: torch.Tensor, v_norms: torch.Tensor,
                       k: torch.Tensor, v: torch.Tensor, start: torch.Tensor, *, bits: int,
                       codebook: torch.Tensor | None = None, impl: str = "auto") -> None:
    """Keys and values of one step into their caches **in place**, in one kernel launch: the same
    result as ``kv_cache_write_(k_packed, k_norms, k, start, ...)`` then
    ``kv_cache_write_(v_packed, v_norms, v, start, ...)``, at half the launches (a decode append is
    launch bound; docs/FORMAT.md, "Appending").

    Args:
        k_packed, v_packed: ``[B, H, L, D*bits/32]`` int32, words contiguous, the same shape (other
            strides free: e.g. the two halves of one ``[B, 2H, L, W]`` buffer). The K and V regions
            must not overlap (the Triton path writes them concurrently).
        k_norms, v_norms: ``[B, H, L]`` float16.
        k, v: ``[B, H, T, D]`` float32/bfloat16/float16, the same shape (dtypes and strides free).
        start: ``[B]`` int32/int64, shared by K and V; checked on CPU, and out-of-range positions
            skipped on CUDA, as in ``kv_cache_write_``.
    """
    check_bits(bits)
    b, h, lmax, d = check_cache(k_packed, k_norms, "k", bits)
    vshape = check_cache(v_packed, v_norms, "v", bits)
    if vshape != (b, h, lmax, d):
        raise ValueError(f"v_packed must have the shape of k_packed {list(k_packed.shape)}, got {list(v_packed.shape)}")
    _check_new(k, "k", b, h, d)
    check_tensor(v, "v", ndim=4, dtypes=FLOAT_DTYPES)
    if v.shape != k.shape:
        raise ValueError(f"v must have the shape of k {list(k.shape)}, got {list(v.shape)}")
    check_tensor(start, "start", shape=(b,), dtypes=INDEX_DTYPES)
    check_same_device(k_packed=k_packed, k_norms=k_norms, v_packed=v_packed, v_norms=v_norms, k=k, v=v, start=start)
    if not k.is_cuda:
        check_finite(k, "k")
        check_finite(v, "v")
        _check_start_range(start, k.shape[2], lmax)
    codebook = check_codebook(codebook, bits, k.device)
    if resolve_impl(impl, k_packed, k_norms, v_packed, v_norms, k, v, start) == "triton":
        kv_cache_write_kv_triton(k_packed, k_norms, v_packed, v_norms, k, v, start, bits, codebook)
    else:
        kv_cache_write_kv_reference(k_packed, k_norms, v_packed, v_norms, k, v, start, bits, codebook)

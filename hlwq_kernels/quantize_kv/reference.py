"""Plain PyTorch KV-vector quantization (fp32 inside); also the CPU path.

A vector ``x [D]`` becomes ``y = H x`` (orthonormal Walsh-Hadamard over D), one fp16 norm
``n = min(rms(y), 65504)`` and ``D`` Lloyd-Max codes ``code[d] = argmin_j |y[d] / n - c[j]|``
(ties: the lower code, as ``torch.bucketize`` on the midpoints), bit-packed along D.
"""

from __future__ import annotations

import torch

from ..fwht.reference import fwht_reference
from ..pack_bits.reference import pack_bits_reference, unpack_bits_reference

FP16_MAX = 65504.0
_TINY = torch.finfo(torch.float32).tiny


def quantize_kv_reference(x: torch.Tensor, bits: int, codebook: torch.Tensor):
    """``x [..., D]`` -> (packed int32 ``[..., D*bits/32]``, norms fp16 ``[...]``)."""
    y = fwht_reference(x.to(torch.float32), x.shape[-1])
    norms = y.pow(2).mean(-1).sqrt().clamp_max(FP16_MAX).to(torch.float16)
    u = y / norms.float().clamp_min(_TINY)[..., None]
    thresholds = (codebook[1:] + codebook[:-1]) * 0.5
    codes = torch.bucketize(u, thresholds.to(u.device, torch.float32))
    return pack_bits_reference(codes, bits), norms


def kv_cache_write_reference(cache_packed: torch.Tensor, cache_norms: torch.Tensor, x: torch.Tensor,
                             start: torch.Tensor, bits: int, codebook: torch.Tensor) -> None:
    """Quantize ``x [B, H, T, D]`` and write token t of sequence b at position ``start[b] + t``
    (in place). Positions at or beyond the cache length are dropped, as the kernel does."""
    b_, h_, t_, _ = x.shape
    packed, norms = quantize_kv_reference(x, bits, codebook)
    lmax = cache_packed.shape[2]
    pos = start.to(torch.int64).reshape(b_, 1) + torch.arange(t_, device=start.device)
    for b in range(b_):
        keep = (pos[b] >= 0) & (pos[b] < lmax)
        p = pos[b][keep].to(cache_packed.device)
        cache_packed[b, :, p] = packed[b][:, keep.to(packed.device)]
        cache_norms[b, :, p] = norms[b][:, keep.to(norms.device)]


def kv_cache_write_kv_reference(k_packed: torch.Tensor, k_norms: torch.Tensor, v_packed: torch.Tensor,
                                v_norms: torch.Tensor, k: torch.Tensor, v: torch.Tensor, start: torch.Tensor,
                                bits: int, codebook: torch.Tensor) -> None:
    """Keys then values: two ``kv_cache_write_reference`` calls (in place)."""
    kv_cache_write_reference(k_packed, k_norms, k, start, bits, codebook)
    kv_cache_write_reference(v_packed, v_norms, v, start, bits, codebook)


def dequantize_kv_reference(packed: torch.Tensor, norms: torch.Tensor, bits: int, codebook: torch.Tensor,
                            rotated: bool) -> torch.Tensor:
    """``packed [..., D*bits/32]``, ``norms [...]`` -> fp32 ``[..., D]`` (rotated basis if asked)."""
    d = packed.shape[-1] * 32 // bits
    codes = unpack_bits_reference(packed, bits, d).long()
    y = codebook.to(torch.float32)[codes] * norms.float()[..., None]
    return y if rotated else fwht_reference(y, d)

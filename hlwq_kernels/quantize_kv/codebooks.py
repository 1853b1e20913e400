"""Cached per-device tables of the default (N(0,1) Lloyd-Max) codebooks.

``gaussian_codebook`` builds a new tensor (a host-to-device copy) on every call; a decode step
must not pay that, so the default codebook, its midpoints and its fp16 copy are built once per
(bits, device). These are constants, not configuration. A caller-supplied codebook gets its
tables computed per call (a few tiny ops).
"""

from __future__ import annotations

import torch

from ..lloyd_max import gaussian_codebook

_TABLES: dict = {}


def byte_lut(cb16: torch.Tensor) -> torch.Tensor:
    """int32 ``[4]``: the low bytes of the fp16 levels 0..3, 4..7, then the high bytes 0..3, 4..7,
    little-endian (byte k of word 0 = low byte of level k): the tables a ``prmt`` byte permute
    indexes with a 3-bit code (``kv_quant_attn``'s LUT decode). Zeros past 8 levels (unused)."""
    v = cb16.contiguous().view(torch.int16).to(torch.int64) & 0xFFFF
    v = torch.cat([v, v.new_zeros(max(0, 8 - v.numel()))])[:8].view(2, 4)
    shifts = torch.arange(4, device=v.device) * 8
    words = torch.cat([((v & 0xFF) << shifts).sum(-1), ((v >> 8) << shifts).sum(-1)])
    return torch.where(words >= 2**31, words - 2**32, words).to(torch.int32)


def _build(codebook: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    cb = codebook.to(torch.float32).contiguous()
    cb16 = cb.to(torch.float16).contiguous()
    return cb, ((cb[1:] + cb[:-1]) * 0.5).contiguous(), cb16, byte_lut(cb16)


def default_codebook(bits: int, device) -> torch.Tensor:
    """The shared fp32 ``[2**bits]`` N(0,1) Lloyd-Max codebook on ``device`` (do not modify)."""
    device = torch.device(device)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    key = (bits, device)
    if key not in _TABLES:
        _TABLES[key] = _build(gaussian_codebook(bits, device=device))
    return _TABLES[key][0]


def tables(codebook: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(fp32 codebook, fp32 midpoints ``[2**bits - 1]``, fp16 codebook, int32 ``byte_lut``),
    cached for the default codebook."""
    bits = codebook.numel().bit_length() - 1
    cached = _TABLES.get((bits, codebook.device))
    if cached is not None and cached[0] is codebook:
        return cached
    return _build(codebook)

"""Cached per-device tables of the default (N(0,1) Lloyd-Max) codebooks.

At 2 and 3 bits the default KV codebook is the Lloyd-Max one *snapped to an integer grid*:
``round(alpha * c) / alpha``, with alpha in (0.5, 1] x 127 / max|c| chosen to move the levels least
(``GRID_ALPHAS`` candidates). The levels then are exact int8 multiples of 1 / alpha, which the Gluon
int8 kernel (``kv_quant_attn/gluon.py``) uses as its tensor-core operands, so that kernel computes
attention over exactly these levels. The cost is nil: the largest level moves by 0.00027 (2 bits) and
0.0016 (3 bits), and the N(0,1) quantization MSE grows by 0.00006% and 0.0024% (measured with
numeric integration when this was chosen; ``tests/test_kv_gluon.py`` checks the MSE).

``gaussian_codebook`` builds a new tensor (a host-to-device copy) on every call; a decode step
must not pay that, so the default codebook, its midpoints and its fp16 copy are built once per
(bits, device). These are constants, not configuration. A caller-supplied codebook gets its
tables computed per call (a few tiny ops).
"""

from __future__ import annotations

import torch

from ..lloyd_max import gaussian_codebook
from ..quant.grid import int8_words

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


GRID_BITS = (2, 3)  # the default KV codebooks snapped to an int8 grid
GRID_ALPHAS = 4096  # candidate grid scales


def grid_alpha(c: torch.Tensor) -> float:
    """The scale alpha in (0.5, 1] x 127 / max|c| whose integer grid ``round(alpha c) / alpha`` moves the
    levels ``c`` least (largest move), over ``GRID_ALPHAS`` candidates; on the CPU in float64."""
    c = c.detach().to("cpu", torch.float64)
    alphas = 127.0 / float(c.abs().max()) * torch.linspace(0.5, 1.0, GRID_ALPHAS + 1, dtype=torch.float64)[1:]
    err = (torch.round(alphas[:, None] * c) - alphas[:, None] * c).abs().amax(1) / alphas
    return float(alphas[torch.argmin(err)])


_INT8: dict = {}


def default_codebook(bits: int, device) -> torch.Tensor:
    """The shared fp32 ``[2**bits]`` N(0,1) Lloyd-Max codebook on ``device`` (do not modify); at 2 and 3
    bits snapped to its int8 grid (module docstring)."""
    device = torch.device(device)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    key = (bits, device)
    if key not in _TABLES:
        c = gaussian_codebook(bits).to(torch.float64)
        if bits in GRID_BITS:
            alpha = grid_alpha(c)
            k = torch.round(alpha * c)  # the int8 levels (|k| <= 127 by alpha's range)
            c = k / alpha
            words = torch.tensor(int8_words(k.tolist() + [0] * (8 - k.numel())), dtype=torch.int32)
            a = torch.tensor([alpha], dtype=torch.float32).view(torch.int32)
            _INT8[key] = torch.cat([words, a, torch.zeros(1, dtype=torch.int32)]).to(device)
        _TABLES[key] = _build(c.to(device=device, dtype=torch.float32))
    return _TABLES[key][0]


def is_default(codebook: torch.Tensor, bits: int) -> bool:
    """Whether ``codebook`` is the cached default one (``default_codebook(bits, codebook.device)``)."""
    cached = _TABLES.get((bits, codebook.device))
    return cached is not None and cached[0] is codebook


def int8_table(bits: int, device) -> torch.Tensor:
    """int32 ``[4]`` for the int8 kernel, from the default ``bits``-bit codebook (2 or 3 bits): words
    0-1 the int8 levels ``alpha * c`` of codes 0-3 and 4-7 (byte k of word 0 = code k; zeros past
    2**bits levels), word 2 the fp32 bits of alpha. Built with the codebook, on the host."""
    if bits not in GRID_BITS:
        raise ValueError(f"the int8 level table exists for the {GRID_BITS}-bit default codebooks, not {bits} bits")
    c = default_codebook(bits, device)
    return _INT8[(bits, c.device)]


def tables(codebook: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(fp32 codebook, fp32 midpoints ``[2**bits - 1]``, fp16 codebook, int32 ``byte_lut``),
    cached for the default codebook."""
    bits = codebook.numel().bit_length() - 1
    if is_default(codebook, bits):
        return _TABLES[(bits, codebook.device)]
    return _build(codebook)

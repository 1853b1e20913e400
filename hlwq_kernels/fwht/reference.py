"""Plain PyTorch orthonormal Walsh-Hadamard transform (Sylvester order), fp32 inside."""

from __future__ import annotations

import math

import torch


def hadamard_matrix(n: int, *, dtype=torch.float32, device=None, normalized: bool = True) -> torch.Tensor:
    """Dense Sylvester Hadamard matrix H_n (symmetric); orthonormal when ``normalized``."""
    i = torch.arange(n, device=device)
    bits = i[:, None] & i[None, :]
    parity = torch.zeros_like(bits)
    while bool(bits.any()):
        parity ^= bits & 1
        bits = bits >> 1
    h = 1.0 - 2.0 * parity.to(torch.float32)
    if normalized:
        h = h / math.sqrt(n)
    return h.to(dtype)


def fwht_reference(x: torch.Tensor, block: int) -> torch.Tensor:
    """Butterfly over consecutive ``block``-sized blocks of the last dim; same dtype out."""
    shape = x.shape
    y = x.to(torch.float32).reshape(-1, shape[-1] // block, block)
    h = 1
    while h < block:
        y = y.reshape(y.shape[0], y.shape[1], block // (2 * h), 2, h)
        a, b = y[..., 0, :], y[..., 1, :]
        y = torch.stack((a + b, a - b), dim=-2)
        h *= 2
    y = y.reshape(shape) * (1.0 / math.sqrt(block))
    return y.to(x.dtype)

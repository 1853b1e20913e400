"""Lloyd-Max codebooks. (Issue #3 owns this module: ``lloyd_max_fit`` lands here.)"""

from __future__ import annotations

import functools
import math

import torch

from .._common import check_bits

__all__ = ["gaussian_codebook"]


def _phi(x: torch.Tensor) -> torch.Tensor:
    return torch.exp(-0.5 * x * x) / math.sqrt(2 * math.pi)


def _Phi(x: torch.Tensor) -> torch.Tensor:
    return 0.5 * torch.erfc(-x / math.sqrt(2))


@functools.lru_cache(maxsize=None)
def _gaussian_levels(bits: int) -> tuple[float, ...]:
    # Lloyd's iteration on the exact N(0,1) density in float64: each level moves to the
    # centroid of its cell, E[X | a < X < b] = (phi(a) - phi(b)) / (Phi(b) - Phi(a)).
    n = 1 << bits
    p = (torch.arange(n, dtype=torch.float64) + 0.5) / n
    levels = math.sqrt(2) * torch.erfinv(2 * p - 1)
    for _ in range(20000):
        t = torch.cat([torch.tensor([-math.inf], dtype=torch.float64), (levels[1:] + levels[:-1]) / 2,
                       torch.tensor([math.inf], dtype=torch.float64)])
        new = (_phi(t[:-1]) - _phi(t[1:])) / (_Phi(t[1:]) - _Phi(t[:-1]))
        if float((new - levels).abs().max()) < 1e-13:
            levels = new
            break
        levels = new
    return tuple(levels.tolist())


def gaussian_codebook(bits: int, *, device=None) -> torch.Tensor:
    """Lloyd-Max levels for N(0, 1) at ``bits`` (1..8): sorted float32 ``[2**bits]``."""
    check_bits(bits)
    return torch.tensor(_gaussian_levels(bits), dtype=torch.float32, device=device)

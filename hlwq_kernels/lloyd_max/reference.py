"""Plain PyTorch Lloyd-Max pieces: the exact N(0, 1) codebook (float64 Newton iteration) and
the assign-and-accumulate pass of Lloyd's algorithm on samples (also the CPU path)."""

from __future__ import annotations

import functools
import math
from typing import NamedTuple

import torch

SQRT2 = math.sqrt(2.0)
INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)


# ----------------------------------------------------------------------------------------------
# N(0, 1): exact cell integrals
# ----------------------------------------------------------------------------------------------

def _phi(x: torch.Tensor) -> torch.Tensor:
    """Standard normal density; 0 at +-inf."""
    return torch.where(torch.isfinite(x), torch.exp(-0.5 * x * x) * INV_SQRT_2PI, torch.zeros_like(x))


def _cells(levels: torch.Tensor):
    """Cell bounds ``a, b`` (midpoints, +-inf outside) and the cell mass ``P(a < X < b)`` and
    densities at the bounds, all float64. The mass is taken from the tail that avoids
    cancellation (upper cells as differences of erfc(x), lower ones of erfc(-x))."""
    inf = torch.full((1,), math.inf, dtype=torch.float64, device=levels.device)
    t = torch.cat([-inf, (levels[1:] + levels[:-1]) * 0.5, inf])
    a, b = t[:-1], t[1:]
    upper = (a + b) > 0
    p = torch.where(upper, 0.5 * (torch.erfc(a / SQRT2) - torch.erfc(b / SQRT2)),
                    0.5 * (torch.erfc(-b / SQRT2) - torch.erfc(-a / SQRT2)))
    return a, b, p, _phi(a), _phi(b)


def gaussian_mse(levels: torch.Tensor) -> float:
    """Exact mean squared error of nearest-level quantization of X ~ N(0, 1) with the sorted
    ``levels`` (any float dtype; computed in float64 from the density, no sampling):
    ``sum_i  E[(X - y_i)^2 ; a_i < X < b_i]`` with the cells bounded by the midpoints."""
    y = levels.detach().to("cpu", torch.float64)
    a, b, p, pa, pb = _cells(y)
    zero = torch.zeros_like(a)
    m2 = p + torch.where(torch.isfinite(a), a * pa, zero) - torch.where(torch.isfinite(b), b * pb, zero)
    m1 = pa - pb  # E[X ; cell]
    return float((m2 - 2.0 * y * m1 + y * y * p).sum())


@functools.lru_cache(maxsize=None)
def gaussian_levels(bits: int) -> tuple[float, ...]:
    """Lloyd-Max levels for N(0, 1) with ``2**bits`` levels, float64, by Newton's method.

    The optimum is the fixed point ``y = c(y)`` where ``c_i`` is the centroid of cell i,
    ``(phi(a) - phi(b)) / (Phi(b) - Phi(a))``. Lloyd's iteration ``y <- c(y)`` converges
    linearly with a rate close to 1 for many levels (thousands of steps at 8 bits); Newton on
    ``F(y) = y - c(y)`` with its exact tridiagonal Jacobian
    (``dc/da = phi(a)(c - a)/P``, ``dc/db = phi(b)(b - c)/P``, ``da/dy = db/dy = 1/2``)
    converges in ~5 steps from the asymptotic (Panter-Dite) init, levels at the quantiles of
    N(0, 3) since the optimal level density is proportional to phi(x)**(1/3). Steps are
    halved while they would unsort the levels.
    """
    n = 1 << bits
    q = (torch.arange(n, dtype=torch.float64) + 0.5) / n
    y = math.sqrt(3.0) * SQRT2 * torch.erfinv(2.0 * q - 1.0)
    idx = torch.arange(n)
    for _ in range(30):
        a, b, p, pa, pb = _cells(y)
        c = (pa - pb) / p
        f = y - c
        zero = torch.zeros_like(a)
        da = torch.where(torch.isfinite(a), pa * (c - a) / p, zero)
        db = torch.where(torch.isfinite(b), pb * (b - c) / p, zero)
        jac = torch.eye(n, dtype=torch.float64)
        jac[idx, idx] -= 0.5 * (da + db)
        jac[idx[1:], idx[1:] - 1] -= 0.5 * da[1:]
        jac[idx[:-1], idx[:-1] + 1] -= 0.5 * db[:-1]
        step = torch.linalg.solve(jac, -f)
        lam = 1.0
        while True:
            cand = y + lam * step
            if bool((cand[1:] > cand[:-1]).all()):
                break
            lam *= 0.5
        y = cand
        # quadratic convergence: steps go 0.4, 5e-2, 1e-3, 6e-7, then float64 noise (~1e-13)
        if float((lam * step).abs().max()) < 1e-10:
            break
    return tuple(y.tolist())


# ----------------------------------------------------------------------------------------------
# Lloyd's algorithm on samples: the assign-and-accumulate pass
# ----------------------------------------------------------------------------------------------

class LloydStats(NamedTuple):
    """One assign-and-accumulate pass over the samples with fixed levels.

    counts: ``[L]`` float64, samples whose nearest level is level i.
    sums:   ``[L]`` float64, their sum.
    sse:    ``[]`` float64, sum of squared distances of every sample to its nearest level.
    """

    counts: torch.Tensor
    sums: torch.Tensor
    sse: torch.Tensor


def thresholds_of(levels: torch.Tensor) -> torch.Tensor:
    """Decision thresholds between sorted float32 levels: midpoints, computed in float32 as every
    kernel does (``[L - 1]``). A value equal to a threshold goes to the lower level."""
    return (levels[1:] + levels[:-1]) * 0.5


_REF_CHUNK = 1 << 21


def lloyd_assign_reference(samples: torch.Tensor, levels: torch.Tensor) -> LloydStats:
    """``samples [S]`` (float, finite), ``levels [L]`` sorted float32 -> :class:`LloydStats`.
    Nearest level by ``torch.bucketize`` over the thresholds; chunked to bound memory."""
    n_lev = levels.numel()
    thr = thresholds_of(levels)
    counts = torch.zeros(n_lev, dtype=torch.float64, device=samples.device)
    sums = torch.zeros(n_lev, dtype=torch.float64, device=samples.device)
    sse = torch.zeros((), dtype=torch.float64, device=samples.device)
    for s0 in range(0, samples.numel(), _REF_CHUNK):
        x = samples[s0:s0 + _REF_CHUNK].to(torch.float32)
        code = torch.bucketize(x, thr)
        counts += torch.bincount(code, minlength=n_lev).to(torch.float64)
        sums += torch.bincount(code, weights=x.to(torch.float64), minlength=n_lev)
        sse += (x - levels[code]).to(torch.float64).square().sum()
    return LloydStats(counts, sums, sse)

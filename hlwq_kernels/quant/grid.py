"""Optional weight codebooks at 3, 4 and 5 bits: the Lloyd-Max levels snapped to an int8 grid.

Why: the opt-in tensor-core GEMV (``dequant_matmul/gluon.py``, ``method="gemv8"``) multiplies int8 levels on
the s8 tensor cores, and a byte permute (``prmt``) turns 4 codes into 4 levels at once. That is exact only
when every level is an integer ``k`` times ``1 / alpha``. ``weight_codebook(bits)`` is
``round(alpha * c) / alpha`` (``c`` = ``gaussian_codebook(bits)``), with ``alpha`` the scale, up to
``126 / max|c|``, whose grid has the smallest N(0, 1) quantization MSE (2048 candidates, closed-form
MSE per cell). Checked in ``tests/test_dequant_matmul_gluon.py::test_grid_codebook``: the MSE grows by
0.0024% (3 bits), 0.055% (4 bits) and 0.59% (5 bits). ``quantize_weight``'s default stays
``gaussian_codebook`` (gemv8 is slower than the default GEMV, perf/RESULTS.md session 7); pass
``codebook=weight_codebook(bits)`` to use these.
(126, not 127: the 4-bit kernel stores the positive levels plus one.)

The kernel also needs, and ``int8_tables`` checks, that the levels are nonzero with the codes' halves
of one sign (codes ``< 2**(bits-1)`` negative): true for the symmetric Lloyd-Max levels.
Other codebooks (any sorted float32 ``[2**bits]``) stay valid everywhere; they just take the
non-tensor-core kernels.
"""

from __future__ import annotations

import functools
import math
import weakref

import torch

from ..lloyd_max import gaussian_codebook

GRID_BITS = (3, 4, 5)
_ALPHAS = 2048
_LIMIT = 126.0


def _cell_mse(levels: torch.Tensor) -> torch.Tensor:
    """N(0, 1) MSE of nearest-level quantization for each row of sorted ``levels`` [A, L] (float64)."""
    t = (levels[:, 1:] + levels[:, :-1]) * 0.5
    inf = torch.full_like(levels[:, :1], 40.0)
    lo = torch.cat([-inf, t], 1)
    hi = torch.cat([t, inf], 1)

    def prim(x, c):  # integral of (x - c)^2 phi(x) dx up to x
        return (1 + c * c) * torch.special.ndtr(x) - (x - 2 * c) * torch.exp(-0.5 * x * x) / math.sqrt(2 * math.pi)

    return (prim(hi, levels) - prim(lo, levels)).sum(1)


@functools.lru_cache(maxsize=None)
def grid(bits: int) -> tuple[float, tuple[int, ...]]:
    """(alpha, the int8 levels k) of the ``bits``-bit int8-grid weight codebook (levels ``k / alpha``)."""
    if bits not in GRID_BITS:
        raise ValueError(f"the int8-grid weight codebooks exist for bits {GRID_BITS}, not {bits}")
    c = gaussian_codebook(bits).to(torch.float64)
    top = _LIMIT / float(c.abs().max())
    alphas = top * torch.linspace(0.5, 1.0, _ALPHAS + 1, dtype=torch.float64)[1:]
    k = torch.round(alphas[:, None] * c)
    ok = (k[:, 1:] > k[:, :-1]).all(1) & (k != 0).all(1)  # distinct, nonzero levels
    mse = torch.where(ok, _cell_mse(k / alphas[:, None]), torch.inf)
    i = int(torch.argmin(mse))
    return float(alphas[i]), tuple(int(v) for v in k[i])


@functools.lru_cache(maxsize=None)
def _levels_cpu(bits: int) -> torch.Tensor:
    alpha, k = grid(bits)
    return (torch.tensor(k, dtype=torch.float64) / alpha).to(torch.float32)


def weight_codebook(bits: int, *, device=None) -> torch.Tensor:
    """The int8-grid weight codebook (a new float32 ``[2**bits]`` tensor): at 3-5 bits the Lloyd-Max levels
    on their int8 grid (module docstring), otherwise ``gaussian_codebook(bits)``."""
    if bits in GRID_BITS:
        return _levels_cpu(bits).to(device if device is not None else "cpu", copy=True)
    return gaussian_codebook(bits, device=device)


def int8_words(k) -> list[int]:
    """int8 values -> int32 words, 4 per word, byte i of word j = value 4 j + i (two's complement; a short last
    word is zero-padded)."""
    out = []
    for j in range(0, len(k), 4):
        v = sum((int(x) & 0xFF) << (8 * i) for i, x in enumerate(k[j:j + 4]))
        out.append(v - (1 << 32) if v >= 1 << 31 else v)
    return out


@functools.lru_cache(maxsize=None)
def table_words(bits: int) -> tuple[int, ...]:
    """The int32 words the GEMV kernel's lookups read, then alpha's float32 bits:
    5 bits: levels of codes 16-23, 24-31 (positive), 0-7, 8-15 (negative), 2 words each;
    4 bits: codes 0-7, then codes 8-15 plus one (the kernel sums two lookups, one of which is -1);
    3 bits: codes 0-7; last a zero word (the kernel XORs a per-thread index masked by it into the tables)."""
    alpha, k = grid(bits)
    half = 1 << (bits - 1)
    if not (all(v < 0 for v in k[:half]) and all(0 < v <= _LIMIT for v in k[half:])):
        raise AssertionError(f"grid levels break the lookup's sign rule: {k}")
    if bits == 5:
        words = int8_words(k[16:24]) + int8_words(k[24:32]) + int8_words(k[0:8]) + int8_words(k[8:16])
    elif bits == 4:
        words = int8_words(k[0:8]) + int8_words([v + 1 for v in k[8:16]])
    else:
        words = int8_words(k[0:8])
    a = torch.tensor([alpha], dtype=torch.float32).view(torch.int32)
    return tuple(words) + (int(a), 0)  # (the trailing 0: see the kernel's use of it)


_TABLES: dict = {}  # id(codebook) -> (weak reference to it, its table or None)


def int8_tables(codebook: torch.Tensor, bits: int) -> torch.Tensor | None:
    """The GEMV kernel's int32 table (``table_words``) on ``codebook``'s device if ``codebook`` is the
    grid codebook of ``bits`` (``weight_codebook``), else None. The comparison reads the codebook on the host once per
    codebook tensor (cached weakly); during CUDA-graph capture an unchecked codebook gives None (the
    caller falls back) instead of a forbidden sync. The codebook must not be modified in place afterwards."""
    if bits not in GRID_BITS or codebook.numel() != 1 << bits:
        return None
    hit = _TABLES.get(id(codebook))
    if hit is not None and hit[0]() is codebook:
        return hit[1]
    if codebook.is_cuda and torch.cuda.is_current_stream_capturing():
        return None
    same = torch.equal(codebook.detach().to("cpu", torch.float32), _levels_cpu(bits))
    table = torch.tensor(table_words(bits), dtype=torch.int32).to(codebook.device) if same else None
    key = id(codebook)
    _TABLES[key] = (weakref.ref(codebook, lambda _, key=key: _TABLES.pop(key, None)), table)
    return table

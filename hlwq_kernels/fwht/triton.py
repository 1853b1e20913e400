"""Triton Walsh-Hadamard transform kernels.

Two kernels:
* ``_fwht_butterfly_kernel`` (what ``fwht_triton`` runs): log2(block) butterfly stages on a
  register tile (fp32), any dtype, block 2..4096.
* ``_fwht_dot_kernel``: for 16-bit inputs and 16 <= block <= 128, one tensor-core product of
  the tile by the +-1 Sylvester matrix (exact in bf16/fp16), fp32 accumulation, then the
  1/sqrt(block) scale; a persistent grid loads H once per program. Kept as a measured
  alternative (``fwht_triton_method(..., "dot")``): on the H100 it lost to the butterfly
  (18.3 vs 16.45 us on [2048, 4096] bf16, perf/RESULTS.md), since the butterfly is already at
  the speed of a plain copy of the same bytes.
Floor for [2048, 4096] bf16: 16.8 MB read + 16.8 MB written = 33.5 MB -> 11.1 us at the
2 GiB copy rate (3.02 TB/s); a copy of these 33.5 MB itself took 16.2 us (2.07 TB/s) there.
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from .._common import cdiv, interpreting, next_pow2
from .._pdl import gdc_launch
from .reference import hadamard_matrix


@triton.jit
def butterfly(x, ROWS: tl.constexpr, BLOCK: tl.constexpr, LOG_B: tl.constexpr):
    """Unnormalised Walsh-Hadamard transform of each row of a register tile ``x [ROWS, BLOCK]``."""
    for s in tl.static_range(LOG_B):
        # stage s pairs element i with i ^ 2**s: view as [.., 2, 2**s] and split the pair axis.
        # (No `h: tl.constexpr = ...` here: Triton 3.6 refuses to re-bind a constexpr per stage.)
        x = tl.reshape(x, [ROWS, BLOCK >> (s + 1), 2, 1 << s])
        a, b = tl.split(tl.permute(x, [0, 1, 3, 2]))
        x = tl.permute(tl.join(a + b, a - b), [0, 1, 3, 2])
        x = tl.reshape(x, [ROWS, BLOCK])
    return x


@triton.jit
def _fwht_butterfly_kernel(x_ptr, y_ptr, n_rows, scale, BLOCK: tl.constexpr, LOG_B: tl.constexpr,
                           ROWS: tl.constexpr, TRIGGER: tl.constexpr = False):
    if TRIGGER:  # a next kernel launched with PDL may start now (it waits for y)
        gdc_launch()
    rows = tl.program_id(0).to(tl.int64) * ROWS + tl.arange(0, ROWS)
    cols = tl.arange(0, BLOCK)
    offs = rows[:, None] * BLOCK + cols[None, :]
    mask = rows[:, None] < n_rows
    x = butterfly(tl.load(x_ptr + offs, mask=mask, other=0.0).to(tl.float32), ROWS, BLOCK, LOG_B)
    tl.store(y_ptr + offs, (x * scale).to(y_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _fwht_dot_kernel(x_ptr, h_ptr, y_ptr, n_rows, scale, BLOCK: tl.constexpr, ROWS: tl.constexpr,
                     UPCAST: tl.constexpr, NUM_STAGES: tl.constexpr):
    cols = tl.arange(0, BLOCK)
    h = tl.load(h_ptr + cols[:, None] * BLOCK + cols[None, :])
    if UPCAST:  # Triton's CPU interpreter returns garbage for bf16 tl.dot (docs TRITON_CPU.md)
        h = h.to(tl.float32)
    n_tiles = tl.cdiv(n_rows, ROWS)
    for tile in tl.range(tl.program_id(0), n_tiles, tl.num_programs(0), num_stages=NUM_STAGES):
        rows = tl.arange(0, ROWS).to(tl.int64) + tile * ROWS
        offs = rows[:, None] * BLOCK + cols[None, :]
        mask = rows[:, None] < n_rows
        x = tl.load(x_ptr + offs, mask=mask, other=0.0)
        if UPCAST:
            x = x.to(tl.float32)
        y = tl.dot(x, h) * scale  # H is symmetric: x @ H == (H x^T)^T
        tl.store(y_ptr + offs, y.to(y_ptr.dtype.element_ty), mask=mask)


_H_CACHE: dict = {}


def pm1_hadamard(block: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """The unnormalised +-1 Sylvester matrix (exact in bf16/fp16), cached per (block, dtype, device)."""
    key = (block, dtype, device)
    if key not in _H_CACHE:  # a cache of constants, not configuration
        _H_CACHE[key] = hadamard_matrix(block, dtype=dtype, device=device, normalized=False).contiguous()
    return _H_CACHE[key]


def _num_sms(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).multi_processor_count
    return 4


def fwht_triton(x: torch.Tensor, block: int) -> torch.Tensor:
    """Launcher (same arguments as ``fwht_reference``): the butterfly kernel."""
    return fwht_triton_method(x, block, "auto")


DOT_CONFIG = dict(rows=64, num_warps=4, num_stages=2, programs_per_sm=4)
# Elements and warps per butterfly program. H100, bf16 [2048, 4096], block 128, CUDA-graph timing
# over rotating inputs with fresh outputs (perf/graph_sweep.py fwhtcfg, 2026-11-27 run 3):
# 1024/2 -> 13.22 us (2.54 TB/s, = the copy's 13.22), 4096/4 (the old default) 13.75, 2048/1 14.10.
BUTTERFLY_CONFIG = dict(elems=1024, warps=2)


def fwht_triton_method(x: torch.Tensor, block: int, method: str, trigger: bool = False, **config) -> torch.Tensor:
    """``method``: "auto" | "butterfly" | "dot", to benchmark and test each kernel; ``config``
    overrides ``DOT_CONFIG`` / ``BUTTERFLY_CONFIG`` (for perf/tune_fwht.py and perf/graph_sweep.py). ``trigger``
    (butterfly, compiled on sm_90+): the kernel lets a next kernel launched with programmatic dependent launch start
    at once (``dequant_matmul(pdl=True)``: its weight streams while this kernel runs)."""
    cfg = {**DOT_CONFIG, **BUTTERFLY_CONFIG, **config}
    shape = x.shape
    xc = x.contiguous().reshape(-1, block)
    y = torch.empty_like(xc)
    n_rows = xc.shape[0]
    if n_rows == 0:
        return y.reshape(shape)
    scale = 1.0 / math.sqrt(block)
    use_dot = x.dtype in (torch.bfloat16, torch.float16) and 16 <= block <= 128
    if method in ("auto", "butterfly"):
        log_b = block.bit_length() - 1
        rows = max(1, min(64, cfg["elems"] // block))
        warps = cfg["warps"] if block <= 1024 else max(8, cfg["warps"])
        extra = dict(TRIGGER=True) if trigger else {}  # (only when set: the default launch specializes as before)
        _fwht_butterfly_kernel[(cdiv(n_rows, rows),)](
            xc, y, n_rows, scale, BLOCK=block, LOG_B=log_b, ROWS=rows, num_warps=warps, **extra)
    else:
        if not use_dot:
            raise ValueError(f"the dot method needs bf16/fp16 and 16 <= block <= 128, got {x.dtype}, {block}")
        rows = cfg["rows"]
        h = pm1_hadamard(block, x.dtype, x.device)
        n_prog = min(cdiv(n_rows, rows), cfg["programs_per_sm"] * _num_sms(x.device))
        _fwht_dot_kernel[(n_prog,)](xc, h, y, n_rows, scale, BLOCK=block, ROWS=rows, UPCAST=interpreting(),
                                    NUM_STAGES=cfg["num_stages"], num_warps=cfg["num_warps"])
    return y.reshape(shape)

"""Triton pack/unpack kernels for the bit-sliced plane layout (see ``layout.py``).

Each program owns ``ROWS`` rows and ``BLOCK`` codes (a multiple of 32) of each row and
visits every plane present in ``BITS`` (constexpr, so absent planes cost nothing).
Bytes moved, unpack: ``bits/8`` in + 1 out per code; pack the reverse. Both are pure
bandwidth: the shifts and masks are a few integer ops per code.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .._common import cdiv, next_pow2

from .layout import padded_len


@triton.jit
def _unpack_plane(codes, p_ptr, row_off, row_mask, col0, groups, W: tl.constexpr, OFF: tl.constexpr,
                  ROWS: tl.constexpr, BLOCK: tl.constexpr):
    PER: tl.constexpr = 32 // W
    NW: tl.constexpr = BLOCK // PER  # words of this plane covering the tile
    w_idx = col0 // PER + tl.arange(0, NW)
    mask = row_mask[:, None] & (w_idx[None, :] < groups * W)
    words = tl.load(p_ptr + row_off[:, None] + groups * OFF + w_idx[None, :], mask=mask, other=0)
    shifts = (tl.arange(0, PER) * W).to(tl.uint32)
    fields = (words.to(tl.uint32, bitcast=True)[:, :, None] >> shifts[None, None, :]) & ((1 << W) - 1)
    return codes | (tl.reshape(fields, [ROWS, BLOCK]) << OFF)


@triton.jit
def _unpack_kernel(p_ptr, c_ptr, n_rows, n, groups, BITS: tl.constexpr, ROWS: tl.constexpr, BLOCK: tl.constexpr):
    rows = tl.program_id(0).to(tl.int64) * ROWS + tl.arange(0, ROWS)
    col0 = tl.program_id(1) * BLOCK
    row_mask = rows < n_rows
    p_row = rows * groups * BITS
    codes = tl.zeros([ROWS, BLOCK], dtype=tl.uint32)
    # planes widest first; OFF = sum of the wider widths present (layout.plane_offsets)
    if BITS & 8:
        codes = _unpack_plane(codes, p_ptr, p_row, row_mask, col0, groups, 8, 0, ROWS, BLOCK)
    if BITS & 4:
        codes = _unpack_plane(codes, p_ptr, p_row, row_mask, col0, groups, 4, BITS & 8, ROWS, BLOCK)
    if BITS & 2:
        codes = _unpack_plane(codes, p_ptr, p_row, row_mask, col0, groups, 2, BITS & 12, ROWS, BLOCK)
    if BITS & 1:
        codes = _unpack_plane(codes, p_ptr, p_row, row_mask, col0, groups, 1, BITS & 14, ROWS, BLOCK)
    cols = col0 + tl.arange(0, BLOCK)
    mask = row_mask[:, None] & (cols[None, :] < n)
    tl.store(c_ptr + rows[:, None] * n + cols[None, :], codes.to(tl.uint8), mask=mask)


@triton.jit
def _pack_plane(codes, p_ptr, row_off, row_mask, col0, groups, W: tl.constexpr, OFF: tl.constexpr,
                ROWS: tl.constexpr, BLOCK: tl.constexpr):
    PER: tl.constexpr = 32 // W
    NW: tl.constexpr = BLOCK // PER
    fields = tl.reshape((codes >> OFF) & ((1 << W) - 1), [ROWS, NW, PER])
    shifts = (tl.arange(0, PER) * W).to(tl.uint32)
    words = tl.sum(fields << shifts[None, None, :], axis=2)  # disjoint fields: sum == bitwise or
    w_idx = col0 // PER + tl.arange(0, NW)
    mask = row_mask[:, None] & (w_idx[None, :] < groups * W)
    tl.store(p_ptr + row_off[:, None] + groups * OFF + w_idx[None, :], words.to(tl.int32, bitcast=True), mask=mask)


@triton.jit
def pack_tile(codes, p_ptr, p_row, row_mask, col0, groups, BITS: tl.constexpr, ROWS: tl.constexpr,
              BLOCK: tl.constexpr):
    """Store a ``[ROWS, BLOCK]`` register tile of uint32 codes (columns ``col0..``) into every plane
    of its rows (``p_row``: each row's first word). Shared by the pack and quantize kernels."""
    # planes widest first; OFF = sum of the wider widths present (layout.plane_offsets)
    if BITS & 8:
        _pack_plane(codes, p_ptr, p_row, row_mask, col0, groups, 8, 0, ROWS, BLOCK)
    if BITS & 4:
        _pack_plane(codes, p_ptr, p_row, row_mask, col0, groups, 4, BITS & 8, ROWS, BLOCK)
    if BITS & 2:
        _pack_plane(codes, p_ptr, p_row, row_mask, col0, groups, 2, BITS & 12, ROWS, BLOCK)
    if BITS & 1:
        _pack_plane(codes, p_ptr, p_row, row_mask, col0, groups, 1, BITS & 14, ROWS, BLOCK)


@triton.jit
def _pack_kernel(c_ptr, p_ptr, n_rows, n, groups, BITS: tl.constexpr, ROWS: tl.constexpr, BLOCK: tl.constexpr):
    rows = tl.program_id(0).to(tl.int64) * ROWS + tl.arange(0, ROWS)
    col0 = tl.program_id(1) * BLOCK
    row_mask = rows < n_rows
    cols = col0 + tl.arange(0, BLOCK)
    mask = row_mask[:, None] & (cols[None, :] < n)
    codes = tl.load(c_ptr + rows[:, None] * n + cols[None, :], mask=mask, other=0).to(tl.uint32)
    pack_tile(codes, p_ptr, rows * groups * BITS, row_mask, col0, groups, BITS, ROWS, BLOCK)


def _tiles(n_rows: int, n32: int) -> tuple[int, int]:
    # 1024 codes per row-tile keeps every plane's load >= 16 bytes wide (the 1-bit plane:
    # 32 words); short rows take one tile of the padded length instead.
    block = min(1024, next_pow2(n32))
    rows = max(1, min(16, 4096 // block))
    return rows, block


def pack_bits_triton(codes: torch.Tensor, bits: int) -> torch.Tensor:
    *lead, n = codes.shape
    n32 = padded_len(n)
    c2 = codes.reshape(-1, n).contiguous()
    n_rows = c2.shape[0]
    out = torch.empty(*lead, n32 // 32 * bits, dtype=torch.int32, device=codes.device)
    if n_rows == 0 or n == 0:
        return out
    rows, block = _tiles(n_rows, n32)
    grid = (cdiv(n_rows, rows), cdiv(n32, block))
    _pack_kernel[grid](c2, out, n_rows, n, n32 // 32, BITS=bits, ROWS=rows, BLOCK=block)
    return out


def unpack_bits_triton(packed: torch.Tensor, bits: int, n: int) -> torch.Tensor:
    *lead, nw = packed.shape
    n32 = padded_len(n)
    p2 = packed.reshape(-1, nw).contiguous()
    n_rows = p2.shape[0]
    out = torch.empty(*lead, n, dtype=torch.uint8, device=packed.device)
    if n_rows == 0 or n == 0:
        return out
    rows, block = _tiles(n_rows, n32)
    grid = (cdiv(n_rows, rows), cdiv(n32, block))
    _unpack_kernel[grid](p2, out, n_rows, n, n32 // 32, BITS=bits, ROWS=rows, BLOCK=block)
    return out

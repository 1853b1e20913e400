"""Triton HLWQ weight quantizer: one fused pass per ``[ROWS, block]`` tile.

Per tile: load (zero past K), rotate (tensor-core product by the +-1 Sylvester matrix for
16-bit inputs and 16 <= block <= 128, register butterflies otherwise), block RMS; then for each
candidate scale ``f * rms`` (``reference.SCALE_FACTORS[bits]``, 4 per width): the code of
``y / (f * rms)`` by a binary search over the ``2**bits - 1`` sorted thresholds (``bits``
compare steps, gathered loads from a <= 1 KiB table that stays in L1), the least-squares scale
``lam = max(0, <y, c> / <c, c>)`` of those codes and its error ``|y|^2 - lam <y, c>``; the best
candidate's codes are packed straight into the bit-sliced planes (``pack_bits.triton.pack_tile``)
and its fp32 scale is stored (the caller checks the fp16 range and casts).

Floor for 4096 x 12288 bf16 at 5 bits: read 100.7 MB + write 31.5 MB codes + 1.6 MB scales
= 134 MB -> 44 us at the measured 3.02 TB/s copy rate. FLOPs: the rotation is 2*128 per
weight on tensor cores (12.9 GFLOP, ~16 us at bf16 rate); the search is 4 x (5 dependent
gathers + 1 codebook gather) per weight. Expected: compute-bound on the gathers at ~4 x the floor
(~0.2 ms), far inside the 5 ms target.
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from .._common import cdiv, interpreting, next_pow2
from ..fwht.triton import butterfly, pm1_hadamard
from ..lloyd_max import thresholds_of
from ..pack_bits.triton import pack_tile
from .reference import SCALE_FACTORS




@triton.jit
def _quant_kernel(w_ptr, h_ptr, thr_ptr, cb_ptr, f_ptr, p_ptr, s_ptr, n_rows, k, stride_w, n_blocks, groups, scale,
                  BITS: tl.constexpr, BLOCK: tl.constexpr, ROWS: tl.constexpr, LOG_B: tl.constexpr,
                  USE_DOT: tl.constexpr, UPCAST: tl.constexpr, N_FACTORS: tl.constexpr):
    rows = tl.program_id(0).to(tl.int64) * ROWS + tl.arange(0, ROWS)
    blk = tl.program_id(1)
    col0 = blk * BLOCK
    cols = col0 + tl.arange(0, BLOCK)
    row_mask = rows < n_rows
    x = tl.load(w_ptr + rows[:, None] * stride_w + cols[None, :], mask=row_mask[:, None] & (cols[None, :] < k),
                other=0.0)
    if USE_DOT:  # 16-bit x times the +-1 matrix is exact; fp32 accumulation
        hc = tl.arange(0, BLOCK)
        h = tl.load(h_ptr + hc[:, None] * BLOCK + hc[None, :])
        if UPCAST:  # the CPU interpreter returns garbage for bf16 tl.dot (docs TRITON_CPU.md)
            x = x.to(tl.float32)
            h = h.to(tl.float32)
        y = tl.dot(x, h) * scale
    else:
        y = butterfly(x.to(tl.float32), ROWS, BLOCK, LOG_B) * scale
    yy = tl.sum(y * y, axis=1)
    rms = tl.sqrt(yy * (1.0 / BLOCK))
    best_err = yy
    best_lam = yy
    best_code = tl.zeros([ROWS, BLOCK], dtype=tl.int32)
    for g in tl.static_range(N_FACTORS):  # candidate scales f * rms (reference.SCALE_FACTORS)
        f = tl.load(f_ptr + g)
        u = y / tl.maximum(rms * f, 1.1754943508222875e-38)[:, None]
        # binary search: code = number of thresholds strictly below u (torch.bucketize's convention)
        code = tl.zeros([ROWS, BLOCK], dtype=tl.int32)
        for b in tl.static_range(BITS):
            t = tl.load(thr_ptr + code + ((1 << (BITS - 1 - b)) - 1))
            code = tl.where(u > t, code + (1 << (BITS - 1 - b)), code)
        c = tl.load(cb_ptr + code)
        num = tl.sum(y * c, axis=1)
        lam = tl.maximum(num / tl.maximum(tl.sum(c * c, axis=1), 1.1754943508222875e-38), 0.0)
        err = yy - lam * num  # |y - lam c|^2 for the least-squares scale lam of these codes
        if g == 0:
            best_err = err
            best_lam = lam
            best_code = code
        else:
            better = err < best_err
            best_err = tl.where(better, err, best_err)
            best_lam = tl.where(better, lam, best_lam)
            best_code = tl.where(better[:, None], code, best_code)
    tl.store(s_ptr + rows * n_blocks + blk, best_lam, mask=row_mask)
    pack_tile(best_code.to(tl.uint32), p_ptr, rows * groups * BITS, row_mask, col0, groups, BITS, ROWS, BLOCK)


def quantize_weight_triton(w: torch.Tensor, bits: int, block: int, codebook: torch.Tensor
                           ) -> tuple[torch.Tensor, torch.Tensor]:
    """Launcher (same arguments and outputs as ``quantize_weight_reference``)."""
    n, k = w.shape
    kp = -(-k // block) * block
    nb = kp // block
    dev = w.device
    packed = torch.empty(n, kp * bits // 32, dtype=torch.int32, device=dev)
    scales = torch.empty(n, nb, dtype=torch.float32, device=dev)
    if n == 0 or k == 0:
        return packed, scales.zero_()
    if w.stride(1) != 1:
        w = w.contiguous()
    cb = codebook.to(dev, torch.float32).contiguous()
    thr = torch.cat([thresholds_of(cb), cb.new_full((1,), math.inf)]).contiguous()
    factors = torch.tensor(SCALE_FACTORS[bits], dtype=torch.float32, device=dev)
    use_dot = w.dtype in (torch.bfloat16, torch.float16) and 16 <= block <= 128
    h = pm1_hadamard(block, w.dtype, dev) if use_dot else thr  # (unused pointer without the dot)
    # ROWS x block = 4 K values per program: y, u, code, best_code, c live together (32 registers
    # each per thread at 4 warps); tl.dot needs >= 16 rows. 4096 x 12288: 128 row tiles x 96 blocks.
    rows = max(16 if use_dot else 1, min(32, 4096 // block))
    grid = (cdiv(n, rows), nb)
    _quant_kernel[grid](w, h, thr, cb, factors, packed, scales, n, k, w.stride(0), nb, kp // 32, 1.0 / math.sqrt(block),
                        BITS=bits, BLOCK=block, ROWS=rows, LOG_B=block.bit_length() - 1, USE_DOT=use_dot,
                        UPCAST=interpreting(), N_FACTORS=factors.numel(), num_warps=4 if block <= 256 else 8)
    return packed, scales

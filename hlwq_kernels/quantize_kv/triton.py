"""Triton kernel for KV-vector quantization, fused: rotate + norm + code search + pack + store.

One body (``_quantize_rows``) serves ``quantize_kv`` (write rows in order into a fresh buffer),
``kv_cache_write_`` (write token t of sequence b at cache position ``start[b] + t``) and
``kv_cache_write_kv_`` (the same for keys and values in one launch: grid axis 1 picks K or V).
Each program owns ``ROWS`` vectors of D elements: fp32 butterfly Hadamard in registers,
RMS -> fp16 norm, a ``bits``-step binary search of the Lloyd-Max midpoints per element
(gathered from a 2**bits - 1 table that stays in L1), then one masked store per plane.

Floor, appending one decode token of Qwen3.5-9B (4 KV heads x D=256, K and V, 3 bits):
read 2 x 4 x 256 x 2 B = 4 KiB, write 2 x 4 x (96 + 2) B = 784 B (~1.6 ns at 3.02 TB/s):
nothing; the op is launch bound (~2-3 us per launch on the H100), so the target (<= 10 us for
K+V) is about launch latency, not bandwidth. ``kv_cache_write_`` costs one launch per tensor;
``kv_cache_write_kv_`` does K and V in one (two programs, one per tensor, at B*H*T <= ROWS).
Quantizing a 32k-token prefill (4 heads, K or V): 64 MiB bf16 read + 12.6 MB written
-> ~25 us at 3.02 TB/s.
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from .._common import cdiv, next_pow2

from .codebooks import tables

FP16_MAX = tl.constexpr(65504.0)
TINY = tl.constexpr(1.1754943508222875e-38)  # smallest normal fp32: a zero norm divides to zero, not NaN




@triton.jit
def fwht_tile(x, ROWS: tl.constexpr, D: tl.constexpr, LOG_D: tl.constexpr):
    """Unnormalized Walsh-Hadamard transform of each row of an fp32 ``[ROWS, D]`` register tile
    (Sylvester order, same butterfly order as the reference; multiply by 1/sqrt(D) after)."""
    for s in tl.static_range(LOG_D):  # stage s pairs elements 2^s apart
        x = tl.reshape(x, [ROWS, D // (2 << s), 2, 1 << s])
        a, b = tl.split(tl.permute(x, [0, 1, 3, 2]))
        x = tl.permute(tl.join(a + b, a - b), [0, 1, 3, 2])
        x = tl.reshape(x, [ROWS, D])
    return x


@triton.jit
def _store_plane(codes, p_ptr, row_off, keep, D: tl.constexpr, W: tl.constexpr, OFF: tl.constexpr,
                 ROWS: tl.constexpr):
    # plane of width W: D*W/32 words per vector, starting at word (D/32)*OFF (layout.py)
    PER: tl.constexpr = 32 // W
    NW: tl.constexpr = D // PER
    fields = tl.reshape((codes >> OFF) & ((1 << W) - 1), [ROWS, NW, PER])
    shifts = (tl.arange(0, PER) * W).to(tl.uint32)
    words = tl.sum(fields << shifts[None, None, :], axis=2)  # disjoint fields: sum == bitwise or
    w_idx = (D // 32) * OFF + tl.arange(0, NW)
    tl.store(p_ptr + row_off[:, None] + w_idx[None, :], words.to(tl.int32, bitcast=True), mask=keep[:, None])


@triton.jit
def _quantize_rows(blk, x_ptr, thr_ptr, p_ptr, n_ptr, start_ptr, s_start, n_rows, H, T, L,
                   sxb, sxh, sxt, spb, sph, spl, snb, snh, snl, scale,
                   D: tl.constexpr, LOG_D: tl.constexpr, BITS: tl.constexpr, ROWS: tl.constexpr,
                   HAS_START: tl.constexpr):
    # rows blk*ROWS .. blk*ROWS + ROWS - 1 of x [B, H, T, D] (row = (b * H + h) * T + t)
    r = blk.to(tl.int64) * ROWS + tl.arange(0, ROWS)
    valid = r < n_rows
    t = r % T
    bh = r // T
    h = bh % H
    b = bh // H
    cols = tl.arange(0, D)
    x = tl.load(x_ptr + (b * sxb + h * sxh + t * sxt)[:, None] + cols[None, :], mask=valid[:, None],
                other=0.0).to(tl.float32)
    y = fwht_tile(x, ROWS, D, LOG_D) * scale
    rms = tl.minimum(tl.sqrt(tl.sum(y * y, axis=1) / D), FP16_MAX)
    norm16 = rms.to(tl.float16)
    u = y / tl.maximum(norm16.to(tl.float32), TINY)[:, None]
    # code = number of midpoints strictly below u (torch.bucketize), by binary search:
    # the largest c with thr[c - 1] < u, built from the top bit down
    codes = tl.zeros([ROWS, D], dtype=tl.int32)
    for s in tl.static_range(BITS):
        cand = codes + (1 << (BITS - 1 - s))
        codes = tl.where(tl.load(thr_ptr + cand - 1) < u, cand, codes)
    codes = codes.to(tl.uint32)
    if HAS_START:
        pos = tl.load(start_ptr + b * s_start, mask=valid, other=0).to(tl.int64) + t  # stride: e.g. expand()
    else:
        pos = t
    keep = valid & (pos >= 0) & (pos < L)
    p_row = b * spb + h * sph + pos * spl
    if BITS & 8:
        _store_plane(codes, p_ptr, p_row, keep, D, 8, 0, ROWS)
    if BITS & 4:
        _store_plane(codes, p_ptr, p_row, keep, D, 4, BITS & 8, ROWS)
    if BITS & 2:
        _store_plane(codes, p_ptr, p_row, keep, D, 2, BITS & 12, ROWS)
    if BITS & 1:
        _store_plane(codes, p_ptr, p_row, keep, D, 1, BITS & 14, ROWS)
    tl.store(n_ptr + b * snb + h * snh + pos * snl, norm16, mask=keep)


@triton.jit
def _quantize_kv_kernel(x_ptr, thr_ptr, p_ptr, n_ptr, start_ptr, s_start, n_rows, H, T, L,
                        sxb, sxh, sxt, spb, sph, spl, snb, snh, snl, scale,
                        D: tl.constexpr, LOG_D: tl.constexpr, BITS: tl.constexpr, ROWS: tl.constexpr,
                        HAS_START: tl.constexpr):
    _quantize_rows(tl.program_id(0), x_ptr, thr_ptr, p_ptr, n_ptr, start_ptr, s_start, n_rows, H, T, L,
                   sxb, sxh, sxt, spb, sph, spl, snb, snh, snl, scale, D, LOG_D, BITS, ROWS, HAS_START)


@triton.jit
def _quantize_kv_pair_kernel(k_ptr, v_ptr, thr_ptr, kp_ptr, kn_ptr, vp_ptr, vn_ptr, start_ptr, s_start,
                             n_rows, H, T, L,
                             skb, skh, skt, svb, svh, svt,
                             skpb, skph, skpl, sknb, sknh, sknl, svpb, svph, svpl, svnb, svnh, svnl, scale,
                             D: tl.constexpr, LOG_D: tl.constexpr, BITS: tl.constexpr, ROWS: tl.constexpr):
    """K and V of one append in one launch: grid (row blocks, 2), axis 1 picks the tensor (the
    branch is uniform per program; each side is the single-tensor kernel's body)."""
    blk = tl.program_id(0)
    if tl.program_id(1) == 0:
        _quantize_rows(blk, k_ptr, thr_ptr, kp_ptr, kn_ptr, start_ptr, s_start, n_rows, H, T, L,
                       skb, skh, skt, skpb, skph, skpl, sknb, sknh, sknl, scale, D, LOG_D, BITS, ROWS, True)
    else:
        _quantize_rows(blk, v_ptr, thr_ptr, vp_ptr, vn_ptr, start_ptr, s_start, n_rows, H, T, L,
                       svb, svh, svt, svpb, svph, svpl, svnb, svnh, svnl, scale, D, LOG_D, BITS, ROWS, True)


def _unit_last(x: torch.Tensor) -> torch.Tensor:
    """The kernels index the last dimension with unit stride: copy only a tensor that lacks it."""
    return x if x.stride(-1) == 1 else x.contiguous()


def _rows_warps(d: int) -> tuple[int, int]:
    """Vectors per program and warps: 4096-element tiles (16 vectors at D = 256)."""
    rows = max(1, min(16, 4096 // d))
    return rows, 4 if d * rows <= 2048 else 8


def _launch(x4: torch.Tensor, thr: torch.Tensor, packed: torch.Tensor, norms: torch.Tensor,
            start: torch.Tensor | None, bits: int) -> None:
    _, h_, t_, d = x4.shape
    n_rows = x4.numel() // d if d else 0
    if n_rows == 0:
        return
    x4 = _unit_last(x4)
    rows, warps = _rows_warps(d)
    _quantize_kv_kernel[(cdiv(n_rows, rows),)](
        x4, thr, packed, norms, start if start is not None else thr, start.stride(0) if start is not None else 0,
        n_rows, h_, t_, packed.shape[2],
        x4.stride(0), x4.stride(1), x4.stride(2), packed.stride(0), packed.stride(1), packed.stride(2),
        norms.stride(0), norms.stride(1), norms.stride(2), 1.0 / math.sqrt(d),
        D=d, LOG_D=d.bit_length() - 1, BITS=bits, ROWS=rows, HAS_START=start is not None, num_warps=warps)


def _launch_pair(k: torch.Tensor, v: torch.Tensor, thr: torch.Tensor, kp: torch.Tensor, kn: torch.Tensor,
                 vp: torch.Tensor, vn: torch.Tensor, start: torch.Tensor, bits: int) -> None:
    _, h_, t_, d = k.shape
    n_rows = k.numel() // d if d else 0
    if n_rows == 0:
        return
    k, v = _unit_last(k), _unit_last(v)
    rows, warps = _rows_warps(d)
    _quantize_kv_pair_kernel[(cdiv(n_rows, rows), 2)](
        k, v, thr, kp, kn, vp, vn, start, start.stride(0), n_rows, h_, t_, kp.shape[2],
        k.stride(0), k.stride(1), k.stride(2), v.stride(0), v.stride(1), v.stride(2),
        kp.stride(0), kp.stride(1), kp.stride(2), kn.stride(0), kn.stride(1), kn.stride(2),
        vp.stride(0), vp.stride(1), vp.stride(2), vn.stride(0), vn.stride(1), vn.stride(2), 1.0 / math.sqrt(d),
        D=d, LOG_D=d.bit_length() - 1, BITS=bits, ROWS=rows, num_warps=warps)


def _quantize_kv_launch(x: torch.Tensor, bits: int, codebook: torch.Tensor):
    *lead, d = x.shape
    x4 = x.reshape(1, 1, -1, d)
    n = x4.shape[2]
    packed = torch.empty(1, 1, n, d * bits // 32, dtype=torch.int32, device=x.device)
    norms = torch.empty(1, 1, n, dtype=torch.float16, device=x.device)
    _launch(x4, tables(codebook)[1], packed, norms, None, bits)
    return packed.reshape(*lead, d * bits // 32), norms.reshape(lead)


# torch.library registration: opaque to torch.compile, capturable in CUDA graphs (no host syncs)
@torch.library.custom_op("hlwq::quantize_kv", mutates_args=())
def _quantize_kv_op(x: torch.Tensor, codebook: torch.Tensor, bits: int) -> tuple[torch.Tensor, torch.Tensor]:
    return _quantize_kv_launch(x, bits, codebook)


@_quantize_kv_op.register_fake
def _(x, codebook, bits):
    *lead, d = x.shape
    return (x.new_empty((*lead, d * bits // 32), dtype=torch.int32), x.new_empty(lead, dtype=torch.float16))


@torch.library.custom_op("hlwq::kv_cache_write_", mutates_args=("cache_packed", "cache_norms"))
def _kv_cache_write_op(cache_packed: torch.Tensor, cache_norms: torch.Tensor, x: torch.Tensor, start: torch.Tensor,
                       codebook: torch.Tensor, bits: int) -> None:
    _launch(x, tables(codebook)[1], cache_packed, cache_norms, start, bits)


@_kv_cache_write_op.register_fake
def _(cache_packed, cache_norms, x, start, codebook, bits):
    return None


@torch.library.custom_op("hlwq::kv_cache_write_kv_", mutates_args=("k_packed", "k_norms", "v_packed", "v_norms"))
def _kv_cache_write_kv_op(k_packed: torch.Tensor, k_norms: torch.Tensor, v_packed: torch.Tensor,
                          v_norms: torch.Tensor, k: torch.Tensor, v: torch.Tensor, start: torch.Tensor,
                          codebook: torch.Tensor, bits: int) -> None:
    _launch_pair(k, v, tables(codebook)[1], k_packed, k_norms, v_packed, v_norms, start, bits)


@_kv_cache_write_kv_op.register_fake
def _(k_packed, k_norms, v_packed, v_norms, k, v, start, codebook, bits):
    return None


def quantize_kv_triton(x: torch.Tensor, bits: int, codebook: torch.Tensor):
    """Launcher (same arguments as ``quantize_kv_reference``), through ``hlwq::quantize_kv``."""
    return torch.ops.hlwq.quantize_kv(x, codebook, bits)


def kv_cache_write_triton(cache_packed: torch.Tensor, cache_norms: torch.Tensor, x: torch.Tensor,
                          start: torch.Tensor, bits: int, codebook: torch.Tensor) -> None:
    """Launcher (same arguments as ``kv_cache_write_reference``), through ``hlwq::kv_cache_write_``."""
    torch.ops.hlwq.kv_cache_write_(cache_packed, cache_norms, x, start, codebook, bits)


def kv_cache_write_kv_triton(k_packed: torch.Tensor, k_norms: torch.Tensor, v_packed: torch.Tensor,
                             v_norms: torch.Tensor, k: torch.Tensor, v: torch.Tensor, start: torch.Tensor, bits: int,
                             codebook: torch.Tensor) -> None:
    """Launcher (same arguments as ``kv_cache_write_kv_reference``), through ``hlwq::kv_cache_write_kv_``:
    K and V in one launch."""
    torch.ops.hlwq.kv_cache_write_kv_(k_packed, k_norms, v_packed, v_norms, k, v, start, codebook, bits)

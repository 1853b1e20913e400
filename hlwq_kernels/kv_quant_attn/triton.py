"""Triton attention over a packed HLWQ KV cache (flash-decoding with split-K).

Math. With H the orthonormal Hadamard matrix over D, a cached key is ``k = H (n_k c[code_k])``
and ``q . k = (H q) . (n_k c[code_k])``; likewise ``sum_j p_j v_j = H sum_j p_j n_v c[code_v]``.
So each program rotates its queries once (an in-register butterfly, scaled by
``scale * log2(e) / sqrt(D)`` so softmax uses exp2), scores ``c[code_k] . q_rot * n_k`` on the
tensor cores, accumulates ``(p * n_v) . c[code_v]`` in fp32 in the rotated basis, and the
output is rotated back once at the end (in the reduce kernel, or in this kernel when there is a
single split). Codes become fp16 codebook levels in registers/shared memory only: no dequantized
K or V is ever written to global memory. Dot operands are fp16 (levels exact to 2^-11 relative;
bf16 would lose 8x more), accumulation fp32.

Grid ``(m_tiles, B * Hkv, splits)``. Rows of a program are the ``G * Tq`` queries that share
one KV head, ordered ``r = t * G + g`` (query position major) so a tile covers consecutive
positions and the causal bound of the tile is its last row's. A decode step (G = 4 rows) pads
to 16 rows (the smallest MMA), which costs tensor-core cycles that are otherwise idle.
Split-K: each split covers ``chunk`` consecutive cache positions; splits are sized from the
cache capacity L (no host sync on ``kv_lens``); splits past ``kv_lens[b]`` exit at once.
Each split writes its normalized fp32 output and log2-sum-exp; ``_reduce_kernel`` merges them.

Decode of the codes (the real cost, see below): 2 and 3 bits use ``lut.py``'s PTX block, a
``prmt`` byte-permute lookup that turns a word of the 2-bit plane (+ the matching high bits,
spread with a Morton step) into 16 fp16 levels in ~36 instructions; its natural output order is
a permutation of the index bits of D, and since H commutes with such permutations the kernel
works in that permuted basis and only permutes the q load and the output store (``colperm``).
4 and 8 bits use shift/mask per plane and a gathered load of the level ("gather").

Floors (H100, 3.02 TB/s copy rate; Qwen3.5-9B attention: 16 q heads, 4 KV heads, D = 256):
bytes per token per layer, K+V of the 4 heads = 4 x 2 x (256 * bits / 8 + 2) B
= 528 B (2 bits), 784 B (3 bits), 1,040 B (4 bits); bf16: 4,096 B (5.2x more than 3 bits).
* 32k decode, batch 1: 17.3 / 25.7 / 34.1 MB at 2 / 3 / 4 bits -> 5.7 / 8.5 / 11.3 us.
  SDPA bf16 reads 134 MB (measured 73 us, 1.84 TB/s). Target 3 bits <= 21 us (3.5x).
* 128k decode, 3 bits: 103 MB -> 34 us (SDPA measured 211 us; target <= 53 us, 4x).
* batch 8 x 8k, 3 bits: 51.4 MB -> 17 us (SDPA reads 268 MB, >= 89 us; target 3x).
Split partials add ``splits x Hkv x G x D x 4 B`` written + read: at 32k, 64 splits per head,
1 MB + 1 MB (~8% of the cache bytes).

Compute bound: a 32k decode step decodes 67M codes. The loop is issue-bound, so the measure is
SASS instructions per code (sm_90, compiled here without a GPU, .notes/kv_compile.py): LUT
decode with the keys on the wgmma M side (``TRANS``, 64-token tiles): 3.9 (2 bits) / 5.4
(3 bits) per code -> 32k x 4 heads / 64 x 4 warps x 1,377 instructions = 11.3M warp
instructions = 12.2 us at 4 issues/clk/SM on 132 SMs (3 bits; 2 bits: 8.9 us); q-major 32-token
tiles (mma.sync): 6.7; the gather decode: 12.8 (-> ~29 us). So at 2-3 bits the kernel is
instruction-bound at ~1.4x the byte floor, not bandwidth-bound.
"""

from __future__ import annotations

import functools
import math
import warnings

import torch
import triton
import triton.language as tl

from .._common import cdiv, interpreting, next_pow2
from ..quantize_kv.codebooks import tables
from ..quantize_kv.triton import fwht_tile
from .lut import CONSTRAINTS as _LUT_CONSTRAINTS
from .lut import CONSTRAINTS_PACKED as _LUT_CONSTRAINTS_PACKED
from .lut import ptx as _lut_ptx
from . import gluon as _gluon

LOG2E = 1.4426950408889634
LUT_PTX: tl.constexpr = tl.constexpr(_lut_ptx())
LUT_CONSTRAINTS: tl.constexpr = tl.constexpr(_LUT_CONSTRAINTS)
LUT_PTX_PACKED: tl.constexpr = tl.constexpr(_lut_ptx(packed=True))
LUT_CONSTRAINTS_PACKED: tl.constexpr = tl.constexpr(_LUT_CONSTRAINTS_PACKED)
LUT_PTX_RAW: tl.constexpr = tl.constexpr(_lut_ptx(packed=True, raw=True))  # lut.PROGRAM_RAW, packed




@triton.jit
def _unpack_plane(codes, base, toks, tok_ok, stride_l, D: tl.constexpr, W: tl.constexpr, OFF: tl.constexpr,
                  BLOCK_N: tl.constexpr, PART: tl.constexpr = 0, NPART: tl.constexpr = 1):
    # the plane of width W holds D * W / 32 words from word (D / 32) * OFF; part PART of NPART: a
    # consecutive 1/NPART of them (= tile columns PART * D / NPART ...)
    PER: tl.constexpr = 32 // W
    NW: tl.constexpr = D // PER // NPART
    w_idx = (D // 32) * OFF + PART * NW + tl.arange(0, NW)
    words = tl.load(base + toks[:, None] * stride_l + w_idx[None, :], mask=tok_ok[:, None], other=0)
    shifts = (tl.arange(0, PER) * W).to(tl.uint32)
    fields = (words.to(tl.uint32, bitcast=True)[:, :, None] >> shifts[None, None, :]) & ((1 << W) - 1)
    return codes | (tl.reshape(fields, [BLOCK_N, D // NPART]) << OFF)


@triton.jit
def _levels(base, toks, tok_ok, stride_l, cb_ptr, D: tl.constexpr, BITS: tl.constexpr, BLOCK_N: tl.constexpr,
            PART: tl.constexpr = 0, NPART: tl.constexpr = 1):
    """fp16 codebook levels ``c[code]`` of a ``[BLOCK_N, D / NPART]`` tile of cached vectors
    (coordinates ``PART * D / NPART ...`` of each)."""
    codes = tl.zeros([BLOCK_N, D // NPART], dtype=tl.uint32)
    if BITS & 8:
        codes = _unpack_plane(codes, base, toks, tok_ok, stride_l, D, 8, 0, BLOCK_N, PART, NPART)
    if BITS & 4:
        codes = _unpack_plane(codes, base, toks, tok_ok, stride_l, D, 4, BITS & 8, BLOCK_N, PART, NPART)
    if BITS & 2:
        codes = _unpack_plane(codes, base, toks, tok_ok, stride_l, D, 2, BITS & 12, BLOCK_N, PART, NPART)
    if BITS & 1:
        codes = _unpack_plane(codes, base, toks, tok_ok, stride_l, D, 1, BITS & 14, BLOCK_N, PART, NPART)
    return tl.load(cb_ptr + codes.to(tl.int32))


@triton.jit
def colperm(j, PERM: tl.constexpr):
    """Column of the tile position j. The LUT decode yields the 16 fields of a word in the order
    [0,2,4,6, 1,3,5,7, 8,10,12,14, 9,11,13,15] (the asm's fp16 pairs), a permutation of the bits of
    j (f = j3 j1 j0 j2). H over D commutes with any permutation of index bits (H[i,j] depends on
    popcount(i & j) only), so the kernel works in the permuted basis throughout and only the q
    load and the output store use permuted columns."""
    if PERM:
        return (j & ~15) | (j & 8) | ((j & 3) << 1) | ((j >> 2) & 1)
    else:
        return j


@triton.jit
def _join16(o0, o1, o2, o3, o4, o5, o6, o7, o8, o9, o10, o11, o12, o13, o14, o15):
    """16 tensors [N, M] -> [N, M, 2, 2, 2, 2] whose flattened trailing index j holds o_j.
    ``tl.join`` adds a *trailing* axis, so the outermost join picks the lowest bit of j:
    J(o) = join(J(o[0::2]), J(o[1::2])), unrolled."""
    e0 = tl.join(tl.join(o0, o8), tl.join(o4, o12))
    e1 = tl.join(tl.join(o2, o10), tl.join(o6, o14))
    d0 = tl.join(tl.join(o1, o9), tl.join(o5, o13))
    d1 = tl.join(tl.join(o3, o11), tl.join(o7, o15))
    return tl.join(tl.join(e0, e1), tl.join(d0, d1))


@triton.jit
def _emul_level(w, h, cb_ptr, J: tl.constexpr):
    """What ``lut.PROGRAM`` returns for field J, with a gathered load (interpreter path)."""
    code = ((w >> (2 * J)) & 3) | (((h >> (2 * J)) & 1) << 2)
    return tl.load(cb_ptr + code.to(tl.int32))


@triton.jit
def _levels_lut(base, toks, tok_ok, stride_l, lut_ptr, cb_ptr, D: tl.constexpr, BITS: tl.constexpr,
                BLOCK_N: tl.constexpr, ASM: tl.constexpr, PART: tl.constexpr = 0, NPART: tl.constexpr = 1,
                PACKED: tl.constexpr = False, MASKED: tl.constexpr = True, HLOAD: tl.constexpr = False, WPRE=None,
                HPRE=None):
    """``_levels`` for 2 and 3 bits through the ``prmt`` byte lookup of ``lut.py``: each word of
    the 2-bit plane (16 codes) and the matching half-word of the 1-bit plane, its bits spread to
    even positions (Morton, 8 ops per 16 codes), become 16 fp16 levels in one PTX block.
    Part PART of NPART: coordinates ``PART * D / NPART ...`` only (whole words of both planes).
    MASKED = False: every token of the tile is valid (no load predicates). HLOAD (3 bits): the 1-bit
    plane is loaded as 16-bit halves, one per 2-bit-plane word, a tensor of w's shape and contiguity,
    so it gets w's layout (no [N, NW1, 2] -> [N, NW2] layout conversion through shared memory, which
    costs 2 barriers per decoded part). HLOAD = 2 (with PACKED): the raw halves go to the asm
    (``lut.PROGRAM_RAW``: the spread inside, fewer selector ops), any bits. WPRE / HPRE (HLOAD = 2,
    MASKED = False): the words as ``_words`` loaded them earlier (prefetch), instead of loading here."""
    NW2: tl.constexpr = D // 16 // NPART
    rows = toks[:, None] * stride_l
    if WPRE is not None:
        w = WPRE.to(tl.uint32, bitcast=True)
    elif MASKED:
        w = tl.load(base + rows + PART * NW2 + tl.arange(0, NW2)[None, :], mask=tok_ok[:, None],
                    other=0).to(tl.uint32, bitcast=True)
    else:
        w = tl.load(base + rows + PART * NW2 + tl.arange(0, NW2)[None, :]).to(tl.uint32, bitcast=True)
    if BITS == 3 and HLOAD:
        # the 1-bit plane read as 16-bit halves: half c (bits 16c .. 16c + 15 of the plane) goes with
        # word c of the 2-bit plane, so this load has the shape and contiguity of w's (same layout)
        NW1h: tl.constexpr = D // 32 // NPART
        hp = (base + rows + D // 16 + PART * NW1h).to(tl.pointer_type(tl.int16)) + tl.arange(0, NW2)[None, :]
        if HPRE is not None:
            h = HPRE
        elif MASKED:
            h = tl.load(hp, mask=tok_ok[:, None], other=0)
        else:
            h = tl.load(hp)
        h = h.to(tl.uint16, bitcast=True).to(tl.uint32)
        if not (HLOAD == 2 and ASM and PACKED):  # HLOAD 2: the asm (lut.PROGRAM_RAW) spreads the raw bits
            h = (h | (h << 8)) & 0x00FF00FF
            h = (h | (h << 4)) & 0x0F0F0F0F
            h = (h | (h << 2)) & 0x33333333
            h = (h | (h << 1)) & 0x55555555
    elif BITS == 3:
        NW1: tl.constexpr = D // 32 // NPART
        if MASKED:
            w1 = tl.load(base + rows + D // 16 + PART * NW1 + tl.arange(0, NW1)[None, :], mask=tok_ok[:, None],
                         other=0)
        else:
            w1 = tl.load(base + rows + D // 16 + PART * NW1 + tl.arange(0, NW1)[None, :])
        halves = (tl.arange(0, 2) * 16).to(tl.uint32)
        h = tl.reshape((w1.to(tl.uint32, bitcast=True)[:, :, None] >> halves[None, None, :]) & 0xFFFF, [BLOCK_N, NW2])
        h = (h | (h << 8)) & 0x00FF00FF
        h = (h | (h << 4)) & 0x0F0F0F0F
        h = (h | (h << 2)) & 0x33333333
        h = (h | (h << 1)) & 0x55555555
    else:
        h = tl.zeros([BLOCK_N, NW2], dtype=tl.uint32)
    if PACKED:
        # fp16x2 outputs (lut.PACKED_PAIRS): p_k holds the fields of tile positions 2k, 2k + 1
        if ASM:
            la = tl.load(lut_ptr)
            lb = tl.load(lut_ptr + 1)
            ha = tl.load(lut_ptr + 2)
            hb = tl.load(lut_ptr + 3)
            p0, p1, p2, p3, p4, p5, p6, p7 = tl.inline_asm_elementwise(
                LUT_PTX_RAW if HLOAD == 2 else LUT_PTX_PACKED, LUT_CONSTRAINTS_PACKED, [tl.join(w, h), la, lb, ha, hb],
                dtype=(tl.int16, tl.int16, tl.int16, tl.int16, tl.int16, tl.int16, tl.int16, tl.int16),
                is_pure=True, pack=2)
            p0 = p0.to(tl.float16, bitcast=True)
            p1 = p1.to(tl.float16, bitcast=True)
            p2 = p2.to(tl.float16, bitcast=True)
            p3 = p3.to(tl.float16, bitcast=True)
            p4 = p4.to(tl.float16, bitcast=True)
            p5 = p5.to(tl.float16, bitcast=True)
            p6 = p6.to(tl.float16, bitcast=True)
            p7 = p7.to(tl.float16, bitcast=True)
        else:  # interpreter: the same pairs, gathered
            p0 = tl.join(_emul_level(w, h, cb_ptr, 0), _emul_level(w, h, cb_ptr, 2))
            p1 = tl.join(_emul_level(w, h, cb_ptr, 4), _emul_level(w, h, cb_ptr, 6))
            p2 = tl.join(_emul_level(w, h, cb_ptr, 1), _emul_level(w, h, cb_ptr, 3))
            p3 = tl.join(_emul_level(w, h, cb_ptr, 5), _emul_level(w, h, cb_ptr, 7))
            p4 = tl.join(_emul_level(w, h, cb_ptr, 8), _emul_level(w, h, cb_ptr, 10))
            p5 = tl.join(_emul_level(w, h, cb_ptr, 12), _emul_level(w, h, cb_ptr, 14))
            p6 = tl.join(_emul_level(w, h, cb_ptr, 9), _emul_level(w, h, cb_ptr, 11))
            p7 = tl.join(_emul_level(w, h, cb_ptr, 13), _emul_level(w, h, cb_ptr, 15))
        # [N, M, 2 (pair), 2, 2, 2 (k, by _join16's rule)] -> [N, M, k, pair]: position 2k + pair
        v = tl.join(tl.join(tl.join(p0, p4), tl.join(p2, p6)), tl.join(tl.join(p1, p5), tl.join(p3, p7)))
        v = tl.permute(v, [0, 1, 3, 4, 5, 2])
    elif ASM:
        la = tl.load(lut_ptr)
        lb = tl.load(lut_ptr + 1)
        ha = tl.load(lut_ptr + 2)
        hb = tl.load(lut_ptr + 3)
        o0, o1, o2, o3, o4, o5, o6, o7, o8, o9, o10, o11, o12, o13, o14, o15 = tl.inline_asm_elementwise(
            LUT_PTX, LUT_CONSTRAINTS, [w, h, la, lb, ha, hb],
            dtype=(tl.int16, tl.int16, tl.int16, tl.int16, tl.int16, tl.int16, tl.int16, tl.int16,
                   tl.int16, tl.int16, tl.int16, tl.int16, tl.int16, tl.int16, tl.int16, tl.int16),
            is_pure=True, pack=1)
        # tile position j holds field colperm(j): the asm's register pairs stay pairs (no repack)
        v = _join16(o0, o2, o4, o6, o1, o3, o5, o7, o8, o10, o12, o14, o9, o11, o13, o15)
        v = v.to(tl.float16, bitcast=True)
    else:
        v = _join16(_emul_level(w, h, cb_ptr, 0), _emul_level(w, h, cb_ptr, 2), _emul_level(w, h, cb_ptr, 4),
                    _emul_level(w, h, cb_ptr, 6), _emul_level(w, h, cb_ptr, 1), _emul_level(w, h, cb_ptr, 3),
                    _emul_level(w, h, cb_ptr, 5), _emul_level(w, h, cb_ptr, 7), _emul_level(w, h, cb_ptr, 8),
                    _emul_level(w, h, cb_ptr, 10), _emul_level(w, h, cb_ptr, 12), _emul_level(w, h, cb_ptr, 14),
                    _emul_level(w, h, cb_ptr, 9), _emul_level(w, h, cb_ptr, 11), _emul_level(w, h, cb_ptr, 13),
                    _emul_level(w, h, cb_ptr, 15))
    return tl.reshape(v, [BLOCK_N, D // NPART])


@triton.jit
def _decode(base, toks, tok_ok, stride_l, cb_ptr, lut_ptr, D: tl.constexpr, BITS: tl.constexpr,
            BLOCK_N: tl.constexpr, DECODE: tl.constexpr, PART: tl.constexpr = 0, NPART: tl.constexpr = 1,
            PACKED: tl.constexpr = False, MASKED: tl.constexpr = True, HLOAD: tl.constexpr = False):
    # DECODE: 0 = shift/mask + gathered level, 1 = LUT layout emulated (interpreter), 2 = LUT asm;
    # PACKED (LUT only): the asm's outputs are fp16x2 registers (lut.PACKED_PAIRS)
    if DECODE == 0:
        return _levels(base, toks, tok_ok, stride_l, cb_ptr, D, BITS, BLOCK_N, PART, NPART)
    else:
        return _levels_lut(base, toks, tok_ok, stride_l, lut_ptr, cb_ptr, D, BITS, BLOCK_N, DECODE == 2, PART, NPART,
                           PACKED, MASKED, HLOAD)


@triton.jit
def _halves(x, ROWS: tl.constexpr, COLS: tl.constexpr):
    """[ROWS, COLS] -> its column halves [ROWS, COLS / 2] (left, right)."""
    return tl.split(tl.permute(tl.reshape(x, [ROWS, 2, COLS // 2]), [0, 2, 1]))


@triton.jit
def _stack(a, b, ROWS: tl.constexpr, COLS: tl.constexpr):
    """two [ROWS, COLS] -> [2 * ROWS, COLS] (a above b); inverse of ``_halves`` on transposes."""
    return tl.reshape(tl.permute(tl.join(a, b), [2, 0, 1]), [2 * ROWS, COLS])


@triton.jit
def _kdot(s, k_base, toks, tok_ok, skl, cb_ptr, lut_ptr, qt, D: tl.constexpr, BITS: tl.constexpr,
          BLOCK_N: tl.constexpr, DECODE: tl.constexpr, PART: tl.constexpr, NPART: tl.constexpr, PACKED: tl.constexpr,
          MASKED: tl.constexpr = True, HLOAD: tl.constexpr = False):
    """s + levels of coordinates part PART of NPART of the keys @ the matching rows of q^T."""
    kc = _decode(k_base, toks, tok_ok, skl, cb_ptr, lut_ptr, D, BITS, BLOCK_N, DECODE, PART, NPART, PACKED, MASKED,
                 HLOAD)
    return tl.dot(kc, qt, s)


@triton.jit
def _vdot(acc, alpha, v_base, toks, tok_ok, svl, cb_ptr, lut_ptr, pv, D: tl.constexpr, BITS: tl.constexpr,
          BLOCK_N: tl.constexpr, DECODE: tl.constexpr, PART: tl.constexpr, NPART: tl.constexpr, PACKED: tl.constexpr,
          MASKED: tl.constexpr = True, HLOAD: tl.constexpr = False):
    """o^T rows of part PART: acc * alpha + levels(V part)^T @ (p * n_v)^T."""
    return _vdot1(acc * alpha[None, :], v_base, toks, tok_ok, svl, cb_ptr, lut_ptr, pv, D, BITS, BLOCK_N, DECODE,
                  PART, NPART, PACKED, MASKED, HLOAD)


@triton.jit
def _vdot1(acc, v_base, toks, tok_ok, svl, cb_ptr, lut_ptr, pv, D: tl.constexpr, BITS: tl.constexpr,
           BLOCK_N: tl.constexpr, DECODE: tl.constexpr, PART: tl.constexpr, NPART: tl.constexpr, PACKED: tl.constexpr,
           MASKED: tl.constexpr = True, HLOAD: tl.constexpr = False):
    """``_vdot`` without the rescale: acc + levels(V part)^T @ pv."""
    vc = _decode(v_base, toks, tok_ok, svl, cb_ptr, lut_ptr, D, BITS, BLOCK_N, DECODE, PART, NPART, PACKED, MASKED,
                 HLOAD)
    return tl.dot(tl.trans(vc), pv, acc)


@triton.jit
def _online_softmax(s, valid, m_i, l_i, AXIS: tl.constexpr):
    """One key block of the streaming softmax (log2 domain) along axis ``AXIS`` of the scores ``s``
    (keys on axis 0 when the keys are the MMA's M side, else axis 1): invalid scores drop out;
    returns the block's weights p, the rescale factor of the running sums, the new running max
    and the new running denominator. A query that has seen no valid key yet keeps max -inf and
    weights 0 (no NaN)."""
    s = tl.where(valid, s, float("-inf"))
    m_new = tl.maximum(m_i, tl.max(s, axis=AXIS))
    m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
    alpha = tl.exp2(m_i - m_safe)
    p = tl.exp2(s - tl.expand_dims(m_safe, AXIS))
    return p, alpha, m_new, l_i * alpha + tl.sum(p, axis=AXIS)


@triton.jit
def _step4(n0, hi, pos, m_i, l_i, a0, a1, a2, a3, qt0, qt1, qt2, qt3, k_base, v_base, kn_base, vn_base,
           skl, svl, snkl, snvl, cb_ptr, lut_ptr, D: tl.constexpr, BITS: tl.constexpr, BLOCK_N: tl.constexpr,
           DECODE: tl.constexpr, PACKED: tl.constexpr, CAUSAL: tl.constexpr, MASKED: tl.constexpr,
           HLOAD: tl.constexpr, REP: tl.constexpr = False):
    """One key tile of the 4-part TRANS loop (the DSPLIT == 4 body of ``_split_kernel``). MASKED = False:
    the caller guarantees every token of the tile is < hi and visible to every row (no predicates,
    no -inf fill); the arithmetic is otherwise the same."""
    toks = n0 + tl.arange(0, BLOCK_N)
    tok_ok = toks < hi
    s = tl.zeros([BLOCK_N, qt0.shape[1]], dtype=tl.float32)
    s = _kdot(s, k_base, toks, tok_ok, skl, cb_ptr, lut_ptr, qt0, D, BITS, BLOCK_N, DECODE, 0, 4, PACKED, MASKED, HLOAD)
    s = _kdot(s, k_base, toks, tok_ok, skl, cb_ptr, lut_ptr, qt1, D, BITS, BLOCK_N, DECODE, 1, 4, PACKED, MASKED, HLOAD)
    s = _kdot(s, k_base, toks, tok_ok, skl, cb_ptr, lut_ptr, qt2, D, BITS, BLOCK_N, DECODE, 2, 4, PACKED, MASKED, HLOAD)
    s = _kdot(s, k_base, toks, tok_ok, skl, cb_ptr, lut_ptr, qt3, D, BITS, BLOCK_N, DECODE, 3, 4, PACKED, MASKED, HLOAD)
    if MASKED:
        kn = tl.load(kn_base + toks * snkl, mask=tok_ok, other=0.0).to(tl.float32)
        s = s * kn[:, None]
        valid = tok_ok[:, None]
        if CAUSAL:
            valid = valid & (toks[:, None] <= pos[None, :])
        p, alpha, m_new, l_i = _online_softmax(s, valid, m_i, l_i, 0)
        vn = tl.load(vn_base + toks * snvl, mask=tok_ok, other=0.0).to(tl.float32)
    else:
        kn = tl.load(kn_base + toks * snkl).to(tl.float32)
        s = s * kn[:, None]
        m_new = tl.maximum(m_i, tl.max(s, axis=0))  # finite: every score of the tile is
        alpha = tl.exp2(m_i - m_new)  # m_i = -inf before the first tile: alpha = 0
        p = tl.exp2(s - m_new[None, :])
        l_i = l_i * alpha + tl.sum(p, axis=0)
        vn = tl.load(vn_base + toks * snvl).to(tl.float32)
    pv = (p * vn[:, None]).to(tl.float16)
    if REP:  # one accumulator: part p into column block p (see _split_kernel)
        blk = tl.arange(0, pv.shape[1])[None, :] // 4
        a0 = a0 * alpha[None, :]
        for part in tl.static_range(4):
            a0 = _vdot1(a0, v_base, toks, tok_ok, svl, cb_ptr, lut_ptr, tl.where(blk == part, pv, 0.0), D, BITS,
                        BLOCK_N, DECODE, part, 4, PACKED, MASKED, HLOAD)
        return m_new, l_i, a0, a1, a2, a3
    a0 = _vdot(a0, alpha, v_base, toks, tok_ok, svl, cb_ptr, lut_ptr, pv, D, BITS, BLOCK_N, DECODE, 0, 4, PACKED,
               MASKED, HLOAD)
    a1 = _vdot(a1, alpha, v_base, toks, tok_ok, svl, cb_ptr, lut_ptr, pv, D, BITS, BLOCK_N, DECODE, 1, 4, PACKED,
               MASKED, HLOAD)
    a2 = _vdot(a2, alpha, v_base, toks, tok_ok, svl, cb_ptr, lut_ptr, pv, D, BITS, BLOCK_N, DECODE, 2, 4, PACKED,
               MASKED, HLOAD)
    a3 = _vdot(a3, alpha, v_base, toks, tok_ok, svl, cb_ptr, lut_ptr, pv, D, BITS, BLOCK_N, DECODE, 3, 4, PACKED,
               MASKED, HLOAD)
    return m_new, l_i, a0, a1, a2, a3


@triton.jit
def _words(base, n0, hi, stride_l, D: tl.constexpr, BITS: tl.constexpr, BLOCK_N: tl.constexpr,
           MASKED: tl.constexpr):
    """The code words of part 0 of 4 of tile n0 as ``_levels_lut`` (HLOAD = 2) loads them: the 2-bit
    plane words and (3 bits) the matching 16-bit halves of the 1-bit plane (a register prefetch)."""
    NW2: tl.constexpr = D // 64
    toks = n0 + tl.arange(0, BLOCK_N)
    rows = toks[:, None] * stride_l
    cols = tl.arange(0, NW2)[None, :]
    hp = (base + rows + D // 16).to(tl.pointer_type(tl.int16)) + cols
    if MASKED:
        w = tl.load(base + rows + cols, mask=(toks < hi)[:, None], other=0)
    else:
        w = tl.load(base + rows + cols)
    h = w  # 2 bits: unused (a tensor, so the loop can carry it)
    if BITS == 3:
        if MASKED:
            h = tl.load(hp, mask=(toks < hi)[:, None], other=0)
        else:
            h = tl.load(hp)
    return w, h


@triton.jit
def _kscore4(n0, hi, k_base, kn_base, skl, snkl, qt0, qt1, qt2, qt3, cb_ptr, lut_ptr, D: tl.constexpr,
             BITS: tl.constexpr, BLOCK_N: tl.constexpr, DECODE: tl.constexpr, PACKED: tl.constexpr,
             MASKED: tl.constexpr, HLOAD: tl.constexpr, WPRE=None, HPRE=None):
    """The K half of ``_step4``: the scores ``s^T = levels_k @ q^T * n_k`` of tile n0 (4 D parts).
    WPRE / HPRE: part 0's code words, loaded earlier (``_words``)."""
    toks = n0 + tl.arange(0, BLOCK_N)
    tok_ok = toks < hi
    s = tl.zeros([BLOCK_N, qt0.shape[1]], dtype=tl.float32)
    if WPRE is not None:
        kc = _levels_lut(k_base, toks, tok_ok, skl, lut_ptr, cb_ptr, D, BITS, BLOCK_N, DECODE == 2, 0, 4, PACKED,
                         MASKED, HLOAD, WPRE, HPRE)
        s = tl.dot(kc, qt0, s)
    else:
        s = _kdot(s, k_base, toks, tok_ok, skl, cb_ptr, lut_ptr, qt0, D, BITS, BLOCK_N, DECODE, 0, 4, PACKED, MASKED,
                  HLOAD)
    s = _kdot(s, k_base, toks, tok_ok, skl, cb_ptr, lut_ptr, qt1, D, BITS, BLOCK_N, DECODE, 1, 4, PACKED, MASKED, HLOAD)
    s = _kdot(s, k_base, toks, tok_ok, skl, cb_ptr, lut_ptr, qt2, D, BITS, BLOCK_N, DECODE, 2, 4, PACKED, MASKED, HLOAD)
    s = _kdot(s, k_base, toks, tok_ok, skl, cb_ptr, lut_ptr, qt3, D, BITS, BLOCK_N, DECODE, 3, 4, PACKED, MASKED, HLOAD)
    if MASKED:
        kn = tl.load(kn_base + toks * snkl, mask=tok_ok, other=0.0).to(tl.float32)
    else:
        kn = tl.load(kn_base + toks * snkl).to(tl.float32)
    return s * kn[:, None]


@triton.jit
def _soft4(s, n0, hi, pos, m_i, l_i, vn_base, snvl, BLOCK_N: tl.constexpr, CAUSAL: tl.constexpr,
           MASKED: tl.constexpr):
    """The softmax of ``_step4`` on the scores of tile n0: (p * n_v as fp16, alpha, m_new, l_new)."""
    toks = n0 + tl.arange(0, BLOCK_N)
    tok_ok = toks < hi
    if MASKED:
        valid = tok_ok[:, None]
        if CAUSAL:
            valid = valid & (toks[:, None] <= pos[None, :])
        p, alpha, m_new, l_i = _online_softmax(s, valid, m_i, l_i, 0)
        vn = tl.load(vn_base + toks * snvl, mask=tok_ok, other=0.0).to(tl.float32)
    else:
        m_new = tl.maximum(m_i, tl.max(s, axis=0))  # finite: every score of the tile is
        alpha = tl.exp2(m_i - m_new)  # m_i = -inf before the first tile: alpha = 0
        p = tl.exp2(s - m_new[None, :])
        l_i = l_i * alpha + tl.sum(p, axis=0)
        vn = tl.load(vn_base + toks * snvl).to(tl.float32)
    return (p * vn[:, None]).to(tl.float16), alpha, m_new, l_i


@triton.jit
def _vrep4(a0, n0, hi, pv, v_base, svl, cb_ptr, lut_ptr, D: tl.constexpr, BITS: tl.constexpr,
           BLOCK_N: tl.constexpr, DECODE: tl.constexpr, PACKED: tl.constexpr, MASKED: tl.constexpr,
           HLOAD: tl.constexpr, PART: tl.constexpr):
    """REP's V dot of part PART of tile n0 into column block PART of the one accumulator."""
    toks = n0 + tl.arange(0, BLOCK_N)
    tok_ok = toks < hi
    blk = tl.arange(0, pv.shape[1])[None, :] // 4
    return _vdot1(a0, v_base, toks, tok_ok, svl, cb_ptr, lut_ptr, tl.where(blk == PART, pv, 0.0), D, BITS, BLOCK_N,
                  DECODE, PART, 4, PACKED, MASKED, HLOAD)


@triton.jit
def _vrep4_all(a0, alpha, n0, hi, pv, v_base, svl, cb_ptr, lut_ptr, D: tl.constexpr, BITS: tl.constexpr,
               BLOCK_N: tl.constexpr, DECODE: tl.constexpr, PACKED: tl.constexpr, MASKED: tl.constexpr,
               HLOAD: tl.constexpr):
    a0 = a0 * alpha[None, :]
    a0 = _vrep4(a0, n0, hi, pv, v_base, svl, cb_ptr, lut_ptr, D, BITS, BLOCK_N, DECODE, PACKED, MASKED, HLOAD, 0)
    a0 = _vrep4(a0, n0, hi, pv, v_base, svl, cb_ptr, lut_ptr, D, BITS, BLOCK_N, DECODE, PACKED, MASKED, HLOAD, 1)
    a0 = _vrep4(a0, n0, hi, pv, v_base, svl, cb_ptr, lut_ptr, D, BITS, BLOCK_N, DECODE, PACKED, MASKED, HLOAD, 2)
    a0 = _vrep4(a0, n0, hi, pv, v_base, svl, cb_ptr, lut_ptr, D, BITS, BLOCK_N, DECODE, PACKED, MASKED, HLOAD, 3)
    return a0


@triton.jit
def _lse_merge(m_a, l_a, a_a, m_b, l_b, a_b):
    """Merge two online-softmax states (running max, denominator, [*, rows] accumulator) of disjoint
    key sets: the log-sum-exp merge. A state that has seen no key (max -inf) contributes 0."""
    m = tl.maximum(m_a, m_b)
    m_safe = tl.where(m == float("-inf"), 0.0, m)
    fa = tl.exp2(m_a - m_safe)
    fb = tl.exp2(m_b - m_safe)
    return m, l_a * fa + l_b * fb, a_a * fa[None, :] + a_b * fb[None, :]


@triton.jit
def _split_kernel(q_ptr, kp_ptr, kn_ptr, vp_ptr, vn_ptr, cb_ptr, lut_ptr, lens_ptr, start_ptr, op_ptr, lse_ptr,
                  out_ptr, s_lens, s_start, Hkv, G, Tq, n_rows, L, chunk, qscale, oscale,
                  sqb, sqh, sqt, skb, skh, skl, snkb, snkh, snkl, svb, svh, svl, snvb, snvh, snvl,
                  sob, soh, sot,
                  D: tl.constexpr, LOG_D: tl.constexpr, BITS: tl.constexpr,
                  BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, CAUSAL: tl.constexpr, DIRECT: tl.constexpr,
                  DECODE: tl.constexpr, TRANS: tl.constexpr, HAS_START: tl.constexpr, DSPLIT: tl.constexpr = 1,
                  PACKED: tl.constexpr = False, HLOAD: tl.constexpr = 0, TAIL: tl.constexpr = False,
                  REP: tl.constexpr = False, DUAL: tl.constexpr = 0, LACC: tl.constexpr = False,
                  PF: tl.constexpr = False):
    pid_m = tl.program_id(0)
    bh = tl.program_id(1).to(tl.int64)
    split = tl.program_id(2)
    b = bh // Hkv
    hk = bh % Hkv
    kv_len = tl.load(lens_ptr + b * s_lens).to(tl.int32)  # strided: kv_lens may be an expand()

    if REP:  # (TAIL, DSPLIT 4, n_rows <= 4, one m tile) tile row 4c + r is query row r, for c = 0..3
        rows = tl.arange(0, BLOCK_M) % 4
    else:
        rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    row_ok = rows < n_rows
    t = rows // G
    g = rows % G
    pos = kv_len - Tq + t  # absolute position of each query (chunk of Tq after the cached prefix)
    lo = split * chunk
    hi = tl.minimum(tl.minimum(lo + chunk, kv_len), L)  # L: never read past the cache, whatever kv_lens says
    if HAS_START:  # keys before kv_start[b] (left padding) are invisible: start the scan there
        lo = tl.maximum(lo, tl.load(start_ptr + b * s_start).to(tl.int32))
    if CAUSAL:
        t_last = (tl.minimum(pid_m * BLOCK_M + BLOCK_M, n_rows) - 1) // G  # the tile's last query
        hi = tl.minimum(hi, kv_len - Tq + t_last + 1)

    cols = colperm(tl.arange(0, D), DECODE != 0)
    if REP:  # 4 distinct rows: rotate those, then repeat them (row 4c + r = query row r)
        r4 = tl.arange(0, 4)
        q = tl.load(q_ptr + b * sqb + (hk * G + r4 % G)[:, None] * sqh + (r4 // G)[:, None] * sqt + cols[None, :],
                    mask=(r4 < n_rows)[:, None], other=0.0).to(tl.float32)
        q = (fwht_tile(q, 4, D, LOG_D) * qscale).to(tl.float16)
        q = tl.reshape(tl.broadcast_to(q[None, :, :], [4, 4, D]), [BLOCK_M, D])
    else:
        q = tl.load(q_ptr + b * sqb + (hk * G + g)[:, None] * sqh + t[:, None] * sqt + cols[None, :],
                    mask=row_ok[:, None], other=0.0).to(tl.float32)
        q = (fwht_tile(q, BLOCK_M, D, LOG_D) * qscale).to(tl.float16)

    k_base = kp_ptr + b * skb + hk * skh
    v_base = vp_ptr + b * svb + hk * svh
    kn_base = kn_ptr + b * snkb + hk * snkh
    vn_base = vn_ptr + b * snvb + hk * snvh
    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    if TRANS and DSPLIT == 4 and TAIL:
        # the DSPLIT == 4 loop below, split in two: tiles whose every token is < hi and visible to every
        # row of the program (the causal bound of its *first* row) run without any mask; the rest
        # (at most the last tile or two) with the masks.
        # REP: the 4 query rows are repeated in the 4 column blocks of the 16-column tile (the K dots
        # compute the same scores 4 times in MMA columns that were padding anyway), and part p of the
        # V dot adds levels_v[:, part p]^T @ (p * n_v) masked to column block p into ONE accumulator
        # [D / 4, 16]: acc[d, 4p + r] = o^T[p * D / 4 + d, r]. Same products, same fp32 sums (the
        # masked columns add exact zeros), 8 accumulator registers per thread instead of 32.
        DP4: tl.constexpr = D // 4
        qa, qb = _halves(q, BLOCK_M, D)
        q0, q1 = _halves(qa, BLOCK_M, D // 2)
        q2, q3 = _halves(qb, BLOCK_M, D // 2)
        qt0 = tl.trans(q0)
        qt1 = tl.trans(q1)
        qt2 = tl.trans(q2)
        qt3 = tl.trans(q3)
        a0 = tl.zeros([DP4, BLOCK_M], dtype=tl.float32)
        a1 = tl.zeros([DP4, BLOCK_M], dtype=tl.float32)
        a2 = tl.zeros([DP4, BLOCK_M], dtype=tl.float32)
        a3 = tl.zeros([DP4, BLOCK_M], dtype=tl.float32)
        hi_all = hi
        if CAUSAL:
            hi_all = tl.minimum(hi, kv_len - Tq + (pid_m * BLOCK_M) // G + 1)  # the tile's first query
        mid = lo + tl.maximum(hi_all - lo, 0) // BLOCK_N * BLOCK_N
        if LACC:
            # (REP) the denominator kept per key and column ([BLOCK_N, BLOCK_M] fp32, rescaled with the
            # accumulator) and summed over the keys once after the main loop: no cross-warp sum (its
            # shuffles, shared-memory round trip and barriers) per tile; the same terms, summed in another order.
            # PF (with LACC): part 0's code words of the next tile are loaded into registers after the
            # softmax (the V dots cover their latency) instead of at the top of the trip.
            l_acc = tl.zeros([BLOCK_N, BLOCK_M], dtype=tl.float32)
            if PF:
                w_pf, h_pf = _words(k_base, lo, hi, skl, D, BITS, BLOCK_N, True)
            for n0 in range(lo, mid, BLOCK_N):
                if PF:
                    s_c = _kscore4(n0, hi, k_base, kn_base, skl, snkl, qt0, qt1, qt2, qt3, cb_ptr, lut_ptr, D, BITS,
                                   BLOCK_N, DECODE, PACKED, False, HLOAD, w_pf, h_pf)
                else:
                    s_c = _kscore4(n0, hi, k_base, kn_base, skl, snkl, qt0, qt1, qt2, qt3, cb_ptr, lut_ptr, D, BITS,
                                   BLOCK_N, DECODE, PACKED, False, HLOAD)
                m_new = tl.maximum(m_i, tl.max(s_c, axis=0))  # finite: every score of the tile is
                alpha = tl.exp2(m_i - m_new)  # m_i = -inf before the first tile: alpha = 0
                p = tl.exp2(s_c - m_new[None, :])
                l_acc = l_acc * alpha[None, :] + p
                vn = tl.load(vn_base + (n0 + tl.arange(0, BLOCK_N)) * snvl).to(tl.float32)
                if PF:  # the last trip reloads its own tile (any in-range address would do)
                    w_pf, h_pf = _words(k_base, tl.minimum(n0 + BLOCK_N, mid - BLOCK_N), hi, skl, D, BITS, BLOCK_N,
                                        False)
                a0 = _vrep4_all(a0, alpha, n0, hi, (p * vn[:, None]).to(tl.float16), v_base, svl, cb_ptr, lut_ptr,
                                D, BITS, BLOCK_N, DECODE, PACKED, False, HLOAD)
                m_i = m_new
            l_i = tl.sum(l_acc, axis=0)
        elif DUAL == 0:
            for n0 in range(lo, mid, BLOCK_N):
                m_i, l_i, a0, a1, a2, a3 = _step4(n0, hi, pos, m_i, l_i, a0, a1, a2, a3, qt0, qt1, qt2, qt3, k_base,
                                                  v_base, kn_base, vn_base, skl, svl, snkl, snvl, cb_ptr, lut_ptr, D,
                                                  BITS, BLOCK_N, DECODE, PACKED, CAUSAL, False, HLOAD, REP)
        elif DUAL == 3:
            # (REP) software-pipelined: the scores of tile n + 1 are computed between the softmax and the
            # V dots of tile n (s carried across the trip: 8 fp32 registers per thread), so the K decode of
            # one tile and the softmax / V of the previous one are independent work in one loop body.
            if lo < mid:
                s_c = _kscore4(lo, hi, k_base, kn_base, skl, snkl, qt0, qt1, qt2, qt3, cb_ptr, lut_ptr, D, BITS,
                               BLOCK_N, DECODE, PACKED, False, HLOAD)
                for n0 in range(lo, mid - BLOCK_N, BLOCK_N):
                    pv, alpha, m_i, l_i = _soft4(s_c, n0, hi, pos, m_i, l_i, vn_base, snvl, BLOCK_N, CAUSAL, False)
                    s_c = _kscore4(n0 + BLOCK_N, hi, k_base, kn_base, skl, snkl, qt0, qt1, qt2, qt3, cb_ptr, lut_ptr,
                                   D, BITS, BLOCK_N, DECODE, PACKED, False, HLOAD)
                    a0 = _vrep4_all(a0, alpha, n0, hi, pv, v_base, svl, cb_ptr, lut_ptr, D, BITS, BLOCK_N, DECODE,
                                    PACKED, False, HLOAD)
                pv, alpha, m_i, l_i = _soft4(s_c, mid - BLOCK_N, hi, pos, m_i, l_i, vn_base, snvl, BLOCK_N, CAUSAL,
                                             False)
                a0 = _vrep4_all(a0, alpha, mid - BLOCK_N, hi, pv, v_base, svl, cb_ptr, lut_ptr, D, BITS, BLOCK_N,
                                DECODE, PACKED, False, HLOAD)
        else:
            # (REP) two independent chains: each trip takes tiles n0 (state m_i, l_i, a0) and n0 + BLOCK_N
            # (m_j, l_j, b0), merged once after the loop (log-sum-exp merge); an odd last mask-free tile
            # runs on the merged state. DUAL 1: the two tiles' _step4 one after the other; DUAL 2: phase by
            # phase (K of both, softmax of both, then V part p of both for p = 0..3).
            mid2 = lo + (mid - lo) // (2 * BLOCK_N) * (2 * BLOCK_N)
            m_j = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
            l_j = tl.zeros([BLOCK_M], dtype=tl.float32)
            b0 = tl.zeros([DP4, BLOCK_M], dtype=tl.float32)
            for n0 in range(lo, mid2, 2 * BLOCK_N):
                n1 = n0 + BLOCK_N
                if DUAL == 1:
                    m_i, l_i, a0, a1, a2, a3 = _step4(n0, hi, pos, m_i, l_i, a0, a1, a2, a3, qt0, qt1, qt2, qt3,
                                                      k_base, v_base, kn_base, vn_base, skl, svl, snkl, snvl, cb_ptr,
                                                      lut_ptr, D, BITS, BLOCK_N, DECODE, PACKED, CAUSAL, False, HLOAD,
                                                      REP)
                    m_j, l_j, b0, a1, a2, a3 = _step4(n1, hi, pos, m_j, l_j, b0, a1, a2, a3, qt0, qt1, qt2, qt3,
                                                      k_base, v_base, kn_base, vn_base, skl, svl, snkl, snvl, cb_ptr,
                                                      lut_ptr, D, BITS, BLOCK_N, DECODE, PACKED, CAUSAL, False, HLOAD,
                                                      REP)
                else:
                    s_a = _kscore4(n0, hi, k_base, kn_base, skl, snkl, qt0, qt1, qt2, qt3, cb_ptr, lut_ptr, D, BITS,
                                   BLOCK_N, DECODE, PACKED, False, HLOAD)
                    s_b = _kscore4(n1, hi, k_base, kn_base, skl, snkl, qt0, qt1, qt2, qt3, cb_ptr, lut_ptr, D, BITS,
                                   BLOCK_N, DECODE, PACKED, False, HLOAD)
                    pv_a, al_a, m_i, l_i = _soft4(s_a, n0, hi, pos, m_i, l_i, vn_base, snvl, BLOCK_N, CAUSAL, False)
                    pv_b, al_b, m_j, l_j = _soft4(s_b, n1, hi, pos, m_j, l_j, vn_base, snvl, BLOCK_N, CAUSAL, False)
                    a0 = a0 * al_a[None, :]
                    b0 = b0 * al_b[None, :]
                    for part in tl.static_range(4):  # V part p of tile n0, then of tile n1
                        a0 = _vrep4(a0, n0, hi, pv_a, v_base, svl, cb_ptr, lut_ptr, D, BITS, BLOCK_N, DECODE, PACKED,
                                    False, HLOAD, part)
                        b0 = _vrep4(b0, n1, hi, pv_b, v_base, svl, cb_ptr, lut_ptr, D, BITS, BLOCK_N, DECODE, PACKED,
                                    False, HLOAD, part)
            m_i, l_i, a0 = _lse_merge(m_i, l_i, a0, m_j, l_j, b0)
            for n0 in range(mid2, mid, BLOCK_N):  # at most one tile
                m_i, l_i, a0, a1, a2, a3 = _step4(n0, hi, pos, m_i, l_i, a0, a1, a2, a3, qt0, qt1, qt2, qt3, k_base,
                                                  v_base, kn_base, vn_base, skl, svl, snkl, snvl, cb_ptr, lut_ptr, D,
                                                  BITS, BLOCK_N, DECODE, PACKED, CAUSAL, False, HLOAD, REP)
        for n0 in range(mid, hi, BLOCK_N):
            m_i, l_i, a0, a1, a2, a3 = _step4(n0, hi, pos, m_i, l_i, a0, a1, a2, a3, qt0, qt1, qt2, qt3, k_base,
                                              v_base, kn_base, vn_base, skl, svl, snkl, snvl, cb_ptr, lut_ptr, D,
                                              BITS, BLOCK_N, DECODE, PACKED, CAUSAL, True, HLOAD, REP)
        if REP:
            # a0[d, 4p + r] -> row 4c + r, column p * D / 4 + d (every c: the 4 copies of query r)
            x = tl.permute(tl.reshape(tl.trans(a0), [4, 4, DP4]), [1, 0, 2])  # [r, p, d]
            x = tl.reshape(x, [4, D])
            if not DIRECT:
                # the partial leaves rotated back (linear: rotating each split's partial = rotating
                # their weighted sum), so _merge_kernel needs no whole row: it runs over column chunks
                x = fwht_tile(x, 4, D, LOG_D) * oscale
            acc = tl.reshape(tl.broadcast_to(x[None, :, :], [4, 4, D]), [BLOCK_M, D])
        else:
            acc = tl.trans(_stack(_stack(a0, a1, DP4, BLOCK_M), _stack(a2, a3, DP4, BLOCK_M), 2 * DP4, BLOCK_M))
    elif TRANS and DSPLIT > 1:
        # as TRANS below, with D cut into DSPLIT (2 or 4) consecutive parts of the (permuted) basis:
        # s^T = sum_p levels_k[:, part p] @ q^T[part p]; o^T[part p] += levels_v[:, part p]^T @ p^T.
        # Each dot's register operand (and each decoded part) is 1/DSPLIT of the tile, so fewer
        # values are live at once; the arithmetic is the same (fp32 accumulation of the same
        # products, summed over the parts in order).
        DP: tl.constexpr = D // DSPLIT
        if DSPLIT == 2:
            q0, q1 = _halves(q, BLOCK_M, D)
        else:
            qa, qb = _halves(q, BLOCK_M, D)
            q0, q1 = _halves(qa, BLOCK_M, D // 2)
            q2, q3 = _halves(qb, BLOCK_M, D // 2)
            qt2 = tl.trans(q2)
            qt3 = tl.trans(q3)
            a2 = tl.zeros([DP, BLOCK_M], dtype=tl.float32)
            a3 = tl.zeros([DP, BLOCK_M], dtype=tl.float32)
        qt0 = tl.trans(q0)
        qt1 = tl.trans(q1)
        a0 = tl.zeros([DP, BLOCK_M], dtype=tl.float32)
        a1 = tl.zeros([DP, BLOCK_M], dtype=tl.float32)
        for n0 in range(lo, hi, BLOCK_N):
            toks = n0 + tl.arange(0, BLOCK_N)
            tok_ok = toks < hi
            s = tl.zeros([BLOCK_N, BLOCK_M], dtype=tl.float32)
            s = _kdot(s, k_base, toks, tok_ok, skl, cb_ptr, lut_ptr, qt0, D, BITS, BLOCK_N, DECODE, 0, DSPLIT,
                      PACKED)
            s = _kdot(s, k_base, toks, tok_ok, skl, cb_ptr, lut_ptr, qt1, D, BITS, BLOCK_N, DECODE, 1, DSPLIT,
                      PACKED)
            if DSPLIT == 4:
                s = _kdot(s, k_base, toks, tok_ok, skl, cb_ptr, lut_ptr, qt2, D, BITS, BLOCK_N, DECODE, 2, DSPLIT,
                          PACKED)
                s = _kdot(s, k_base, toks, tok_ok, skl, cb_ptr, lut_ptr, qt3, D, BITS, BLOCK_N, DECODE, 3, DSPLIT,
                          PACKED)
            kn = tl.load(kn_base + toks * snkl, mask=tok_ok, other=0.0).to(tl.float32)
            s = s * kn[:, None]
            valid = tok_ok[:, None]
            if CAUSAL:
                valid = valid & (toks[:, None] <= pos[None, :])
            p, alpha, m_new, l_i = _online_softmax(s, valid, m_i, l_i, 0)
            vn = tl.load(vn_base + toks * snvl, mask=tok_ok, other=0.0).to(tl.float32)
            pv = (p * vn[:, None]).to(tl.float16)
            a0 = _vdot(a0, alpha, v_base, toks, tok_ok, svl, cb_ptr, lut_ptr, pv, D, BITS, BLOCK_N, DECODE, 0,
                       DSPLIT, PACKED)
            a1 = _vdot(a1, alpha, v_base, toks, tok_ok, svl, cb_ptr, lut_ptr, pv, D, BITS, BLOCK_N, DECODE, 1,
                       DSPLIT, PACKED)
            if DSPLIT == 4:
                a2 = _vdot(a2, alpha, v_base, toks, tok_ok, svl, cb_ptr, lut_ptr, pv, D, BITS, BLOCK_N, DECODE, 2,
                           DSPLIT, PACKED)
                a3 = _vdot(a3, alpha, v_base, toks, tok_ok, svl, cb_ptr, lut_ptr, pv, D, BITS, BLOCK_N, DECODE, 3,
                           DSPLIT, PACKED)
            m_i = m_new
        if DSPLIT == 2:
            acc = tl.trans(_stack(a0, a1, DP, BLOCK_M))
        else:
            acc = tl.trans(_stack(_stack(a0, a1, DP, BLOCK_M), _stack(a2, a3, DP, BLOCK_M), 2 * DP, BLOCK_M))
    elif TRANS:
        # keys as the MMA's M side: s^T = levels_k @ q^T, o^T += levels_v^T @ p^T. q^T is then the
        # loop-invariant B operand (it can stay in registers) instead of an A operand re-read
        # from shared memory every iteration.
        qt = tl.trans(q)
        acc_t = tl.zeros([D, BLOCK_M], dtype=tl.float32)
        for n0 in range(lo, hi, BLOCK_N):
            toks = n0 + tl.arange(0, BLOCK_N)
            tok_ok = toks < hi
            kc = _decode(k_base, toks, tok_ok, skl, cb_ptr, lut_ptr, D, BITS, BLOCK_N, DECODE, 0, 1, PACKED)
            kn = tl.load(kn_base + toks * snkl, mask=tok_ok, other=0.0).to(tl.float32)
            s = tl.dot(kc, qt) * kn[:, None]  # [BLOCK_N, BLOCK_M]
            valid = tok_ok[:, None]
            if CAUSAL:
                valid = valid & (toks[:, None] <= pos[None, :])
            p, alpha, m_new, l_i = _online_softmax(s, valid, m_i, l_i, 0)
            vc = _decode(v_base, toks, tok_ok, svl, cb_ptr, lut_ptr, D, BITS, BLOCK_N, DECODE, 0, 1, PACKED)
            vn = tl.load(vn_base + toks * snvl, mask=tok_ok, other=0.0).to(tl.float32)
            acc_t = acc_t * alpha[None, :] + tl.dot(tl.trans(vc), (p * vn[:, None]).to(tl.float16))
            m_i = m_new
        acc = tl.trans(acc_t)
    else:
        acc = tl.zeros([BLOCK_M, D], dtype=tl.float32)
        for n0 in range(lo, hi, BLOCK_N):
            toks = n0 + tl.arange(0, BLOCK_N)
            tok_ok = toks < hi
            kc = _decode(k_base, toks, tok_ok, skl, cb_ptr, lut_ptr, D, BITS, BLOCK_N, DECODE, 0, 1, PACKED)
            kn = tl.load(kn_base + toks * snkl, mask=tok_ok, other=0.0).to(tl.float32)
            s = tl.dot(q, tl.trans(kc)) * kn[None, :]
            valid = tok_ok[None, :]
            if CAUSAL:
                valid = valid & (toks[None, :] <= pos[:, None])
            p, alpha, m_new, l_i = _online_softmax(s, valid, m_i, l_i, 1)
            vc = _decode(v_base, toks, tok_ok, svl, cb_ptr, lut_ptr, D, BITS, BLOCK_N, DECODE, 0, 1, PACKED)
            vn = tl.load(vn_base + toks * snvl, mask=tok_ok, other=0.0).to(tl.float32)
            acc = acc * alpha[:, None] + tl.dot((p * vn[None, :]).to(tl.float16), vc)
            m_i = m_new

    if REP:
        row_ok = row_ok & (tl.arange(0, BLOCK_M) < 4)  # one copy of each row
    l_safe = tl.where(l_i > 0.0, l_i, 1.0)
    o = acc / l_safe[:, None]  # rows without any key: 0
    if DIRECT:
        o = fwht_tile(o, BLOCK_M, D, LOG_D) * oscale
        tl.store(out_ptr + b * sob + (hk * G + g)[:, None] * soh + t[:, None] * sot + cols[None, :],
                 o.to(out_ptr.dtype.element_ty), mask=row_ok[:, None])
    else:
        lse = tl.where(l_i > 0.0, m_i + tl.log2(l_safe), float("-inf"))
        prow = (split * tl.num_programs(1) + bh) * n_rows + rows
        tl.store(lse_ptr + prow, lse, mask=row_ok)
        if REP:  # rotated back above: stored in the natural basis
            tl.store(op_ptr + prow[:, None] * D + cols[None, :], o, mask=row_ok[:, None])
        else:  # permuted basis, rotated by _reduce_kernel
            tl.store(op_ptr + prow[:, None] * D + tl.arange(0, D)[None, :], o, mask=row_ok[:, None])


@triton.jit
def _merged_row(op_ptr, lse_ptr, R, cols, n_splits, total_rows, D: tl.constexpr, SB: tl.constexpr):
    """Columns ``cols`` of output row ``R``: the log2-sum-exp weighted mean of its ``n_splits`` partials,
    ``SB`` splits at a time, merged online (running max, rescaled sums): a block's log2-sum-exps and
    partials are loaded together, so with splits <= SB (the usual case) the row costs one round trip to
    memory instead of two (max first, then the weighted partials)."""
    sb = tl.arange(0, SB)
    m = tl.max(tl.full([SB], float("-inf"), dtype=tl.float32), axis=0)
    l = tl.sum(tl.zeros([SB], dtype=tl.float32), axis=0)
    acc = tl.zeros([cols.shape[0]], dtype=tl.float32)
    for s0 in range(0, n_splits, SB):
        sp = s0 + sb
        ok = sp < n_splits
        lse = tl.load(lse_ptr + sp * total_rows + R, mask=ok, other=float("-inf"))
        o = tl.load(op_ptr + (sp * total_rows + R)[:, None] * D + cols[None, :], mask=ok[:, None], other=0.0)
        m_new = tl.maximum(m, tl.max(lse, axis=0))
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)  # no key so far: weights 0
        alpha = tl.exp2(m - m_safe)
        w = tl.exp2(lse - m_safe)
        l = l * alpha + tl.sum(w, axis=0)
        acc = acc * alpha + tl.sum(o * w[:, None], axis=0)
        m = m_new
    return acc / tl.where(l > 0.0, l, 1.0)


@triton.jit
def _out_row(out_ptr, R, n_rows, Hkv, G, sob, soh, sot):
    """Where output row ``R`` (over (b, hk, r), r = t * G + g) starts in out [B, Hq, Tq, D]."""
    bh = R // n_rows
    r = R % n_rows
    b = bh // Hkv
    hk = bh % Hkv
    t = r // G
    g = r % G
    return out_ptr + (b * sob + (hk * G + g) * soh + t * sot)


@triton.jit
def _reduce_kernel(op_ptr, lse_ptr, out_ptr, n_splits, total_rows, n_rows, Hkv, G, oscale, sob, soh, sot,
                   D: tl.constexpr, LOG_D: tl.constexpr, SB: tl.constexpr, PERM: tl.constexpr):
    """One output row per program: merge its ``n_splits`` partials (``_merged_row``), rotate back, store."""
    R = tl.program_id(0).to(tl.int64)  # row over (b, hk, r)
    cols = tl.arange(0, D)
    o = tl.reshape(_merged_row(op_ptr, lse_ptr, R, cols, n_splits, total_rows, D, SB), [1, D])
    o = fwht_tile(o, 1, D, LOG_D) * oscale
    tl.store(_out_row(out_ptr, R, n_rows, Hkv, G, sob, soh, sot) + colperm(cols, PERM)[None, :],
             o.to(out_ptr.dtype.element_ty))


@triton.jit
def _merge_kernel(op_ptr, lse_ptr, out_ptr, n_splits, total_rows, n_rows, Hkv, G, sob, soh, sot,
                  D: tl.constexpr, DC: tl.constexpr, SB: tl.constexpr):
    """Program (row, c): columns c * DC .. c * DC + DC - 1 of one output row from partials that the split
    kernel already rotated back (REP decode): merged (``_merged_row``) and stored. No rotation, so a row's
    columns merge in parallel programs."""
    R = tl.program_id(0).to(tl.int64)  # row over (b, hk, r)
    cols = tl.program_id(1) * DC + tl.arange(0, DC)
    o = _merged_row(op_ptr, lse_ptr, R, cols, n_splits, total_rows, D, SB)
    tl.store(_out_row(out_ptr, R, n_rows, Hkv, G, sob, soh, sot) + cols, o.to(out_ptr.dtype.element_ty))


@functools.lru_cache(maxsize=None)
def _num_sms(index: int) -> int:
    return torch.cuda.get_device_properties(index).multi_processor_count


# Configurations of the LUT decode tile (BLOCK_M = 16, keys on the wgmma M side), from sm_90 SASS
# compiled with Triton 3.6 (.notes/kv_compile.py variants; .notes/kv.md "Register-cut variants").
# DEFAULT_VARIANT picks one per head dim (the others stay opt-in). H100, 16 q / 4 KV heads, D = 256,
# 3 bits, graph timing (perf/graph_sweep.py kvcfg, 2026-11-27 session 3 run 1; us at 32k / 128k /
# batch 8 x 8k, SDPA bf16 59.8-60.7 / 197.6 / 102.5): single 64.2 (64 splits) / 212.9 / 148.2;
# lutpack 60.7 / 206.9 / 108.4; dsplit2 57.6 / 165.2 / 90.3; dsplit4 44.8 / 135.6 / 74.0;
# dsplit2-lutpack-s3 59.1 / 167.5 / 93.0; dsplit4-lutpack-s1 40.2 / 116.7 / 63.0;
# dsplit2-lutpack-n128w8 54.4 / 176.4 / 93.2. 2 bits at 32k: single 48.9, dsplit4-lutpack-s1 35.6.
# Fields: dsplit = D parts (the kernel's
# DSPLIT: each dot and each decoded tile 1/dsplit of D, so fewer values live at once), packed = the
# LUT asm writes fp16x2 registers (no 16-bit splits / register moves), block_n, num_warps,
# num_stages, maxnreg (ptxas register cap), per_sm = programs resident per SM at that register
# count (sizes the split count: one full wave); optional (DSPLIT 4 only): tail (mask-free main loop),
# hload (1: 1-bit plane as 16-bit halves, 2: + lut.PROGRAM_RAW), rep (one shared V accumulator for
# <= 4 query rows). Registers at 3 / 2 bits, D = 256, Triton 3.6.
VARIANTS = {
    # the default before session 3 (and still for D < 256): one D part, 2 cp.async stages; 238 / 175 regs
    "single": dict(dsplit=1, packed=False, block_n=64, num_warps=4, num_stages=2, maxnreg=None, per_sm=2),
    # 238 / 175 regs (as the default), 4.86 / 3.91 instructions per code (default 5.33 / 4.35)
    "lutpack": dict(dsplit=1, packed=True, block_n=64, num_warps=4, num_stages=2, maxnreg=None, per_sm=2),
    # 158 / 134 regs, 5.57 / 4.27
    "dsplit2": dict(dsplit=2, packed=False, block_n=64, num_warps=4, num_stages=2, maxnreg=None, per_sm=3),
    # 128 / 126 regs (capped at 128: D = 256 with split partials only, spill-free there), 5.55 / 4.34
    "dsplit4": dict(dsplit=4, packed=False, block_n=64, num_warps=4, num_stages=2, maxnreg=128, per_sm=4),
    # 157 / 137 regs, 4.71 / 3.97
    "dsplit2-lutpack-s3": dict(dsplit=2, packed=True, block_n=64, num_warps=4, num_stages=3, maxnreg=None,
                               per_sm=3),
    # 128 / 128 regs (capped), 5.14 / 3.77; code words loaded straight to registers (no cp.async stage)
    "dsplit4-lutpack-s1": dict(dsplit=4, packed=True, block_n=64, num_warps=4, num_stages=1, maxnreg=128,
                               per_sm=4),
    # 125 / 126 regs at 8 warps (2 programs = 16 warps per SM), 5.22 / 3.84
    "dsplit2-lutpack-n128w8": dict(dsplit=2, packed=True, block_n=128, num_warps=8, num_stages=2, maxnreg=None,
                                   per_sm=2),
    # Session 4 (offline only, not timed; .notes/kv.md "Session 4"). All: 4 D parts, packed LUT, no
    # cp.async stage, BLOCK_N 64, 4 warps, and a mask-free main loop (tail=True: only the last tile or
    # two of a split carry the length / causal / left-padding masks). Instructions per code of the main
    # loop at 3 / 2 bits (dsplit4-lutpack-s1: 5.14 / 3.77), Triton 3.6.
    # 128 / 128 regs, 4.38 / 3.06
    "dsplit4-tail": dict(dsplit=4, packed=True, block_n=64, num_warps=4, num_stages=1, maxnreg=128, per_sm=4,
                         tail=True),
    # + the 1-bit plane loaded as 16-bit halves in the 2-bit plane's layout (no shared-memory layout
    # conversion: 22 instead of 38 barriers per iteration at 3 bits); 128 / 128 regs, 4.19 / 3.06
    "dsplit4-tail-h16": dict(dsplit=4, packed=True, block_n=64, num_warps=4, num_stages=1, maxnreg=128, per_sm=4,
                             tail=True, hload=1),
    # + lut.PROGRAM_RAW (spread in the asm, shared selector shifts) + REP (decode, <= 4 query rows: the
    # 4 D parts of the V dot in the 4 column blocks of one 16-column accumulator: 8 instead of 32
    # accumulator registers); 128 / 128 regs, 3.77 / 3.14
    "dsplit4-rep": dict(dsplit=4, packed=True, block_n=64, num_warps=4, num_stages=1, maxnreg=128, per_sm=4,
                        tail=True, hload=2, rep=True),
    # the same with 2 cp.async stages (the code words of tile n + 1 prefetched into shared memory, now
    # that REP leaves the registers for it); 128 / 128 regs, no spill at all, 30 / 26 KB smem, 3.95 / 3.33
    "dsplit4-rep-s2": dict(dsplit=4, packed=True, block_n=64, num_warps=4, num_stages=2, maxnreg=128, per_sm=4,
                           tail=True, hload=2, rep=True),
    # the same capped at 96 registers: 5 programs per SM; 96 / 96 regs, no spill in the main loop,
    # 4.33 (ptxas copies 2 LUT words from uniform registers again: ~130 IMAD per iteration) / 3.25
    "dsplit4-rep-r96": dict(dsplit=4, packed=True, block_n=64, num_warps=4, num_stages=1, maxnreg=96, per_sm=5,
                            tail=True, hload=2, rep=True),
    # capped at 80: 6 programs per SM, but ~20 local-memory spill accesses per iteration; 4.40 / 3.59
    "dsplit4-rep-r80": dict(dsplit=4, packed=True, block_n=64, num_warps=4, num_stages=1, maxnreg=80, per_sm=6,
                            tail=True, hload=2, rep=True),
    # Session 5 (offline only, not timed; .notes/kv.md "Session 5"): instruction-level parallelism inside a
    # program instead of more programs. dsplit4-rep + dual (the kernel's DUAL; REP decode only, elsewhere
    # dsplit4-rep): 1 = two independent key-tile chains per trip (tiles n, n + 1, each its own max /
    # denominator / V accumulator, log-sum-exp merged after the main loop), the two _step4 one after the
    # other; 2 = the same, phase by phase (K dots of both tiles, both softmaxes, V part p of both);
    # 3 = one chain, software-pipelined (the K dots of tile n + 1 between the softmax and the V dots of n).
    # Main-loop SASS per 64-token tile at 3 / 2 bits (dsplit4-rep: 965 / 812, 22 barriers), all 128 regs:
    # dual 983 / 825 (1 / 10 spill accesses per trip), dualx 1054 / 900 (130 UR copies, 8 / 3 spill
    # accesses), pipe 980 / 832 (1 / 2). ptxas moves nothing across the 22 barriers per tile, so the
    # chains run one after the other between barriers (.notes/kv.md "Session 5").
    "dsplit4-rep-dual": dict(dsplit=4, packed=True, block_n=64, num_warps=4, num_stages=1, maxnreg=128, per_sm=4,
                             tail=True, hload=2, rep=True, dual=1),
    "dsplit4-rep-dualx": dict(dsplit=4, packed=True, block_n=64, num_warps=4, num_stages=1, maxnreg=128, per_sm=4,
                              tail=True, hload=2, rep=True, dual=2),
    "dsplit4-rep-pipe": dict(dsplit=4, packed=True, block_n=64, num_warps=4, num_stages=1, maxnreg=128, per_sm=4,
                             tail=True, hload=2, rep=True, dual=3),
    # dsplit4-rep with 128-token tiles at 4 warps: the two 64-row halves of each decoded part share one
    # STS -> barrier -> LDSM -> wgmma step and one softmax (26 barriers per 128 tokens instead of 44);
    # 1042 / 880 per 64 tokens, ~250 UR copies, 120 / 128 B stack, 6 spill accesses per trip
    "dsplit4-rep-n128": dict(dsplit=4, packed=True, block_n=128, num_warps=4, num_stages=1, maxnreg=128, per_sm=4,
                             tail=True, hload=2, rep=True),
    # dsplit4-rep with the softmax denominator accumulated per key (lacc: summed once after the main loop
    # instead of a cross-warp reduction per tile: 14 fewer SHFL, 3 fewer barriers); 911 / 767, no stack at 3
    # bits, no spill; the exp2s of the softmax now share a barrier-free stretch with V part 0's decode
    "dsplit4-rep-lacc": dict(dsplit=4, packed=True, block_n=64, num_warps=4, num_stages=1, maxnreg=128, per_sm=4,
                             tail=True, hload=2, rep=True, lacc=True),
    # + pf: part 0's code words of tile n + 1 loaded into registers after the softmax of tile n (so the
    # V dots cover their latency); 943 / 844 (2 bits: 68 UR copies), no spill in the loop
    "dsplit4-rep-lacc-pf": dict(dsplit=4, packed=True, block_n=64, num_warps=4, num_stages=1, maxnreg=128,
                                per_sm=4, tail=True, hload=2, rep=True, lacc=True, pf=True),
    # Session 4 (offline only, not timed): the two best of session 3's last sweep combined (H100, graph
    # timing, 2026-11-27 session 4 run 1: n128 best at 3 bits, lacc-pf at 2 bits): 128-token tiles with the
    # per-key denominator (lacc), and with the prefetch of part 0's words (pf)
    "dsplit4-rep-n128-lacc": dict(dsplit=4, packed=True, block_n=128, num_warps=4, num_stages=1, maxnreg=128,
                                  per_sm=4, tail=True, hload=2, rep=True, lacc=True),
    "dsplit4-rep-n128-lacc-pf": dict(dsplit=4, packed=True, block_n=128, num_warps=4, num_stages=1, maxnreg=128,
                                     per_sm=4, tail=True, hload=2, rep=True, lacc=True, pf=True),
}
# Measured at D = 256 only (above); D = 64 / 128 keep "single" until timed there.
# H100, 3 bits, graph timing (graph_sweep kvcfg, 2026-11-27 session 3 run 6; us at 32k / 128k / 8 x 8k):
# dsplit4-rep 37.91 / 108.06 / 58.23 vs dsplit4-lutpack-s1 39.41 / 115.08 / 63.00 (2 bits: 34.93 /
# 98.44 / 52.96 vs 35.16 / 99.70 / 54.03).
# Session 4 (H100, 3 / 2 bits, graph timing, graph_sweep kvscale, run S4-3, with the rotate-in-split +
# column-chunk merge): dsplit4-rep-lacc-pf 10.64 / 15.54 / 32.31 / 97.60 us at 2k / 8k / 32k / 128k and
# 54.22 at 8 x 8k vs dsplit4-rep 10.85 / 15.40 / 33.21 / 103.79 / 57.90 (2 bits at 32k / 128k / 8 x 8k:
# 29.90 / 88.62 / 49.38 vs 31.20 / 94.37 / 51.86). dsplit4-rep-n128 is as fast at 3 bits from 32k up
# (31.98 / 96.59 / 53.97) but slower at 2k / 8k (12.79 / 16.60) and at 2 bits (35.58 / 110.67 / 60.59).
DEFAULT_VARIANT = {256: "dsplit4-rep-lacc-pf"}


def split_plan(programs: int, lmax: int, block_n: int, per_sm: int, sms: int,
               num_splits: int | None = None) -> tuple[int, int]:
    """(splits, chunk) for ``programs`` programs per split (m tiles x sequences x KV heads): by default one
    full wave of ``per_sm`` resident programs per SM (no ragged tail wave), never more splits than
    ``block_n``-key tiles; each split covers ``chunk`` keys, a whole number of tiles. Shared by the Triton
    launcher (``plan``) and the Gluon one."""
    if num_splits is None:
        num_splits = max(1, (per_sm * sms) // programs)
    num_splits = max(1, min(num_splits, max(1, cdiv(lmax, block_n))))
    chunk = cdiv(cdiv(lmax, num_splits), block_n) * block_n
    return max(1, cdiv(lmax, chunk)), chunk


def launch_merge(op, lse, out, splits: int, n_rows: int, Hkv: int, G: int) -> None:
    """``_merge_kernel`` over partials ``op [splits, B * Hkv, n_rows, D]`` that are already rotated back:
    one-warp programs of 32 columns, up to 128 splits per block (128 fp32 partials per thread, no spills), so
    the reductions over splits stay inside the warp (2 barriers in the SASS instead of 18 with 4 warps). Shared by
    the Triton launcher (REP decode tiles) and the Gluon one. Measured in whole Gluon calls (S9-23): 2k 7.97 ->
    7.36 µs, 32k 19.62 -> 19.46, 128k 51.19 -> 50.79, 8 x 8k 31.10 -> 30.51 against 4 warps of 32 / 64 columns."""
    total, D = op.shape[1] * n_rows, op.shape[-1]
    sb = max(2, min(128, next_pow2(splits)))
    _merge_kernel[(total, D // 32)](op, lse, out, splits, total, n_rows, Hkv, G, out.stride(0), out.stride(1),
                                    out.stride(2), D=D, DC=32, SB=sb, num_warps=1)


def plan(B: int, Hkv: int, n_rows: int, lmax: int, d: int, sms: int, num_splits: int | None = None,
         lut: bool = True, variant: str | None = None) -> dict:
    """Tiles, MMA orientation and split count, from shapes only (no host sync on kv_lens).

    Chosen from the sm_90 SASS of each variant (compiled without a GPU: .notes/kv_compile.py),
    counting loop instructions per cached code, since the decode is issue-bound rather than
    bandwidth-bound:
    * decode-sized tiles (BLOCK_M = 16, i.e. G * Tq <= 16) with the LUT decode: keys on the MMA's
      M side (TRANS), BLOCK_N = 64 so the MMA is a Hopper wgmma 64x16 reading both operands from
      shared memory, 4 warps: 5.4 instructions per code at 3 bits, D = 256 (2 bits: 3.9), vs
      6.7 for q-major 32-token tiles (mma.sync + operand shuffles) and 12.8 for the gather decode;
    * otherwise (gather decode: 4 and 8 bits; or a prefill chunk with BLOCK_M = 32/64): q-major,
      BLOCK_N = 32 at D = 256 (64 below), 4 warps (8 when BLOCK_M = 64): no spills.
    Splits: as many programs as fit at once (the variant's ``per_sm``: 4 per SM = 528 on the H100
    at D = 256, 2 = 264 with "single") without a ragged second wave: 32k decode, 4 KV heads -> 128
    splits of 256 tokens; batch 8 x 8k -> 16 splits of 512; never a split shorter than one BLOCK_N.
    The plan also gives ``dsplit``, ``packed``, ``num_stages``, ``maxnreg``. ``variant`` (a key of
    ``VARIANTS``; None: ``DEFAULT_VARIANT`` for this D, else "single"): that configuration for the
    LUT decode tile (D parts at most D / 32), its split count from its programs per SM; ignored where
    the plan does not use that tile (gather decode, BLOCK_M > 16). At D = 256 the default is
    "dsplit4-rep-lacc-pf" (4 programs per SM: 32k decode -> 128 splits of 256 tokens).
    """
    if variant is not None and variant not in VARIANTS:
        raise ValueError(f"variant must be None or one of {tuple(VARIANTS)}, got {variant!r}")
    block_m = min(64, max(16, next_pow2(n_rows)))
    trans = lut and block_m == 16
    block_n = 64 if (trans or d < 256) else 32
    num_warps = 8 if block_m * d > 16 * 256 else 4  # BLOCK_M = 32 at D = 256 spills at 4 warps
    extra = dict(dsplit=1, packed=False, num_stages=2, maxnreg=None, hload=0, tail=False, rep=False, dual=0,
                 lacc=False, pf=False)
    per_sm = 2
    if variant is None:
        variant = DEFAULT_VARIANT.get(d, "single")
    if trans:  # elsewhere (gather decode, prefill tiles) the default plan
        v = VARIANTS[variant]
        block_n, num_warps, per_sm = v["block_n"], v["num_warps"], v["per_sm"]
        extra = dict(dsplit=max(1, min(v["dsplit"], d // 32)), packed=v["packed"], num_stages=v["num_stages"],
                     maxnreg=v["maxnreg"], hload=v.get("hload", 0), tail=v.get("tail", False),
                     rep=False)
        # REP: the 4 query rows x 4 D parts share the 16 MMA columns (one tile of <= 4 rows, the TAIL loop)
        extra["rep"] = bool(v.get("rep", False) and extra["tail"] and extra["dsplit"] == 4 and n_rows <= 4)
        extra["dual"] = int(v.get("dual", 0)) if extra["rep"] else 0  # DUAL paths exist with REP only
        extra["lacc"] = bool(v.get("lacc", False) and extra["rep"])  # so does LACC
        extra["pf"] = bool(v.get("pf", False) and extra["lacc"])  # PF: with LACC only
    m_tiles = cdiv(n_rows, block_m)
    num_splits, chunk = split_plan(m_tiles * B * Hkv, lmax, block_n, per_sm, sms, num_splits)
    if extra["maxnreg"] and (d != 256 or num_splits == 1):
        extra["maxnreg"] = None  # the cap spills at D = 128 and in the one-split (DIRECT) epilogue
    return dict(block_n=block_n, block_m=block_m, m_tiles=m_tiles, splits=num_splits, chunk=chunk,
                num_warps=num_warps, trans=trans, **extra)


_LUT_BROKEN: set = set()  # (device, D, bits) whose LUT kernel failed to compile (then: gather + warning)
_GLUON_BROKEN: set = set()  # (device, bits) whose Gluon decode kernel failed (then: the Triton kernels + warning)


def kv_quant_attn_triton_splits(q, k_packed, k_norms, v_packed, v_norms, kv_lens, kv_start, bits, scale, causal,
                                codebook, num_splits=None, *, decode=None, block_n=None, num_warps=None,
                                num_stages=None, trans=None, variant=None, maxnreg=None):
    """The launcher with its choices exposed (tests and the tuning benchmarks set them).

    ``decode``: "lut" (2/3 bits: the prmt byte lookup of ``lut.py``; under the interpreter its
    layout emulated with gathers) or "gather" (shift/mask + gathered level, any bits); default
    "lut" for 2 and 3 bits, falling back to "gather" with a warning if the PTX does not compile.
    ``variant``: None (``DEFAULT_VARIANT``) or a key of ``VARIANTS``: a configuration of the LUT
    decode tile (see ``plan``); ``block_n``, ``num_warps``, ``num_stages`` (default 2),
    ``trans`` and ``maxnreg`` (ptxas register cap, GPU only), when given, override the plan's.
    On the GPU, with none of those choices given, decode at D = 256 and 2 / 3 bits (at most 4 query
    rows per KV head) runs the Gluon kernel of ``gluon.py`` instead; ``variant`` selects a Triton
    configuration explicitly (the benchmarks compare the two that way).
    """
    B, Hq, Tq, D = q.shape
    Hkv, lmax = k_packed.shape[1], k_packed.shape[2]
    G = Hq // Hkv
    n_rows = G * Tq
    if q.stride(-1) != 1:
        q = q.contiguous()
    out = torch.empty(B, Hq, Tq, D, dtype=q.dtype, device=q.device)
    if out.numel() == 0:
        return out
    on_gpu = q.is_cuda and not interpreting()
    sms = _num_sms(q.device.index or 0) if on_gpu else 4
    auto = decode is None
    if (on_gpu and auto and variant is None and block_n is None and num_warps is None and num_stages is None
            and trans is None and maxnreg is None and _gluon.supported(D, bits, n_rows)
            and (q.device, bits) not in _GLUON_BROKEN and _gluon.available()):
        # decode at D = 256, 2/3 bits: the Gluon kernel (codes decoded straight into the wgmma operand
        # registers; gluon.py), measured faster than every configuration here (perf/RESULTS.md, session 5)
        try:
            return _gluon.kv_attn_decode_gluon(q, k_packed, k_norms, v_packed, v_norms, kv_lens, kv_start, bits,
                                               scale, causal, codebook, num_splits, out=out)
        except Exception as e:  # noqa: BLE001  a Triton without Gluon, or a compile failure: the kernels below
            _GLUON_BROKEN.add((q.device, bits))
            warnings.warn(f"kv_quant_attn: the Gluon decode kernel failed ({type(e).__name__}: {e}); using the "
                          "Triton kernel", RuntimeWarning, stacklevel=3)
    _, _, cb16, lut = tables(codebook)
    if auto:
        decode = "lut" if bits in (2, 3) and (q.device, D, bits) not in _LUT_BROKEN else "gather"
    if decode == "lut" and bits not in (2, 3):
        raise ValueError(f"decode='lut' needs bits 2 or 3, got {bits}")
    log_d = D.bit_length() - 1
    oscale = 1.0 / math.sqrt(D)

    def run(lut_decode: bool) -> None:
        cfg = plan(B, Hkv, n_rows, lmax, D, sms, num_splits, lut=lut_decode, variant=variant)
        if trans is not None:
            cfg["trans"] = trans
        if block_n is not None:
            cfg["block_n"] = block_n
            cfg["chunk"] = cdiv(cfg["chunk"], block_n) * block_n
            cfg["splits"] = cdiv(lmax, cfg["chunk"])
        if num_warps is not None:
            cfg["num_warps"] = num_warps
        if num_stages is not None:
            cfg["num_stages"] = num_stages
        if maxnreg is not None:
            cfg["maxnreg"] = maxnreg
        opts = {"maxnreg": cfg["maxnreg"]} if cfg["maxnreg"] and on_gpu else {}
        mode = (2 if on_gpu else 1) if lut_decode else 0
        # One split: rotate and store the output in this kernel, unless the tile is big (BLOCK_M >= 32:
        # the in-register butterfly on [BLOCK_M, D] fp32 then spills) -> the reduce kernel does it.
        direct = cfg["splits"] == 1 and cfg["block_m"] == 16
        if direct:
            op = lse = out  # unused
        else:
            op = torch.empty(cfg["splits"], B * Hkv, n_rows, D, dtype=torch.float32, device=q.device)
            lse = torch.empty(cfg["splits"], B * Hkv, n_rows, dtype=torch.float32, device=q.device)
        _split_kernel[(cfg["m_tiles"], B * Hkv, cfg["splits"])](
            q, k_packed, k_norms, v_packed, v_norms, cb16, lut, kv_lens, kv_lens if kv_start is None else kv_start,
            op, lse, out, kv_lens.stride(0), 0 if kv_start is None else kv_start.stride(0),
            Hkv, G, Tq, n_rows, lmax, cfg["chunk"], scale * LOG2E * oscale, oscale,
            q.stride(0), q.stride(1), q.stride(2),
            k_packed.stride(0), k_packed.stride(1), k_packed.stride(2),
            k_norms.stride(0), k_norms.stride(1), k_norms.stride(2),
            v_packed.stride(0), v_packed.stride(1), v_packed.stride(2),
            v_norms.stride(0), v_norms.stride(1), v_norms.stride(2),
            out.stride(0), out.stride(1), out.stride(2),
            D=D, LOG_D=log_d, BITS=bits, BLOCK_M=cfg["block_m"], BLOCK_N=cfg["block_n"], CAUSAL=causal,
            DIRECT=direct, DECODE=mode, TRANS=cfg["trans"], HAS_START=kv_start is not None,
            DSPLIT=cfg["dsplit"], PACKED=cfg["packed"] and lut_decode,
            HLOAD=int(cfg["hload"]) if lut_decode else 0, TAIL=cfg["tail"] and lut_decode, REP=cfg["rep"],
            DUAL=cfg["dual"] if cfg["tail"] and lut_decode else 0, LACC=cfg["lacc"] and cfg["tail"] and lut_decode,
            PF=cfg["pf"] and cfg["tail"] and lut_decode,
            num_warps=cfg["num_warps"], num_stages=cfg["num_stages"], **opts)
        if not direct and cfg["rep"]:  # partials rotated back in the split kernel: merge column chunks
            launch_merge(op, lse, out, cfg["splits"], n_rows, Hkv, G)
        elif not direct:
            total = B * Hkv * n_rows
            sb = max(2, min(64, next_pow2(cfg["splits"]), 16384 // D))  # <= 64 fp32 partials per thread
            _reduce_kernel[(total,)](
                op, lse, out, cfg["splits"], total, n_rows, Hkv, G, oscale, out.stride(0), out.stride(1),
                out.stride(2), D=D, LOG_D=log_d, SB=sb, PERM=mode != 0, num_warps=8 if sb * D >= 8192 else 4)

    if decode == "lut" and on_gpu and auto:
        try:
            run(True)
        except Exception as e:  # noqa: BLE001  a PTX/ptxas rejection of the inline asm
            _LUT_BROKEN.add((q.device, D, bits))
            warnings.warn(f"kv_quant_attn: the LUT decode kernel failed to compile ({type(e).__name__}: {e}); "
                          "using the gather decode", RuntimeWarning, stacklevel=3)
            run(False)
    else:
        run(decode == "lut")
    return out


# torch.library registration: opaque to torch.compile, capturable in CUDA graphs (no host syncs)
@torch.library.custom_op("hlwq::kv_quant_attn", mutates_args=())
def _kv_quant_attn_op(q: torch.Tensor, k_packed: torch.Tensor, k_norms: torch.Tensor, v_packed: torch.Tensor,
                      v_norms: torch.Tensor, kv_lens: torch.Tensor, kv_start: torch.Tensor | None,
                      codebook: torch.Tensor, bits: int, scale: float, causal: bool) -> torch.Tensor:
    return kv_quant_attn_triton_splits(q, k_packed, k_norms, v_packed, v_norms, kv_lens, kv_start, bits, scale,
                                       causal, codebook)


@_kv_quant_attn_op.register_fake
def _(q, k_packed, k_norms, v_packed, v_norms, kv_lens, kv_start, codebook, bits, scale, causal):
    return q.new_empty(q.shape)


def kv_quant_attn_triton(q, k_packed, k_norms, v_packed, v_norms, kv_lens, kv_start, bits, scale, causal,
                         codebook):
    """Launcher (same arguments as ``kv_quant_attn_reference``), through ``hlwq::kv_quant_attn``."""
    return torch.ops.hlwq.kv_quant_attn(q, k_packed, k_norms, v_packed, v_norms, kv_lens, kv_start, codebook, bits,
                                        float(scale), causal)

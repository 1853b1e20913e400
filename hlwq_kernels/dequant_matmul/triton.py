"""Triton ``dequant_matmul``: y = fwht(pad(x)) @ W_rot.T straight from the packed HLWQ codes.

The weight is never materialised as a whole: programs unpack ``[BN, BK]`` tiles of codes from the
bit-sliced planes (``pack_bits/layout.py``) in registers; the per-block norm is applied once per
(row, K-step) to a partial sum, never per code.

Tile = [BN rows, Q quads, F codes] (a quad: 8 consecutive codes; 4 for bits=8). ``tl.join``
builds the F axis, which keeps a quad's codes in one thread. Per quad, two int32 "code words"
hold its 8 codes in bytes (parity p: codes 2j + p in byte j), built with whole-word ops from the
planes (``_words_to_codes``); a code then costs one byte shift, a codebook lookup
(``_lut``: one ``shfl.sync.idx`` for bits <= 5, an L1 ``ld.global.nc`` above) and one FMA.
Offline SASS (triton 3.6, sm_90): 6.7 / 4.7 / 8.0 instructions per code at 5 / 4 / 3 bits.

Kernels, chosen by M in ``_pick`` (explicit, documented there):
* ``_gemv2_kernel`` (decode, M <= GEMV_MAX_M, the default there): K across the CTA, each
  thread's x values in registers for the whole program, rows walked in BN-row tiles (removes the
  per-code LDS of x that the gemv loop has; .notes/dequant_matmul.md "gemv2"). M is the fastest
  grid axis so programs sharing a weight tile run together (one DRAM read). K slices > 1 (fp32
  partials + ``_splitk_reduce_kernel``) only when K > 4096 codes.
* ``_gemv_kernel`` (``method="gemv"``, the decode kernel before gemv2): grid (M, SPLIT_K, N/BN);
  BN rows, K in steps of BK = 32*G <= block, ``unroll`` steps per loop trip; split-K when N/BN
  gives fewer programs than SMs.
* ``_dot_kernel`` (16 < M <= SLAB_MIN_M): the dequantized ``[BN, BK]`` tile (x's dtype) is the A
  operand of ``tl.dot(w_tile, x_tile^T)`` ("swap AB": weight rows fill the 64-row wgmma M
  dimension, BM = 16/32 tokens the N dimension); fp32 accumulation, norm per K-step.
* ``_dot2_kernel`` (GEMV_MAX_M < M <= 16, the default there; ``method="dot2"``): the dot kernel with the
  decode landing directly in the wgmma A fragment (k / row relabelling: no smem round trip for
  the weight tile), word/x/norm prefetch in registers (``pf``) and L2 (``l2pf``), clamped loads.
* ``gluon.gemv8`` (``method="gemv8"``, opt-in; M <= 4, 3-5 bits, the int8-grid codebook of ``quant/grid.py``):
  the decoded levels as int8 on the s8 tensor cores. Measured slower than gemv2 (``dequant_matmul/gluon.py``).
* ``_slab_matmul`` (prefill, M > SLAB_MIN_M): ``_dequant_rows_kernel`` writes W_rot for ~16 MiB
  of rows at a time (bounded scratch) and cuBLAS multiplies it into those output columns: the
  fused kernel re-dequantizes every weight tile M/BM times (0.05-0.16x bf16 at M=2048 measured),
  the slabs dequantize once (0.72-0.85x).

Floors (H100: 3.02 TB/s device copy, ~790 TFLOP/s dense bf16; ANCHORS.md):
* M=1 and M=16 read codes + norms: N*Kp*(bits/8 + 2/block) bytes. 5 bits: 24576x4096 64.5 MB ->
  21.4 us; 4096x12288 32.3 MB -> 10.7 us; 248320x4096 652 MB -> 216 us; 2048x4096 5.4 MB ->
  1.8 us. 4 bits gate_up 52.0 MB -> 17.2 us; 3 bits 39.4 MB -> 13.0 us.
* Instruction budget (the real limit at M=1): gate_up = 100.7 M codes; the 29 us target on
  132 SMs x ~1.75 GHz allows ~8.5 lane-instructions per code (4 schedulers x 32 lanes).
* M=2048: 2*M*N*K flops; gate_up 412 GFLOP -> 0.52 ms at 790 TFLOP/s.
Measured numbers, what limits them, and tuning notes: .notes/dequant_matmul.md.
"""

from __future__ import annotations

import functools
import warnings
from typing import NamedTuple

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

from .._common import cdiv, interpreting, next_pow2
from .._pdl import gdc_launch, gdc_wait, pdl_supported
from ..fwht import MAX_TRITON_BLOCK, fwht
from ..fwht.triton import fwht_triton_method
from ..quant import HLWQWeight

# Above GEMV_MAX_M the tensor-core kernel's single dequant per tile wins: gemv2 decodes the weight once
# per token row. H100, 5 bits, graph timing (graph_sweep dqsmallm, 2026-11-27 session 3 run 4; us,
# gemv2 / dot): M=2 4096^2 12.2 / 16.1, 24576x4096 55.5 / 60.4, 4096x12288 31.8 / 49.2; M=4 20.1 /
# 16.1, 102.5 / 60.3, 55.4 / 49.2.
GEMV_MAX_M = 2
SLAB_MIN_M = 256  # above this: bf16 slabs of W_rot + cuBLAS (see _pick)
SLAB_BYTES = 16 << 20  # slab scratch: ~16 MiB (L2 is 50 MB), never the whole weight
SLAB_MIN_ROWS = 2048  # ... but at least this many rows (48 MiB at K = 12288; see _slab_matmul)


# ----------------------------------------------------------------------------------------------
# unpacking
# ----------------------------------------------------------------------------------------------
@triton.jit
def _plane_words(p_ptr, p_addr, row_off, row_mask, t, groups, W: tl.constexpr, OFF: tl.constexpr, G: tl.constexpr,
                 A: tl.constexpr, MASKED: tl.constexpr, MODE: tl.constexpr, BN: tl.constexpr, LEAD: tl.constexpr,
                 PIECES: tl.constexpr = False):
    """[BN, Q] words of plane (width W, code-bit offset OFF) for K-tile ``t``: element q ("quad",
    the q-th run of 32/A codes of the tile) gets the word that holds its codes."""
    q = tl.arange(0, G * A)
    # plane W of a row starts at word groups*OFF; a tile of G groups spans G*W words of it.
    # (Written so that Triton's axis analysis sees the contiguity: it picks the load layout
    # from it, and (q * W) // A hid it, which gave lanes across rows = 8-byte pieces of 16 rows.)
    if W == A:
        qw = q
    else:
        qw = q // (A // W)
    widx = groups * OFF + t * (G * W) + qw
    ptrs = p_ptr + row_off[:, None] + widx[None, :]
    if W != A and PIECES:
        # one piece per quad (the 1-bit plane's byte, the 2-bit plane's 16 bits), declared contiguous in runs
        # of 4 quads: each thread loads the pieces of the quads whose 4-bit plane words it loads, so a
        # pipelined (cp.async) copy of every plane lands in one register layout (dot2 PIPE); the decode then
        # needs no per-quad shift (_words_to_codes PIECES)
        ptr = p_ptr.to(tl.pointer_type(tl.uint8)) if W == 1 else p_ptr.to(tl.pointer_type(tl.uint16))
        pidx = tl.max_contiguous((groups * OFF + t * (G * W)) * (4 // W) + q, 4)
        pptrs = ptr + (row_off * (4 // W))[:, None] + pidx[None, :]
        if MASKED:
            return tl.load(pptrs, mask=row_mask[:, None] & ((t * G + q // A) < groups)[None, :], other=0).to(tl.int32)
        return tl.load(pptrs).to(tl.int32)
    if MASKED:
        qmask = (t * G + q // A) < groups
        return tl.load(ptrs, mask=row_mask[:, None] & qmask[None, :], other=0)
    elif W != A and LEAD:
        # the widest plane anchors the layout: load its G*W words contiguously (lanes along the
        # row), then repeat each word for the A//W quads that share it (join = in-thread copy)
        wv = tl.load(p_ptr + row_off[:, None] + (groups * OFF + t * (G * W) + tl.arange(0, G * W))[None, :])
        wv = tl.reshape(tl.join(wv, wv), [BN, G * W * 2])
        if W * 4 == A:
            wv = tl.reshape(tl.join(wv, wv), [BN, G * A])
        return wv
    elif W != A and MODE != 0:
        # The narrow planes (several quads share a word) load through PTX: a tl.load of these
        # non-contiguous pointers made Triton's coalescing put the lanes across rows for the
        # whole tile (8-byte pieces of 16 rows per warp load); this way the 4-/8-bit plane's
        # coalesced load (lanes along the row) sets the layout, and lanes of one word share it.
        if row_off.dtype == tl.int32:  # (gemv2 I32) 32-bit word offsets: one wide multiply-add per address
            return tl.inline_asm_elementwise(
                "{ .reg .u64 ad; mad.wide.s32 ad, $1, 4, $2; ld.global.nc.b32 $0, [ad]; }", "=r,r,l",
                [row_off[:, None] + widx[None, :], p_addr], dtype=tl.int32, is_pure=True, pack=1)
        addr = p_addr + 4 * (row_off[:, None] + widx[None, :])
        return tl.inline_asm_elementwise("ld.global.nc.b32 $0, [$1];", "=r,l", [addr], dtype=tl.int32,
                                         is_pure=True, pack=1)
    else:  # every row and tile in range: no predicates (they cost ~10% of the GEMV loop)
        return tl.load(ptrs)


@triton.jit
def _merge(cw, contrib, FIELD: tl.constexpr):
    """Bits FIELD (a per-byte mask) from contrib, the others from cw: one LOP3."""
    return (cw & ~FIELD) | (contrib & FIELD)


@triton.jit
def _spread1(u, OFF: tl.constexpr):
    """Bits 0, 2, 4, 6 of u -> bit OFF of bytes 0..3: (u & 0x55) * (1 + 2^6 + 2^12 + 2^18) puts bit
    2j on bit 8j (term t = j); the other terms land on 2j + 6t, never a multiple of 8, and carries
    only reach odd bits. Only bit OFF of each byte is meaningful (the caller merges it)."""
    return (u & 0x55) * (0x41041 << OFF)


@triton.jit
def _spread2(u, OFF: tl.constexpr):
    """2-bit fields at bits 4j of u (j = 0..3) -> bits OFF, OFF+1 of byte j. Even fields: one
    multiply by (1 + 2^8) << OFF puts field 0 on byte 0 and field 2 on byte 2; odd fields:
    (2^4 + 2^12) << OFF puts field 1 on byte 1 and field 3 on byte 3; the stray terms land on
    the other bytes and their sums never carry into a byte's field."""
    even = (u & 0x0303) * (0x0101 << OFF)
    odd = (u & 0x3030) * (0x1010 << OFF)
    return _merge(odd, even, 0x00FF00FF)


@triton.jit
def _join4(c0, c1, c2, c3):
    """[..., 2, 2] with element (h, l) = c_{2h + l}: flattens to [..., 4] in order c0..c3."""
    return tl.join(tl.join(c0, c2), tl.join(c1, c3))


@triton.jit
def _tile_codes(p_ptr, p_addr, row_off, row_mask, t, groups, BITS: tl.constexpr, BN: tl.constexpr,
                G: tl.constexpr, A: tl.constexpr, F: tl.constexpr, MASKED: tl.constexpr, MODE: tl.constexpr):
    """Raw codes [BN, Q, F] (int32) of K-tile ``t`` (G groups of 32 codes) of the rows at ``row_off``:
    the code sits in the low ``BITS`` bits, the bits above are garbage (``_lut`` masks or ignores them).

    Q = G*A quads of F codes; element (q, f) is code q*F + f of the tile. Word-level work first: a
    "code word" holds 4 codes in its 4 bytes (low bits of each byte), built from every plane with
    whole-word ops and merged by per-byte field masks (4-bit plane: free or one shift; 1-bit plane:
    one multiply spreads 4 bits to 4 bytes; 2-bit plane: two multiplies), so a code then costs one
    shift. For A=4, F=8 quad q has two code words cw_p (p = 0, 1) holding its codes 2j + p
    (j = 0..3). bits=8 (one 8-bit plane) uses A=8, F=4: the plane word is the code word. ``tl.join``
    builds the F axis, which keeps all F codes of a quad in one thread (word-level values shared,
    the x-weighted sum over F without shuffles).
    """
    wa, wb, wc = _tile_words(p_ptr, p_addr, row_off, row_mask, t, groups, BITS, BN, G, A, MASKED, MODE)
    return _words_to_codes(wa, wb, wc, BITS, BN, G, A, F)


@triton.jit
def _tile_words(p_ptr, p_addr, row_off, row_mask, t, groups, BITS: tl.constexpr, BN: tl.constexpr,
                G: tl.constexpr, A: tl.constexpr, MASKED: tl.constexpr, MODE: tl.constexpr,
                PIECES: tl.constexpr = False):
    """The plane words of K-tile ``t``: (4-bit or 8-bit plane, 2-bit plane, 1-bit plane), [BN, Q]
    each (zeros for planes that ``BITS`` lacks; the compiler drops them)."""
    wa = tl.zeros([BN, G * A], dtype=tl.int32)
    wb = tl.zeros([BN, G * A], dtype=tl.int32)
    wc = tl.zeros([BN, G * A], dtype=tl.int32)
    if A == 8:
        wa = _plane_words(p_ptr, p_addr, row_off, row_mask, t, groups, 8, 0, G, A, MASKED, MODE, BN, True)
    else:
        if BITS & 4:
            wa = _plane_words(p_ptr, p_addr, row_off, row_mask, t, groups, 4, 0, G, A, MASKED, MODE, BN, True)
        if BITS & 2:
            wb = _plane_words(p_ptr, p_addr, row_off, row_mask, t, groups, 2, BITS & 4, G, A, MASKED, MODE, BN,
                               BITS < 4, PIECES)
        if BITS & 1:
            wc = _plane_words(p_ptr, p_addr, row_off, row_mask, t, groups, 1, BITS & 6, G, A, MASKED, MODE, BN,
                               BITS == 1, PIECES)
    return wa, wb, wc


@triton.jit
def _words_to_codes(wa, wb, wc, BITS: tl.constexpr, BN: tl.constexpr, G: tl.constexpr, A: tl.constexpr,
                    F: tl.constexpr, PIECES: tl.constexpr = False):
    """Plane words (``_tile_words``) -> raw codes [BN, Q, F] (see ``_tile_codes``)."""
    q = tl.arange(0, G * A)[None, :]
    if A == 8:
        code = tl.reshape(_join4(wa, wa >> 8, wa >> 16, wa >> 24), [BN, G * A, 4])
    else:
        cw0 = tl.zeros([BN, G * A], dtype=tl.int32)
        cw1 = tl.zeros([BN, G * A], dtype=tl.int32)
        if BITS & 4:  # word q: the 8 codes of quad q as nibbles; nibble 2j+p -> low nibble of byte j
            cw0 = wa
            cw1 = wa >> 4
        if BITS & 2:  # word q//2: code 2j+p of quad q at bit 16(q%2) + 4j + 2p
            if PIECES:  # (the quad's own 16 bits)
                s2 = 0
            else:
                s2 = (q % 2) * 16
            cw0 = _merge(cw0, _spread2(wb >> s2, BITS & 4), 0x03030303 << (BITS & 4))
            cw1 = _merge(cw1, _spread2(wb >> (s2 + 2), BITS & 4), 0x03030303 << (BITS & 4))
        if BITS & 1:  # word q//4: code 2j+p of quad q at bit 8(q%4) + 2j + p
            if PIECES:  # (the quad's own byte)
                s1 = 0
            else:
                s1 = (q % 4) * 8
            cw0 = _merge(cw0, _spread1(wc >> s1, BITS & 6), 0x01010101 << (BITS & 6))
            cw1 = _merge(cw1, _spread1(wc >> (s1 + 1), BITS & 6), 0x01010101 << (BITS & 6))
        # (arithmetic shifts of negative words only smear sign bits into the garbage bits)
        x0 = _join4(cw0, cw0 >> 8, cw0 >> 16, cw0 >> 24)
        x1 = _join4(cw1, cw1 >> 8, cw1 >> 16, cw1 >> 24)
        code = tl.reshape(tl.join(x0, x1), [BN, G * A, 8])  # (j_hi, j_lo, p) -> 2j + p
    return code


@triton.jit
def _select(cw, contrib, FIELD: tl.constexpr, MODE: tl.constexpr):
    """``_merge`` (bits FIELD from contrib, the others from cw) as one forced LOP3 on the GPU: ptxas
    split the plain form into an AND of the multiply's product plus an AND-OR (2 LOP3 per merge)."""
    if MODE == 0:
        return _merge(cw, contrib, FIELD)
    else:  # lop3 table 0xE4 = (a & c) | (b & ~c) with a = contrib, b = cw, c = FIELD
        return tl.inline_asm_elementwise("lop3.b32 $0, $1, $2, $3, 0xE4;", "=r,r,r,r",
                                         [contrib, cw, tl.zeros_like(cw) + FIELD], dtype=tl.int32, is_pure=True,
                                         pack=1)


@triton.jit
def _words_to_codes_l3(wa, wb, wc, BITS: tl.constexpr, BN: tl.constexpr, G: tl.constexpr, MODE: tl.constexpr,
                       PIECES: tl.constexpr = False):
    """``Config.lean`` (gemv2, A = 4): ``_words_to_codes`` with fewer word ops per quad: every merge
    is one ``_select``, and the odd-parity 1-bit spread reuses the even one's shifted word:
    ``(u & 0xAA) * (0x41041 << (OFF - 1))`` puts bit 2j+1 on bit 8j + OFF (the same product terms as
    ``_spread1`` of ``u >> 1``, so the same no-carry argument), saving its shift."""
    q = tl.arange(0, G * 4)[None, :]
    cw0 = tl.zeros([BN, G * 4], dtype=tl.int32)
    cw1 = tl.zeros([BN, G * 4], dtype=tl.int32)
    if BITS & 4:
        cw0 = wa
        cw1 = wa >> 4
    if BITS & 2:
        if PIECES:  # (the quad's own 16 bits)
            s2 = 0
        else:
            s2 = (q % 2) * 16
        O2: tl.constexpr = BITS & 4
        u2 = wb >> s2
        u3 = wb >> (s2 + 2)
        even0 = (u2 & 0x0303) * (0x0101 << O2)
        odd0 = (u2 & 0x3030) * (0x1010 << O2)
        even1 = (u3 & 0x0303) * (0x0101 << O2)
        odd1 = (u3 & 0x3030) * (0x1010 << O2)
        cw0 = _select(cw0, _select(odd0, even0, 0x00FF00FF, MODE), 0x03030303 << O2, MODE)
        cw1 = _select(cw1, _select(odd1, even1, 0x00FF00FF, MODE), 0x03030303 << O2, MODE)
    if BITS & 1:
        if PIECES:  # (the quad's own byte)
            s1 = 0
        else:
            s1 = (q % 4) * 8
        O1: tl.constexpr = BITS & 6
        u = wc >> s1
        if O1 == 0:
            odd = _spread1(u >> 1, 0)
        else:
            odd = (u & 0xAA) * (0x41041 << (O1 - 1))
        cw0 = _select(cw0, _spread1(u, O1), 0x01010101 << O1, MODE)
        cw1 = _select(cw1, odd, 0x01010101 << O1, MODE)
    x0 = _join4(cw0, cw0 >> 8, cw0 >> 16, cw0 >> 24)
    x1 = _join4(cw1, cw1 >> 8, cw1 >> 16, cw1 >> 24)
    return tl.reshape(tl.join(x0, x1), [BN, G * 4, 8])


@triton.jit
def _join8(t0, t1, t2, t3, t4, t5, t6, t7):
    """[..., 8] with element f = t_f (the F axis of ``_words_to_codes``: (j_hi, j_lo, p) -> 2j + p,
    built with ``tl.join`` so all 8 stay in one thread)."""
    x0 = _join4(t0, t2, t4, t6)
    x1 = _join4(t1, t3, t5, t7)
    return tl.join(x0, x1)


@triton.jit
def _dilate16(u):
    """Bit i of the low 16 bits of u -> bit 2i (the odd bits zero): 4 shift-or-mask steps."""
    u = u & 0xFFFF
    u = (u | (u << 8)) & 0x00FF00FF
    u = (u | (u << 4)) & 0x0F0F0F0F
    u = (u | (u << 2)) & 0x33333333
    return (u | (u << 1)) & 0x55555555


@triton.jit
def _nib_perm(q, f, BITS: tl.constexpr):
    """Code index (within the K slice) of element (quad q, f) of ``_words_to_codes_nib``: natural
    (8q + f) for bits 1-2; for 3 bits quad q holds the codes 16(q//2) + 2f + q%2 (one parity of a
    2-bit-plane word), so x is loaded in that order."""
    if BITS == 3:
        return (q // 2) * 16 + f * 2 + (q % 2)
    else:
        return q * 8 + f


@triton.jit
def _nib_plane(p_ptr, row_off, t, groups, W: tl.constexpr, OFF: tl.constexpr, G: tl.constexpr, BN: tl.constexpr,
               MASKED: tl.constexpr, PAIR: tl.constexpr):
    """[BN, 4G] pieces of the W-bit plane (W = 1, 2) for ``Config.nib``, one per quad (as int32):
    PAIR: the piece of a quad pair (16 codes: int32 for W=2, uint16 for W=1), repeated with
    ``tl.join``; else the quad's own piece (uint16 for W=2, uint8 for W=1; unused: LLVM narrowed
    the per-code shifts of a uint8 to i8 and sign-extended each code, one SGXT per code). The load is
    declared contiguous in runs of 4 quads only, so each thread loads exactly its 4 quads (32
    codes) of every row: the thread <-> quad map of the 4-bit plane's 16-byte loads. (A fully
    contiguous int32 load of a narrow plane gets 16-byte vectors = 8 or 16 quads per thread per
    row, i.e. 2-4x the x registers: 127-168 registers at 1-3 bits in the default decode.)"""
    EB: tl.constexpr = W * 16 if PAIR else W * 8  # bits per piece
    PER: tl.constexpr = 2 if PAIR else 4  # pieces per group of 32 codes
    if EB == 32:
        ptr = p_ptr
    elif EB == 16:  # unsigned: zero-extension, no sign fix-up (_dilate16 needs no mask then)
        ptr = p_ptr.to(tl.pointer_type(tl.uint16))
    else:
        ptr = p_ptr.to(tl.pointer_type(tl.uint8))
    j = tl.arange(0, G * PER)
    eidx = tl.max_contiguous((groups * OFF + t * (G * W)) * (32 // EB) + j, PER)
    ptrs = ptr + (row_off * (32 // EB))[:, None] + eidx[None, :]
    if MASKED:
        wv = tl.load(ptrs, mask=((t * G + j // PER) < groups)[None, :], other=0)
    else:
        wv = tl.load(ptrs)
    wv = wv.to(tl.int32)
    if PAIR:
        wv = tl.reshape(tl.join(wv, wv), [BN, G * 4])
    return wv


@triton.jit
def _nib_words(p_ptr, row_off, t, groups, BITS: tl.constexpr, BN: tl.constexpr, G: tl.constexpr,
               MASKED: tl.constexpr):
    """(2-bit plane, 1-bit plane) words [BN, 4G] for ``_words_to_codes_nib`` (zeros where absent)."""
    wb = tl.zeros([BN, G * 4], dtype=tl.int32)
    wc = tl.zeros([BN, G * 4], dtype=tl.int32)
    if BITS & 2:  # the pair's word (a uint16 per quad costs one PRMT each to unpack)
        wb = _nib_plane(p_ptr, row_off, t, groups, 2, 0, G, BN, MASKED, True)
    if BITS & 1:
        wc = _nib_plane(p_ptr, row_off, t, groups, 1, BITS & 2, G, BN, MASKED, True)
    return wb, wc


@triton.jit
def _words_to_codes_nib(wb, wc, BITS: tl.constexpr, BN: tl.constexpr, G: tl.constexpr):
    """``Config.nib`` (gemv2, bits 1-3): raw codes [BN, Q, 8] from the pieces of ``_nib_words``, one
    shift per code (``_lut`` ignores the bits above the code; period-2^BITS lane table):
    * 1 bit: code 8q + f = bit f of byte q%2 of the pair's 16 bits -> ``wc >> (8(q%2) + f)``.
    * 2 bits: code 8q + f = field f of half q%2 of the pair's word -> ``wb >> (16(q%2) + 2f)``.
    * 3 bits: a "nibble word" per quad holds 8 codes of one parity e = q%2 of the 16-code pair
      word: ``((wb >> 2e) & 0x33333333) | ((D << (2 - 2e)) & ~0x33333333)`` where D = the pair's 16
      high bits dilated to even bit positions (``_dilate16``); code 16(q//2) + 2f + e is nibble f
      (``_nib_perm``). Per 16 codes: ~12 word ops, then a shift per code (byte-word path: ~3.5/code).
    """
    if BITS == 1:  # wc: the pair's 16 bits of the 1-bit plane; the quad's byte at 8(q%2)
        base = wc >> ((tl.arange(0, G * 4)[None, :] % 2) * 8)
        code = _join8(base, base >> 1, base >> 2, base >> 3, base >> 4, base >> 5, base >> 6, base >> 7)
    elif BITS == 2:  # wb: the pair's 2-bit word; the quad's 16 bits at 16(q%2)
        base = wb >> ((tl.arange(0, G * 4)[None, :] % 2) * 16)
        code = _join8(base, base >> 2, base >> 4, base >> 6, base >> 8, base >> 10, base >> 12, base >> 14)
    else:  # wb: the pair's 2-bit word, wc: the pair's 16 high bits
        e2 = (tl.arange(0, G * 4)[None, :] % 2) * 2
        d = _dilate16(wc)
        sel = ((wb >> e2) & 0x33333333) | ((d << (2 - e2)) & ~0x33333333)
        code = _join8(sel, sel >> 4, sel >> 8, sel >> 12, sel >> 16, sel >> 20, sel >> 24, sel >> 28)
    return tl.reshape(code, [BN, G * 4, 8])


@triton.jit
def _lut_lane(cb_addr, like, BITS: tl.constexpr):
    """Each lane's codebook entry codebook[lane % 2**BITS], as a tensor shaped like ``like``
    (every element of a thread is the same register after CSE): the source of ``_lut``'s shuffles."""
    return tl.inline_asm_elementwise(
        "{ .reg .u32 l; .reg .u64 ad; mov.u32 l, %laneid; and.b32 l, l, $2; mad.wide.u32 ad, l, 4, $1; "
        "ld.global.nc.f32 $0, [ad]; }",
        "=f,l,r", [cb_addr, tl.zeros_like(like) + ((1 << BITS) - 1)], dtype=tl.float32, is_pure=True, pack=1)


@triton.jit
def _lut(cb_ptr, cb_addr, lane_cb, raw, BITS: tl.constexpr, MODE: tl.constexpr):
    """codebook[raw & (2**BITS - 1)] (fp32).

    MODE 2 (GPU, bits <= 5): one warp shuffle per code from ``lane_cb`` (lane i holds entry
    i % 2**BITS; ``shfl`` reads only the low 5 bits of the lane index, so the garbage bits above
    the code need no mask): 1 instruction, no address arithmetic, no memory pipe.
    MODE 1 (GPU, bits 6..8): ``mad.wide.u32`` + ``ld.global.nc`` (L1-resident table); a plain
    pointer add costs a 64-bit LEA pair, and the pipeliner turned plain gathers into 4-byte
    cp.async copies. MODE 0 (interpreter): a plain gather.
    """
    if MODE == 2:
        return tl.inline_asm_elementwise("shfl.sync.idx.b32 $0, $1, $2, 0x1f, 0xffffffff;", "=f,f,r",
                                         [lane_cb, raw], dtype=tl.float32, is_pure=True, pack=1)
    elif MODE == 1:
        return tl.inline_asm_elementwise(
            "{ .reg .u64 ad; mad.wide.u32 ad, $1, 4, $2; ld.global.nc.f32 $0, [ad]; }",
            "=f,r,l", [raw & ((1 << BITS) - 1), cb_addr], dtype=tl.float32, is_pure=True, pack=1)
    else:
        return tl.load(cb_ptr + (raw & ((1 << BITS) - 1)))


# ----------------------------------------------------------------------------------------------
# kernels
# ----------------------------------------------------------------------------------------------
@triton.jit
def _gemv_kernel(x_ptr, p_ptr, p_addr, n_ptr, cb_ptr, cb_addr, out_ptr, N, groups, nblk, stride_xm, stride_om,
                 stride_os, tiles_per_split, BITS: tl.constexpr, BLOCK: tl.constexpr, BN: tl.constexpr, G: tl.constexpr,
                 A: tl.constexpr, F: tl.constexpr, SPLIT_K: tl.constexpr, MODE: tl.constexpr,
                 MASKED: tl.constexpr, PREFETCH: tl.constexpr, UNROLL: tl.constexpr):
    pid_m = tl.program_id(0)
    pid_s = tl.program_id(1)
    pid_n = tl.program_id(2)
    rows = pid_n.to(tl.int64) * BN + tl.arange(0, BN)
    row_mask = rows < N
    row_off = rows * (groups * BITS)  # int32 words per packed row = groups * bits
    nrm_off = rows * nblk
    x_row = x_ptr + pid_m.to(tl.int64) * stride_xm
    q = tl.arange(0, G * A)
    kq = q[:, None] * F + tl.arange(0, F)[None, :]  # [Q, F]: code index within the tile
    acc = tl.zeros([BN, G * A], dtype=tl.float32)
    lane_cb = 0.0
    if MODE == 2:
        lane_cb = _lut_lane(cb_addr, tl.zeros([BN, G * A, F], dtype=tl.int32), BITS)
    t0 = pid_s * tiles_per_split
    t_last = t0 + tiles_per_split - 1
    if PREFETCH:  # software pipelining in registers: tile t+1's words load while tile t computes
        wa, wb, wc = _tile_words(p_ptr, p_addr, row_off, row_mask, t0, groups, BITS, BN, G, A, MASKED, MODE)
    for tu in range(t0, t0 + tiles_per_split, UNROLL):
        # UNROLL > 1: straight-line code over UNROLL tiles, so the scheduler can issue every
        # tile's loads before the first use (more bytes in flight per warp; launcher: UNROLL
        # divides tiles_per_split)
        for u in tl.static_range(UNROLL):
            t = tu + u
            if PREFETCH:
                na, nb, nc = _tile_words(p_ptr, p_addr, row_off, row_mask, tl.minimum(t + 1, t_last), groups, BITS,
                                         BN, G, A, MASKED, MODE)
                code = _words_to_codes(wa, wb, wc, BITS, BN, G, A, F)
                wa, wb, wc = na, nb, nc
            else:
                code = _tile_codes(p_ptr, p_addr, row_off, row_mask, t, groups, BITS, BN, G, A, F, MASKED,
                                   MODE)  # [BN, Q, F]
            vals = _lut(cb_ptr, cb_addr, lane_cb, code, BITS, MODE)  # fp32: the codebook lookup
            # BK = 32*G divides BLOCK: one norm per row for the whole tile (a [BN] load: a [BN, Q]
            # load of it, constant along Q, made Triton put the lanes across rows for everything)
            nptrs = n_ptr + nrm_off + (t * (G * 32)) // BLOCK
            if MASKED:
                qmask = (t * G + q // A) < groups
                xv = tl.load(x_row + t * (G * 32) + kq, mask=qmask[:, None], other=0.0)
                t_ok = (tl.zeros([BN], dtype=tl.int32) + t * G) < groups  # a tensor: the interpreter's masks must be
                nv = tl.load(nptrs, mask=row_mask & t_ok, other=0.0)
            else:
                xv = tl.load(x_row + t * (G * 32) + kq)
                nv = tl.load(nptrs)
            part = tl.sum(vals * xv.to(tl.float32)[None, :, :], axis=2)  # [BN, Q]: F is in-thread, no shuffles
            acc += part * nv.to(tl.float32)[:, None]  # the block norm: once per F codes, not per code
    y = tl.sum(acc, axis=1)
    if SPLIT_K == 1:
        tl.store(out_ptr + pid_m.to(tl.int64) * stride_om + rows, y.to(out_ptr.dtype.element_ty), mask=row_mask)
    else:
        tl.store(out_ptr + pid_s.to(tl.int64) * stride_os + pid_m.to(tl.int64) * stride_om + rows, y,
                 mask=row_mask)


@triton.jit
def _norm_tile(n_ptr, n_addr, nidx, MODE: tl.constexpr):
    """fp32 norms at element offsets ``nidx`` (any shape). On the GPU an ``ld.global.nc`` per
    element: an inline-asm load takes its operand's layout (the reduced row-tile layout) where a
    tl.load of these broadcast pointers would anchor a layout of its own and cost a shared-memory
    conversion per row tile."""
    if MODE == 0:
        return tl.load(n_ptr + nidx).to(tl.float32)
    else:
        h = tl.inline_asm_elementwise("{ .reg .u64 ad; mad.wide.s32 ad, $1, 2, $2; ld.global.nc.b16 $0, [ad]; }",
                                      "=h,r,l", [nidx.to(tl.int32), n_addr], dtype=tl.int16, is_pure=True,
                                      pack=1)
        return h.to(tl.float16, bitcast=True).to(tl.float32)


@triton.jit
def _g2_words(p_ptr, p_addr, row_off, row_mask, t, groups, BITS: tl.constexpr, BN: tl.constexpr, G: tl.constexpr,
              A: tl.constexpr, MASKED: tl.constexpr, MODE: tl.constexpr, NIBP: tl.constexpr):
    """gemv2's plane words: ``_tile_words`` or, for ``Config.nib`` at bits 1-3, ``_nib_words``."""
    if NIBP:
        wb, wc = _nib_words(p_ptr, row_off, t, groups, BITS, BN, G, MASKED)
        return wb, wb, wc
    else:
        return _tile_words(p_ptr, p_addr, row_off, row_mask, t, groups, BITS, BN, G, A, MASKED, MODE)


@triton.jit
def _g2_rows(rows_out, N, I32: tl.constexpr):
    """Row indices clamped to N - 1 (loads need no row predicate): int32 with ``I32`` (the launcher has
    checked that every word and norm offset fits), else int64."""
    if I32:
        return tl.minimum(rows_out, N - 1)
    else:
        return tl.minimum(rows_out, N - 1).to(tl.int64)


@triton.jit
def _g2_x(x_row, kq, q, t, groups, G: tl.constexpr, A: tl.constexpr, MASKED: tl.constexpr):
    """gemv2's x values of the thread's quads, fp32 [Q, F]."""
    if MASKED:
        return tl.load(x_row + kq, mask=((t * G + q // A) < groups)[:, None], other=0.0).to(tl.float32)
    return tl.load(x_row + kq).to(tl.float32)


@triton.jit
def _gemv2_kernel(x_ptr, p_ptr, p_addr, n_ptr, n_addr, cb_ptr, cb_addr, out_ptr, N, groups, nblk, stride_xm,
                  stride_om, stride_os, row_tiles, BITS: tl.constexpr, BLOCK: tl.constexpr, BN: tl.constexpr,
                  G: tl.constexpr, A: tl.constexpr, F: tl.constexpr, SPLIT_K: tl.constexpr, MODE: tl.constexpr,
                  MASKED: tl.constexpr, PREFETCH: tl.constexpr, DEPTH: tl.constexpr = 1, NIB: tl.constexpr = False,
                  UNROLL: tl.constexpr = 1, LEAN: tl.constexpr = False, EARLY: tl.constexpr = False,
                  FUSED: tl.constexpr = False, y_ptr=None, cnt_ptr=None, I32: tl.constexpr = False,
                  PROBE: tl.constexpr = False, probe_ptr=None, PDL: tl.constexpr = False):
    """GEMV with K across the CTA ("gemv2", the decode default): program (m, s, n) owns K slice s (G groups =
    32*G codes, whole norm blocks) and ``row_tiles`` tiles of BN rows. Each thread keeps the x values
    of its fixed quads in registers (fp32, loaded once) and walks the row tiles: per tile the plane
    words of the whole slice (one [BN, G*A] load per plane), unpack + LUT + FMA into [BN, Q], a sum
    over the quads of each norm block, the norm, and one cross-thread sum per row. Rows past N are
    clamped for the loads (no predicates) and masked at the store; MASKED only for a ragged K.
    Opt-in (``Config.depth`` / ``unroll`` / ``nib``; offline-compiled only, not timed): DEPTH = 2 keeps
    two row tiles of plane words in flight (PREFETCH); UNROLL = DEPTH + 1 walks the prefetch slots
    round-robin (no register copies); NIB (bits 1-3) decodes with ``_words_to_codes_nib``; LEAN: the
    other bits <= 7 with ``_words_to_codes_l3``, and one FFMA chain per norm block (``_g2_tile``);
    EARLY: the prefetch loads issue before the whole tile (``_g2_tile_at``). I32 (``Config.i32``): row, word
    and norm offsets in 32-bit arithmetic (one IMAD per row and one wide IMAD per narrow-plane address).
    FUSED (``Config.fused``, SPLIT_K > 1): out_ptr holds the fp32 partials [SPLIT_K, M, N]; after its
    row tiles each program arrives on its (m, row-range) counter in ``cnt_ptr`` and the last of the
    SPLIT_K slices to arrive sums the partials into ``y_ptr`` (``_g2_splitk_tail``): no reduce launch.
    PROBE (diagnostics, ``.notes/dq_probe.py``): ``_g2_probe`` timestamps at the program's start, the start of its
    second and last loop trips, and its end. PDL (launched with programmatic dependent launch): the first row tile's
    words (weights only) load before ``griddepcontrol.wait``, x after it (``_pdl.gdc_wait``)."""
    NIBP: tl.constexpr = NIB and BITS <= 3
    if PROBE:
        _g2_probe(probe_ptr, 0)
    pid_m = tl.program_id(0)
    t = tl.program_id(1)  # the K slice = "tile" t of G groups for _tile_words
    pid_n = tl.program_id(2)
    NB: tl.constexpr = (G * 32) // BLOCK  # norm blocks in the slice
    QB: tl.constexpr = BLOCK // F  # quads per norm block
    q = tl.arange(0, G * A)
    if NIBP:
        kq = _nib_perm(q[:, None], tl.arange(0, F)[None, :], BITS)  # [Q, F], the nib decode's order
    else:
        kq = q[:, None] * F + tl.arange(0, F)[None, :]  # [Q, F]
    x_row = x_ptr + pid_m.to(tl.int64) * stride_xm + t * (G * 32)
    if not PDL:
        xv = _g2_x(x_row, kq, q, t, groups, G, A, MASKED)
    lane_cb = 0.0
    if MODE == 2:
        lane_cb = _lut_lane(cb_addr, tl.zeros([BN, G * A, F], dtype=tl.int32), BITS)
    row_true = tl.full([BN], 1, tl.int1)
    blk = t * NB + tl.arange(0, NB)  # norm block indices of the slice
    r0 = pid_n * (row_tiles * BN)
    rr = tl.arange(0, BN)
    if PREFETCH:
        rows = _g2_rows(r0 + rr, N, I32)
        wa, wb, wc = _g2_words(p_ptr, p_addr, rows * (groups * BITS), row_true, t, groups, BITS, BN, G, A, MASKED,
                               MODE, NIBP)
        if DEPTH == 2:  # the tile after it too: two row tiles of words in flight
            rows = _g2_rows(r0 + BN + rr, N, I32)
            va, vb, vc = _g2_words(p_ptr, p_addr, rows * (groups * BITS), row_true, t, groups, BITS, BN, G, A,
                                   MASKED, MODE, NIBP)
    if PDL:
        gdc_wait()
        gdc_launch()
        xv = _g2_x(x_row, kq, q, t, groups, G, A, MASKED)
    if UNROLL == 1:
        for i in range(row_tiles):
            if PROBE:
                if i == 1:
                    _g2_probe(probe_ptr, 1)
                if i == row_tiles - 1:
                    _g2_probe(probe_ptr, 2)
            rows_out = r0 + i * BN + rr
            rows = _g2_rows(rows_out, N, I32)  # clamped: loads need no row predicate
            if PREFETCH:
                nrows = _g2_rows(rows_out + DEPTH * BN, N, I32)
                na, nb, nc = _g2_words(p_ptr, p_addr, nrows * (groups * BITS), row_true, t, groups, BITS, BN, G,
                                       A, MASKED, MODE, NIBP)
                _g2_tile_at(wa, wb, wc, xv, lane_cb, cb_ptr, cb_addr, n_ptr, n_addr, out_ptr, rows, rows_out, N, nblk,
                            blk, t, pid_m, stride_om, stride_os, BITS, BN, G, A, F, NB, QB, SPLIT_K, MODE, MASKED, NIBP,
                            LEAN, EARLY)
                if DEPTH == 2:
                    wa, wb, wc = va, vb, vc
                    va, vb, vc = na, nb, nc
                else:
                    wa, wb, wc = na, nb, nc
            else:
                ua, ub, uc = _g2_words(p_ptr, p_addr, rows * (groups * BITS), row_true, t, groups, BITS, BN, G, A,
                                       MASKED, MODE, NIBP)
                _g2_tile(ua, ub, uc, xv, lane_cb, cb_ptr, cb_addr, n_ptr, n_addr, out_ptr, rows, rows_out, N, nblk,
                         blk, t, pid_m, stride_om, stride_os, BITS, BN, G, A, F, NB, QB, SPLIT_K, MODE, MASKED, NIBP,
                         LEAN)
    else:
        # UNROLL = DEPTH + 1 row tiles per trip (launcher: PREFETCH, row_tiles a multiple of UNROLL):
        # DEPTH + 1 register slots of words used round-robin, each reloaded right after its tile, so
        # the loop carries no register copies (UNROLL 1 moves every prefetched word once per tile)
        for i in range(0, row_tiles, UNROLL):
            if PROBE:
                if i == UNROLL:
                    _g2_probe(probe_ptr, 1)
                if i == row_tiles - UNROLL:
                    _g2_probe(probe_ptr, 2)
            ro0 = r0 + i * BN + rr
            ro1 = ro0 + BN
            ro2 = ro0 + 2 * BN
            rw0 = _g2_rows(ro0, N, I32)
            rw1 = _g2_rows(ro1, N, I32)
            rw2 = _g2_rows(ro2, N, I32)
            rw3 = _g2_rows(ro0 + 3 * BN, N, I32)
            rw4 = _g2_rows(ro0 + 4 * BN, N, I32)
            if DEPTH == 1:  # slots w (even tiles), u (odd tiles)
                ua, ub, uc = _g2_rr_step(wa, wb, wc, rw1, rw0, ro0, p_ptr, p_addr, xv, lane_cb, cb_ptr, cb_addr, n_ptr,
                                         n_addr, out_ptr, row_true, groups, N, nblk, blk, t, pid_m, stride_om,
                                         stride_os, BITS, BN, G, A, F, NB, QB, SPLIT_K, MODE, MASKED, NIBP, LEAN, EARLY)
                wa, wb, wc = _g2_rr_step(ua, ub, uc, rw2, rw1, ro1, p_ptr, p_addr, xv, lane_cb, cb_ptr, cb_addr, n_ptr,
                                         n_addr, out_ptr, row_true, groups, N, nblk, blk, t, pid_m, stride_om,
                                         stride_os, BITS, BN, G, A, F, NB, QB, SPLIT_K, MODE, MASKED, NIBP, LEAN, EARLY)
            else:  # slots w, v, u: tiles i, i+1, i+2 (mod 3)
                ua, ub, uc = _g2_rr_step(wa, wb, wc, rw2, rw0, ro0, p_ptr, p_addr, xv, lane_cb, cb_ptr, cb_addr, n_ptr,
                                         n_addr, out_ptr, row_true, groups, N, nblk, blk, t, pid_m, stride_om,
                                         stride_os, BITS, BN, G, A, F, NB, QB, SPLIT_K, MODE, MASKED, NIBP, LEAN, EARLY)
                wa, wb, wc = _g2_rr_step(va, vb, vc, rw3, rw1, ro1, p_ptr, p_addr, xv, lane_cb, cb_ptr, cb_addr, n_ptr,
                                         n_addr, out_ptr, row_true, groups, N, nblk, blk, t, pid_m, stride_om,
                                         stride_os, BITS, BN, G, A, F, NB, QB, SPLIT_K, MODE, MASKED, NIBP, LEAN, EARLY)
                va, vb, vc = _g2_rr_step(ua, ub, uc, rw4, rw2, ro2, p_ptr, p_addr, xv, lane_cb, cb_ptr, cb_addr, n_ptr,
                                         n_addr, out_ptr, row_true, groups, N, nblk, blk, t, pid_m, stride_om,
                                         stride_os, BITS, BN, G, A, F, NB, QB, SPLIT_K, MODE, MASKED, NIBP, LEAN, EARLY)
    if FUSED:
        _g2_splitk_tail(out_ptr, y_ptr, cnt_ptr + pid_m * tl.num_programs(2) + pid_n, r0, row_tiles * BN, N,
                        pid_m, stride_om, stride_os, SPLIT_K)
    if PROBE:
        _g2_probe(probe_ptr, 3)


@triton.jit
def _g2_probe(probe_ptr, k: tl.constexpr):
    """(diagnostics) %globaltimer at point k into probe_ptr[program, k] (rows of 8 int64; the program's %smid in
    column 4 at k = 0); program = the linear index over grid (M, K slices, row ranges)."""
    pid = (tl.program_id(2) * tl.num_programs(1) + tl.program_id(1)) * tl.num_programs(0) + tl.program_id(0)
    t = tl.inline_asm_elementwise("mov.u64 $0, %globaltimer;", "=l,r", [pid], dtype=tl.int64, is_pure=False, pack=1)
    tl.store(probe_ptr + pid * 8 + k, t)
    if k == 0:
        sm = tl.inline_asm_elementwise("mov.u32 $0, %smid;", "=r,r", [pid], dtype=tl.int32, is_pure=False, pack=1)
        tl.store(probe_ptr + pid * 8 + 4, sm.to(tl.int64))


@triton.jit
def _g2_splitk_tail(part_ptr, y_ptr, cnt, r0, nrows, N, pid_m, stride_om, stride_os, SPLIT_K: tl.constexpr,
                    RB: tl.constexpr = 128):
    """In-kernel split-K reduction (``Config.fused``): the SPLIT_K programs of one (m, row range) share
    the int32 counter ``cnt`` (0 between calls). Each has stored its fp32 partials of rows
    [r0, r0 + nrows) for its slice; the CTA barrier puts every thread's stores before thread 0's
    acq_rel atomic (release: the partials are visible at GPU scope before the count; the pattern of
    a grid barrier). The program that sees SPLIT_K - 1 arrived last: all partials are visible to
    it (acquire), it sums them in slice order 0..SPLIT_K-1 (the same order, hence the same bits, as
    ``_splitk_reduce_kernel``), writes y in its dtype and sets the counter back to 0 for the next
    call. Partial loads are L2 loads (.cg): lines of an earlier call must not come from L1."""
    tl.debug_barrier()
    old = tl.atomic_add(cnt, 1, sem="acq_rel", scope="gpu")
    if old == SPLIT_K - 1:
        for r in range(0, nrows, RB):
            rr = r + tl.arange(0, RB)
            rows = r0 + rr
            mask = (rr < nrows) & (rows < N)
            off = pid_m.to(tl.int64) * stride_om + rows
            acc = tl.zeros([RB], dtype=tl.float32)
            for s in tl.static_range(SPLIT_K):
                acc += tl.load(part_ptr + s * stride_os + off, mask=mask, other=0.0, cache_modifier=".cg")
            tl.store(y_ptr + off, acc.to(y_ptr.dtype.element_ty), mask=mask)
        tl.atomic_xchg(cnt, 0, sem="relaxed", scope="gpu")


@triton.jit
def _g2_rr_step(wa, wb, wc, next_rows, rows, rows_out, p_ptr, p_addr, xv, lane_cb, cb_ptr, cb_addr, n_ptr, n_addr,
                out_ptr, row_true, groups, N, nblk, blk, t, pid_m, stride_om, stride_os, BITS: tl.constexpr,
                BN: tl.constexpr, G: tl.constexpr, A: tl.constexpr, F: tl.constexpr, NB: tl.constexpr,
                QB: tl.constexpr, SPLIT_K: tl.constexpr, MODE: tl.constexpr, MASKED: tl.constexpr,
                NIBP: tl.constexpr, LEAN: tl.constexpr, EARLY: tl.constexpr):
    """One round-robin step of gemv2's prefetch slots: load the words of row tile ``next_rows`` into
    a free slot (returned), then compute the tile whose words (wa, wb, wc) were loaded earlier."""
    na, nb, nc = _g2_words(p_ptr, p_addr, next_rows * (groups * BITS), row_true, t, groups, BITS, BN, G, A,
                           MASKED, MODE, NIBP)
    _g2_tile_at(wa, wb, wc, xv, lane_cb, cb_ptr, cb_addr, n_ptr, n_addr, out_ptr, rows, rows_out, N, nblk, blk, t,
                pid_m, stride_om, stride_os, BITS, BN, G, A, F, NB, QB, SPLIT_K, MODE, MASKED, NIBP, LEAN, EARLY)
    return na, nb, nc

@triton.jit
def _g2_tile_at(wa, wb, wc, xv, lane_cb, cb_ptr, cb_addr, n_ptr, n_addr, out_ptr, rows, rows_out, N, nblk, blk, t,
                pid_m, stride_om, stride_os, BITS: tl.constexpr, BN: tl.constexpr, G: tl.constexpr, A: tl.constexpr,
                F: tl.constexpr, NB: tl.constexpr, QB: tl.constexpr, SPLIT_K: tl.constexpr, MODE: tl.constexpr,
                MASKED: tl.constexpr, NIBP: tl.constexpr, LEAN: tl.constexpr, EARLY: tl.constexpr):
    """``_g2_tile`` after a prefetch. EARLY (``Config.early``): the tile sits in its own basic block
    (``if N > 0``, always true), so ptxas cannot sink the prefetch loads issued before it into the
    tile's code: offline SASS without it has the loads of the next tile issued 2/3 into the current
    tile (default) or right before their use (pp); with it they precede the whole tile (and both
    slots are live across it: 5 bits lean pp 96 -> 128 registers)."""
    if EARLY:
        if N > 0:
            _g2_tile(wa, wb, wc, xv, lane_cb, cb_ptr, cb_addr, n_ptr, n_addr, out_ptr, rows, rows_out, N, nblk, blk,
                     t, pid_m, stride_om, stride_os, BITS, BN, G, A, F, NB, QB, SPLIT_K, MODE, MASKED, NIBP, LEAN)
    else:
        _g2_tile(wa, wb, wc, xv, lane_cb, cb_ptr, cb_addr, n_ptr, n_addr, out_ptr, rows, rows_out, N, nblk, blk,
                 t, pid_m, stride_om, stride_os, BITS, BN, G, A, F, NB, QB, SPLIT_K, MODE, MASKED, NIBP, LEAN)


@triton.jit
def _g2_tile(wa, wb, wc, xv, lane_cb, cb_ptr, cb_addr, n_ptr, n_addr, out_ptr, rows, rows_out, N, nblk, blk, t,
             pid_m,
             stride_om, stride_os, BITS: tl.constexpr, BN: tl.constexpr, G: tl.constexpr, A: tl.constexpr,
             F: tl.constexpr, NB: tl.constexpr, QB: tl.constexpr, SPLIT_K: tl.constexpr, MODE: tl.constexpr,
             MASKED: tl.constexpr, NIBP: tl.constexpr, LEAN: tl.constexpr):
    """One row tile of ``_gemv2_kernel`` from its plane words: decode, LUT, FMA with the x
    registers, per-block sums, norms, one cross-thread sum per row, store (``rows``: ``rows_out``
    clamped to N - 1, for the norm loads; the store is masked by ``rows_out < N``)."""
    if NIBP:
        code = _words_to_codes_nib(wb, wc, BITS, BN, G)
    elif LEAN and A == 4:
        code = _words_to_codes_l3(wa, wb, wc, BITS, BN, G, MODE)
    else:
        code = _words_to_codes(wa, wb, wc, BITS, BN, G, A, F)
    vals = _lut(cb_ptr, cb_addr, lane_cb, code, BITS, MODE)  # [BN, Q, F]
    if LEAN:  # one in-thread FFMA chain over the thread's codes of a norm block (no per-quad FMUL/FADD)
        pb = tl.sum(tl.reshape(vals * xv[None, :, :], [BN, NB, QB * F]), axis=2)
    else:
        part = tl.sum(vals * xv[None, :, :], axis=2)  # [BN, Q]: F in-thread
        pb = tl.sum(tl.reshape(part, [BN, NB, QB]), axis=2)  # [BN, NB]: per norm block
    nidx = rows[:, None] * nblk + blk[None, :]
    if MASKED:
        nv = tl.load(n_ptr + nidx, mask=(blk < nblk)[None, :], other=0.0).to(tl.float32)
    else:
        nv = _norm_tile(n_ptr, n_addr, nidx, MODE)
    y = tl.sum(pb * nv, axis=1)  # [BN]
    omask = rows_out < N
    if SPLIT_K == 1:
        tl.store(out_ptr + pid_m.to(tl.int64) * stride_om + rows_out, y.to(out_ptr.dtype.element_ty), mask=omask)
    else:
        tl.store(out_ptr + t.to(tl.int64) * stride_os + pid_m.to(tl.int64) * stride_om + rows_out, y, mask=omask)


@triton.jit
def _dot_kernel(x_ptr, p_ptr, p_addr, n_ptr, cb_ptr, cb_addr, out_ptr, M, N, groups, nblk, stride_xm, stride_om,
                stride_os, tiles_per_split, BITS: tl.constexpr, BLOCK: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr,
                G: tl.constexpr, A: tl.constexpr, F: tl.constexpr, SPLIT_K: tl.constexpr,
                UPCAST: tl.constexpr, IEEE: tl.constexpr, MODE: tl.constexpr, MASKED: tl.constexpr,
                MASK_M: tl.constexpr, UNROLL: tl.constexpr):
    BK: tl.constexpr = G * 32
    num_m = tl.cdiv(M, BM)
    pid = tl.program_id(0)
    pid_s = tl.program_id(1)
    # token tiles fastest: the num_m programs that share one weight tile run side by side, so
    # the codes come from DRAM once and the rest of the reads hit L2
    pid_m = pid % num_m
    pid_n = pid // num_m
    rows = pid_n.to(tl.int64) * BN + tl.arange(0, BN)
    row_mask = rows < N
    row_off = rows * (groups * BITS)
    toks = pid_m.to(tl.int64) * BM + tl.arange(0, BM)
    tok_mask = toks < M
    kk = tl.arange(0, BK)
    acc = tl.zeros([BN, BM], dtype=tl.float32)
    lane_cb = 0.0
    if MODE == 2:
        lane_cb = _lut_lane(cb_addr, tl.zeros([BN, G * A, F], dtype=tl.int32), BITS)
    t0 = pid_s * tiles_per_split
    for tu in range(t0, t0 + tiles_per_split, UNROLL):
        for u in tl.static_range(UNROLL):  # straight-line over UNROLL K-steps: their loads issue together
            t = tu + u
            code = _tile_codes(p_ptr, p_addr, row_off, row_mask, t, groups, BITS, BN, G, A, F, MASKED,
                               MODE)  # [BN, Q, F]
            vals = _lut(cb_ptr, cb_addr, lane_cb, code, BITS, MODE)
            if not UPCAST:
                vals = vals.to(x_ptr.dtype.element_ty)
            wt = tl.reshape(vals, [BN, BK])  # k = q*F + f
            k = t * BK + kk
            xptrs = x_ptr + toks[None, :] * stride_xm + k[:, None]  # [BK, BM]
            if MASKED:
                xt = tl.load(xptrs, mask=tok_mask[None, :] & (k < groups * 32)[:, None], other=0.0)
            elif MASK_M:
                xt = tl.load(xptrs, mask=tok_mask[None, :], other=0.0)
            else:
                xt = tl.load(xptrs)
            if UPCAST:  # the CPU interpreter's bf16 tl.dot is garbage (docs TRITON_CPU.md)
                xt = xt.to(tl.float32)
            if IEEE:  # fp32 inputs: plain fp32 products, as torch does by default (no TF32)
                d = tl.dot(wt, xt, input_precision="ieee")
            else:
                d = tl.dot(wt, xt)
            # BK divides BLOCK: one norm per row for this whole K-step
            if MASKED:
                t_ok = (tl.zeros([BN], dtype=tl.int32) + t * G) < groups  # a tensor: the interpreter's masks must be
                nv = tl.load(n_ptr + rows * nblk + (t * BK) // BLOCK, mask=row_mask & t_ok, other=0.0)
            else:
                nv = tl.load(n_ptr + rows * nblk + (t * BK) // BLOCK)
            acc += d * nv.to(tl.float32)[:, None]
    optrs = toks[None, :] * stride_om + rows[:, None]
    omask = tok_mask[None, :] & row_mask[:, None]
    if SPLIT_K == 1:
        tl.store(out_ptr + optrs, acc.to(out_ptr.dtype.element_ty), mask=omask)
    else:
        tl.store(out_ptr + pid_s.to(tl.int64) * stride_os + optrs, acc, mask=omask)


@triton.jit
def _l2_prefetch_planes(p_addr, row_off, groups, t, BITS: tl.constexpr, G: tl.constexpr, A: tl.constexpr):
    """``prefetch.global.L2`` of the cache line that starts each plane's words of K-tile ``t`` for the
    rows at ``row_off`` (GPU only: a hint, no registers, no wait; the plane loads of that tile then
    hit L2 instead of waiting on DRAM)."""
    if A == 8:
        _l2_line(p_addr + 4 * (row_off + t * (G * 8)))
    else:
        if BITS & 4:
            _l2_line(p_addr + 4 * (row_off + t * (G * 4)))
        if BITS & 2:
            _l2_line(p_addr + 4 * (row_off + groups * (BITS & 4) + t * (G * 2)))
        if BITS & 1:
            _l2_line(p_addr + 4 * (row_off + groups * (BITS & 6) + t * G))


@triton.jit
def _l2_line(addr):
    tl.inline_asm_elementwise("prefetch.global.L2 [$1]; mov.u32 $0, 0;", "=r,l", [addr], dtype=tl.int32,
                              is_pure=False, pack=1)


@triton.jit
def _dot2_x(x_ptr, toks, M, stride_xm, t, BK: tl.constexpr, UPCAST: tl.constexpr, FRAG: tl.constexpr,
            XPERM: tl.constexpr = False):
    """x^T tile [BK, BM] of K-step t; tokens clamped to M-1 (no predicates: the extra columns are
    masked at the store). FRAG: loaded in code order (contiguous: 16-byte loads), then relabelled
    to the k order of ``_dot2_kernel`` (code c*(BK/4) + 4*kc + 2*e_hi + e_lo -> k = 16*kc + 8*e_hi
    + 2*c + e_lo; a layout change only, absorbed by the store into the wgmma B tile in smem)."""
    if FRAG and XPERM:
        # (dot2 PIPE) the relabelling through the pointers: row k of the tile is code
        # (k//2 % 4) * (BK/4) + 4 * (k // 16) + 2 * (k//8 % 2) + k % 2, so the pipelined copy lands in the
        # tensor-core operand order (pairs of codes contiguous: 4-byte copies) with no register permute
        k = tl.arange(0, BK)
        code = ((k // 2) % 4) * (BK // 4) + 4 * (k // 16) + 2 * ((k // 8) % 2) + k % 2
        code = tl.max_contiguous(tl.multiple_of(code, 2), 2)
        xt = tl.load(x_ptr + tl.minimum(toks, M - 1)[None, :] * stride_xm + (t * BK + code)[:, None])
        if UPCAST:
            xt = xt.to(tl.float32)
        return xt
    kk = t * BK + tl.arange(0, BK)
    xt = tl.load(x_ptr + tl.minimum(toks, M - 1)[None, :] * stride_xm + kk[:, None])
    if FRAG:
        BM: tl.constexpr = xt.shape[1]
        xt = tl.reshape(tl.permute(tl.reshape(xt, [4, BK // 16, 2, 2, BM]), (1, 2, 0, 3, 4)), [BK, BM])
    if UPCAST:  # the CPU interpreter's bf16 tl.dot is garbage (docs TRITON_CPU.md)
        xt = xt.to(tl.float32)
    return xt


@triton.jit
def _dot2_mma(ca, cb, cc, xt, lane_cb, cb_ptr, cb_addr, x_ptr, BITS: tl.constexpr, BN: tl.constexpr, G: tl.constexpr,
              A: tl.constexpr, F: tl.constexpr, BK: tl.constexpr, UPCAST: tl.constexpr, IEEE: tl.constexpr,
              MODE: tl.constexpr, FRAG: tl.constexpr, PIECES: tl.constexpr, LEAN: tl.constexpr = False):
    """One K-step of ``_dot2_kernel`` from its plane words and x^T tile: decode (LEAN: ``_words_to_codes_l3``),
    LUT, the FRAG relabelling, and the tensor-core product [BN, BM] (without the norms)."""
    if LEAN and A == 4:
        code = _words_to_codes_l3(ca, cb, cc, BITS, BN, G, MODE, PIECES)  # [BN, Q, F]
    else:
        code = _words_to_codes(ca, cb, cc, BITS, BN, G, A, F, PIECES)
    vals = _lut(cb_ptr, cb_addr, lane_cb, code, BITS, MODE)
    if not UPCAST:
        vals = vals.to(x_ptr.dtype.element_ty)
    if FRAG:  # code index c*(BK/4) + 4*kc + 2*e_hi + e_lo -> k = 16*kc + 8*e_hi + 2*c + e_lo
        wt = tl.reshape(vals, [BN, 4, BK // 16, 2, 2])
        wt = tl.reshape(tl.permute(wt, (0, 2, 3, 1, 4)), [BN, BK])
        # loaded row (g, w, l) -> output row (w, g, l)
        wt = tl.reshape(wt, [BN // (8 * (BN // 16)), BN // 16, 8, BK])
        wt = tl.reshape(tl.permute(wt, (1, 0, 2, 3)), [BN, BK])
    else:
        wt = tl.reshape(vals, [BN, BK])
    if IEEE:  # fp32 inputs: plain fp32 products, as torch does by default (no TF32)
        return tl.dot(wt, xt, input_precision="ieee")
    else:
        return tl.dot(wt, xt)


@triton.jit
def _dot2_kernel(x_ptr, p_ptr, p_addr, n_ptr, cb_ptr, cb_addr, out_ptr, M, N, groups, nblk, stride_xm, stride_om,
                 stride_os, tiles_per_split, BITS: tl.constexpr, BLOCK: tl.constexpr, BM: tl.constexpr,
                 BN: tl.constexpr, G: tl.constexpr, A: tl.constexpr, F: tl.constexpr, SPLIT_K: tl.constexpr,
                 UPCAST: tl.constexpr, IEEE: tl.constexpr, MODE: tl.constexpr, MASKED: tl.constexpr,
                 MASK_M: tl.constexpr, UNROLL: tl.constexpr, PF: tl.constexpr, FRAG: tl.constexpr,
                 L2PF: tl.constexpr, PIPE: tl.constexpr = 0, LEAN: tl.constexpr = False,
                 XPERM: tl.constexpr = False):
    """The tensor-core kernel reworked for latency ("dot2": the default for GEMV_MAX_M < M <= 16, any
    M up to 256 by Config; see ``_dot_kernel`` for the swap-AB scheme and .notes/dequant_matmul.md "dot2"):

    * PF (0/1/2): the plane words and the x^T tile of K-step t+PF are loaded (registers) before
      step t is decoded: the dot kernel waited a full DRAM latency per K-step (word load -> decode ->
      wgmma, 32 steps in a row at K=4096).
    * FRAG: the K order inside a K-step is permuted (x^T gets the same permutation through its
      pointers) and the rows of the loaded tile are permuted, so that the codes a thread decodes are
      exactly the ones that the wgmma A-operand fragment puts in that thread (thread c of a row quad
      holds k = 16 kc + 2c + {0, 1, 8, 9}: codes 8G*c .. 8G*c + 8G-1 of the step, one group at G=4):
      the A tile then needs no shared-memory round trip (STS + BAR + LDSM per K-step).
      Exact for BN = 16 * num_warps, G = 4 (the layout the 4-bit plane's LDG.128 gets); any other
      config is still correct (the permutation is only a relabelling of k and rows).
    * L2PF (GPU only): each K-step also issues ``prefetch.global.L2`` for the plane words of K-step
      t + L2PF (one line per row and plane): ptxas sinks the PF register loads behind the decode
      (SASS), so the L2 prefetch is what keeps DRAM busy ahead of the loop.
    * PIPE (``Config.pipe``, >= 2; PF unused): the K loop is Triton-pipelined with PIPE stages: cp.async
      copies of the plane words (narrow planes as one piece per quad, so every copy lands in the decode's
      layout: ``_plane_words`` PIECES), of the x^T tile and of the norms, PIPE - 1 K-steps ahead, no
      registers held. LEAN (``Config.lean``) decodes with ``_words_to_codes_l3``; XPERM (``Config.xperm``,
      with FRAG) loads x^T through permuted pointers, so its copy is the wgmma B operand as it lands (no
      shared-memory load / permute / store per K-step). Session 11 (S11-8 to S11-11): the M <= 16 default at
      4 and 5 bits for N >= 16384 and for K > 4096.
    * rows and tokens are clamped for the loads (no predicates), K-steps past the split's end are
      clamped and get a zero norm; MASKED / MASK_M are unused (a K-step is always whole: BK | block).
    """
    BK: tl.constexpr = G * 32
    num_m = tl.cdiv(M, BM)
    pid = tl.program_id(0)
    pid_s = tl.program_id(1)
    pid_m = pid % num_m
    pid_n = pid // num_m
    rr = tl.arange(0, BN)
    if FRAG:
        # loaded row i = g*(8*RW) + w*8 + l holds output row w*(BN//RW) + g*8 + l (RW = BN // 16 row
        # groups of 16 = the warps along M of the wgmma layout; g over the BN // (8*RW) = 2 halves)
        RW: tl.constexpr = BN // 16
        lrow = ((rr // 8) % RW) * 16 + (rr // (8 * RW)) * 8 + rr % 8
    else:
        lrow = rr
    rows_ld = tl.minimum(pid_n * BN + lrow, N - 1).to(tl.int64)  # clamped: no load predicates
    row_off = rows_ld * (groups * BITS)
    rows_out = pid_n * BN + rr
    nrm_off = tl.minimum(rows_out, N - 1).to(tl.int64) * nblk
    toks = pid_m * BM + tl.arange(0, BM)
    row_true = tl.full([BN], 1, tl.int1)
    n_tiles = groups // G
    acc = tl.zeros([BN, BM], dtype=tl.float32)
    lane_cb = 0.0
    if MODE == 2:
        lane_cb = _lut_lane(cb_addr, tl.zeros([BN, G * A, F], dtype=tl.int32), BITS)
    t0 = pid_s * tiles_per_split
    t_last = tl.minimum(t0 + tiles_per_split, n_tiles) - 1
    if PIPE > 0:
        # Triton's pipeliner copies every plane (one piece per quad for the narrow ones), the x^T tile and
        # the norms of the next PIPE - 1 K-steps into shared memory (cp.async): loads ahead without registers
        for t in tl.range(t0, t0 + tiles_per_split, num_stages=PIPE):
            tc = tl.minimum(t, t_last)
            ca, cb, cc = _tile_words(p_ptr, p_addr, row_off, row_true, tc, groups, BITS, BN, G, A, False, MODE, True)
            xt = _dot2_x(x_ptr, toks, M, stride_xm, tc, BK, UPCAST, FRAG, XPERM)
            nv = tl.load(n_ptr + nrm_off + (tc * BK) // BLOCK)
            d = _dot2_mma(ca, cb, cc, xt, lane_cb, cb_ptr, cb_addr, x_ptr, BITS, BN, G, A, F, BK, UPCAST, IEEE, MODE,
                          FRAG, True, LEAN)
            nv = tl.where(t <= t_last, nv.to(tl.float32), 0.0)
            acc += d * nv[:, None]
    if PF >= 1 and PIPE == 0:
        wa, wb, wc = _tile_words(p_ptr, p_addr, row_off, row_true, tl.minimum(t0, t_last), groups, BITS, BN, G, A,
                                 False, MODE)
        xc = _dot2_x(x_ptr, toks, M, stride_xm, tl.minimum(t0, t_last), BK, UPCAST, FRAG)
        vc = tl.load(n_ptr + nrm_off + (tl.minimum(t0, t_last) * BK) // BLOCK)
    if PF >= 2 and PIPE == 0:
        wa2, wb2, wc2 = _tile_words(p_ptr, p_addr, row_off, row_true, tl.minimum(t0 + 1, t_last), groups, BITS, BN,
                                    G, A, False, MODE)
        xc2 = _dot2_x(x_ptr, toks, M, stride_xm, tl.minimum(t0 + 1, t_last), BK, UPCAST, FRAG)
        vc2 = tl.load(n_ptr + nrm_off + (tl.minimum(t0 + 1, t_last) * BK) // BLOCK)
    if PIPE == 0:
        for tu in range(t0, t0 + tiles_per_split, UNROLL):
            for u in tl.static_range(UNROLL):
                t = tu + u
                tc = tl.minimum(t, t_last)
                if L2PF > 0 and MODE != 0:
                    _l2_prefetch_planes(p_addr, row_off, groups, tl.minimum(t + L2PF, t_last), BITS, G, A)
                if PF == 0:
                    ca, cb, cc = _tile_words(p_ptr, p_addr, row_off, row_true, tc, groups, BITS, BN, G, A, False, MODE)
                    xt = _dot2_x(x_ptr, toks, M, stride_xm, tc, BK, UPCAST, FRAG)
                    nv = tl.load(n_ptr + nrm_off + (tc * BK) // BLOCK)
                else:
                    tn = tl.minimum(t + PF, t_last)
                    na, nb, nc = _tile_words(p_ptr, p_addr, row_off, row_true, tn, groups, BITS, BN, G, A, False, MODE)
                    nx = _dot2_x(x_ptr, toks, M, stride_xm, tn, BK, UPCAST, FRAG)
                    nn = tl.load(n_ptr + nrm_off + (tn * BK) // BLOCK)
                    ca, cb, cc, xt, nv = wa, wb, wc, xc, vc
                    if PF == 1:
                        wa, wb, wc, xc, vc = na, nb, nc, nx, nn
                    else:
                        wa, wb, wc, xc, vc = wa2, wb2, wc2, xc2, vc2
                        wa2, wb2, wc2, xc2, vc2 = na, nb, nc, nx, nn
                d = _dot2_mma(ca, cb, cc, xt, lane_cb, cb_ptr, cb_addr, x_ptr, BITS, BN, G, A, F, BK, UPCAST, IEEE,
                              MODE, FRAG, False)
                # K-steps past the split: clamped loads, no contribution
                nv = tl.where(t <= t_last, nv.to(tl.float32), 0.0)
                acc += d * nv[:, None]
    optrs = toks[None, :] * stride_om + rows_out[:, None]
    omask = (toks < M)[None, :] & (rows_out < N)[:, None]
    if SPLIT_K == 1:
        tl.store(out_ptr + optrs, acc.to(out_ptr.dtype.element_ty), mask=omask)
    else:
        tl.store(out_ptr + pid_s.to(tl.int64) * stride_os + optrs, acc, mask=omask)


@triton.jit
def _dequant_rows_kernel(p_ptr, p_addr, n_ptr, cb_ptr, cb_addr, out_ptr, row0, N, groups, nblk,
                         BITS: tl.constexpr, BLOCK: tl.constexpr, BN: tl.constexpr, G: tl.constexpr,
                         A: tl.constexpr, F: tl.constexpr, MODE: tl.constexpr, MASKED: tl.constexpr):
    """W_rot rows [row0, row0 + rows of out) in out's dtype: one [BN, 32G] tile per program (the
    prefill path's slab; see ``_slab_matmul``)."""
    BK: tl.constexpr = G * 32
    t = tl.program_id(1)
    r = tl.program_id(0).to(tl.int64) * BN + tl.arange(0, BN)  # row within the slab
    rows = row0 + r
    row_mask = rows < N
    row_off = rows * (groups * BITS)
    lane_cb = 0.0
    if MODE == 2:
        lane_cb = _lut_lane(cb_addr, tl.zeros([BN, G * A, F], dtype=tl.int32), BITS)
    code = _tile_codes(p_ptr, p_addr, row_off, row_mask, t, groups, BITS, BN, G, A, F, MASKED, MODE)
    vals = _lut(cb_ptr, cb_addr, lane_cb, code, BITS, MODE)
    nv = tl.load(n_ptr + rows * nblk + (t * BK) // BLOCK, mask=row_mask, other=0.0).to(tl.float32)
    wt = tl.reshape(vals * nv[:, None, None], [BN, BK])
    k = t * BK + tl.arange(0, BK)
    tl.store(out_ptr + r[:, None] * (groups * 32) + k[None, :], wt.to(out_ptr.dtype.element_ty),
             mask=row_mask[:, None])


@triton.jit
def _splitk_reduce_kernel(part_ptr, out_ptr, numel, SPLIT_K: tl.constexpr, BLOCK: tl.constexpr,
                          PDL: tl.constexpr = False):
    if PDL:  # launched with programmatic dependent launch: nothing to do before the partials are written
        gdc_wait()
        gdc_launch()
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < numel
    acc = tl.zeros([BLOCK], dtype=tl.float32)
    for s in tl.static_range(SPLIT_K):
        acc += tl.load(part_ptr + s * numel + offs, mask=mask, other=0.0)
    tl.store(out_ptr + offs, acc.to(out_ptr.dtype.element_ty), mask=mask)


# ----------------------------------------------------------------------------------------------
# launch
# ----------------------------------------------------------------------------------------------
class Config(NamedTuple):
    """One launch configuration (``method``: "gemv", "gemv2", "dot", "dot2" or "slab"; BM only for
    "dot"/"dot2").

    dot2 (``_dot2_kernel``, the default for GEMV_MAX_M < M <= 16; any M up to 256): the dot kernel with ``pf`` K-steps of code words and
    x loaded ahead and ``frag`` (decode straight into the wgmma A fragment: BN = 16 * num_warps,
    G = 4 for the exact match); split_k / unroll as for "dot".

    gemv2 (``_gemv2_kernel``, the default for M <= GEMV_MAX_M): G = the most groups of 32 codes per K slice (a power of
    two; the slice is rounded up to whole norm blocks), split_k = at least this many K slices,
    BN = rows per tile, row_tiles = BN-row tiles per program (0: about 4 programs per SM)."""
    method: str
    BN: int
    G: int
    split_k: int = 0  # 0: choose from the SM count
    BM: int = 16
    num_warps: int = 4
    num_stages: int = 2
    prefetch: bool = False  # gemv: load tile t+1's words before computing tile t
    unroll: int = 1  # gemv: tiles per loop trip (straight-line code: loads of all of them in flight);
    # gemv2: 1 or depth + 1 (row tiles per trip, prefetch slots round-robin: no register copies)
    row_tiles: int = 0  # gemv2: BN-row tiles per program (0: chosen from the SM count)
    depth: int = 1  # gemv2 with prefetch: row tiles of plane words loaded ahead (1 or 2)
    nib: bool = False  # gemv2, bits 1-3: one shift per code from nibble/field words (_words_to_codes_nib)
    lean: bool = False  # gemv2: fewer ops per code (one LOP3 per merge in _words_to_codes_l3; FFMA chain per block);
    # dot2 with pipe: the same decode
    early: bool = False  # gemv2 with prefetch: the next tiles' loads issue before the current tile (_g2_tile_at)
    fused: bool = False  # gemv2 with > 1 K slice: split-K sum in the kernel (last-arriving slice; no reduce launch)
    slab_rows: int = 0  # slab: W_rot rows per slab (0: about SLAB_BYTES of x's dtype)
    pf: int = 1  # dot2: K-steps of words + x loaded ahead (0, 1, 2)
    frag: bool = True  # dot2: k / row order that makes the decode land in the wgmma A fragment (bits 4-7)
    l2pf: int = 0  # dot2: prefetch.global.L2 of the plane words this many K-steps ahead (0: off)
    i32: bool = False  # gemv2: 32-bit row / word / norm offsets where they fit (the launcher checks)
    pipe: int = 0  # dot2: Triton-pipelined K loop with this many stages (cp.async copies of every plane, x^T
    # and the norms into shared memory; pf is then unused); 0: the register prefetch (pf)
    xperm: bool = False  # dot2 with pipe and frag: x^T copied straight into the tensor-core operand order


@functools.lru_cache(maxsize=None)
def _num_sms(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).multi_processor_count
    return 4


def _pick(m: int, n: int, kp: int, block: int, method: str, bits: int = 5) -> Config:
    """Kernel and tiles by M (decode vs prefill); numbers in .notes/dequant_matmul.md.

    * M = 1 where ``gemvt.default_options`` says (5 bits: K = 4096, N >= 16384; 4 bits: N >= 2048 but 8192 x 4096;
      3 bits: N >= 2048; on a GPU with Gluon): not a Config but the TMA-ring GEMV of ``gemvt.py`` (``_try_gemvt``,
      before ``_pick``), measured faster there (perf/RESULTS.md, sessions 13 and 14).
    * M <= GEMV_MAX_M: gemv2 (K across the CTA), G=128 (4096-code K slices), prefetch, 4 warps,
      BN = 8 rows per tile for N <= 4096, else 4. H100, M=1, 5 bits, graph timing (perf/graph_sweep.py
      dqcfg, 2026-11-27 session 3 run 1; us, gemv2 BN4 / BN8 / old gemv default / cuBLAS bf16):
      4096x4096 8.51 / 7.88 / 11.05 / 15.67; 24576x4096 31.74 / 34.25 / 41.61 / 71.96;
      4096x12288 19.41 / 19.79 / 24.61 / 39.31; 2048x4096 5.99 / 5.88 / 8.31 / 10.93.
      (The old "gemv", BN=32 rows x BK=128 per step, stays as method="gemv".)
    * M <= 16: dot2 (tensor cores, the decode written straight into the wgmma A fragment), BM = 16; at 4 and 5
      bits with N >= 16384 or K > 4096 its K loop is Triton-pipelined (pipe 3: cp.async copies two K-steps
      ahead, lean decode, x^T copied in operand order), elsewhere one K-step of register prefetch (pf 1).
    * M <= SLAB_MIN_M: the fused tensor-core kernel (swap-AB wgmma, BM = 32 tokens).
    * larger M: slabs of W_rot in bf16 (bounded scratch, never the whole matrix) + cuBLAS:
      the fused kernel re-dequantizes each weight tile for every BM tokens (M/BM times), which
      costs more than the tensor-core work at M=2048.
    """
    if method == "auto":
        method = "gemv2" if m <= GEMV_MAX_M else ("dot2" if m <= 16 else "dot" if m <= SLAB_MIN_M else "slab")
    g_max = max(1, min(4, block // 32))  # BK = 32*G <= 128 and divides block
    if method == "gemv":
        # H100 sweep, gate_up M=1 5 bits (2026-11-27, perf/RESULTS.md): unroll 1/2/4/8 -> 53.9 /
        # 54.3 / 55.5 / 54.2 us (more loads in flight did not help: not latency-bound alone);
        # prefetch + unroll 4 -> 50.4 us, the best of the sweep; BN 16/64/128 no better.
        return Config("gemv", BN=32, G=g_max, num_warps=4, prefetch=True, unroll=4)
    if method == "gemv2":
        if n <= 4096 and bits == 5 and kp > 128 * 32:
            # several K slices (split-K): the N > 4096 option. H100, M=1, 4096x12288, graph timing (graph_sweep
            # dqcfg, 2026-11-27 session 4 run 3; us): 18.87 vs BN=8 19.72-19.86, cuBLAS bf16 39.12. (Its fused
            # split-K sum, 18.33, shares counters between calls, so it stays opt-in: Config.fused.)
            return Config("gemv2", BN=4, G=128, num_warps=4, prefetch=True, lean=True, unroll=2)
        if n <= 4096:
            # i32 with one K slice: 4096x4096 7.84 -> 7.45 us, 2048x4096 5.90 -> 5.54 (H100, 5 bits, graph_sweep
            # dqi32ab, session 11 S11-5, alternated three times; cuBLAS bf16 15.55 / 10.87). Other widths: untimed.
            # (On the lean round-robin configs below, i32 was slower: 24576x4096 30.6 -> 34.2, S11-3.)
            return Config("gemv2", BN=8, G=128, num_warps=4, prefetch=True, i32=kp <= 128 * 32)
        # N > 4096: options from the g2opt branch, per bit width. H100, M=1, 24576x4096, graph timing
        # (graph_sweep dqcfg, 2026-11-27 session 3 run 6; us, option / plain BN=4 prefetch / cuBLAS 72.6):
        # 5 bits lean + round-robin slots 30.99 / 32.02 (4096x12288: 19.19 / 19.91); 4 bits lean
        # 26.63 / 31.25; 3 bits nib + lean + slots + early 29.59 / 35.09. Other widths: untimed options.
        if bits == 5:
            return Config("gemv2", BN=4, G=128, num_warps=4, prefetch=True, lean=True, unroll=2)
        if bits == 4:
            return Config("gemv2", BN=4, G=128, num_warps=4, prefetch=True, lean=True)
        if bits == 3 and n >= 16384:
            # 2-warp programs, 8 per SM at 128 registers (H100, graph_sweep dqlowbit, session 4 run 9; us):
            # 24576x4096 27.95 vs 29.62 (session 3 run 6: 28.36 vs 29.59), lm_head 241.71 vs 252.75.
            # Untimed below N = 16384 (row_tiles 12 leaves 8192 rows 342 programs), so those keep the option below.
            return Config("gemv2", BN=2, G=128, num_warps=2, prefetch=True, nib=True, lean=True, unroll=2,
                          row_tiles=12)
        if bits == 3:
            return Config("gemv2", BN=4, G=128, num_warps=4, prefetch=True, nib=True, lean=True, unroll=2,
                          early=True)
        return Config("gemv2", BN=4, G=128, num_warps=4, prefetch=True)
    if method == "slab":
        return Config("slab", BN=32, G=g_max, num_warps=4)
    if method == "dot2":
        # GEMV_MAX_M < M <= 16 default. H100, M=16, 5 bits, graph timing (graph_sweep dq16cfg, 2026-11-27
        # session 3 run 5; us, dot2 pf1 / the dot default / cuBLAS bf16): 8192x4096 22.12 / 28.63 / 25.47;
        # 4096^2 13.16 / 16.61 / 16.88; 24576x4096 52.59 / 61.51 / 73.86; 4096x12288 38.35 / 51.67 / 40.07;
        # 2048x4096 9.80 / 11.61 / 10.98. (pf2 unroll 2: 49.72 on 24576x4096 but slower elsewhere;
        # l2pf and split-K 2/4 did not help.) BM=32 (M 17..32) is untimed: "dot" stays the default there.
        cfg = Config("dot2", BN=64, G=g_max, BM=16 if m <= 16 else 32, num_warps=4, num_stages=1, pf=1)
        if m <= 16 and bits in (4, 5) and g_max == 4:
            # the pipelined K loop (session 11, M=16, graph timing; us). graph_sweep dq16pipe (S11-8; option /
            # pf 1 / cuBLAS bf16): 5 bits 24576x4096 pipe3 split 1 44.73 / 47.96 / 73.98, 4096x12288 pipe3 BN 128
            # 8 warps 25.87 / 27.48 / 40.02; 4 bits 24576x4096 pipe3 41.52 / 45.42. Slower there on 8192x4096,
            # 4096^2 and 2048x4096 (pipe3 19.56 / 13.74 / 9.77 vs 18.71 / 12.70 / 9.57), which keep pf 1.
            # dq16lean (S11-10, two alternations each; without / with lean + xperm): 24576x4096 45.57, 45.84 ->
            # 41.30, 40.97 (4 bits 37.51, 37.86 -> 34.11, 33.52); 4096x12288 26.37, 26.48 -> 25.73, 25.41 (4 bits
            # 22.76, 22.91 -> 21.76, 21.56); 248320x4096 386.10, 389.22 -> 381.83, 375.01. (4096^2 slower with
            # them, 12.65 -> 13.18; 2048x4096 9.75 -> 9.27 and 8192x4096 18.50 -> 18.42 / 18.10: not adopted.)
            if kp > 4096:
                return cfg._replace(pipe=3, BN=128, num_warps=8, lean=True, xperm=True)
            if n >= 16384:
                return cfg._replace(pipe=3, split_k=1, lean=True, xperm=True)
        return cfg
    if m <= 16:  # one m64n16 wgmma per K-step, no Triton pipelining (stages=2 was 1.6x slower);
        # unroll=2: 156 registers, no spills (measured config was unroll=1; unroll=2 NOT yet timed)
        return Config("dot", BN=64, G=g_max, BM=16, num_warps=4, num_stages=1, unroll=2)
    # BM=32: BK=64 keeps it at 168 registers (BK=128: 254 + spills; BM=64 spills)
    return Config("dot", BN=64, G=min(g_max, 2), BM=32, num_warps=4, num_stages=1)


def _lut_mode(bits: int) -> int:
    """How ``_lut`` reads the codebook: 0 interpreter gather, 1 L1 gather, 2 warp shuffle."""
    if interpreting():
        return 0
    return 2 if bits <= 5 else 1


def _split_k(cfg: Config, programs: int, n_tiles: int, device: torch.device) -> int:
    if cfg.split_k:
        return max(1, min(cfg.split_k, n_tiles))
    # about three programs per SM, at most 4 splits; a divisor of the tile count, so every split is
    # full and the kernel needs no predicates. H100, M=1, 5 bits, graph timing (perf/graph_sweep.py
    # dqcfg, 2026-11-27 run 3), splits 1/2/4/8 at unroll 4: 4096x4096 (128 programs) 17.95 / 12.66 /
    # 10.95 / 12.45 us; 4096x12288 50.99 / 31.87 / 24.56 / 25.77; 2048x4096 17.31 / 11.23 / 8.25 /
    # 8.82; 24576x4096 (768 programs) 41.57 / 42.54 / 42.07 / 44.48.
    # The dot kernel (M <= 256) keeps the measured rule of session 1: at least one full wave.
    # dot2 (the M <= 16 default), while the grid has fewer than 4 programs per SM (it fits 4 at 128
    # registers): twice that, at least 4 and at most 8 splits. H100, M=16, 5 bits, graph timing (graph_sweep
    # dq16split, 2026-11-27 session 4 run 9; us, splits: the one-wave rule / 2x / 4x): 8192x4096 s2 22.08 /
    # s4 18.46 / s8 20.43; 4096^2 s4 13.05 / s8 12.56 / s16 14.47; 24576x4096 s1 52.71 / s2 50.94 / s4 48.12
    # (run 11: s2 51.79 / s4 48.08); 4096x12288 s3 38.38 / s6 27.64 / s12 30.05; 2048x4096 s8 9.67 / s16
    # 10.03 / s32 12.31 (cuBLAS bf16 25.57 / 16.84 / 73.45 / 39.97 / 11.00). Larger grids (lm_head): one wave.
    sms, programs = _num_sms(device), max(programs, 1)
    one_wave = -(-sms // programs)
    if cfg.method == "gemv":
        want = min(4, -(-3 * sms // programs))
    elif cfg.method == "dot2" and programs < 4 * sms:
        want = min(8, max(4, 2 * one_wave))
    else:
        want = one_wave
    divisors = [d for d in range(1, min(n_tiles, 16) + 1) if n_tiles % d == 0]
    bigger = [d for d in divisors if d >= want]
    return bigger[0] if bigger else divisors[-1]


def _slab_matmul(xr: torch.Tensor, w: HLWQWeight, out_dtype: torch.dtype, cfg: Config) -> torch.Tensor:
    """Prefill: W_rot in slabs of rows (about SLAB_BYTES and at least SLAB_MIN_ROWS rows) in x's
    dtype, each multiplied by cuBLAS straight into its columns of the output (a strided view: no
    copy). Scratch is bounded by the slab (<= 48 MiB for K <= 12288 in bf16), whatever N is; a
    weight with fewer rows than one slab (e.g. 2048 x 4096) is dequantized whole into it."""
    m, kp = xr.shape
    n = w.out_features
    groups, nblk = kp // 32, kp // w.block
    a, f = (8, 4) if w.bits == 8 else (4, 8)
    # at least SLAB_MIN_ROWS: narrower slabs leave cuBLAS too few output tiles. H100, M=2048, 5 bits,
    # graph timing (graph_sweep dqprefill, 2026-11-27 session 3 run 2), 4096x12288: 640 rows (16 MiB)
    # 412.6 us, 1024: 363.6, 2048: 329.1, 4096: 339.5 (cuBLAS bf16 290.6); K = 4096 shapes: 2048
    # rows (= 16 MiB) best or within 2% of it.
    rows = cfg.slab_rows or max(SLAB_MIN_ROWS, SLAB_BYTES // (kp * xr.element_size()))
    rows = max(cfg.BN, rows // cfg.BN * cfg.BN)
    rows = min(rows, cdiv(n, cfg.BN) * cfg.BN)
    slab = torch.empty(rows, kp, dtype=xr.dtype, device=xr.device)
    out = torch.empty(m, n, dtype=xr.dtype, device=xr.device)
    for r0 in range(0, n, rows):
        r1 = min(n, r0 + rows)
        masked = bool((r1 - r0) % cfg.BN)
        _dequant_rows_kernel[(cdiv(r1 - r0, cfg.BN), cdiv(groups, cfg.G))](
            w.packed, w.packed.data_ptr(), w.norms, w.codebook, w.codebook.data_ptr(), slab, r0, n, groups, nblk,
            BITS=w.bits, BLOCK=w.block, BN=cfg.BN, G=cfg.G, A=a, F=f, MODE=_lut_mode(w.bits), MASKED=masked,
            num_warps=cfg.num_warps)
        torch.mm(xr, slab[: r1 - r0].T, out=out[:, r0:r1])
    return out if out_dtype == out.dtype else out.to(out_dtype)


# Arrival counters of gemv2's in-kernel split-K sum (Config.fused): one int32 buffer per device, owned by
# this module, zeroed once when made (eagerly, never while a CUDA graph is being captured) and kept at
# zero between calls by the kernels themselves (the last-arriving program of each counter resets it).
# Grown outside capture only; replaced buffers are kept alive, because captured graphs hold their address.
# The partials are per call (torch.empty: the caching allocator / the graph's pool), like the unfused path.
# Ownership rule: calls that use the counters must not run at the same time. Calls on one stream (eager or
# replays of graphs captured on any stream, replayed on one stream) are ordered: safe. Two streams
# running fused gemv2 calls concurrently can share counter slots and then sum partials early (wrong
# output); use fused=False there.
_G2_COUNTERS: dict[torch.device, torch.Tensor] = {}
_G2_RETIRED: list[torch.Tensor] = []
_G2_MIN_COUNTERS = 4096


def _g2_counters(device: torch.device, count: int) -> torch.Tensor | None:
    """The device's counter buffer with at least ``count`` slots, or None while capturing a CUDA graph
    before one large enough exists (the caller then uses the partials + reduce-kernel path)."""
    buf = _G2_COUNTERS.get(device)
    if buf is not None and buf.numel() >= count:
        return buf
    if device.type == "cuda" and torch.cuda.is_current_stream_capturing():
        return None
    if buf is not None:
        _G2_RETIRED.append(buf)
    buf = torch.zeros(max(count, _G2_MIN_COUNTERS), dtype=torch.int32, device=device)
    if device.type == "cuda":
        torch.cuda.current_stream(device).synchronize()  # once: zeros in place before any stream uses them
    _G2_COUNTERS[device] = buf
    return buf


def _gemv2(xr: torch.Tensor, w: HLWQWeight, out_dtype: torch.dtype, cfg: Config,
           probe: torch.Tensor | None = None, pdl: bool = False) -> torch.Tensor:
    """Launch ``_gemv2_kernel`` (K across the CTA; see there and ``Config``). ``probe`` (diagnostics, GPU): an int64
    [programs, 8] buffer for the kernel's timestamps (``_g2_probe``). ``pdl``: programmatic dependent launch (see
    ``pdl_supported``)."""
    m, kp = xr.shape
    n, block, bits = w.out_features, w.block, w.bits
    if cfg.G < 1 or cfg.G & (cfg.G - 1) or cfg.BN < 1 or cfg.BN & (cfg.BN - 1):
        raise ValueError(f"gemv2: G and BN must be powers of two, got G={cfg.G} BN={cfg.BN}")
    if cfg.depth not in (1, 2):
        raise ValueError(f"gemv2: depth must be 1 or 2, got {cfg.depth}")
    # the opt-in constexprs are passed only when set, so the default launch specializes exactly as before
    extra = {}
    if cfg.prefetch and cfg.depth == 2:
        extra["DEPTH"] = 2
    if cfg.unroll != 1:
        if not cfg.prefetch or cfg.unroll != cfg.depth + 1:
            raise ValueError(f"gemv2: unroll must be 1 or depth + 1 (with prefetch), got {cfg.unroll}")
        extra["UNROLL"] = cfg.unroll
    if cfg.nib and bits <= 3:
        extra["NIB"] = True
    if cfg.lean:
        extra["LEAN"] = True
    if cfg.early and cfg.prefetch:
        extra["EARLY"] = True
    if cfg.i32 and w.packed.numel() * 4 < 2**31 and w.norms.numel() < 2**31:
        extra["I32"] = True  # (x 4: the nib loads' byte offsets of 1-bit pieces)
    groups, nblk = kp // 32, kp // block
    split = max(cfg.split_k, cdiv(groups, cfg.G))
    g = max(next_pow2(cdiv(groups, split)), block // 32)  # whole norm blocks per slice
    split = cdiv(groups, g)  # no empty slices
    masked = g * split != groups
    a, f = (8, 4) if bits == 8 else (4, 8)
    n_tiles = cdiv(n, cfg.BN)
    rt = cfg.row_tiles or max(1, cdiv(n_tiles * split * m, 4 * _num_sms(xr.device)))
    rt = min(rt, n_tiles)
    rt = cdiv(rt, cfg.unroll) * cfg.unroll  # whole trips (tiles past N: clamped loads, masked stores)
    out = torch.empty(m, n, dtype=out_dtype, device=xr.device)
    dst = out if split == 1 else torch.empty(split, m, n, dtype=torch.float32, device=xr.device)
    grid = (m, split, cdiv(n_tiles, rt))
    cnt = _g2_counters(xr.device, m * grid[2]) if cfg.fused and split > 1 else None
    if cnt is not None:
        extra.update(FUSED=True, y_ptr=out, cnt_ptr=cnt)
    if pdl:
        extra.update(PDL=True, launch_pdl=True)
    if probe is not None:
        if probe.numel() < 8 * grid[0] * grid[1] * grid[2]:
            raise ValueError(f"gemv2: probe needs {8 * grid[0] * grid[1] * grid[2]} int64, got {probe.numel()}")
        extra.update(PROBE=True, probe_ptr=probe)
    _gemv2_kernel[grid](xr, w.packed, w.packed.data_ptr(), w.norms, w.norms.data_ptr(), w.codebook,
                        w.codebook.data_ptr(), dst, n, groups, nblk, xr.stride(0), n, 0 if split == 1 else m * n, rt,
                        BITS=bits, BLOCK=block, BN=cfg.BN, G=g, A=a, F=f, SPLIT_K=split, MODE=_lut_mode(bits),
                        MASKED=masked, PREFETCH=cfg.prefetch, num_warps=cfg.num_warps, num_stages=cfg.num_stages,
                        **extra)
    if split > 1 and cnt is None:
        rb = 1024
        _splitk_reduce_kernel[(cdiv(m * n, rb),)](dst, out, m * n, SPLIT_K=split, BLOCK=rb, num_warps=4,
                                                  **(dict(PDL=True, launch_pdl=True) if pdl else {}))
    return out


# gemv2 takes PDL up to this N (H100, M = 1, graph timing, back-to-back calls, S15-2; us, default launch / PDL):
# 4096 x 4096 5 bits 7.48 / 7.19, 2048 x 4096 5.55 / 4.21, 4096 x 12288 (split-K + sum) 18.82 / 17.94; at 8192 x 4096
# 5 bits 12.68 / 12.67 and 4 bits 11.04 / 14.43: with PDL a grid's programs take the SMs as the last kernel's programs
# leave and pile onto the first ones free, where the row split assumes even placement (gemvt caps it with
# ``gemvt.extra_slots``; a Triton kernel cannot pad its shared memory).
GEMV2_PDL_MAX_N = 4096


def _gemv8_table(xr: torch.Tensor, w: HLWQWeight) -> torch.Tensor | None:
    """The int8 GEMV's lookup table if ``gluon.gemv8`` applies (GPU with Gluon, M <= 4, bf16/fp16 x, 3-5 bits, the
    int8-grid codebook ``quant.grid.weight_codebook``; see ``dequant_matmul/gluon.py``), else None."""
    from ..quant.grid import int8_tables
    from . import gluon

    m, kp = xr.shape
    if not (xr.is_cuda and not interpreting() and gluon.available()
            and gluon.supported(m, w.out_features, w.bits, w.block, kp, xr.dtype)):
        return None
    return int8_tables(w.codebook, w.bits)


_GEMVT_BROKEN: set = set()  # (device, bits) whose TMA-ring GEMV failed to compile (then: gemv2 + a warning)


def _try_gemvt(xr: torch.Tensor, w: HLWQWeight, out_dtype: torch.dtype, forced: bool,
               pdl: bool = False, rotated: bool = True) -> torch.Tensor | None:
    """The TMA-ring GEMV (``gemvt.py``) where it is the default (``gemvt.default_options``: M = 1 and the shapes
    where it measured faster than gemv2) or ``forced`` (method="gemvt": wherever ``gemvt.supported``); None
    where it does not apply (or failed to compile: then a warning, and gemv2 from then on). ``rotated=False``: ``xr``
    is x itself (K = Kp), rotated inside the kernel."""
    from . import gemvt as T
    from ..kv_quant_attn.gluon import available

    m, kp = xr.shape
    n, bits = w.out_features, w.bits
    if not (xr.is_cuda and not interpreting() and T.supported(m, bits, w.block, kp, w.packed, w.norms)
            and (xr.device, bits) not in _GEMVT_BROKEN and available()):
        if forced:
            raise ValueError("method='gemvt' needs a GPU with Gluon, M = 1, 3, 4 or 5 bits, block 128, K a multiple of "
                             f"{T.KSLICE} and contiguous codes and norms")
        return None
    opts = T.default_options(n, kp, bits, pdl)
    if opts is None:
        if not forced:
            return None
        opts = {}
    try:
        return T.gemvt(xr, w, out_dtype, **opts, pdl=pdl, rotated=rotated)
    except Exception as e:  # noqa: BLE001  a Triton whose Gluon differs (compile failure): gemv2 from now on
        if forced:
            raise
        _GEMVT_BROKEN.add((xr.device, bits))
        warnings.warn(f"dequant_matmul: the TMA-ring GEMV failed ({type(e).__name__}: {e}); using gemv2",
                      RuntimeWarning, stacklevel=3)
        return None


def dequant_matmul_rotated(xr: torch.Tensor, w: HLWQWeight, out_dtype: torch.dtype, method: str = "auto",
                           config: Config | None = None, pdl: bool = False) -> torch.Tensor:
    """``xr [M, Kp]`` (already rotated and padded) @ W_rot.T -> ``[M, N]`` in ``out_dtype``. ``pdl``: the GEMV
    kernels (gemvt, gemv2 and its split-K sum) launch with programmatic dependent launch where
    ``pdl_supported``: they start while the previous kernel on the stream finishes, streaming their first weight
    tiles before they wait for it; the other kernels launch as usual. The weight must not be written by kernels still
    running before this call."""
    xr = xr.contiguous()
    pdl = pdl and pdl_supported(xr.device)
    m, kp = xr.shape
    n = w.out_features
    block, bits = w.block, w.bits
    if m == 0 or n == 0 or kp == 0:
        return torch.zeros(m, n, dtype=out_dtype, device=xr.device)
    groups = kp // 32
    nblk = kp // block
    if config is None and method == "gemv8":  # opt-in (measured slower than gemv2: dequant_matmul/gluon.py)
        table = _gemv8_table(xr, w)
        if table is not None:
            from .gluon import gemv8

            return gemv8(xr, w, out_dtype, table)
        raise ValueError("method='gemv8' needs a GPU with Gluon, M <= 4, N % 64 == 0, bf16/fp16 x, 3-5 bits, "
                             "block 128 and the default (int8-grid) codebook")
    if config is None and method in ("auto", "gemvt"):
        y = _try_gemvt(xr, w, out_dtype, method == "gemvt", pdl)
        if y is not None:
            return y
    cfg = config or _pick(m, n, kp, block, method, bits)
    if cfg.method == "gemv2":
        return _gemv2(xr, w, out_dtype, cfg, pdl=pdl and n <= GEMV2_PDL_MAX_N)
    if (cfg.G * 32) > block or block % (cfg.G * 32):
        raise ValueError(f"config.G*32 must divide block={block}, got G={cfg.G}")
    if cfg.method == "slab":
        return _slab_matmul(xr, w, out_dtype, cfg)
    a, f = (8, 4) if bits == 8 else (4, 8)
    n_tiles = cdiv(groups, cfg.G)
    if cfg.method == "gemv":
        programs = m * cdiv(n, cfg.BN)
    else:
        programs = cdiv(m, cfg.BM) * cdiv(n, cfg.BN)
    split = _split_k(cfg, programs, n_tiles, xr.device)
    tiles_per_split = cdiv(n_tiles, split)
    split = cdiv(n_tiles, tiles_per_split)  # no empty splits
    # no predicates when every row tile and K tile is full (the Qwen3.5 shapes)
    masked = bool(n % cfg.BN or n_tiles * cfg.G != groups or tiles_per_split * split != n_tiles)
    out = torch.empty(m, n, dtype=out_dtype, device=xr.device)
    dst = out if split == 1 else torch.empty(split, m, n, dtype=torch.float32, device=xr.device)
    stride_os = 0 if split == 1 else m * n
    unroll = cfg.unroll if (cfg.method == "dot2" or tiles_per_split % cfg.unroll == 0) else 1  # dot2 clamps
    mode = _lut_mode(bits)
    common = (w.packed, w.packed.data_ptr(), w.norms, w.codebook, w.codebook.data_ptr(), dst)
    if cfg.method == "gemv":
        grid = (m, split, cdiv(n, cfg.BN))
        _gemv_kernel[grid](xr, *common, n, groups, nblk, xr.stride(0), n, stride_os, tiles_per_split,
                           BITS=bits, BLOCK=block, BN=cfg.BN, G=cfg.G, A=a, F=f, SPLIT_K=split, MODE=mode,
                           MASKED=masked, PREFETCH=cfg.prefetch, UNROLL=unroll,
                           num_warps=cfg.num_warps, num_stages=cfg.num_stages)
    elif cfg.method == "dot2":
        if cfg.pf not in (0, 1, 2) or (cfg.frag and (cfg.BN % 16 or cfg.BN < 32)) or cfg.pipe == 1 or cfg.pipe < 0:
            raise ValueError(f"dot2: pf must be 0, 1 or 2, pipe 0 or >= 2, and frag needs BN a multiple of 16 >= 32, "
                             f"got {cfg}")
        # frag only where the 4-bit plane's LDG.128 sets the tile layout (bits 4..7): at 1-3 and 8 bits
        # the loaded layout differs and the permuted tile costs more smem stores than the plain one
        grid = (cdiv(m, cfg.BM) * cdiv(n, cfg.BN), split)
        # the pipelined loop's constexprs only when set, so the other configs specialize exactly as before
        extra = dict(PIPE=cfg.pipe, LEAN=cfg.lean, XPERM=cfg.xperm) if cfg.pipe else {}
        _dot2_kernel[grid](xr, *common, m, n, groups, nblk, xr.stride(0), n, stride_os, tiles_per_split,
                           BITS=bits, BLOCK=block, BM=cfg.BM, BN=cfg.BN, G=cfg.G, A=a, F=f, SPLIT_K=split,
                           UPCAST=interpreting(), IEEE=xr.dtype == torch.float32, MODE=mode,
                           MASKED=masked, MASK_M=bool(m % cfg.BM), UNROLL=unroll, PF=cfg.pf,
                           FRAG=cfg.frag and 4 <= bits <= 7, L2PF=cfg.l2pf, num_warps=cfg.num_warps,
                           num_stages=cfg.num_stages, **extra)
    elif cfg.method == "dot":
        grid = (cdiv(m, cfg.BM) * cdiv(n, cfg.BN), split)
        _dot_kernel[grid](xr, *common, m, n, groups, nblk, xr.stride(0), n, stride_os, tiles_per_split,
                          BITS=bits, BLOCK=block, BM=cfg.BM, BN=cfg.BN, G=cfg.G, A=a, F=f, SPLIT_K=split,
                          UPCAST=interpreting(), IEEE=xr.dtype == torch.float32, MODE=mode,
                          MASKED=masked, MASK_M=bool(m % cfg.BM), UNROLL=unroll,
                          num_warps=cfg.num_warps, num_stages=cfg.num_stages)
    else:
        raise ValueError(f"method must be 'auto', 'gemv', 'gemv2', 'gemvt', 'dot', 'dot2', 'slab' or 'gemv8', got "
                         f"{cfg.method!r}")
    if split > 1:
        rb = 1024
        _splitk_reduce_kernel[(cdiv(m * n, rb),)](dst, out, m * n, SPLIT_K=split, BLOCK=rb, num_warps=4)
    return out


# M = 1, K = 4096, where gemvt is the default: the rotation inside the kernel (``gemvt._x6_rot``) instead of a
# separate fwht pass. H100, graph timing, S15-8 (us, fwht + GEMV / fused; cuBLAS bf16 in the same run): 4 bits 4096^2
# 9.33 / 8.28, 24576 x 4096 25.69 / 22.46, 2048 x 4096 7.03 / 5.46; 3 bits 8192 x 4096 12.24 / 11.10, 24576 x 4096
# 23.75 / 22.13; 5 bits 24576 x 4096 30.01 / 28.09; with PDL, 5 bits 8192 x 4096 14.15 / 11.00. At K = 12288 the
# kernel rotates x again for every (row tile, K slice) step: 4096 x 12288, 4 bits 19.18 / 24.39, so K = 4096 only.
FUSED_ROTATION = True
FUSED_ROTATION_K = 4096


def rotate_activations(x2: torch.Tensor, k: int, kp: int, block: int, trigger: bool = False) -> torch.Tensor:
    """fwht(pad(x)) as a separate pass (kept in x's dtype, as the tests' plain-PyTorch rival does). ``trigger``
    (only where ``pdl_supported``; the caller checks): the fwht kernel lets the next kernel, launched with PDL, start
    at once."""
    if kp != k:
        x2 = F.pad(x2, (0, kp - k))
    if trigger and block <= MAX_TRITON_BLOCK:
        return fwht_triton_method(x2, block, "auto", trigger=True)
    return fwht(x2, block=block, impl="triton" if block <= MAX_TRITON_BLOCK else "reference")


def dequant_matmul_triton_method(x: torch.Tensor, w: HLWQWeight, x_rotated: bool, out_dtype: torch.dtype,
                                 method: str = "auto", config: Config | None = None, pdl: bool = False) -> torch.Tensor:
    """Direct launcher (no custom op) with a forced ``method`` / ``config``, for tests and tuning; ``pdl``: see
    ``dequant_matmul_rotated`` (with the rotation, its fwht kernel lets the GEMV start at once)."""
    n, k = w.shape
    kp = w.padded_in_features
    lead = x.shape[:-1]
    x2 = x.reshape(-1, x.shape[-1])
    pdl = pdl and pdl_supported(x.device)
    if (not x_rotated and FUSED_ROTATION and k == kp == FUSED_ROTATION_K and config is None and method == "auto"
            and x2.shape[0] == 1):
        y = _try_gemvt(x2.contiguous(), w, out_dtype, False, pdl, rotated=False)
        if y is not None:
            return y.reshape(*lead, n)
    if not x_rotated:
        x2 = rotate_activations(x2, k, kp, w.block, trigger=pdl)
    return dequant_matmul_rotated(x2, w, out_dtype, method, config, pdl).reshape(*lead, n)


# ----------------------------------------------------------------------------------------------
# torch.library registration: opaque to torch.compile, capturable in CUDA graphs (no host syncs)
# ----------------------------------------------------------------------------------------------
@torch.library.custom_op("hlwq::dequant_matmul", mutates_args=())
def _dequant_matmul_op(x: torch.Tensor, packed: torch.Tensor, norms: torch.Tensor, codebook: torch.Tensor,
                       bits: int, block: int, n: int, k: int, x_rotated: bool,
                       out_dtype: torch.dtype, pdl: bool = False) -> torch.Tensor:
    w = HLWQWeight(packed, norms, codebook, bits, block, (n, k))
    return dequant_matmul_triton_method(x, w, x_rotated, out_dtype, pdl=pdl)


@_dequant_matmul_op.register_fake
def _(x, packed, norms, codebook, bits, block, n, k, x_rotated, out_dtype, pdl=False):
    return x.new_empty((x.shape[0], n), dtype=out_dtype)


def dequant_matmul_triton(x: torch.Tensor, w: HLWQWeight, x_rotated: bool, out_dtype: torch.dtype,
                          pdl: bool = False) -> torch.Tensor:
    """Launcher (the arguments of ``dequant_matmul_reference``, plus ``pdl``: see ``dequant_matmul_rotated``),
    through ``hlwq::dequant_matmul``."""
    n, k = w.shape
    lead = x.shape[:-1]
    y = torch.ops.hlwq.dequant_matmul(x.reshape(-1, x.shape[-1]), w.packed, w.norms, w.codebook, w.bits,
                                      w.block, n, k, x_rotated, out_dtype, pdl)
    return y.reshape(*lead, n)

"""Decode attention over the packed 2/3-bit KV cache, written in Gluon (Triton's explicit-layout
dialect) so that the decoded codes land directly in the wgmma A-operand registers.

Why. The Triton kernel (``triton.py``) decodes a tile of codes into a blocked register layout,
then Triton moves it into the tensor-core operand layout through shared memory (store, barrier,
``ldmatrix``, barrier before the next part): 16 of the ~19 barriers per 64-token tile, and the
loop ran at ~40% of the issue rate (``.notes/kv.md``). Here the code words are *loaded* in a
layout chosen so that, after the ``prmt`` lookup of ``lut.py`` (16 fp16 levels per word, as 8
fp16x2 registers), every register already is the A-fragment register wgmma expects: the layout
conversion is asserted trivial at compile time (``assert_trivial``). 4 barriers per tile remain.

Orientation (decode: at most 4 query rows per KV head, padded to 8 MMA columns, the smallest wgmma N):
* scores ``s^T [64 keys, 8] = levels_K [64 keys, 256] @ q^T [256, 8]``: A = decoded keys from
  registers, B = the rotated q in shared memory (stored once per program);
* ``o^T [256, 8] += levels_V^T [256, 64 keys] @ (p * n_v)^T [64 keys, 8]``: A = decoded values
  from registers (4 m-tiles of 64 coordinates), B = the weights p in shared memory (one store per
  tile). The softmax denominator is kept per key and summed once after the loop.

Register layouts (wgmma m64nNk16, fp16 A in registers; lane = 4 g + t, warp w): A-fragment register
(a, b, e) of k-block kk holds row ``16 w + g + 8 a`` and column ``16 kk + 8 b + 2 t + e``.
* Keys: row = key, column = coordinate. One 2-bit-plane word (16 codes) per lane and row fills
  the thread's 16 columns of a 64-coordinate part: word ``4 part + t``; its 8 fp16x2 outputs are
  the registers (kk, b), the two halves e. So the word tensor [64 keys, 4 words] is loaded with
  lanes = (t, g), warps = key bits 4-5, a register = key bit 3.
* Values (transposed: row = coordinate, column = key): a register pairs keys 2j, 2j + 1 at one
  coordinate, so the lookup's input word is *synthesized* from two keys' words: the even nibbles
  (s = 0) or odd nibbles (s = 1) of key 2j's word interleaved with the same nibbles of key 2j + 1's
  (two shifts and one ``lop3`` per 16 codes, the same for the 16 high bits). Lane (g) and warp (w)
  pick the word (``(8 w + g) >> 1``) and nibble half (``g & 1``); the 8 outputs are the 4 m-tiles x
  the two rows a.
The kernel's coordinate order is thus a permutation of the stored one, a permutation of the index
*bits* (``k_coord`` / ``v_coord`` below), which the orthonormal Walsh-Hadamard matrix commutes
with: q is loaded with permuted columns and then rotated; the output is rotated in the kernel's
order and stored at the permuted columns, so ``_merge_kernel`` merges column chunks of natural rows.

Loads run ahead (ncu showed the loop bound by global-memory latency, "long scoreboard"): a tile's
value words and norms are loaded at its start, key part p + 1 before part p is decoded, the next
tile's part 0 during the last part. Offsets are built as a per-thread part plus per-register
constants, so each thread keeps one base pointer and the loads take immediate offsets. 128
registers, 4 programs per SM; sm_90 SASS of the mask-free loop: 826 instructions per 64-key tile
at 3 bits, 615 at 2 bits (the Triton default tile: 911 / 767), 4 barriers (19).

The int8 kernel (``split_kernel(int8=True)``, the default for the default 2/3-bit codebooks): the
same structure on s8 wgmma (m64n8k32), where one ``prmt`` turns 4 codes into 4 int8 levels (one
A-fragment register), since those codebooks lie on an integer grid (``codebooks.int8_table``: levels
``k / alpha``, |k| <= 127). q and the softmax weights p are split into two int8 planes each, hi and
lo / 254 (~15 bits), which occupy the MMA's column pairs (2 j, 2 j + 1) for query row j: with <= 4 rows
the 8 columns were half empty anyway. The value norm is folded into the exponent (weights
``p * n_v = exp2(s + log2 n_v - m)`` <= 1 with m the running maximum of that sum), so the tile's largest
weight per row comes from the max reduction already done, and p is quantized against it; each value
m-tile's int32 MMA result is scaled into an fp32 accumulator per tile. The values' A operand needs 4
keys per register: ``lut.V8_PROGRAMS`` transposes 4 keys' words into selectors with byte gathers.
sm_90 SASS of the mask-free loop: 603 instructions per tile at 3 bits, 414 at 2 (fp16: 826 / 615). Unlike the
fp16 kernel it loads q and stores its partials in stored column order (16-byte accesses), rotates them in an order
whose layout relabels into the kernel's (``_kernel_order`` / ``_stored_order``: reshapes of the column bits), and
rotates each of the <= 4 rows once (session 10: prologue 833 -> 583 instructions, epilogue 426 -> 266).
Measured against the fp32 reference it is also more accurate than the fp16 kernels (q in fp16 there).

The TMA ring (``tma=True``; the default at 3 bits when a program covers >= ``TMA_MIN_CHUNK`` keys): instead of
register loads running ahead, the TMA unit copies each tile's key and value rows into a 2-slot shared-memory ring
one tile ahead (the 24-word 3-bit rows as 32-word boxes whose last 8 words TMA fills with zeros; 128-byte
swizzle, so the loads' 8 rows x 16 bytes per warp hit distinct banks: unswizzled they were 8-way conflicts and
the kernel 18% slower). The loads no longer wait on DRAM, but Triton adds barriers around each copy and the
issue costs ~70 instructions per tile (677 vs 603 at 3 bits); measured 1.4-3.4% faster at 128k, slower at 32k
and at 2 bits. This loop also loads the next tile's norms a tile ahead (session 9: they had been its largest
stall), which made it ~4% faster at 128k and 3% faster than the register loads at 8 x 8k. Keys past a program's
range are whatever the cache holds there (or TMA's zeros) instead of 0: they weigh exactly 0 either way, so the
output is bit-identical to the register path (tested).

This module imports Gluon lazily (``split_kernel()``); Triton's interpreter cannot run Gluon, so
this is the GPU path only: the interpreter and the CPU tests run ``triton.py``. The CPU tests
(``tests/test_kv_gluon.py``) check the coordinate maps and replay the kernel's tensor algebra with
the lookup's PTX executed by ``lut.emulate``; the GPU tests compare the compiled kernel with the
reference.
"""

from __future__ import annotations

import functools

import torch

from .lut import PACKED_PAIRS

# Lookup-output pairs (the fields of each fp16x2 output register of the packed lookup): register i holds
# fields (4 (i & 1) + ((i >> 1) & 1) + 8 (i >> 2)) + {0, 2}
PAIRS = PACKED_PAIRS


def k_coord(c: int) -> int:
    """Stored coordinate (0..255) of the keys' kernel coordinate c: part p = c >> 6, within the part
    32 i2 + 16 i1 + 8 i0 + 2 t + e -> word 4 p + t, field PAIRS[i][e] (i = 4 i2 + 2 i1 + i0)."""
    p, r = c >> 6, c & 63
    i = (r >> 3) & 7
    t = (r >> 1) & 3
    e = r & 1
    return 16 * (4 * p + t) + PAIRS[i][e]


def v_coord(c: int) -> int:
    """Stored coordinate of the values' kernel coordinate c = 64 mt + 16 w + 8 a + g (m-tile mt,
    A-fragment row 16 w + 8 a + g): lane/warp word-half qv = 8 w + g (word qv >> 1, nibble half
    s = qv & 1), output register i = 2 mt + a, whose first field PAIRS[i][0] = 4 m + j sits in the
    synthesized word's nibble 2 m (from the stored nibble 2 m + s): field 4 m + 2 s + j."""
    mt, r = c >> 6, c & 63
    w, a, g = r >> 4, (r >> 3) & 1, r & 7
    qv = 8 * w + g
    i = 2 * mt + a
    f0 = PAIRS[i][0]
    m, j = f0 >> 2, f0 & 1
    return 16 * (qv >> 1) + 4 * m + 2 * (qv & 1) + j


_PERMS: dict = {}


def perms(device) -> tuple[torch.Tensor, torch.Tensor]:
    """(k_coord, v_coord) of every kernel coordinate as int32 tensors [256] on ``device``, computed there
    from the index bits (no host-to-device copy, so a first call inside a CUDA graph capture is fine);
    cached per device."""
    key = str(device)
    if key not in _PERMS:
        c = torch.arange(256, device=device, dtype=torch.int32)
        e, t, i0, i1, i2, p = c & 1, (c >> 1) & 3, (c >> 3) & 1, (c >> 4) & 1, (c >> 5) & 1, c >> 6
        kc = 64 * p + 16 * t + 8 * i2 + 4 * i0 + 2 * e + i1  # 16 (4 p + t) + PAIRS[4 i2 + 2 i1 + i0][e]
        g, a, w, mt = c & 7, (c >> 3) & 1, (c >> 4) & 3, c >> 6
        vc = 16 * (4 * w + (g >> 1)) + 8 * (mt >> 1) + 4 * a + 2 * (g & 1) + (mt & 1)
        _PERMS[key] = (kc.contiguous(), vc.contiguous())
    return _PERMS[key]


def k_coord8(c: int) -> int:
    """The int8 kernel's keys: stored coordinate of kernel coordinate c = 64 p + 32 g1 + 16 g0 + 4 t + e
    (A-fragment column of s8 wgmma: byte e of register (g0, g1), lane t): word 4 p + t, field
    lut.KEY_GROUPS[g0 + 2 g1][e] = 2 e + g0 + 8 g1."""
    p, r = c >> 6, c & 63
    e, t, g0, g1 = r & 3, (r >> 2) & 3, (r >> 4) & 1, (r >> 5) & 1
    return 64 * p + 16 * t + 2 * e + g0 + 8 * g1


def v_coord8(c: int) -> int:
    """The int8 kernel's values: stored coordinate of kernel coordinate c = 64 mt + 16 w + 8 a + g (m-tile
    mt, A-fragment row): word-half qv = 8 w + g (word qv >> 1, nibble half s = g & 1), lookup output
    2 mt + a = field 4 mt + 2 s + a."""
    mt, w, a, g = c >> 6, (c >> 4) & 3, (c >> 3) & 1, c & 7
    return 16 * (4 * w + (g >> 1)) + 4 * mt + 2 * (g & 1) + a


def _build_kernel():
    """Define the Gluon kernel (on first use: importing Gluon needs a GPU build of Triton)."""
    from triton.experimental import gluon
    from triton.experimental.gluon import language as gl
    from triton.experimental.gluon.language.nvidia.hopper import (fence_async_shared, mbarrier, tma, warpgroup_mma,
                                                                   warpgroup_mma_wait)

    from . import lut
    from .triton import LUT_CONSTRAINTS_PACKED, LUT_PTX_RAW

    K8_PTX2 = gl.constexpr(lut.K8_PTX[2])
    K8_PTX3 = gl.constexpr(lut.K8_PTX[3])
    V8_PTX2 = gl.constexpr(lut.V8_PTX[2])
    V8_PTX3 = gl.constexpr(lut.V8_PTX[3])
    K8_CONSTRAINTS = gl.constexpr(lut.K8_CONSTRAINTS)
    V8_CONSTRAINTS = gl.constexpr(lut.V8_CONSTRAINTS)

    @gluon.jit
    def _fwht_stage(x, s: gl.constexpr, ROWS: gl.constexpr, D: gl.constexpr):
        """Butterfly stage s of ``quantize_kv.triton.fwht_tile``, written again because a Gluon kernel cannot
        call ``triton.jit`` functions; Gluon's ``split`` also needs the paired bit in registers (``_fwht8x256``)."""
        x = gl.reshape(x, [ROWS, D // (2 << s), 2, 1 << s])
        a, b = gl.split(gl.permute(x, [0, 1, 3, 2]))
        x = gl.permute(gl.join(a + b, a - b), [0, 1, 3, 2])
        return gl.reshape(x, [ROWS, D])

    @gluon.jit
    def _fwht8x256(x):
        """Unnormalized Walsh-Hadamard transform of the rows of an fp32 [8, 256] tile: column bits 0-3 in
        registers for the first 4 butterfly stages, bits 4-7 for the last 4 (``split`` pairs elements
        within a thread), one layout conversion between."""
        LA: gl.constexpr = gl.DistributedLinearLayout(
            reg_bases=[[0, 1], [0, 2], [0, 4], [0, 8]], lane_bases=[[0, 16], [0, 32], [0, 64], [0, 128], [1, 0]],
            warp_bases=[[2, 0], [4, 0]], block_bases=[], shape=[8, 256])
        LB: gl.constexpr = gl.DistributedLinearLayout(
            reg_bases=[[0, 16], [0, 32], [0, 64], [0, 128]], lane_bases=[[0, 1], [0, 2], [0, 4], [0, 8], [1, 0]],
            warp_bases=[[2, 0], [4, 0]], block_bases=[], shape=[8, 256])
        x = gl.convert_layout(x, LA)
        for s in gl.static_range(4):
            x = _fwht_stage(x, s, 8, 256)
        x = gl.convert_layout(x, LB)
        for s in gl.static_range(4, 8):
            x = _fwht_stage(x, s, 8, 256)
        return x

    @gluon.jit
    def _butterflies4(x, L: gl.constexpr, s0: gl.constexpr, s1: gl.constexpr, s2: gl.constexpr = -1):
        """Butterfly stages s0, s1 (and s2 if >= 0) of a [4, 256] tile, after a conversion to layout L (None: the
        tile's own layout, which must already hold those column bits in registers)."""
        if L is not None:
            x = gl.convert_layout(x, L)
        x = _fwht_stage(x, s0, 4, 256)
        x = _fwht_stage(x, s1, 4, 256)
        if s2 >= 0:
            x = _fwht_stage(x, s2, 4, 256)
        return x

    def _rows4(*reg_bits):
        """A [4, 256] layout for the 4-row transforms below: the given column bits in registers (8 values per
        thread, in that order), the other five column bits on the lanes (ascending), the rows on the warps."""
        lanes = [b for b in range(8) if b not in reg_bits]
        return gl.constexpr(gl.DistributedLinearLayout(
            reg_bases=[[0, 1 << b] for b in reg_bits], lane_bases=[[0, 1 << b] for b in lanes],
            warp_bases=[[1, 0], [2, 0]], block_bases=[], shape=[4, 256]))

    # named by their register column bits
    R012 = _rows4(0, 1, 2)
    R124 = _rows4(1, 2, 4)
    R503 = _rows4(5, 0, 3)
    R670 = _rows4(6, 7, 0)
    R305 = _rows4(3, 0, 5)

    @gluon.jit
    def _fwht4x256_nat(x):
        """The Walsh-Hadamard transform of q's 4 rows [4, 256] in stored column order: the butterflies of column bits
        1, 2, 4, then 5, 0, 3, then 6, 7, each group in registers (the stages commute; only the fp32 rounding order of
        the sums differs). The output's column bits 6 and 7 are registers, as ``_q_smem`` needs after
        ``_kernel_order`` (which leaves them in place)."""
        x = _butterflies4(x, R124, 1, 2, 4)
        x = _butterflies4(x, R503, 5, 0, 3)
        return _butterflies4(x, R670, 6, 7)

    @gluon.jit
    def _fwht4x256_out(x):
        """The Walsh-Hadamard transform of the output tile [4 rows, 256] in the value kernel order, as it comes from the
        accumulators (column bits 3, 6, 7 in registers: those butterflies first, no conversion), then bits 1, 2, 4, then
        5 and 0 in a layout whose registers, relabelled by ``_stored_order``, are 4 consecutive stored columns (bits 3
        and 0 become stored bits 0 and 1), so that the stores are 16 bytes wide."""
        x = _butterflies4(x, None, 3, 6, 7)
        x = _butterflies4(x, R124, 1, 2, 4)
        return _butterflies4(x, R305, 5, 0)

    @gluon.jit
    def _kernel_order(x):
        """[R, 256] in stored column order -> the int8 kernel's key order: column c of the result is column
        ``k_coord8(c)`` of x (a relabelling of the column bits, no data movement: reshape / permute)."""
        R: gl.constexpr = x.shape[0]
        x = gl.reshape(x, [R, 2, 2, 2, 2, 2, 2, 2, 2])  # axis 8 - k = column bit k
        return gl.reshape(gl.permute(x, [0, 1, 2, 5, 8, 3, 4, 6, 7]), [R, 256])

    @gluon.jit
    def _stored_order(x):
        """[R, 256] in the int8 kernel's value order -> stored column order: column ``v_coord8(c)`` of the result is
        column c of x (the inverse kind of ``_kernel_order``, for the output)."""
        R: gl.constexpr = x.shape[0]
        x = gl.reshape(x, [R, 2, 2, 2, 2, 2, 2, 2, 2])
        return gl.reshape(gl.permute(x, [0, 3, 4, 6, 7, 1, 2, 8, 5]), [R, 256])

    @gluon.jit
    def _lookup(w, h, lut, JL: gl.constexpr):
        """8 fp16x2 outputs (PAIRS) of words w with raw high halves h (uint32, same layout); lut: the 4
        byte-table words. JL: the layout of join(w, h) with the joined dimension as the *first* register
        basis, so that pack=2 hands the asm (w, h) pairs (join's inferred layout may put it last)."""
        wh = gl.convert_layout(gl.join(w, h), JL, assert_trivial=True)
        p0, p1, p2, p3, p4, p5, p6, p7 = gl.inline_asm_elementwise(
            LUT_PTX_RAW, LUT_CONSTRAINTS_PACKED, [wh, lut[0], lut[1], lut[2], lut[3]],
            dtype=(gl.int16, gl.int16, gl.int16, gl.int16, gl.int16, gl.int16, gl.int16, gl.int16),
            is_pure=True, pack=2)
        return (p0.to(gl.float16, bitcast=True), p1.to(gl.float16, bitcast=True),
                p2.to(gl.float16, bitcast=True), p3.to(gl.float16, bitcast=True),
                p4.to(gl.float16, bitcast=True), p5.to(gl.float16, bitcast=True),
                p6.to(gl.float16, bitcast=True), p7.to(gl.float16, bitcast=True))

    @gluon.jit
    def _aranges4(N0: gl.constexpr, N1: gl.constexpr, N2: gl.constexpr, N3: gl.constexpr, L: gl.constexpr):
        """The index along each dimension of an [N0, N1, N2, N3] tensor of layout L, each broadcastable to it."""
        i0 = gl.arange(0, N0, layout=gl.SliceLayout(1, gl.SliceLayout(2, gl.SliceLayout(3, L))))[:, None, None, None]
        i1 = gl.arange(0, N1, layout=gl.SliceLayout(0, gl.SliceLayout(2, gl.SliceLayout(3, L))))[None, :, None, None]
        i2 = gl.arange(0, N2, layout=gl.SliceLayout(0, gl.SliceLayout(1, gl.SliceLayout(3, L))))[None, None, :, None]
        i3 = gl.arange(0, N3, layout=gl.SliceLayout(0, gl.SliceLayout(1, gl.SliceLayout(2, L))))[None, None, None, :]
        return i0, i1, i2, i3

    @gluon.jit
    def _vtile(pa, pb, DOT_A: gl.constexpr):
        """One m-tile's A operand [64 coordinates, 32 keys] from its two lookup outputs (registers 2 mt, 2 mt + 1):
        [pairs, qv, e, a] -> rows 16 w + 8 a + g (qv = 8 w + g), keys 2 pair + e. A register renaming only."""
        t = gl.permute(gl.reshape(gl.join(pa, pb), [16, 4, 8, 2, 2]), [1, 4, 2, 0, 3])
        return gl.convert_layout(gl.reshape(t, [64, 32]), DOT_A, assert_trivial=True)

    @gluon.jit
    def _kwords(kb, hb, koff, kcst, hoff, ok, part: gl.constexpr, BITS: gl.constexpr, MASKED: gl.constexpr):
        """Part ``part`` of a key tile: the 2-bit-plane words and (3 bits) the 1-bit plane's 16-bit halves."""
        if MASKED:
            w = gl.load((kb + koff) + (kcst + 4 * part), mask=ok, other=0)
        else:
            w = gl.load((kb + koff) + (kcst + 4 * part))
        if BITS == 3:
            if MASKED:
                h = gl.load((hb + hoff) + (2 * kcst + 4 * part), mask=ok, other=0)
            else:
                h = gl.load((hb + hoff) + (2 * kcst + 4 * part))
        else:
            h = w
        return w, h

    @gluon.jit
    def _vwords(vb, yb, voff, yoff, vcst, ok, BITS: gl.constexpr, MASKED: gl.constexpr):
        """Half a value tile: the words (and 3 bits: the high halves) each thread's word-half comes from."""
        if MASKED:
            x = gl.load((vb + voff) + vcst, mask=ok, other=0)
        else:
            x = gl.load((vb + voff) + vcst)
        if BITS == 3:
            if MASKED:
                y = gl.load((yb + yoff) + 2 * vcst, mask=ok, other=0)
            else:
                y = gl.load((yb + yoff) + 2 * vcst)
        else:
            y = x
        return x, y

    @gluon.jit
    def _program_range(lens_ptr, start_ptr, s_lens, s_start, Hkv, L, chunk, HAS_START: gl.constexpr):
        """This program's (batch x KV head, split): bh, split, b, hk, kv_len and its key range [lo, hi)."""
        bh = gl.program_id(1).to(gl.int64)
        split = gl.program_id(2)
        b = bh // Hkv
        hk = bh % Hkv
        kv_len = gl.load(lens_ptr + b * s_lens).to(gl.int32)
        lo = split * chunk
        hi = gl.minimum(gl.minimum(lo + chunk, kv_len), L)  # L: never read past the cache
        if HAS_START:
            lo = gl.maximum(lo, gl.load(start_ptr + b * s_start).to(gl.int32))
        return bh, split, b, hk, kv_len, lo, hi

    @gluon.jit
    def _key_offsets(SKL: gl.constexpr, NW2: gl.constexpr):
        """Word offsets (int32 words of the cache row / int16 halves) of a tile's keys [64 keys, 4 words] (key
        16 a + 8 b + c, word d), built in 4-D layouts whose register dimensions only hold constants, so each
        thread has one base and immediate offsets: (key index, per-thread word offset, per-register constant,
        per-thread high-half offset)."""
        LK4: gl.constexpr = gl.DistributedLinearLayout(
            reg_bases=[[0, 1, 0, 0]], lane_bases=[[0, 0, 0, 1], [0, 0, 0, 2], [0, 0, 1, 0], [0, 0, 2, 0], [0, 0, 4, 0]],
            warp_bases=[[1, 0, 0, 0], [2, 0, 0, 0]], block_bases=[], shape=[4, 2, 8, 4])
        ka, kb_, kc_, kd = _aranges4(4, 2, 8, 4, LK4)
        # (each offset = a per-thread part + a per-register constant, added as two pointer steps so that LLVM
        # folds the constants into the loads' immediate offsets instead of keeping one pointer per element)
        kr = gl.reshape(16 * ka + 8 * kb_ + kc_ + 0 * kd, [64, 4])
        koff = gl.reshape((16 * ka + kc_) * SKL + kd + 0 * kb_, [64, 4])
        kcst = gl.reshape(8 * kb_ * SKL + 0 * (ka + kc_ + kd), [64, 4])
        hoff = gl.reshape((16 * ka + kc_) * (2 * SKL) + (2 * NW2 + kd) + 0 * kb_, [64, 4])
        return kr, koff, kcst, hoff

    @gluon.jit
    def _tile_bases(k_base, v_base, n0, SKL: gl.constexpr, SVL: gl.constexpr):
        """Tile n0's key / value rows: as int32 words (kb, vb) and as int16 halves (hb, yb, for the 1-bit plane)."""
        kb = k_base + n0 * SKL
        hb = k_base.to(gl.pointer_type(gl.int16)) + n0 * (2 * SKL)
        vb = v_base + n0 * SVL
        yb = v_base.to(gl.pointer_type(gl.int16)) + n0 * (2 * SVL)
        return kb, hb, vb, yb

    @gluon.jit
    def _qpart_mma(kc, qs0, qs1, qs2, qs3, s, part: gl.constexpr, USE_ACC: gl.constexpr, IS_ASYNC: gl.constexpr):
        """The scores' MMA of key part ``part``: s (+)= kc @ q part^T (q's 4 parts in shared memory)."""
        gl.static_assert(part < 4)  # (also puts gl in this closure, which the annotations need)
        if part == 0:
            qs = qs0
        elif part == 1:
            qs = qs1
        elif part == 2:
            qs = qs2
        else:
            qs = qs3
        return warpgroup_mma(kc, qs.permute((1, 0)), s, use_acc=USE_ACC, is_async=IS_ASYNC)

    @gluon.jit
    def _norms(kn_base, vn_base, n0, hi, LT: gl.constexpr, SNKL: gl.constexpr, SNVL: gl.constexpr,
               MASKED: gl.constexpr):
        """The tile's key positions ``ts`` (layout LT), which are < hi, and their key and value norms (fp32; 0
        past hi when MASKED)."""
        ts = n0 + gl.arange(0, 64, layout=LT)
        oks = ts < hi
        if MASKED:
            kn = gl.load(kn_base + ts * SNKL, mask=oks, other=0.0).to(gl.float32)
            vn = gl.load(vn_base + ts * SNVL, mask=oks, other=0.0).to(gl.float32)
        else:
            kn = gl.load(kn_base + ts * SNKL).to(gl.float32)
            vn = gl.load(vn_base + ts * SNVL).to(gl.float32)
        return ts, oks, kn, vn

    @gluon.jit
    def _norms16(kn_base, vn_base, ts, hi, SNKL: gl.constexpr, SNVL: gl.constexpr):
        """(int8 kernel) The key and value norms (fp16) at key positions ``ts``, 0 from ``hi`` on."""
        ok = ts < hi
        kn = gl.load(kn_base + ts * SNKL, mask=ok, other=0.0)
        vn = gl.load(vn_base + ts * SNVL, mask=ok, other=0.0)
        return kn, vn

    @gluon.jit
    def _q_smem(q, NQ: gl.constexpr, LAYOUT: gl.constexpr):
        """q [NQ, 256] (kernel coordinate order; column bits 6-7 in registers) -> its 4 parts of 64 columns in
        shared memory (the MMAs' B operands), in q's dtype."""
        q4 = gl.permute(gl.reshape(q, [NQ, 4, 64]), [0, 2, 1])
        qa, qb = gl.split(gl.reshape(q4, [NQ, 64, 2, 2]))
        q0, q2 = gl.split(qa)
        q1, q3 = gl.split(qb)
        return (gl.allocate_shared_memory(q.dtype, [NQ, 64], LAYOUT, q0),
                gl.allocate_shared_memory(q.dtype, [NQ, 64], LAYOUT, q1),
                gl.allocate_shared_memory(q.dtype, [NQ, 64], LAYOUT, q2),
                gl.allocate_shared_memory(q.dtype, [NQ, 64], LAYOUT, q3))

    @gluon.jit
    def _tile(n0, hi, pos, m_i, l_acc, o0, o1, o2, o3, qs0, qs1, qs2, qs3, p_smem, k_base, v_base, koff, kcst, hoff,
              voff, yoff, vcst,
              kn_base, vn_base, kr, vr, lut, wsh0, wsh1, hsh0, hsh1,
              SKL: gl.constexpr, SVL: gl.constexpr, SNKL: gl.constexpr, SNVL: gl.constexpr,
              w0, h0, BITS: gl.constexpr, CAUSAL: gl.constexpr, MASKED: gl.constexpr):
        """One 64-key tile: scores, online softmax (denominator per key), values. MASKED = False: the
        caller guarantees every key of the tile is < hi and visible to every query column.
        Loads run ahead of their use (the loop is otherwise bound by global-memory latency, ncu's
        long-scoreboard stall): w0 / h0 are this tile's part-0 key words, loaded during the previous
        tile (returned for the next tile, masked by hi); the value words of the tile are loaded at its
        start, and key part p + 1 before part p is decoded."""
        BN: gl.constexpr = 64
        NQ: gl.constexpr = 8  # MMA columns: the <= 4 query rows, padded (wgmma N >= 8)
        NW2: gl.constexpr = 16
        MMA: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[4, 1], instr_shape=[16, NQ, 16])
        DOT_A: gl.constexpr = gl.DotOperandLayout(operand_index=0, parent=MMA, k_width=2)
        # join(words, high halves) of keys [64 keys, 4 words, 2] and of value pairs [16 pairs, 32 qv, 2]
        KJ: gl.constexpr = gl.DistributedLinearLayout(
            reg_bases=[[0, 0, 1], [8, 0, 0]], lane_bases=[[0, 1, 0], [0, 2, 0], [1, 0, 0], [2, 0, 0], [4, 0, 0]],
            warp_bases=[[16, 0, 0], [32, 0, 0]], block_bases=[], shape=[BN, 4, 2])
        VJ: gl.constexpr = gl.DistributedLinearLayout(
            reg_bases=[[0, 0, 1], [4, 0, 0], [8, 0, 0]],
            lane_bases=[[1, 0, 0], [2, 0, 0], [0, 1, 0], [0, 2, 0], [0, 4, 0]],
            warp_bases=[[0, 8, 0], [0, 16, 0]], block_bases=[], shape=[BN // 4, 32, 2])
        # ---- loads: the tile's value words and norms now, key parts one ahead
        okk = n0 + kr < hi
        kb, hb, vb, yb = _tile_bases(k_base, v_base, n0, SKL, SVL)
        okv0 = n0 + vr < hi
        okv1 = n0 + 32 + vr < hi
        x0w, y0w = _vwords(vb, yb, voff, yoff, vcst, okv0, BITS, MASKED)
        ts, oks, kn, vn = _norms(kn_base, vn_base, n0, hi, gl.SliceLayout(1, MMA), SNKL, SNVL, MASKED)
        # ---- scores: 4 parts of 64 coordinates
        s = gl.zeros([BN, NQ], gl.float32, layout=MMA)
        w = w0
        h = h0
        for part in gl.static_range(4):
            if part == 3:  # the second value half, later (fewer registers live at once: at 128 registers this
                # leaves the lookup tables in vector registers, 826 instead of 964 instructions per tile at 3 bits)
                x1w, y1w = _vwords(vb + 32 * SVL, yb + 64 * SVL, voff, yoff, vcst, okv1, BITS, MASKED)
            if part < 3:
                wn, hn = _kwords(kb, hb, koff, kcst, hoff, okk, part + 1, BITS, MASKED)
            else:  # the next tile's part 0 (masked: it may lie past hi)
                wn, hn = _kwords(kb + BN * SKL, hb + 2 * BN * SKL, koff, kcst, hoff, n0 + BN + kr < hi, 0, BITS, True)
            w = w.to(gl.uint32, bitcast=True)
            if BITS == 3:
                h = h.to(gl.uint16, bitcast=True).to(gl.uint32)
            else:
                h = w * 0
            p0, p1, p2, p3, p4, p5, p6, p7 = _lookup(w, h, lut, KJ)
            jt = gl.join(gl.join(gl.join(p0, p1), gl.join(p2, p3)), gl.join(gl.join(p4, p5), gl.join(p6, p7)))
            kc = gl.reshape(gl.permute(jt, [0, 5, 4, 3, 1, 2]), [BN, 64])
            kc = gl.convert_layout(kc, DOT_A, assert_trivial=True)
            s = _qpart_mma(kc, qs0, qs1, qs2, qs3, s, part, True, False)
            w = wn
            h = hn
        # ---- softmax (log2 domain; the denominator per key and column, summed after the loop)
        if MASKED:
            valid = oks[:, None]
            if CAUSAL:
                valid = valid & (ts[:, None] <= pos[None, :])
            s = gl.where(valid, s * kn[:, None], float("-inf"))
            m_new = gl.maximum(m_i, gl.max(s, axis=0))
            m_safe = gl.where(m_new == float("-inf"), 0.0, m_new)
        else:
            s = s * kn[:, None]
            m_new = gl.maximum(m_i, gl.max(s, axis=0))  # finite: every score of the tile is
            m_safe = m_new
        alpha = gl.exp2(m_i - m_safe)  # m_i = -inf before the first tile: 0
        p = gl.exp2(s - m_safe[None, :])
        l_acc = l_acc * alpha[None, :] + p
        p_smem.store((p * vn[:, None]).to(gl.float16))
        fence_async_shared()
        o0 = o0 * alpha[None, :]
        o1 = o1 * alpha[None, :]
        o2 = o2 * alpha[None, :]
        o3 = o3 * alpha[None, :]
        # ---- values: two halves of 32 keys; each synthesized word feeds all 4 m-tiles
        for half in gl.static_range(2):
            if half == 0:
                x = x0w
                y = y0w
            else:
                x = x1w
                y = y1w
            x0, x1 = gl.split(gl.permute(gl.reshape(x.to(gl.uint32, bitcast=True), [BN // 4, 2, 32]), [0, 2, 1]))
            wsyn = ((x0 >> wsh0) & 0x0F0F0F0F) | ((x1 << wsh1) & 0xF0F0F0F0)
            if BITS == 3:
                y = y.to(gl.uint16, bitcast=True).to(gl.uint32)
                y0, y1 = gl.split(gl.permute(gl.reshape(y, [BN // 4, 2, 32]), [0, 2, 1]))
                hsyn = ((y0 >> hsh0) & 0x3333) | ((y1 << hsh1) & 0xCCCC)
            else:
                hsyn = wsyn * 0
            p0, p1, p2, p3, p4, p5, p6, p7 = _lookup(wsyn, hsyn, lut, VJ)
            pb = p_smem.slice(32 * half, 32, dim=0)
            # m-tile mt: registers i = 2 mt + a -> [pairs, qv, e, a] -> rows (w, a, g), keys (pair, e)
            o0 = warpgroup_mma(_vtile(p0, p1, DOT_A), pb, o0)
            o1 = warpgroup_mma(_vtile(p2, p3, DOT_A), pb, o1)
            o2 = warpgroup_mma(_vtile(p4, p5, DOT_A), pb, o2)
            o3 = warpgroup_mma(_vtile(p6, p7, DOT_A), pb, o3)
        return m_new, l_acc, o0, o1, o2, o3, w, h

    @gluon.jit
    def _split_kernel_g(q_ptr, kp_ptr, kn_ptr, vp_ptr, vn_ptr, lut_ptr, lens_ptr, start_ptr, kperm_ptr, vperm_ptr,
                        op_ptr, lse_ptr, s_lens, s_start, Hkv, G, Tq, n_rows, L, chunk, qscale, oscale,
                        sqb, sqh, sqt, skb, skh, snkb, snkh, svb, svh, snvb, snvh,
                        SKL: gl.constexpr, SVL: gl.constexpr, SNKL: gl.constexpr, SNVL: gl.constexpr,
                        BITS: gl.constexpr, CAUSAL: gl.constexpr, HAS_START: gl.constexpr):
        D: gl.constexpr = 256
        BN: gl.constexpr = 64
        NQ: gl.constexpr = 8  # MMA columns: the <= 4 query rows, padded (wgmma N >= 8)
        NW2: gl.constexpr = D // 16  # 2-bit-plane words per vector
        MMA: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[4, 1], instr_shape=[16, NQ, 16])
        # key words [64 keys, 4 words]: lanes (t = word, g = key bits 0-2), warps key bits 4-5, reg key bit 3
        LK: gl.constexpr = gl.DistributedLinearLayout(
            reg_bases=[[8, 0]], lane_bases=[[0, 1], [0, 2], [1, 0], [2, 0], [4, 0]],
            warp_bases=[[16, 0], [32, 0]], block_bases=[], shape=[BN, 4])
        # value words [32 keys, 32 word-halves] (half a tile): registers key bits 0, 3, 4; lanes key bits 1-2,
        # then qv bits 0-2 (g); warps qv bits 3-4 (w)
        LV: gl.constexpr = gl.DistributedLinearLayout(
            reg_bases=[[1, 0], [8, 0], [16, 0]], lane_bases=[[2, 0], [4, 0], [0, 1], [0, 2], [0, 4]],
            warp_bases=[[0, 8], [0, 16]], block_bases=[], shape=[BN // 2, 32])
        LQ: gl.constexpr = gl.BlockedLayout(size_per_thread=[1, 8], threads_per_warp=[2, 16], warps_per_cta=[4, 1],
                                            order=[1, 0])
        Q_SMEM: gl.constexpr = gl.NVMMASharedLayout.get_default_for([NQ, 64], gl.float16)
        P_SMEM: gl.constexpr = gl.NVMMASharedLayout.get_default_for([BN, NQ], gl.float16)

        bh, split, b, hk, kv_len, lo, hi = _program_range(lens_ptr, start_ptr, s_lens, s_start, Hkv, L, chunk,
                                                          HAS_START)

        # q: rows r < n_rows (r = t * G + g), columns in the keys' kernel order, rotated, scaled, fp16
        rq = gl.arange(0, NQ, layout=gl.SliceLayout(1, LQ))
        cq = gl.load(kperm_ptr + gl.arange(0, D, layout=gl.SliceLayout(0, LQ)))
        q = gl.load(q_ptr + b * sqb + (hk * G + rq % G)[:, None] * sqh + (rq // G)[:, None] * sqt + cq[None, :],
                    mask=(rq < n_rows)[:, None], other=0.0).to(gl.float32)
        q = (_fwht8x256(q) * qscale).to(gl.float16)
        qs0, qs1, qs2, qs3 = _q_smem(q, NQ, Q_SMEM)
        p_smem = gl.allocate_shared_memory(gl.float16, [BN, NQ], P_SMEM)
        fence_async_shared()

        k_base = kp_ptr + b * skb + hk * skh
        v_base = vp_ptr + b * svb + hk * svh
        kn_base = kn_ptr + b * snkb + hk * snkh
        vn_base = vn_ptr + b * snvb + hk * snvh
        kr, koff, kcst, hoff = _key_offsets(SKL, NW2)
        LV4: gl.constexpr = gl.DistributedLinearLayout(
            reg_bases=[[1, 0, 0, 0], [2, 0, 0, 0], [0, 0, 1, 0]],
            lane_bases=[[0, 1, 0, 0], [0, 2, 0, 0], [0, 0, 0, 1], [0, 0, 0, 2], [0, 0, 0, 4]],
            warp_bases=[[0, 0, 0, 8], [0, 0, 0, 16]], block_bases=[], shape=[4, 4, 2, 32])  # key 8 a + 2 b + c, qv d
        va, vb_, vc_, vd = _aranges4(4, 4, 2, 32, LV4)
        vkey4 = 8 * va + 2 * vb_ + vc_
        vr = gl.reshape(vkey4 + 0 * vd, [BN // 2, 32])
        voff = gl.reshape(2 * vb_ * SVL + (vd >> 1) + 0 * (va + vc_), [BN // 2, 32])
        yoff = gl.reshape(2 * vb_ * (2 * SVL) + (2 * NW2 + (vd >> 1)) + 0 * (va + vc_), [BN // 2, 32])
        vcst = gl.reshape((8 * va + vc_) * SVL + 0 * (vb_ + vd), [BN // 2, 32])
        lut = (gl.load(lut_ptr), gl.load(lut_ptr + 1), gl.load(lut_ptr + 2), gl.load(lut_ptr + 3))
        # value word shifts (nibble half s = qv & 1): key 2j: >> 4 s, key 2j + 1: << 4 (1 - s);
        # high bits: >> 2 s, << 2 (1 - s)
        # (built as [32, 32] and split like the words, so they get the split words' layout)
        vs = gl.reshape((vd & 1) + 0 * vkey4, [BN // 2, 32]).to(gl.uint32)
        vs, _ = gl.split(gl.permute(gl.reshape(vs, [BN // 4, 2, 32]), [0, 2, 1]))
        wsh0 = 4 * vs
        wsh1 = 4 - 4 * vs
        hsh0 = 2 * vs
        hsh1 = 2 - 2 * vs

        cols = gl.arange(0, NQ, layout=gl.SliceLayout(0, MMA))
        pos = kv_len - Tq + cols // G  # absolute position of each query column
        m_i = gl.full([NQ], float("-inf"), gl.float32, layout=gl.SliceLayout(0, MMA))
        l_acc = gl.zeros([BN, NQ], gl.float32, layout=MMA)
        o0 = gl.zeros([64, NQ], gl.float32, layout=MMA)
        o1 = gl.zeros([64, NQ], gl.float32, layout=MMA)
        o2 = gl.zeros([64, NQ], gl.float32, layout=MMA)
        o3 = gl.zeros([64, NQ], gl.float32, layout=MMA)

        # keys every query column sees (<= the first query's position): whole tiles of them without masks
        hi_free = gl.minimum(hi, kv_len - Tq + 1) if CAUSAL else hi
        n_free = lo + gl.maximum(hi_free - lo, 0) // BN * BN
        w0, h0 = _kwords(k_base + lo * SKL, k_base.to(gl.pointer_type(gl.int16)) + lo * (2 * SKL), koff, kcst, hoff,
                         lo + kr < hi, 0, BITS, True)
        for n0 in range(lo, n_free, BN):
            m_i, l_acc, o0, o1, o2, o3, w0, h0 = _tile(
                n0, hi, pos, m_i, l_acc, o0, o1, o2, o3, qs0, qs1, qs2, qs3, p_smem, k_base, v_base, koff, kcst, hoff,
                voff, yoff, vcst, kn_base, vn_base, kr, vr, lut, wsh0, wsh1, hsh0, hsh1, SKL, SVL, SNKL, SNVL,
                w0, h0, BITS, CAUSAL, False)
        for n0 in range(n_free, hi, BN):
            m_i, l_acc, o0, o1, o2, o3, w0, h0 = _tile(
                n0, hi, pos, m_i, l_acc, o0, o1, o2, o3, qs0, qs1, qs2, qs3, p_smem, k_base, v_base, koff, kcst, hoff,
                voff, yoff, vcst, kn_base, vn_base, kr, vr, lut, wsh0, wsh1, hsh0, hsh1, SKL, SVL, SNKL, SNVL,
                w0, h0, BITS, CAUSAL, True)

        # ---- epilogue: the normalized partial, rotated back (H commutes with the kernel's coordinate order),
        # stored at the stored coordinates in the natural basis, + log2-sum-exp; _merge_kernel merges columns
        l_i = gl.sum(l_acc, axis=0)
        l_safe = gl.where(l_i > 0.0, l_i, 1.0)
        lse = gl.where(l_i > 0.0, m_i + gl.log2(l_safe), float("-inf"))
        prow = (split * gl.num_programs(1) + bh) * n_rows + cols
        col_ok = cols < n_rows
        gl.store(lse_ptr + prow, lse, mask=col_ok)
        # [64 rows, 8 cols] x 4 m-tiles -> [8 cols, 256 kernel coordinates 64 mt + row]
        oa = gl.join(gl.join(o0 / l_safe[None, :], o1 / l_safe[None, :]),
                     gl.join(o2 / l_safe[None, :], o3 / l_safe[None, :]))
        o = gl.reshape(gl.permute(oa, [1, 3, 2, 0]), [NQ, D])
        o = gl.convert_layout(_fwht8x256(o) * oscale, LQ)
        rc = gl.arange(0, NQ, layout=gl.SliceLayout(1, LQ))
        vcol = gl.load(vperm_ptr + gl.arange(0, D, layout=gl.SliceLayout(0, LQ)))
        prq = (split * gl.num_programs(1) + bh) * n_rows + rc
        gl.store(op_ptr + prq[:, None] * D + vcol[None, :], o, mask=(rc < n_rows)[:, None])

    # ------------------------------------------------------------------------------------------------
    # The int8 kernel (s8 wgmma, m64n8k32): levels as int8 on the codebook's grid (codebooks.int8_table),
    # q and p each split into two int8 planes (hi + lo / 254) in the MMA's column pairs (2 j, 2 j + 1).
    # ------------------------------------------------------------------------------------------------
    @gluon.jit
    def _probe(probe_ptr, k: gl.constexpr):
        """(diagnostics, ``.notes/kv_probe.py``) %globaltimer and %clock64 at point k (0: start, 1: before the tile
        loop, 2: after it, 3: after the stores) into probe_ptr[program, 2 k], [program, 2 k + 1] (rows of 10 int64;
        at k = 3 also %smid into column 8). A program is split * num_programs(1) + (sequence x KV head)."""
        gl.static_assert(k < 4)
        pid = gl.program_id(2) * gl.num_programs(1) + gl.program_id(1)
        t = gl.inline_asm_elementwise("mov.u64 $0, %globaltimer;", "=l", [], dtype=gl.int64, is_pure=False, pack=1)
        cl = gl.inline_asm_elementwise("mov.u64 $0, %clock64;", "=l", [], dtype=gl.int64, is_pure=False, pack=1)
        gl.store(probe_ptr + pid * 10 + 2 * k, t)
        gl.store(probe_ptr + pid * 10 + 2 * k + 1, cl)
        if k == 3:
            sm = gl.inline_asm_elementwise("mov.u32 $0, %smid;", "=r", [], dtype=gl.int32, is_pure=False, pack=1)
            gl.store(probe_ptr + pid * 10 + 8, sm.to(gl.int64))

    @gluon.jit
    def _klookup8(w, h, lt0, lt1, BITS: gl.constexpr):
        """Keys: words w [64 keys, 4] with raw high halves h -> 4 int8 tensors [64, 4, 2, 2] (key, word t,
        byte bits b, a): output g, byte e = b + 2 a holds the level of field lut.KEY_GROUPS[g][e]."""
        KJ8: gl.constexpr = gl.DistributedLinearLayout(
            reg_bases=[[0, 0, 1, 0], [0, 0, 0, 1], [8, 0, 0, 0]],
            lane_bases=[[0, 1, 0, 0], [0, 2, 0, 0], [1, 0, 0, 0], [2, 0, 0, 0], [4, 0, 0, 0]],
            warp_bases=[[16, 0, 0, 0], [32, 0, 0, 0]], block_bases=[], shape=[64, 4, 2, 2])
        wh = gl.join(w, h)
        wh = gl.convert_layout(gl.join(wh, wh), KJ8, assert_trivial=True)
        if len(lt0.shape) == 2:  # per-thread table words [64, 4] (layout L4), widened like the words
            lt0 = gl.join(lt0, lt0)
            lt0 = gl.convert_layout(gl.join(lt0, lt0), KJ8, assert_trivial=True)
            lt1 = gl.join(lt1, lt1)
            lt1 = gl.convert_layout(gl.join(lt1, lt1), KJ8, assert_trivial=True)
        if BITS == 3:
            ptx: gl.constexpr = K8_PTX3
        else:
            ptx: gl.constexpr = K8_PTX2
        o0, o1, o2, o3 = gl.inline_asm_elementwise(
            ptx, K8_CONSTRAINTS, [wh, lt0, lt1], dtype=(gl.int8, gl.int8, gl.int8, gl.int8), is_pure=True, pack=4)
        return o0, o1, o2, o3

    @gluon.jit
    def _vtile8(lo, hi, DOT_A8: gl.constexpr):
        """m-tile A operand [64 coordinates, 64 keys] from its two lookup outputs [64 keys, 32 qv]:
        rows 16 w + 8 a + g (qv = 8 w + g, a = lo / hi), keys in natural order. A register renaming."""
        t = gl.permute(gl.reshape(gl.join(lo, hi), [64, 4, 8, 2]), [1, 3, 2, 0])
        return gl.convert_layout(gl.reshape(t, [64, 64]), DOT_A8, assert_trivial=True)

    @gluon.jit
    def _kwords_s(ks, kh, part: gl.constexpr, BITS: gl.constexpr, L: gl.constexpr):
        """(TMA) Part ``part`` of the key tile from shared memory: ``ks`` [64 keys, 16] 2-bit-plane words and (3 bits)
        ``kh`` [64 keys, 16] 1-bit-plane halves, plain row-major views; the same [64, 4] words and halves as
        ``_kwords``, in layout L (= L4)."""
        gl.static_assert(part < 4)  # (also puts gl in this closure)
        w = ks.slice(4 * part, 4, dim=1).load(L)
        if BITS == 3:
            h = kh.slice(4 * part, 4, dim=1).load(L)
        else:
            h = w
        return w, h

    @gluon.jit
    def _vwords_s(vs, vh, BITS: gl.constexpr, LV: gl.constexpr):
        """(TMA) The value tile's words for the lookup [64 keys, 32 qv] (word qv >> 1 of ``vs`` [64, 16]; at 3 bits
        also half qv >> 1 of ``vh`` [64, 16]): loaded as [64, 16] in a layout whose lane bit for qv & 1 is a
        broadcast (both lanes read the word), then widened by a broadcast and a reshape into LV (no data moves)."""
        L3: gl.constexpr = gl.DistributedLinearLayout(
            reg_bases=[[1, 0, 0], [2, 0, 0], [16, 0, 0], [32, 0, 0]],
            lane_bases=[[4, 0, 0], [8, 0, 0], [0, 0, 1], [0, 1, 0], [0, 2, 0]],
            warp_bases=[[0, 4, 0], [0, 8, 0]], block_bases=[], shape=[64, 16, 2])
        z = gl.zeros([64, 16, 2], gl.int32, layout=L3)
        x = gl.expand_dims(vs.load(gl.SliceLayout(2, L3)), 2) + z
        x = gl.convert_layout(gl.reshape(x, [64, 32]), LV, assert_trivial=True)
        if BITS == 3:
            y = gl.expand_dims(vh.load(gl.SliceLayout(2, L3)), 2) + z.to(gl.int16)
            y = gl.convert_layout(gl.reshape(y, [64, 32]), LV, assert_trivial=True)
        else:
            y = x
        return x, y

    @gluon.jit
    def _tma_tile(kd, vd, kring, vring, bars, row, n, hi, stage, BOX: gl.constexpr):
        """(TMA) Start copying the key and value rows of the tile at key ``n`` (rows ``row + n`` of the flattened
        caches) into ring slot ``stage``, keys and values on their own barriers (2 stage, 2 stage + 1: the scores
        start once the keys are in); nothing past ``hi``."""
        gl.static_assert(BOX == 16 or BOX == 32)  # (also puts gl in this closure, which the annotations need)
        pr = n < hi
        kbar = bars.index(2 * stage)
        vbar = bars.index(2 * stage + 1)
        mbarrier.expect(kbar, 64 * BOX * 4, pred=pr)
        tma.async_copy_global_to_shared(kd, [row + n, 0], kbar, kring.index(stage), pred=pr)
        mbarrier.expect(vbar, 64 * BOX * 4, pred=pr)
        tma.async_copy_global_to_shared(vd, [row + n, 0], vbar, vring.index(stage), pred=pr)

    @gluon.jit
    def _ring_next(kd, vd, kring, vring, bars, row, n0, hi, it, STAGES: gl.constexpr, BOX: gl.constexpr,
                   BITS: gl.constexpr):
        """(TMA) Tile ``it`` (at key n0) begins: refill the ring slot of tile it - 1 with tile it + STAGES - 1 (Triton
        puts a barrier before the copy, which overwrites what tile it - 1's loads read); then wait for tile it's
        keys. Returns its views: key words [64, 16], key 1-bit halves [64, 16] (3 bits), the same for the values,
        and the values' barrier and phase (waited for before the values are read)."""
        _tma_tile(kd, vd, kring, vring, bars, row, n0 + (STAGES - 1) * 64, hi, (it + STAGES - 1) % STAGES, BOX)
        st = it % STAGES
        phase = (it // STAGES) & 1
        mbarrier.wait(bars.index(2 * st), phase)
        ks = kring.index(st)
        vs = vring.index(st)
        if BITS == 3:
            HL: gl.constexpr = gl.NVMMASharedLayout(swizzle_byte_width=128, element_bitwidth=16, rank=2)
            kh = ks._reinterpret(gl.int16, [64, 2 * BOX], HL).slice(32, 16, dim=1)
            vh = vs._reinterpret(gl.int16, [64, 2 * BOX], HL).slice(32, 16, dim=1)
        else:
            kh = ks
            vh = vs
        return ks.slice(0, 16, dim=1), kh, vs.slice(0, 16, dim=1), vh, bars.index(2 * st + 1), phase

    @gluon.jit
    def _per_thread(lt0, lt1, zero, idx, MASK: gl.constexpr):
        """The two table words XOR-ed with ``zero & (idx & MASK)`` (a loaded 0, and index bits that differ only between
        threads): the same values, which ptxas must keep per thread, in vector registers."""
        gl.static_assert(MASK > 0)  # (also puts gl in this closure, which the annotations need)
        n = zero & (idx & MASK)
        return lt0 ^ n, lt1 ^ n

    @gluon.jit
    def _tile8(n0, hi, pos4, m_i, l_acc, o0, o1, o2, o3, qs0, qs1, qs2, qs3, p_smem, k_base, v_base, koff, kcst,
               hoff, voff, yoff, vcst, kn_base, vn_base, kr, vr, lt0, lt1, vsh, fq,
               SKL: gl.constexpr, SVL: gl.constexpr, SNKL: gl.constexpr, SNVL: gl.constexpr,
               w0, h0, BITS: gl.constexpr, CAUSAL: gl.constexpr, MASKED: gl.constexpr, ASYNC_K: gl.constexpr,
               kd, vd, kring, vring, bars, row, it, STAGES: gl.constexpr, BOX: gl.constexpr, tk0, tk1, tv0, tv1,
               TMA: gl.constexpr, kn16, vn16):
        """One 64-key tile of the int8 kernel: scores (int32, 2 x 4 MMAs of k32), online softmax in the
        log2 domain with the value norm folded into the exponent (so p' = p * n_v <= 1 and its tile
        maximum is known from the max reduction), p' as hi + lo / 254 int8 planes of 127 / max p', values
        (4 m-tiles x 2 MMAs), each m-tile's int32 result scaled into the fp32 accumulator."""
        BN: gl.constexpr = 64
        NQ: gl.constexpr = 8
        MMA8: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[4, 1],
                                                       instr_shape=[16, NQ, 32])
        DOT_A8: gl.constexpr = gl.DotOperandLayout(operand_index=0, parent=MMA8, k_width=4)
        L4: gl.constexpr = gl.DistributedLinearLayout(
            reg_bases=[[8, 0]], lane_bases=[[0, 1], [0, 2], [1, 0], [2, 0], [4, 0]],
            warp_bases=[[16, 0], [32, 0]], block_bases=[], shape=[BN, 4])
        if TMA:  # (tile ``it`` of the ring; kd .. BOX are unused without TMA)
            ks, kh, vs, vh, vbar, vphase = _ring_next(kd, vd, kring, vring, bars, row, n0, hi, it, STAGES, BOX, BITS)
            # the norms: this tile's came with the tile before (kn16 / vn16, fp16, 0 past hi); the next tile's load
            # now, a whole tile ahead of their use (loaded here, they were the TMA loop's largest stall: ncu S9,
            # 128k, 18% of the samples; 128k 52.1-53.3 -> 50.4-50.9 us. With register loads it gained nothing
            # and cost 32k / 8 x 8k ~1%, so that loop keeps loading them with its words)
            ts = n0 + gl.arange(0, BN, layout=gl.SliceLayout(1, L4))
            oks = ts < hi
            kn = kn16.to(gl.float32)
            vn = vn16.to(gl.float32)
            kn16, vn16 = _norms16(kn_base, vn_base, ts + BN, hi, SNKL, SNVL)
        else:
            okk = n0 + kr < hi
            kb, hb, vb, yb = _tile_bases(k_base, v_base, n0, SKL, SVL)
            xv, yv = _vwords(vb, yb, voff, yoff, vcst, n0 + vr < hi, BITS, MASKED)
            ts, oks, kn, vn = _norms(kn_base, vn_base, n0, hi, gl.SliceLayout(1, L4), SNKL, SNVL, MASKED)
        # ---- scores: 4 parts of 64 coordinates, int32 [64 keys, 8 columns]
        s = gl.zeros([BN, NQ], gl.int32, layout=MMA8)
        w = w0
        h = h0
        for part in gl.static_range(4):
            if TMA:  # (the words are in shared memory: loaded just before their lookup, no registers ahead)
                w, h = _kwords_s(ks, kh, part, BITS, L4)
                wn = w
                hn = h
            elif part < 3:
                wn, hn = _kwords(kb, hb, koff, kcst, hoff, okk, part + 1, BITS, MASKED)
            else:
                wn, hn = _kwords(kb + BN * SKL, hb + 2 * BN * SKL, koff, kcst, hoff, n0 + BN + kr < hi, 0, BITS,
                                 True)
            w = w.to(gl.uint32, bitcast=True)
            if BITS == 3:
                h = h.to(gl.uint16, bitcast=True).to(gl.uint32)
            else:
                h = w
            if TMA:
                g0, g1, g2, g3 = _klookup8(w, h, tk0, tk1, BITS)
            else:
                g0, g1, g2, g3 = _klookup8(w, h, lt0, lt1, BITS)
            jt = gl.join(gl.join(g0, g1), gl.join(g2, g3))  # [key, t, b, a, g0, g1]
            kc = gl.reshape(gl.permute(jt, [0, 5, 4, 1, 3, 2]), [BN, 64])
            kc = gl.convert_layout(kc, DOT_A8, assert_trivial=True)
            s = _qpart_mma(kc, qs0, qs1, qs2, qs3, s, part, part > 0, ASYNC_K)
            if ASYNC_K:  # part p's MMA runs while part p + 1 decodes (at most one in flight)
                if part < 3:
                    s = warpgroup_mma_wait(1, deps=[s])
                else:
                    s = warpgroup_mma_wait(0, deps=[s])
            w = wn
            h = hn
        # ---- softmax: s4 [64 keys, 4 rows] = (hi column + lo column / 254) * sq / alpha (in fq) * key norm
        sh, sl = gl.split(gl.reshape(s.to(gl.float32) * fq[None, :], [BN, 4, 2]))
        s4 = gl.convert_layout(sh + sl, L4, assert_trivial=True) * kn[:, None]
        vnc = gl.maximum(vn, 5.421010862427522e-20)  # 2^-64: a zero norm weighs ~0 instead of -inf
        # (lg2.approx: one MUFU; gl.log2 is the precise libdevice polynomial, ~30 FFMA per key)
        lvn = gl.inline_asm_elementwise("lg2.approx.ftz.f32 $0, $1;", "=r,r", [vnc], dtype=gl.float32,
                                        is_pure=True, pack=1)
        if MASKED:
            valid = oks[:, None]
            if CAUSAL:
                valid = valid & (ts[:, None] <= pos4[None, :])
            s4 = gl.where(valid, s4, float("-inf"))  # (both exponents below: the weights and p for l)
            sp = s4 + lvn[:, None]
            tmax = gl.max(sp, axis=0)
            m_new = gl.maximum(m_i, tmax)
            m_safe = gl.where(m_new == float("-inf"), 0.0, m_new)
        else:
            sp = s4 + lvn[:, None]
            tmax = gl.max(sp, axis=0)
            m_new = gl.maximum(m_i, tmax)
            m_safe = m_new
        alpha = gl.exp2(m_i - m_safe)
        pv = gl.exp2(sp - m_safe[None, :])  # p * n_v <= 1
        l_acc = l_acc * alpha[None, :] + gl.exp2(s4 - m_safe[None, :])  # p itself (<= 2^64 / n_v)
        # the tile's largest p * n_v per row, at least 2^-100 (0: no key of the row here; below, the tile's
        # weights are < 2^-100 of the row's largest so far and may round to 0 without changing the output)
        pm = gl.maximum(gl.exp2(tmax - m_safe), 7.888609052210118e-31)
        x = pv * (127.0 / pm)[None, :]
        xh = gl.floor(x + 0.5)
        xl = gl.floor((x - xh) * 254.0 + 0.5)
        p8 = gl.reshape(gl.join(xh, xl), [BN, NQ]).to(gl.int8)
        p_smem.store(gl.permute(p8, [1, 0]))
        fence_async_shared()
        sc = pm * (1.0 / 127.0)
        # ---- values: one lookup per 4 keys feeds all 4 m-tiles
        if TMA:
            LV: gl.constexpr = gl.DistributedLinearLayout(  # (the value words' layout, as _vwords loads them)
                reg_bases=[[1, 0], [2, 0], [16, 0], [32, 0]], lane_bases=[[4, 0], [8, 0], [0, 1], [0, 2], [0, 4]],
                warp_bases=[[0, 8], [0, 16]], block_bases=[], shape=[BN, 32])
            mbarrier.wait(vbar, vphase)  # (the values have their own barrier: the scores did not wait for them)
            xv, yv = _vwords_s(vs, vh, BITS, LV)
        xv = xv.to(gl.uint32, bitcast=True)
        if BITS == 3:
            yv = yv.to(gl.uint16, bitcast=True).to(gl.uint32)
            vptx: gl.constexpr = V8_PTX3
        else:
            yv = xv  # (unused by the 2-bit program)
            vptx: gl.constexpr = V8_PTX2
        if TMA:
            vt0 = tv0
            vt1 = tv1
        else:
            vt0 = lt0
            vt1 = lt1
        v0, v1, v2, v3, v4, v5, v6, v7 = gl.inline_asm_elementwise(
            vptx, V8_CONSTRAINTS, [xv, yv, vsh, vt0, vt1],
            dtype=(gl.int8, gl.int8, gl.int8, gl.int8, gl.int8, gl.int8, gl.int8, gl.int8), is_pure=True, pack=4)
        pb = p_smem.permute((1, 0))
        zero = gl.zeros([64, NQ], gl.int32, layout=MMA8)
        A0 = _vtile8(v0, v1, DOT_A8)
        A1 = _vtile8(v2, v3, DOT_A8)
        A2 = _vtile8(v4, v5, DOT_A8)
        A3 = _vtile8(v6, v7, DOT_A8)
        # the 4 m-tiles' MMAs in flight together, one wait
        t0 = warpgroup_mma(A0, pb, zero, use_acc=False, is_async=True)
        t1 = warpgroup_mma(A1, pb, zero, use_acc=False, is_async=True)
        t2 = warpgroup_mma(A2, pb, zero, use_acc=False, is_async=True)
        t3 = warpgroup_mma(A3, pb, zero, use_acc=False, is_async=True)
        a0, a1, a2, a3 = warpgroup_mma_wait(0, deps=[t0, t1, t2, t3])
        a0 = a0.to(gl.float32)
        a1 = a1.to(gl.float32)
        a2 = a2.to(gl.float32)
        a3 = a3.to(gl.float32)
        ah, al = gl.split(gl.reshape(a0, [64, 4, 2]))
        o0 = o0 * alpha[None, :] + gl.convert_layout(ah + al * (1.0 / 254.0), L4, assert_trivial=True) * sc[None, :]
        ah, al = gl.split(gl.reshape(a1, [64, 4, 2]))
        o1 = o1 * alpha[None, :] + gl.convert_layout(ah + al * (1.0 / 254.0), L4, assert_trivial=True) * sc[None, :]
        ah, al = gl.split(gl.reshape(a2, [64, 4, 2]))
        o2 = o2 * alpha[None, :] + gl.convert_layout(ah + al * (1.0 / 254.0), L4, assert_trivial=True) * sc[None, :]
        ah, al = gl.split(gl.reshape(a3, [64, 4, 2]))
        o3 = o3 * alpha[None, :] + gl.convert_layout(ah + al * (1.0 / 254.0), L4, assert_trivial=True) * sc[None, :]
        return m_new, l_acc, o0, o1, o2, o3, w, h, kn16, vn16

    @gluon.jit
    def _split_kernel_g8(q_ptr, kp_ptr, kn_ptr, vp_ptr, vn_ptr, lut_ptr, lens_ptr, start_ptr,
                         op_ptr, lse_ptr, s_lens, s_start, Hkv, G, Tq, n_rows, L, chunk, qscale, oscale,
                         sqb, sqh, sqt, skb, skh, snkb, snkh, svb, svh, snvb, snvh,
                         SKL: gl.constexpr, SVL: gl.constexpr, SNKL: gl.constexpr, SNVL: gl.constexpr,
                         BITS: gl.constexpr, CAUSAL: gl.constexpr, HAS_START: gl.constexpr,
                         ASYNC_K: gl.constexpr = False, kd=None, vd=None, STAGES: gl.constexpr = 2,
                         probe_ptr=None, PROBE: gl.constexpr = False):
        # (the fp16 kernel's arguments less its coordinate tables: the maps are computed here. kd / vd: TMA
        # descriptors of the caches flattened to [B * Hkv * L, SKL] words, boxes of [64, 16 or 32], or None.
        # PROBE: diagnostics, _probe's timer reads into probe_ptr)
        if PROBE:
            _probe(probe_ptr, 0)
        D: gl.constexpr = 256
        BN: gl.constexpr = 64
        NQ: gl.constexpr = 8
        NW2: gl.constexpr = D // 16
        L4: gl.constexpr = gl.DistributedLinearLayout(
            reg_bases=[[8, 0]], lane_bases=[[0, 1], [0, 2], [1, 0], [2, 0], [4, 0]],
            warp_bases=[[16, 0], [32, 0]], block_bases=[], shape=[BN, 4])
        MMA8: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[4, 1],
                                                       instr_shape=[16, NQ, 32])
        S_SMEM: gl.constexpr = gl.NVMMASharedLayout.get_default_for([NQ, 64], gl.int8)

        bh, split, b, hk, kv_len, lo, hi = _program_range(lens_ptr, start_ptr, s_lens, s_start, Hkv, L, chunk,
                                                          HAS_START)
        lt0 = gl.load(lut_ptr)
        lt1 = gl.load(lut_ptr + 1)
        inv_alpha = 1.0 / gl.load(lut_ptr + 2).to(gl.float32, bitcast=True)

        # q: its 4 rows (r = t * G + g), rotated, scaled and split into int8 planes below, which then fill the MMA
        # columns c (query row c >> 1, hi plane at even c, lo / 254 at odd c) in the keys' kernel coordinate order (the
        # load first: it does not wait for kv_len). Loaded in stored order, 8 consecutive columns per thread (16-byte
        # loads; loaded in kernel order and once per plane, a thread's columns were 16 scattered 2-byte loads and ~150
        # address instructions, and the rotation did every row twice)
        jq = gl.arange(0, 4, layout=gl.SliceLayout(1, R012))
        c = gl.arange(0, D, layout=gl.SliceLayout(0, R012))
        q = gl.load(q_ptr + b * sqb + (hk * G + jq % G)[:, None] * sqh + (jq // G)[:, None] * sqt + c[None, :],
                    mask=(jq < n_rows)[:, None], other=0.0).to(gl.float32)

        k_base = kp_ptr + b * skb + hk * skh
        v_base = vp_ptr + b * svb + hk * svh
        kn_base = kn_ptr + b * snkb + hk * snkh
        vn_base = vn_ptr + b * snvb + hk * snvh
        kr, koff, kcst, hoff = _key_offsets(SKL, NW2)  # key words as in the fp16 kernel
        TMA: gl.constexpr = kd is not None
        if TMA:
            # the lookup tables as per-thread values (XOR-ed with a loaded zero & lane / warp index bits, the same
            # in all of a thread's registers): as uniform scalars ptxas kept them in uniform registers in the TMA
            # variant and copied them into a vector register before every prmt (~60 instructions per tile)
            zero = gl.load(lut_ptr + 3)
            tk0, tk1 = _per_thread(lt0, lt1, zero, gl.convert_layout(kr, L4, assert_trivial=True), 0x37)
        else:
            tk0 = lt0
            tk1 = lt1
        if TMA:
            # a ring of STAGES tiles (key and value rows) that the TMA unit fills STAGES - 1 tiles ahead of their
            # use. The box is [64 keys, BOX words] (a power of two: 16 words at 2 bits; at 3 bits 32, whose last 8
            # are past the 24-word rows, so TMA fills them with zeros and reads nothing more), swizzled (64- / 128-byte
            # rows: 16-byte chunk c of row r lands at c ^ phase(r)), so that the loads below, 8 rows x 16 bytes
            # per warp, hit 32 distinct banks (unswizzled, the 8 rows fell on the same 4 banks)
            BOX: gl.constexpr = kd.block_type.shape[1]
            kring = gl.allocate_shared_memory(gl.int32, [STAGES, BN, BOX], kd.layout)
            vring = gl.allocate_shared_memory(gl.int32, [STAGES, BN, BOX], vd.layout)
            bars = gl.allocate_shared_memory(gl.int64, [2 * STAGES, 1], mbarrier.MBarrierLayout())
            for st in gl.static_range(2 * STAGES):
                mbarrier.init(bars.index(st), count=1)
            fence_async_shared()
            row = (bh * L).to(gl.int32)
            for st in gl.static_range(STAGES - 1):
                _tma_tile(kd, vd, kring, vring, bars, row, lo + st * BN, hi, st, BOX)
            w0 = gl.zeros([BN, 4], gl.int32, layout=L4)  # (unused: the tiles load their words from the ring)
            if BITS == 3:
                h0 = gl.zeros([BN, 4], gl.int16, layout=L4)
            else:
                h0 = w0
        else:
            kring = None
            vring = None
            bars = None
            row = 0
            BOX: gl.constexpr = 0  # (kring .. BOX: placeholders, unused without TMA)
            # the first tile's part-0 key words now, so their latency overlaps q's rotation below
            w0, h0 = _kwords(k_base + lo * SKL, k_base.to(gl.pointer_type(gl.int16)) + lo * (2 * SKL), koff, kcst,
                             hoff, lo + kr < hi, 0, BITS, True)

        q = _kernel_order(_fwht4x256_nat(q) * qscale)  # [4 rows, 256 kernel coordinates]
        amax = gl.max(gl.abs(q), axis=1)
        sq = gl.where(amax > 0.0, amax * (1.0 / 127.0), 1.0)
        qn = q * gl.where(amax > 0.0, 127.0 / amax, 1.0)[:, None]  # (one division per row, not per value)
        qh = gl.floor(qn + 0.5)
        ql = gl.floor((qn - qh) * 254.0 + 0.5)
        q8 = gl.reshape(gl.permute(gl.join(qh, ql), [0, 2, 1]), [NQ, D]).to(gl.int8)  # row 2 j + plane
        # the columns' scales: sq of row c >> 1 (a masked sum over the 4 rows: exact), / 254 for the lo planes
        LF: gl.constexpr = gl.BlockedLayout(size_per_thread=[4, 1], threads_per_warp=[1, 32], warps_per_cta=[1, 4],
                                            order=[1, 0])
        cf = gl.arange(0, NQ, layout=gl.SliceLayout(0, LF))
        jf = gl.arange(0, 4, layout=gl.SliceLayout(1, LF))
        sqc = gl.sum(gl.where(jf[:, None] == cf[None, :] // 2, gl.convert_layout(sq, gl.SliceLayout(1, LF))[:, None],
                              0.0), axis=0)
        fq = gl.where(cf % 2 == 0, sqc, sqc * (1.0 / 254.0)) * inv_alpha
        fq = gl.convert_layout(fq, gl.SliceLayout(0, MMA8))
        qs0, qs1, qs2, qs3 = _q_smem(q8, NQ, S_SMEM)
        p_smem = gl.allocate_shared_memory(gl.int8, [NQ, BN], S_SMEM)
        fence_async_shared()

        # value words [64 keys, 32 qv] (word qv >> 1 of every key): key 16 a + 4 b + c with c (2 register bits:
        # the 4 keys of one lookup), a (registers), b (lanes, t); qv: lanes (g) and warps (w)
        LV4: gl.constexpr = gl.DistributedLinearLayout(
            reg_bases=[[0, 0, 1, 0], [0, 0, 2, 0], [1, 0, 0, 0], [2, 0, 0, 0]],
            lane_bases=[[0, 1, 0, 0], [0, 2, 0, 0], [0, 0, 0, 1], [0, 0, 0, 2], [0, 0, 0, 4]],
            warp_bases=[[0, 0, 0, 8], [0, 0, 0, 16]], block_bases=[], shape=[4, 4, 4, 32])
        va, vb_, vc_, vq = _aranges4(4, 4, 4, 32, LV4)
        vr = gl.reshape(16 * va + 4 * vb_ + vc_ + 0 * vq, [BN, 32])
        voff = gl.reshape(4 * vb_ * SVL + (vq >> 1) + 0 * (va + vc_), [BN, 32])
        yoff = gl.reshape(4 * vb_ * (2 * SVL) + (2 * NW2 + (vq >> 1)) + 0 * (va + vc_), [BN, 32])
        vcst = gl.reshape((16 * va + vc_) * SVL + 0 * (vb_ + vq), [BN, 32])
        # per lookup: key c's operand is a shift of the thread's nibble half s = qv & 1: 4 s, 4 - 4 s, 2 s, 2 - 2 s
        sv = vq & 1
        vsh = gl.where(vc_ == 0, 4 * sv, gl.where(vc_ == 1, 4 - 4 * sv, gl.where(vc_ == 2, 2 * sv, 2 - 2 * sv)))
        vsh = gl.reshape(vsh + 0 * (va + vb_), [BN, 32]).to(gl.uint32)
        if TMA:  # (the value lookup's per-thread table words, as the keys' above)
            LV: gl.constexpr = gl.DistributedLinearLayout(
                reg_bases=[[1, 0], [2, 0], [16, 0], [32, 0]], lane_bases=[[4, 0], [8, 0], [0, 1], [0, 2], [0, 4]],
                warp_bases=[[0, 8], [0, 16]], block_bases=[], shape=[BN, 32])
            tv0, tv1 = _per_thread(lt0, lt1, zero, gl.convert_layout(vr, LV, assert_trivial=True), 12)
        else:
            tv0 = lt0
            tv1 = lt1

        rows = gl.arange(0, 4, layout=gl.SliceLayout(0, L4))
        pos4 = kv_len - Tq + rows // G
        m_i = gl.full([4], float("-inf"), gl.float32, layout=gl.SliceLayout(0, L4))
        l_acc = gl.zeros([BN, 4], gl.float32, layout=L4)
        o0 = gl.zeros([64, 4], gl.float32, layout=L4)
        o1 = gl.zeros([64, 4], gl.float32, layout=L4)
        o2 = gl.zeros([64, 4], gl.float32, layout=L4)
        o3 = gl.zeros([64, 4], gl.float32, layout=L4)

        if TMA:  # the first tile's norms (each tile loads the next one's)
            kn16, vn16 = _norms16(kn_base, vn_base, lo + gl.arange(0, BN, layout=gl.SliceLayout(1, L4)), hi, SNKL,
                                  SNVL)
        else:  # (unused: each tile loads its own)
            kn16 = gl.zeros([BN], gl.float16, layout=gl.SliceLayout(1, L4))
            vn16 = kn16
        if PROBE:
            _probe(probe_ptr, 1)
        hi_free = gl.minimum(hi, kv_len - Tq + 1) if CAUSAL else hi
        n_free = lo + gl.maximum(hi_free - lo, 0) // BN * BN
        it = 0
        for n0 in range(lo, n_free, BN):
            m_i, l_acc, o0, o1, o2, o3, w0, h0, kn16, vn16 = _tile8(
                n0, hi, pos4, m_i, l_acc, o0, o1, o2, o3, qs0, qs1, qs2, qs3, p_smem, k_base, v_base, koff, kcst,
                hoff, voff, yoff, vcst, kn_base, vn_base, kr, vr, lt0, lt1, vsh, fq, SKL, SVL, SNKL, SNVL,
                w0, h0, BITS, CAUSAL, False, ASYNC_K, kd, vd, kring, vring, bars, row, it, STAGES, BOX, tk0, tk1, tv0,
                tv1, TMA, kn16, vn16)
            it += 1
        for n0 in range(n_free, hi, BN):
            m_i, l_acc, o0, o1, o2, o3, w0, h0, kn16, vn16 = _tile8(
                n0, hi, pos4, m_i, l_acc, o0, o1, o2, o3, qs0, qs1, qs2, qs3, p_smem, k_base, v_base, koff, kcst,
                hoff, voff, yoff, vcst, kn_base, vn_base, kr, vr, lt0, lt1, vsh, fq, SKL, SVL, SNKL, SNVL,
                w0, h0, BITS, CAUSAL, True, ASYNC_K, kd, vd, kring, vring, bars, row, it, STAGES, BOX, tk0, tk1, tv0,
                tv1, TMA, kn16, vn16)
            it += 1

        # ---- epilogue (as the fp16 kernel): normalized, 1 / alpha (the value levels' grid), rotated back
        if PROBE:
            _probe(probe_ptr, 2)
        l_i = gl.sum(l_acc, axis=0)
        l_safe = gl.where(l_i > 0.0, l_i, 1.0)
        lse = gl.where(l_i > 0.0, m_i + gl.log2(l_safe), float("-inf"))
        prow = (split * gl.num_programs(1) + bh) * n_rows + rows
        gl.store(lse_ptr + prow, lse, mask=rows < n_rows)
        f = inv_alpha / l_safe
        # [64 coordinates, 4 rows] x 4 m-tiles -> [4 rows, 256 kernel coordinates 64 mt + coordinate], rotated back,
        # relabelled into stored column order (v_coord8) and stored 4 consecutive columns per thread (16-byte stores;
        # before: each row twice, as the MMA's column pairs, and 16 scattered 4-byte stores per thread)
        oa = gl.join(gl.join(o0 * f[None, :], o1 * f[None, :]), gl.join(o2 * f[None, :], o3 * f[None, :]))
        o = gl.reshape(gl.permute(oa, [1, 3, 2, 0]), [4, D])
        o = _stored_order(_fwht4x256_out(o) * oscale)
        rc = gl.arange(0, 4, layout=gl.SliceLayout(1, o.type.layout))
        c = gl.arange(0, D, layout=gl.SliceLayout(0, o.type.layout))
        prq = (split * gl.num_programs(1) + bh) * n_rows + rc
        gl.store(op_ptr + prq[:, None] * D + c[None, :], o, mask=(rc < n_rows)[:, None])
        if PROBE:
            _probe(probe_ptr, 3)

    return _split_kernel_g, _split_kernel_g8


_KERNELS = None


def split_kernel(int8: bool = False):
    """The fp16 (``int8=False``) or the int8 split kernel (built together on first use)."""
    global _KERNELS
    if _KERNELS is None:
        _KERNELS = _build_kernel()
    return _KERNELS[1 if int8 else 0]


@functools.lru_cache(maxsize=None)
def available() -> bool:
    """Whether this Triton has Gluon (``triton.experimental.gluon``; the kernel is written against Triton 3.6);
    asked once. A Gluon whose API differs fails at compile time, and the caller falls back to Triton."""
    import importlib.util

    try:
        return importlib.util.find_spec("triton.experimental.gluon") is not None
    except ModuleNotFoundError:
        return False


def supported(d: int, bits: int, n_rows: int) -> bool:
    """The shapes this kernel covers: D = 256, 2 or 3 bits, at most 4 query rows per KV head (decode
    with GQA up to 4, or up to 4 causal tokens with fewer heads per group)."""
    return d == 256 and bits in (2, 3) and n_rows <= 4


def int8_ok(codebook, bits: int) -> bool:
    """Whether the int8 kernel applies: the default 2/3-bit KV codebook (snapped to its int8 grid, so the
    kernel's integer levels are exactly the codebook's); other codebooks take the fp16 kernel."""
    from ..quantize_kv.codebooks import GRID_BITS, is_default

    return bits in GRID_BITS and is_default(codebook, bits)


# The TMA ring takes ~70 more instructions per tile (copy issue, barriers) and saves the register loads' latency
# stalls: in the same H100 runs (perf/RESULTS.md, session 8) it was 1.4-3.4% faster at 128k and 3 bits (16 tiles
# per program), the same at 8 x 8k (8 tiles), and slower at 2 bits and at 32k (4 tiles: the whole first tile must
# land before the scores start). Session 9 gave the TMA loop (only) the next tile's norms a tile ahead: 128k 52-53
# -> 50.4-51.4 us, and 8 x 8k 31.01 vs 32.13 us with the register loads (S9-20), so from 512 keys per program.
TMA_MIN_CHUNK = 512


def use_tma(bits: int, chunk: int) -> bool:
    """Whether the int8 kernel reads through the TMA ring by default: 3 bits, >= TMA_MIN_CHUNK keys per program."""
    return bits == 3 and chunk >= TMA_MIN_CHUNK


def tma_ok(packed: torch.Tensor) -> bool:
    """Whether a packed cache ``[B, Hkv, L, W]`` can be read by TMA as ``[B * Hkv * L, W]``: rows of W contiguous
    int32 words (16-byte multiples) laid out one after another, and a 16-byte aligned base."""
    B, H, L, W = packed.shape
    return (packed.dtype == torch.int32 and (W * 4) % 16 == 0 and packed.data_ptr() % 16 == 0
            and packed.stride() == (H * L * W, L * W, W, 1) and B * H * L < 2 ** 31)


def tma_descriptor(packed: torch.Tensor, bits: int):
    """The TMA descriptor of a packed cache for the int8 kernel's ring: the cache flattened to rows of W words,
    boxes of 64 rows (one tile) x 16 words (2 bits) or 32 (3 bits: W = 24, and TMA boxes are powers of two;
    the 8 words past each row are filled with zeros, not read), swizzled over the box's 64- or 128-byte rows."""
    from triton.experimental.gluon.language import NVMMASharedLayout
    from triton.experimental.gluon.nvidia.hopper import TensorDescriptor

    if not tma_ok(packed):
        raise ValueError(f"the TMA path needs a contiguous int32 cache whose rows are 16-byte multiples; got "
                         f"{packed.dtype} {tuple(packed.shape)} with strides {packed.stride()}")
    B, H, L, W = packed.shape
    if W != 8 * bits:
        raise ValueError(f"a {bits}-bit D = 256 cache has {8 * bits} words per row, got {W}")
    box = 16 if bits == 2 else 32
    layout = NVMMASharedLayout(swizzle_byte_width=4 * box, element_bitwidth=32, rank=2)
    return TensorDescriptor(packed, [B * H * L, W], [W, 1], [64, box], layout)


def kv_attn_decode_gluon(q, k_packed, k_norms, v_packed, v_norms, kv_lens, kv_start, bits, scale, causal, codebook,
                         num_splits: int | None = None, *, per_sm: int = 4, maxnreg: int | None = 128, out=None,
                         int8: bool | None = None, async_k: bool = False, tma: bool | None = None, stages: int = 2,
                         probe: torch.Tensor | None = None):
    """``kv_quant_attn`` (same arguments as the Triton launcher) through the Gluon split kernel, then
    ``_merge_kernel`` (column chunks of the partials, already rotated back here). 128 registers: 4
    programs per SM, and ptxas then keeps the lookup tables in vector registers (sm_90 SASS,
    ``.notes/gluon_compile.py``). ``out``: the ``[B, Hq, Tq, D]`` output buffer (allocated if None).
    ``tma`` (int8 kernel): the words through a TMA ring in shared memory instead of register loads; same output
    bit for bit. None: on where it measured faster (``use_tma``)."""
    import math

    from ..quantize_kv.codebooks import int8_table, tables
    from .triton import LOG2E, _num_sms, launch_merge, split_plan

    B, Hq, Tq, D = q.shape
    Hkv, lmax = k_packed.shape[1], k_packed.shape[2]
    G = Hq // Hkv
    n_rows = G * Tq
    if not supported(D, bits, n_rows):
        raise ValueError(f"the Gluon decode kernel needs D = 256, bits 2 or 3, <= 4 query rows per KV head; got "
                         f"D = {D}, bits = {bits}, {n_rows} rows")
    if q.stride(-1) != 1:
        q = q.contiguous()
    if out is None:
        out = torch.empty(B, Hq, Tq, D, dtype=q.dtype, device=q.device)
    if out.numel() == 0:
        return out
    if int8 is None:
        int8 = int8_ok(codebook, bits)
    elif int8 and not int8_ok(codebook, bits):
        raise ValueError("the int8 kernel needs the default 2/3-bit KV codebook (its levels on an int8 grid)")
    if int8:  # (its coordinate maps are computed in the kernel)
        lut, coord_tables = int8_table(bits, q.device), ()
    else:
        lut, coord_tables = tables(codebook)[3], perms(q.device)
    sms = _num_sms(q.device.index or 0)
    splits, chunk = split_plan(B * Hkv, lmax, 64, per_sm, sms, num_splits)
    op = torch.empty(splits, B * Hkv, n_rows, D, dtype=torch.float32, device=q.device)
    lse = torch.empty(splits, B * Hkv, n_rows, dtype=torch.float32, device=q.device)
    oscale = 1.0 / math.sqrt(D)
    opts = {"maxnreg": maxnreg} if maxnreg else {}
    if int8:  # async_k (int8 kernel, opt-in): key part p's MMA in flight while part p + 1 decodes
        opts["ASYNC_K"] = async_k
        if probe is not None:  # (diagnostics: int64 [>= programs, 10], see _probe)
            opts.update(probe_ptr=probe, PROBE=True)
    if tma is None:
        tma = int8 and use_tma(bits, chunk) and tma_ok(k_packed) and tma_ok(v_packed)
    if tma:
        if not int8:
            raise ValueError("tma=True is an option of the int8 kernel")
        opts.update(kd=tma_descriptor(k_packed, bits), vd=tma_descriptor(v_packed, bits), STAGES=stages)
    split_kernel(int8)[(1, B * Hkv, splits)](
        q, k_packed, k_norms, v_packed, v_norms, lut, kv_lens, kv_lens if kv_start is None else kv_start,
        *coord_tables, op, lse, kv_lens.stride(0), 0 if kv_start is None else kv_start.stride(0),
        Hkv, G, Tq, n_rows, lmax, chunk, scale * LOG2E * oscale, oscale,
        q.stride(0), q.stride(1), q.stride(2), k_packed.stride(0), k_packed.stride(1),
        k_norms.stride(0), k_norms.stride(1), v_packed.stride(0), v_packed.stride(1),
        v_norms.stride(0), v_norms.stride(1),
        SKL=k_packed.stride(2), SVL=v_packed.stride(2), SNKL=k_norms.stride(2), SNVL=v_norms.stride(2),
        BITS=bits, CAUSAL=causal, HAS_START=kv_start is not None, num_warps=4, **opts)
    launch_merge(op, lse, out, splits, n_rows, Hkv, G)
    return out

"""Decode GEMV on the s8 tensor cores (Gluon): ``y [M <= 4, N] = x_rot @ W_rot.T`` for 3/4/5-bit weights
quantized with the int8-grid codebook (``quant/grid.py``).

Status: OPT-IN, and SLOWER than the default Triton GEMV. ``dequant_matmul_triton_method(..., method="gemv8")`` or
``gemv8`` itself. H100, M = 1, graph timing, gemv2 (the default) in the same run (perf/RESULTS.md, S7-8 and S7-9;
the best gemv8 option of those runs): 24576 x 4096 at 5 / 4 / 3 bits 40.4 / 31.4 / 27.9 us against 30.5 / 26.4 /
28.1; 4096 x 12288 26.9 vs 19.0; lm_head 319-365 vs 266; the small shapes ~2x slower (12 vs 6 us at 2048 x 4096: one
more launch for the x planes, and short programs). ncu (S7-7): 43% issue, DRAM 47-52% of peak, and the first stall
is long scoreboard (5-8.6 cycles per issue) although the code words are loaded two blocks ahead; removing register
copies of in-flight loads (four blocks per trip in two register slots) and rotating each program's block order did
not change it (both removed after the session). What is known: far fewer instructions per code than gemv2 at 3-4
bits (sm_90 SASS per 64 codes per thread: 155-171 / 124-143 vs ~300 / ~250), a few fewer at 5 bits (262-279 vs
~315), yet the time does not follow the instruction count. Likely cause, found after the last GPU run in the sm_90
SASS (offline compile, not yet measured): ptxas places every prefetch load of the loop *after* the preceding
``WARPGROUP.DEPBAR`` (the wait of the MMAs before it), i.e. right before the decode that consumes it, so the
prefetch distance in the source (1-2 trips) becomes ~0. The KV kernel's int8 loop issues its tile's loads at the
top, before its first ``WARPGROUP.ARRIVE``, and consumes them in the same trip. ``early=True`` (opt-in, NOT timed
and not yet run on the GPU: the device budget was spent) puts the pair loop's prefetch loads in a basic block of
their own (a branch that is always taken); in the SASS all 12 loads of a trip then come first, before the decode and
the first ``WARPGROUP.ARRIVE``. Time it first (``perf/graph_sweep.py dq8e``); if ptxas still defeats it, stage the
words through shared memory (cp.async / TMA).

Why. The Triton GEMV (``_gemv2_kernel``) spends ~4.9 instructions per 5-bit code (a shift to extract the
code, a warp shuffle to look its level up, an fp32 FMA, and the plane merges), and at 3-4 bits barely
less; at one shuffle per clock per SM and ~50% issue it stays at ~2.1 TB/s on 24576 x 4096
(``perf/RESULTS.md``). Here the levels are int8 (``k / alpha``) and a byte permute (``prmt``) looks up
4 codes at once straight into an s8 wgmma A-operand register; x is split into two int8 planes per
128-block (hi + lo / 254, ~15 bits) that fill the MMA's column pairs (2 m, 2 m + 1) for token m; the
int32 result of each 128-block is scaled by ``norm[row, block] * x scale[m, block] / alpha`` into an
fp32 accumulator. The tensor cores do the multiply-adds; per code what remains is the lookup:
* 3 bits: ``lut.K8_PROGRAMS[3]`` (the KV kernel's key lookup): one ``prmt`` per 4 codes + selector
  building from the 2-bit and 1-bit planes;
* 4 bits (codes 0-7 negative, 8-15 positive): ``prmt(TL, n)`` gives the level of codes 0-7 and -1 for
  8-15 (the selector's bit 3 makes ``prmt`` replicate the sign of a negative byte);
  ``prmt(TH + 1, n ^ 8)`` gives level + 1 for 8-15 and 0 for 0-7 (sign of a positive byte); the MMA
  adds the two: 2 ``prmt`` per 4 codes, two MMAs per block;
* 5 bits: the same two-table trick per half of the codebook (OR for the positive half, AND for the
  negative half), then a byte select by bit 4 (from the 1-bit plane: mask, one multiply that moves the 4
  bits to the bytes' top bits, a sign-replicating ``prmt``): 4 + 3 ``prmt``/``lop3``/``mul`` per 4 codes.

Layout. A warpgroup owns 64 rows. wgmma's s8 A fragment gives thread (warp w, lane 4 g + t) rows
16 w + g (+ 8) and k-slots 32 kk + 16 h + 4 t + e (e = byte). A thread decodes codes 32 t .. 32 t + 31 of
its two rows in each 128-block: at 4-5 bits the 16 contiguous bytes of the nibble plane (4 words, one
per kk; their low / high 16 bits are h) and one 1-bit-plane word; so k-slot -> code is a fixed bit
permutation (``code_of_slot``), and x is stored to shared memory in that order once per program.
Programs walk ``rt`` row tiles over their K slice (``ks`` blocks, default 8); code words run one or two steps
ahead, two blocks per trip (``pair``: two decode chains, their MMAs in flight together, one wait). The x planes
come from ``_xq8_kernel`` (one small launch before the GEMV): computing them in every program cost ~5000
instructions per thread at K = 4096 (S7-1).

Gluon cannot run under the interpreter: the CPU tests (``tests/test_dequant_matmul_gluon.py``) replay the
kernel's algebra with numpy, the lookups executed by ``lut.run``; the GPU tests compare the compiled kernel
with the reference.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ..kv_quant_attn import lut
from ..kv_quant_attn.gluon import available  # noqa: F401  (whether this Triton has Gluon)
from ..quant import grid
from ..quant.grid import GRID_BITS

MAX_M = 4  # 2 MMA columns (hi, lo) per token: wgmma N = 8


def _program5() -> tuple:
    """One nibble word N (8 codes, nibble i = code i's low 4 bits) and its codes' bit 4 (``S``, bits 0-7)
    -> 2 registers of int8x4 (codes 0-3, 4-7). Tables: PL/PH = levels of codes 16-23 / 24-31 (>= 0),
    EL/EH = 0-7 / 8-15 (< 0)."""
    prog = [("xor", "x8", "N", 0x88888888)]
    for h, (n, n8, mask, mul) in enumerate((("N", "x8", 0xF, 0x10204080), ("n1", "y1", 0xF0, 0x01020408))):
        if h:
            prog += [("shr", "n1", "N", 16), ("shr", "y1", "x8", 16)]
        prog += [("prmt", "a", "PL0", "PL1", n), ("prmt", "b", "PH0", "PH1", n8), ("or", "u", "a", "b"),
                 ("prmt", "c", "EL0", "EL1", n), ("prmt", "d", "EH0", "EH1", n8), ("and", "v", "c", "d"),
                 # bit 4 of the 4 codes -> the top bit of their bytes (no carries: distinct product terms)
                 ("and", "t", "S", mask), ("mul", "t", "t", mul), ("prmt", "m", "t", "t", 0xBA98),
                 ("bsel", f"$o{h}", "u", "v", "m")]
    return tuple(prog)


def _program4() -> tuple:
    """One nibble word N -> 4 registers: $o0 / $o1 = prmt(TL, codes 0-3 / 4-7) (level, or -1 for codes >= 8),
    $o2 / $o3 = prmt(TH + 1, n ^ 8) (level + 1 for codes >= 8, else 0); $o0 + $o2 is the level."""
    return (("xor", "x8", "N", 0x88888888), ("prmt", "$o0", "TL0", "TL1", "N"), ("prmt", "$o2", "TH0", "TH1", "x8"),
            ("shr", "n1", "N", 16), ("shr", "y1", "x8", 16), ("prmt", "$o1", "TL0", "TL1", "n1"),
            ("prmt", "$o3", "TH0", "TH1", "y1"))


PROGRAMS = {3: lut.K8_PROGRAMS[3], 4: _program4(), 5: _program5()}
# asm operands (pack = 4: every input tensor gives 4 registers, the joined copies; outputs one int8x4 each)
_T5 = ("PL0", "PL1", "PH0", "PH1", "EL0", "EL1", "EH0", "EH1")
OPERANDS = {
    3: lut.K8_OPERANDS,
    4: {**{f"$o{i}": f"${i}" for i in range(4)}, "N": "$4", **{n: f"${8 + 4 * i}" for i, n in
                                                                 enumerate(("TL0", "TL1", "TH0", "TH1"))}},
    5: {"$o0": "$0", "$o1": "$1", "N": "$2", "S": "$3", **{n: f"${6 + 4 * i}" for i, n in enumerate(_T5)}},
}
CONSTRAINTS = {3: lut.K8_CONSTRAINTS, 4: ",".join(["=r"] * 4 + ["r"] * 20), 5: ",".join(["=r"] * 2 + ["r"] * 36)}
N_TABLE = {3: 2, 4: 4, 5: 8}  # table words before alpha
TABLE_NAMES = {3: ("LT0", "LT1"), 4: ("TL0", "TL1", "TH0", "TH1"), 5: _T5}


PTX = {b: lut.render(PROGRAMS[b], OPERANDS[b]) for b in GRID_BITS}


def code_of_slot(kslot: int, bits: int) -> int:
    """The code (0..127 within a 128-block) at the kernel's k-slot ``32 kk + 16 h + 4 t + e``."""
    e, t, h, kk = kslot & 3, (kslot >> 2) & 3, (kslot >> 4) & 1, kslot >> 5
    if bits == 3:  # lut.KEY_GROUPS: output g = 2 (kk & 1) + h of 2-bit word kk >> 1, byte e = field 2 e + ...
        return 32 * t + 8 * kk + 2 * e + h
    return 32 * t + 8 * kk + 4 * h + e


@triton.jit
def _xq8_kernel(x_ptr, xq_ptr, f_ptr, M, stride_xm, inv_alpha, BITS: tl.constexpr):
    """x [M <= 4, Kp] (rotated) -> per 128-block ``blk``: xq [blk, 8, 128] int8, row c = token c >> 1's hi (c even)
    or lo (c odd) plane of x / s at the kernel's k-slot order (``code_of_slot``), zero for tokens >= M; f [blk, 8] =
    s / alpha (lo: s / (254 alpha)), s = max|x block| / 127. Triton, so the interpreter runs it on the CPU."""
    blk = tl.program_id(0)
    c = tl.arange(0, 8)[:, None]
    ks = tl.arange(0, 128)[None, :]
    e = ks & 3
    t = (ks >> 2) & 3
    h = (ks >> 4) & 1
    kk = ks >> 5
    if BITS == 3:
        code = 32 * t + 8 * kk + 2 * e + h
    else:
        code = 32 * t + 8 * kk + 4 * h + e
    m = c >> 1
    xv = tl.load(x_ptr + m * stride_xm + blk * 128 + code, mask=(m < M) & (code >= 0), other=0.0).to(tl.float32)
    amax = tl.max(tl.abs(xv), axis=1)
    sx = tl.where(amax > 0.0, amax / 127.0, 1.0)
    xn = xv / sx[:, None]
    xh = tl.floor(xn + 0.5)
    xl = tl.floor((xn - xh) * 254.0 + 0.5)
    tl.store(xq_ptr + blk * 1024 + c * 128 + ks, tl.where((c & 1) == 1, xl, xh).to(tl.int8))
    c1 = tl.arange(0, 8)
    tl.store(f_ptr + blk * 8 + c1, tl.where((c1 & 1) == 1, sx / 254.0, sx) * inv_alpha)


def x_planes(xr: torch.Tensor, bits: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(xq int8 [nblk, 8, 128], f fp32 [nblk, 8]) of rotated x [M <= 4, Kp] (``_xq8_kernel``)."""
    m, kp = xr.shape
    nblk = kp // 128
    xq = torch.empty(nblk, 8, 128, dtype=torch.int8, device=xr.device)
    f = torch.empty(nblk, 8, dtype=torch.float32, device=xr.device)
    _xq8_kernel[(nblk,)](xr, xq, f, m, xr.stride(0), 1.0 / grid.grid(bits)[0], BITS=bits, num_warps=4)
    return xq, f


def _build():
    from triton.experimental import gluon
    from triton.experimental.gluon import language as gl
    from triton.experimental.gluon.language.nvidia.hopper import fence_async_shared, warpgroup_mma, warpgroup_mma_wait

    PTX3 = gl.constexpr(PTX[3])
    PTX4 = gl.constexpr(PTX[4])
    PTX5 = gl.constexpr(PTX[5])
    C3 = gl.constexpr(CONSTRAINTS[3])
    C4 = gl.constexpr(CONSTRAINTS[4])
    C5 = gl.constexpr(CONSTRAINTS[5])
    N_TABLE_C = gl.constexpr(N_TABLE)
    MMA8 = gl.constexpr(gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[4, 1], instr_shape=[16, 8, 32]))
    DOT_A8 = gl.constexpr(gl.DotOperandLayout(operand_index=0, parent=MMA8.value, k_width=4))
    _LANES = [[0, 1, 0], [0, 2, 0], [1, 0, 0], [2, 0, 0], [4, 0, 0]]
    _WARPS = [[16, 0, 0], [32, 0, 0]]
    # code words [64 rows, 4 t, q]: lanes t then g (rows), warps rows 16 w, registers q then row bit 3
    LW3 = gl.constexpr(gl.DistributedLinearLayout(reg_bases=[[0, 0, 1], [8, 0, 0]], lane_bases=_LANES,
                                                  warp_bases=_WARPS, block_bases=[], shape=[64, 4, 2]))
    LW4 = gl.constexpr(gl.DistributedLinearLayout(reg_bases=[[0, 0, 1], [0, 0, 2], [8, 0, 0]], lane_bases=_LANES,
                                                  warp_bases=_WARPS, block_bases=[], shape=[64, 4, 4]))
    # the asm inputs: two joined copies (the bytes of one output register) as the first register bases
    _L5 = [[0, 1, 0, 0, 0], [0, 2, 0, 0, 0], [1, 0, 0, 0, 0], [2, 0, 0, 0, 0], [4, 0, 0, 0, 0]]
    _W5 = [[16, 0, 0, 0, 0], [32, 0, 0, 0, 0]]
    LJ3 = gl.constexpr(gl.DistributedLinearLayout(
        reg_bases=[[0, 0, 0, 1, 0], [0, 0, 0, 0, 1], [0, 0, 1, 0, 0], [8, 0, 0, 0, 0]], lane_bases=_L5,
        warp_bases=_W5, block_bases=[], shape=[64, 4, 2, 2, 2]))
    LJ4 = gl.constexpr(gl.DistributedLinearLayout(
        reg_bases=[[0, 0, 0, 1, 0], [0, 0, 0, 0, 1], [0, 0, 1, 0, 0], [0, 0, 2, 0, 0], [8, 0, 0, 0, 0]],
        lane_bases=_L5, warp_bases=_W5, block_bases=[], shape=[64, 4, 4, 2, 2]))
    L4 = gl.constexpr(gl.DistributedLinearLayout(
        reg_bases=[[8, 0]], lane_bases=[[0, 1], [0, 2], [1, 0], [2, 0], [4, 0]],
        warp_bases=[[16, 0], [32, 0]], block_bases=[], shape=[64, 4]))

    @gluon.jit
    def _aranges3(N0: gl.constexpr, N1: gl.constexpr, N2: gl.constexpr, L: gl.constexpr):
        i0 = gl.arange(0, N0, layout=gl.SliceLayout(1, gl.SliceLayout(2, L)))[:, None, None]
        i1 = gl.arange(0, N1, layout=gl.SliceLayout(0, gl.SliceLayout(2, L)))[None, :, None]
        i2 = gl.arange(0, N2, layout=gl.SliceLayout(0, gl.SliceLayout(1, L)))[None, None, :]
        return i0, i1, i2

    @gluon.jit
    def _offsets(RS, NS, HOFF, BITS: gl.constexpr):
        """Per-thread word offsets within a row tile's first block: the widest plane's words [64 rows, 4 t, q],
        the 1-bit plane's [64, 4 t] and the norms' [64] (rows as the MMA holds them)."""
        if BITS == 3:
            LW: gl.constexpr = LW3
            NQ: gl.constexpr = 2
        else:
            LW: gl.constexpr = LW4
            NQ: gl.constexpr = 4
        r, t, q = _aranges3(64, 4, NQ, LW)
        woff = r * RS + (NQ * t + q)
        r2 = gl.arange(0, 64, layout=gl.SliceLayout(1, gl.SliceLayout(2, LW)))[:, None]
        t2 = gl.arange(0, 4, layout=gl.SliceLayout(0, gl.SliceLayout(2, LW)))[None, :]
        soff = r2 * RS + (HOFF + t2)
        noff = gl.arange(0, 64, layout=gl.SliceLayout(1, MMA8)) * NS
        return woff, soff, noff

    @gluon.jit
    def _words(p_ptr, n_ptr, woff, soff, noff, step, t0, s, RS, NS, BITS: gl.constexpr, KS: gl.constexpr):
        """Step ``step``'s code words (its row tile's rows, its 128-block): the widest plane's words, the 1-bit
        plane's (3 and 5 bits) and the rows' norms (fp32). Only scalars change per step."""
        NQ: gl.constexpr = 2 if BITS == 3 else 4
        row0 = (t0 + step // KS) * 64
        blk = s * KS + step % KS
        w = gl.load(p_ptr + (woff + (row0 * RS + blk * (4 * NQ))))
        if BITS == 4:
            sw = w
        else:
            sw = gl.load(p_ptr + (soff + (row0 * RS + blk * 4)))
        nrm = gl.load(n_ptr + (noff + (row0 * NS + blk))).to(gl.float32)
        return w, sw, nrm

    @gluon.jit
    def _words2(p_ptr, n_ptr, woff, soff, noff, i, steps, t0, s, RS, NS, BITS: gl.constexpr, KS: gl.constexpr):
        """``_words`` of steps i and i + 1 (clamped to the program's last step)."""
        wa, sa, na = _words(p_ptr, n_ptr, woff, soff, noff, gl.minimum(i, steps - 1), t0, s, RS, NS, BITS, KS)
        wb, sb, nb = _words(p_ptr, n_ptr, woff, soff, noff, gl.minimum(i + 1, steps - 1), t0, s, RS, NS, BITS, KS)
        return wa, sa, na, wb, sb, nb

    @gluon.jit
    def _decode(w, sw, T0, T1, T2, T3, T4, T5, T6, T7, BITS: gl.constexpr):
        """The block's A operand(s) [64 rows, 128 k-slots] int8 (4 bits: two, to be summed by the MMAs)."""
        w = w.to(gl.uint32, bitcast=True)
        if BITS == 3:
            # the 2-bit word u of thread t holds codes 32 t + 16 u + field; its high bits: half u of the 1-bit word
            u = gl.arange(0, 2, layout=gl.SliceLayout(0, gl.SliceLayout(1, LW3)))[None, None, :]
            hw = (sw.to(gl.uint32, bitcast=True)[:, :, None] >> (16 * u)) & 0xFFFF
            wh = gl.join(w, hw)
            wh = gl.convert_layout(gl.join(wh, wh), LJ3, assert_trivial=True)
            o0, o1, o2, o3 = gl.inline_asm_elementwise(
                PTX3, C3, [wh, T0, T1],
                dtype=(gl.int8, gl.int8, gl.int8, gl.int8), is_pure=True, pack=4)
            # [row, t, u, b, a, g0, g1] -> k-slot 64 u + 32 g1 + 16 g0 + 4 t + 2 a + b
            jt = gl.join(gl.join(o0, o1), gl.join(o2, o3))
            a1 = gl.reshape(gl.permute(jt, [0, 2, 6, 5, 1, 4, 3]), [64, 128])
            return gl.convert_layout(a1, DOT_A8, assert_trivial=True), a1
        else:
            LJ: gl.constexpr = LJ4
            if BITS == 5:
                q = gl.arange(0, 4, layout=gl.SliceLayout(0, gl.SliceLayout(1, LW4)))[None, None, :]
                sq = sw.to(gl.uint32, bitcast=True)[:, :, None] >> (8 * q)  # bit 4 of the word's 8 codes
                ns = gl.join(w, sq)
                ns = gl.convert_layout(gl.join(ns, ns), LJ, assert_trivial=True)
                o0, o1 = gl.inline_asm_elementwise(
                    PTX5, C5, [ns, T0, T1, T2, T3, T4, T5, T6, T7],
                    dtype=(gl.int8, gl.int8), is_pure=True, pack=4)
                # [row, t, q, b, a, h] -> k-slot 32 q + 16 h + 4 t + 2 a + b
                a1 = gl.reshape(gl.permute(gl.join(o0, o1), [0, 2, 5, 1, 4, 3]), [64, 128])
                return gl.convert_layout(a1, DOT_A8, assert_trivial=True), a1
            else:
                ww = gl.join(w, w)
                ww = gl.convert_layout(gl.join(ww, ww), LJ, assert_trivial=True)
                o0, o1, o2, o3 = gl.inline_asm_elementwise(
                    PTX4, C4, [ww, T0, T1, T2, T3],
                    dtype=(gl.int8, gl.int8, gl.int8, gl.int8), is_pure=True, pack=4)
                a1 = gl.reshape(gl.permute(gl.join(o0, o1), [0, 2, 5, 1, 4, 3]), [64, 128])
                a2 = gl.reshape(gl.permute(gl.join(o2, o3), [0, 2, 5, 1, 4, 3]), [64, 128])
                return gl.convert_layout(a1, DOT_A8, assert_trivial=True), gl.convert_layout(a2, DOT_A8,
                                                                                            assert_trivial=True)

    @gluon.jit
    def _pair(y, wa, sa, na, wb, sb, nb, xs, fs, b0, b1, zero, T0, T1, T2, T3, T4, T5, T6, T7, BITS: gl.constexpr):
        """Blocks b0, b1 of the slice (code words wa / wb): two decodes, their MMAs in flight together, one wait."""
        a1, a2 = _decode(wa, sa, T0, T1, T2, T3, T4, T5, T6, T7, BITS)
        c1, c2 = _decode(wb, sb, T0, T1, T2, T3, T4, T5, T6, T7, BITS)
        xb0 = xs.index(b0).permute((1, 0))
        xb1 = xs.index(b1).permute((1, 0))
        u0 = warpgroup_mma(a1, xb0, zero, use_acc=False, is_async=True)
        if BITS == 4:
            u0 = warpgroup_mma(a2, xb0, u0, is_async=True)
        u1 = warpgroup_mma(c1, xb1, zero, use_acc=False, is_async=True)
        if BITS == 4:
            u1 = warpgroup_mma(c2, xb1, u1, is_async=True)
        acc0, acc1 = warpgroup_mma_wait(0, deps=[u0, u1])
        f0 = fs.index(b0).load(MMA8)
        f1 = fs.index(b1).load(MMA8)
        return y + acc0.to(gl.float32) * f0 * na[:, None] + acc1.to(gl.float32) * f1 * nb[:, None]

    @gluon.jit
    def _gemv8_kernel(xq_ptr, f_ptr, p_ptr, n_ptr, lut_ptr, out_ptr, M, N, n_tiles, rt, stride_om, stride_os,
                      RS, NS, HOFF, BITS: gl.constexpr, KS: gl.constexpr, PF: gl.constexpr,
                      PAIR: gl.constexpr = False, EARLY: gl.constexpr = False):
        # (RS = packed row stride in words, NS = norms' row stride, HOFF = the 1-bit plane's first word: runtime
        # arguments, so Triton's divisibility-by-16 specialization, not a recompile per K, lets the loads vectorize)
        XS: gl.constexpr = gl.NVMMASharedLayout.get_default_for([8, 128], gl.int8)
        FS: gl.constexpr = gl.SwizzledSharedLayout(vec=1, per_phase=1, max_phase=1, order=[1, 0])
        LX: gl.constexpr = gl.BlockedLayout(size_per_thread=[1, 8], threads_per_warp=[8, 4], warps_per_cta=[1, 4],
                                            order=[1, 0])
        LF: gl.constexpr = gl.BlockedLayout(size_per_thread=[1, 1], threads_per_warp=[1, 32], warps_per_cta=[1, 4],
                                            order=[1, 0])
        pid = gl.program_id(0)
        s = gl.program_id(1)
        t0 = pid * rt
        nt = gl.minimum(rt, n_tiles - t0)
        steps = nt * KS
        woff, soff, noff = _offsets(RS, NS, HOFF, BITS)
        # the first steps' code words first: their latency overlaps the x prologue
        w0, s0, n0 = _words(p_ptr, n_ptr, woff, soff, noff, 0, t0, s, RS, NS, BITS, KS)
        if PF == 2 or PAIR:
            w1, s1, n1 = _words(p_ptr, n_ptr, woff, soff, noff, gl.minimum(1, steps - 1), t0, s, RS, NS, BITS, KS)
        # ---- x prologue: the slice's x planes (``_xq8_kernel``: [block, 8 MMA columns, 128 k-slots] int8 and the
        # columns' scales [block, 8]) into shared memory
        xs = gl.allocate_shared_memory(gl.int8, [KS, 8, 128], XS)
        fs = gl.allocate_shared_memory(gl.float32, [KS, 1, 8], FS)
        c = gl.arange(0, 8, layout=gl.SliceLayout(1, LX))[:, None]
        ks = gl.arange(0, 128, layout=gl.SliceLayout(0, LX))[None, :]
        cf = gl.arange(0, 8, layout=gl.SliceLayout(0, LF))[None, :]
        for bb in gl.static_range(KS):
            blk = s * KS + bb
            xs.index(bb).store(gl.load(xq_ptr + (blk * 1024 + c * 128 + ks)))
            fs.index(bb).store(gl.load(f_ptr + (blk * 8 + cf)))
        fence_async_shared()
        gl.thread_barrier()
        # the lookup tables, one register each per thread: loaded once as scalars, ptxas kept them in uniform
        # registers (or, as PTX immediates, rematerialized them) and copied them to vector registers before every
        # prmt (~60 extra instructions per step at 5 bits). XOR-ing in (a loaded zero) & (a per-thread index) makes
        # them per-thread values, which stay in vector registers.
        NT: gl.constexpr = N_TABLE_C[BITS]
        zero_word = gl.load(lut_ptr + (NT + 1))
        if BITS == 3:
            LJ: gl.constexpr = LJ3
            d0, d1, d2 = _aranges3(64, 4, 2, LW3)
        else:
            LJ: gl.constexpr = LJ4
            d0, d1, d2 = _aranges3(64, 4, 4, LW4)
        lane = (d0 & 0x37) * 4 + d1 + 0 * d2  # lane / warp bits only (row bit 3 and the third dim are registers)
        lane = gl.convert_layout(gl.join(gl.join(lane, lane), gl.join(lane, lane)), LJ, assert_trivial=True)
        noise = zero_word & lane
        T0 = gl.load(lut_ptr) ^ noise
        T1 = gl.load(lut_ptr + 1) ^ noise
        T2 = gl.load(lut_ptr + (2 % NT)) ^ noise
        T3 = gl.load(lut_ptr + (3 % NT)) ^ noise
        T4 = gl.load(lut_ptr + (4 % NT)) ^ noise
        T5 = gl.load(lut_ptr + (5 % NT)) ^ noise
        T6 = gl.load(lut_ptr + (6 % NT)) ^ noise
        T7 = gl.load(lut_ptr + (7 % NT)) ^ noise

        # ---- main loop: row tiles, and in each the slice's blocks; code words run PF steps ahead (PAIR: one trip)
        zero = gl.zeros([64, 8], gl.int32, layout=MMA8)
        rows4 = gl.arange(0, 64, layout=gl.SliceLayout(1, L4))[:, None]
        m4 = gl.arange(0, 4, layout=gl.SliceLayout(0, L4))[None, :]
        for tile in range(nt):
            y = gl.zeros([64, 8], gl.float32, layout=MMA8)
            if PAIR:  # two blocks per trip: two independent decode chains, their MMAs in flight together, one wait
                for b in range(0, KS, 2):
                    i = tile * KS + b
                    if EARLY:  # the loads in their own basic block (a branch that is always taken), so that ptxas
                        # cannot sink them below the MMA wait (offline SASS only: not timed)
                        if steps > 0:
                            w2, s2, n2, w3, s3, n3 = _words2(p_ptr, n_ptr, woff, soff, noff, i + 2, steps, t0, s,
                                                             RS, NS, BITS, KS)
                        else:
                            w2, s2, n2, w3, s3, n3 = w0, s0, n0, w1, s1, n1
                    else:
                        w2, s2, n2, w3, s3, n3 = _words2(p_ptr, n_ptr, woff, soff, noff, i + 2, steps, t0, s,
                                                         RS, NS, BITS, KS)
                    y = _pair(y, w0, s0, n0, w1, s1, n1, xs, fs, b, b + 1, zero, T0, T1, T2, T3, T4, T5, T6, T7,
                              BITS)
                    w0, s0, n0 = w2, s2, n2
                    w1, s1, n1 = w3, s3, n3
            else:
                for b in range(KS):
                    step = gl.minimum(tile * KS + b + PF, steps - 1)
                    if PF == 2:
                        w2, s2, n2 = _words(p_ptr, n_ptr, woff, soff, noff, step, t0, s, RS, NS, BITS, KS)
                    else:
                        w1, s1, n1 = _words(p_ptr, n_ptr, woff, soff, noff, step, t0, s, RS, NS, BITS, KS)
                    a1, a2 = _decode(w0, s0, T0, T1, T2, T3, T4, T5, T6, T7, BITS)
                    xb = xs.index(b).permute((1, 0))
                    acc = warpgroup_mma(a1, xb, zero, use_acc=False)
                    if BITS == 4:
                        acc = warpgroup_mma(a2, xb, acc)
                    fb = fs.index(b).load(MMA8)  # [1, 8]
                    y += acc.to(gl.float32) * fb * n0[:, None]
                    w0, s0, n0 = w1, s1, n1
                    if PF == 2:
                        w1, s1, n1 = w2, s2, n2
            # y[:, 2 m] + y[:, 2 m + 1] is token m's output
            yh, yl = gl.split(gl.reshape(y, [64, 4, 2]))
            y4 = gl.convert_layout(yh + yl, L4, assert_trivial=True)
            row = (t0 + tile) * 64 + rows4
            gl.store(out_ptr + s * stride_os + m4 * stride_om + row, y4.to(out_ptr.dtype.element_ty),
                     mask=(m4 < M) & (row < N))

    return _gemv8_kernel


_KERNEL = None


def kernel():
    global _KERNEL
    if _KERNEL is None:
        _KERNEL = _build()
    return _KERNEL


def supported(m: int, n: int, bits: int, block: int, kp: int, x_dtype: torch.dtype) -> bool:
    """The shapes this kernel covers: M <= 4 tokens, N a multiple of 64 (whole row tiles: no load predicates),
    3-5 bits, 128-blocks, word offsets within int32, bf16 / fp16 activations (fp32 x keeps the Triton GEMV: the
    two int8 planes of x hold ~15 bits, below fp32's precision)."""
    return (1 <= m <= MAX_M and n > 0 and n % 64 == 0 and bits in GRID_BITS and block == 128 and kp % 128 == 0
            and n * kp * bits // 32 < 2**31 and x_dtype in (torch.bfloat16, torch.float16))


def plan(n: int, kp: int, sms: int, ks: int | None = None, rt: int | None = None) -> tuple[int, int, int]:
    """(ks blocks per K slice, splits, rt row tiles per program): K slices of up to 8 blocks (a power of two dividing
    the block count), fewer while the grid has < 2 programs per SM; then enough row tiles per program for ~4
    programs per SM."""
    nblk = kp // 128
    n_tiles = -(-n // 64)
    if ks is None:
        ks = 1
        while ks * 2 <= 8 and nblk % (ks * 2) == 0:
            ks *= 2  # largest power of two <= 8 dividing nblk (S7: 8 blocks beat 16 and 32 on 24576 x 4096)
        while ks > 1 and n_tiles * (nblk // ks) < 2 * sms:
            ks //= 2
    if nblk % ks:
        raise ValueError(f"ks = {ks} must divide the {nblk} blocks of K")
    splits = nblk // ks
    if rt is None:
        rt = max(1, n_tiles * splits // (4 * sms))
    return ks, splits, min(rt, n_tiles)


def gemv8(xr: torch.Tensor, w, out_dtype: torch.dtype, table: torch.Tensor, *, ks: int | None = None,
          rt: int | None = None, pf: int = 2, pair: bool | None = None, early: bool = False) -> torch.Tensor:
    """``xr [M <= 4, Kp]`` (rotated, bf16/fp16, contiguous) @ W_rot.T -> ``[M, N]`` in ``out_dtype``; ``table`` =
    ``quant.grid.int8_tables(w.codebook, w.bits)``. K slices > 1: fp32 partials + ``_splitk_reduce_kernel``."""
    from .triton import _num_sms, _splitk_reduce_kernel

    if pf not in (1, 2):
        raise ValueError(f"gemv8: pf must be 1 or 2, got {pf}")
    m, kp = xr.shape
    n, bits = w.out_features, w.bits
    ks, splits, rt = plan(n, kp, _num_sms(xr.device), ks, rt)
    n_tiles = -(-n // 64)
    out = torch.empty(m, n, dtype=out_dtype, device=xr.device)
    dst = out if splits == 1 else torch.empty(splits, m, n, dtype=torch.float32, device=xr.device)
    hoff = kp // 8 if bits == 5 else (kp // 16 if bits == 3 else 0)
    xq, f = x_planes(xr, bits)
    kernel()[(-(-n_tiles // rt), splits)](
        xq, f, w.packed, w.norms, table, dst, m, n, n_tiles, rt, n, m * n,
        w.packed.stride(0), w.norms.stride(0), hoff, BITS=bits, KS=ks, PF=pf,
        PAIR=(ks % 2 == 0 and pf == 2) if pair is None else pair, EARLY=early, num_warps=4)
    if splits > 1:
        _splitk_reduce_kernel[(-(-(m * n) // 1024),)](dst, out, m * n, SPLIT_K=splits, BLOCK=1024, num_warps=4)
    return out

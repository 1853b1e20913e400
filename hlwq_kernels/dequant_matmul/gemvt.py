"""M = 1 decode GEMV that streams the packed codes through a TMA ring (Gluon): ``y [1, N] = x_rot @ W_rot.T``
for 3-, 4- and 5-bit weights, K a multiple of 4096.

Status: dequant_matmul's default for M = 1 where it measured faster than the Triton GEMV (``_gemv2_kernel``): 5 bits
at K = 4096 and N >= 16384 (gate+up, lm_head), 4 bits on every Qwen3.5 shape but 8192 x 4096, 3 bits on all of them
(N >= 2048); elsewhere opt-in (``method="gemvt"``). See ``DEFAULTS``.

Why. ``_gemv2_kernel`` loads the code words straight into registers, one row tile ahead. Its profile (perf/RESULTS.md,
S9-19, S12-2, S12-9) shows DRAM at ~65% of peak, long-scoreboard stalls on those words, a slow first trip and a
streaming rate of ~2.47 TB/s against cuBLAS's ~2.86. Here the copy engine (TMA) moves whole row tiles into a ring of
``stages`` shared-memory slots, ``stages - 1`` tiles ahead of their use: the bytes in flight no longer cost
registers or issue slots, and every program asks for its first ``stages - 1`` tiles at its first instruction.

Floor (H100 SXM, 3.35 TB/s HBM3; 5 bits: 0.625 bytes per weight + 2 / 128 for the norms = 0.641): 24576 x 4096
64.5 MB -> 19.3 us; 4096 x 12288 32.3 MB -> 9.6 us; 4096 x 4096 10.8 MB -> 3.2 us (plus ~1 us per launch).

Layout. A program owns a contiguous run of row tiles (``R`` rows) and walks them; for each it walks the K slices
of 4096 codes (one ring slot per (tile, slice)). 4 warps: thread ``j = 32 c + l`` (warp c, lane l) owns codes
``32 j .. 32 j + 31`` of the slice, whose x values it keeps in registers (fp32). Per slot the TMA unit copies
three boxes, each through a 3-D view of the global array whose middle dimension is the row, so that the box lands
as ``[warp chunk c, row, ...]``:
* the widest plane: 4/5 bits, the 4-bit plane: the packed rows viewed as ``[row_words / 128, N, 128]`` (strides
  128, row_words, 1), box ``[4, R, 128]``: thread (c, l) reads words ``4 l .. 4 l + 3`` of chunk c (one 16-byte
  load per row); 3 bits, the 2-bit plane: ``[row_words / 64, N, 64]``, box ``[4, R, 64]``, words ``2 l, 2 l + 1``;
* 3/5 bits, the 1-bit plane: ``[row_words / 32, N, 32]``, box ``[4, R, 32]``: thread (c, l) reads word l of chunk c;
* the norms: ``[nblk / 8, N, 8]`` fp16, box ``[4, R, 8]``: the thread's block is ``l // 4`` of chunk c.

Decode (5 bits, per nibble word w of 8 codes and the byte b of their bit 4, one LOP3 or shift each):
``E = (w & 0x0F0F0F0F) | (S_e & 0xF0F0F0F0)``, ``O = ((w >> 4) & 0x0F0F0F0F) | (S_o & 0xF0F0F0F0)`` with
``S_e = (b & 0x55) * 0x410410`` and ``S_o = (b & 0xAA) * 0x208208``: the multiplication moves bit ``2 k`` (``2 k +
1``) of b to bit ``8 k + 4``. The product's terms land at bits ``2 (k + 3 j) + 4``; at the four bits ``8 k + 4``
only the term j = k lands (k + 3 j = 4 k has no other solution for k, j in 0..3), and the three pairs of terms that
share a bit elsewhere (k + 3 j = 3, 6, 9) carry into an odd bit that the masks drop or that the shuffle does not
read. Code ``2 k`` is then ``E >> 8 k`` and code ``2 k + 1`` is ``O >> 8 k``: the level comes from a warp shuffle
(``shfl`` reads only the low 5 bits of its lane operand, so the bits above the code need no mask), then one FFMA.
4 bits: code i is ``w >> 4 i`` (the codebook table repeats every 16 lanes). 3 bits (2-bit word w of 16 codes, their
16 high bits h): one PRMT and one shift-or-mask step put h's nibble k in byte k; ``E = (w & 0x0F0F0F0F) | ((h << 4)
& 0xF0F0F0F0)``, ``F = ((w >> 4) & 0x0F0F0F0F) | ((h << 2) & 0xF0F0F0F0)`` (one LOP3 each): code ``4 k + e`` is ``E``
(e < 2) or ``F`` (e >= 2) shifted right by ``8 k + 2 (e & 1)``, its 2-bit field in bits 0-1 and its high bit in bit
4 (e even) or bit 3 (e odd). Two level tables serve the two cases: lane l holds level ``(l & 3) | (bit 4 of l) << 2``
or ``(l & 3) | (bit 3 of l) << 2``. 8 instructions per 16 codes before the per-code shift, shuffle and FFMA.

Row sums: each thread's per-row partials (norm applied) go through shared memory into a transposed layout and are
summed mostly in-thread (5 shuffles + 5 adds per row and thread otherwise). sm_90 SASS of the loop per 8-row step
per thread (256 codes): 5 bits 1107 instructions (4.3 per code; gemv2: ~4.9), 96 registers; 4 bits 866 (3.4); 3
bits 1019 (4.0), 95 registers.

Measured (H100, perf/RESULTS.md session 13, 5 bits): streaming ~2.94 TB/s (gemv2 2.47, cuBLAS 2.86) but a per-call
cost of ~5.6 us (gemv2 4.4, cuBLAS 2.65): each program's first slot lands 3-6 us after its start, and the programs'
ends spread over several us (``probe``, ``.notes/gemvt_probe.py``). Hence the 4/5-bit default only where N is large.
At 3 bits (session 14) it beat gemv2 on every shape measured, by 10-30%. Options:
``rows`` per slot, ``stages``, ``per_sm`` (programs per SM, bounded by shared memory), ``wg`` (2: 8 warps, each half
of the rows), ``stagger`` (the first slot's copies before the others: the first slot lands ~2.7 us earlier, but the
ends spread more; slower on gate+up, faster than the plain ring but not than gemv2 on 8192 x 4096).
``counter`` (opt-in, K = 4096): row tiles handed out at run time by a ticket counter (``_gemvt_dyn_kernel``; the
first ``stages`` tiles of each program static, each later one drawn a step before its copies are issued). It evens
out the programs' ends (gate+up, 3 bits: ends spread 19.4-22.0 us against 16.1-21.1 static) but measured slower at
3 bits on every shape (gate+up 23.2 vs 21.8 us) and faster at 5 bits on gate+up and lm_head (S14-7 / S14-8: 27.3 /
27.5 vs 28.0-28.3 us, 214.3 / 212.0 vs 229.6-231.0 us). Not a default: the counter is state shared between calls,
and calls that may overlap (other streams) need different counters, which nothing manages yet.

Session 15 (perf/RESULTS.md S15-1..S15-10): ``pdl=True`` (programmatic dependent launch: the first ring slots'
copies are issued before ``griddepcontrol.wait``, so the per-call cost above overlaps the previous kernel's tail;
``extra_slots`` holds every SM to ``per_sm`` programs, without which the next grid piled onto the SMs that freed
first) and ``rotated=False`` (the kernel rotates x itself: ``_x6_rot``). With PDL gemvt is the M = 1 default on every
Qwen3.5 shape (``pdl_options``).

Gluon does not run under the interpreter: ``decode_words`` replays the integer decode on the CPU (tested against
``unpack_bits``) and the GPU tests compare the compiled kernel with the reference.
"""

from __future__ import annotations

import torch

from .._common import cdiv

KSLICE = 4096  # codes per K slice: 4 warps x 32 lanes x 32 codes
BITS_OK = (3, 4, 5)


def main_width(bits: int) -> int:
    """Width of the widest plane (the code's low bits): 4 at 4/5 bits, 2 at 3 bits (then the 1-bit plane). It is
    also the number of that plane's words per thread and row in a K slice (32 codes)."""
    return 2 if bits == 3 else 4


def decode_words(w: torch.Tensor, b: torch.Tensor | None, bits: int) -> torch.Tensor:
    """The kernel's integer decode, on the CPU: the thread's words of the widest plane ``w`` [..., 4] (4/5 bits:
    nibble words) or [..., 2] (3 bits: 2-bit words) and, at 3/5 bits, their 1-bit-plane word ``b`` [...] -> the 5
    low bits the shuffle reads, [..., 32] in code order (code 8 m + i of nibble word m, 16 m + i of 2-bit word m).
    int64 arithmetic on 32-bit patterns (masked to 32 bits where the kernel's int32 arithmetic would wrap; the
    kernel's arithmetic right shifts only differ from these in bits above the ones used)."""
    w = w.to(torch.int64) & 0xFFFFFFFF
    if bits == 3:  # -> the field in bits 0-1 and the high bit in bit 4 (code 4 k + e, e even) or bit 3 (e odd)
        i = torch.arange(16)
        m = torch.arange(2)
        hb = ((b.to(torch.int64)[..., None] & 0xFFFFFFFF) >> (16 * m)) & 0xFFFF
        h = (hb & 0xFF) | ((hb >> 8) << 16)  # (the kernel: one PRMT)
        h = (h | (h << 4)) & 0x0F0F0F0F  # byte k: the high bits of codes 4 k .. 4 k + 3
        e = (w & 0x0F0F0F0F) | ((h << 4) & 0xF0F0F0F0)
        f = ((w >> 4) & 0x0F0F0F0F) | ((h << 2) & 0xF0F0F0F0)
        ef = torch.where((i & 2) == 0, e[..., None], f[..., None])
        code = ef >> (8 * (i >> 2) + 2 * (i & 1))
        return (code & 0x1F).reshape(*w.shape[:-1], 32)
    i = torch.arange(8)
    if bits == 4:
        code = w[..., None] >> (4 * i)
        return (code & 0x1F).reshape(*w.shape[:-1], 32)
    m = torch.arange(4)
    bm = (b.to(torch.int64)[..., None] & 0xFFFFFFFF) >> (8 * m)
    se = ((bm & 0x55) * 0x410410) & 0xFFFFFFFF
    so = ((bm & 0xAA) * 0x208208) & 0xFFFFFFFF
    e = (w & 0x0F0F0F0F) | (se & 0xF0F0F0F0)
    o = ((w >> 4) & 0x0F0F0F0F) | (so & 0xF0F0F0F0)
    eo = torch.where((i & 1) == 0, e[..., None], o[..., None])
    code = eo >> (8 * (i >> 1))
    return (code & 0x1F).reshape(*w.shape[:-1], 32)


def table_entry(v: torch.Tensor, bits: int) -> torch.Tensor:
    """The codebook entry that lane ``v`` (the 5 bits a shuffle reads, [..., 32] in the thread's code order, as
    ``decode_words`` gives them) holds in the kernel's level table: ``v mod 2**bits`` at 4/5 bits; at 3 bits the
    field ``v & 3`` and the high bit from bit 4 (even codes) or bit 3 (odd codes: the second table)."""
    if bits != 3:
        return v & ((1 << bits) - 1)
    odd = (torch.arange(v.shape[-1]) & 1) == 1
    return (v & 3) | (torch.where(odd, v >> 3, v >> 4) & 1) << 2


def _build(R: int, STAGES: int, BITS: int, WG: int):
    from triton.experimental import gluon
    from triton.experimental.gluon import language as gl
    from triton.experimental.gluon.language.nvidia.hopper import fence_async_shared, mbarrier, tma

    from .._pdl import gdc_launch, gdc_wait  # (Triton functions: griddepcontrol.wait / launch_dependents)
    from .triton import _g2_probe  # (diagnostics: gemv2's timestamp helper; a 1-D grid gives program_id(0))

    WPT = main_width(BITS)  # words of the widest plane per thread and row (4 nibble or 2 2-bit words)
    CPW = 32 // WPT  # codes per word
    # [c (K chunk), row, l8, l4 (lane = 4 l8 + l4), m (word), i (code in word)]; WG warp groups split the rows
    P6 = gl.BlockedLayout(size_per_thread=[1, R // WG, 1, 1, WPT, CPW], threads_per_warp=[1, 1, 8, 4, 1, 1],
                          warps_per_cta=[4, WG, 1, 1, 1, 1], order=[5, 4, 3, 2, 1, 0])
    P5 = gl.SliceLayout(5, P6)  # the words [c, row, l8, l4, m]
    P4 = gl.SliceLayout(4, P5)  # per thread and row [c, row, l8, l4]
    P3 = gl.SliceLayout(3, P4)  # the norms [c, row, l8]

    def _nest(dims, L):
        for o in reversed(dims):
            L = gl.SliceLayout(o, L)
        return L

    # 1-D layouts of each dimension of P6 (the others sliced away), for aranges broadcast back to 6-D
    AC, _, AL8, AL4, AM, AI = (gl.constexpr(_nest([o for o in range(6) if o != d], P6)) for d in range(6))
    P6c = gl.constexpr(P6)
    P5c = gl.constexpr(P5)
    P4c = gl.constexpr(P4)
    P3c = gl.constexpr(P3)
    RT = R // WG  # rows per thread
    assert RT in (2, 4, 8), "rows / wg must be 2, 4 or 8"
    LT = gl.BlockedLayout(size_per_thread=[1, 1, RT, 1], threads_per_warp=[1, RT, 8 // RT, 4],
                          warps_per_cta=[4, WG, 1, 1], order=[3, 2, 1, 0])
    LTc = gl.constexpr(LT)
    RY = gl.constexpr(gl.SliceLayout(0, gl.SliceLayout(2, gl.SliceLayout(2, LT))))  # [row] after the sums
    LW = gl.constexpr(gl.BlockedLayout(size_per_thread=[1, R // WG, WPT], threads_per_warp=[1, 1, 32],
                                       warps_per_cta=[4, WG, 1], order=[2, 1, 0]))
    LB = gl.constexpr(gl.BlockedLayout(size_per_thread=[1, R // WG, 1], threads_per_warp=[1, 1, 32],
                                       warps_per_cta=[4, WG, 1], order=[2, 1, 0]))
    A4M = gl.constexpr(_nest([0, 1, 2, 3], P5))  # m of the words [c, row, l8, l4, m]
    R_ = gl.constexpr(R)
    STAGES_ = gl.constexpr(STAGES)
    BITS_ = gl.constexpr(BITS)
    WPT_ = gl.constexpr(WPT)
    CPW_ = gl.constexpr(CPW)
    PLANE1_ = gl.constexpr(BITS in (3, 5))  # a 1-bit plane after the widest one

    # the fused rotation's load layout: [4 c, 32 lanes, 5 in-thread bits of the thread's 32 codes] (4 warps)
    XL = gl.BlockedLayout(size_per_thread=[1, 1, 2, 2, 2, 2, 2], threads_per_warp=[1, 32, 1, 1, 1, 1, 1],
                          warps_per_cta=[4, 1, 1, 1, 1, 1, 1], order=[6, 5, 4, 3, 2, 1, 0])
    XA = [gl.constexpr(_nest([o for o in range(7) if o != d], XL)) for d in range(7)]
    XA0, XA1, XA2, XA3, XA4, XA5, XA6 = XA

    @gluon.jit
    def _lane_bfly(v, lane, bit):
        """One butterfly stage across lanes: lane l gets v + v[l ^ bit] (bit of l clear) or v[l ^ bit] - v (set)."""
        p = gl.inline_asm_elementwise("shfl.sync.bfly.b32 $0, $1, $2, 0x1f, 0xffffffff;", "=f,f,r", [v, bit],
                                      dtype=gl.float32, is_pure=True, pack=1)
        return gl.where((lane & bit) == 0, p + v, p - v)

    @gluon.jit
    def _x6_rot(x_ptr, s):
        """``_x6`` of fwht(x) (unnormalised: the level tables carry 1 / sqrt(128)): the 128-block of codes 32 (4 l8 +
        l4) + q of chunk c spans the four lanes l4 = 0..3, so the Sylvester transform H_4 (x) H_32 is two butterfly
        stages across lanes (shuffles) and five on the thread's 32 values (split, add / subtract, join, permute)."""
        c = gl.arange(0, 4, layout=XA0)[:, None, None, None, None, None, None]
        ln = gl.arange(0, 32, layout=XA1)[None, :, None, None, None, None, None]
        b4 = gl.arange(0, 2, layout=XA2)[None, None, :, None, None, None, None]
        b3 = gl.arange(0, 2, layout=XA3)[None, None, None, :, None, None, None]
        b2 = gl.arange(0, 2, layout=XA4)[None, None, None, None, :, None, None]
        b1 = gl.arange(0, 2, layout=XA5)[None, None, None, None, None, :, None]
        b0 = gl.arange(0, 2, layout=XA6)[None, None, None, None, None, None, :]
        off = s * 4096 + 1024 * c + 32 * ln + (16 * b4 + 8 * b3 + 4 * b2 + 2 * b1 + b0)
        v = gl.load(x_ptr + off).to(gl.float32)  # [4, 32, 2, 2, 2, 2, 2]
        lane, v = gl.broadcast(ln, v)
        v = _lane_bfly(v, lane, 1)
        v = _lane_bfly(v, lane, 2)
        for _ in gl.static_range(5):  # the last axis (a bit of q): a butterfly, then it moves to axis 2
            a, b = gl.split(v)
            v = gl.permute(gl.join(a + b, a - b), [0, 1, 6, 2, 3, 4, 5])
        v = gl.reshape(v, [4, 1, 8, 4, WPT_, CPW_])
        return gl.convert_layout(v, P6c)

    @gluon.jit
    def _x6(x_ptr, s):
        """x of K slice s in the thread's code order: [4 c, 1, 8 l8, 4 l4, WPT m, CPW i] fp32."""
        c = gl.arange(0, 4, layout=AC)[:, None, None, None, None, None]
        l8 = gl.arange(0, 8, layout=AL8)[None, None, :, None, None, None]
        l4 = gl.arange(0, 4, layout=AL4)[None, None, None, :, None, None]
        m = gl.arange(0, WPT_, layout=AM)[None, None, None, None, :, None]
        i = gl.arange(0, CPW_, layout=AI)[None, None, None, None, None, :]
        off = s * 4096 + (1024 * c + 128 * l8 + 32 * l4) + (CPW_ * m + i)
        return gl.load(x_ptr + off).to(gl.float32)

    @gluon.jit
    def _copy(wd, bd, nd, wring, bring, nring, bars, tile, s, st, pr, HB):
        """Start the TMA copies of row tile ``tile``, K slice ``s`` into ring slot ``st`` (only where ``pr``)."""
        row = tile * R_
        bar = bars.index(st)
        if PLANE1_:
            mbarrier.expect(bar, R_ * (4 * 32 * WPT_ * 4 + 4 * 32 * 4 + 4 * 8 * 2), pred=pr)
            tma.async_copy_global_to_shared(bd, [HB + 4 * s, row, 0], bar, bring.index(st), pred=pr)
        else:
            mbarrier.expect(bar, R_ * (4 * 32 * WPT_ * 4 + 4 * 8 * 2), pred=pr)
        tma.async_copy_global_to_shared(wd, [4 * s, row, 0], bar, wring.index(st), pred=pr)
        tma.async_copy_global_to_shared(nd, [4 * s, row, 0], bar, nring.index(st), pred=pr)

    @gluon.jit
    def _issue(wd, bd, nd, wring, bring, nring, bars, step, n_steps, t_lo, HB, SPLITS: gl.constexpr):
        """Start the TMA copies of step ``step`` (row tile t_lo + step // SPLITS, K slice step % SPLITS) into ring
        slot step % STAGES; nothing past the program's last step."""
        gl.static_assert(SPLITS >= 1)  # (also puts gl in this closure, which the annotation needs)
        _copy(wd, bd, nd, wring, bring, nring, bars, t_lo + step // SPLITS, step % SPLITS, step % STAGES_,
              step < n_steps, HB)

    @gluon.jit
    def _store_tile(acc, tile, out_ptr, N):
        """A row tile's output: the row sums over 128 threads, transposed through shared memory first (LT: each
        thread holds RT of its warp's partials of one row), then 2-3 lane steps and the warps (summed in place,
        every thread would pay 5 shuffles + 5 adds per row)."""
        y = gl.sum(gl.sum(gl.sum(gl.convert_layout(acc, LTc), axis=2), axis=2), axis=0)
        rows = tile * R_ + gl.arange(0, R_, layout=RY)
        gl.store(out_ptr + rows, y.to(out_ptr.dtype.element_ty), mask=rows < N)

    @gluon.jit
    def _merge(w, s):
        """(w & 0x0F0F0F0F) | (s & 0xF0F0F0F0) in one LOP3 (written out, LLVM narrows the second mask from the known
        bits of s and ptxas then needs two)."""
        return gl.inline_asm_elementwise("lop3.b32 $0, $1, $2, 0x0F0F0F0F, 0xE4;", "=r,r,r", [w, s], dtype=gl.int32,
                                         is_pure=True, pack=1)

    @gluon.jit
    def _prmt(a, sel):
        """Bytes of ``a`` (4..7: zero) picked by the nibbles of ``sel`` (PRMT)."""
        return gl.inline_asm_elementwise("prmt.b32 $0, $1, 0, $2;", "=r,r,r", [a, sel], dtype=gl.int32,
                                         is_pure=True, pack=1)

    @gluon.jit
    def _slot(wring, bring, nring, st, xv, lane_cb):
        """One ring slot: R rows x one K slice -> the thread's norm-scaled partial sums [4 c, R, 8 l8, 4 l4]."""
        w = gl.convert_layout(gl.reshape(wring.index(st).load(LW), [4, R_, 8, 4, WPT_]), P5c, assert_trivial=True)
        i = gl.arange(0, CPW_, layout=AI)[None, None, None, None, None, :]
        if BITS_ == 3:
            # 2-bit words w (16 codes) and the 1-bit word b of the thread's 32 codes (the high bit of code j of word
            # m is bit 16 m + j of b). PRMT puts b's bytes 2 m, 2 m + 1 in bytes 0 and 2, one shift-or-mask step
            # spreads their nibbles to bytes: byte k of h = the high bits of codes 4 k .. 4 k + 3. Byte k of E =
            # (fields of codes 4 k, 4 k + 1 in bits 0-3 | their high bits in bits 4-5), from w and h << 4 (one
            # LOP3); F the same for codes 4 k + 2, 4 k + 3 from w >> 4 and h << 2. Code 4 k + e is then E or F >>
            # (8 k + 2 (e & 1)): the field in bits 0-1, the high bit in bit 4 (e even) or 3 (e odd), which two
            # tables of the levels read (``lane_cb``: entry (l & 3) | bit 4 (or 3) of lane l << 2).
            b = gl.convert_layout(gl.reshape(bring.index(st).load(LB), [4, R_, 8, 4]), P4c, assert_trivial=True)
            m = gl.arange(0, 2, layout=A4M)[None, None, None, None, :]
            bb, sel = gl.broadcast(b[:, :, :, :, None], 0x4140 + 0x202 * m)
            h = _prmt(bb, sel)
            h = (h | (h << 4)) & 0x0F0F0F0F
            e = _merge(w, h << 4)
            f = _merge(w >> 4, h << 2)
            ef = gl.where((i & 2) == 0, e[:, :, :, :, :, None], f[:, :, :, :, :, None])
            code = ef >> (8 * (i >> 2) + 2 * (i & 1))
        elif BITS_ == 5:
            b = gl.convert_layout(gl.reshape(bring.index(st).load(LB), [4, R_, 8, 4]), P4c, assert_trivial=True)
            m = gl.arange(0, 4, layout=A4M)[None, None, None, None, :]
            bm = b[:, :, :, :, None] >> (8 * m)
            se = (bm & 0x55) * 0x410410
            so = (bm & 0xAA) * 0x208208
            e = _merge(w, se)
            o = _merge(w >> 4, so)
            code = gl.where((i & 1) == 0, e[:, :, :, :, :, None], o[:, :, :, :, :, None]) >> (8 * (i >> 1))
        else:
            code = w[:, :, :, :, :, None] >> (4 * i)
        vals = gl.inline_asm_elementwise("shfl.sync.idx.b32 $0, $1, $2, 0x1f, 0xffffffff;", "=f,f,r",
                                         [lane_cb, code], dtype=gl.float32, is_pure=True, pack=1)
        # one FFMA chain per row over the thread's 32 codes (summing i then m adds 4 FMUL + 3 FADD per row)
        part = gl.sum(gl.reshape(vals * xv, [4, R_, 8, 4, 32]), axis=4)  # [4, R, 8, 4]
        part = gl.convert_layout(part, P4c, assert_trivial=True)
        nrm = nring.index(st).load(P3c).to(gl.float32)  # [4, R, 8]
        return part * nrm[:, :, :, None]

    @gluon.jit
    def _rings(wd, bd, nd, XS: gl.constexpr = 0):
        """The ring's shared memory (STAGES slots of the widest plane, the 1-bit plane at 3/5 bits, the norms) and
        its mbarriers, initialized."""
        wring = gl.allocate_shared_memory(gl.int32, [STAGES_ + XS, 4, R_, 32 * WPT_], wd.layout)
        if PLANE1_:
            bring = gl.allocate_shared_memory(gl.int32, [STAGES_, 4, R_, 32], bd.layout)
        else:
            bring = wring
        nring = gl.allocate_shared_memory(gl.float16, [STAGES_, 4, R_, 8], nd.layout)
        bars = gl.allocate_shared_memory(gl.int64, [STAGES_, 1], mbarrier.MBarrierLayout())
        for st in gl.static_range(STAGES_):
            mbarrier.init(bars.index(st), count=1)
        fence_async_shared()
        return wring, bring, nring, bars

    @gluon.jit
    def _level_tables(cb_ptr):
        """The codebook entry each lane holds for the shuffles: entry lane % 2**BITS; at 3 bits two tables, the high
        bit read from bit 4 of the lane (even codes of a pair) or bit 3 (odd ones), per code position i."""
        l8 = gl.arange(0, 8, layout=AL8)[None, None, :, None, None, None]
        l4 = gl.arange(0, 4, layout=AL4)[None, None, None, :, None, None]
        lane = 4 * l8 + l4
        if BITS_ == 3:
            ta = gl.load(cb_ptr + ((lane & 3) | (((lane >> 4) & 1) << 2)))
            tb = gl.load(cb_ptr + ((lane & 3) | (((lane >> 3) & 1) << 2)))
            ii = gl.arange(0, CPW_, layout=AI)[None, None, None, None, None, :]
            lane_cb = gl.where((ii & 1) == 0, ta, tb)
        else:
            lane_cb = gl.load(cb_ptr + (lane & ((1 << BITS_) - 1)))
        return lane_cb

    @gluon.jit
    def _gemvt_kernel(x_ptr, cb_ptr, out_ptr, wd, bd, nd, N, n_tiles, HB, SPLITS: gl.constexpr,
                      STAGGER: gl.constexpr = False, PROBE: gl.constexpr = False, probe_ptr=None,
                      PDL: gl.constexpr = False, XS: gl.constexpr = 0, ROT: gl.constexpr = False):
        """PDL (launched with programmatic dependent launch): the first ring slots' copies (weights only) are issued
        before ``griddepcontrol.wait``; x is read and y written after it. The weights must not be written by a
        kernel still running before this one (true for inference). XS: unused ring slots of the widest plane that
        cap how many programs an SM holds (``extra_slots``). ROT: x is not rotated; the kernel applies fwht to it
        (``_x6_rot``)."""
        gl.static_assert(SPLITS >= 1)
        if PROBE:
            _g2_probe(probe_ptr, 0)
        pid = gl.program_id(0)
        nprog = gl.num_programs(0)
        t_lo = (pid * n_tiles) // nprog
        t_hi = ((pid + 1) * n_tiles) // nprog
        n_steps = (t_hi - t_lo) * SPLITS
        wring, bring, nring, bars = _rings(wd, bd, nd, XS)
        # STAGGER: only the first slot's copies before the x and codebook loads, the others after them (so that the
        # SM's TMA unit sees both programs' first slots before either one's later slots)
        for st in gl.static_range(1 if STAGGER else STAGES_ - 1):
            _issue(wd, bd, nd, wring, bring, nring, bars, st, n_steps, t_lo, HB, SPLITS)
        lane_cb = _level_tables(cb_ptr)
        if ROT:
            lane_cb = lane_cb * 0.08838834764831845  # 1 / sqrt(128): _x6_rot's transform is unnormalised
        if PDL:
            gdc_wait()
            gdc_launch()
        if ROT:
            xv = _x6_rot(x_ptr, 0)
        else:
            xv = _x6(x_ptr, 0)
        if STAGGER:
            for st in gl.static_range(1, STAGES_ - 1):
                _issue(wd, bd, nd, wring, bring, nring, bars, st, n_steps, t_lo, HB, SPLITS)
        acc = gl.zeros([4, R_, 8, 4], gl.float32, layout=P4c)
        for i in range(n_steps):  # step i: row tile t_lo + i // SPLITS, K slice i % SPLITS
            # refill the slot of step i - 1 with step i + STAGES - 1 (Triton's membar pass puts CTA barriers around
            # the copies: every warp's reads of that slot come first)
            _issue(wd, bd, nd, wring, bring, nring, bars, i + (STAGES_ - 1), n_steps, t_lo, HB, SPLITS)
            slot = i % STAGES_
            mbarrier.wait(bars.index(slot), (i // STAGES_) & 1)
            if PROBE:
                if i == 0:
                    _g2_probe(probe_ptr, 1)
                if i == n_steps - 1:
                    _g2_probe(probe_ptr, 2)
            if SPLITS > 1:  # (a runtime slice index: x of one slice in registers at a time)
                s = i % SPLITS
                if ROT:
                    xv = _x6_rot(x_ptr, s)
                else:
                    xv = _x6(x_ptr, s)
            acc += _slot(wring, bring, nring, slot, xv, lane_cb)
            if SPLITS == 1 or s == SPLITS - 1:
                _store_tile(acc, t_lo + i // SPLITS, out_ptr, N)
                acc = gl.zeros([4, R_, 8, 4], gl.float32, layout=P4c)
        for sb in gl.static_range(STAGES_):
            mbarrier.invalidate(bars.index(sb))
        if PROBE:
            _g2_probe(probe_ptr, 3)

    IDN = 1 << max(STAGES - 1, 1).bit_length()  # the ring's tile ids: a power of two >= STAGES
    IDN_ = gl.constexpr(IDN)
    LID = gl.constexpr(gl.BlockedLayout(size_per_thread=[IDN], threads_per_warp=[32], warps_per_cta=[4 * WG],
                                        order=[0]))
    NT_ = gl.constexpr(128 * WG)  # threads per program
    LONE = gl.constexpr(gl.BlockedLayout(size_per_thread=[1], threads_per_warp=[32], warps_per_cta=[4 * WG],
                                         order=[0]))

    @gluon.jit
    def _ticket(ptr, on):
        """Threads with ``on`` != 0 add 1 to ``*ptr`` and get the old value (others 0). Inline PTX: the compiled
        atomic_add is warp-aggregated, whose shuffle of the result waits for the atomic's round trip at once."""
        return gl.inline_asm_elementwise(
            "{ .reg .pred p; mov.u32 $0, 0; setp.ne.u32 p, $2, 0; "
            "@p atom.relaxed.gpu.global.inc.u32 $0, [$1], 0x7fffffff; }",
            "=r,l,r", [ptr, on], dtype=gl.int32, is_pure=False, pack=1)

    @gluon.jit
    def _gemvt_dyn_kernel(x_ptr, cb_ptr, out_ptr, wd, bd, nd, N, n_tiles, HB, ctr_ptr, PROBE: gl.constexpr = False,
                          probe_ptr=None):
        """The same ring and decode with row tiles handed out at run time (K = 4096 only). Steps 0 .. STAGES - 1 of
        program p take tiles p, p + P, .. (P programs); every later tile comes from a ticket counter ``ctr_ptr[0]``:
        tile STAGES P + ticket. The ticket for step i + STAGES is drawn at step i by one thread (an atomic whose
        result nothing waits for until step i + 1, when the copies of that step are issued: a scalar atomic would
        stall every thread for its round trip); a program stops at its first tile past the end (its tickets only
        grow, so every tile it drew before is in range and done). The last program to finish (``ctr_ptr[1]`` counts
        them) puts both counters back to 0 for the next call."""
        if PROBE:
            _g2_probe(probe_ptr, 0)
        pid = gl.program_id(0)
        nprog = gl.num_programs(0)
        n_static = STAGES_ * nprog
        wring, bring, nring, bars = _rings(wd, bd, nd)
        for st in gl.static_range(STAGES_ - 1):
            _copy(wd, bd, nd, wring, bring, nring, bars, pid + st * nprog, 0, st, pid + st * nprog < n_tiles, HB)
        lane_cb = _level_tables(cb_ptr)
        xv = _x6(x_ptr, 0)
        ar = gl.arange(0, IDN_, layout=LID)
        ids = pid + ar * nprog  # the tile of the step in each ring slot (slots 0 .. STAGES - 1: steps 0 .. STAGES - 1)
        nxt = pid + (STAGES_ - 1) * nprog  # the tile of step i + STAGES - 1
        oi = gl.arange(0, NT_, layout=LONE)
        first = oi == 0
        tkt = gl.zeros([NT_], gl.int32, layout=LONE)  # thread 0's last ticket
        cur = pid
        i = 0
        while cur < n_tiles:
            if i > 0:
                if nxt < n_tiles:  # the ticket drawn at step i - 1 names the tile of step i + STAGES - 1
                    nxt = n_static + gl.max(gl.where(first, tkt, 0), axis=0)
            sn = (i + STAGES_ - 1) % STAGES_
            _copy(wd, bd, nd, wring, bring, nring, bars, nxt, 0, sn, nxt < n_tiles, HB)
            ids = gl.where(ar == sn, nxt, ids)
            if nxt < n_tiles:  # draw the ticket of step i + STAGES
                tkt = _ticket(ctr_ptr + oi * 0, first.to(gl.int32))
            slot = i % STAGES_
            mbarrier.wait(bars.index(slot), (i // STAGES_) & 1)
            if PROBE:
                if i == 0:
                    _g2_probe(probe_ptr, 1)
                _g2_probe(probe_ptr, 2)
            _store_tile(_slot(wring, bring, nring, slot, xv, lane_cb), cur, out_ptr, N)
            i += 1
            cur = gl.sum(gl.where(ar == i % STAGES_, ids, 0), axis=0)
        for sb in gl.static_range(STAGES_):
            mbarrier.invalidate(bars.index(sb))
        if gl.atomic_add(ctr_ptr + 1, 1) == nprog - 1:  # the last program out resets the counters
            gl.store(ctr_ptr, 0)
            gl.store(ctr_ptr + 1, 0)
        if PROBE:
            _g2_probe(probe_ptr, 3)

    return _gemvt_kernel, _gemvt_dyn_kernel


_KERNELS: dict = {}


def kernel(rows: int, stages: int, bits: int, wg: int = 1, dyn: bool = False):
    key = (rows, stages, bits, wg)
    if key not in _KERNELS:
        _KERNELS[key] = _build(rows, stages, bits, wg)
    return _KERNELS[key][1 if dyn else 0]


def supported(m: int, bits: int, block: int, kp: int, packed: torch.Tensor, norms: torch.Tensor) -> bool:
    """What this kernel covers: one token, 3, 4 or 5 bits, 128-blocks, K a multiple of 4096, contiguous 16-byte
    aligned codes and norms (TMA's rules)."""
    return (m == 1 and bits in BITS_OK and block == 128 and kp % KSLICE == 0 and packed.is_contiguous()
            and norms.is_contiguous() and packed.data_ptr() % 16 == 0 and norms.data_ptr() % 16 == 0
            and packed.shape[0] < 2**31)


# The default options per bit width, where they beat gemv2 (H100, M = 1, graph timing, gemv2 and cuBLAS bf16 in the
# same run; perf/RESULTS.md S13-4, S14-2, S14-3, S14-5):
# * 5 bits (8 rows, 4 stages, 2 programs per SM): 24576 x 4096 27.22 vs 30.64 / 30.97 us (cuBLAS 72.08), 248320 x
#   4096 224.08 vs 268.75 / 272.52 (715.88). Slower than or equal to gemv2 at N <= 8192 and at K = 12288 (the
#   per-call cost: a program's first slot lands 3-6 us after its start, and the programs' ends spread over several
#   us; .notes/gemvt_probe.py), so those keep gemv2.
# * 4 bits (8 rows, 2 stages, 4 per SM): faster than gemv2 in two runs (S14-3 / S14-5, us, gemvt vs gemv2) on
#   24576 x 4096 23.57 / 24.12 vs 25.81 / 25.98, 248320 x 4096 183.21 / 190.03 vs 219.71 / 220.31, 4096 x 12288
#   17.15 / 17.24 vs 18.33 / 18.45, 4096^2 7.37 / 7.47 vs 7.62 / 7.65, 2048 x 4096 5.10 / 5.08 vs 5.67 / 5.71;
#   slower on 8192 x 4096 (11.27 / 11.40 vs 10.94 / 10.98), which keeps gemv2.
# * 3 bits (8 rows, 2 stages, 4 per SM): faster than gemv2 on all six shapes (S14-2, us, gemvt vs gemv2 / again):
#   8192 x 4096 10.29 vs 12.63 / 12.44, 4096^2 6.95 vs 7.53 / 7.56, 24576 x 4096 22.22 vs 28.12 / 28.05, 4096 x
#   12288 16.04 vs 22.72 / 22.64, 2048 x 4096 4.86 vs 5.51 / 5.54, 248320 x 4096 182.15 vs 238.67 / 243.18.
# N < 2048 was not measured (gemv2 there).
DEFAULTS = {5: dict(rows=8, stages=4, per_sm=2), 4: dict(rows=8, stages=2, per_sm=4),
            3: dict(rows=8, stages=2, per_sm=4)}
DEFAULT_MIN_N = {5: 16384, 4: 2048, 3: 2048}


def pdl_options(n: int, kp: int, bits: int) -> dict | None:
    """gemvt's options when launched with PDL (``dequant_matmul(pdl=True)``): at M = 1, 3-5 bits and N >= 2048 it is
    the default on every Qwen3.5 shape, since PDL hides the per-call cost that kept it out of the small 4/5-bit shapes
    (the first slot lands while the previous kernel finishes). H100, graph timing, back-to-back calls, S15-6 (us,
    rows x stages x programs per SM, cuBLAS bf16 in the same run):

    | shape (cuBLAS) | 5 bits: 8x2x4 / 8x2x3 / 8x4x2 / 8x3x3 | 4 bits | 3 bits |
    |---|---|---|---|
    | 8192 x 4096 (25.1-25.6) | 9.73 / 9.21 / 11.80 / 11.24 | 9.18 / 8.57 / 10.66 / 10.16 | 8.71 / 8.50 / 9.94 / 9.21 |
    | 4096^2 (16.4-16.6) | 6.96 / 6.29 / 7.29 / 7.22 | 6.34 / 5.92 / 6.55 / 6.55 | 5.74 / 5.91 / 6.02 / 5.90 |
    | 24576 x 4096 (72.2-72.8) | 24.48 / 24.18 / 25.60 / 23.38 | 19.34 / 19.55 / 23.54 / 21.19 |
    | | | | 19.15 / 19.07 / 22.20 / 20.68 |
    | 4096 x 12288 (39.2-39.3) | 15.52 / 20.29 / 18.67 / 20.11 | 14.75 / 19.14 / 17.78 / 18.58 |
    | | | | 12.99 / 18.38 / 16.63 / 17.79 |
    | 2048 x 4096 (11.0) | 3.86 / 4.03 / 4.56 / 4.26 | 3.52 / 4.13 / 4.21 / 4.16 | 3.37 / 3.86 / 3.83 / 3.89 |
    | 248320 x 4096 (715) | 225.82 / 222.81 / 231.97 / 225.19 | 184.96 / 184.46 / 206.30 / 190.16 |
    | | | | 180.18 / 181.27 / 201.48 / 184.07 |
    (Rows too long for one line continue below with the 3-bit column.)

    So: 8 x 2 x 4 where K > 4096 or N <= 2048 and at 3 bits; 8 x 2 x 3 at 4/5 bits for 2048 < N < 16384; at N >= 16384
    8 x 3 x 3 (5 bits) and 8 x 2 x 4 (4 bits). N < 2048 was not measured (None: gemv2)."""
    if bits not in DEFAULTS or n < 2048:
        return None
    if kp != KSLICE or n <= 2048 or bits == 3:
        return dict(rows=8, stages=2, per_sm=4)
    if n >= 16384:
        return dict(rows=8, stages=3, per_sm=3) if bits == 5 else dict(rows=8, stages=2, per_sm=4)
    return dict(rows=8, stages=2, per_sm=3)


def default_options(n: int, kp: int, bits: int, pdl: bool = False) -> dict | None:
    """gemvt's options where it is dequant_matmul's M = 1 default (``DEFAULTS``' measurements), else None: 5 bits at
    K = 4096 and N >= 16384; 4 bits at N >= 2048 except 4096 < N < 16384 with K = 4096; 3 bits at N >= 2048 (any K
    that ``supported`` takes). With ``pdl``: ``pdl_options``."""
    if pdl:
        return pdl_options(n, kp, bits)
    if bits not in DEFAULTS or n < DEFAULT_MIN_N[bits]:
        return None
    if bits == 5 and kp != KSLICE:
        return None
    if bits == 4 and kp == KSLICE and 4096 < n < 16384:
        return None
    return dict(DEFAULTS[bits])


def extra_slots(rows: int, stages: int, bits: int, per_sm: int, smem_per_sm: int = 228 * 1024) -> int:
    """Unused ring slots of the widest plane (``XS``) that leave room for ``per_sm`` programs per SM and not one
    more (0 where the ring alone already does, or no count fits). Without them a grid launched with PDL, whose
    programs take the SMs as the previous kernel's programs leave, piles onto the SMs that free up first: 3 bits,
    24576 x 4096, 21.64 -> 23.44 us (S15-2), where the static split assumes ``per_sm`` programs on every SM. The
    ring: ``stages`` x (widest plane + 1-bit plane + norms) + an 8-byte barrier each; each program also holds
    1 KiB reserved and 4 KiB of layout-conversion scratch (offline sm_90 builds, 8 rows x 2 stages: 3 bits 29712
    bytes in all, 54288 with XS = 3; 4 bits 37904, 54288 with XS = 1); one program may take 227 KiB."""
    wslot = 4 * rows * 32 * main_width(bits) * 4
    slot = wslot + (4 * rows * 32 * 4 if bits in (3, 5) else 0) + 4 * rows * 8 * 2
    ring = stages * (slot + 8)
    lo = smem_per_sm // (per_sm + 1) - 1024 + 1  # at least this much keeps per_sm + 1 programs out
    hi = min(smem_per_sm // per_sm - 1024, 227 * 1024) - 4096  # at most this much (+ scratch) lets per_sm in
    xs = max(0, -(-(lo - ring) // wslot))
    return xs if ring + xs * wslot <= hi else 0


def bit_plane_chunk(kp: int, bits: int) -> int:
    """The 1-bit plane's first 32-word chunk in a packed row (after the widest plane: Kp / 8 words of the 4-bit plane
    at 5 bits, Kp / 16 of the 2-bit plane at 3 bits)."""
    return (kp * main_width(bits) // 32) // 32 if bits in (3, 5) else 0


def descriptors(packed: torch.Tensor, norms: torch.Tensor, bits: int, rows: int):
    """The three TMA descriptors (see the module docstring): widest plane, 1-bit plane (3/5 bits; else None), norms."""
    from triton.experimental.gluon.language import NVMMASharedLayout
    from triton.experimental.gluon.nvidia.hopper import TensorDescriptor

    n, rw = packed.shape
    nblk = norms.shape[1]
    l32 = NVMMASharedLayout(swizzle_byte_width=0, element_bitwidth=32, rank=3)
    l16 = NVMMASharedLayout(swizzle_byte_width=0, element_bitwidth=16, rank=3)
    cw = 32 * main_width(bits)  # words of the widest plane per warp chunk (1024 codes)
    wd = TensorDescriptor(packed, [rw // cw, n, cw], [cw, rw, 1], [4, rows, cw], l32)
    bd = TensorDescriptor(packed, [rw // 32, n, 32], [32, rw, 1], [4, rows, 32], l32) if bits in (3, 5) else None
    nd = TensorDescriptor(norms, [nblk // 8, n, 8], [8, nblk, 1], [4, rows, 8], l16)
    return wd, bd, nd


def gemvt(xr: torch.Tensor, w, out_dtype: torch.dtype, *, rows: int = 4, stages: int = 8, per_sm: int = 2,
          programs: int | None = None, wg: int = 1, stagger: bool = False,
          probe: torch.Tensor | None = None, counter: torch.Tensor | None = None, pdl: bool = False,
          rotated: bool = True) -> torch.Tensor:
    """``xr [1, Kp]`` (rotated, contiguous) @ W_rot.T -> ``[1, N]`` in ``out_dtype``. ``rows`` per ring slot,
    ``stages`` slots, about ``per_sm`` programs per SM (or exactly ``programs``), ``wg`` groups of 4 warps per
    program (each takes rows / wg rows of a slot). ``stagger``: the first slot's copies before the others' (see the
    kernel). ``probe`` (diagnostics): int64 [programs, 8] for per-program timestamps (``.notes/gemvt_probe.py``).
    ``counter``: int32 [2] on the device, zero, for row tiles handed out at run time (K = 4096; the kernel leaves
    it zero; calls that may run at the same time need different counters). ``pdl``: launch with programmatic
    dependent launch (see ``_gemvt_kernel``; not with ``counter``), with ``extra_slots`` to hold every SM to
    ``per_sm`` programs. ``rotated=False``: ``xr`` is x itself (K = Kp) and the kernel rotates it (``_x6_rot``;
    wg 1, no ``counter``)."""
    from .triton import _num_sms

    m, kp = xr.shape
    n, bits = w.out_features, w.bits
    if not supported(m, bits, w.block, kp, w.packed, w.norms):
        raise ValueError(f"gemvt covers M = 1, 3/4/5 bits, block 128, K % {KSLICE} == 0 and contiguous aligned "
                         f"weights; got M={m}, bits={bits}, block={w.block}, Kp={kp}")
    if wg not in (1, 2) or rows % wg or rows // wg not in (2, 4, 8) or stages < 2:
        # (rows >= 2: a ring slot of norms is 64 * rows bytes, and TMA writes 128-byte aligned shared memory)
        raise ValueError(f"gemvt: wg must be 1 or 2, rows / wg 2, 4 or 8, stages >= 2; got rows={rows}, wg={wg}, "
                         f"stages={stages}")
    n_tiles = cdiv(n, rows)
    grid = min(n_tiles, programs or per_sm * _num_sms(xr.device))
    wd, bd, nd = descriptors(w.packed, w.norms, bits, rows)
    out = torch.empty(1, n, dtype=out_dtype, device=xr.device)
    splits = kp // KSLICE
    hb = bit_plane_chunk(kp, bits)
    extra = {}  # (only when set: the default launch specializes as before)
    if stagger:
        extra["STAGGER"] = True
    if probe is not None:
        if probe.numel() < 8 * grid:
            raise ValueError(f"gemvt: probe needs {8 * grid} int64, got {probe.numel()}")
        extra.update(PROBE=True, probe_ptr=probe)
    if not rotated:
        if wg != 1 or counter is not None:
            raise ValueError("gemvt: the fused rotation (rotated=False) needs wg=1 and no counter")
        extra["ROT"] = True
    if pdl:
        if counter is not None:
            raise ValueError("gemvt: pdl is not supported with counter")
        extra.update(PDL=True, launch_pdl=True)
        smem = getattr(torch.cuda.get_device_properties(xr.device), "shared_memory_per_multiprocessor", 228 * 1024)
        xs = extra_slots(rows, stages, bits, per_sm, smem) if programs is None else 0
        if xs:
            extra["XS"] = xs
    if counter is not None:
        if splits != 1 or stagger:
            raise ValueError(f"gemvt: tiles handed out at run time need K = {KSLICE} and no stagger; got Kp={kp}, "
                             f"stagger={stagger}")
        if counter.dtype != torch.int32 or counter.numel() < 2 or counter.device != xr.device:
            raise ValueError("gemvt: counter must be int32 with 2 elements on x's device")
        kernel(rows, stages, bits, wg, dyn=True)[(grid,)](xr, w.codebook, out, wd, bd if bd is not None else wd, nd, n,
                                                          n_tiles, hb, counter, num_warps=4 * wg, **extra)
        return out
    kernel(rows, stages, bits, wg)[(grid,)](xr, w.codebook, out, wd, bd if bd is not None else wd, nd, n, n_tiles,
                                            hb, SPLITS=splits, num_warps=4 * wg, **extra)
    return out

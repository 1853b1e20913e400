"""Byte-permute (``prmt``) lookup of 2- and 3-bit codes into fp16 codebook levels, 16 per word.

Why: a plain decode spends ~7-9 integer instructions per code (shift and mask per plane, merge,
address, a gathered load of the level); at 67M codes per 32k decode step that alone is ~40 us on
the H100's 64 int ops/clk/SM. Here one PTX block turns a 32-bit word of the 2-bit plane (16
codes) plus the matching 16 bits of the 1-bit plane (pre-spread to even bit positions) into 16
fp16 levels with 36 instructions (~2.3 per code):
for each group of 4 codes (fields {0,2,4,6}, {1,3,5,7}, {8,..,14}, {9,..,15} of the word):
  sel = ((w >> s) & 0x33333333) | ((h >> (s - 2)) & 0x44444444)   # code c in nibble k (c < 8)
  lo  = prmt(LUT_LO[0:4], LUT_LO[4:8], sel)                          # low bytes of 4 levels
  hi  = prmt(LUT_HI[0:4], LUT_HI[4:8], sel)                          # high bytes
  two fp16x2 words = prmt(lo, hi, 0x5140), prmt(lo, hi, 0x7362)      # interleave
``prmt.b32 d, a, b, c`` picks, for each byte of d, the byte ``c[4k+2:4k]`` of the 8-byte
{b, a}; with 3-bit codes the nibble's sign-replicate bit (``c[4k+3]``) is always 0.

The program is kept as data (``PROGRAM``): ``ptx()`` renders it for ``tl.inline_asm_elementwise``
and ``emulate()`` executes the same list in Python, so a test checks the logic on the CPU
(Triton's interpreter cannot run PTX); only the rendering itself is left to the GPU run.
Outputs ``$0..$15`` are the levels of fields 0..15 in natural order; inputs ``$16`` = the
2-bit-plane word, ``$17`` = spread high bits, ``$18..$21`` = ``byte_lut`` words.
"""

from __future__ import annotations

import numpy as np

N_OUT = 16
IN_W, IN_H, IN_LA, IN_LB, IN_HA, IN_HB = (f"${N_OUT + i}" for i in range(6))

# (shift of the 2-bit word, the 4 fields that land in nibbles 0..3)
GROUPS = ((0, (0, 2, 4, 6)), (2, (1, 3, 5, 7)), (16, (8, 10, 12, 14)), (18, (9, 11, 13, 15)))


def _program():
    prog = []
    for s, fields in GROUPS:
        prog.append(("shr", "ta", IN_W, s) if s else ("mov", "ta", IN_W))
        prog.append(("and", "ta", "ta", 0x33333333))
        # the high bit of field f sits at bit 2f of h; it must land at bit 4k + 2 = 2f - s + 2
        if s == 0:
            prog.append(("shl", "tb", IN_H, 2))
        elif s == 2:
            prog.append(("mov", "tb", IN_H))
        else:
            prog.append(("shr", "tb", IN_H, s - 2))
        prog.append(("and", "tb", "tb", 0x44444444))
        prog.append(("or", "ts", "ta", "tb"))
        prog += _lookup4(fields, "th", "tq")
    return tuple(prog)


def _lookup4(fields, hi: str, out2: str) -> list:
    """The 4 levels of one selector ``ts`` (4 nibbles): low and high bytes of each level from the two
    2-register byte tables, interleaved into two fp16x2 words and split into the 4 output fields.
    ``hi`` / ``out2``: scratch registers for the high bytes and the second word."""
    return [("prmt", "tl", IN_LA, IN_LB, "ts"),
            ("prmt", hi, IN_HA, IN_HB, "ts"),
            ("prmt", "tp", "tl", hi, 0x5140),
            ("prmt", out2, "tl", hi, 0x7362),
            ("split", f"${fields[0]}", f"${fields[1]}", "tp"),
            ("split", f"${fields[2]}", f"${fields[3]}", out2)]


PROGRAM = _program()


def _spread16(dst: str, src: str, t: str) -> list:
    """dst = the 16 bits of src (bits 16-31 zero) spread to the even bit positions (bit k -> 2k)."""
    return [("prmt", dst, src, src, 0x2120),  # bytes [s0, 0, s1, 0]
            ("shl", t, dst, 4), ("or", dst, dst, t), ("and", dst, dst, 0x0F0F0F0F),
            ("shl", t, dst, 2), ("or", dst, dst, t), ("and", dst, dst, 0x33333333),
            ("shl", t, dst, 1), ("or", dst, dst, t), ("and", dst, dst, 0x55555555)]


def _raw_selectors(w: str, h: str) -> tuple[list, list]:
    """The 3-bit selectors of a word ``w`` from its *raw* 16 high bits ``h`` (the 1-bit-plane half in
    bits 0..15, bits 16..31 zero): (shared ops, [(ops leaving the selector in ``ts``, fields)] per
    group of ``GROUPS``). With ``hs`` the Morton-spread high bits (field f at bit 2f),
      sel_A = bsel(w, hs << 2, 0x33333333)            # (x & M) | (y & ~M): one lop3
      sel_B = bsel(w, hs << 2, 0xCCCCCCCC) >> 2       # the odd fields, one nibble-half up
      sel_C = bsel(w >> 16, hs >> 14, 0x33333333)
      sel_D = bsel(w >> 16, hs >> 14, 0xCCCCCCCC) >> 2
    (bits a selector nibble's 4 fields do not use are 0 in the spread, and ``prmt`` reads only the
    selector's low 16 bits). Scratch registers ta, tb, th."""
    shared = _spread16("ta", h, "tb") + [("shl", "tb", "ta", 2), ("shr", "ta", "ta", 14), ("shr", "th", w, 16)]
    groups = []
    for src_w, src_h, pair in ((w, "tb", GROUPS[:2]), ("th", "ta", GROUPS[2:])):
        groups.append(([("bsel", "ts", src_w, src_h, 0x33333333)], pair[0][1]))
        groups.append(([("bsel", "ts", src_w, src_h, 0xCCCCCCCC), ("shr", "ts", "ts", 2)], pair[1][1]))
    return shared, groups


def _program_raw():
    """The same 16 levels from the raw 16 high bits (``_raw_selectors``): 9 integer ops per word for the
    selectors + 7 for the spread, vs 14 + 8 (on the GPU, before ptxas) in ``PROGRAM`` with the spread
    done in Triton."""
    shared, groups = _raw_selectors(IN_W, IN_H)
    prog = list(shared)
    for ops, fields in groups:
        prog += ops + _lookup4(fields, "tq", "ts")  # th holds w >> 16 here
    return tuple(prog)


PROGRAM_RAW = _program_raw()


def ptx(packed: bool = False, raw: bool = False) -> str:
    """The PTX block for ``tl.inline_asm_elementwise``. ``packed``: for ``pack=2`` with 16-bit
    outputs: each output register is an fp16x2 pair (``PACKED_PAIRS``), so the 16-bit splits become
    moves of whole words; the inputs are then operands of a pack of two 32-bit elements (see ``PACKED_IN``).
    ``raw``: ``PROGRAM_RAW`` (the high-bit input is the raw 16-bit half, spread here)."""
    prog = PROGRAM_RAW if raw else PROGRAM
    if not packed:
        return render(prog, {})
    prog = [("mov", f"${PACKED_OUT[(int(dst[1:]), int(src[0][1:]))]}", src[1]) if op == "split" else (op, dst, *src)
            for op, dst, *src in prog]
    return render(prog, PACKED_IN)


CONSTRAINTS = ",".join(["=h"] * N_OUT + ["r"] * 6)

# Packed form, for ``tl.inline_asm_elementwise(..., pack=2)`` with int16 outputs: each of the 8
# outputs ``$0..$7`` is one 32-bit register holding an fp16x2 pair of fields (low half first),
# exactly the ``tp``/``tq`` words of a group, so no 16-bit split is emitted. Inputs come as packs of
# two 32-bit elements, two operands each: the kernel passes ``join(w, h)`` (``$8`` = w, ``$9`` = h)
# and the 4 ``byte_lut`` scalars (``$10/$11``, ``$12/$13``, ``$14/$15``, ``$16/$17``: both of a
# pair hold the same word). The pairs, in output order, are the fields of tile positions
# 2k, 2k + 1 of the kernel's tile order (``colperm``): [0,2, 4,6, 1,3, 5,7, 8,10, 12,14, 9,11, 13,15].
PACKED_PAIRS = ((0, 2), (4, 6), (1, 3), (5, 7), (8, 10), (12, 14), (9, 11), (13, 15))
PACKED_OUT = {pr: i for i, pr in enumerate(PACKED_PAIRS)}
PACKED_IN = {IN_W: "$8", IN_H: "$9", IN_LA: "$10", IN_LB: "$12", IN_HA: "$14", IN_HB: "$16"}
CONSTRAINTS_PACKED = ",".join(["=r"] * len(PACKED_PAIRS) + ["r"] * 10)


def _prmt(a: np.ndarray, b: np.ndarray, c) -> np.ndarray:
    src = (b.astype(np.uint64) << np.uint64(32)) | a.astype(np.uint64)
    c = np.asarray(c, dtype=np.uint64)
    out = np.zeros(np.broadcast(a, b, c).shape, dtype=np.uint64)
    for k in range(4):
        sel = (c >> np.uint64(4 * k)) & np.uint64(0xF)
        byte = (src >> ((sel & np.uint64(7)) * np.uint64(8))) & np.uint64(0xFF)
        sign = np.where((byte & np.uint64(0x80)) != 0, np.uint64(0xFF), np.uint64(0))
        byte = np.where((sel & np.uint64(8)) != 0, sign, byte)
        out |= byte << np.uint64(8 * k)
    return out.astype(np.uint32)


def emulate(w: np.ndarray, h: np.ndarray, lut_words, packed: bool = False, raw: bool = False) -> np.ndarray:
    """Run ``PROGRAM`` (``PROGRAM_RAW``) on uint32 arrays ``w``, ``h`` (same shape) with the 4 ``byte_lut``
    words; returns uint16 fp16 bit patterns ``[..., 16]`` (field order), or with ``packed`` the 8 uint32
    output registers ``[..., 8]`` of the packed form (what each ``mov.b32 $k, t`` stores)."""
    inputs = {IN_W: w, IN_H: h, **{name: int(v) & 0xFFFFFFFF for name, v in zip((IN_LA, IN_LB, IN_HA, IN_HB), lut_words)}}
    regs = run(PROGRAM_RAW if raw else PROGRAM, inputs)
    if packed:
        return np.stack([regs[f"${lo}"] | (regs[f"${hi}"] << np.uint32(16)) for lo, hi in PACKED_PAIRS], -1)
    return np.stack([regs[f"${i}"] for i in range(N_OUT)], -1).astype(np.uint16)


# ---------------------------------------------------------------------------------------------------
# int8 lookups (the Gluon kernel's s8 tensor-core path): one ``prmt`` turns 4 codes into 4 int8 levels
# (bytes of one register), so no lo/hi byte interleave is needed. The level table is the codebook on an
# integer grid, ``round(alpha * level)`` (``codebooks.int8_table``): 8 int8 in two words LT0 (codes 0-3),
# LT1 (codes 4-7). A selector nibble is the code: bits 0-1 from the 2-bit plane, bit 2 the 1-bit plane.
# Programs are lists of (op, dst, src...) over named registers; ``render`` writes the PTX and ``run``
# executes the same list with numpy, so the CPU tests check the logic (the interpreter cannot run PTX).
# ---------------------------------------------------------------------------------------------------

def _k8_program(bits: int) -> tuple:
    """Keys: one 2-bit-plane word ``W`` (16 codes; fields f at bits 2f) and its 16 raw high bits ``H``
    (bit f) -> 4 registers of int8x4: register g holds the levels of fields KEY_GROUPS[g] (bytes 0..3).
    Selector of fields {0,2,4,6}: (W & 0x33333333) | (spread(H) << 2 & 0x44444444) (one bsel, as the
    spread leaves the odd bits zero); the odd fields one nibble-half up; fields 8..15 from W >> 16."""
    if bits == 2:
        prog = [("and", "s0", "W", 0x33333333), ("shr", "s1", "W", 2), ("and", "s1", "s1", 0x33333333),
                ("shr", "s2", "W", 16), ("and", "s2", "s2", 0x3333), ("shr", "s3", "W", 18),
                ("and", "s3", "s3", 0x3333)]
        prog += [("prmt", f"$o{g}", "LT0", "LT1", f"s{g}") for g in range(4)]
    else:  # PROGRAM_RAW's selectors (``_raw_selectors``), one prmt each
        shared, groups = _raw_selectors("W", "H")
        prog = list(shared)
        for g, (ops, _) in enumerate(groups):
            prog += ops + [("prmt", f"$o{g}", "LT0", "LT1", "ts")]
    return tuple(prog)


KEY_GROUPS = tuple(fields for _, fields in GROUPS)


def _v8_program(bits: int) -> tuple:
    """Values: 4 keys' 2-bit-plane words X0..X3 (the same word of each key) and raw high halves
    Y0..Y3, the nibble half s of this thread (shift amounts SW0 = 4 s, SW1 = 4 - 4 s, SY0 = 2 s,
    SY1 = 2 - 2 s) -> 8 registers of int8x4: register 2 i + h holds, in byte e, key e's level at field
    4 i + 2 s + h (i = 0..3: nibble 2 i + s of the word; h = 0/1: its low/high field).
    Per key pair (0, 1) [and (2, 3)]: X = bytes i [X0 nibble, X1 nibble] (one bsel of two shifts);
    Y = nibbles i [Y0 lo, Y0 hi, Y1 lo, Y1 hi]; HS = spread(Y) puts each high bit just below... at the
    low bit of its 2-bit slot; U_lo = bsel(X, HS << 2, 0x33333333) has nibbles [X0 lo | hb << 2],
    [X1 lo | hb << 2] in byte i (complete selectors), U_hi the same from X >> 2 and HS. Then per
    (i, h): one prmt gathers byte i of U (keys 0, 1) and of V (keys 2, 3) into a 4-nibble selector,
    one prmt looks the 4 levels up."""
    prog = []
    for pair, (a, b) in enumerate(((0, 1), (2, 3))):
        u = "U" if pair == 0 else "V"
        prog += [("shr", "ta", f"X{a}", "SW0"), ("shl", "tb", f"X{b}", "SW1"),
                 ("bsel", "x", "tb", "ta", 0xF0F0F0F0)]
        if bits == 2:
            prog += [("and", f"{u}l", "x", 0x33333333), ("shr", f"{u}h", "x", 2),
                     ("and", f"{u}h", f"{u}h", 0x33333333)]
        else:
            prog += [("shr", "ta", f"Y{a}", "SY0"), ("shl", "tb", f"Y{b}", "SY1"),
                     ("bsel", "y", "tb", "ta", 0x0000CCCC)]
            prog += _spread16("hs", "y", "t")
            prog += [("shl", "t", "hs", 2), ("bsel", f"{u}l", "x", "t", 0x33333333),
                     ("shr", "t", "x", 2), ("bsel", f"{u}h", "t", "hs", 0x33333333)]
    for i in range(4):
        gather = i | (4 + i) << 4
        for h, (u, v) in enumerate((("Ul", "Vl"), ("Uh", "Vh"))):
            prog += [("prmt", "sel", u, v, gather), ("prmt", f"$o{2 * i + h}", "LT0", "LT1", "sel")]
    return tuple(prog)


K8_PROGRAMS = {b: _k8_program(b) for b in (2, 3)}
V8_PROGRAMS = {b: _v8_program(b) for b in (2, 3)}
# operands of the inline asm (pack = 4: every input tensor gives 4 registers, one per element)
K8_OPERANDS = {**{f"$o{g}": f"${g}" for g in range(4)}, "W": "$4", "H": "$5", "LT0": "$8", "LT1": "$12"}
K8_CONSTRAINTS = ",".join(["=r"] * 4 + ["r"] * 12)
V8_OPERANDS = {**{f"$o{k}": f"${k}" for k in range(8)}, **{f"X{e}": f"${8 + e}" for e in range(4)},
               **{f"Y{e}": f"${12 + e}" for e in range(4)}, "SW0": "$16", "SW1": "$17", "SY0": "$18",
               "SY1": "$19", "LT0": "$20", "LT1": "$24"}
V8_CONSTRAINTS = ",".join(["=r"] * 8 + ["r"] * 20)


def render(program, operands: dict) -> str:
    """PTX of a program; ``operands`` maps its input / output names to asm operands ($k) (names that
    already are ``$k`` stay)."""
    regs = sorted({d for _, d, *_ in program if d not in operands and not d.startswith("$")})
    lines = ["{", f".reg .b32 {', '.join(regs)};"]
    for op, dst, *src in program:
        dst = operands.get(dst, dst)
        src = [operands.get(x, x) if isinstance(x, str) else f"{x:#x}" for x in src]
        if op == "bsel":  # (a & c) | (b & ~c)
            lines.append(f"lop3.b32 {dst}, {src[0]}, {src[1]}, {src[2]}, 0xE4;")
        elif op == "split":  # dst, src[0] = the low and high 16-bit halves of src[1]
            lines.append(f"mov.b32 {{{dst}, {src[0]}}}, {src[1]};")
        elif op == "mul":  # the low 32 bits of the product
            lines.append(f"mul.lo.u32 {dst}, {src[0]}, {src[1]};")
        else:
            lines.append(f"{op}.b32 {dst}, " + ", ".join(src) + ";")
    lines.append("}")
    return "\n".join(lines)


K8_PTX = {b: render(p, K8_OPERANDS) for b, p in K8_PROGRAMS.items()}
V8_PTX = {b: render(p, V8_OPERANDS) for b, p in V8_PROGRAMS.items()}


def run(program, inputs: dict) -> dict:
    """Execute a program on uint32 numpy arrays (broadcast together); returns every register."""
    regs = {k: np.asarray(v).astype(np.uint32) for k, v in inputs.items()}

    def val(x):
        return regs[x] if isinstance(x, str) else np.uint32(x)

    m = np.uint64(0xFFFFFFFF)
    for op, dst, *src in program:
        if op == "split":  # dst, src[0] = the low and high 16-bit halves of src[1]
            v = val(src[1])
            regs[dst], regs[src[0]] = v & np.uint32(0xFFFF), v >> np.uint32(16)
            continue
        a = val(src[0])
        if op == "mov":
            regs[dst] = a
        elif op == "shr":
            regs[dst] = (a.astype(np.uint64) >> val(src[1]).astype(np.uint64)).astype(np.uint32)
        elif op == "shl":
            regs[dst] = ((a.astype(np.uint64) << val(src[1]).astype(np.uint64)) & m).astype(np.uint32)
        elif op == "and":
            regs[dst] = a & val(src[1])
        elif op == "or":
            regs[dst] = a | val(src[1])
        elif op == "xor":
            regs[dst] = a ^ val(src[1])
        elif op == "mul":
            regs[dst] = ((a.astype(np.uint64) * val(src[1]).astype(np.uint64)) & m).astype(np.uint32)
        elif op == "bsel":
            regs[dst] = (a & val(src[2])) | (val(src[1]) & ~val(src[2]))
        elif op == "prmt":
            regs[dst] = _prmt(a, val(src[1]), val(src[2]))
        else:
            raise ValueError(op)
    return regs

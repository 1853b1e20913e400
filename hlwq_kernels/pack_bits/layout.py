"""The HLWQ bit-packing layout ("bit-sliced planes"), shared by every op that reads codes.

A row of ``n`` codes of ``bits`` bits is padded with zero codes to ``n32 = ceil(n / 32) * 32``
(the layout's word boundary: 32 codes) and stored as ``n32 * bits / 32`` int32 words, exactly
``bits`` bits per code. ``bits`` is split into its binary parts, widest first: 8 -> (8,),
7 -> (4, 2, 1), 6 -> (4, 2), 5 -> (4, 1), 4 -> (4,), 3 -> (2, 1), 2 -> (2,), 1 -> (1,).
The widest part holds the code's low bits. Each part is a *plane*: a contiguous run of
``n32 * w / 32`` words in which code ``i``'s ``w``-bit field sits at word ``(i * w) // 32``,
bit ``(i * w) % 32`` (natural order, little-endian within the word). Planes follow each other
widest first, so the plane of width ``w`` starts at word ``(n32 / 32) * offset(w)`` where
``offset(w)`` is the sum of the wider parts (also the bit offset of that field in the code).

Why: every plane is a power-of-two width, so unpacking any field is one shift and one mask
(no field straddles a word), a 5-bit code costs two fields instead of five bit-planes, and a
tile of 128 codes reads whole 16-byte vectors from every plane.
"""

from __future__ import annotations

WORD_CODES = 32  # codes per layout group: every plane of a 32-code group is whole words


def plane_widths(bits: int) -> tuple[int, ...]:
    """Widths of the planes of a ``bits``-bit code, widest first (= low bits first)."""
    return tuple(w for w in (8, 4, 2, 1) if bits & w)


def plane_offsets(bits: int) -> tuple[int, ...]:
    """Bit offset of each plane's field within the code (= the plane's start, in units of groups)."""
    offs, acc = [], 0
    for w in plane_widths(bits):
        offs.append(acc)
        acc += w
    return tuple(offs)


def padded_len(n: int) -> int:
    """Codes per row after padding to the 32-code word boundary."""
    return -(-n // WORD_CODES) * WORD_CODES


def packed_words(n: int, bits: int) -> int:
    """int32 words per packed row of ``n`` codes."""
    return padded_len(n) // WORD_CODES * bits

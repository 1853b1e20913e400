"""Plain PyTorch pack/unpack in the layout of ``layout.py``; also the CPU path."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .layout import padded_len, plane_offsets, plane_widths


def pack_bits_reference(codes: torch.Tensor, bits: int) -> torch.Tensor:
    *lead, n = codes.shape
    n32 = padded_len(n)
    c = F.pad(codes.to(torch.int64), (0, n32 - n))
    planes = []
    for w, off in zip(plane_widths(bits), plane_offsets(bits)):
        per = 32 // w
        field = ((c >> off) & ((1 << w) - 1)).reshape(*lead, n32 // per, per)
        shifts = torch.arange(per, device=c.device, dtype=torch.int64) * w
        planes.append((field << shifts).sum(-1))  # disjoint fields: the sum is the bitwise or
    words = torch.cat(planes, -1)
    words = torch.where(words >= 2**31, words - 2**32, words)  # keep the 32-bit pattern
    return words.to(torch.int32)


def unpack_bits_reference(packed: torch.Tensor, bits: int, n: int) -> torch.Tensor:
    *lead, _ = packed.shape
    n32 = padded_len(n)
    groups = n32 // 32
    words = packed.to(torch.int64) & 0xFFFFFFFF
    codes = torch.zeros(*lead, n32, dtype=torch.int64, device=packed.device)
    for w, off in zip(plane_widths(bits), plane_offsets(bits)):
        per = 32 // w
        plane = words[..., groups * off: groups * (off + w)]
        shifts = torch.arange(per, device=packed.device, dtype=torch.int64) * w
        field = (plane[..., None] >> shifts) & ((1 << w) - 1)
        codes |= field.reshape(*lead, n32) << off
    return codes[..., :n].to(torch.uint8)

"""Round-to-nearest baseline for the quality comparison: GGUF ``Q*_0``-style absmax quantization
with ``bits``-bit signed integers and one fp16 scale per ``block`` weights along K (default 128,
the same bits per weight as HLWQ: ``bits + 16 / block``).

Per block (unrotated, zero-padded): ``m`` = the weight of largest magnitude (with its sign),
``d = fp16(m / -2**(bits-1))``, ``q = clamp(round(w / d), -2**(bits-1), 2**(bits-1) - 1)``,
``w_hat = d * q``. Mapping the extreme weight to ``-2**(bits-1)`` uses all ``2**bits`` integers
(GGUF's Q4_0/Q5_0 trick: ``d = max / -8``, resp. ``-16``); it is never worse than the symmetric
``absmax / (2**(bits-1) - 1)``, so this is the stronger baseline.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .._common import FLOAT_DTYPES, check_bits, check_finite, check_power_of_two, check_tensor

__all__ = ["rtn_absmax_roundtrip"]


def rtn_absmax_roundtrip(w: torch.Tensor, bits: int, *, block: int = 128) -> torch.Tensor:
    """Quantize and dequantize ``w [N, K]`` by the round-to-nearest absmax scheme above;
    returns fp32 ``[N, K]``."""
    check_tensor(w, "w", ndim=2, dtypes=FLOAT_DTYPES)
    check_bits(bits, lo=2)
    check_power_of_two(block, "block", lo=1)
    check_finite(w, "w")
    n, k = w.shape
    kp = -(-k // block) * block
    x = F.pad(w.to(torch.float32), (0, kp - k)).view(n, kp // block, block)
    idx = x.abs().argmax(-1, keepdim=True)
    m = x.gather(-1, idx)
    half = float(1 << (bits - 1))
    d = (m / -half).to(torch.float16).to(torch.float32)
    safe = torch.where(d == 0, torch.ones_like(d), d)
    q = torch.round(x / safe).clamp_(-half, half - 1.0)
    out = torch.where(d == 0, torch.zeros_like(x), q * d)
    return out.view(n, kp)[:, :k]

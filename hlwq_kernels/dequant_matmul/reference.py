"""Plain PyTorch ``dequant_matmul``: rotate x, dequantize the whole weight, one fp32 matmul.

Obviously correct and memory-hungry (it builds the full fp32 ``W_rot [N, Kp]``): the CPU path
and the oracle of the tests, never the fast path.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..fwht.reference import fwht_reference
from ..quant import HLWQWeight, dequantize_weight


def dequant_matmul_reference(x: torch.Tensor, w: HLWQWeight, x_rotated: bool, out_dtype: torch.dtype,
                             pdl: bool = False) -> torch.Tensor:
    """(``pdl``, a launch option of the Triton path, is taken for the same signature and has no effect here.)"""
    n, k = w.shape
    kp = w.padded_in_features
    lead = x.shape[:-1]
    x2 = x.reshape(-1, x.shape[-1]).to(torch.float32)
    if not x_rotated:
        x2 = fwht_reference(F.pad(x2, (0, kp - k)), w.block)
    w_rot = dequantize_weight(w, rotated=True, impl="reference")  # [N, Kp] fp32
    return (x2 @ w_rot.T).to(out_dtype).reshape(*lead, n)

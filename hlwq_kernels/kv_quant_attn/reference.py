"""Plain PyTorch reference: dequantize the whole cache, then masked softmax attention in fp32."""

from __future__ import annotations

import torch

from ..quantize_kv.reference import dequantize_kv_reference


def kv_quant_attn_reference(q, k_packed, k_norms, v_packed, v_norms, kv_lens, kv_start, bits, scale, causal,
                            codebook):
    """Same arguments as the Triton launcher; see ``kv_quant_attn`` for shapes and semantics.
    Rows with no visible key (kv_lens[b] == 0, or a causal query before position 0 or kv_start[b])
    are 0."""
    B, Hq, Tq, D = q.shape
    Hkv, lmax = k_packed.shape[1], k_packed.shape[2]
    k = dequantize_kv_reference(k_packed, k_norms, bits, codebook, False)  # [B, Hkv, L, D]
    v = dequantize_kv_reference(v_packed, v_norms, bits, codebook, False)
    k = k.repeat_interleave(Hq // Hkv, dim=1)
    v = v.repeat_interleave(Hq // Hkv, dim=1)
    s = torch.einsum("bhtd,bhld->bhtl", q.float(), k) * scale
    n = torch.arange(lmax, device=q.device)
    lens = kv_lens.to(device=q.device, dtype=torch.int64)
    valid = n[None, None, :] < lens[:, None, None]  # [B, 1, L]
    if kv_start is not None:
        valid = valid & (n[None, None, :] >= kv_start.to(device=q.device, dtype=torch.int64)[:, None, None])
    if causal:
        pos = lens[:, None] - Tq + torch.arange(Tq, device=q.device)[None, :]  # [B, Tq]
        valid = valid & (n[None, None, :] <= pos[:, :, None])  # [B, Tq, L]
    valid = valid[:, None]  # [B, 1, Tq or 1, L]
    s = s.masked_fill(~valid, float("-inf"))
    p = torch.softmax(s, dim=-1).nan_to_num(0.0)  # all-masked rows: NaN -> 0
    return torch.einsum("bhtl,bhld->bhtd", p, v).to(q.dtype)

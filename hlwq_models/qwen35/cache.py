"""Inference caches, preallocated with static shapes by ``Transformer.setup_cache``.

* ``KVCache``: keys (after RoPE) and values of one full-attention layer, and the attention over
  them. It is the seam for quantized KV caches: the attention layer calls only
  ``update(input_pos, k, v, pad)`` and ``attend(q, k, v, input_pos, pad, fresh_prefill=, memo=)``, so a
  subclass that stores codes (and attends with a kernel that reads them) drops in through
  ``Transformer.setup_cache(..., kv_cache_cls=...)``.
* ``GDNState``: one Gated DeltaNet layer's causal-conv state (last W-1 pre-conv inputs) and its
  fp32 recurrent state.

Everything is written in place (``copy_`` / ``index_copy_``) at device-side positions, so one
decode step has static shapes and no host syncs (CUDA-graph capturable).
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["KVCache", "GDNState", "attention_mask", "causal_attention"]


def causal_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Plain causal GQA attention of ``q [B, Hq, T, D]`` over ``k, v [B, Hkv, T, D]`` (the same T
    tokens): fresh prefill. The KV heads are repeated so SDPA can pick its flash kernel."""
    rep = q.shape[1] // k.shape[1]
    if rep > 1:
        k, v = k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1)
    return F.scaled_dot_product_attention(q, k.to(q.dtype), v.to(q.dtype), is_causal=True)


def attention_mask(input_pos: torch.Tensor, n_keys: int, pad: torch.Tensor | None, batch: int) -> torch.Tensor:
    """Boolean mask ``[B, 1, T, n_keys]``: query at cache slot ``input_pos[t]`` of row b sees key
    slot j iff ``pad[b] <= j <= input_pos[t]``. A query slot that is itself padding sees only
    itself (its output is discarded, but a row with no visible key would turn into NaN)."""
    j = torch.arange(n_keys, device=input_pos.device)
    causal = j[None, :] <= input_pos[:, None]                               # [T, S]
    if pad is None:
        return causal[None, None].expand(batch, 1, -1, -1)
    valid = j[None, None, :] >= pad[:, None, None]                          # [B, 1, S]
    own = j[None, :] == input_pos[:, None]                                  # [T, S]
    return (causal[None] & (valid | own[None]))[:, None]                    # [B, 1, T, S]


class KVCache(nn.Module):
    """bf16 (model dtype) KV cache for one full-attention layer.

    Buffers ``k``, ``v``: ``[B, Hkv, S, D]`` (B max batch, S max sequence).
    """

    def __init__(self, max_batch: int, max_seq: int, n_kv_heads: int, head_dim: int, *, dtype, device):
        super().__init__()
        shape = (max_batch, n_kv_heads, max_seq, head_dim)
        self.register_buffer("k", torch.zeros(shape, dtype=dtype, device=device), persistent=False)
        self.register_buffer("v", torch.zeros(shape, dtype=dtype, device=device), persistent=False)

    @property
    def max_seq(self) -> int:
        return self.k.shape[2]

    def update(self, input_pos: torch.Tensor, k: torch.Tensor, v: torch.Tensor, pad: torch.Tensor | None) -> None:
        """Write ``k, v [B, Hkv, T, D]`` at cache slots ``input_pos [T]``. ``pad [B]`` (left padding,
        unused here: pad slots are masked in ``attend``) lets a subclass store each row densely from
        its own position 0 instead (row b's token at slot s has position ``s - pad[b]``), as a
        kernel that takes per-sequence lengths (``kv_quant_attn``'s ``kv_lens``) needs."""
        b = k.shape[0]
        self.k[:b].index_copy_(2, input_pos, k.to(self.k.dtype))
        self.v[:b].index_copy_(2, input_pos, v.to(self.v.dtype))

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, input_pos: torch.Tensor,
               pad: torch.Tensor | None, *, fresh_prefill: bool, memo: dict | None = None) -> torch.Tensor:
        """Causal attention of ``q [B, Hq, T, D]`` over the cached keys (``update`` already called).

        ``fresh_prefill`` (the caller knows ``input_pos == arange(T)`` and no padding): the new
        ``k, v [B, Hkv, T, D]`` are all there is, so plain causal SDPA on them (flash kernel).
        Otherwise the queries attend over all S slots with a mask (static shape: decode).
        ``memo``: a dict shared by the attention layers of one forward call (the mask is built once).
        Returns ``[B, Hq, T, D]``.
        """
        if fresh_prefill:
            return causal_attention(q, k, v)
        b, hq, t, d = q.shape
        hkv = self.k.shape[1]
        # GQA without copying the cache: the `rep` query heads of one KV head become `rep * T`
        # query rows of that head. Static shapes: attends to all S slots under a mask.
        g = hq // hkv
        key = ("kv_mask", self.max_seq, g)
        mask = None if memo is None else memo.get(key)
        if mask is None:
            mask = attention_mask(input_pos, self.max_seq, pad, b)              # [B, 1, T, S]
            mask = mask[:, :, None].expand(b, 1, g, t, self.max_seq).reshape(b, 1, g * t, self.max_seq)
            if memo is not None:
                memo[key] = mask
        qg = q.reshape(b, hkv, g * t, d)
        out = F.scaled_dot_product_attention(qg, self.k[:b].to(q.dtype), self.v[:b].to(q.dtype), attn_mask=mask)
        return out.reshape(b, hq, t, d)


class GDNState(nn.Module):
    """Caches of one Gated DeltaNet layer.

    Buffers ``conv``: ``[B, C, W-1]`` (model dtype; the last W-1 pre-conv q|k|v inputs, oldest
    first) and ``recurrent``: ``[B, Hv, Dk, Dv]`` float32.
    """

    def __init__(self, max_batch: int, conv_dim: int, conv_width: int, n_v_heads: int, dk: int, dv: int,
                 *, dtype, device):
        super().__init__()
        self.register_buffer("conv", torch.zeros(max_batch, conv_dim, conv_width - 1, dtype=dtype, device=device),
                             persistent=False)
        self.register_buffer("recurrent", torch.zeros(max_batch, n_v_heads, dk, dv, dtype=torch.float32,
                                                      device=device), persistent=False)

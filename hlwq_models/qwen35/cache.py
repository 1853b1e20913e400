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

__all__ = ["KVCache", "QuantKVCache", "GDNState", "attention_mask", "causal_attention"]


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


class QuantKVCache(nn.Module):
    """HLWQ-quantized KV cache for one full-attention layer: every key and value vector is stored
    as ``bits``-bit Lloyd-Max codes of its Hadamard rotation plus one fp16 norm
    (``hlwq_kernels.quantize_kv``), and attention reads the codes directly
    (``hlwq_kernels.kv_quant_attn``); no bf16 copy of the history exists.

    Buffers ``k_packed``, ``v_packed``: ``[B, Hkv, S, D*bits/32]`` int32; ``k_norms``, ``v_norms``:
    ``[B, Hkv, S]`` fp16. Rows share slot numbering with left padding (``pad``), as in ``KVCache``:
    the kernel hides slots before ``pad[b]`` through ``kv_start``.

    Unlike ``KVCache``, a fresh prefill also attends over the *quantized* keys and values (the
    prompt's own tokens included), so ``hlwq eval`` with a quantized cache measures what decode
    with it would see at every position.
    """

    def __init__(self, max_batch: int, max_seq: int, n_kv_heads: int, head_dim: int, *, dtype, device, bits: int):
        super().__init__()
        from hlwq_kernels.kv_quant_attn import ATTN_BITS

        if bits not in ATTN_BITS:
            raise ValueError(f"kv bits must be one of {ATTN_BITS}, got {bits}")
        self.bits, self.impl = bits, "auto"
        words = head_dim * bits // 32
        for name in ("k", "v"):
            self.register_buffer(f"{name}_packed", torch.zeros(max_batch, n_kv_heads, max_seq, words,
                                                               dtype=torch.int32, device=device), persistent=False)
            self.register_buffer(f"{name}_norms", torch.zeros(max_batch, n_kv_heads, max_seq, dtype=torch.float16,
                                                              device=device), persistent=False)

    @property
    def max_seq(self) -> int:
        return self.k_packed.shape[2]

    def update(self, input_pos: torch.Tensor, k: torch.Tensor, v: torch.Tensor, pad: torch.Tensor | None) -> None:
        """Quantize ``k, v [B, Hkv, T, D]`` and write only their codes and norms at slots ``input_pos``
        (keys and values in one kernel launch)."""
        from hlwq_kernels import kv_cache_write_kv_

        b = k.shape[0]
        start = input_pos[:1].expand(b)  # every row writes the same slots (left padding): no host sync
        kv_cache_write_kv_(self.k_packed[:b], self.k_norms[:b], self.v_packed[:b], self.v_norms[:b], k, v, start,
                           bits=self.bits, impl=self.impl)

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, input_pos: torch.Tensor,
               pad: torch.Tensor | None, *, fresh_prefill: bool, memo: dict | None = None) -> torch.Tensor:
        """Causal attention of ``q [B, Hq, T, D]`` over the quantized cache (``update`` already called)."""
        from hlwq_kernels import kv_quant_attn

        b = q.shape[0]
        kv_lens = (input_pos[-1:] + 1).expand(b)
        # the kernel takes 16-bit queries (its dot operands are fp16); an fp32 model's queries are
        # rounded to bf16 here, which the quantized keys dwarf (bits <= 4: >= 1% error per vector)
        qq = q if q.dtype in (torch.bfloat16, torch.float16) else q.to(torch.bfloat16)
        out = kv_quant_attn(qq, self.k_packed[:b], self.k_norms[:b], self.v_packed[:b], self.v_norms[:b],
                            bits=self.bits, kv_lens=kv_lens, kv_start=pad, causal=True, impl=self.impl)
        return out.to(q.dtype)


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

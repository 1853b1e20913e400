"""``kv_quant_attn``: softmax attention that reads an HLWQ-quantized KV cache directly.

The cache (docs/FORMAT.md, "KV cache"; written by ``kv_cache_write_``, built by ``quantize_kv``)
holds per KV head and position one fp16 norm and D bit-packed Lloyd-Max codes of the
Hadamard-rotated vector. The kernel scores rotated queries against ``codebook[code] * norm``
and rotates the output back once, so no dequantized K or V ever reaches memory. See
``triton.py`` for the kernel design and the bytes floors.
"""

from __future__ import annotations

import math

import torch

from .._common import check_bits, check_same_device, check_tensor, resolve_impl
from ..quantize_kv import (QuantizedKV, check_cache, check_codebook, default_codebook, dequantize_kv,
                           kv_cache_write_, kv_cache_write_kv_, quantize_kv)
from .reference import kv_quant_attn_reference
from .triton import kv_quant_attn_triton, kv_quant_attn_triton_splits

IMPLS = ((kv_quant_attn_reference, kv_quant_attn_triton),)

__all__ = ["kv_quant_attn", "kv_quant_attn_reference", "kv_quant_attn_triton", "kv_quant_attn_triton_splits",
           "quantize_kv", "dequantize_kv", "kv_cache_write_", "kv_cache_write_kv_", "QuantizedKV", "default_codebook"]

ATTN_BITS = (2, 3, 4, 8)


def kv_quant_attn(q: torch.Tensor, k_packed: torch.Tensor, k_norms: torch.Tensor, v_packed: torch.Tensor,
                  v_norms: torch.Tensor, *, bits: int, kv_lens: torch.Tensor, kv_start: torch.Tensor | None = None,
                  scale: float | None = None, causal: bool = True, codebook: torch.Tensor | None = None,
                  impl: str = "auto") -> torch.Tensor:
    """Attention of ``Tq`` new queries per sequence over a quantized KV cache.

    Letters: B batch, Hq query heads, Hkv KV heads (Hq a multiple of Hkv; query head h reads KV
    head ``h // (Hq / Hkv)``), Tq queries per sequence, L cache capacity, D head dim (64..256,
    power of two), W = D * bits / 32 words.

    Args:
        q: ``[B, Hq, Tq, D]`` bfloat16/float16, any strides (the fp16 kernels' dot operands are fp16; the
            int8 kernel splits the rotated q into two int8 planes, ~15 bits).
        k_packed, v_packed: ``[B, Hkv, L, W]`` int32, words contiguous (other strides free).
        k_norms, v_norms: ``[B, Hkv, L]`` float16.
        bits: 2, 3, 4 or 8. kv_lens: ``[B]`` int32/int64, the valid cache length of each
            sequence, *including* the Tq new tokens (write them with ``kv_cache_write_`` first).
        kv_start: optional ``[B]`` int32/int64: keys before ``kv_start[b]`` are invisible (left
            padding of a batch whose rows share positions).
        scale: softmax scale, default ``D ** -0.5``.
        causal: query i of the chunk sits at position ``kv_lens[b] - Tq + i`` and sees keys
            ``0..kv_lens[b] - Tq + i``; without it every query sees keys ``0..kv_lens[b] - 1``.
        codebook: sorted float32 ``[2**bits]``, default the N(0,1) Lloyd-Max levels (``default_codebook``;
            at 2/3 bits on their int8 grid). On the GPU, decode with the default codebook at D = 256 and
            2/3 bits runs the int8 Gluon kernel; another codebook there runs the fp16 Gluon kernel.
    Returns:
        ``[B, Hq, Tq, D]`` in ``q.dtype``. A query that sees no key gets zeros.
    CPU tensors are checked for ``0 <= kv_lens <= L``; on CUDA (no host sync) lengths are
    clamped to ``[0, L]`` by the kernel's masks (never an out-of-bounds read).
    """
    check_tensor(q, "q", ndim=4, dtypes=(torch.bfloat16, torch.float16))
    if isinstance(bits, bool) or bits not in ATTN_BITS:
        check_bits(bits)
        raise ValueError(f"bits must be one of {ATTN_BITS}, got {bits}")
    B, Hq, Tq, D = q.shape
    kb, hkv, lmax, kd = check_cache(k_packed, k_norms, "k", bits)
    if (kb, kd) != (B, D):
        raise ValueError(f"k_packed must have shape [{B}, Hkv, L, {D * bits // 32}] to match q {list(q.shape)} "
                         f"at bits={bits}, got {list(k_packed.shape)}")
    vshape = check_cache(v_packed, v_norms, "v", bits)
    if vshape != (kb, hkv, lmax, kd):
        raise ValueError(f"v_packed must have the shape of k_packed {list(k_packed.shape)}, got {list(v_packed.shape)}")
    if hkv == 0 or Hq % hkv:
        raise ValueError(f"q.shape[1] (Hq={Hq}) must be a multiple of k_packed.shape[1] (Hkv={hkv})")
    check_tensor(kv_lens, "kv_lens", shape=(B,), dtypes=(torch.int32, torch.int64))
    check_same_device(q=q, k_packed=k_packed, k_norms=k_norms, v_packed=v_packed, v_norms=v_norms, kv_lens=kv_lens)
    if kv_start is not None:
        check_tensor(kv_start, "kv_start", shape=(B,), dtypes=(torch.int32, torch.int64))
        check_same_device(q=q, kv_start=kv_start)
        if not kv_start.is_cuda and B and (int(kv_start.min()) < 0 or bool((kv_start > kv_lens).any())):
            raise ValueError(f"kv_start must be in [0, kv_lens[b]], got {kv_start.tolist()} "
                             f"for kv_lens {kv_lens.tolist()}")
    if scale is None:
        scale = D ** -0.5
    if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not math.isfinite(scale):
        raise TypeError(f"scale must be a finite float, got {scale!r}")
    if not isinstance(causal, bool):
        raise TypeError(f"causal must be a bool, got {type(causal).__name__}")
    if not kv_lens.is_cuda and B and (int(kv_lens.min()) < 0 or int(kv_lens.max()) > lmax):
        raise ValueError(f"kv_lens must be in [0, L={lmax}], got values in "
                         f"[{int(kv_lens.min())}, {int(kv_lens.max())}]")
    codebook = check_codebook(codebook, bits, q.device)
    if resolve_impl(impl, q, k_packed, k_norms, v_packed, v_norms, kv_lens) == "triton":
        return kv_quant_attn_triton(q, k_packed, k_norms, v_packed, v_norms, kv_lens, kv_start, bits, float(scale),
                                    causal, codebook)
    return kv_quant_attn_reference(q, k_packed, k_norms, v_packed, v_norms, kv_lens, kv_start, bits, float(scale),
                                   causal, codebook)

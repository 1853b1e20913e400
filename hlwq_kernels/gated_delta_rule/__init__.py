"""Gated delta rule (Gated DeltaNet's linear attention): chunked prefill and recurrent decode.

Per value head, for t in order (g: log-decay, beta: write strength):
    S <- exp(g_t) S;  u_t = beta_t (v_t - S^T k_t);  S <- S + k_t u_t^T;  o_t = S^T q_t
with S [Dk, Dv] in fp32. Both public functions compute exactly this; they differ only in the
algorithm (chunks of ``chunk_size`` tokens with a WY/UT transform for long inputs, a token loop
for decode).

Unlike transformers' ``torch_*_gated_delta_rule`` (and fla's ``use_qk_l2norm_in_kernel``), q and k
are used AS GIVEN: the caller L2-normalises them and scales q by Dk^-0.5.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from .._common import FLOAT_DTYPES, check_int, check_same_device, check_tensor, resolve_impl
from ..causal_conv1d import check_conv_args
from .reference import (chunk_gated_delta_rule_reference, gated_delta_decode_step_reference, l2norm,
                        recurrent_gated_delta_rule_reference)
from .triton import chunk_gated_delta_rule_triton, gated_delta_decode_step_triton, recurrent_gated_delta_rule_triton

IMPLS = (  # reference/launcher pairs: same arguments (tests)
    (chunk_gated_delta_rule_reference, chunk_gated_delta_rule_triton),
    (recurrent_gated_delta_rule_reference, recurrent_gated_delta_rule_triton),
    (gated_delta_decode_step_reference, gated_delta_decode_step_triton),
)

__all__ = [
    "GatedDeltaOutput", "chunk_gated_delta_rule", "recurrent_gated_delta_rule",
    "chunk_gated_delta_rule_reference", "recurrent_gated_delta_rule_reference",
    "chunk_gated_delta_rule_triton", "recurrent_gated_delta_rule_triton", "TRITON_CHUNK_SIZES",
    "GatedDeltaDecodeOutput", "gated_delta_decode_step", "gated_delta_decode_step_reference",
    "gated_delta_decode_step_triton", "l2norm",
]

TRITON_CHUNK_SIZES = (16, 32, 64)


class GatedDeltaOutput(NamedTuple):
    out: torch.Tensor          # [B, T, Hv, Dv] in v.dtype
    final_state: torch.Tensor  # [B, Hv, Dk, Dv] float32


def _validate(q, k, v, g, beta, initial_state):
    check_tensor(q, "q", ndim=4, dtypes=FLOAT_DTYPES)
    bsz, t, hk, dk = q.shape
    check_tensor(k, "k", shape=(bsz, t, hk, dk), dtypes=(q.dtype,))
    check_tensor(v, "v", ndim=4, dtypes=(q.dtype,))
    if v.shape[0] != bsz or v.shape[1] != t:
        raise ValueError(f"v must have shape [{bsz}, {t}, Hv, Dv] (B, T of q), got {list(v.shape)}")
    hv, dv = v.shape[2], v.shape[3]
    if hk == 0 or hv % hk:
        raise ValueError(f"v.shape[2] (Hv={hv}) must be a positive multiple of q.shape[2] (Hk={hk})")
    if dk == 0 or dv == 0:
        raise ValueError(f"head dims must be positive, got Dk={dk}, Dv={dv}")
    check_tensor(g, "g", shape=(bsz, t, hv), dtypes=FLOAT_DTYPES)
    check_tensor(beta, "beta", shape=(bsz, t, hv), dtypes=FLOAT_DTYPES)
    if initial_state is not None:
        check_tensor(initial_state, "initial_state", shape=(bsz, hv, dk, dv), dtypes=(torch.float32,))
    check_same_device(q=q, k=k, v=v, g=g, beta=beta, initial_state=initial_state)


def _tensors(q, k, v, g, beta, initial_state):
    return [x for x in (q, k, v, g, beta, initial_state) if x is not None]


def chunk_gated_delta_rule(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, g: torch.Tensor, beta: torch.Tensor,
                           *, initial_state: torch.Tensor | None = None, chunk_size: int = 64,
                           impl: str = "auto") -> GatedDeltaOutput:
    """Gated delta rule over a whole sequence, in chunks (prefill).

    Args (B batch, T tokens, Hk key heads, Hv value heads (a multiple of Hk), Dk/Dv head dims):
        q, k: ``[B, T, Hk, Dk]`` float32/bfloat16/float16, used as given (already L2-normalised, q scaled).
        v: ``[B, T, Hv, Dv]``, same dtype as q; value head h reads key head ``h // (Hv // Hk)``.
        g: ``[B, T, Hv]`` log-decay (<= 0), fp32 or the input dtype.
        beta: ``[B, T, Hv]`` write strength (usually in (0, 1)).
        initial_state: ``[B, Hv, Dk, Dv]`` float32 or None (zeros).
        chunk_size: tokens per chunk; the Triton kernel takes 16, 32 or 64 (any T is handled).
    Returns:
        ``GatedDeltaOutput(out [B, T, Hv, Dv] in v.dtype, final_state [B, Hv, Dk, Dv] float32)``,
        computed with fp32 state and accumulation; equal to ``recurrent_gated_delta_rule``.
    """
    _validate(q, k, v, g, beta, initial_state)
    check_int(chunk_size, "chunk_size", lo=1)
    if resolve_impl(impl, *_tensors(q, k, v, g, beta, initial_state)) == "triton":
        if chunk_size not in TRITON_CHUNK_SIZES:
            raise ValueError(f"chunk_size must be one of {TRITON_CHUNK_SIZES} for impl='triton', got {chunk_size}")
        return GatedDeltaOutput(*chunk_gated_delta_rule_triton(q, k, v, g, beta, initial_state, chunk_size))
    return GatedDeltaOutput(*chunk_gated_delta_rule_reference(q, k, v, g, beta, initial_state, chunk_size))


def recurrent_gated_delta_rule(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, g: torch.Tensor,
                               beta: torch.Tensor, *, initial_state: torch.Tensor | None = None,
                               impl: str = "auto") -> GatedDeltaOutput:
    """Gated delta rule one token at a time (decode; efficient for small T).

    Same arguments and result as :func:`chunk_gated_delta_rule` (without ``chunk_size``).
    """
    _validate(q, k, v, g, beta, initial_state)
    if resolve_impl(impl, *_tensors(q, k, v, g, beta, initial_state)) == "triton":
        return GatedDeltaOutput(*recurrent_gated_delta_rule_triton(q, k, v, g, beta, initial_state))
    return GatedDeltaOutput(*recurrent_gated_delta_rule_reference(q, k, v, g, beta, initial_state))


class GatedDeltaDecodeOutput(NamedTuple):
    out: torch.Tensor               # [B, 1, Hv, Dv] in qkv.dtype
    final_state: torch.Tensor       # [B, Hv, Dk, Dv] float32
    final_conv_state: torch.Tensor  # [B, C, W-1] in qkv.dtype


def gated_delta_decode_step(qkv: torch.Tensor, conv_weight: torch.Tensor, a: torch.Tensor, b: torch.Tensor,
                            A_log: torch.Tensor, dt_bias: torch.Tensor, *, num_k_heads: int, head_k_dim: int,
                            conv_state: torch.Tensor | None = None, state: torch.Tensor | None = None,
                            impl: str = "auto") -> GatedDeltaDecodeOutput:
    """Gated DeltaNet's decode step between the input projections and the output norm, fused into
    one kernel (Triton) -- equal to the unfused sequence
    ``causal_conv1d`` (SiLU) -> split q | k | v -> ``l2norm`` (fp32, eps 1e-6) of q and k, q * Dk^-0.5
    -> ``beta = sigmoid(b)``, ``g = -exp(A_log) * softplus(a + dt_bias)`` (fp32) -> ``recurrent_gated_delta_rule``.

    Args (B batch, C = 2 Hk Dk + Hv Dv conv channels, W taps, Hk key / Hv value heads):
        qkv: ``[B, 1, C]`` the in_proj_qkv output for one token (q | k | v, head-major), float.
        conv_weight: ``[C, W]`` depthwise conv taps (no bias).
        a, b: ``[B, 1, Hv]`` the raw in_proj_a / in_proj_b outputs.
        A_log, dt_bias: ``[Hv]``.
        num_k_heads, head_k_dim: Hk and Dk (Hv and Dv follow from a and C).
        conv_state: ``[B, C, W-1]`` (None = zeros); state: ``[B, Hv, Dk, Dv]`` float32 (None = zeros).
    Returns:
        ``GatedDeltaDecodeOutput(out [B, 1, Hv, Dv] in qkv.dtype, final_state fp32, final_conv_state
        [B, C, W-1] in qkv.dtype)``. Inputs are not modified.
    """
    check_tensor(qkv, "qkv", ndim=3, dtypes=FLOAT_DTYPES)
    bsz, t, c = qkv.shape
    if t != 1:
        raise ValueError(f"qkv must have shape [B, 1, C] (one token), got {list(qkv.shape)}")
    check_int(num_k_heads, "num_k_heads", lo=1)
    check_int(head_k_dim, "head_k_dim", lo=1)
    check_tensor(a, "a", ndim=3, dtypes=FLOAT_DTYPES)
    hv = a.shape[2]
    if a.shape[:2] != (bsz, 1) or hv == 0 or hv % num_k_heads:
        raise ValueError(f"a must have shape [{bsz}, 1, Hv] with Hv a multiple of num_k_heads={num_k_heads}, "
                         f"got {list(a.shape)}")
    rest = c - 2 * num_k_heads * head_k_dim
    if rest <= 0 or rest % hv:
        raise ValueError(f"qkv.shape[2] (C={c}) must be 2 * num_k_heads * head_k_dim "
                         f"({2 * num_k_heads * head_k_dim}) + Hv ({hv}) * Dv")
    dv = rest // hv
    check_tensor(b, "b", shape=(bsz, 1, hv), dtypes=FLOAT_DTYPES)
    check_tensor(A_log, "A_log", shape=(hv,), dtypes=FLOAT_DTYPES)
    check_tensor(dt_bias, "dt_bias", shape=(hv,), dtypes=FLOAT_DTYPES)
    check_conv_args(conv_weight, conv_state, bsz, c, "conv_weight", "conv_state")
    if state is not None:
        check_tensor(state, "state", shape=(bsz, hv, head_k_dim, dv), dtypes=(torch.float32,))
    check_same_device(qkv=qkv, conv_weight=conv_weight, a=a, b=b, A_log=A_log, dt_bias=dt_bias,
                      conv_state=conv_state, state=state)
    tensors = [x for x in (qkv, conv_weight, a, b, A_log, dt_bias, conv_state, state) if x is not None]
    fn = gated_delta_decode_step_triton if resolve_impl(impl, *tensors) == "triton" else gated_delta_decode_step_reference
    return GatedDeltaDecodeOutput(*fn(qkv, conv_weight, a, b, A_log, dt_bias, conv_state, state, num_k_heads,
                                      head_k_dim))

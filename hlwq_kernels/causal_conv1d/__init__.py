"""Depthwise causal conv1d over time with a carried state (Gated DeltaNet's short conv).

State layout differs from transformers: ours is ``[B, C, W-1]`` (the last W-1 inputs, oldest
first); transformers' cache keeps ``[B, C, W]`` for ``causal_conv1d_update`` (its oldest column is
never used by the W-tap conv), so ``ours == theirs[..., 1:]``.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from .._common import FLOAT_DTYPES, check_same_device, check_tensor, resolve_impl
from .reference import causal_conv1d_reference
from .triton import causal_conv1d_triton

IMPLS = ((causal_conv1d_reference, causal_conv1d_triton),)  # reference/launcher pairs: same arguments (tests)

__all__ = ["CausalConvOutput", "causal_conv1d", "causal_conv1d_reference", "causal_conv1d_triton", "ACTIVATIONS"]

ACTIVATIONS = ("silu", None)


class CausalConvOutput(NamedTuple):
    out: torch.Tensor          # [B, T, C] in x.dtype
    final_state: torch.Tensor  # [B, C, W-1] in x.dtype


def check_conv_args(weight, state, bsz: int, c: int, weight_name: str, state_name: str) -> int:
    """Validate a depthwise conv weight [C, W] (W >= 2) and its optional state [B, C, W-1]; returns W.
    Shared by ``causal_conv1d`` and the fused GDN decode step."""
    check_tensor(weight, weight_name, ndim=2, dtypes=FLOAT_DTYPES)
    if weight.shape[0] != c or weight.shape[1] < 2:
        raise ValueError(f"{weight_name} must have shape [{c}, W] with W >= 2 (C = {c} channels of the input), "
                         f"got {list(weight.shape)}")
    w = weight.shape[1]
    if state is not None:
        check_tensor(state, state_name, shape=(bsz, c, w - 1), dtypes=FLOAT_DTYPES)
    return w


def causal_conv1d(x: torch.Tensor, weight: torch.Tensor, *, initial_state: torch.Tensor | None = None,
                  activation: str | None = "silu", impl: str = "auto") -> CausalConvOutput:
    """``out[b, t, c] = act(sum_j weight[c, j] * xpad[b, t + j, c])``, ``xpad = concat(state, x)`` over time.

    Args (B batch, T tokens, C channels, W taps):
        x: ``[B, T, C]`` float32/bfloat16/float16, any strides. T=1 is the decode update.
        weight: ``[C, W]`` depthwise taps (no bias), W >= 2, any float dtype (used in fp32).
        initial_state: ``[B, C, W-1]`` the last W-1 inputs before this call, oldest first; None = zeros.
        activation: "silu" or None.
    Returns:
        ``CausalConvOutput(out [B, T, C] in x.dtype, final_state [B, C, W-1] in x.dtype)`` where
        final_state is the last W-1 entries of xpad (the initial state's tail when T < W-1).
    """
    check_tensor(x, "x", ndim=3, dtypes=FLOAT_DTYPES)
    bsz, _, c = x.shape
    check_conv_args(weight, initial_state, bsz, c, "weight", "initial_state")
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {ACTIVATIONS}, got {activation!r}")
    check_same_device(x=x, weight=weight, initial_state=initial_state)
    tensors = [t for t in (x, weight, initial_state) if t is not None]
    if resolve_impl(impl, *tensors) == "triton":
        return CausalConvOutput(*causal_conv1d_triton(x, weight, initial_state, activation))
    return CausalConvOutput(*causal_conv1d_reference(x, weight, initial_state, activation))

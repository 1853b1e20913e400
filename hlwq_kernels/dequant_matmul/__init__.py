"""``dequant_matmul``: ``x @ W.T`` for an HLWQ weight, straight from the packed codes."""

from __future__ import annotations

import torch

from .._common import FLOAT_DTYPES, check_same_device, check_tensor, resolve_impl
from ..quant import HLWQWeight
from .reference import dequant_matmul_reference
from .triton import GEMV_MAX_M, SLAB_MIN_M, Config, dequant_matmul_triton, dequant_matmul_triton_method

IMPLS = ((dequant_matmul_reference, dequant_matmul_triton),)  # reference/launcher pairs: same arguments

__all__ = ["dequant_matmul", "dequant_matmul_reference", "dequant_matmul_triton", "dequant_matmul_triton_method",
           "Config", "GEMV_MAX_M", "SLAB_MIN_M"]


def dequant_matmul(x: torch.Tensor, w: HLWQWeight, *, x_rotated: bool = False, out_dtype: torch.dtype | None = None,
                   impl: str = "auto", pdl: bool = False) -> torch.Tensor:
    """``x @ dequantize_weight(w).T`` without ever building the weight.

    Computes ``fwht(pad(x)) @ W_rot.T`` with ``W_rot[n, k] = w.norms[n, k // block] *
    w.codebook[code[n, k]]`` (fp32 accumulation).

    Args:
        x: ``[..., K]`` float32/bfloat16/float16 activations; with ``x_rotated=True``, ``[..., Kp]``
            already rotated and zero-padded (``fwht(pad(x), block=w.block)``), so that several
            projections of one input share one rotation.
        w: ``HLWQWeight`` of shape ``(N, K)``, any bits 1..8, on x's device.
        x_rotated: see ``x``.
        out_dtype: output dtype (float32/bfloat16/float16); default ``x.dtype``.
        impl: "auto" | "triton" | "reference".
        pdl: programmatic dependent launch (compiled kernels on sm_90+ GPUs; ignored elsewhere): the M <= 4 GEMV
            kernels start while the kernels before them on the stream finish, and stream their first weight tiles
            before they wait for them (with the rotation, its fwht kernel lets them start at once). Only for weights
            that no kernel still running before this call writes: true at inference, where they are fixed; not
            right after a kernel that (re)quantizes ``w`` into the same memory.
    Returns:
        ``[..., N]`` in ``out_dtype``.

    Legend: M = prod(leading dims) tokens, N = out features, K = in features, Kp = K rounded up
    to a multiple of ``w.block``. Kernel choice by M (documented in ``triton.py``): at M = 1 the TMA-ring GEMV of
    ``gemvt.py`` where it measured faster (``gemvt.default_options``: 5 bits at K = 4096 and N >= 16384, 4 bits on
    every Qwen3.5 shape but 8192 x 4096, 3 bits on all of them; with ``pdl``, ``gemvt.pdl_options``: every shape with
    N >= 2048); otherwise GEMV for M <= ``GEMV_MAX_M``, the fused tensor-core kernel up to ``SLAB_MIN_M``, above it
    bounded slabs of the dequantized weight + cuBLAS. Rotation: inside the kernel at M = 1 and K = 4096 where gemvt
    runs (``triton.FUSED_ROTATION``: two shuffle stages across lanes and five in-thread stages per 128-block, once
    per program; it saved 1.0-3.2 us per call, perf/RESULTS.md S15-8); elsewhere a separate ``fwht`` pass (at
    K > 4096 gemvt would redo it for every K slice of every row tile, and the other kernels hold x differently).
    """
    if not isinstance(w, HLWQWeight):
        raise TypeError(f"w must be an HLWQWeight, got {type(w).__name__}")
    w.validate("w")
    if not isinstance(x_rotated, bool):
        raise TypeError(f"x_rotated must be a bool, got {type(x_rotated).__name__}")
    if not isinstance(pdl, bool):
        raise TypeError(f"pdl must be a bool, got {type(pdl).__name__}")
    check_tensor(x, "x", min_ndim=1, dtypes=FLOAT_DTYPES)
    n, k = w.shape
    want = w.padded_in_features if x_rotated else k
    if x.shape[-1] != want:
        what = "w.padded_in_features (x_rotated=True)" if x_rotated else "w.shape[1]"
        raise ValueError(f"x.shape[-1] must be {what} = {want}, got {x.shape[-1]}")
    if out_dtype is None:
        out_dtype = x.dtype
    if out_dtype not in FLOAT_DTYPES:
        raise TypeError(f"out_dtype must be one of (float32, bfloat16, float16) or None, got {out_dtype}")
    check_same_device(x=x, **{"w.packed": w.packed})
    if resolve_impl(impl, x, w.packed) == "triton":
        return dequant_matmul_triton(x, w, x_rotated, out_dtype, pdl=pdl)
    return dequant_matmul_reference(x, w, x_rotated, out_dtype)

"""Shared argument validation and implementation dispatch for every hlwq op.

Every public op validates its arguments here, *before* dispatch, so the Triton
path and the PyTorch reference raise the same errors. Errors name the argument,
what was expected and what came.
"""

from __future__ import annotations

import os
from typing import Iterable, Sequence

import torch

IMPLS = ("auto", "triton", "reference")


def interpreting() -> bool:
    """True when Triton kernels run through Triton's CPU interpreter."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def cdiv(a: int, b: int) -> int:
    """ceil(a / b) for launch grids: plain integer arithmetic (``triton.cdiv`` is a constexpr
    function object, a few microseconds per call from Python on a launcher's hot path)."""
    return -(-a // b)


def next_pow2(n: int) -> int:
    """The smallest power of two >= n (0 for 0), as ``triton.next_power_of_2``, in plain Python."""
    return 1 << (n - 1).bit_length() if n > 0 else 0


def resolve_impl(impl: str, *tensors: torch.Tensor) -> str:
    """Turn ``impl`` into "triton" or "reference".

    ``auto`` picks Triton when every tensor is on CUDA, or when
    ``TRITON_INTERPRET=1`` (the CPU interpreter), else the reference.
    ``triton`` on CPU tensors without the interpreter raises.
    """
    if impl not in IMPLS:
        raise ValueError(f"impl must be one of {IMPLS}, got {impl!r}")
    on_cuda = len(tensors) > 0 and all(t.is_cuda for t in tensors)  # (torch 2.11 dynamo cannot trace bool(tuple))
    if impl == "reference":
        return "reference"
    if impl == "auto":
        return "triton" if (on_cuda or interpreting()) else "reference"
    if not on_cuda and not interpreting():
        devices = sorted({str(t.device) for t in tensors})
        raise RuntimeError(
            f"impl='triton' needs CUDA tensors or TRITON_INTERPRET=1 set before hlwq_kernels "
            f"is imported; got tensors on {devices}"
        )
    return "triton"


def check_tensor(
    t,
    name: str,
    *,
    ndim: int | Sequence[int] | None = None,
    min_ndim: int | None = None,
    shape: Sequence[int | None] | None = None,
    dtypes: Iterable[torch.dtype] | None = None,
) -> None:
    """Check a tensor argument; ``shape`` may use ``None`` (or -1) as a wildcard."""
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if dtypes is not None:
        dtypes = tuple(dtypes)
        if t.dtype not in dtypes:
            names = ", ".join(str(d).replace("torch.", "") for d in dtypes)
            raise TypeError(f"{name}.dtype must be one of ({names}), got {str(t.dtype).replace('torch.', '')}")
    if ndim is not None:
        allowed = (ndim,) if isinstance(ndim, int) else tuple(ndim)
        if t.ndim not in allowed:
            raise ValueError(f"{name} must have {' or '.join(map(str, allowed))} dimensions, got shape {tuple(t.shape)}")
    if min_ndim is not None and t.ndim < min_ndim:
        raise ValueError(f"{name} must have at least {min_ndim} dimensions, got shape {tuple(t.shape)}")
    if shape is not None:
        if t.ndim != len(shape) or any(s not in (None, -1) and s != d for s, d in zip(shape, t.shape)):
            want = "[" + ", ".join("*" if s in (None, -1) else str(s) for s in shape) + "]"
            raise ValueError(f"{name} must have shape {want}, got {list(t.shape)}")


def check_int(value, name: str, lo: int | None = None, hi: int | None = None) -> int:
    """Check an integer argument (bools refused) within [lo, hi]."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__} {value!r}")
    if (lo is not None and value < lo) or (hi is not None and value > hi):
        rng = f"{lo if lo is not None else '-inf'}..{hi if hi is not None else 'inf'}"
        raise ValueError(f"{name} must be in {rng}, got {value}")
    return value


def check_bits(bits, name: str = "bits", lo: int = 1, hi: int = 8) -> int:
    return check_int(bits, name, lo, hi)


def check_power_of_two(value, name: str, lo: int = 1, hi: int | None = None) -> int:
    check_int(value, name, lo, hi)
    if value & (value - 1):
        raise ValueError(f"{name} must be a power of two, got {value}")
    return value


def check_same_device(**tensors: torch.Tensor) -> None:
    devices = {n: t.device for n, t in tensors.items() if isinstance(t, torch.Tensor)}
    if len(set(devices.values())) > 1:
        desc = ", ".join(f"{n} on {d}" for n, d in devices.items())
        raise ValueError(f"all tensors must be on one device, got {desc}")


def check_finite(t: torch.Tensor, name: str) -> None:
    if t.is_floating_point() and t.numel() and not bool(torch.isfinite(t).all()):
        n_nan = int(torch.isnan(t).sum())
        n_inf = int(torch.isinf(t).sum())
        raise ValueError(f"{name} must be finite, got {n_nan} NaN and {n_inf} inf values")


FLOAT_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
INT_CODE_DTYPES = (torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64)

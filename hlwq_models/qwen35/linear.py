"""The one seam for linear layers: every matmul by a weight in the model goes through ``Linear``.

``Linear.weight`` is either a dense ``[N, K]`` tensor (bf16/fp32, an ``nn.Parameter``) or an
``HLWQWeight`` (hlwq_kernels.quant). Layer code only calls ``self.proj(x)``; swapping bf16 for
HLWQ weights (``quantize_model_``) never touches it.

Several checkpoint tensors that read the same input are stored as row slices of one fused
weight (``parts``), because at batch 1 one [12352, 4096] GEMV runs at ~2.3 TB/s where four
small ones average ~1.5 TB/s (ANCHORS.md: cuBLAS M=1 4096x4096 1.42 TB/s, 24576x4096 2.37 TB/s).
Row-fusing is transparent to HLWQ: its norms are per row block and the codebook is shared, so
quantizing the fused weight gives the same codes as quantizing each part.
"""

from __future__ import annotations

from typing import Iterable

import torch
import torch.nn as nn
import torch.nn.functional as F

from hlwq_kernels.quant import HLWQWeight, dequantize_weight, quantize_weight

try:  # written by another helper; until it lands, HLWQ weights take the slow path below.
    from hlwq_kernels.dequant_matmul import dequant_matmul as _dequant_matmul
except ImportError:  # pragma: no cover - depends on the tree
    _dequant_matmul = None

__all__ = ["Linear", "quantize_model_", "HAVE_DEQUANT_MATMUL"]

HAVE_DEQUANT_MATMUL = _dequant_matmul is not None


class Linear(nn.Module):
    """``y = x @ W.T`` (no bias), ``W [N, K]`` dense or ``HLWQWeight``.

    Args:
        in_features: K.
        parts: ``(name, rows)`` pairs when the weight fuses several checkpoint tensors
            along N (their outputs are split by ``split``); default one part of ``out_features``.
    """

    def __init__(self, in_features: int, out_features: int | None = None, *,
                 parts: Iterable[tuple[str, int]] | None = None, dtype: torch.dtype | None = None,
                 device=None):
        super().__init__()
        if parts is None:
            parts = (("", out_features),)
        self.parts = tuple((str(n), int(r)) for n, r in parts)
        n_out = sum(r for _, r in self.parts)
        if out_features is not None and out_features != n_out:
            raise ValueError(f"out_features={out_features} != sum of parts {n_out}")
        self.in_features, self.out_features = in_features, n_out
        self.weight: torch.Tensor | HLWQWeight = nn.Parameter(
            torch.empty(n_out, in_features, dtype=dtype, device=device), requires_grad=False)
        self.impl = "auto"  # set by the model for every hlwq_kernels call
        self.pdl = False  # dequant_matmul's programmatic dependent launch (Transformer.set_pdl)

    @property
    def quantized(self) -> bool:
        return isinstance(self.weight, HLWQWeight)

    def part_slices(self) -> dict[str, slice]:
        """Row range of each part in the (dense) fused weight."""
        out, o = {}, 0
        for name, rows in self.parts:
            out[name] = slice(o, o + rows)
            o += rows
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weight
        if isinstance(w, HLWQWeight):
            if _dequant_matmul is not None:
                return _dequant_matmul(x, w, impl=self.impl, pdl=self.pdl)
            # FALLBACK (slow, no fused kernel yet): rebuild the dense weight on every call.
            return F.linear(x, dequantize_weight(w, dtype=x.dtype, impl=self.impl))
        return F.linear(x, w)

    def split(self, y: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Split a fused output along its last dimension into the parts (views)."""
        return torch.split(y, [r for _, r in self.parts], dim=-1)

    def set_quantized(self, qw: HLWQWeight) -> None:
        if not isinstance(qw, HLWQWeight):
            raise TypeError(f"qw must be an HLWQWeight, got {type(qw).__name__}")
        if tuple(qw.shape) != (self.out_features, self.in_features):
            raise ValueError(f"qw.shape must be {(self.out_features, self.in_features)}, got {tuple(qw.shape)}")
        del self.weight  # drop the Parameter registration
        self.weight = qw

    def extra_repr(self) -> str:
        kind = f"HLWQ{self.weight.bits}" if self.quantized else str(self.weight.dtype).replace("torch.", "")
        parts = "" if len(self.parts) == 1 else f", parts={[n for n, _ in self.parts]}"
        return f"in={self.in_features}, out={self.out_features}, {kind}{parts}"

    def _apply(self, fn, recurse=True):  # keep .to(device) working for HLWQ weights
        super()._apply(fn, recurse)
        if isinstance(self.weight, HLWQWeight):
            probe = fn(torch.empty(0, device=self.weight.device))
            self.weight = self.weight.to(probe.device)
        return self


def quantize_model_(model: nn.Module, bits: int, *, block: int = 128, skip: Iterable[str] = (),
                    impl: str = "auto", progress: bool = False) -> nn.Module:
    """Replace, in place, the dense weight of every ``Linear`` in ``model`` (lm_head included, as
    the 5-bit product is sized) by ``quantize_weight(weight, bits, block=block)``; modules whose
    qualified name contains any string of ``skip`` stay dense. ``progress``: a tqdm bar on
    stderr. Returns ``model``."""
    import sys

    from tqdm import tqdm

    skip = tuple(skip)
    todo = [m for name, m in model.named_modules()
            if isinstance(m, Linear) and not m.quantized and not any(s in name for s in skip)]
    for mod in tqdm(todo, desc=f"quantize W{bits}", unit="linear", file=sys.stderr, disable=not progress):
        mod.set_quantized(quantize_weight(mod.weight.detach(), bits, block=block, impl=impl))
    return model

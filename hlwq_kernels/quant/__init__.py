"""The HLWQ weight format: ``HLWQWeight``, ``quantize_weight``, ``dequantize_weight``.

A weight ``W [N, K]`` is padded with zero columns to ``Kp = ceil(K / block) * block``; each
row's blocks of ``block`` inputs are rotated by the orthonormal Walsh-Hadamard transform,
``W_rot = fwht(W_pad, block=block)``. Each rotated block ``y`` is stored as one code per
coordinate (an index into the sorted codebook, bit-packed along K, docs/FORMAT.md) and one fp16
scale ``norms[n, b]``; dequantized, ``W_rot[n, k] ~= norms[n, k // block] * codebook[code[n, k]]``
and, H being symmetric and orthonormal, ``x @ W.T == fwht(x_pad) @ W_rot.T``.

The quantizer chooses codes and scale per block by a small search (``reference.SCALE_FACTORS``):
for each candidate ``s = f * rms(y)`` (4 factors per bit width, ~0.83..1.19) the codes are the
nearest levels of ``y / s`` and the scale is their least-squares fit
``lam = max(0, <y, c> / <c, c>)`` (``c = codebook[code]``); the candidate with the smallest
``|y - lam * c|^2`` is stored. So ``norms`` is "the block's scale": the best scale for the
stored codes, on N(0, 1) blocks 0.8-1.25 x the block's RMS (mean ~1.0 at 2-3 bits, ~0.92 at
5-8 bits), not the RMS itself.

One op, two paths with the same arguments (``IMPLS``): ``reference.py`` (PyTorch, the CPU
path) and ``triton.py`` (one fused kernel). ``rtn.py`` holds the round-to-nearest baseline
that the quality tests compare against.
"""

from __future__ import annotations

import dataclasses

import torch

from .._common import FLOAT_DTYPES, check_bits, check_finite, check_power_of_two, check_tensor
from .._common import resolve_impl
from ..fwht import fwht
from ..lloyd_max import gaussian_codebook
from ..pack_bits import packed_words, unpack_bits
from .reference import quantize_weight_reference
from .triton import quantize_weight_triton

IMPLS = ((quantize_weight_reference, quantize_weight_triton),)  # reference/launcher pairs: same arguments

__all__ = ["HLWQWeight", "quantize_weight", "dequantize_weight", "FP16_MAX",
           "quantize_weight_reference", "quantize_weight_triton"]

FP16_MAX = 65504.0


@dataclasses.dataclass(frozen=True)
class HLWQWeight:
    """An HLWQ-quantized weight (immutable).

    Fields:
        packed: ``[N, Kp * bits / 32]`` int32, codes in the bit-sliced plane layout
            (``Kp = ceil(K / block) * block``; the padded columns are zero weights).
        norms: ``[N, Kp / block]`` float16 per-block scales: ``W_rot = norms * codebook[code]``.
            ``quantize_weight`` stores the least-squares scale of the block's codes (>= 0, ~0.8-1
            x the block's RMS after rotation, module docstring); consumers only multiply by it.
        codebook: ``[2**bits]`` float32 sorted levels.
        bits: 1..8.  block: power of two >= 32.  shape: ``(N, K)`` of the original weight.
    """

    packed: torch.Tensor
    norms: torch.Tensor
    codebook: torch.Tensor
    bits: int
    block: int
    shape: tuple[int, int]

    @property
    def out_features(self) -> int:
        return self.shape[0]

    @property
    def in_features(self) -> int:
        return self.shape[1]

    @property
    def padded_in_features(self) -> int:
        return self.norms.shape[1] * self.block

    @property
    def device(self) -> torch.device:
        return self.packed.device

    def nbytes(self) -> int:
        """Bytes of packed codes + norms (the codebook is shared and tiny, but counted)."""
        return sum(t.numel() * t.element_size() for t in (self.packed, self.norms, self.codebook))

    def to(self, device) -> "HLWQWeight":
        return dataclasses.replace(self, packed=self.packed.to(device), norms=self.norms.to(device),
                                   codebook=self.codebook.to(device))

    def validate(self, name: str = "w") -> None:
        """Raise if the fields are inconsistent (e.g. a corrupt checkpoint)."""
        check_bits(self.bits, f"{name}.bits")
        check_power_of_two(self.block, f"{name}.block", lo=32)
        if len(self.shape) != 2:
            raise ValueError(f"{name}.shape must be (N, K), got {self.shape}")
        n, k = self.shape
        kp = -(-k // self.block) * self.block
        check_tensor(self.packed, f"{name}.packed", shape=(n, packed_words(kp, self.bits)), dtypes=(torch.int32,))
        check_tensor(self.norms, f"{name}.norms", shape=(n, kp // self.block), dtypes=(torch.float16,))
        check_tensor(self.codebook, f"{name}.codebook", shape=(1 << self.bits,), dtypes=(torch.float32,))
        if self.packed.device != self.norms.device or self.packed.device != self.codebook.device:
            raise ValueError(f"{name}: packed, norms and codebook must be on one device")


def quantize_weight(w: torch.Tensor, bits: int, *, block: int = 128, codebook: torch.Tensor | None = None,
                    impl: str = "auto") -> HLWQWeight:
    """Quantize ``w [N, K]`` (fp32/bf16/fp16) to HLWQ codes of ``bits`` bits.

    Args:
        w: ``[N, K]`` weight (out features x in features), finite. ``K`` need not be a multiple
            of ``block``: the rows are zero-padded to ``Kp = ceil(K / block) * block`` (the
            padding is rotated with the block and costs codes, ``dequantize_weight`` drops it).
        bits: 1..8.
        block: power of two >= 32 (the Triton kernel takes <= 4096).
        codebook: sorted float32 ``[2**bits]``; default ``gaussian_codebook(bits)``. (``grid.weight_codebook(bits)``,
            the Lloyd-Max levels on an int8 grid at 3-5 bits, is what the opt-in int8 GEMV needs: ``quant/grid.py``.)
        impl: "auto" | "triton" | "reference".
    Returns:
        :class:`HLWQWeight`. Each block: ``y = fwht(w_block)``; for each candidate scale
        ``s = f * rms(y)``, ``f`` in ``SCALE_FACTORS[bits]``: ``code = #{thresholds < y / s}``
        (nearest level, ties to the lower one; thresholds are the float32 midpoints) and
        ``lam = max(0, <y, c> / <c, c>)``, ``c = codebook[code]``; the candidate with the least
        ``|y - lam c|^2`` gives the codes and ``norms = fp16(lam)``.
    Raises:
        ValueError if a block's scale exceeds the fp16 range (> 65504): such a block cannot be
        stored in this format (fp16 norms); scale the weight first. Scales below fp16's
        smallest subnormal (6e-8) round to 0 (the block dequantizes to zeros).
    """
    check_tensor(w, "w", ndim=2, dtypes=FLOAT_DTYPES)
    check_bits(bits)
    check_power_of_two(block, "block", lo=32)
    check_finite(w, "w")
    if codebook is None:
        codebook = gaussian_codebook(bits, device=w.device)
    check_tensor(codebook, "codebook", shape=(1 << bits,), dtypes=(torch.float32,))
    check_finite(codebook, "codebook")
    if bool((codebook[1:] < codebook[:-1]).any()):
        raise ValueError("codebook must be sorted in non-decreasing order")
    codebook = codebook.to(w.device).contiguous()
    if resolve_impl(impl, w) == "triton":
        if block > 4096:
            raise ValueError(f"block must be <= 4096 for impl='triton', got {block}")
        packed, scales = quantize_weight_triton(w, bits, block, codebook)
    else:
        packed, scales = quantize_weight_reference(w, bits, block, codebook)
    if scales.numel():
        smax = float(scales.max())
        if smax > FP16_MAX:
            raise ValueError(f"w has a block with scale {smax:.4g} > fp16 max {FP16_MAX}; HLWQ stores per-block "
                             "norms in fp16 (scale the weight down first)")
    return HLWQWeight(packed, scales.to(torch.float16), codebook, bits, block, (w.shape[0], w.shape[1]))


def dequantize_weight(qw: HLWQWeight, *, rotated: bool = False, dtype: torch.dtype = torch.float32,
                      impl: str = "auto") -> torch.Tensor:
    """Rebuild the weight: ``[N, K]`` in ``dtype``; with ``rotated=True`` the rotated, padded
    ``W_rot [N, Kp]`` that the kernels multiply by (for references and tests)."""
    if not isinstance(qw, HLWQWeight):
        raise TypeError(f"qw must be an HLWQWeight, got {type(qw).__name__}")
    qw.validate("qw")
    n, k = qw.shape
    kp = qw.padded_in_features
    if n == 0 or kp == 0:
        return torch.zeros(n, kp if rotated else k, dtype=dtype, device=qw.device)
    codes = unpack_bits(qw.packed, qw.bits, kp, impl=impl).long()
    w_rot = (qw.codebook[codes].view(n, kp // qw.block, qw.block) * qw.norms.float()[..., None]).view(n, kp)
    if rotated:
        return w_rot.to(dtype)
    return fwht(w_rot, block=qw.block, impl=impl)[:, :k].to(dtype)

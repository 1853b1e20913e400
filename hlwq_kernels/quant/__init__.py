"""The HLWQ weight format: ``HLWQWeight``, ``quantize_weight``, ``dequantize_weight``.

A weight ``W [N, K]`` is padded with zero columns to ``Kp = ceil(K / block) * block``; each
row's blocks of ``block`` inputs are rotated by the orthonormal Walsh-Hadamard transform,
``W_rot = fwht(W_pad, block=block)``. Each rotated block is stored as one fp16 scale
``norms[n, b]`` (the block's RMS, i.e. its L2 norm / sqrt(block), so coordinates divided by
it are ~N(0, 1)) and one Lloyd-Max code per coordinate, bit-packed along K
(docs/FORMAT.md). Dequantized: ``W_rot[n, k] ~= norms[n, k // block] * codebook[code[n, k]]``
and, H being symmetric and orthonormal, ``x @ W.T == fwht(x_pad) @ W_rot.T``.
"""

from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F

from .._common import FLOAT_DTYPES, check_bits, check_finite, check_power_of_two, check_tensor
from ..fwht import fwht
from ..lloyd_max import gaussian_codebook
from ..pack_bits import pack_bits, packed_words, unpack_bits

__all__ = ["HLWQWeight", "quantize_weight", "dequantize_weight", "FP16_MAX"]

FP16_MAX = 65504.0


@dataclasses.dataclass(frozen=True)
class HLWQWeight:
    """An HLWQ-quantized weight (immutable).

    Fields:
        packed: ``[N, Kp * bits / 32]`` int32, codes in the bit-sliced plane layout.
        norms: ``[N, Kp / block]`` float16 per-block scales (block RMS after rotation).
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

    ``codebook`` (sorted float32 ``[2**bits]``) defaults to the Lloyd-Max levels for N(0, 1).
    Raises ``ValueError`` if a block's RMS exceeds the fp16 range (65504): such a weight
    cannot be stored in this format without loss of the block entirely.
    """
    check_tensor(w, "w", ndim=2, dtypes=FLOAT_DTYPES)
    check_bits(bits)
    check_power_of_two(block, "block", lo=32)
    check_finite(w, "w")
    if codebook is None:
        codebook = gaussian_codebook(bits, device=w.device)
    check_tensor(codebook, "codebook", shape=(1 << bits,), dtypes=(torch.float32,))
    n, k = w.shape
    kp = -(-k // block) * block
    y = fwht(F.pad(w.to(torch.float32), (0, kp - k)), block=block, impl=impl).view(n, kp // block, block)
    rms = y.pow(2).mean(-1).sqrt()
    if rms.numel() and float(rms.max()) > FP16_MAX:
        raise ValueError(f"w has a block with RMS {float(rms.max()):.4g} > fp16 max {FP16_MAX}; "
                         "HLWQ stores per-block norms in fp16")
    norms = rms.to(torch.float16)
    u = y / norms.float().clamp_min(torch.finfo(torch.float32).tiny)[..., None]
    thresholds = (codebook[1:] + codebook[:-1]) * 0.5
    codes = torch.bucketize(u, thresholds).to(torch.uint8).view(n, kp)
    packed = pack_bits(codes, bits, impl=impl)
    return HLWQWeight(packed, norms, codebook.contiguous(), bits, block, (n, k))


def dequantize_weight(qw: HLWQWeight, *, rotated: bool = False, dtype: torch.dtype = torch.float32,
                      impl: str = "auto") -> torch.Tensor:
    """Rebuild the weight: ``[N, K]`` in ``dtype``; with ``rotated=True`` the rotated, padded
    ``W_rot [N, Kp]`` that the kernels multiply by (for references and tests)."""
    if not isinstance(qw, HLWQWeight):
        raise TypeError(f"qw must be an HLWQWeight, got {type(qw).__name__}")
    qw.validate("qw")
    n, k = qw.shape
    kp = qw.padded_in_features
    codes = unpack_bits(qw.packed, qw.bits, kp, impl=impl).long()
    w_rot = (qw.codebook[codes].view(n, kp // qw.block, qw.block) * qw.norms.float()[..., None]).view(n, kp)
    if rotated:
        return w_rot.to(dtype)
    return fwht(w_rot, block=qw.block, impl=impl)[:, :k].to(dtype)

"""hlwq_kernels: stateless Hadamard-Lloyd quantization ops, each a Triton kernel plus a
plain PyTorch reference with the same arguments (``impl="auto" | "triton" | "reference"``)."""

from .fwht import fwht, hadamard_matrix
from .pack_bits import pack_bits, unpack_bits
from .lloyd_max import gaussian_codebook
from .quant import HLWQWeight, dequantize_weight, quantize_weight

__all__ = [
    "fwht", "hadamard_matrix", "pack_bits", "unpack_bits", "gaussian_codebook",
    "HLWQWeight", "quantize_weight", "dequantize_weight",
]

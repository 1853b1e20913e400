"""hlwq_kernels: stateless Hadamard-Lloyd quantization ops, each a Triton kernel plus a
plain PyTorch reference with the same arguments (``impl="auto" | "triton" | "reference"``)."""

from .fwht import fwht, hadamard_matrix
from .pack_bits import pack_bits, unpack_bits
from .lloyd_max import LloydMaxFit, gaussian_codebook, lloyd_max_fit
from .quant import HLWQWeight, dequantize_weight, quantize_weight
from .dequant_matmul import dequant_matmul
from .kv_quant_attn import (QuantizedKV, dequantize_kv, kv_cache_write_, kv_cache_write_kv_, kv_quant_attn,
                            quantize_kv)
from .gated_delta_rule import (GatedDeltaDecodeOutput, GatedDeltaOutput, chunk_gated_delta_rule,
                               gated_delta_decode_step, recurrent_gated_delta_rule)
from .causal_conv1d import CausalConvOutput, causal_conv1d

__all__ = [
    "fwht", "hadamard_matrix", "pack_bits", "unpack_bits", "gaussian_codebook", "lloyd_max_fit", "LloydMaxFit",
    "HLWQWeight", "quantize_weight", "dequantize_weight", "dequant_matmul",
    "QuantizedKV", "quantize_kv", "dequantize_kv", "kv_cache_write_", "kv_cache_write_kv_", "kv_quant_attn",
    "GatedDeltaOutput", "chunk_gated_delta_rule", "recurrent_gated_delta_rule", "CausalConvOutput", "causal_conv1d",
    "GatedDeltaDecodeOutput", "gated_delta_decode_step",
]

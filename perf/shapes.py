"""Qwen3.5-9B's real dimensions: the one source of benchmark shapes (docs: shared QWEN35.md)."""

HIDDEN = 4096
INTERMEDIATE = 12288
VOCAB = 248320
N_LAYERS = 32
ATTN_Q_HEADS, ATTN_KV_HEADS, ATTN_HEAD_DIM = 16, 4, 256
GDN_K_HEADS, GDN_V_HEADS, GDN_HEAD_DIM, GDN_CONV = 16, 32, 128, 4
HLWQ_BLOCK = 128

# Linear layers as (name, N out, K in); M=1 decode reads each once per token.
LINEARS = [
    ("gdn_qkv|attn_q", 8192, HIDDEN),
    ("square", 4096, HIDDEN),
    ("gate_up", 2 * INTERMEDIATE, HIDDEN),
    ("down", HIDDEN, INTERMEDIATE),
    ("attn_kv", 2048, HIDDEN),
    ("lm_head", VOCAB, HIDDEN),
]

# Measured ceilings on the lent H100 (ANCHORS.md), for the "vs floor" columns.
COPY_BW = 3.02e12        # bytes/s, device-to-device copy (read + write)
BF16_TFLOPS = 790e12     # dense bf16 matmul

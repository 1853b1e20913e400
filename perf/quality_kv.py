"""Quality of the HLWQ KV-cache format at 2/3/4 (and 8) bits; prints markdown tables.

    python perf/quality_kv.py [--windows N]     (CPU, ~1-2 minutes)

1. Per-vector cosine similarity of a key/value vector and its dequantized code, on Gaussian
   data and on the keys (after RoPE) and values of the fixture model's 2 full-attention layers
   over held-out text (``../shared/fixtures``).
2. Attention-output relative error ``||o_q - o|| / ||o||`` of causal attention over a
   1024-token window, with the quantized cache (``kv_quant_attn`` reference, fp32) against
   exact fp32 attention on the unquantized keys/values; same data; real queries captured with
   them.
3. The fixture model's bits per byte on held-out windows with its K/V cache quantized (every
   key and value goes through quantize_kv -> dequantize_kv before attention, which is what the
   kernel attends over), against fp32.
Real K/V come from transformers' ``Qwen3_5ForCausalLM`` (fp32, CPU) through a registered
attention function that sees (query, key, value) after q/k-norm and RoPE.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from hlwq_kernels import dequantize_kv, quantize_kv  # noqa: E402
from hlwq_kernels.kv_quant_attn import kv_quant_attn_reference  # noqa: E402
from hlwq_kernels.quantize_kv import default_codebook  # noqa: E402

FIXTURES = Path(__file__).resolve().parents[2] / "shared" / "fixtures"
MODEL_DIR = FIXTURES / "tiny-qwen35-pystd"
EVAL_BIN = FIXTURES / "pystd-eval.bin"
BITS = (2, 3, 4, 8)
WINDOW = 1024


def fake_quant(x: torch.Tensor, bits: int) -> torch.Tensor:
    q = quantize_kv(x.float(), bits, impl="reference")
    return dequantize_kv(q.packed, q.norms, bits=bits).to(x.dtype)


def cosine_stats(x: torch.Tensor, bits: int) -> tuple[float, float, float]:
    """(mean, 1st percentile, min) per-vector cosine similarity of x [..., D] and its round trip."""
    x = x.reshape(-1, x.shape[-1]).float()
    cos = F.cosine_similarity(fake_quant(x, bits), x, dim=-1)
    return float(cos.mean()), float(torch.quantile(cos, 0.01)), float(cos.min())


def attn_rel_err(q, k, v, bits) -> float:
    """q [1, Hq, T, D], k/v [1, Hkv, T, D] fp32: causal attention, quantized cache vs exact."""
    hq, hkv, t = q.shape[1], k.shape[1], k.shape[2]
    exact = F.scaled_dot_product_attention(q, k.repeat_interleave(hq // hkv, 1), v.repeat_interleave(hq // hkv, 1),
                                           is_causal=True)
    kq, vq = quantize_kv(k, bits, impl="reference"), quantize_kv(v, bits, impl="reference")
    out = kv_quant_attn_reference(q, kq.packed, kq.norms, vq.packed, vq.norms, torch.tensor([t]), None, bits,
                                  q.shape[-1] ** -0.5, True, default_codebook(bits, "cpu"))
    return float((out - exact).norm() / exact.norm())


class Capture:
    """An attention function for transformers' AttentionInterface: records (q, k, v) per layer
    and optionally fake-quantizes k and v before plain causal softmax attention."""

    def __init__(self):
        self.bits = None
        self.record = {}

    def __call__(self, module, query, key, value, attention_mask, scaling, dropout=0.0, **kwargs):
        if self.bits is None:
            self.record[module.layer_idx] = (query.detach().clone(), key.detach().clone(), value.detach().clone())
        else:
            key, value = fake_quant(key, self.bits), fake_quant(value, self.bits)
        g = query.shape[1] // key.shape[1]
        out = F.scaled_dot_product_attention(query, key.repeat_interleave(g, 1), value.repeat_interleave(g, 1),
                                             is_causal=True, scale=scaling)
        return out.transpose(1, 2).contiguous(), None


def load_model(capture: Capture):
    from transformers import AttentionInterface, AutoModelForCausalLM

    AttentionInterface.register("hlwq_kv_capture", capture)
    model = AutoModelForCausalLM.from_pretrained(MODEL_DIR, dtype=torch.float32, attn_implementation="hlwq_kv_capture")
    return model.eval()


def fmt_row(cells) -> str:
    return "| " + " | ".join(cells) + " |"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--windows", type=int, default=4, help="held-out 1024-byte windows for bits per byte")
    args = ap.parse_args()
    torch.manual_seed(0)
    data = EVAL_BIN.read_bytes()

    capture = Capture()
    model = load_model(capture)
    windows = [torch.tensor(list(data[i * WINDOW:(i + 1) * WINDOW]), dtype=torch.long)[None]
               for i in range(args.windows)]
    with torch.no_grad():
        model(windows[0])
    layers = sorted(capture.record)
    real = {f"real L{i}": capture.record[i] for i in layers}  # (q, k, v) of window 0
    d_real = real[f"real L{layers[0]}"][1].shape[-1]

    g = torch.Generator().manual_seed(0)
    gauss = {}
    for d in (128, 256):
        t, hkv, hq = WINDOW, 4, 16
        gauss[f"gauss D={d}"] = (torch.randn(1, hq, t, d, generator=g), torch.randn(1, hkv, t, d, generator=g),
                                 torch.randn(1, hkv, t, d, generator=g))

    print(f"## KV-cache quality (perf/quality_kv.py; fixture model, held-out text, window {WINDOW} bytes)\n")
    print(f"Real data: layers {layers} (the full-attention layers), 2 KV heads x D={d_real}, keys after "
          f"q/k-norm and RoPE. Gaussian: N(0,1) q/k/v, 16 q / 4 KV heads.\n")
    print("### Per-vector cosine similarity, mean (1st percentile, min)\n")
    print(fmt_row(["data", "tensor"] + [f"{b} bits" for b in BITS]))
    print(fmt_row(["---"] * (2 + len(BITS))))
    for name, (q, k, v) in {**gauss, **real}.items():
        for tname, x in (("K", k), ("V", v)):
            cells = []
            for b in BITS:
                mean, p1, mn = cosine_stats(x, b)
                cells.append(f"{mean:.4f} ({p1:.4f}, {mn:.4f})")
            print(fmt_row([name, tname] + cells))

    print("\n### Attention output relative error (causal over the window, quantized K and V vs exact fp32)\n")
    print(fmt_row(["data"] + [f"{b} bits" for b in BITS]))
    print(fmt_row(["---"] * (1 + len(BITS))))
    for name, (q, k, v) in {**gauss, **real}.items():
        print(fmt_row([name] + [f"{attn_rel_err(q, k, v, b):.4f}" for b in BITS]))

    print(f"\n### Fixture model bits per byte, {args.windows} held-out windows (fp32, KV fake-quantized)\n")
    print(fmt_row(["KV cache", "bits/byte", "rise"]))
    print(fmt_row(["---"] * 3))
    base = None
    for bits in (None, 8, 4, 3, 2):
        capture.bits = bits
        ce = 0.0
        with torch.no_grad():
            for w in windows:
                logits = model(w).logits[0, :-1]
                ce += float(F.cross_entropy(logits.float(), w[0, 1:], reduction="mean"))
        bpb = ce / len(windows) / math.log(2)
        base = bpb if base is None else base
        label = "fp32 (unquantized)" if bits is None else f"Q{bits}"
        print(fmt_row([label, f"{bpb:.4f}", "" if bits is None else f"{bpb - base:+.4f}"]))
    capture.bits = None


if __name__ == "__main__":
    main()

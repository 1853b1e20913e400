"""The whole Qwen3.5 model at Qwen3.5-9B shapes (random bf16 weights, ~18 GB) on the H100.

Targets (issue #6): decode at batch 1 with 1k context >= 120 tok/s (bandwidth ceiling ~169:
17.9 GB of weights per token at ~3 TB/s), prefill of 4096 tokens >= 10k tok/s; the baseline is
transformers' eager Qwen3_5ForCausalLM with the same config (ANCHORS.md: 9.2 tok/s).
Select with -k: ``model_decode``, ``model_prefill``, ``transformers_decode``.

Our model and transformers' are never alive together (each class frees its model), so ~18 GB
at a time fits the 80 GB card.
"""

from __future__ import annotations

import gc
import statistics
import time

import pytest
import torch

import shapes
from hlwq_models.qwen35 import Qwen35Config, Transformer
from hlwq_models.qwen35.generate import DecodeGraph
from hlwq_models.qwen35.model import rms_norm as eager_rms_norm

CTX = 1024
PREFILL = 4096


def _config() -> Qwen35Config:
    cfg = Qwen35Config()  # the defaults are Qwen3.5-9B's; checked against perf/shapes.py
    assert (cfg.hidden_size, cfg.intermediate_size, cfg.vocab_size, cfg.num_hidden_layers) == \
        (shapes.HIDDEN, shapes.INTERMEDIATE, shapes.VOCAB, shapes.N_LAYERS)
    assert (cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim) == \
        (shapes.ATTN_Q_HEADS, shapes.ATTN_KV_HEADS, shapes.ATTN_HEAD_DIM)
    assert (cfg.linear_num_key_heads, cfg.linear_num_value_heads, cfg.linear_key_head_dim) == \
        (shapes.GDN_K_HEADS, shapes.GDN_V_HEADS, shapes.GDN_HEAD_DIM)
    return cfg


def _free():
    gc.collect()
    torch.cuda.empty_cache()


def random_model9b() -> Transformer:
    """The Qwen3.5-9B-shaped model with random bf16 weights on the GPU (seed 0), in eval mode."""
    torch.manual_seed(0)
    model = Transformer(_config(), dtype=torch.bfloat16, device="cuda")
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("A_log"):
                p.copy_(torch.empty_like(p, dtype=torch.float32).uniform_(1, 16).log())
            elif name.endswith("dt_bias") or name.endswith("linear_attn.norm.weight"):
                p.fill_(1.0)
            elif "norm" in name:
                p.normal_(0.0, 0.05)  # zero-centred weights
            else:
                p.normal_(0.0, 0.02)
    return model.eval()


@pytest.fixture(scope="class")
def model9b():
    model = random_model9b()
    yield model
    del model
    _free()


def _weight_bytes(model) -> int:
    """Bytes one decode step reads: every weight once (the embedding: one row)."""
    total = sum(p.numel() * p.element_size() for p in model.parameters())
    return total - model.embed_tokens.numel() * model.embed_tokens.element_size() \
        + model.embed_tokens.shape[1] * model.embed_tokens.element_size() \
        + (0 if model.lm_head is not None else model.embed_tokens.numel() * model.embed_tokens.element_size())


def _matmul_params(model) -> int:
    return sum(p.numel() for n, p in model.named_parameters() if n != "embed_tokens") + \
        (model.embed_tokens.numel() if model.lm_head is None else 0)


@pytest.mark.benchmark(group="qwen35-9b bf16")
class TestQwen35At9BShapes:
    @pytest.mark.parametrize("ops", ["eager-ops", "compiled-ops"])
    def test_model_decode_1k(self, benchmark, gpu_bench, model9b, ops):
        """One CUDA-graph decode step at batch 1 after a 1024-token prefill."""
        model = model9b
        model.ops.eager() if ops == "eager-ops" else model.compile_elementwise()
        cfg = model.config
        model.setup_cache(1, CTX + 64)
        t0 = time.perf_counter()
        graph = DecodeGraph(model, 1, padded=False)  # before the prefill: its warm-up writes slot 0
        capture_s = time.perf_counter() - t0
        prompt = torch.randint(0, cfg.vocab_size, (1, CTX), device="cuda")
        with torch.no_grad():
            model.hidden_states(prompt, torch.arange(CTX, device="cuda"))
        tok = torch.zeros(1, 1, dtype=torch.long, device="cuda")
        pos = torch.tensor([CTX], device="cuda")
        n_gdn = cfg.layer_types.count("linear_attention")
        state_bytes = 2 * n_gdn * cfg.linear_num_value_heads * cfg.linear_key_head_dim * cfg.linear_value_head_dim * 4
        kv_bytes = 2 * (cfg.num_hidden_layers - n_gdn) * cfg.num_key_value_heads * cfg.head_dim * CTX * 2
        ms = gpu_bench(benchmark, lambda: graph(tok, pos), nbytes=_weight_bytes(model) + state_bytes + kv_bytes,
                       flops=2 * _matmul_params(model), batch=1, context=CTX, ops=ops,
                       capture_s=round(capture_s, 1))
        tps = 1e3 / ms
        benchmark.extra_info.update(tok_per_s=round(tps, 1), note=f"{tps:.1f} tok/s (target >= 120, ceiling ~169)")
        model.free_cache()
        model.__dict__.pop("_decode_graphs", None)

    def test_model_prefill_4096(self, benchmark, gpu_bench, model9b):
        """Prefill of one 4096-token prompt (writes the caches; logits of the last token only)."""
        model = model9b
        cfg = model.config
        model.setup_cache(1, PREFILL)
        prompt = torch.randint(0, cfg.vocab_size, (1, PREFILL), device="cuda")
        pos = torch.arange(PREFILL, device="cuda")

        def fn():
            with torch.no_grad():
                return model.lm_logits(model.hidden_states(prompt, pos)[:, -1:])

        n_attn = cfg.layer_types.count("full_attention")
        attn_flops = n_attn * 2 * 2 * cfg.num_attention_heads * cfg.head_dim * PREFILL * PREFILL / 2  # causal
        lm_head = cfg.vocab_size * cfg.hidden_size
        flops = 2 * (_matmul_params(model) - lm_head) * PREFILL + 2 * lm_head + attn_flops
        ms = gpu_bench(benchmark, fn, nbytes=_weight_bytes(model), flops=flops, tokens=PREFILL,
                       ops="eager-ops" if model.ops.rms_norm is eager_rms_norm else "compiled-ops")
        tps = PREFILL / (ms * 1e-3)
        benchmark.extra_info.update(tok_per_s=round(tps), note=f"{tps:,.0f} tok/s (target >= 10,000)")
        model.free_cache()


    def test_model_decode_1k_hlwq_w5_kv3(self, benchmark, gpu_bench, model9b):
        """The product: every linear (lm_head too) as 5-bit HLWQ codes, a 3-bit KV cache; one
        CUDA-graph decode step at batch 1 after a 1024-token prefill. Runs last in this class:
        it quantizes the shared model in place."""
        from hlwq_models.cli import quantize

        model = model9b
        model.compile_elementwise()
        dense_bytes = _weight_bytes(model)
        t0 = time.perf_counter()
        quantize(model, wbits=5, kvbits=3, progress=False)
        torch.cuda.synchronize()
        quant_s = time.perf_counter() - t0
        _free()
        cfg = model.config
        model.setup_cache(1, CTX + 64)
        graph = DecodeGraph(model, 1, padded=False)
        prompt = torch.randint(0, cfg.vocab_size, (1, CTX), device="cuda")
        with torch.no_grad():
            model.hidden_states(prompt, torch.arange(CTX, device="cuda"))
        tok = torch.zeros(1, 1, dtype=torch.long, device="cuda")
        pos = torch.tensor([CTX], device="cuda")
        qbytes = sum(m.weight.nbytes() for m in model.modules() if getattr(m, "quantized", False))
        dense_rest = sum(p.numel() * p.element_size() for n, p in model.named_parameters()
                         if n != "embed_tokens") + model.embed_tokens.shape[1] * model.embed_tokens.element_size()
        n_gdn = cfg.layer_types.count("linear_attention")
        state_bytes = 2 * n_gdn * cfg.linear_num_value_heads * cfg.linear_key_head_dim * cfg.linear_value_head_dim * 4
        kv_bytes = 2 * (cfg.num_hidden_layers - n_gdn) * cfg.num_key_value_heads * (cfg.head_dim * 3 // 8 + 2) * CTX
        ms = gpu_bench(benchmark, lambda: graph(tok, pos), nbytes=qbytes + dense_rest + state_bytes + kv_bytes,
                       batch=1, context=CTX, ops="compiled-ops", wbits=5, kvbits=3, quantize_s=round(quant_s, 2),
                       weight_gb=round((qbytes + dense_rest) / 1e9, 2), dense_weight_gb=round(dense_bytes / 1e9, 2))
        tps = 1e3 / ms
        benchmark.extra_info.update(tok_per_s=round(tps, 1),
                                    note=f"{tps:.1f} tok/s W5/KV3 (5.125-bit ceiling ~590)")
        # the same step with the linears' GEMVs launched with PDL (model.set_pdl), and with the rotation as a
        # separate fwht pass (dequant_matmul's FUSED_ROTATION off: the code before session 15), against the step
        # above, alternated in this run (median of 7 x 50 replays each)
        from hlwq_kernels.dequant_matmul import triton as dqt

        model.set_pdl(True)
        graphs = {"default": graph, "pdl": DecodeGraph(model, 1, padded=False)}
        model.set_pdl(False)
        dqt.FUSED_ROTATION = False
        try:
            graphs["fwht_pass"] = DecodeGraph(model, 1, padded=False)
        finally:
            dqt.FUSED_ROTATION = True
        times = {k: [] for k in graphs}
        for _ in range(7):
            for k, gr in graphs.items():
                times[k].append(_replay_ms(gr, tok, pos, 50))
        med = {k: statistics.median(v) for k, v in times.items()}
        benchmark.extra_info.update(**{f"{k}_us": round(v * 1e3, 1) for k, v in med.items()},
                                    pdl_tok_per_s=round(1e3 / med["pdl"], 1),
                                    pdl_speedup=round(med["default"] / med["pdl"], 4),
                                    fused_rotation_speedup=round(med["fwht_pass"] / med["default"], 4))
        model.free_cache()
        model.__dict__.pop("_decode_graphs", None)


def _replay_ms(graph, tok, pos, n):
    """Milliseconds per decode step over ``n`` back-to-back replays of a ``DecodeGraph``."""
    graph(tok, pos)
    a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    a.record()
    for _ in range(n):
        graph(tok, pos)
    b.record()
    torch.cuda.synchronize()
    return a.elapsed_time(b) / n


@pytest.mark.benchmark(group="qwen35-9b bf16")
class TestTransformersBaseline:
    def test_transformers_decode_1k(self, benchmark):
        """transformers' eager Qwen3_5ForCausalLM, same config, random bf16 weights: one cached
        decode step at batch 1 after a 1024-token prefill (its GDN runs the PyTorch fallback
        unless fla / causal-conv1d are installed)."""
        from transformers import Qwen3_5ForCausalLM, Qwen3_5TextConfig

        _free()
        cfg = _config()
        hf_cfg = Qwen3_5TextConfig(
            vocab_size=cfg.vocab_size, hidden_size=cfg.hidden_size, intermediate_size=cfg.intermediate_size,
            num_hidden_layers=cfg.num_hidden_layers, num_attention_heads=cfg.num_attention_heads,
            num_key_value_heads=cfg.num_key_value_heads, head_dim=cfg.head_dim,
            linear_num_key_heads=cfg.linear_num_key_heads, linear_num_value_heads=cfg.linear_num_value_heads,
            linear_key_head_dim=cfg.linear_key_head_dim, linear_value_head_dim=cfg.linear_value_head_dim,
            layer_types=list(cfg.layer_types), tie_word_embeddings=False,
            rope_parameters={"rope_type": "default", "rope_theta": cfg.rope_theta,
                             "partial_rotary_factor": cfg.partial_rotary_factor})
        default = torch.get_default_dtype()
        torch.set_default_dtype(torch.bfloat16)
        try:
            with torch.device("cuda"):
                hf = Qwen3_5ForCausalLM(hf_cfg).eval()
        finally:
            torch.set_default_dtype(default)
        prompt = torch.randint(0, cfg.vocab_size, (1, CTX), device="cuda")
        tok = torch.zeros(1, 1, dtype=torch.long, device="cuda")
        with torch.no_grad():
            out = hf(input_ids=prompt, use_cache=True)
            cache = out["cache"] if "cache" in out else out.past_key_values  # renamed in transformers 5.2x

            def step():
                hf(input_ids=tok, past_key_values=cache, use_cache=True)
                torch.cuda.synchronize()

            benchmark.pedantic(step, rounds=10, warmup_rounds=2)
        s = benchmark.stats.stats.median
        benchmark.extra_info.update(us=round(s * 1e6, 1), tok_per_s=round(1 / s, 2),
                                    note=f"{1 / s:.2f} tok/s (transformers eager; ANCHORS: 9.2)",
                                    device=torch.cuda.get_device_name())
        del hf, cache, out
        _free()

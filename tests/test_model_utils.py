"""Helpers (no tests) for the Qwen3.5 model tests: tiny random transformers models, copying
their weights into ours, writing small checkpoints, and the fixture's location."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

FIXTURE = Path(__file__).resolve().parents[1].parent / "shared" / "fixtures" / "tiny-qwen35-pystd"
EVAL_BIN = FIXTURE.parent / "pystd-eval.bin"
needs_fixture = pytest.mark.skipif(not (FIXTURE / "config.json").is_file(), reason=f"fixture {FIXTURE} absent")

# Hq != Hkv (4 vs 2), GDN key heads != value heads (2 vs 4), Dk != Dv, partial RoPE (8 of 32 dims).
TINY = dict(vocab_size=97, hidden_size=64, intermediate_size=96, num_hidden_layers=4, num_attention_heads=4,
            num_key_value_heads=2, head_dim=32, linear_num_key_heads=2, linear_num_value_heads=4,
            linear_key_head_dim=16, linear_value_head_dim=24, linear_conv_kernel_dim=4,
            layer_types=["linear_attention", "full_attention", "linear_attention", "full_attention"],
            rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "partial_rotary_factor": 0.25},
            tie_word_embeddings=False, eos_token_id=3)


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """The CPU dev machine has 2 cores shared with other jobs; PyTorch's intra-op thread pool then
    spins against them and small ops get ~20x slower. One thread is much faster here."""
    n = torch.get_num_threads()
    if not torch.cuda.is_available():
        torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def hf_tiny(seed: int = 0, **overrides):
    """A transformers Qwen3_5ForCausalLM (fp32, eval) with random weights, including the norm
    weights, A_log and dt_bias (their init values would hide mistakes: zeros/ones)."""
    from transformers import Qwen3_5ForCausalLM, Qwen3_5TextConfig

    torch.manual_seed(seed)
    cfg = Qwen3_5TextConfig(**{**TINY, **overrides})
    model = Qwen3_5ForCausalLM(cfg).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.normal_(0.0, 0.3) if "linear_attn.norm" not in name else p.uniform_(0.5, 1.5)
            elif "A_log" in name:
                p.uniform_(-1.0, 1.5)
            elif "dt_bias" in name:
                p.normal_(0.0, 1.0)
    return model


def ours_from_hf(hf, *, dtype=torch.float32, device="cpu", impl="reference"):
    """Our Transformer with the transformers model's weights (through checkpoint_targets)."""
    from hlwq_models.qwen35 import Qwen35Config, Transformer
    from hlwq_models.qwen35.loading import checkpoint_targets

    cfg = Qwen35Config.from_dict(hf.config.to_dict())
    model = Transformer(cfg, dtype=dtype, device=device, impl=impl)
    targets = checkpoint_targets(model)
    with torch.no_grad():
        for name, t in hf.state_dict().items():
            key = name[len("model."):] if name.startswith("model.") else name
            if key == "lm_head.weight" and cfg.tie_word_embeddings:
                continue
            targets[key].copy_(t)
    return model.eval()


def write_checkpoint(directory: Path, tensors: dict[str, torch.Tensor], config: dict, *, shards: int = 1) -> Path:
    """Write ``tensors`` as model.safetensors (shards=1) or ``shards`` files plus an index."""
    from safetensors.torch import save_file

    directory.mkdir(parents=True, exist_ok=True)
    (directory / "config.json").write_text(json.dumps(config))
    tensors = {k: v.contiguous() for k, v in tensors.items()}
    if shards == 1:
        save_file(tensors, str(directory / "model.safetensors"))
        return directory
    names = sorted(tensors)
    weight_map = {}
    for s in range(shards):
        fname = f"model-{s + 1:05d}-of-{shards:05d}.safetensors"
        part = {n: tensors[n] for n in names[s::shards]}
        save_file(part, str(directory / fname))
        weight_map.update({n: fname for n in part})
    (directory / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    return directory


def scale_err(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """max |actual - expected| / max |expected| (float64)."""
    a, e = actual.detach().double().cpu(), expected.detach().double().cpu()
    return float((a - e).abs().max() / e.abs().max())

"""Checkpoint loading: both naming layouts, single file vs sharded, skipped vision/MTP tensors,
tied embeddings, and errors that name the missing / unexpected / mis-shaped tensor or bad file."""

from __future__ import annotations

import json

import pytest
import torch

from hlwq_models.qwen35 import load_model
from hlwq_models.qwen35.loading import checkpoint_targets
from test_model_utils import (FIXTURE, TINY, _one_thread, hf_tiny, needs_fixture, scale_err,  # noqa: F401
                              write_checkpoint)


@pytest.fixture(scope="module")
def hf():
    return hf_tiny(seed=11)


def _text_config(hf) -> dict:
    return hf.config.to_dict()


def _multimodal(hf):
    """The Qwen3_5ForConditionalGeneration layout: text under model.language_model., plus vision
    and MTP tensors a text model must skip, and the text config nested under text_config."""
    sd = {}
    for k, v in hf.state_dict().items():
        sd[k.replace("model.", "model.language_model.", 1) if k.startswith("model.") else k] = v
    sd["model.visual.blocks.0.attn.qkv.weight"] = torch.randn(8, 4)
    sd["model.visual.patch_embed.proj.weight"] = torch.randn(4, 3, 2, 2, 2)
    sd["mtp.layers.0.mlp.up_proj.weight"] = torch.randn(8, 4)
    cfg = {"model_type": "qwen3_5", "text_config": _text_config(hf), "vision_config": {"depth": 1},
           "tie_word_embeddings": False}
    return sd, cfg


def _check_logits(model, hf):
    tokens = torch.randint(0, TINY["vocab_size"], (1, 9), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert scale_err(model(tokens.to(model.device)), hf(tokens).logits) <= 1e-4


@pytest.mark.parametrize("shards", [1, 3])
@pytest.mark.parametrize("layout", ["causal_lm", "multimodal"])
def test_load_layouts_and_sharding(tmp_path, hf, layout, shards, device):
    if layout == "causal_lm":
        sd, cfg = hf.state_dict(), _text_config(hf)
    else:
        sd, cfg = _multimodal(hf)
    path = write_checkpoint(tmp_path / "ckpt", sd, cfg, shards=shards)
    model = load_model(path, device=device, dtype=torch.float32, impl="reference")
    assert model.embed_tokens.device.type == device.type
    _check_logits(model, hf)


def test_transformers_save_pretrained_loads(tmp_path, hf):
    hf.save_pretrained(tmp_path / "saved")
    _check_logits(load_model(tmp_path / "saved", device="cpu", dtype=torch.float32, impl="reference"), hf)


def test_tied_embeddings(tmp_path):
    hf = hf_tiny(seed=12, tie_word_embeddings=True)
    sd = {k: v for k, v in hf.state_dict().items() if k != "lm_head.weight"}
    path = write_checkpoint(tmp_path / "tied", sd, _text_config(hf))
    model = load_model(path, device="cpu", dtype=torch.float32, impl="reference")
    assert model.lm_head is None
    _check_logits(model, hf)


def _raises(tmp_path, sd, cfg, match, exc=ValueError, shards=1):
    path = write_checkpoint(tmp_path / "bad", sd, cfg, shards=shards)
    with pytest.raises(exc, match=match):
        load_model(path, device="cpu", dtype=torch.float32)


def test_missing_tensor_is_named(tmp_path, hf):
    sd = dict(hf.state_dict())
    del sd["model.layers.1.self_attn.k_norm.weight"]
    del sd["lm_head.weight"]
    _raises(tmp_path, sd, _text_config(hf), r"2 missing tensor\(s\): .*model\.layers\.1\.self_attn\.k_norm\.weight")


def test_missing_tensor_named_with_multimodal_prefix(tmp_path, hf):
    sd, cfg = _multimodal(hf)
    del sd["model.language_model.layers.0.linear_attn.A_log"]
    _raises(tmp_path, sd, cfg, r"missing tensor\(s\): model\.language_model\.layers\.0\.linear_attn\.A_log", shards=2)


def test_unexpected_tensor_is_named(tmp_path, hf):
    sd = dict(hf.state_dict())
    sd["model.layers.0.mlp.extra_proj.weight"] = torch.zeros(2, 2)
    sd["model.layers.9.input_layernorm.weight"] = torch.zeros(64)
    _raises(tmp_path, sd, _text_config(hf), r"2 unexpected tensor\(s\): .*model\.layers\.0\.mlp\.extra_proj\.weight")


def test_misshaped_tensor_is_named(tmp_path, hf):
    sd = dict(hf.state_dict())
    sd["model.layers.2.linear_attn.in_proj_z.weight"] = torch.zeros(95, 64)
    _raises(tmp_path, sd, _text_config(hf),
            r"mis-shaped tensor\(s\): model\.layers\.2\.linear_attn\.in_proj_z\.weight: checkpoint \[95, 64\], "
            r"model \[96, 64\]")


def test_config_mismatch_reports_all_problems(tmp_path, hf):
    cfg = {**_text_config(hf), "num_hidden_layers": 2, "layer_types": ["linear_attention", "full_attention"]}
    _raises(tmp_path, dict(hf.state_dict()), cfg, r"unexpected tensor\(s\): .*model\.layers\.2\.")


def test_corrupt_file_is_named(tmp_path, hf):
    path = write_checkpoint(tmp_path / "corrupt", dict(hf.state_dict()), _text_config(hf))
    (path / "model.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all")
    with pytest.raises(ValueError, match=r"cannot read safetensors file .*model\.safetensors"):
        load_model(path, device="cpu", dtype=torch.float32)


def test_truncated_shard_is_named(tmp_path, hf):
    path = write_checkpoint(tmp_path / "trunc", dict(hf.state_dict()), _text_config(hf), shards=2)
    shard = path / "model-00002-of-00002.safetensors"
    shard.write_bytes(shard.read_bytes()[:-1000])
    with pytest.raises(ValueError, match="model-00002-of-00002.safetensors"):
        load_model(path, device="cpu", dtype=torch.float32)


def test_missing_files_and_shards(tmp_path, hf):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "config.json").write_text(json.dumps(_text_config(hf)))
    with pytest.raises(FileNotFoundError, match="model.safetensors"):
        load_model(tmp_path / "empty", device="cpu")
    path = write_checkpoint(tmp_path / "noshard", dict(hf.state_dict()), _text_config(hf), shards=2)
    (path / "model-00001-of-00002.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="model-00001-of-00002.safetensors"):
        load_model(path, device="cpu")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_model(tmp_path / "nowhere", device="cpu")


@needs_fixture
def test_fixture_loads_exactly(device):
    from safetensors import safe_open

    model = load_model(FIXTURE, device=device, dtype=torch.bfloat16)
    targets = checkpoint_targets(model)
    index = json.loads((FIXTURE / "model.safetensors.index.json").read_text())["weight_map"]
    assert len(targets) == len(index)
    for fname in sorted(set(index.values())):
        with safe_open(str(FIXTURE / fname), framework="pt") as f:
            for name in f.keys():
                key = name if name == "lm_head.weight" else name[len("model."):]
                assert torch.equal(targets[key].cpu(), f.get_tensor(name)), name

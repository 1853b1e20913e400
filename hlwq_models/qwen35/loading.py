"""Load Hugging Face Qwen3.5 safetensors checkpoints into ``Transformer``.

* Files: ``model.safetensors.index.json`` (sharded) or a single ``model.safetensors``.
* Names: ``model.language_model.*`` (multimodal ``Qwen3_5ForConditionalGeneration``) or
  ``model.*`` (``Qwen3_5ForCausalLM``), plus ``lm_head.weight``; vision (``model.visual.*``) and
  multi-token-prediction (``mtp.*``) tensors are skipped.
* Every name and shape is checked against the model from the file headers first (no tensor
  data read); missing, unexpected or mis-shaped tensors raise one ``ValueError`` naming them.
* Then one tensor at a time goes straight to the target device (``safe_open(device=...)``) and
  is copied into its slot (casting to the model dtype), so host memory never holds the model.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open

from .config import Qwen35Config
from .model import Transformer

__all__ = ["load_model", "load_weights", "checkpoint_targets", "checkpoint_files", "MULTIMODAL_PREFIX",
           "CAUSAL_LM_PREFIX"]

MULTIMODAL_PREFIX = "model.language_model."
CAUSAL_LM_PREFIX = "model."
SKIPPED_PREFIXES = ("model.visual.", "mtp.", "model.mtp.")
_MAX_NAMES = 12  # names listed per category in an error message


def checkpoint_targets(model: Transformer) -> dict[str, torch.Tensor]:
    """Checkpoint name (without the ``model.`` / ``model.language_model.`` prefix; ``lm_head.weight``
    as is) -> the tensor (or row slice of a fused weight) it loads into."""
    out: dict[str, torch.Tensor] = {"embed_tokens.weight": model.embed_tokens, "norm.weight": model.norm.weight}
    if model.lm_head is not None:
        _linear_targets(out, "lm_head", model.lm_head)
    for i, layer in enumerate(model.layers):
        p = f"layers.{i}."
        out[p + "input_layernorm.weight"] = layer.input_layernorm.weight
        out[p + "post_attention_layernorm.weight"] = layer.post_attention_layernorm.weight
        _linear_targets(out, p + "mlp", layer.mlp.gate_up_proj)
        _linear_targets(out, p + "mlp.down_proj", layer.mlp.down_proj)
        if layer.is_attention:
            a = layer.self_attn
            _linear_targets(out, p + "self_attn", a.qkv_proj)
            _linear_targets(out, p + "self_attn.o_proj", a.o_proj)
            out[p + "self_attn.q_norm.weight"] = a.q_norm.weight
            out[p + "self_attn.k_norm.weight"] = a.k_norm.weight
        else:
            g = layer.linear_attn
            _linear_targets(out, p + "linear_attn", g.in_proj)
            _linear_targets(out, p + "linear_attn.out_proj", g.out_proj)
            out[p + "linear_attn.conv1d.weight"] = g.conv1d_weight
            out[p + "linear_attn.A_log"] = g.A_log
            out[p + "linear_attn.dt_bias"] = g.dt_bias
            out[p + "linear_attn.norm.weight"] = g.norm.weight
    return out


def _linear_targets(out: dict, prefix: str, lin) -> None:
    if lin.quantized:
        raise ValueError(f"{prefix} is already quantized; load dense weights before quantize_model_")
    for part, rows in lin.part_slices().items():
        name = f"{prefix}.{part}.weight" if part else f"{prefix}.weight"
        out[name] = lin.weight.data[rows]


def checkpoint_files(path: str | os.PathLike) -> dict[str, Path]:
    """Tensor name -> safetensors file, from the index (sharded) or the single file's header."""
    path = Path(path)
    index = path / "model.safetensors.index.json"
    single = path / "model.safetensors"
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            raise ValueError(f"{index} is not a valid safetensors index (needs a 'weight_map'): {e}") from None
        files = {name: path / fname for name, fname in weight_map.items()}
        absent = sorted({str(f) for f in files.values() if not f.is_file()})
        if absent:
            raise FileNotFoundError(f"{index} names shard(s) that do not exist: {', '.join(absent)}")
        return files
    if single.is_file():
        with _open(single, "cpu") as f:
            return {name: single for name in f.keys()}
    raise FileNotFoundError(f"no model.safetensors.index.json or model.safetensors in {path}")


class _open:
    """``safe_open`` whose errors (corrupt header, truncated file) name the file."""

    def __init__(self, file: Path, device: str):
        self.file, self.device = file, device

    def __enter__(self):
        try:
            self.f = safe_open(str(self.file), framework="pt", device=self.device)
        except (SafetensorError, OSError, ValueError) as e:
            raise ValueError(f"cannot read safetensors file {self.file}: {e}") from None
        return self.f.__enter__()

    def __exit__(self, *exc):
        return self.f.__exit__(*exc)


def _strip(name: str, prefix: str) -> str | None:
    """Checkpoint name -> target name, or None when the tensor is skipped (vision, MTP)."""
    if name.startswith(SKIPPED_PREFIXES):
        return None
    if name == "lm_head.weight":
        return name
    if name.startswith(prefix):
        return name[len(prefix):]
    return "?" + name  # unexpected


def load_weights(model: Transformer, path: str | os.PathLike, *, progress: bool = False) -> None:
    """Load the checkpoint at ``path`` (a directory) into ``model`` in place."""
    files = checkpoint_files(path)
    prefix = MULTIMODAL_PREFIX if any(n.startswith(MULTIMODAL_PREFIX) for n in files) else CAUSAL_LM_PREFIX
    targets = checkpoint_targets(model)
    tied = model.lm_head is None

    # Pass 1: headers only. Names and shapes.
    plan: dict[Path, list[tuple[str, str]]] = {}
    unexpected, misshaped, seen = [], [], set()
    for name, file in files.items():
        key = _strip(name, prefix)
        if key is None or (tied and key == "lm_head.weight"):
            continue
        if key not in targets:
            unexpected.append(name)
            continue
        seen.add(key)
        plan.setdefault(file, []).append((name, key))
    for file, items in plan.items():
        with _open(file, "cpu") as f:
            keys = set(f.keys())
            for name, key in items:
                if name not in keys:
                    raise ValueError(f"{file} does not contain {name} (listed in the index)")
                shape = tuple(f.get_slice(name).get_shape())
                if shape != tuple(targets[key].shape):
                    misshaped.append(f"{name}: checkpoint {list(shape)}, model {list(targets[key].shape)}")
    missing = [(prefix + k if k != "lm_head.weight" else k) for k in targets if k not in seen]
    problems = []
    for what, names in (("missing", missing), ("unexpected", unexpected), ("mis-shaped", misshaped)):
        if names:
            more = f" (+{len(names) - _MAX_NAMES} more)" if len(names) > _MAX_NAMES else ""
            problems.append(f"{len(names)} {what} tensor(s): {', '.join(names[:_MAX_NAMES])}{more}")
    if problems:
        raise ValueError(f"checkpoint {path} does not match the model config: " + "; ".join(problems))

    # Pass 2: one tensor at a time, straight to the device.
    device = model.device
    dev = str(device) if device.type != "cuda" else f"cuda:{device.index or 0}"
    bar = None
    if progress:
        from tqdm import tqdm
        bar = tqdm(total=len(seen), desc="loading", unit="tensor", leave=False)
    with torch.no_grad():
        for file, items in plan.items():
            with _open(file, dev) as f:
                for name, key in items:
                    try:
                        t = f.get_tensor(name)
                    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
                        raise ValueError(f"cannot read {name} from {file}: {e}") from None
                    if not t.is_floating_point():
                        raise ValueError(f"{name} in {file} has dtype {t.dtype}, expected a float tensor")
                    targets[key].copy_(t)
                    del t
                    if bar is not None:
                        bar.update()
    if bar is not None:
        bar.close()


def load_model(path: str | os.PathLike, *, device=None, dtype: torch.dtype = torch.bfloat16,
               impl: str = "auto", progress: bool = False) -> Transformer:
    """Build the model from ``path/config.json`` on ``device`` (default: cuda if present, else cpu)
    and load its weights."""
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"checkpoint directory {path} does not exist")
    cfg = Qwen35Config.from_file(path)
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    model = Transformer(cfg, dtype=dtype, device=torch.device(device), impl=impl)
    load_weights(model, path, progress=progress)
    return model.eval()

"""``Qwen35Config``: the text model's shape, read from a Hugging Face ``config.json``.

Two forms are accepted (both are what transformers writes):
* the plain text form, ``model_type == "qwen3_5_text"`` (a ``Qwen3_5ForCausalLM`` save);
* the multimodal form, ``model_type == "qwen3_5"``, which nests the text config under
  ``text_config`` (real Qwen3.5 checkpoints, ``Qwen3_5ForConditionalGeneration``).
Anything else, or a config missing a field that fixes a tensor shape, raises ``ValueError``
naming the field: guessing a shape from a default would only fail later, at weight loading.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

__all__ = ["Qwen35Config", "LINEAR_ATTENTION", "FULL_ATTENTION"]

LINEAR_ATTENTION = "linear_attention"
FULL_ATTENTION = "full_attention"
TEXT_MODEL_TYPE = "qwen3_5_text"
MULTIMODAL_MODEL_TYPE = "qwen3_5"

# Fields that fix tensor shapes: no default, a config without them is refused.
_REQUIRED = (
    "vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
    "num_key_value_heads", "head_dim", "linear_num_key_heads", "linear_num_value_heads",
    "linear_key_head_dim", "linear_value_head_dim",
)


@dataclasses.dataclass(frozen=True)
class Qwen35Config:
    """Shape and numerics of a Qwen3.5 dense text model (defaults: Qwen3.5-9B's)."""

    vocab_size: int = 248320
    hidden_size: int = 4096
    intermediate_size: int = 12288
    num_hidden_layers: int = 32
    num_attention_heads: int = 16
    num_key_value_heads: int = 4
    head_dim: int = 256
    linear_num_key_heads: int = 16
    linear_num_value_heads: int = 32
    linear_key_head_dim: int = 128
    linear_value_head_dim: int = 128
    linear_conv_kernel_dim: int = 4
    layer_types: tuple[str, ...] | None = None  # None: 3 linear + 1 full attention, repeated
    rms_norm_eps: float = 1e-6
    rope_theta: float = 1e7
    partial_rotary_factor: float = 0.25
    tie_word_embeddings: bool = False
    eos_token_id: tuple[int, ...] = ()

    def __post_init__(self):
        if self.layer_types is None:
            object.__setattr__(self, "layer_types", tuple(
                FULL_ATTENTION if (i + 1) % 4 == 0 else LINEAR_ATTENTION for i in range(self.num_hidden_layers)))
        else:
            object.__setattr__(self, "layer_types", tuple(self.layer_types))
        eos = self.eos_token_id
        if eos is None:
            eos = ()
        elif isinstance(eos, int):
            eos = (eos,)
        object.__setattr__(self, "eos_token_id", tuple(int(e) for e in eos))
        self.validate()

    # ---- derived sizes -------------------------------------------------------------------
    @property
    def rotary_dim(self) -> int:
        """Leading dims of each attention head that RoPE rotates (64 of 256 for Qwen3.5-9B)."""
        return int(self.head_dim * self.partial_rotary_factor)

    @property
    def linear_key_dim(self) -> int:
        return self.linear_num_key_heads * self.linear_key_head_dim

    @property
    def linear_value_dim(self) -> int:
        return self.linear_num_value_heads * self.linear_value_head_dim

    @property
    def linear_conv_dim(self) -> int:
        """Channels of the GDN causal conv: q | k | v."""
        return 2 * self.linear_key_dim + self.linear_value_dim

    def validate(self) -> None:
        for name in _REQUIRED + ("linear_conv_kernel_dim",):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"config.{name} must be a positive int, got {value!r}")
        if len(self.layer_types) != self.num_hidden_layers:
            raise ValueError(f"config.layer_types must have num_hidden_layers={self.num_hidden_layers} entries, "
                             f"got {len(self.layer_types)}")
        bad = sorted({t for t in self.layer_types if t not in (LINEAR_ATTENTION, FULL_ATTENTION)})
        if bad:
            raise ValueError(f"config.layer_types entries must be {LINEAR_ATTENTION!r} or {FULL_ATTENTION!r}, got {bad}")
        if self.num_attention_heads % self.num_key_value_heads:
            raise ValueError(f"config.num_attention_heads={self.num_attention_heads} must be a multiple of "
                             f"num_key_value_heads={self.num_key_value_heads}")
        if self.linear_num_value_heads % self.linear_num_key_heads:
            raise ValueError(f"config.linear_num_value_heads={self.linear_num_value_heads} must be a multiple of "
                             f"linear_num_key_heads={self.linear_num_key_heads}")
        if not 0.0 < self.partial_rotary_factor <= 1.0 or self.rotary_dim % 2:
            raise ValueError(f"config.partial_rotary_factor={self.partial_rotary_factor} must give an even rotary "
                             f"dim in 2..head_dim={self.head_dim}, got {self.rotary_dim}")
        if not self.rope_theta > 0:
            raise ValueError(f"config.rope_theta must be > 0, got {self.rope_theta}")
        if not self.rms_norm_eps > 0:
            raise ValueError(f"config.rms_norm_eps must be > 0, got {self.rms_norm_eps}")

    # ---- reading Hugging Face configs -----------------------------------------------------
    @classmethod
    def from_dict(cls, cfg: dict) -> "Qwen35Config":
        """Build from a parsed ``config.json`` (text or multimodal form)."""
        if not isinstance(cfg, dict):
            raise TypeError(f"config must be a dict, got {type(cfg).__name__}")
        model_type = cfg.get("model_type")
        top = cfg
        if model_type == MULTIMODAL_MODEL_TYPE:
            text = cfg.get("text_config")
            if not isinstance(text, dict):
                raise ValueError(f"config with model_type {MULTIMODAL_MODEL_TYPE!r} must nest the text model under "
                                 f"'text_config', got {type(text).__name__}")
            inner = text.get("model_type", TEXT_MODEL_TYPE)
            if inner != TEXT_MODEL_TYPE:
                raise ValueError(f"text_config.model_type must be {TEXT_MODEL_TYPE!r}, got {inner!r}")
            cfg, where = text, "text_config."
        elif model_type == TEXT_MODEL_TYPE:
            where = ""
        else:
            raise ValueError(f"unsupported model_type {model_type!r}: expected {TEXT_MODEL_TYPE!r} (Qwen3_5ForCausalLM) "
                             f"or {MULTIMODAL_MODEL_TYPE!r} (Qwen3_5ForConditionalGeneration); MoE variants "
                             f"(qwen3_5_moe) are not supported")

        missing = [f"{where}{k}" for k in _REQUIRED if cfg.get(k) is None]
        if missing:
            raise ValueError(f"config is missing required field(s): {', '.join(missing)}")
        if cfg.get("hidden_act", "silu") != "silu":
            raise ValueError(f"{where}hidden_act must be 'silu', got {cfg['hidden_act']!r}")
        if cfg.get("attention_bias", False):
            raise ValueError(f"{where}attention_bias=true is not supported (Qwen3.5 has no biases)")

        # RoPE: transformers 5 writes rope_parameters{rope_theta, partial_rotary_factor, rope_type};
        # older files have rope_theta / partial_rotary_factor at the top level.
        rope = cfg.get("rope_parameters") or cfg.get("rope_scaling") or {}
        rope_type = rope.get("rope_type", rope.get("type", "default"))
        if rope_type not in ("default", "mrope"):
            raise ValueError(f"{where}rope_parameters.rope_type {rope_type!r} is not supported (only 'default')")
        theta = rope.get("rope_theta", cfg.get("rope_theta"))
        if theta is None:
            raise ValueError(f"config is missing required field: {where}rope_parameters.rope_theta")
        prf = rope.get("partial_rotary_factor", cfg.get("partial_rotary_factor", 0.25))

        layer_types = cfg.get("layer_types")
        if layer_types is None:
            interval = int(cfg.get("full_attention_interval", 4))
            layer_types = [FULL_ATTENTION if (i + 1) % interval == 0 else LINEAR_ATTENTION
                           for i in range(int(cfg["num_hidden_layers"]))]
        # The multimodal wrapper carries its own tie_word_embeddings; it decides for the lm_head.
        tie = top.get("tie_word_embeddings", cfg.get("tie_word_embeddings", False))
        eos = cfg.get("eos_token_id", top.get("eos_token_id"))

        return cls(
            vocab_size=cfg["vocab_size"], hidden_size=cfg["hidden_size"],
            intermediate_size=cfg["intermediate_size"], num_hidden_layers=cfg["num_hidden_layers"],
            num_attention_heads=cfg["num_attention_heads"], num_key_value_heads=cfg["num_key_value_heads"],
            head_dim=cfg["head_dim"], linear_num_key_heads=cfg["linear_num_key_heads"],
            linear_num_value_heads=cfg["linear_num_value_heads"], linear_key_head_dim=cfg["linear_key_head_dim"],
            linear_value_head_dim=cfg["linear_value_head_dim"],
            linear_conv_kernel_dim=cfg.get("linear_conv_kernel_dim", 4), layer_types=tuple(layer_types),
            rms_norm_eps=float(cfg.get("rms_norm_eps", 1e-6)), rope_theta=float(theta),
            partial_rotary_factor=float(prf), tie_word_embeddings=bool(tie), eos_token_id=eos,
        )

    @classmethod
    def from_file(cls, path: str | os.PathLike) -> "Qwen35Config":
        """Read ``config.json`` (``path`` may be the file or the checkpoint directory)."""
        path = Path(path)
        if path.is_dir():
            path = path / "config.json"
        if not path.is_file():
            raise FileNotFoundError(f"no config.json at {path}")
        try:
            cfg = json.loads(path.read_text())
        except json.JSONDecodeError as e:
            raise ValueError(f"{path} is not valid JSON: {e}") from None
        return cls.from_dict(cfg)

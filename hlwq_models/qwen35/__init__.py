"""Qwen3.5 dense text model: config, model, caches, checkpoint loading, generation."""

from .config import Qwen35Config
from .linear import Linear, quantize_model_
from .cache import KVCache, GDNState
from .model import Transformer
from .loading import load_model, load_weights
from .generate import generate

__all__ = ["Qwen35Config", "Linear", "quantize_model_", "KVCache", "GDNState", "Transformer", "load_model",
           "load_weights", "generate"]

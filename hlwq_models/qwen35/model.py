"""Qwen3.5 dense text model (gpt-fast style: one readable file, static caches, ``forward(tokens, input_pos)``).

Layer math follows transformers' ``Qwen3_5ForCausalLM`` (shared docs/QWEN35.md):
    h = embed(tokens)
    per layer:  h += mixer(norm_in(h));  h += mlp(norm_post(h))      mixer = GDN or gated attention
    logits = lm_head(norm(h))
Every matmul by a weight goes through ``linear.Linear`` (the HLWQ seam), the GDN ops through
``hlwq_kernels`` with the model's ``impl``, attention caches through ``cache.KVCache``.

Batches of prompts of different lengths are LEFT-padded (``pad[b]`` = pad tokens before row b's
prompt). Why left: every row then writes the same cache slot at each decode step, so a step has
one ``input_pos`` and static shapes (CUDA graphs), and the last prompt token of every row sits in
the same column. Padding is made exact rather than approximate:
* attention: row b's queries see only slots ``>= pad[b]``; RoPE position = slot - pad[b];
* GDN: the mixer's input is zeroed at pad slots, so the conv sees zeros (== its zero initial
  state), q = k = v = 0 there and the recurrent state stays exactly 0 through the padding.
"""

from __future__ import annotations

import dataclasses
import functools

import torch
import torch.nn as nn
import torch.nn.functional as F

from hlwq_kernels.causal_conv1d import causal_conv1d
from hlwq_kernels.gated_delta_rule import chunk_gated_delta_rule, recurrent_gated_delta_rule

from .cache import GDNState, KVCache, QuantKVCache, causal_attention
from .config import FULL_ATTENTION, Qwen35Config
from .linear import Linear

__all__ = ["Transformer", "RMSNorm", "GatedRMSNorm", "GatedDeltaNet", "Attention", "MLP", "Block",
           "ElementwiseOps", "RECURRENT_MAX_T", "IMPL_CHOICES"]

IMPL_CHOICES = ("auto", "triton", "reference")
# Up to this many new tokens (decode, short continuations such as speculative verification) the
# GDN layers run the token-loop (recurrent) kernel, above it the chunked one: the recurrent kernel
# keeps the state in registers for all T tokens (one state read + write), while the chunked form
# pays a padded 64-token triangular solve and extra passes regardless of T.
RECURRENT_MAX_T = 8


# ---- elementwise pieces ----------------------------------------------------------------------------
# Pure functions of tensors, collected in ``ElementwiseOps``: eager by default; ``Transformer.
# compile_elementwise()`` swaps in torch.compile'd versions, which fuse each into ~one kernel.
# That matters at decode: eagerly each is 5-10 tiny kernels of ~2-3 us, ~1500 per 9B step.

def rms_norm(x: torch.Tensor, w: torch.Tensor, eps: float) -> torch.Tensor:
    """Zero-centred RMSNorm, fp32 inside: ``x * rsqrt(mean(x^2) + eps) * (1 + w)``.
    (``F.rms_norm`` is one fused kernel on CUDA, torch >= 2.8.)"""
    return F.rms_norm(x.float(), (x.shape[-1],), weight=1.0 + w.float(), eps=eps).to(x.dtype)


def add_rms_norm(h: torch.Tensor, y: torch.Tensor, w: torch.Tensor, eps: float):
    """Residual add then norm: ``(h + y, rms_norm(h + y))``."""
    h = h + y
    return h, rms_norm(h, w, eps)


def l2norm(x: torch.Tensor, eps: float = 1e-6, scale: float = 1.0) -> torch.Tensor:
    """``scale * x / sqrt(sum(x^2) + eps)`` over the last dim in fp32 (transformers' / fla's
    convention), written as an RMSNorm: sum(x^2) + eps = D (mean(x^2) + eps / D)."""
    d = x.shape[-1]
    return F.rms_norm(x.float(), (d,), eps=eps / d) * (scale * d ** -0.5)


def gdn_inputs(conv_out, beta_logit, a, A_log, dt_bias, hk: int, dk: int, hv: int, dv: int):
    """Conv output ``[B, T, 2*Hk*Dk + Hv*Dv]`` -> the gated delta rule's inputs: q (L2-normalised,
    scaled by Dk^-0.5), k (L2-normalised) ``[B, T, Hk, Dk]``, v ``[B, T, Hv, Dv]`` (conv dtype),
    ``g = -exp(A_log) * softplus(a + dt_bias)`` and ``beta = sigmoid(b)`` ``[B, T, Hv]`` fp32."""
    b, t, _ = conv_out.shape
    q, k, v = torch.split(conv_out, (hk * dk, hk * dk, hv * dv), dim=-1)
    q = l2norm(q.reshape(b, t, hk, dk), scale=dk ** -0.5).to(conv_out.dtype)
    k = l2norm(k.reshape(b, t, hk, dk)).to(conv_out.dtype)
    v = v.reshape(b, t, hv, dv)
    g = -A_log.float().exp() * F.softplus(a.float() + dt_bias.float())
    return q, k, v, g, beta_logit.float().sigmoid()


def gated_rms_norm(o: torch.Tensor, z: torch.Tensor, w: torch.Tensor, eps: float) -> torch.Tensor:
    """GDN output norm per head, plain weight (no +1): ``w * rmsnorm(o) * silu(z)``, fp32 inside.
    ``o [B, T, Hv, Dv]``, ``z [B, T, Hv*Dv]`` -> ``[B, T, Hv*Dv]`` in z's dtype."""
    b, t, h, d = o.shape
    y = F.rms_norm(o.float(), (d,), weight=w.float(), eps=eps) * F.silu(z.reshape(b, t, h, d).float())
    return y.to(z.dtype).reshape(b, t, h * d)


def reset_states(conv: torch.Tensor, rec: torch.Tensor, input_pos: torch.Tensor):
    """Zero the GDN states when ``input_pos[0] == 0`` (new sequences) without a host sync."""
    keep = input_pos[0] > 0
    return conv * keep.to(conv.dtype), rec * keep.to(rec.dtype)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate-half RoPE on the first ``2 * cos.shape[-1]`` dims of ``x [B, T, H, D]``; the rest pass.

    ``cos, sin``: ``[B or 1, T, R/2]`` float32.
    """
    r = 2 * cos.shape[-1]
    xr = x[..., :r].float()
    x1, x2 = xr[..., : r // 2], xr[..., r // 2:]
    c, s = cos[:, :, None], sin[:, :, None]
    rot = torch.cat((x1 * c - x2 * s, x2 * c + x1 * s), dim=-1).to(x.dtype)
    return torch.cat((rot, x[..., r:]), dim=-1)


def attn_inputs(qkv, q_w, k_w, cos, sin, hq: int, hkv: int, d: int, eps: float):
    """Fused q|k|v projection output -> q ``[B, Hq, T, D]``, k, v ``[B, Hkv, T, D]`` (q/k normed,
    RoPE'd) and the output gate ``[B, T, Hq*D]``. q_proj rows are per head [query D | gate D]."""
    b, t, _ = qkv.shape
    qg, k, v = torch.split(qkv, (2 * hq * d, hkv * d, hkv * d), dim=-1)
    qg = qg.view(b, t, hq, 2 * d)
    q, gate = qg[..., :d], qg[..., d:]
    q = apply_rope(rms_norm(q, q_w, eps), cos, sin).transpose(1, 2)
    k = apply_rope(rms_norm(k.view(b, t, hkv, d), k_w, eps), cos, sin).transpose(1, 2)
    v = v.view(b, t, hkv, d).transpose(1, 2)
    return q, k, v, gate.reshape(b, t, hq * d)


def gate_output(o: torch.Tensor, gate: torch.Tensor) -> torch.Tensor:
    """Attention output ``[B, Hq, T, D]`` -> ``[B, T, Hq*D] * sigmoid(gate)``."""
    b, h, t, d = o.shape
    return o.transpose(1, 2).reshape(b, t, h * d) * torch.sigmoid(gate)


def swiglu(gate_up: torch.Tensor) -> torch.Tensor:
    """``silu(gate) * up`` of the fused ``[..., 2 * I]`` gate|up projection."""
    gate, up = gate_up.chunk(2, dim=-1)
    return F.silu(gate) * up


class ElementwiseOps:
    """The elementwise functions a model calls (one instance per model, shared by its layers)."""

    NAMES = ("rms_norm", "add_rms_norm", "gdn_inputs", "gated_rms_norm", "reset_states", "attn_inputs",
             "gate_output", "swiglu")

    def __init__(self):
        self.eager()

    def eager(self) -> None:
        for name in self.NAMES:
            setattr(self, name, globals()[name])

    def compile(self, **compile_kwargs) -> None:
        for name in self.NAMES:
            setattr(self, name, torch.compile(globals()[name], **compile_kwargs))


class RMSNorm(nn.Module):
    """Zero-centred RMSNorm (weight holder; the maths is ``rms_norm``)."""

    def __init__(self, dim: int, eps: float, *, dtype=None, device=None):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.zeros(dim, dtype=dtype, device=device), requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return rms_norm(x, self.weight, self.eps)


class GatedRMSNorm(nn.Module):
    """GDN output norm (weight holder; the maths is ``gated_rms_norm``)."""

    def __init__(self, dim: int, eps: float, *, dtype=None, device=None):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim, dtype=dtype, device=device), requires_grad=False)


@dataclasses.dataclass
class Step:
    """What every layer of one forward call needs besides its input.

    input_pos ``[T]`` cache slots; pad ``[B]`` left padding or None; fresh: True/False when known
    whether the call starts new sequences, None to decide on the device (decode); cached: read and
    write the caches; cos, sin ``[B or 1, T, R/2]`` RoPE tables; memo: per-call scratch shared by
    the layers (e.g. the attention mask, built once instead of once per attention layer).
    """

    input_pos: torch.Tensor
    pad: torch.Tensor | None
    fresh: bool | None
    cached: bool
    cos: torch.Tensor
    sin: torch.Tensor
    memo: dict = dataclasses.field(default_factory=dict)


class GatedDeltaNet(nn.Module):
    """Gated DeltaNet mixer: fused input projection, causal conv, gated delta rule, gated norm."""

    def __init__(self, cfg: Qwen35Config, ops: ElementwiseOps, *, dtype=None, device=None):
        super().__init__()
        self.ops = ops
        self.hk, self.hv = cfg.linear_num_key_heads, cfg.linear_num_value_heads
        self.dk, self.dv = cfg.linear_key_head_dim, cfg.linear_value_head_dim
        self.conv_dim, self.value_dim = cfg.linear_conv_dim, cfg.linear_value_dim
        kw = dict(dtype=dtype, device=device)
        self.in_proj = Linear(cfg.hidden_size, parts=(("in_proj_qkv", self.conv_dim), ("in_proj_z", self.value_dim),
                                                      ("in_proj_b", self.hv), ("in_proj_a", self.hv)), **kw)
        # Stored as the checkpoint has it, [C, 1, W] (nn.Conv1d's depthwise layout).
        self.conv1d_weight = nn.Parameter(torch.empty(self.conv_dim, 1, cfg.linear_conv_kernel_dim, **kw),
                                          requires_grad=False)
        self.A_log = nn.Parameter(torch.zeros(self.hv, **kw), requires_grad=False)
        self.dt_bias = nn.Parameter(torch.ones(self.hv, **kw), requires_grad=False)
        self.norm = GatedRMSNorm(self.dv, cfg.rms_norm_eps, **kw)
        self.out_proj = Linear(self.value_dim, cfg.hidden_size, **kw)
        self.cache: GDNState | None = None
        self.impl = "auto"

    def forward(self, x: torch.Tensor, step: Step) -> torch.Tensor:
        """``x [B, T, hidden]`` -> ``[B, T, hidden]``."""
        ops, input_pos, pad, fresh = self.ops, step.input_pos, step.pad, step.fresh
        b, t, _ = x.shape
        if pad is not None:  # exact left padding: zero input -> zero conv output, q=k=v=0, state stays 0
            x = x * (input_pos[None, :] >= pad[:, None]).to(x.dtype)[..., None]
        qkv, z, beta_logit, a = self.in_proj.split(self.in_proj(x))

        state = self.cache if step.cached else None
        conv_state = rec_state = None
        if state is not None and fresh is not True:
            conv_state, rec_state = state.conv[:b], state.recurrent[:b]
            if fresh is None:  # decode: reset on the device when input_pos[0] == 0 (no host sync)
                conv_state, rec_state = ops.reset_states(conv_state, rec_state, input_pos)

        conv = causal_conv1d(qkv, self.conv1d_weight.view(self.conv_dim, -1), initial_state=conv_state,
                             activation="silu", impl=self.impl)
        q, k, v, g, beta = ops.gdn_inputs(conv.out, beta_logit, a, self.A_log, self.dt_bias,
                                          self.hk, self.dk, self.hv, self.dv)
        rule = recurrent_gated_delta_rule if t <= RECURRENT_MAX_T else chunk_gated_delta_rule
        o = rule(q, k, v, g, beta, initial_state=rec_state, impl=self.impl)
        if state is not None:
            state.conv[:b].copy_(conv.final_state)
            state.recurrent[:b].copy_(o.final_state)
        return self.out_proj(ops.gated_rms_norm(o.out, z, self.norm.weight, self.norm.eps))


class Attention(nn.Module):
    """Gated full attention: q/k RMSNorm per head, partial RoPE, GQA, sigmoid output gate."""

    def __init__(self, cfg: Qwen35Config, ops: ElementwiseOps, *, dtype=None, device=None):
        super().__init__()
        self.ops = ops
        self.hq, self.hkv, self.d = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
        kw = dict(dtype=dtype, device=device)
        # q_proj rows are per head [query (D) | gate (D)], interleaved head by head.
        self.qkv_proj = Linear(cfg.hidden_size, parts=(("q_proj", 2 * self.hq * self.d), ("k_proj", self.hkv * self.d),
                                                       ("v_proj", self.hkv * self.d)), **kw)
        self.o_proj = Linear(self.hq * self.d, cfg.hidden_size, **kw)
        self.q_norm = RMSNorm(self.d, cfg.rms_norm_eps, **kw)
        self.k_norm = RMSNorm(self.d, cfg.rms_norm_eps, **kw)
        self.cache: KVCache | None = None

    def forward(self, x: torch.Tensor, step: Step) -> torch.Tensor:
        q, k, v, gate = self.ops.attn_inputs(self.qkv_proj(x), self.q_norm.weight, self.k_norm.weight, step.cos,
                                             step.sin, self.hq, self.hkv, self.d, self.q_norm.eps)
        fresh_prefill = bool(step.fresh) and step.pad is None
        if step.cached:
            self.cache.update(step.input_pos, k, v, step.pad)
            o = self.cache.attend(q, k, v, step.input_pos, step.pad, fresh_prefill=fresh_prefill, memo=step.memo)
        else:
            if not fresh_prefill:
                raise RuntimeError("attention without a cache handles only fresh unpadded prefill")
            o = causal_attention(q, k, v)
        return self.o_proj(self.ops.gate_output(o, gate))


class MLP(nn.Module):
    """SwiGLU: ``down(silu(gate(x)) * up(x))`` with gate|up fused into one weight."""

    def __init__(self, cfg: Qwen35Config, ops: ElementwiseOps, *, dtype=None, device=None):
        super().__init__()
        self.ops = ops
        i = cfg.intermediate_size
        self.gate_up_proj = Linear(cfg.hidden_size, parts=(("gate_proj", i), ("up_proj", i)), dtype=dtype, device=device)
        self.down_proj = Linear(i, cfg.hidden_size, dtype=dtype, device=device)

    def forward(self, x):
        return self.down_proj(self.ops.swiglu(self.gate_up_proj(x)))


class Block(nn.Module):
    """``h += mixer(norm_in(h)); h += mlp(norm_post(h))``, mixer = GDN or gated attention."""

    def __init__(self, cfg: Qwen35Config, layer_type: str, ops: ElementwiseOps, *, dtype=None, device=None):
        super().__init__()
        kw = dict(dtype=dtype, device=device)
        self.ops = ops
        self.layer_type = layer_type
        self.is_attention = layer_type == FULL_ATTENTION
        if self.is_attention:
            self.self_attn = Attention(cfg, ops, **kw)
        else:
            self.linear_attn = GatedDeltaNet(cfg, ops, **kw)
        self.mlp = MLP(cfg, ops, **kw)
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, **kw)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, **kw)

    def forward(self, h: torch.Tensor, y: torch.Tensor | None, step: Step):
        """Returns ``(h, mlp_out)``: the residual add of ``mlp_out`` is left to the next block, which
        fuses it with its input norm (``y``: the previous block's MLP output, None for the first)."""
        ops, n_in, n_post = self.ops, self.input_layernorm, self.post_attention_layernorm
        if y is None:
            x = ops.rms_norm(h, n_in.weight, n_in.eps)
        else:
            h, x = ops.add_rms_norm(h, y, n_in.weight, n_in.eps)
        if self.is_attention:
            y = self.self_attn(x, step)
        else:
            y = self.linear_attn(x, step)
        h, x = ops.add_rms_norm(h, y, n_post.weight, n_post.eps)
        return h, self.mlp(x)


class Transformer(nn.Module):
    """The Qwen3.5 text model with its caches.

    ``impl`` ("auto" | "triton" | "reference") goes to every hlwq_kernels call.
    """

    def __init__(self, cfg: Qwen35Config, *, dtype: torch.dtype = torch.bfloat16, device=None, impl: str = "auto"):
        super().__init__()
        self.config = cfg
        kw = dict(dtype=dtype, device=device)
        self.embed_tokens = nn.Parameter(torch.empty(cfg.vocab_size, cfg.hidden_size, **kw), requires_grad=False)
        self.ops = ElementwiseOps()
        self.layers = nn.ModuleList(Block(cfg, lt, self.ops, **kw) for lt in cfg.layer_types)
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, **kw)
        self.lm_head = None if cfg.tie_word_embeddings else Linear(cfg.hidden_size, cfg.vocab_size, **kw)
        inv_freq = 1.0 / (cfg.rope_theta ** (torch.arange(0, cfg.rotary_dim, 2, dtype=torch.float32, device=device)
                                             / cfg.rotary_dim))
        self.register_buffer("inv_freq", inv_freq, persistent=False)
        self.max_batch = self.max_seq = 0
        self.impl = impl
        self.set_impl(impl)

    # ---- configuration -----------------------------------------------------------------------
    def set_impl(self, impl: str) -> "Transformer":
        if impl not in IMPL_CHOICES:
            raise ValueError(f"impl must be one of {IMPL_CHOICES}, got {impl!r}")
        self.impl = impl
        for m in self.modules():
            if hasattr(m, "impl") and m is not self:
                m.impl = impl
        return self

    def set_pdl(self, on: bool) -> "Transformer":
        """Launch the HLWQ linears' GEMV kernels with programmatic dependent launch (``dequant_matmul(pdl=)``): each
        starts streaming its weight while the rotation before it runs. The weights must stay fixed while the model
        runs (they do: nothing writes them after loading or quantizing). Ignored off sm_90+ GPUs."""
        if not isinstance(on, bool):
            raise TypeError(f"on must be a bool, got {type(on).__name__}")
        self.pdl = on
        for m in self.modules():
            if isinstance(m, Linear):
                m.pdl = on
        return self

    pdl = False

    def compile_elementwise(self, **compile_kwargs) -> "Transformer":
        """torch.compile the elementwise pieces (norms, gates, RoPE, ...): each becomes ~one fused
        kernel instead of 5-10, which is most of a decode step's launch count. Compilation
        happens on first use, per shape class; do it before capturing a DecodeGraph."""
        self.ops.compile(**{"dynamic": True, **compile_kwargs})
        return self

    @property
    def dtype(self) -> torch.dtype:
        return self.embed_tokens.dtype

    @property
    def device(self) -> torch.device:
        return self.embed_tokens.device

    def setup_cache(self, max_batch: int, max_seq: int, *, kv_cache_cls=None) -> None:
        """Allocate every cache with static shapes (zeros). ``kv_cache_cls(max_batch, max_seq,
        n_kv_heads, head_dim, dtype=, device=)`` builds each attention layer's cache (the seam for
        quantized KV caches); default: ``self.kv_cache_cls`` (``KVCache``, or ``QuantKVCache``
        after ``use_quantized_kv``)."""
        kv_cache_cls = kv_cache_cls or self.kv_cache_cls
        cfg = self.config
        if max_batch < 1 or max_seq < 1:
            raise ValueError(f"max_batch and max_seq must be >= 1, got {max_batch}, {max_seq}")
        kw = dict(dtype=self.dtype, device=self.device)
        for layer in self.layers:
            if layer.is_attention:
                layer.self_attn.cache = kv_cache_cls(max_batch, max_seq, cfg.num_key_value_heads, cfg.head_dim, **kw)
            else:
                layer.linear_attn.cache = GDNState(max_batch, cfg.linear_conv_dim, cfg.linear_conv_kernel_dim,
                                                   cfg.linear_num_value_heads, cfg.linear_key_head_dim,
                                                   cfg.linear_value_head_dim, **kw)
        self.max_batch, self.max_seq = max_batch, max_seq
        self.set_impl(self.impl)  # caches that call hlwq_kernels (quantized KV) take the model's impl

    kv_cache_cls = KVCache

    def use_quantized_kv(self, bits: int | None) -> "Transformer":
        """Make later ``setup_cache`` calls build ``QuantKVCache(bits=bits)`` (None: bf16 again)."""
        if bits is None:
            self.kv_cache_cls = KVCache
        else:
            QuantKVCache(1, 1, 1, 64, dtype=self.dtype, device="cpu", bits=bits)  # validates bits now
            self.kv_cache_cls = functools.partial(QuantKVCache, bits=bits)
        self.free_cache()
        return self

    @property
    def kv_bits(self) -> int | None:
        return getattr(self.kv_cache_cls, "keywords", {}).get("bits")

    def free_cache(self) -> None:
        for layer in self.layers:
            (layer.self_attn if layer.is_attention else layer.linear_attn).cache = None
        self.max_batch = self.max_seq = 0

    # ---- forward -----------------------------------------------------------------------------
    def forward(self, tokens: torch.Tensor, input_pos: torch.Tensor | None = None,
                pad: torch.Tensor | None = None, *, start: bool | None = None) -> torch.Tensor:
        """Logits ``[B, T, V]`` (model dtype) for ``tokens [B, T]`` written at cache slots ``input_pos [T]``.

        ``input_pos`` (int64, on the model's device) must be consecutive slots; one that starts at 0
        begins new sequences (the GDN states restart from zero). ``None``: a stateless forward of
        fresh sequences (positions ``arange(T)``) that neither reads nor writes the caches (e.g.
        evaluation windows; needs no ``setup_cache``).
        ``pad [B]`` (int64): left-padding per row (see the module docstring), None = no padding.
        ``start``: True / False when the caller knows that ``input_pos`` starts new sequences /
        continues the cached ones (saves the check); None: decided from ``input_pos[0] == 0``, with
        one host sync for T > 1 and on the device for T == 1.
        T == 1 is the decode step: static shapes, no host sync (CUDA-graph capturable).
        """
        return self.lm_logits(self.hidden_states(tokens, input_pos, pad, start=start))

    def lm_logits(self, h: torch.Tensor) -> torch.Tensor:
        """Logits of the last layer's output ``h [B, T, hidden]`` (final norm, then lm_head)."""
        h = self.ops.rms_norm(h, self.norm.weight, self.norm.eps)
        return F.linear(h, self.embed_tokens) if self.lm_head is None else self.lm_head(h)

    def hidden_states(self, tokens, input_pos=None, pad=None, *, start: bool | None = None) -> torch.Tensor:
        """The last layer's output before the final norm, ``[B, T, hidden]``."""
        if tokens.ndim != 2:
            raise ValueError(f"tokens must be [B, T], got shape {list(tokens.shape)}")
        b, t = tokens.shape
        cached = input_pos is not None
        if input_pos is None:
            input_pos = torch.arange(t, device=tokens.device)
            fresh = True
        elif input_pos.shape != (t,):
            raise ValueError(f"input_pos must have shape [{t}] (T of tokens), got {list(input_pos.shape)}")
        elif start is not None:
            fresh = bool(start)
        elif t > 1:
            fresh = int(input_pos[0]) == 0  # one host sync per prefill; decode (T=1) decides on the device
        else:
            fresh = None
        if cached and self.max_seq:
            if b > self.max_batch:
                raise ValueError(f"batch {b} > max_batch {self.max_batch} of setup_cache")
            if t > 1 and int(input_pos[-1]) >= self.max_seq:  # (decode: no host sync, no check)
                raise ValueError(f"input_pos reaches {int(input_pos[-1])} >= max_seq {self.max_seq} of setup_cache")
        elif cached:
            raise RuntimeError("forward with input_pos needs caches: call setup_cache(max_batch, max_seq), "
                               "or pass input_pos=None for a stateless forward")
        if pad is not None and pad.shape != (b,):
            raise ValueError(f"pad must have shape [{b}], got {list(pad.shape)}")

        h = F.embedding(tokens, self.embed_tokens)
        pos = input_pos[None, :] if pad is None else (input_pos[None, :] - pad[:, None]).clamp_min(0)
        freqs = pos.float()[..., None] * self.inv_freq                               # [B or 1, T, R/2]
        step = Step(input_pos, pad, fresh, cached, freqs.cos(), freqs.sin())
        y = None
        for layer in self.layers:
            h, y = layer(h, y, step)
        return h + y

    # ---- bookkeeping ---------------------------------------------------------------------------
    def extra_repr(self) -> str:
        c = self.config
        return f"layers={c.num_hidden_layers}, hidden={c.hidden_size}, vocab={c.vocab_size}, impl={self.impl!r}"

"""Token generation: greedy or sampled, stop tokens, streaming, batches of prompts of any lengths.

Prompts are left-padded into one batch (model.py explains why) and prefilled in one call; each
decode step is then one ``model(tokens [B, 1], input_pos [1], pad [B])`` call with static shapes.
On CUDA that step is captured once in a CUDA graph (``DecodeGraph``) and replayed: the ~1000
kernel launches of a 9B-shaped step cost more than the step's own GPU time without it.
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch

from .model import Transformer

__all__ = ["generate", "sample", "DecodeGraph"]


def sample(logits: torch.Tensor, *, temperature: float = 0.0, top_k: int | None = None, top_p: float | None = None,
           generator: torch.Generator | None = None) -> torch.Tensor:
    """Next tokens ``[B]`` from ``logits [B, V]``: argmax when ``temperature <= 0``, else a draw from
    ``softmax(logits / temperature)`` restricted to the ``top_k`` most likely tokens and then to the
    smallest set whose probability reaches ``top_p`` (the most likely token always stays)."""
    if temperature <= 0:
        return logits.argmax(-1)
    logits = logits.float() / temperature
    if top_k is not None and 0 < top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and 0.0 < top_p < 1.0:
        sorted_logits, idx = torch.sort(logits, dim=-1, descending=True)
        probs = sorted_logits.softmax(-1)
        # drop a token when the tokens before it already reach top_p
        drop = (probs.cumsum(-1) - probs) >= top_p
        sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
        logits = torch.full_like(logits, float("-inf")).scatter(-1, idx, sorted_logits)
    probs = logits.softmax(-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


class DecodeGraph:
    """One decode step of ``model`` at batch ``batch``, captured in a CUDA graph.

    Must be built BEFORE the prefill it follows: the warm-up calls write cache slot 0 (the
    prefill then overwrites it). Call with ``tokens [B, 1]``, ``input_pos [1]`` and, when built
    with ``padded=True``, ``pad [B]``; returns the static logits buffer ``[B, 1, V]``
    (overwritten by the next call).
    """

    def __init__(self, model: Transformer, batch: int, *, padded: bool = True):
        dev = model.device
        self.model = model
        self.tokens = torch.zeros(batch, 1, dtype=torch.long, device=dev)
        self.input_pos = torch.zeros(1, dtype=torch.long, device=dev)
        # padded=False captures the step without the padding masks (one batch of equal lengths)
        self.pad = torch.zeros(batch, dtype=torch.long, device=dev) if padded else None
        with torch.no_grad():
            stream = torch.cuda.Stream(dev)
            stream.wait_stream(torch.cuda.current_stream(dev))
            with torch.cuda.stream(stream):  # warm-up: Triton compilation, cuBLAS workspaces
                for _ in range(2):
                    model(self.tokens, self.input_pos, self.pad, start=False)
            torch.cuda.current_stream(dev).wait_stream(stream)
            self.graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(self.graph):  # start=False: a step after a prefill, never at slot 0
                self.logits = model(self.tokens, self.input_pos, self.pad, start=False)

    def __call__(self, tokens: torch.Tensor, input_pos: torch.Tensor, pad: torch.Tensor | None = None) -> torch.Tensor:
        self.tokens.copy_(tokens)
        self.input_pos.copy_(input_pos)
        if self.pad is not None:
            if pad is None:
                self.pad.zero_()
            else:
                self.pad.copy_(pad)
        elif pad is not None:
            raise ValueError("this DecodeGraph was captured with padded=False; pass pad=None")
        self.graph.replay()
        return self.logits


def _decode_graph(model: Transformer, batch: int, padded: bool) -> DecodeGraph:
    """A cached ``DecodeGraph`` for the model's current caches and weights."""
    graphs = model.__dict__.setdefault("_decode_graphs", {})
    caches = tuple(id(l.self_attn.cache if l.is_attention else l.linear_attn.cache) for l in model.layers)
    weights = tuple(id(l.mlp.down_proj.weight) for l in model.layers)
    key = (caches, weights, id(model.ops.rms_norm), model.pdl)
    if graphs.get("key") != key:  # graphs hold cache and weight addresses: stale once those change
        graphs.clear()
        graphs["key"] = key
    if (batch, padded) not in graphs:
        graphs[(batch, padded)] = DecodeGraph(model, batch, padded=padded)
    return graphs[(batch, padded)]


@torch.no_grad()
def generate(model: Transformer, prompts: Sequence[Sequence[int]], *, max_new_tokens: int = 64,
             temperature: float = 0.0, top_k: int | None = None, top_p: float | None = None, seed: int | None = None,
             stop_tokens: Sequence[int] | None = None, callback: Callable[[int, int], None] | None = None,
             cuda_graph: bool | None = None, pad_token: int = 0) -> list[list[int]]:
    """Continue each prompt (a list of token ids) by up to ``max_new_tokens`` tokens.

    Args:
        temperature: 0 = greedy; otherwise sampling, restricted by ``top_k`` / ``top_p``,
            reproducible with ``seed``.
        stop_tokens: a row ends at the first of these it produces (default: the config's
            ``eos_token_id``; ``()`` for none). The stop token is not included in the output.
        callback: ``callback(row, token)`` called for every new token of every unfinished row, as
            soon as it is known (streaming).
        cuda_graph: capture the decode step in a CUDA graph; default: when the model is on CUDA.
    Returns:
        the new tokens of each prompt (without the prompt).
    """
    if not prompts or any(len(p) == 0 for p in prompts):
        raise ValueError("prompts must be a non-empty list of non-empty token lists")
    if max_new_tokens < 0:
        raise ValueError(f"max_new_tokens must be >= 0, got {max_new_tokens}")
    dev = model.device
    b = len(prompts)
    lens = [len(p) for p in prompts]
    plen = max(lens)
    need = plen + max_new_tokens
    if model.max_batch < b or model.max_seq < need:
        model.setup_cache(max(b, model.max_batch), max(-(-need // 256) * 256, model.max_seq))
    stop = set(model.config.eos_token_id if stop_tokens is None else stop_tokens)
    if cuda_graph is None:
        cuda_graph = dev.type == "cuda"
    gen = None
    if temperature > 0:
        gen = torch.Generator(device=dev)
        if seed is None:
            gen.seed()  # a fresh non-deterministic seed, without touching the global RNG
        else:
            gen.manual_seed(seed)

    pad_list = [plen - n for n in lens]
    tokens = torch.tensor([[pad_token] * p + list(map(int, pr)) for p, pr in zip(pad_list, prompts)],
                          dtype=torch.long, device=dev)
    pad = torch.tensor(pad_list, dtype=torch.long, device=dev) if any(pad_list) else None
    # the graph is captured before the prefill (its warm-up writes slot 0)
    step = _decode_graph(model, b, pad is not None) if (cuda_graph and max_new_tokens > 1) else model
    h = model.hidden_states(tokens, torch.arange(plen, device=dev), pad, start=True)
    logits = model.lm_logits(h[:, -1:])[:, -1]  # only the last position: lm_head on 1 token, not plen

    out: list[list[int]] = [[] for _ in range(b)]
    done = [False] * b
    pos = torch.full((1,), plen, dtype=torch.long, device=dev)
    for i in range(max_new_tokens):
        nxt = sample(logits, temperature=temperature, top_k=top_k, top_p=top_p, generator=gen)
        for r, tok in enumerate(nxt.tolist()):
            if done[r]:
                continue
            if tok in stop:
                done[r] = True
                continue
            out[r].append(tok)
            if callback is not None:
                callback(r, tok)
        if all(done) or i == max_new_tokens - 1:
            break
        if step is model:
            logits = model(nxt[:, None], pos, pad, start=False)[:, -1]
        else:
            logits = step(nxt[:, None], pos, pad)[:, -1]
        pos += 1
    return out

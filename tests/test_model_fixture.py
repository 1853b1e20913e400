"""On the trained fixture (tiny-qwen35-pystd): greedy generations agree with transformers' for
32 tokens, and held-out bits per byte agree within 0.5% in bf16."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from hlwq_models.qwen35 import generate, load_model
from test_model_utils import EVAL_BIN, FIXTURE, _one_thread, needs_fixture  # noqa: F401

pytestmark = needs_fixture
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
IMPL = "auto" if torch.cuda.is_available() else "reference"  # CPU: not the Triton interpreter (slow)
PROMPTS = ["import os\n", "def fib(n):\n", "class Foo:\n    def __init__(self", "    for i in range(len("]


@pytest.fixture(scope="module", params=[torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def models(request):
    from transformers import AutoModelForCausalLM

    dtype = request.param
    ours = load_model(FIXTURE, device=DEVICE, dtype=dtype, impl=IMPL)
    hf = AutoModelForCausalLM.from_pretrained(str(FIXTURE), dtype=dtype).to(DEVICE).eval()
    return ours, hf


def test_greedy_generation_matches_transformers(models):
    ours, hf = models
    prompts = [list(p.encode()) for p in PROMPTS]  # byte tokenizer: token id == byte
    got = generate(ours, prompts, max_new_tokens=32, stop_tokens=())
    for p, g in zip(prompts, got):
        with torch.no_grad():
            ref = hf.generate(torch.tensor([p], device=DEVICE), max_new_tokens=32, do_sample=False,
                              eos_token_id=None, pad_token_id=0)[0, len(p):].tolist()
        assert g == ref, f"prompt {bytes(p)!r}: ours {bytes(g)!r} vs transformers {bytes(ref)!r}"


def test_heldout_bits_per_byte_match_transformers(models):
    ours, hf = models
    data = torch.tensor(list(EVAL_BIN.read_bytes()[: 2 * 1024 + 1]))
    nll = {"ours": 0.0, "hf": 0.0}
    with torch.no_grad():
        for i in range(2):
            w = data[i * 1024: i * 1024 + 1025][None].to(DEVICE)
            for name, logits in (("ours", ours(w[:, :-1])), ("hf", hf(w[:, :-1]).logits)):
                nll[name] += F.cross_entropy(logits[0].float(), w[0, 1:], reduction="sum").item()
    bpb = {k: v / math.log(2) / 2048 for k, v in nll.items()}
    tol = 1e-5 if ours.dtype == torch.float32 else 5e-3
    assert abs(bpb["ours"] / bpb["hf"] - 1) <= tol, bpb

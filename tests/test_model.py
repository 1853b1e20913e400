"""Qwen3.5 model vs transformers' Qwen3_5ForCausalLM on tiny random fp32 configs (CPU), plus the
caches, left padding, the HLWQ / KV-cache seams, generation and the CUDA-graph decode step."""

from __future__ import annotations

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from hlwq_models.qwen35 import KVCache, Linear, Qwen35Config, generate, quantize_model_
from hlwq_models.qwen35.generate import DecodeGraph, sample
from hlwq_kernels import HLWQWeight, dequantize_weight
from test_model_utils import TINY, _one_thread, hf_tiny, ours_from_hf, scale_err  # noqa: F401

TOL = 1e-4  # max |ours - transformers| <= TOL * max |transformers logits|


@pytest.fixture(scope="module")
def pair():
    hf = hf_tiny()
    return hf, ours_from_hf(hf)


def _hf_logits(hf, tokens):
    with torch.no_grad():
        return hf(tokens).logits


# ---- config --------------------------------------------------------------------------------------

def test_config_text_and_multimodal_forms():
    from transformers import Qwen3_5TextConfig

    text = Qwen3_5TextConfig(**TINY).to_dict()
    a = Qwen35Config.from_dict(text)
    b = Qwen35Config.from_dict({"model_type": "qwen3_5", "text_config": text, "tie_word_embeddings": True})
    assert a.rotary_dim == 8 and a.layer_types[1] == "full_attention" and not a.tie_word_embeddings
    assert b.tie_word_embeddings and dataclass_eq_except(a, b, "tie_word_embeddings")
    assert a.eos_token_id == (3,)


def dataclass_eq_except(a, b, field):
    import dataclasses
    return dataclasses.replace(a, **{field: getattr(b, field)}) == b


def test_config_errors_name_the_problem():
    from transformers import Qwen3_5TextConfig

    text = Qwen3_5TextConfig(**TINY).to_dict()
    with pytest.raises(ValueError, match="unsupported model_type 'llama'"):
        Qwen35Config.from_dict({**text, "model_type": "llama"})
    with pytest.raises(ValueError, match="hidden_size"):
        Qwen35Config.from_dict({k: v for k, v in text.items() if k != "hidden_size"})
    with pytest.raises(ValueError, match="text_config.head_dim"):
        Qwen35Config.from_dict({"model_type": "qwen3_5",
                                "text_config": {k: v for k, v in text.items() if k != "head_dim"}})
    with pytest.raises(ValueError, match="text_config"):
        Qwen35Config.from_dict({"model_type": "qwen3_5"})
    with pytest.raises(ValueError, match="layer_types"):
        Qwen35Config.from_dict({**text, "layer_types": ["full_attention"]})
    with pytest.raises(ValueError, match="rope_type"):
        Qwen35Config.from_dict({**text, "rope_parameters": {"rope_type": "yarn", "rope_theta": 1e4}})
    with pytest.raises(ValueError, match="num_key_value_heads"):
        Qwen35Config.from_dict({**text, "num_key_value_heads": 3})


def test_config_default_layer_types_every_fourth_is_attention():
    cfg = Qwen35Config()
    assert cfg.layer_types.count("full_attention") == 8 and cfg.layer_types[3] == "full_attention"
    assert cfg.rotary_dim == 64 and cfg.linear_conv_dim == 8192


# ---- logits vs transformers -----------------------------------------------------------------------

@pytest.mark.parametrize("t", [1, 5, 64, 150])
def test_prefill_matches_transformers(pair, t):
    hf, ours = pair
    tokens = torch.randint(0, TINY["vocab_size"], (2, t), generator=torch.Generator().manual_seed(t))
    with torch.no_grad():
        got = ours(tokens)
    assert scale_err(got, _hf_logits(hf, tokens)) <= TOL


def test_cached_decode_and_continuation_match_transformers(pair):
    hf, ours = pair
    t0 = 70  # > one 64-token chunk
    tokens = torch.randint(0, TINY["vocab_size"], (2, t0 + 28), generator=torch.Generator().manual_seed(1))
    ref = _hf_logits(hf, tokens)
    ours.setup_cache(3, 128)
    try:
        with torch.no_grad():
            outs = [ours(tokens[:, :t0], torch.arange(t0))]
            for i in range(3):  # single-token decode steps (recurrent path)
                outs.append(ours(tokens[:, t0 + i: t0 + i + 1], torch.tensor([t0 + i])))
            # multi-token continuations: 5 tokens (recurrent kernel), then 20 (chunked, from a state)
            outs.append(ours(tokens[:, t0 + 3:t0 + 8], torch.arange(t0 + 3, t0 + 8)))
            outs.append(ours(tokens[:, t0 + 8:], torch.arange(t0 + 8, t0 + 28)))
        got = torch.cat(outs, dim=1)
        assert scale_err(got[:, t0:t0 + 3], ref[:, t0:t0 + 3]) <= TOL, "single-token decode"
        assert scale_err(got[:, t0 + 3:t0 + 8], ref[:, t0 + 3:t0 + 8]) <= TOL, "5-token continuation"
        assert scale_err(got[:, t0 + 8:], ref[:, t0 + 8:]) <= TOL, "20-token continuation"
        assert scale_err(got, ref) <= TOL
        # A call at position 0 starts afresh (stale GDN states and KV slots must not leak in).
        with torch.no_grad():
            again = ours(tokens[:, :5], torch.arange(5))
            one = ours(tokens[:1, :1], torch.tensor([0]))
        assert scale_err(again, ref[:, :5]) <= TOL
        assert scale_err(one, ref[:1, :1]) <= TOL
    finally:
        ours.free_cache()


def test_left_padded_batch_matches_separate_sequences(pair):
    hf, ours = pair
    g = torch.Generator().manual_seed(2)
    lens = [67, 9, 1]
    seqs = [torch.randint(0, TINY["vocab_size"], (n + 2,), generator=g) for n in lens]
    plen = max(lens)
    pad = torch.tensor([plen - n for n in lens])
    batch = torch.stack([torch.cat([torch.full((plen - n,), 5), s[:n]]) for n, s in zip(lens, seqs)])
    ours.setup_cache(4, 80)
    try:
        with torch.no_grad():
            pre = ours(batch, torch.arange(plen), pad)
            d1 = ours(torch.stack([s[n:n + 1] for n, s in zip(lens, seqs)]), torch.tensor([plen]), pad)
            d2 = ours(torch.stack([s[n + 1:n + 2] for n, s in zip(lens, seqs)]), torch.tensor([plen + 1]), pad)
        for r, (n, s) in enumerate(zip(lens, seqs)):
            ref = _hf_logits(hf, s[None])[0]
            assert scale_err(pre[r, plen - n:], ref[:n]) <= TOL, f"prefill row {r}"
            assert scale_err(d1[r, 0], ref[n]) <= TOL, f"decode 1 row {r}"
            assert scale_err(d2[r, 0], ref[n + 1]) <= TOL, f"decode 2 row {r}"
    finally:
        ours.free_cache()


def test_tied_embeddings_and_full_rotary_match_transformers():
    hf = hf_tiny(seed=3, tie_word_embeddings=True,
                 rope_parameters={"rope_type": "default", "rope_theta": 1e6, "partial_rotary_factor": 1.0})
    ours = ours_from_hf(hf)
    assert ours.lm_head is None
    tokens = torch.randint(0, TINY["vocab_size"], (1, 20), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        assert scale_err(ours(tokens), _hf_logits(hf, tokens)) <= TOL


def test_forward_argument_errors(pair):
    _, ours = pair
    tok = torch.zeros(1, 4, dtype=torch.long)
    with pytest.raises(ValueError, match="tokens must be"):
        ours(tok[0])
    with pytest.raises(ValueError, match="input_pos must have shape"):
        ours(tok, torch.arange(3))
    with pytest.raises(RuntimeError, match="setup_cache"):
        ours(tok, torch.arange(2, 6))
    with pytest.raises(ValueError, match="impl"):
        ours.set_impl("cuda")


# ---- Triton kernels path (interpreter on CPU) ---------------------------------------------------

def test_triton_path_matches_reference(device):
    """impl="triton" through every GDN op (CPU: Triton interpreter) == impl="reference"."""
    hf = hf_tiny(seed=4, hidden_size=32, intermediate_size=48, num_hidden_layers=2, head_dim=16,
                 linear_key_head_dim=16, linear_value_head_dim=16,
                 layer_types=["linear_attention", "full_attention"])
    ref = ours_from_hf(hf, device=device, impl="reference")
    tri = ours_from_hf(hf, device=device, impl="triton")
    tokens = torch.randint(0, TINY["vocab_size"], (2, 20), generator=torch.Generator().manual_seed(4)).to(device)
    outs = {}
    for name, m in (("ref", ref), ("tri", tri)):
        m.setup_cache(2, 32)
        with torch.no_grad():
            pre = m(tokens[:, :18], torch.arange(18, device=device))
            dec = [m(tokens[:, 18 + i:19 + i], torch.tensor([18 + i], device=device)) for i in range(2)]
        outs[name] = torch.cat([pre, *dec], 1)
    assert scale_err(outs["tri"], outs["ref"]) <= 1e-4


# ---- seams ----------------------------------------------------------------------------------------

def test_quantize_model_swaps_weights_without_touching_layers(pair):
    hf, _ = pair
    ours = ours_from_hf(hf)
    dense = ours_from_hf(hf)
    tokens = torch.randint(0, TINY["vocab_size"], (1, 12), generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        before = ours(tokens)
    quantize_model_(ours, 8, block=32, skip=("lm_head",))  # default: every linear, lm_head too
    lins = {n: m for n, m in ours.named_modules() if isinstance(m, Linear)}
    assert not lins["lm_head"].quantized
    assert all(m.quantized for n, m in lins.items() if n != "lm_head")
    # The seam computes exactly x @ dequantized(W).T: compare with a dense model holding those weights.
    with torch.no_grad():
        for (n, m), (_, d) in zip(ours.named_modules(), dense.named_modules()):
            if isinstance(m, Linear) and m.quantized:
                assert isinstance(m.weight, HLWQWeight)
                d.weight.copy_(dequantize_weight(m.weight, impl="reference"))
        got, want = ours(tokens), dense(tokens)
    assert scale_err(got, want) <= 1e-4
    assert 0 < scale_err(got, before) <= 0.05  # 8-bit codes: close to the bf16 model, not equal


def test_kv_cache_seam(pair):
    _, ours = pair
    calls = []

    class RecordingCache(KVCache):
        def update(self, input_pos, k, v, pad):
            calls.append(("update", k.shape[2]))
            super().update(input_pos, k, v, pad)

        def attend(self, q, k, v, input_pos, pad, *, fresh_prefill, memo=None):
            calls.append(("attend", fresh_prefill))
            return super().attend(q, k, v, input_pos, pad, fresh_prefill=fresh_prefill, memo=memo)

    tokens = torch.randint(0, TINY["vocab_size"], (1, 10), generator=torch.Generator().manual_seed(6))
    with torch.no_grad():
        want = ours(tokens)
        ours.setup_cache(1, 16, kv_cache_cls=RecordingCache)
        try:
            got = torch.cat([ours(tokens[:, :9], torch.arange(9)), ours(tokens[:, 9:], torch.tensor([9]))], 1)
        finally:
            ours.free_cache()
    assert ("attend", True) in calls and ("attend", False) in calls and ("update", 1) in calls
    assert scale_err(got, want) <= TOL


# ---- generation -----------------------------------------------------------------------------------

def test_greedy_generate_matches_transformers(pair):
    hf, ours = pair
    prompts = [[5, 6, 7, 8, 9, 10, 11], [20, 21]]
    outs = generate(ours, prompts, max_new_tokens=12, stop_tokens=())
    for p, o in zip(prompts, outs):
        with torch.no_grad():
            ref = hf.generate(torch.tensor([p]), max_new_tokens=12, do_sample=False, eos_token_id=None,
                              pad_token_id=0)[0, len(p):].tolist()
        assert o == ref


def test_generate_batch_equals_single_and_streams(pair):
    _, ours = pair
    prompts = [[1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12], [40], [50, 51, 52]]
    seen = []
    batch = generate(ours, prompts, max_new_tokens=8, stop_tokens=(), callback=lambda r, t: seen.append((r, t)))
    single = [generate(ours, [p], max_new_tokens=8, stop_tokens=())[0] for p in prompts]
    assert batch == single
    for r in range(3):
        assert [t for rr, t in seen if rr == r] == batch[r]


def test_generate_stops_at_stop_token(pair):
    _, ours = pair
    full = generate(ours, [[9, 8, 7]], max_new_tokens=10, stop_tokens=())[0]
    stop = full[4]
    first = full.index(stop)
    cut = generate(ours, [[9, 8, 7]], max_new_tokens=10, stop_tokens=(stop,))[0]
    assert cut == full[:first]


def test_sampling_seeded_and_limits(pair):
    _, ours = pair
    p = [[3, 1, 4, 1, 5]]
    a = generate(ours, p, max_new_tokens=16, temperature=1.0, seed=7, stop_tokens=())
    b = generate(ours, p, max_new_tokens=16, temperature=1.0, seed=7, stop_tokens=())
    c = generate(ours, p, max_new_tokens=16, temperature=1.0, seed=8, stop_tokens=())
    greedy = generate(ours, p, max_new_tokens=16, stop_tokens=())
    assert a == b and a != c
    assert generate(ours, p, max_new_tokens=16, temperature=1.0, top_k=1, seed=7, stop_tokens=()) == greedy
    assert generate(ours, p, max_new_tokens=16, temperature=1.0, top_p=1e-6, seed=7, stop_tokens=()) == greedy


def test_sample_respects_top_k_and_top_p():
    logits = torch.log(torch.tensor([[0.5, 0.25, 0.15, 0.1]])).repeat(4000, 1)
    gen = torch.Generator().manual_seed(0)
    k2 = sample(logits, temperature=1.0, top_k=2, generator=gen)
    assert set(k2.tolist()) == {0, 1}
    p = sample(logits, temperature=1.0, top_p=0.7, generator=gen)  # 0.5 < 0.7 <= 0.75: tokens {0, 1}
    assert set(p.tolist()) == {0, 1}
    frac0 = (p == 0).float().mean().item()
    assert abs(frac0 - 2 / 3) < 0.05  # renormalised 0.5 / 0.75
    assert torch.equal(sample(logits[:3], temperature=0.0), torch.zeros(3, dtype=torch.long))


class _SyncSpy(TorchDispatchMode):
    """Records ops that make the host wait for the device (.item(), bool(), int() -> _local_scalar_dense;
    data-dependent shapes -> nonzero): a CUDA-graph-capturable step has none."""

    SYNCING = ("aten._local_scalar_dense", "aten.nonzero", "aten.masked_select", "aten.unique")

    def __init__(self):
        super().__init__()
        self.seen = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if str(func.overloadpacket) in self.SYNCING:
            self.seen.append(str(func))
        return func(*args, **(kwargs or {}))


def test_decode_step_has_no_host_syncs(pair):
    """The T=1 step (what DecodeGraph captures) never syncs; a prefill does (so the spy works)."""
    _, ours = pair
    ours.setup_cache(2, 32)
    try:
        pad = torch.tensor([0, 3])
        with torch.no_grad():
            with _SyncSpy() as spy:
                ours(torch.ones(2, 8, dtype=torch.long), torch.arange(8), pad)
            assert spy.seen, "the spy should see the prefill's host sync"
            for start in (False, None):
                with _SyncSpy() as spy:
                    ours(torch.ones(2, 1, dtype=torch.long), torch.tensor([8]), pad, start=start)
                    ours(torch.ones(2, 1, dtype=torch.long), torch.tensor([9]), None, start=start)
                assert spy.seen == [], f"start={start}: host syncs in the decode step: {spy.seen}"
    finally:
        ours.free_cache()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a GPU")
def test_cuda_graph_decode_matches_eager():
    hf = hf_tiny(seed=9)
    model = ours_from_hf(hf, dtype=torch.bfloat16, device="cuda", impl="auto")
    prompts = [[1, 2, 3, 4, 5, 6], [7, 8, 9]]
    model.setup_cache(2, 64)
    graph = DecodeGraph(model, 2, padded=True)
    pad = torch.tensor([0, 3], device="cuda")
    tokens = torch.tensor([[1, 2, 3, 4, 5, 6], [0, 0, 0, 7, 8, 9]], device="cuda")
    with torch.no_grad():
        model(tokens, torch.arange(6, device="cuda"), pad)
        nxt = torch.tensor([[11], [12]], device="cuda")
        got = [graph(nxt, torch.tensor([6 + i], device="cuda"), pad).clone() for i in range(3)]
        model(tokens, torch.arange(6, device="cuda"), pad)
        want = [model(nxt, torch.tensor([6 + i], device="cuda"), pad) for i in range(3)]
    for g, w in zip(got, want):
        assert scale_err(g, w) <= 1e-3
    assert generate(model, prompts, max_new_tokens=10, cuda_graph=True, stop_tokens=()) == \
        generate(model, prompts, max_new_tokens=10, cuda_graph=False, stop_tokens=())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a GPU")
def test_cuda_graph_decode_with_pdl_is_the_same():
    """set_pdl(True) (the HLWQ linears' GEMVs launched with programmatic dependent launch) gives the same logits,
    bit for bit, as without, in the captured decode step; a new graph is captured when the setting changes."""
    hf = hf_tiny(seed=10)
    model = ours_from_hf(hf, dtype=torch.bfloat16, device="cuda", impl="auto")
    quantize_model_(model, 5)
    tokens = torch.tensor([[1, 2, 3, 4, 5, 6], [7, 8, 9, 10, 11, 12]], device="cuda")
    nxt = torch.tensor([[11], [12]], device="cuda")
    runs = {}
    for pdl in (False, True):
        model.set_pdl(pdl)
        model.setup_cache(2, 64)
        graph = DecodeGraph(model, 2, padded=False)
        with torch.no_grad():
            model(tokens, torch.arange(6, device="cuda"))
            runs[pdl] = [graph(nxt, torch.tensor([6 + i], device="cuda")).clone() for i in range(3)]
    assert all(l.pdl for l in model.modules() if isinstance(l, Linear))
    for a, b in zip(runs[False], runs[True]):
        assert torch.equal(a, b)
    with pytest.raises(TypeError, match="bool"):
        model.set_pdl(1)


@pytest.mark.slow
@pytest.mark.skipif(torch.cuda.is_available(), reason="the GPU run exercises compile in perf/test_model.py")
def test_compiled_elementwise_ops_match_eager(pair):
    """compile_elementwise (the decode-speed option) computes the same logits, prefill and decode
    (~1 min of compilation on CPU; deselect with -m 'not slow')."""
    hf, _ = pair
    ours = ours_from_hf(hf).compile_elementwise()
    g = torch.Generator().manual_seed(12)
    tokens = torch.randint(0, TINY["vocab_size"], (2, 70), generator=g)
    ref = _hf_logits(hf, tokens)
    ours.setup_cache(2, 80)
    with torch.no_grad():
        got = torch.cat([ours(tokens[:, :68], torch.arange(68)), ours(tokens[:, 68:69], torch.tensor([68])),
                         ours(tokens[:, 69:], torch.tensor([69]))], 1)
    assert scale_err(got, ref) <= TOL


def test_quantized_kv_cache_in_the_model(device):
    """QuantKVCache behind the model's cache seam (prefill, decode, continuation through
    kv_cache_write_kv_ + kv_quant_attn, Triton on the GPU or the interpreter here) agrees with the
    model-dtype cache to within what 8-bit keys/values cost, and 2 bits cost visibly more."""
    ours = ours_from_hf(hf_tiny(3, head_dim=64), device=device, impl="auto")
    tokens = torch.randint(0, TINY["vocab_size"], (2, 20), generator=torch.Generator().manual_seed(11)).to(device)
    pos = torch.arange(20, device=device)
    with torch.no_grad():
        want = ours(tokens)
        errs = {}
        for bits in (8, 2):
            ours.use_quantized_kv(bits)
            ours.setup_cache(2, 32)
            got = torch.cat([ours(tokens[:, :15], pos[:15]), ours(tokens[:, 15:16], pos[15:16]),
                             ours(tokens[:, 16:], pos[16:])], dim=1)
            errs[bits] = scale_err(got, want)
        ours.use_quantized_kv(None)
    assert errs[8] <= 2e-2, errs
    assert errs[2] > 2 * errs[8], errs

"""Gated DeltaNet kernels at Qwen3.5-9B dims (16 key / 32 value heads, dim 128, conv 8192 x 4), bf16,
against flash-linear-attention 0.6 on the same inputs in the same run (its wheels travel in .whl/;
skipped when fla is not importable) and the plain PyTorch reference.

Targets (issue #6, ANCHORS.md): decode step (conv update + recurrent) <= 10 us per layer at batch 1
(fla's eager fused_recurrent: 91 us); chunked prefill at T=4096 >= 4.8 M tokens/s per layer
(fla 0.6 chunk: 0.85 ms).
"""

import pytest
import torch

from shapes import GDN_CONV, GDN_HEAD_DIM, GDN_K_HEADS, GDN_V_HEADS
from hlwq_kernels import causal_conv1d, chunk_gated_delta_rule, recurrent_gated_delta_rule
from hlwq_kernels.gated_delta_rule import gated_delta_decode_step
from hlwq_kernels.gated_delta_rule.triton import chunk_gated_delta_rule_triton_config

HK, HV, D, W = GDN_K_HEADS, GDN_V_HEADS, GDN_HEAD_DIM, GDN_CONV
CONV_C = (2 * HK + HV) * D  # 8192 qkv channels
STATE_BYTES = HV * D * D * 4  # 2 MiB fp32 per sequence


def _qkv(bsz, t, dtype=torch.bfloat16, seed=0):
    """Model-like inputs: q, k L2-normalised (q scaled by D^-0.5), g <= 0, beta in (0, 1), fp32 state."""
    gen = torch.Generator(device="cuda").manual_seed(seed)
    q = torch.nn.functional.normalize(torch.randn(bsz, t, HK, D, device="cuda", generator=gen), dim=-1) * D**-0.5
    k = torch.nn.functional.normalize(torch.randn(bsz, t, HK, D, device="cuda", generator=gen), dim=-1)
    v = torch.randn(bsz, t, HV, D, device="cuda", generator=gen)
    g = -0.1 * torch.rand(bsz, t, HV, device="cuda", generator=gen)
    beta = torch.rand(bsz, t, HV, device="cuda", generator=gen)
    s0 = torch.randn(bsz, HV, D, D, device="cuda", generator=gen) * 0.01
    return q.to(dtype), k.to(dtype), v.to(dtype), g, beta.to(dtype), s0


def _hf():
    """transformers' pure-PyTorch Qwen3.5 GDN functions (the un-decorated fallbacks, even when fla
    is importable), or a skip."""
    try:
        import transformers.models.qwen3_5.modeling_qwen3_5 as mod
    except Exception as exc:  # noqa: BLE001
        pytest.skip(f"transformers Qwen3.5 not importable: {exc!r}")
    unwrap = lambda f: getattr(f, "__wrapped__", f)  # noqa: E731
    return (unwrap(mod.torch_chunk_gated_delta_rule), unwrap(mod.torch_recurrent_gated_delta_rule),
            unwrap(mod.causal_conv1d_update))


def _fla():
    """fla's ops module, or a skip: it travels as wheels in .whl/ (device.sh installs them)."""
    try:
        import fla.ops.gated_delta_rule as ops
    except Exception as exc:  # noqa: BLE001  (ImportError, or an incompatible transformers/triton)
        pytest.skip(f"flash-linear-attention 0.6 not importable: {exc!r}")
    return ops


# ---- decode ----------------------------------------------------------------------------------

DECODE_IMPLS = ["hlwq-fused-step", "hlwq-conv+recurrent", "hlwq-recurrent", "hlwq-conv", "fla-recurrent",
                "transformers-conv+recurrent", "torch-reference", "torch-reference-step"]


@pytest.mark.benchmark(group="gdn decode step B=1 (conv update + recurrent), bf16")
@pytest.mark.parametrize("impl", DECODE_IMPLS)
def test_gdn_decode_step(benchmark, gpu_bench, impl):
    q, k, v, g, beta, s0 = _qkv(1, 1)
    x = torch.randn(1, 1, CONV_C, device="cuda", dtype=torch.bfloat16)
    wconv = torch.randn(CONV_C, W, device="cuda", dtype=torch.bfloat16) * 0.5
    cs0 = torch.randn(1, CONV_C, W - 1, device="cuda", dtype=torch.bfloat16)
    conv_bytes = 2 * (2 * CONV_C + 2 * CONV_C * (W - 1) + CONV_C * W)  # x, out, state in/out, weight
    rec_bytes = 2 * STATE_BYTES + 2 * (2 * HK * D + 2 * HV * D) + 8 * HV
    nbytes = {"hlwq-conv": conv_bytes, "hlwq-conv+recurrent": conv_bytes + rec_bytes}.get(impl, rec_bytes)
    flops = 6 * HV * D * D

    a_raw = torch.randn(1, 1, HV, device="cuda", dtype=torch.bfloat16)
    b_raw = torch.randn(1, 1, HV, device="cuda", dtype=torch.bfloat16)
    A_log = torch.rand(HV, device="cuda")
    dt_bias = torch.rand(HV, device="cuda")
    step_kw = dict(num_k_heads=HK, head_k_dim=D, conv_state=cs0, state=s0)
    if impl == "hlwq-fused-step":  # conv update + SiLU + q/k l2norm + gates + recurrent, one kernel
        fn = lambda: gated_delta_decode_step(x, wconv, a_raw, b_raw, A_log, dt_bias, **step_kw)  # noqa: E731
        nbytes = conv_bytes + rec_bytes
    elif impl == "torch-reference-step":
        fn = lambda: gated_delta_decode_step(x, wconv, a_raw, b_raw, A_log, dt_bias, impl="reference",  # noqa: E731
                                             **step_kw)
    elif impl == "hlwq-conv":
        fn = lambda: causal_conv1d(x, wconv, initial_state=cs0)  # noqa: E731
    elif impl == "hlwq-recurrent":
        fn = lambda: recurrent_gated_delta_rule(q, k, v, g, beta, initial_state=s0)  # noqa: E731
    elif impl == "hlwq-conv+recurrent":
        def fn():  # q, k, v as views of the conv output, as the model passes them (not l2-normalised here)
            y, _ = causal_conv1d(x, wconv, initial_state=cs0)
            qq, kk, vv = y.split([HK * D, HK * D, HV * D], dim=-1)
            return recurrent_gated_delta_rule(qq.view(1, 1, HK, D), kk.view(1, 1, HK, D), vv.view(1, 1, HV, D),
                                              g, beta, initial_state=s0)
    elif impl == "transformers-conv+recurrent":  # the eager decode path of transformers' Qwen3.5
        _, hf_rec, hf_conv_update = _hf()
        their_cs = torch.cat([torch.zeros_like(cs0[..., :1]), cs0], -1)  # theirs is [B, C, W]
        nbytes = conv_bytes + rec_bytes

        def fn():
            y = hf_conv_update(x.transpose(1, 2), their_cs, wconv, None, "silu").transpose(1, 2)
            qq, kk, vv = y.split([HK * D, HK * D, HV * D], dim=-1)
            # transformers' Qwen3.5 layer repeats q/k to the value heads before its GDN function
            qq, kk = (t_.view(1, 1, HK, D).repeat_interleave(HV // HK, dim=2) for t_ in (qq, kk))
            return hf_rec(qq, kk, vv.view(1, 1, HV, D), g, beta, initial_state=s0,
                          output_final_state=True, use_qk_l2norm_in_kernel=True)
    elif impl == "fla-recurrent":
        fla = _fla()
        fn = lambda: fla.fused_recurrent_gated_delta_rule(  # noqa: E731
            q, k, v, g=g, beta=beta, scale=1.0, initial_state=s0, output_final_state=True)
    else:
        fn = lambda: recurrent_gated_delta_rule(q, k, v, g, beta, initial_state=s0, impl="reference")  # noqa: E731
    gpu_bench(benchmark, fn, graph=True, nbytes=nbytes, flops=flops)


def test_decode_matches_fla():
    """Sanity for the side-by-side: fla's recurrent on the same inputs gives the same answer."""
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    fla = _fla()
    q, k, v, g, beta, s0 = _qkv(1, 3)
    ours = recurrent_gated_delta_rule(q, k, v, g, beta, initial_state=s0)
    o, s = fla.fused_recurrent_gated_delta_rule(q, k, v, g=g, beta=beta, scale=1.0, initial_state=s0,
                                                output_final_state=True)
    torch.testing.assert_close(ours.out.float(), o.float(), atol=2e-2, rtol=2e-2)
    torch.testing.assert_close(ours.final_state, s.float(), atol=1e-3, rtol=1e-3)


# ---- prefill ---------------------------------------------------------------------------------

T_PREFILL = 4096
PREFILL_IMPLS = ["hlwq-chunk", "hlwq-chunk-tf32", "hlwq-chunk-bv64", "hlwq-chunk-w4", "fla-chunk",
                 "hlwq-recurrent", "torch-reference", "transformers-chunk"]


@pytest.mark.benchmark(group="gdn chunked prefill T=4096 B=1, bf16")
@pytest.mark.parametrize("impl", PREFILL_IMPLS)
def test_gdn_prefill(benchmark, gpu_bench, impl):
    q, k, v, g, beta, s0 = _qkv(1, T_PREFILL)
    t = T_PREFILL
    io_bytes = 2 * (2 * t * HK * D + 2 * t * HV * D) + 2 * 4 * t * HV + 2 * STATE_BYTES
    wu_bytes = 2 * 2 * 4 * t * HV * D  # w, u fp32 written then read (hlwq-chunk)
    # per token and value head: kk^T, qk^T (2x 2*64*D), w, u (2x 2*64*D), w S, q S, k^T v (3x 2*D*D), A v (2*64*D)
    flops = t * HV * (6 * 2 * 64 * D + 3 * 2 * D * D)
    kw = {}
    if impl == "hlwq-chunk-tf32":
        kw = dict(mode="tf32")
    elif impl == "hlwq-chunk-bv64":
        kw = dict(scan_bv=64)
    elif impl == "hlwq-chunk-w4":
        kw = dict(scan_warps=4)
    if impl.startswith("hlwq-chunk"):
        fn = lambda: chunk_gated_delta_rule_triton_config(q, k, v, g, beta, s0, 64, **kw)  # noqa: E731
        nbytes = io_bytes + wu_bytes
    elif impl == "fla-chunk":
        fla = _fla()
        fn = lambda: fla.chunk_gated_delta_rule(q, k, v, g, beta, scale=1.0, initial_state=s0,  # noqa: E731
                                                output_final_state=True)
        nbytes = io_bytes
    elif impl == "hlwq-recurrent":
        fn = lambda: recurrent_gated_delta_rule(q, k, v, g, beta, initial_state=s0)  # noqa: E731
        nbytes = io_bytes
    elif impl == "transformers-chunk":
        hf_chunk = _hf()[0]
        fn = lambda: hf_chunk(q.repeat_interleave(HV // HK, dim=2), k.repeat_interleave(HV // HK, dim=2),  # noqa: E731
                              v, g, beta, initial_state=s0, output_final_state=True, use_qk_l2norm_in_kernel=True)
        nbytes = io_bytes
    else:
        fn = lambda: chunk_gated_delta_rule(q, k, v, g, beta, initial_state=s0, impl="reference")  # noqa: E731
        nbytes = io_bytes
    ms = gpu_bench(benchmark, fn, graph=True, nbytes=nbytes, flops=flops)
    benchmark.extra_info["Mtok_per_s"] = round(t / (ms * 1e-3) / 1e6, 2)


def test_prefill_matches_fla():
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    fla = _fla()
    q, k, v, g, beta, s0 = _qkv(1, 1000)
    ours = chunk_gated_delta_rule(q, k, v, g, beta, initial_state=s0)
    o, s = fla.chunk_gated_delta_rule(q, k, v, g, beta, scale=1.0, initial_state=s0, output_final_state=True)
    ref = chunk_gated_delta_rule(q, k, v, g, beta, initial_state=s0, impl="reference")
    err_ours = (ours.out.float() - ref.out.float()).norm() / ref.out.float().norm()
    err_fla = (o.float() - ref.out.float()).norm() / ref.out.float().norm()
    print(f"rel err vs fp32 reference: hlwq {err_ours:.3g}, fla {err_fla:.3g}")
    assert err_ours <= 2 * err_fla + 1e-3

"""gated_delta_rule: chunked == recurrent == the sequential fp32 reference, state carried across
calls, validation; Triton through the interpreter on CPU (tiny dims) and on the GPU (real dims)."""

import pytest
import torch
from hypothesis import example, given
from hypothesis import strategies as st

from hlwq_kernels import GatedDeltaOutput, chunk_gated_delta_rule, recurrent_gated_delta_rule
from hlwq_kernels.gated_delta_rule import recurrent_gated_delta_rule_reference
from helpers import assert_close_verbose

ON_GPU = torch.cuda.is_available()
DTYPES = [torch.float32, torch.bfloat16, torch.float16]
ULP = {torch.float32: 2**-23, torch.bfloat16: 2**-8, torch.float16: 2**-11}
T_VALUES = [1, 5, 63, 64, 65, 150]
# Each (dtype, dims, initial_state) is one kernel compile on the GPU (~1-2 s, the suite has a
# time budget): fewer head dims there; the interpreter compiles nothing.
DIMS = [(16, 16), (24, 40)] if ON_GPU else [(16, 16), (32, 16), (16, 32), (24, 40)]
KERNEL_DTYPES = [torch.float32, torch.bfloat16] if ON_GPU else DTYPES  # fp16 via @example on the GPU
DECODE_DIMS = [(16, 16), (16, 24)] if ON_GPU else [(16, 16), (32, 16), (16, 24)]


def make_inputs(bsz, t, hk, hv, dk, dv, *, dtype=torch.float32, with_state=True, seed=0, device="cpu",
                decay=1.0):
    """Inputs shaped like the model's: q, k L2-normalised, q scaled by dk^-0.5, g <= 0, beta in (0, 1)."""
    gen = torch.Generator().manual_seed(seed)
    q = torch.nn.functional.normalize(torch.randn(bsz, t, hk, dk, generator=gen), dim=-1) * dk**-0.5
    k = torch.nn.functional.normalize(torch.randn(bsz, t, hk, dk, generator=gen), dim=-1)
    v = torch.randn(bsz, t, hv, dv, generator=gen)
    g = -decay * torch.rand(bsz, t, hv, generator=gen)
    beta = torch.rand(bsz, t, hv, generator=gen)
    s0 = torch.randn(bsz, hv, dk, dv, generator=gen) if with_state else None
    q, k, v = (x.to(dtype) for x in (q, k, v))
    out = [q, k, v, g.to(dtype if dtype != torch.float16 else torch.float32), beta.to(dtype), s0]
    return [x.to(device) if x is not None else None for x in out]


def expected(q, k, v, g, beta, s0):
    """The definition: the token loop in fp32, on the (already rounded) inputs, on the CPU."""
    cpu = [x.cpu() if x is not None else None for x in (q, k, v, g, beta, s0)]
    return recurrent_gated_delta_rule_reference(*cpu)


def check(res, ref, dtype, what):
    out, state = res
    ref_out, ref_state = ref
    assert isinstance(res, GatedDeltaOutput)
    assert out.dtype == ref_out.dtype and state.dtype == torch.float32
    # Kernel: fp32 state and accumulation, one rounding of the output to `dtype` (2 ulps: the
    # interpreter truncates instead of rounding), plus the internal error: fp32 reassociation over
    # <= 150 tokens (~1e-6), or for 16-bit inputs the bf16 hi+lo split products (~2^-16 each, seen
    # up to 2^-15 of the state's scale after 150 tokens): 1e-4 of the scale, still 40x below bf16.
    internal = 2e-5 if dtype == torch.float32 else 1e-4
    scale = ref_out.float().abs().amax().item() + 1e-6
    assert_close_verbose(out, ref_out, atol=internal * scale, rtol=2 * ULP[dtype] if dtype != torch.float32 else 1e-5,
                         what=f"{what} out")
    sscale = ref_state.abs().amax().item() + 1e-6
    assert_close_verbose(state, ref_state, atol=internal * sscale, rtol=internal / 2, what=f"{what} final_state")


# ---- references ------------------------------------------------------------------------------

@given(t=st.sampled_from(T_VALUES), rep=st.sampled_from([1, 2]), with_state=st.booleans(),
       chunk=st.sampled_from([7, 16, 64]), seed=st.integers(0, 2**20))
@example(t=150, rep=2, with_state=True, chunk=64, seed=1)
def test_reference_chunk_equals_recurrent(t, rep, with_state, chunk, seed):
    args = make_inputs(2, t, 2, 2 * rep, 16, 8, with_state=with_state, seed=seed)
    ref = recurrent_gated_delta_rule(*args[:5], initial_state=args[5], impl="reference")
    res = chunk_gated_delta_rule(*args[:5], initial_state=args[5], chunk_size=chunk, impl="reference")
    check(res, ref, torch.float32, "chunk reference")


def test_reference_matches_transformers():
    """Same maths as transformers' Qwen3.5 torch fallbacks (which scale q by dk^-0.5 inside)."""
    mod = pytest.importorskip("transformers.models.qwen3_5.modeling_qwen3_5")
    q, k, v, g, beta, s0 = make_inputs(1, 70, 2, 4, 16, 16, seed=3)
    ours = recurrent_gated_delta_rule(q, k, v, g, beta, initial_state=s0, impl="reference")
    # transformers <= 5.17's fallbacks take as many key as value heads (its model repeats q, k first)
    rep = v.shape[2] // q.shape[2]
    qe, ke = q.repeat_interleave(rep, dim=2), k.repeat_interleave(rep, dim=2)
    for fn in (mod.torch_chunk_gated_delta_rule, mod.torch_recurrent_gated_delta_rule):
        fn = getattr(fn, "__wrapped__", fn)
        out, state = fn(qe * 16**0.5, ke, v, g, beta, initial_state=s0, output_final_state=True)
        assert_close_verbose(ours.out, out, atol=1e-5, what=fn.__name__)
        assert_close_verbose(ours.final_state, state, atol=1e-5, what=fn.__name__)


def test_single_token_by_hand():
    """T=1, one head, Dk=Dv=1 worked out: S=2, g=log .5, beta=.5, k=1, v=3, q=2
    -> S=1; u=.5*(3-1)=1; S=2; o=4."""
    one = torch.ones(1, 1, 1, 1)
    res = recurrent_gated_delta_rule(2 * one, one, 3 * one, torch.full((1, 1, 1), 0.5).log(),
                                     torch.full((1, 1, 1), 0.5), initial_state=2 * one, impl="reference")
    assert res.out.item() == pytest.approx(4.0) and res.final_state.item() == pytest.approx(2.0)


# ---- Triton (interpreter on CPU, compiled on the GPU) ------------------------------------------

@given(t=st.sampled_from(T_VALUES), rep=st.sampled_from([1, 2]), with_state=st.booleans(),
       dims=st.sampled_from(DIMS), dtype=st.sampled_from(KERNEL_DTYPES),
       seed=st.integers(0, 2**20))
@example(t=150, rep=2, with_state=True, dims=(16, 16), dtype=torch.float32, seed=0)
@example(t=65, rep=1, with_state=False, dims=(16, 16), dtype=torch.bfloat16, seed=1)
@example(t=63, rep=2, with_state=True, dims=(24, 40), dtype=torch.float16, seed=2)
def test_chunk_triton_matches_reference(device, t, rep, with_state, dims, dtype, seed):
    args = make_inputs(1, t, 1, rep, *dims, dtype=dtype, with_state=with_state, seed=seed, device=device)
    res = chunk_gated_delta_rule(*args[:5], initial_state=args[5], impl="triton")
    check(res, expected(*args), dtype, "chunk triton")


@pytest.mark.parametrize("chunk_size", [16, 32])
@pytest.mark.parametrize("dtype", [torch.bfloat16] if ON_GPU else [torch.float32, torch.bfloat16])
def test_chunk_triton_smaller_chunks(device, chunk_size, dtype):
    """chunk_size 16 (no block series: one diagonal block) and 32 (two blocks)."""
    args = make_inputs(1, 70, 1, 2, 16, 16, dtype=dtype, seed=chunk_size, device=device)
    res = chunk_gated_delta_rule(*args[:5], initial_state=args[5], chunk_size=chunk_size, impl="triton")
    check(res, expected(*args), dtype, f"chunk{chunk_size} triton")


@given(t=st.sampled_from([1, 2, 5, 17]), rep=st.sampled_from([1, 2]), with_state=st.booleans(),
       dims=st.sampled_from(DIMS), dtype=st.sampled_from(KERNEL_DTYPES),
       seed=st.integers(0, 2**20))
@example(t=1, rep=2, with_state=True, dims=(24, 40), dtype=torch.bfloat16, seed=0)
@example(t=5, rep=1, with_state=True, dims=(16, 16), dtype=torch.float16, seed=1)
def test_recurrent_triton_matches_reference(device, t, rep, with_state, dims, dtype, seed):
    args = make_inputs(1, t, 1, rep, *dims, dtype=dtype, with_state=with_state, seed=seed, device=device)
    res = recurrent_gated_delta_rule(*args[:5], initial_state=args[5], impl="triton")
    check(res, expected(*args), dtype, "recurrent triton")


@pytest.mark.parametrize("split, second", [(1, "chunk"), (40, "chunk"), (64, "recurrent"), (69, "recurrent")])
def test_state_carried_across_calls(device, split, second):
    """One call over T tokens == two calls with the state carried (the second chunked or recurrent)."""
    t = 70
    q, k, v, g, beta, s0 = make_inputs(1, t, 1, 2, 16, 16, seed=split, device=device)
    whole = chunk_gated_delta_rule(q, k, v, g, beta, initial_state=s0, impl="triton")
    a, b = slice(0, split), slice(split, t)
    first = chunk_gated_delta_rule(q[:, a], k[:, a], v[:, a], g[:, a], beta[:, a], initial_state=s0, impl="triton")
    fn = chunk_gated_delta_rule if second == "chunk" else recurrent_gated_delta_rule
    rest = fn(q[:, b], k[:, b], v[:, b], g[:, b], beta[:, b], initial_state=first.final_state, impl="triton")
    out = torch.cat([first.out, rest.out], 1)
    assert_close_verbose(out, whole.out, atol=2e-5 * whole.out.abs().max().item(), what="out")
    assert_close_verbose(rest.final_state, whole.final_state, atol=2e-5 * whole.final_state.abs().max().item(),
                         what="state")


def test_decode_steps_after_prefill(device):
    """Chunked prefill of 65 tokens then 3 recurrent single-token steps == one recurrent pass."""
    q, k, v, g, beta, s0 = make_inputs(2, 68, 2, 4, 16, 16, with_state=False, seed=7, device=device)
    pre = chunk_gated_delta_rule(q[:, :65], k[:, :65], v[:, :65], g[:, :65], beta[:, :65], impl="triton")
    state, outs = pre.final_state, [pre.out]
    for i in range(65, 68):
        sl = slice(i, i + 1)
        step = recurrent_gated_delta_rule(q[:, sl], k[:, sl], v[:, sl], g[:, sl], beta[:, sl], initial_state=state,
                                          impl="triton")
        outs.append(step.out)
        state = step.final_state
    ref = expected(q, k, v, g, beta, None)
    check(GatedDeltaOutput(torch.cat(outs, 1), state), ref, torch.float32, "prefill+decode")


def test_strided_inputs(device):
    """q, k, v as views into one packed [B, T, C] projection (what the model passes), fp32 g."""
    bsz, t, hk, hv, d = 1, 33, 2, 4, 16
    gen = torch.Generator().manual_seed(5)
    packed = torch.randn(bsz, t, (2 * hk + hv) * d, generator=gen)
    q, k, v = packed.split([hk * d, hk * d, hv * d], dim=-1)
    q = torch.nn.functional.normalize(q.reshape(bsz, t, hk, d), dim=-1) * d**-0.5
    k = torch.nn.functional.normalize(k.reshape(bsz, t, hk, d), dim=-1)
    v = v.reshape(bsz, t, hv, d)
    g = -torch.rand(bsz, t, hv, generator=gen)
    beta = torch.rand(bsz, t, 2 * hv, generator=gen)[..., ::2]  # non-contiguous
    args = [x.to(device) for x in (q, k, v, g, beta)]
    ref = expected(*args, None)
    check(chunk_gated_delta_rule(*args, impl="triton"), ref, torch.float32, "chunk strided")
    check(recurrent_gated_delta_rule(*args, impl="triton"), ref, torch.float32, "recurrent strided")


def test_inputs_not_mutated(device):
    args = make_inputs(1, 20, 1, 2, 16, 16, seed=9, device=device)
    before = [x.clone() for x in args]
    chunk_gated_delta_rule(*args[:5], initial_state=args[5], impl="triton")
    recurrent_gated_delta_rule(*args[:5], initial_state=args[5], impl="triton")
    for a, b in zip(args, before):
        assert torch.equal(a, b)


# ---- validation ------------------------------------------------------------------------------

def test_validation_errors(device):
    q, k, v, g, beta, s0 = make_inputs(1, 4, 2, 4, 16, 8, device=device)
    fn = chunk_gated_delta_rule
    with pytest.raises(ValueError, match=r"k must have shape \[1, 4, 2, 16\]"):
        fn(q, k[:, :3], v, g, beta)
    with pytest.raises(ValueError, match=r"Hv=3\) must be a positive multiple of q.shape\[2\] \(Hk=2\)"):
        fn(q, k, v[:, :, :3], g[..., :3], beta[..., :3])
    with pytest.raises(ValueError, match=r"g must have shape \[1, 4, 4\]"):
        fn(q, k, v, g[..., :2], beta)
    with pytest.raises(TypeError, match=r"initial_state.dtype must be one of \(float32\), got bfloat16"):
        fn(q, k, v, g, beta, initial_state=s0.bfloat16())
    with pytest.raises(ValueError, match=r"initial_state must have shape \[1, 4, 16, 8\]"):
        recurrent_gated_delta_rule(q, k, v, g, beta, initial_state=s0[:, :2])
    with pytest.raises(TypeError, match=r"v.dtype must be one of \(float32\), got bfloat16"):
        fn(q, k, v.bfloat16(), g, beta)
    with pytest.raises(ValueError, match=r"chunk_size must be one of \(16, 32, 64\) for impl='triton', got 7"):
        fn(q, k, v, g, beta, chunk_size=7, impl="triton")
    with pytest.raises(ValueError, match="impl must be one of"):
        fn(q, k, v, g, beta, impl="fast")


# ---- GPU, real dims --------------------------------------------------------------------------

@pytest.mark.skipif(not ON_GPU, reason="needs CUDA")
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("t", [1, 200, 1000])
def test_gpu_qwen35_dims(dtype, t):
    """16 key / 32 value heads, dim 128: Triton (chunked and, for short T, recurrent) vs the fp32
    reference (on the CPU). The state is an fp32 sum over up to 1000 tokens: 1e-4 of the scale
    (2e-4 with the split products of 16-bit inputs; bf16 itself is 4e-3)."""
    args = make_inputs(1, t, 16, 32, 128, 128, dtype=dtype, seed=t, device="cuda", decay=0.1)
    # Reference on the CPU: immune to a global torch.set_float32_matmul_precision("high") (TF32).
    ref_out, ref_state = chunk_gated_delta_rule(*[x.cpu() for x in args[:5]], initial_state=args[5].cpu(),
                                                impl="reference")
    fns = [chunk_gated_delta_rule] + ([recurrent_gated_delta_rule] if t <= 200 else [])
    for fn in fns:
        out, state = fn(*args[:5], initial_state=args[5], impl="triton")
        internal = 1e-4 if dtype == torch.float32 else 2e-4  # 16-bit: bf16 hi+lo split products
        scale = ref_out.float().abs().amax().item()
        assert_close_verbose(out, ref_out, atol=internal * scale, rtol=2 * ULP[dtype] if dtype != torch.float32 else 1e-4,
                             what=f"{fn.__name__} out")
        assert_close_verbose(state, ref_state, atol=internal * ref_state.abs().amax().item(), rtol=internal,
                             what=f"{fn.__name__} state")


# ---- fused decode step -----------------------------------------------------------------------

def make_decode(bsz, hk, hv, dk, dv, w, dtype, with_conv_state, with_state, seed, device="cpu"):
    gen = torch.Generator().manual_seed(seed)
    c = 2 * hk * dk + hv * dv
    r = lambda *s: torch.randn(*s, generator=gen)  # noqa: E731
    args = [r(bsz, 1, c).to(dtype), (r(c, w) / w**0.5).to(dtype), r(bsz, 1, hv).to(dtype), r(bsz, 1, hv).to(dtype),
            r(hv) * 0.5, r(hv), r(bsz, c, w - 1).to(dtype) if with_conv_state else None,
            r(bsz, hv, dk, dv) if with_state else None]
    return [x.to(device) if x is not None else None for x in args]


@given(heads=st.sampled_from([(1, 1), (1, 2), (2, 4)]), dims=st.sampled_from(DECODE_DIMS),
       w=st.sampled_from([4] if ON_GPU else [2, 4]), dtype=st.sampled_from(KERNEL_DTYPES),
       with_conv_state=st.booleans(),
       with_state=st.booleans(), seed=st.integers(0, 2**20))
@example(heads=(2, 4), dims=(16, 16), w=4, dtype=torch.bfloat16, with_conv_state=True, with_state=True, seed=0)
def test_decode_step_triton_matches_reference(device, heads, dims, w, dtype, with_conv_state, with_state, seed):
    from hlwq_kernels.gated_delta_rule import gated_delta_decode_step
    hk, hv = heads
    dk, dv = dims
    args = make_decode(2, hk, hv, dk, dv, w, dtype, with_conv_state, with_state, seed, device)
    kw = dict(num_k_heads=hk, head_k_dim=dk, conv_state=args[6], state=args[7])
    res = gated_delta_decode_step(*args[:6], impl="triton", **kw)
    ref = gated_delta_decode_step(*[x.cpu() for x in args[:6]], impl="reference",
                                  **{k: (v.cpu() if isinstance(v, torch.Tensor) else v) for k, v in kw.items()})
    assert torch.equal(res.final_conv_state.cpu(), ref.final_conv_state)
    # The conv output is rounded to `dtype` before the L2 norm (as the unfused path does); the
    # interpreter truncates where torch rounds, so allow one `dtype` ulp of q, k, v to propagate.
    tol = 4 * ULP[dtype] if dtype != torch.float32 else 2e-6
    for name, got, want in (("out", res.out, ref.out), ("state", res.final_state, ref.final_state)):
        scale = want.float().abs().amax().item() + 1e-6
        assert_close_verbose(got, want, atol=tol * scale, rtol=tol, what=f"decode {name}")


def test_decode_step_reference_matches_transformers():
    """The fused step's reference == transformers' Qwen3.5 decode path (causal_conv1d_update with a
    [B, C, W] state, l2norm inside the recurrent step, its gate formulas), fp32."""
    mod = pytest.importorskip("transformers.models.qwen3_5.modeling_qwen3_5")
    from hlwq_kernels.gated_delta_rule import gated_delta_decode_step
    hk, hv, dk, dv, w = 2, 4, 16, 16, 4
    qkv, cw, a, b, A_log, dt_bias, cs, s0 = make_decode(1, hk, hv, dk, dv, w, torch.float32, True, True, 11)
    ours = gated_delta_decode_step(qkv, cw, a, b, A_log, dt_bias, num_k_heads=hk, head_k_dim=dk, conv_state=cs,
                                   state=s0, impl="reference")
    upd = getattr(mod.causal_conv1d_update, "__wrapped__", mod.causal_conv1d_update)
    rec = getattr(mod.torch_recurrent_gated_delta_rule, "__wrapped__", mod.torch_recurrent_gated_delta_rule)
    their_cs = torch.cat([torch.zeros(1, cs.shape[1], 1), cs], -1)
    y = upd(qkv.transpose(1, 2), their_cs, cw, None, "silu").transpose(1, 2)
    q, k, v = y.split([hk * dk, hk * dk, hv * dv], -1)
    g = -A_log.exp() * torch.nn.functional.softplus(a + dt_bias)
    rep = hv // hk  # transformers <= 5.17's fallback takes as many key as value heads
    out, state = rec(q.reshape(1, 1, hk, dk).repeat_interleave(rep, 2), k.reshape(1, 1, hk, dk).repeat_interleave(rep, 2),
                     v.reshape(1, 1, hv, dv), g, b.sigmoid(),
                     initial_state=s0, output_final_state=True, use_qk_l2norm_in_kernel=True)
    assert_close_verbose(ours.out, out, atol=1e-5, what="out")
    assert_close_verbose(ours.final_state, state, atol=1e-5, what="state")
    assert torch.equal(ours.final_conv_state, their_cs[..., 1:])


def test_decode_step_validation():
    from hlwq_kernels.gated_delta_rule import gated_delta_decode_step
    qkv, cw, a, b, A_log, dt_bias, cs, s0 = make_decode(1, 2, 4, 16, 16, 4, torch.float32, True, True, 0)
    kw = dict(num_k_heads=2, head_k_dim=16)
    with pytest.raises(ValueError, match=r"qkv must have shape \[B, 1, C\] \(one token\)"):
        gated_delta_decode_step(qkv.expand(1, 2, -1), cw, a, b, A_log, dt_bias, **kw)
    with pytest.raises(ValueError, match=r"C=128\) must be 2 \* num_k_heads \* head_k_dim"):
        gated_delta_decode_step(qkv, cw, a, b, A_log, dt_bias, num_k_heads=2, head_k_dim=40)
    with pytest.raises(ValueError, match=r"conv_state must have shape \[1, 128, 3\]"):
        gated_delta_decode_step(qkv, cw, a, b, A_log, dt_bias, conv_state=cs[..., :2], **kw)
    with pytest.raises(TypeError, match=r"state.dtype must be one of \(float32\)"):
        gated_delta_decode_step(qkv, cw, a, b, A_log, dt_bias, state=s0.double(), **kw)


@pytest.mark.skipif(not ON_GPU, reason="needs CUDA")
def test_gpu_decode_step_qwen35_dims():
    from hlwq_kernels.gated_delta_rule import gated_delta_decode_step
    args = make_decode(1, 16, 32, 128, 128, 4, torch.bfloat16, True, True, 5, "cuda")
    kw = dict(num_k_heads=16, head_k_dim=128, conv_state=args[6], state=args[7])
    res = gated_delta_decode_step(*args[:6], impl="triton", **kw)
    ref = gated_delta_decode_step(*[x.cpu() for x in args[:6]], impl="reference",
                                  **{k: (v.cpu() if isinstance(v, torch.Tensor) else v) for k, v in kw.items()})
    assert torch.equal(res.final_conv_state.cpu(), ref.final_conv_state)
    for got, want in ((res.out, ref.out), (res.final_state, ref.final_state)):
        scale = want.float().abs().amax().item()
        assert_close_verbose(got, want, atol=4 * ULP[torch.bfloat16] * scale, rtol=4 * ULP[torch.bfloat16])


def test_custom_ops_schema_and_fake(device):
    """The Triton launchers go through torch.library ops (torch.compile / CUDA graphs): schema and
    fake (meta) implementations agree with the real ones."""
    checks = ["test_schema", "test_faketensor"]
    q, k, v, g, beta, s0 = make_inputs(1, 5, 1, 2, 16, 16, seed=1, device=device)
    torch.library.opcheck(torch.ops.hlwq.recurrent_gated_delta_rule, (q, k, v, g, beta, s0), test_utils=checks)
    torch.library.opcheck(torch.ops.hlwq.chunk_gated_delta_rule, (q, k, v, g, beta, None, 64), test_utils=checks)
    args = make_decode(1, 1, 2, 16, 16, 4, torch.float32, True, True, 2, device)
    torch.library.opcheck(torch.ops.hlwq.gated_delta_decode_step, (*args, 1, 16), test_utils=checks)

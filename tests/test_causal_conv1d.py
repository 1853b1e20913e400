"""causal_conv1d: Triton vs reference, prefill == stepwise decode updates, state semantics,
agreement with transformers' Qwen3.5 conv functions, validation."""

import pytest
import torch
import torch.nn.functional as F
from hypothesis import example, given
from hypothesis import strategies as st

from hlwq_kernels import CausalConvOutput, causal_conv1d
from helpers import assert_close_verbose

DTYPES = [torch.float32, torch.bfloat16, torch.float16]
ULP = {torch.float32: 2**-23, torch.bfloat16: 2**-8, torch.float16: 2**-11}
# Each (dtype, W, state, activation, tile) is one kernel compile on the GPU (the suite has a time
# budget): fewer combinations there; the interpreter compiles nothing.
ON_GPU = torch.cuda.is_available()
TAPS = [4] if ON_GPU else [2, 3, 4]  # W=3 via @example on the GPU
KERNEL_DTYPES = [torch.float32, torch.bfloat16] if ON_GPU else DTYPES  # fp16 via @example


def make(bsz, t, c, w, dtype, with_state, seed, device="cpu"):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(bsz, t, c, generator=gen).to(dtype).to(device)
    weight = (torch.randn(c, w, generator=gen) / w**0.5).to(dtype).to(device)
    s0 = torch.randn(bsz, c, w - 1, generator=gen).to(dtype).to(device) if with_state else None
    return x, weight, s0


def by_definition(x, weight, s0, activation):
    """out[b, t, c] = act(sum_j weight[c, j] * xpad[b, t + j, c]) in float64, as a loop over taps."""
    bsz, t, c = x.shape
    w = weight.shape[1]
    state = torch.zeros(bsz, w - 1, c, dtype=torch.float64) if s0 is None else s0.cpu().double().transpose(1, 2)
    xpad = torch.cat([state, x.cpu().double()], 1)
    out = sum(weight.cpu().double()[:, j] * xpad[:, j:j + t] for j in range(w))
    if activation == "silu":
        out = F.silu(out)
    return out, xpad[:, xpad.shape[1] - (w - 1):].transpose(1, 2)


def check(res, x, weight, s0, activation, what):
    assert isinstance(res, CausalConvOutput)
    out_ref, state_ref = by_definition(x, weight, s0, activation)
    assert res.out.dtype == x.dtype and res.final_state.dtype == x.dtype
    # fp32 accumulation over W taps then one rounding to x.dtype (2 ulps: the interpreter truncates).
    assert_close_verbose(res.out, out_ref, atol=1e-5, rtol=2 * ULP[x.dtype] + 1e-6, what=f"{what} out")
    assert_close_verbose(res.final_state, state_ref.to(x.dtype), atol=0, what=f"{what} final_state")


@given(t=st.sampled_from([1, 2, 3, 5, 33, 150]), c=st.sampled_from([8, 40, 300]), w=st.sampled_from(TAPS),
       dtype=st.sampled_from(KERNEL_DTYPES), with_state=st.booleans(), activation=st.sampled_from(["silu", None]),
       bsz=st.sampled_from([1, 2]), seed=st.integers(0, 2**20))
@example(t=1, c=300, w=4, dtype=torch.bfloat16, with_state=True, activation="silu", bsz=2, seed=0)
@example(t=2, c=40, w=4, dtype=torch.float32, with_state=True, activation=None, bsz=1, seed=1)
@example(t=150, c=8, w=4, dtype=torch.float16, with_state=False, activation="silu", bsz=2, seed=2)
@example(t=33, c=40, w=3, dtype=torch.bfloat16, with_state=True, activation="silu", bsz=1, seed=3)
def test_conv_matches_definition(device, t, c, w, dtype, with_state, activation, bsz, seed):
    x, weight, s0 = make(bsz, t, c, w, dtype, with_state, seed, device)
    for impl in ("reference", "triton"):
        res = causal_conv1d(x, weight, initial_state=s0, activation=activation, impl=impl)
        check(res, x, weight, s0, activation, impl)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_prefill_equals_stepwise_updates(device, dtype):
    """One call over T tokens == T single-token decode updates carrying the state (exact: same
    fp32 arithmetic per output)."""
    x, weight, s0 = make(2, 9, 40, 4, dtype, True, 3, device)
    whole = causal_conv1d(x, weight, initial_state=s0, impl="triton")
    state, outs = s0, []
    for i in range(x.shape[1]):
        step = causal_conv1d(x[:, i:i + 1], weight, initial_state=state, impl="triton")
        outs.append(step.out)
        state = step.final_state
    assert_close_verbose(torch.cat(outs, 1), whole.out, atol=0, what="stepwise out")
    assert torch.equal(state, whole.final_state)


def test_two_calls_equal_one(device):
    x, weight, s0 = make(1, 40, 24, 4, torch.float32, False, 4, device)
    whole = causal_conv1d(x, weight, impl="triton")
    a = causal_conv1d(x[:, :2], weight, impl="triton")  # shorter than W-1: state mixes zeros and x
    b = causal_conv1d(x[:, 2:], weight, initial_state=a.final_state, impl="triton")
    assert_close_verbose(torch.cat([a.out, b.out], 1), whole.out, atol=1e-6, what="two calls")
    assert torch.equal(b.final_state, whole.final_state)


def test_strided_input(device):
    """x as a non-contiguous view (a column slice of a wider projection)."""
    gen = torch.Generator().manual_seed(6)
    wide = torch.randn(2, 17, 96, generator=gen).to(device)
    x = wide[..., 16:80]
    weight = torch.randn(64, 4, generator=gen).to(device)
    check(causal_conv1d(x, weight, impl="triton"), x, weight, None, "silu", "strided")


def test_matches_transformers():
    """transformers' causal_conv1d_fn (prefill) and causal_conv1d_update (its state is [B, C, W]:
    ours is its last W-1 columns)."""
    mod = pytest.importorskip("transformers.models.qwen3_5.modeling_qwen3_5")
    x, weight, _ = make(2, 7, 16, 4, torch.float32, False, 5)
    ours = causal_conv1d(x, weight, impl="reference")
    fn = getattr(mod.causal_conv1d_fn, "__wrapped__", mod.causal_conv1d_fn)
    theirs = fn(x.transpose(1, 2), weight, None, activation="silu").transpose(1, 2)
    assert_close_verbose(ours.out, theirs, atol=1e-6, what="prefill")
    upd = getattr(mod.causal_conv1d_update, "__wrapped__", mod.causal_conv1d_update)
    their_state = torch.cat([x.transpose(1, 2)[..., -4:-3], ours.final_state], -1).clone()
    x1 = torch.randn(2, 1, 16)
    theirs = upd(x1.transpose(1, 2), their_state, weight, None, "silu").transpose(1, 2)
    step = causal_conv1d(x1, weight, initial_state=ours.final_state, impl="reference")
    assert_close_verbose(step.out, theirs, atol=1e-6, what="update")
    assert torch.equal(step.final_state, their_state[..., 1:])


def test_validation_errors():
    x, weight, s0 = make(2, 5, 8, 4, torch.float32, True, 0)
    with pytest.raises(ValueError, match=r"weight must have shape \[8, W\] with W >= 2"):
        causal_conv1d(x, weight[:4])
    with pytest.raises(ValueError, match=r"initial_state must have shape \[2, 8, 3\], got \[2, 8, 4\]"):
        causal_conv1d(x, weight, initial_state=torch.zeros(2, 8, 4))
    with pytest.raises(ValueError, match=r"activation must be one of \('silu', None\), got 'gelu'"):
        causal_conv1d(x, weight, activation="gelu")
    with pytest.raises(ValueError, match=r"x must have 3 dimensions"):
        causal_conv1d(x[0], weight)
    with pytest.raises(TypeError, match=r"x.dtype must be one of"):
        causal_conv1d(x.long(), weight)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("t", [1, 4096])
def test_gpu_qwen35_dims(t):
    x, weight, s0 = make(1, t, 8192, 4, torch.bfloat16, True, t, "cuda")
    check(causal_conv1d(x, weight, initial_state=s0, impl="triton"), x, weight, s0, "silu", "qwen35")


def test_custom_op_schema_and_fake(device):
    x, weight, s0 = make(1, 5, 8, 4, torch.float32, True, 0, device)
    torch.library.opcheck(torch.ops.hlwq.causal_conv1d, (x, weight, s0, "silu"),
                          test_utils=["test_schema", "test_faketensor"])

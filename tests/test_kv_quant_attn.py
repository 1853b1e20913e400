"""quantize_kv / kv_cache_write_ / kv_cache_write_kv_ / kv_quant_attn: Triton (GPU or interpreter) vs the references.

Interpreter budget: every attention launch costs ~0.3-1 s on the 2-core CPU, so CPU shapes stay
at D = 64 (D = 128/256 only on the GPU) and contexts of at most a few hundred tokens.
"""

import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import assume, example, given, settings
from hypothesis import strategies as st

from hlwq_kernels import dequantize_kv, kv_cache_write_, kv_cache_write_kv_, kv_quant_attn, quantize_kv
from hlwq_kernels.kv_quant_attn import kv_quant_attn_reference, kv_quant_attn_triton_splits
from hlwq_kernels.kv_quant_attn.triton import DEFAULT_VARIANT, VARIANTS, plan
from hlwq_kernels.quantize_kv import default_codebook, quantize_kv_reference
from hlwq_kernels.pack_bits import unpack_bits
from helpers import assert_close_verbose, rel_err

ON_GPU = torch.cuda.is_available()
DEV = torch.device("cuda" if ON_GPU else "cpu")
DIMS = [64, 128, 256] if ON_GPU else [64]
ATTN_BITS = [2, 3, 4, 8]
# ANCHORS.md: optimal Lloyd-Max MSE for N(0, 1)
LLOYD_MSE = {2: 0.117482, 3: 0.0345478, 4: 0.00950101, 8: 4.11851e-05}
# Hypothesis runs fewer examples than the "gpu" profile (60): each new constexpr combination
# (bits, D, tile, decode, causal, ...) is a 1-4 s compile, and the whole suite has 330 s on the H100.
FEW = settings(max_examples=min(settings.default.max_examples, 14))


def _gen(seed):
    return torch.Generator().manual_seed(seed)


def assert_codes_match(packed, norms, packed_ref, norms_ref, x, bits, what=""):
    """Norms within one fp16 ulp; codes equal except where the rotated coordinate lies within a
    rounding distance of a decision threshold (a 1-ulp norm or summation-order difference)."""
    d = x.shape[-1]
    n, n_ref = norms.cpu().double(), norms_ref.cpu().double()
    assert_close_verbose(n, n_ref, atol=1e-7, rtol=2**-10, what=f"{what} norms")
    c = unpack_bits(packed.cpu(), bits, d, impl="reference").long()
    c_ref = unpack_bits(packed_ref.cpu(), bits, d, impl="reference").long()
    bad = c != c_ref
    if bool(bad.any()):
        cb = default_codebook(bits, "cpu").double()
        thr = (cb[1:] + cb[:-1]) / 2
        from hlwq_kernels.fwht import fwht_reference
        u = fwht_reference(x.cpu().double(), d) / n_ref.clamp_min(1e-30)[..., None]
        dist = (u[..., None] - thr).abs().min(-1).values
        explained = ((c - c_ref).abs() == 1) & (dist <= 4e-3 * u.abs().clamp_min(1.0))
        assert bool(explained[bad].all()), (
            f"{what} {int(bad.sum())} codes differ, {int((bad & ~explained).sum())} not at a threshold; "
            f"first at {bad.nonzero()[0].tolist()}")


# ----------------------------------------------------------------------------- quantize_kv

@given(lead=st.sampled_from([(1,), (3,), (2, 5), (37,)]), d=st.sampled_from([64, 128, 256]),
       bits=st.integers(1, 8), dtype=st.sampled_from([torch.float32, torch.bfloat16, torch.float16]),
       log_scale=st.floats(-6, 6), seed=st.integers(0, 2**31 - 1))
@example(lead=(37,), d=256, bits=3, dtype=torch.bfloat16, log_scale=0.0, seed=0)
@example(lead=(3,), d=64, bits=8, dtype=torch.float32, log_scale=-30.0, seed=1)  # norms underflow fp16
@settings(max_examples=min(settings.default.max_examples, 16))
def test_quantize_kv_triton_matches_reference(lead, d, bits, dtype, log_scale, seed):
    x = (torch.randn(*lead, d, generator=_gen(seed)) * math.exp(log_scale)).to(dtype)
    x[..., 0, :] = 0  # a zero vector: norm 0, finite codes
    got = quantize_kv(x.to(DEV), bits, impl="triton")
    ref = quantize_kv(x, bits, impl="reference")
    assert got.packed.shape == (*lead, d * bits // 32) and got.packed.dtype == torch.int32
    assert got.norms.shape == lead and got.norms.dtype == torch.float16
    assert_codes_match(got.packed, got.norms, ref.packed, ref.norms, x.float(), bits)
    assert float(got.norms[..., 0].abs().max()) == 0.0


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
def test_quantize_kv_mse_is_lloyd_max(bits):
    """Rotated coordinates of Gaussian vectors are N(0, 1) after the RMS norm: the relative MSE of a
    round trip is the Lloyd-Max optimum (within sampling noise and the norm's own estimation)."""
    x = torch.randn(512, 256, generator=_gen(bits))
    q = quantize_kv(x.to(DEV), bits)
    xr = dequantize_kv(q.packed, q.norms, bits=bits).cpu()
    mse = float(((xr - x) ** 2).sum() / (x**2).sum())
    assert abs(mse / LLOYD_MSE[bits] - 1) < 0.08, (mse, LLOYD_MSE[bits])
    # outlier channels (the reason for the rotation): a coordinate 30x the others costs nothing extra
    x[:, 7] *= 30
    q = quantize_kv(x.to(DEV), bits)
    xr = dequantize_kv(q.packed, q.norms, bits=bits).cpu()
    assert float(((xr - x) ** 2).sum() / (x**2).sum()) < 1.25 * LLOYD_MSE[bits]


def test_dequantize_kv_rotated_is_codebook_times_norm():
    x = torch.randn(5, 64, generator=_gen(3))
    q = quantize_kv(x, 3, impl="reference")
    y = dequantize_kv(q.packed, q.norms, bits=3, rotated=True)
    codes = unpack_bits(q.packed, 3, 64, impl="reference").long()
    assert torch.equal(y, default_codebook(3, "cpu")[codes] * q.norms.float()[:, None])
    from hlwq_kernels import fwht
    assert_close_verbose(dequantize_kv(q.packed, q.norms, bits=3), fwht(y, impl="reference"), atol=1e-6)


# ----------------------------------------------------------------------------- kv_cache_write_

@given(b=st.integers(1, 3), h=st.integers(1, 3), t=st.integers(1, 5), lmax=st.integers(5, 40),
       d=st.sampled_from(DIMS), bits=st.sampled_from(ATTN_BITS), seed=st.integers(0, 2**31 - 1))
@example(b=1, h=4, t=1, lmax=33, d=DIMS[-1], bits=3, seed=0)  # one decode token, all heads
@settings(max_examples=min(settings.default.max_examples, 12))
def test_kv_cache_write_matches_reference(b, h, t, lmax, d, bits, seed):
    assume(t <= lmax)
    g = _gen(seed)
    w = d * bits // 32
    start = torch.randint(0, lmax - t + 1, (b,), generator=g)
    if b > 1 and seed % 2:
        start = start[:1].expand(b)  # stride 0: one position for the whole batch
    # the cache is the K half of a [B, 2H, L, W] K|V cache (strided), x a transposed [B, T, H, D]
    big = torch.randint(-2**31, 2**31 - 1, (b, 2 * h, lmax, w), generator=g, dtype=torch.int64).to(torch.int32)
    big_norms = torch.randn(b, 2 * h, lmax, generator=g).to(torch.float16)
    x = torch.randn(b, t, h, d, generator=g).transpose(1, 2)
    got_p, got_n = big.clone().to(DEV), big_norms.clone().to(DEV)
    kv_cache_write_(got_p[:, :h], got_n[:, :h], x.to(DEV), start.to(DEV), bits=bits, impl="triton")
    ref_p, ref_n = big.clone(), big_norms.clone()
    kv_cache_write_(ref_p[:, :h], ref_n[:, :h], x, start, bits=bits, impl="reference")
    written = torch.zeros(b, 2 * h, lmax, dtype=torch.bool)
    for i in range(b):
        written[i, :h, int(start[i]):int(start[i]) + t] = True
    got_p, got_n = got_p.cpu(), got_n.cpu()
    assert torch.equal(got_p[~written], big[~written]) and torch.equal(got_n[~written], big_norms[~written])
    q = quantize_kv_reference(x, bits, default_codebook(bits, "cpu"))
    for i in range(b):
        s = int(start[i])
        assert_codes_match(got_p[i, :h, s:s + t], got_n[i, :h, s:s + t], q[0][i], q[1][i], x[i], bits)
        assert torch.equal(ref_p[i, :h, s:s + t], q[0][i]) and torch.equal(ref_n[i, :h, s:s + t], q[1][i])


def test_kv_cache_write_validation():
    p = torch.zeros(2, 4, 16, 6, dtype=torch.int32)
    n = torch.zeros(2, 4, 16, dtype=torch.float16)
    x = torch.randn(2, 4, 3, 64)
    with pytest.raises(ValueError, match=r"start must be in \[0, L - T\] = \[0, 13\], got values in \[0, 14\]"):
        kv_cache_write_(p, n, x, torch.tensor([0, 14]), bits=3)
    with pytest.raises(ValueError, match=r"x must have shape \[2, 4, T, 64\]"):
        kv_cache_write_(p, n, torch.randn(2, 4, 3, 128), torch.tensor([0, 1]), bits=3)
    with pytest.raises(TypeError, match=r"start.dtype must be one of \(int32, int64\), got float32"):
        kv_cache_write_(p, n, x, torch.zeros(2), bits=3)
    with pytest.raises(ValueError, match=r"cache_norms must have shape \[2, 4, 16\]"):
        kv_cache_write_(p, n[:, :, :8], x, torch.tensor([0, 1]), bits=3)
    with pytest.raises(ValueError, match=r"cache_packed.shape\[-1\]\*32/bits \(D\) must be in 64..256, got 32"):
        kv_cache_write_(p[..., :3], n, x, torch.tensor([0, 1]), bits=3)


# ----------------------------------------------------------------------------- kv_cache_write_kv_

@given(b=st.integers(1, 2), h=st.integers(1, 3), t=st.integers(1, 3), lmax=st.integers(3, 24),
       d=st.sampled_from(DIMS), bits=st.sampled_from(ATTN_BITS),
       v_dtype=st.sampled_from([torch.float32, torch.bfloat16, torch.float16]), seed=st.integers(0, 2**31 - 1))
@example(b=1, h=4, t=1, lmax=33, d=DIMS[-1], bits=3, v_dtype=torch.bfloat16, seed=0)  # one decode token
@example(b=2, h=2, t=0, lmax=5, d=64, bits=2, v_dtype=torch.float32, seed=1)  # nothing to write
@settings(max_examples=min(settings.default.max_examples, 8))
def test_kv_cache_write_kv_equals_two_writes(b, h, t, lmax, d, bits, v_dtype, seed):
    """One launch for K and V == kv_cache_write_ for K then V: bit-exact against the two Triton
    writes (the same kernel body) and the two reference writes, codes as in the kv_cache_write_
    test against the reference; nothing else in the caches touched."""
    assume(t <= lmax)
    g = _gen(seed)
    w = d * bits // 32
    start = torch.randint(0, lmax - t + 1, (b,), generator=g)
    if b > 1 and seed % 2:
        start = start[:1].expand(b)  # stride 0, as QuantKVCache passes it
    # K and V caches: the two halves of one [B, 2H, L, W] buffer (strided views)
    big = torch.randint(-2**31, 2**31 - 1, (b, 2 * h, lmax, w), generator=g, dtype=torch.int64).to(torch.int32)
    big_norms = torch.randn(b, 2 * h, lmax, generator=g).to(torch.float16)
    k = torch.randn(b, t, h, d, generator=g).transpose(1, 2)  # strided, fp32
    v = (torch.randn(b, h, t, d, generator=g) * 3).to(v_dtype)

    def run(fused, impl, dev):
        p, n = big.clone().to(dev), big_norms.clone().to(dev)
        kk, vv, ss = k.to(dev), v.to(dev), start.to(dev)
        if fused:
            kv_cache_write_kv_(p[:, :h], n[:, :h], p[:, h:], n[:, h:], kk, vv, ss, bits=bits, impl=impl)
        else:
            kv_cache_write_(p[:, :h], n[:, :h], kk, ss, bits=bits, impl=impl)
            kv_cache_write_(p[:, h:], n[:, h:], vv, ss, bits=bits, impl=impl)
        return p.cpu(), n.cpu()

    got_p, got_n = run(True, "triton", DEV)
    two_p, two_n = run(False, "triton", DEV)
    assert torch.equal(got_p, two_p) and torch.equal(got_n, two_n)
    ref_p, ref_n = run(True, "reference", "cpu")
    ref2_p, ref2_n = run(False, "reference", "cpu")
    assert torch.equal(ref_p, ref2_p) and torch.equal(ref_n, ref2_n)
    written = torch.zeros(b, 2 * h, lmax, dtype=torch.bool)
    for i in range(b):
        written[i, :, int(start[i]):int(start[i]) + t] = True
    assert torch.equal(got_p[~written], big[~written]) and torch.equal(got_n[~written], big_norms[~written])
    for i in range(b):
        s = int(start[i])
        for half, x in ((slice(0, h), k), (slice(h, 2 * h), v)):
            assert_codes_match(got_p[i, half, s:s + t], got_n[i, half, s:s + t], ref_p[i, half, s:s + t],
                               ref_n[i, half, s:s + t], x[i].float(), bits, what=f"b={i} {half}")


def test_kv_cache_write_kv_validation():
    kp, vp = torch.zeros(2, 4, 16, 6, dtype=torch.int32), torch.zeros(2, 4, 16, 6, dtype=torch.int32)
    kn, vn = torch.zeros(2, 4, 16, dtype=torch.float16), torch.zeros(2, 4, 16, dtype=torch.float16)
    k, v = torch.randn(2, 4, 3, 64), torch.randn(2, 4, 3, 64)
    start = torch.tensor([0, 1])
    with pytest.raises(ValueError, match=r"v must have the shape of k \[2, 4, 3, 64\], got \[2, 4, 2, 64\]"):
        kv_cache_write_kv_(kp, kn, vp, vn, k, v[:, :, :2], start, bits=3)
    with pytest.raises(ValueError, match=r"v must have the shape of k"):
        kv_cache_write_kv_(kp, kn, vp, vn, k, v[:1], start, bits=3, impl="reference")
    with pytest.raises(ValueError, match=r"k must have shape \[2, 4, T, 64\] to match the cache, got \[2, 4, 3, 128\]"):
        kv_cache_write_kv_(kp, kn, vp, vn, torch.randn(2, 4, 3, 128), torch.randn(2, 4, 3, 128), start, bits=3)
    with pytest.raises(TypeError, match=r"v.dtype must be one of \(float32, bfloat16, float16\), got int32"):
        kv_cache_write_kv_(kp, kn, vp, vn, k, v.int(), start, bits=3)
    with pytest.raises(ValueError, match=r"v_packed must have the shape of k_packed \[2, 4, 16, 6\], got \[2, 4, 8, 6\]"):
        kv_cache_write_kv_(kp, kn, vp[:, :, :8], vn[:, :, :8], k, v, start, bits=3)
    with pytest.raises(ValueError, match=r"v_norms must have shape \[2, 4, 16\]"):
        kv_cache_write_kv_(kp, kn, vp, vn[:, :, :8], k, v, start, bits=3)
    with pytest.raises(ValueError, match=r"start must be in \[0, L - T\] = \[0, 13\], got values in \[0, 14\]"):
        kv_cache_write_kv_(kp, kn, vp, vn, k, v, torch.tensor([0, 14]), bits=3)
    v_bad = v.clone()
    v_bad[0, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match=r"v must be finite, got 1 NaN"):
        kv_cache_write_kv_(kp, kn, vp, vn, k, v_bad, start, bits=3)
    assert not kp.any() and not vp.any() and not kn.any() and not vn.any()  # nothing written on an error


def test_kv_cache_write_kv_custom_op_schema_and_fake(device):
    """The launcher goes through torch.library (torch.compile / CUDA graphs): the schema declares the
    four mutated caches and the fake implementation agrees with the real one."""
    bits, d = 3, 64
    kp, vp = (torch.zeros(1, 2, 8, d * bits // 32, dtype=torch.int32, device=device) for _ in range(2))
    kn, vn = (torch.zeros(1, 2, 8, dtype=torch.float16, device=device) for _ in range(2))
    k, v = (torch.randn(1, 2, 1, d, device=device) for _ in range(2))
    start = torch.tensor([5], device=device)
    torch.library.opcheck(torch.ops.hlwq.kv_cache_write_kv_, (kp, kn, vp, vn, k, v, start,
                                                              default_codebook(bits, device), bits),
                          test_utils=["test_schema", "test_faketensor"])


# ----------------------------------------------------------------------------- kv_quant_attn

def make_cache(b, hkv, lmax, d, bits, seed, device=DEV):
    """A quantized K/V cache of Gaussian vectors with per-token scales (so norms matter)."""
    g = _gen(seed)
    k = torch.randn(b, hkv, lmax, d, generator=g) * torch.rand(b, hkv, lmax, 1, generator=g).add(0.25) * 3
    v = torch.randn(b, hkv, lmax, d, generator=g) * torch.rand(b, hkv, lmax, 1, generator=g).add(0.25)
    cb = default_codebook(bits, device)
    kq = quantize_kv_reference(k.to(device), bits, cb)  # the reference (plain torch) runs on the GPU too
    vq = quantize_kv_reference(v.to(device), bits, cb)
    return [*kq, *vq]


def lowp_attention(q, kp, kn, vp, vn, lens, bits, causal, start=None):
    """Plain PyTorch attention at q.dtype on the dequantized cache: the error budget."""
    b, hq, tq, d = q.shape
    hkv, lmax = kp.shape[1], kp.shape[2]
    k = dequantize_kv(kp, kn, bits=bits).to(q.dtype).repeat_interleave(hq // hkv, 1)
    v = dequantize_kv(vp, vn, bits=bits).to(q.dtype).repeat_interleave(hq // hkv, 1)
    n = torch.arange(lmax, device=q.device)
    lens = lens.to(q.device, torch.int64)
    mask = n[None, None, :] < lens[:, None, None]
    if start is not None:
        mask = mask & (n[None, None, :] >= start.to(q.device, torch.int64)[:, None, None])
    if causal:
        pos = lens[:, None] - tq + torch.arange(tq, device=q.device)
        mask = mask & (n[None, None, :] <= pos[:, :, None])
    mask = mask.expand(b, tq, lmax)[:, None]
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    return torch.where(mask.any(-1, keepdim=True), out, torch.zeros((), dtype=q.dtype, device=q.device))


def check_attention(out, q, kp, kn, vp, vn, lens, bits, causal, what="", start=None, factor=2.0):
    ref = kv_quant_attn_reference(q.float(), kp, kn, vp, vn, lens, start, bits, q.shape[-1] ** -0.5, causal,
                                  default_codebook(bits, q.device))
    lowp = lowp_attention(q, kp, kn, vp, vn, lens, bits, causal, start)
    budget = float((lowp.float() - ref).abs().max())
    ulp = 2**-8 if q.dtype == torch.bfloat16 else 2**-11
    atol = 2 * ulp * float(ref.abs().max()) + 1e-5  # one output rounding (interpreter truncates) + slack
    err = float((out.float() - ref).abs().max())
    assert out.shape == q.shape and out.dtype == q.dtype
    assert err <= factor * budget + atol, \
        f"{what} max err {err:.3g} > {factor} x {budget:.3g} (plain {q.dtype}) + {atol:.3g}"


@given(b=st.integers(1, 3), hkv=st.integers(1, 2), group=st.sampled_from([1, 2, 4, 8]), tq=st.integers(1, 6),
       lmax=st.integers(1, 200), d=st.sampled_from(DIMS), bits=st.sampled_from(ATTN_BITS),
       causal=st.booleans(), dtype=st.sampled_from([torch.float16, torch.bfloat16]),
       splits=st.sampled_from([None, 1, 3]), decode=st.sampled_from([None, "gather"]), left_pad=st.booleans(),
       seed=st.integers(0, 2**31 - 1))
@example(b=1, hkv=1, group=4, tq=1, lmax=1, d=64, bits=3, causal=True, dtype=torch.float16, splits=None,
         decode=None, left_pad=False, seed=0)
@example(b=1, hkv=1, group=8, tq=1, lmax=200, d=64, bits=2, causal=True, dtype=torch.bfloat16, splits=None,
         decode=None, left_pad=False, seed=1)
@example(b=2, hkv=2, group=2, tq=5, lmax=131, d=64, bits=4, causal=True, dtype=torch.float16, splits=None,
         decode=None, left_pad=False, seed=2)
@example(b=3, hkv=1, group=1, tq=3, lmax=97, d=64, bits=8, causal=False, dtype=torch.float16, splits=1,
         decode=None, left_pad=True, seed=3)
@example(b=2, hkv=1, group=4, tq=2, lmax=150, d=64, bits=3, causal=True, dtype=torch.float16, splits=3,
         decode="gather", left_pad=True, seed=4)
@FEW
def test_kv_quant_attn_matches_reference(b, hkv, group, tq, lmax, d, bits, causal, dtype, splits, decode, left_pad,
                                         seed):
    """1 token and chunks (causal offsets), GQA 1/2/4/8, per-sequence lengths (including ones
    shorter than the chunk: those queries see nothing and return 0), lengths off the block grid,
    one split and several, both decodes (default: the LUT decode at 2 and 3 bits)."""
    assume(tq <= max(lmax, 1))
    assume(b * hkv * lmax * d <= 80_000)
    g = _gen(seed)
    kp, kn, vp, vn = make_cache(b, hkv, lmax, d, bits, seed)
    lens = torch.randint(0, lmax + 1, (b,), generator=g)
    lens[0] = lmax  # one full sequence
    q = (torch.randn(b, hkv * group, tq, d, generator=g) * 2).to(dtype).to(DEV)
    start = (torch.rand(b, generator=g) * (lens + 1)).long().clamp_max(lens).to(DEV) if left_pad else None
    lens = lens.to(DEV)
    if b > 1 and seed % 3 == 0:  # one length for the whole batch as a stride-0 view (the model's case)
        lens = lens[:1].expand(b)
    if splits is None and decode is None:
        out = kv_quant_attn(q, kp, kn, vp, vn, bits=bits, kv_lens=lens, kv_start=start, causal=causal, impl="triton")
    else:
        out = kv_quant_attn_triton_splits(q, kp, kn, vp, vn, lens, start, bits, d ** -0.5, causal,
                                          default_codebook(bits, DEV), splits, decode=decode)
    check_attention(out, q, kp, kn, vp, vn, lens, bits, causal, start=start)


@pytest.mark.parametrize("splits", [1, 2, 5, None])
def test_kv_quant_attn_many_blocks_and_splits(splits):
    """A context of many key blocks (BLOCK_N = 64 at D = 64), cut into splits that do not align
    with the sequence lengths, decode and a causal chunk."""
    b, hkv, group, lmax, d, bits = 2, 1, 4, 300, 64, 3
    kp, kn, vp, vn = make_cache(b, hkv, lmax, d, bits, 7)
    lens = torch.tensor([300, 171], device=DEV)
    for tq in (1, 4):
        q = torch.randn(b, hkv * group, tq, d, generator=_gen(tq)).to(torch.float16).to(DEV)
        out = kv_quant_attn_triton_splits(q, kp, kn, vp, vn, lens, None, bits, d ** -0.5, True,
                                          default_codebook(bits, DEV), splits)
        check_attention(out, q, kp, kn, vp, vn, lens, bits, True, what=f"splits={splits} tq={tq}")


def check_variant(q, kp, kn, vp, vn, lens, start, bits, splits, variant, what, same_as_default=True):
    """The split kernel with ``variant`` against the reference and (``same_as_default``) within one
    output ulp of the default configuration: the variants only reorder fp32 sums."""
    d = q.shape[-1]
    cb = default_codebook(bits, DEV)
    out = kv_quant_attn_triton_splits(q, kp, kn, vp, vn, lens, start, bits, d ** -0.5, True, cb, splits,
                                      variant=variant)
    check_attention(out, q, kp, kn, vp, vn, lens, bits, True, what=what, start=start)
    if same_as_default:  # the Triton default tile (variant=None would take the Gluon kernel at D = 256 on the GPU)
        base = kv_quant_attn_triton_splits(q, kp, kn, vp, vn, lens, start, bits, d ** -0.5, True, cb, splits,
                                           variant=DEFAULT_VARIANT.get(d, "single"))
        ulp = 2.0 ** -10 * float(base.abs().max())
        assert float((out.float() - base.float()).abs().max()) <= ulp, what


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_kv_quant_attn_variants(variant):
    """Each opt-in register-cut configuration of the decode tile (VARIANTS: D cut into parts, packed
    LUT outputs, other BLOCK_N / warps / stages; under the interpreter the LUT asm's layout is
    emulated with gathers) against the reference, decode and a causal chunk, one split and several,
    left padding; and the same function as the default configuration: the D parts only reorder fp32
    sums (within one output ulp); a different BLOCK_N moves the online-softmax rescaling points."""
    cases = [(64, 3, 1, 3, False), (128, 2, 3, 1, True)] + ([(256, 3, 1, None, False)] if ON_GPU else [])
    for d, bits, tq, splits, left_pad in cases:  # D = 128: 4 parts; D = 64: at most 2 (D / 32)
        b, hkv, group, lmax = 2, 1, 4, 150
        kp, kn, vp, vn = make_cache(b, hkv, lmax, d, bits, d + bits)
        lens = torch.tensor([150, 93], device=DEV)
        start = torch.tensor([0, 40], device=DEV) if left_pad else None
        q = torch.randn(b, hkv * group, tq, d, generator=_gen(d)).to(torch.float16).to(DEV)
        same_tile = VARIANTS[variant]["block_n"] == plan(b, hkv, group * tq, lmax, d, 132)["block_n"]
        check_variant(q, kp, kn, vp, vn, lens, start, bits, splits, variant, f"{variant} d={d} bits={bits} tq={tq}",
                      same_as_default=same_tile)


# the session-4 variants' distinct code paths (the -r96 / -r80 ones differ only in the register cap)
TAIL_VARIANTS = [v for v, c in VARIANTS.items() if c.get("tail") and c["maxnreg"] == 128]


@pytest.mark.parametrize("variant", TAIL_VARIANTS)
def test_kv_quant_attn_tail_variants(variant):
    """The code paths of the tail=True variants at D = 128 (4 D parts): the mask-free main loop and
    the masked last tiles (lengths off the 64-token grid, a left-padding start off it, 1 to 3 splits),
    the 16-bit high-plane load (3 bits), REP (<= 4 query rows: decode with GQA 4 and a causal chunk of
    4 queries with GQA 1; 6 rows fall back to 4 accumulators), against the reference and within one
    output ulp of the default configuration."""
    cases = [(3, 4, 1, None, True), (3, 1, 4, 1, False), (2, 4, 1, 3, True), (3, 2, 3, 3, True)]
    for bits, group, tq, splits, left_pad in cases:
        d, b, hkv, lmax = 128, 2, 1, 150
        kp, kn, vp, vn = make_cache(b, hkv, lmax, d, bits, 11 * bits + tq)
        lens = torch.tensor([150, 137], device=DEV)
        start = torch.tensor([0, 40], device=DEV) if left_pad else None
        q = torch.randn(b, hkv * group, tq, d, generator=_gen(tq + group)).to(torch.float16).to(DEV)
        cfg = plan(b, hkv, group * tq, lmax, d, 132, splits, variant=variant)
        assert cfg["tail"] and cfg["dsplit"] == 4
        assert cfg["rep"] == (bool(VARIANTS[variant].get("rep")) and group * tq <= 4)
        check_variant(q, kp, kn, vp, vn, lens, start, bits, splits, variant,
                      f"{variant} bits={bits} group={group} tq={tq} splits={splits} rep={cfg['rep']}")


# the session-5 variants' code paths (instruction-level parallelism inside a program)
ILP_VARIANTS = [v for v, c in VARIANTS.items() if c.get("dual") or c.get("lacc")]


@pytest.mark.parametrize("variant", ILP_VARIANTS)
def test_kv_quant_attn_ilp_variants(variant):
    """The dual=1/2 (two key-tile chains per trip, merged after the main loop), dual=3 (software-
    pipelined K), lacc (per-key denominator) and pf (register prefetch of the next tile's first code
    words) paths at D = 128: splits with an even and an odd number of mask-free tiles (9, 7, 5, 4,
    3, 2, 1 and none), a ragged last tile, a left-padding start off the tile grid, one split (DIRECT) and
    several, REP decode and a causal 4-query chunk; 12 rows (no REP: the plain tail loop), against the
    reference and within one output ulp of the default configuration."""
    cases = [(3, 4, 1, 1, False), (3, 4, 1, 2, True), (2, 1, 4, 3, True), (3, 4, 3, 2, False), (2, 4, 1, 9, True)]
    for bits, group, tq, splits, left_pad in cases:
        d, b, hkv, lmax = 128, 2, 1, 600
        kp, kn, vp, vn = make_cache(b, hkv, lmax, d, bits, 13 * bits + tq + splits)
        lens = torch.tensor([600, 457], device=DEV)
        start = torch.tensor([0, 70], device=DEV) if left_pad else None
        q = torch.randn(b, hkv * group, tq, d, generator=_gen(tq + group + splits)).to(torch.float16).to(DEV)
        cfg = plan(b, hkv, group * tq, lmax, d, 132, splits, variant=variant)
        for key, off in (("dual", 0), ("lacc", False), ("pf", False)):  # REP decode tiles only
            assert cfg[key] == (VARIANTS[variant].get(key, off) if group * tq <= 4 else off)
        check_variant(q, kp, kn, vp, vn, lens, start, bits, splits, variant,
                      f"{variant} bits={bits} group={group} tq={tq} splits={splits} rep={cfg['rep']}")


@pytest.mark.parametrize("bits", [2, 3])
@pytest.mark.parametrize("codebook", ["gaussian", "random"])
def test_lut_program_decodes_every_code(bits, codebook):
    """The PTX of the LUT decode, executed by lut.emulate (same instruction list): every code at
    every field position maps to its fp16 level, for the default and an arbitrary codebook."""
    import numpy as np
    from hlwq_kernels.kv_quant_attn import lut
    from hlwq_kernels.quantize_kv.codebooks import tables
    cb = default_codebook(bits, "cpu") if codebook == "gaussian" else \
        torch.randn(1 << bits, generator=_gen(bits)).sort().values * 100
    _, _, cb16, words = tables(cb)
    rng = np.random.default_rng(bits)
    codes = np.concatenate([rng.integers(0, 1 << bits, (500, 16)),
                            np.repeat(np.arange(1 << bits), 16).reshape(1 << bits, 16)])  # each code everywhere
    w = np.zeros(len(codes), np.uint64)
    h = np.zeros(len(codes), np.uint64)
    for f in range(16):
        w |= (codes[:, f] & 3).astype(np.uint64) << np.uint64(2 * f)
        h |= ((codes[:, f] >> 2) & 1).astype(np.uint64) << np.uint64(2 * f)
    got = lut.emulate(w.astype(np.uint32), h.astype(np.uint32), words.tolist())
    want = cb16.view(torch.int16).numpy().astype(np.uint16)[codes]
    assert (got == want).all(), np.argwhere(got != want)[:5]
    ptx = lut.ptx()
    assert ptx.count("prmt.b32") == 16 and ptx.count("$21") == 4 and "$22" not in ptx
    assert lut.CONSTRAINTS.count("=h") == 16 and lut.CONSTRAINTS.count(",r") == 6
    # the packed form (VARIANTS "...lutpack..."): output register k = fp16x2 of the pair of fields of
    # tile positions 2k, 2k + 1 (low half first), in the kernel's tile order (colperm)
    tile_order = [0, 2, 4, 6, 1, 3, 5, 7, 8, 10, 12, 14, 9, 11, 13, 15]
    assert [f for pair in lut.PACKED_PAIRS for f in pair] == tile_order
    packed = lut.emulate(w.astype(np.uint32), h.astype(np.uint32), words.tolist(), packed=True)
    for k, (lo, hi) in enumerate(lut.PACKED_PAIRS):
        assert (packed[:, k] & 0xFFFF == want[:, lo]).all() and (packed[:, k] >> 16 == want[:, hi]).all()
    ptx2 = lut.ptx(packed=True)
    assert ptx2.count("prmt.b32") == 16 and "{" not in ptx2.replace("{\n", "", 1)  # no 16-bit splits
    assert all(ptx2.count(f"mov.b32 ${k}, t") == 1 for k in range(8))
    assert all(f"${i}" in ptx2 for i in (8, 9, 10, 12, 14, 16))  # w, h, the 4 LUT words (one of each pair)
    assert not any(f"${i}" in ptx2 for i in (11, 13, 15, 17, 18))
    assert lut.CONSTRAINTS_PACKED.count("=r") == 8 and lut.CONSTRAINTS_PACKED.count(",r") == 10
    # PROGRAM_RAW (VARIANTS "dsplit4-rep*"): the high bits raw (field f at bit f, bits 16.. zero), packed
    h_raw = np.zeros(len(codes), np.uint64)
    for f in range(16):
        h_raw |= ((codes[:, f] >> 2) & 1).astype(np.uint64) << np.uint64(f)
    assert (lut.emulate(w.astype(np.uint32), h_raw.astype(np.uint32), words.tolist(), raw=True) == want).all()
    packed = lut.emulate(w.astype(np.uint32), h_raw.astype(np.uint32), words.tolist(), packed=True, raw=True)
    for k, (lo, hi) in enumerate(lut.PACKED_PAIRS):
        assert (packed[:, k] & 0xFFFF == want[:, lo]).all() and (packed[:, k] >> 16 == want[:, hi]).all()
    ptx3 = lut.ptx(packed=True, raw=True)
    assert ptx3.count("prmt.b32") == 17 and ptx3.count("lop3.b32") == 4 and "{" not in ptx3.replace("{\n", "", 1)
    assert all(ptx3.count(f"mov.b32 ${k}, t") == 1 for k in range(8))
    assert all(f"${i}" in ptx3 for i in (8, 9, 10, 12, 14, 16))
    assert not any(f"${i}" in ptx3 for i in (11, 13, 15, 17, 18))


@pytest.mark.skipif(not ON_GPU, reason="needs CUDA")
@pytest.mark.parametrize("bits", [2, 3])
@pytest.mark.parametrize("decode", ["lut", "gather"])
def test_kv_quant_attn_each_decode_gpu(bits, decode):
    """Each decode explicitly (no fallback), D = 256, decode and chunk, on the GPU."""
    for d in (256,):
        kp, kn, vp, vn = make_cache(2, 2, 700, d, bits, d)
        lens = torch.tensor([700, 333], device=DEV)
        for tq in (1, 5):
            q = torch.randn(2, 8, tq, d, device=DEV).to(torch.bfloat16)
            out = kv_quant_attn_triton_splits(q, kp, kn, vp, vn, lens, None, bits, d ** -0.5, True,
                                              default_codebook(bits, DEV), None, decode=decode)
            check_attention(out, q, kp, kn, vp, vn, lens, bits, True, what=f"{decode} d={d} tq={tq}")


def test_kv_quant_attn_end_to_end_quality():
    """quantize -> write -> attend, against exact fp32 attention on the unquantized keys/values:
    the error falls with the bit width (what the format is for, not just kernel == reference)."""
    b, hkv, group, t, d = 1, 2, 2, 96, 64
    g = _gen(11)
    k = torch.randn(b, hkv, t, d, generator=g)
    v = torch.randn(b, hkv, t, d, generator=g)
    q = torch.randn(b, hkv * group, 1, d, generator=g)
    exact = F.scaled_dot_product_attention(q, k.repeat_interleave(group, 1), v.repeat_interleave(group, 1))
    errs = {}
    for bits in (2, 4, 8):
        w = d * bits // 32
        cache = [torch.zeros(b, hkv, t, w, dtype=torch.int32, device=DEV),
                 torch.zeros(b, hkv, t, dtype=torch.float16, device=DEV)]
        vcache = [torch.zeros_like(cache[0]), torch.zeros_like(cache[1])]
        start = torch.zeros(b, dtype=torch.int32, device=DEV)
        kv_cache_write_(*cache, k.to(DEV), start, bits=bits)
        kv_cache_write_(*vcache, v.to(DEV), start, bits=bits)
        out = kv_quant_attn(q.half().to(DEV), cache[0], cache[1], vcache[0], vcache[1], bits=bits,
                            kv_lens=torch.tensor([t], device=DEV))
        errs[bits] = rel_err(out, exact)
    # K and V errors each ~ sqrt(Lloyd-Max MSE) relative; measured ~1.45x that combined
    assert all(errs[bits] < 2 * math.sqrt(LLOYD_MSE[bits]) for bits in errs), errs
    assert errs[2] > errs[4] > errs[8], errs


def test_kv_quant_attn_does_not_mutate_and_auto_dispatch():
    kp, kn, vp, vn = make_cache(1, 1, 40, 64, 2, 5)
    before = [t.clone() for t in (kp, kn, vp, vn)]
    q = torch.randn(1, 2, 2, 64).half().to(DEV)
    lens = torch.tensor([33], device=DEV)
    out = kv_quant_attn(q, kp, kn, vp, vn, bits=2, kv_lens=lens)
    assert all(torch.equal(a, b) for a, b in zip(before, (kp, kn, vp, vn)))
    ref = kv_quant_attn(q, kp, kn, vp, vn, bits=2, kv_lens=lens, impl="reference")
    assert ref.dtype == torch.float16
    check_attention(out, q, kp, kn, vp, vn, lens, 2, True)


def test_kv_quant_attn_validation():
    kp, kn, vp, vn = make_cache(2, 2, 16, 64, 3, 0, device="cpu")
    q = torch.randn(2, 4, 1, 64).half()
    lens = torch.tensor([16, 3])
    with pytest.raises(ValueError, match=r"bits must be one of \(2, 3, 4, 8\), got 5"):
        kv_quant_attn(q, kp, kn, vp, vn, bits=5, kv_lens=lens)
    with pytest.raises(ValueError, match=r"q.shape\[1\] \(Hq=3\) must be a multiple of k_packed.shape\[1\] \(Hkv=2\)"):
        kv_quant_attn(q[:, :3], kp, kn, vp, vn, bits=3, kv_lens=lens)
    with pytest.raises(ValueError, match=r"kv_lens must be in \[0, L=16\], got values in \[3, 17\]"):
        kv_quant_attn(q, kp, kn, vp, vn, bits=3, kv_lens=torch.tensor([17, 3]))
    with pytest.raises(TypeError, match=r"q.dtype must be one of \(bfloat16, float16\), got float32"):
        kv_quant_attn(q.float(), kp, kn, vp, vn, bits=3, kv_lens=lens)
    with pytest.raises(ValueError, match=r"v_packed must have the shape of k_packed"):
        kv_quant_attn(q, kp, kn, vp[:, :, :8], vn[:, :, :8], bits=3, kv_lens=lens)
    with pytest.raises(ValueError, match=r"k_packed must have shape \[2, Hkv, L, 12\]"):
        kv_quant_attn(torch.randn(2, 4, 1, 128).half(), kp, kn, vp, vn, bits=3, kv_lens=lens)
    with pytest.raises(ValueError, match=r"k_packed.shape\[-1\]\*32/bits \(D\) must be a power of two, got 96"):
        kv_quant_attn(q, kp, kn, vp, vn, bits=2, kv_lens=lens)
    with pytest.raises(ValueError, match=r"kv_lens must have shape \[2\]"):
        kv_quant_attn(q, kp, kn, vp, vn, bits=3, kv_lens=lens[:1])
    with pytest.raises(ValueError, match=r"codebook must have shape \[8\]"):
        kv_quant_attn(q, kp, kn, vp, vn, bits=3, kv_lens=lens, codebook=torch.zeros(4))
    with pytest.raises(ValueError, match="impl must be one of"):
        kv_quant_attn(q, kp, kn, vp, vn, bits=3, kv_lens=lens, impl="fast")
    with pytest.raises(ValueError,
                       match=r"kv_start must be in \[0, kv_lens\[b\]\], got \[0, 4\] for kv_lens \[16, 3\]"):
        kv_quant_attn(q, kp, kn, vp, vn, bits=3, kv_lens=lens, kv_start=torch.tensor([0, 4]))


def test_plan_fills_the_gpu():
    """Split-K sizing on an H100 (132 SMs): one decode sequence at 32k fills one wave of programs
    (4 per SM with the D = 256 default "dsplit4-rep-lacc-pf", 2 with "single")."""
    cfg = plan(1, 4, 4, 32768, 256, 132)
    assert cfg["splits"] == 128 and cfg["chunk"] == 256 and cfg["block_m"] == 16  # 512 programs <= 528
    assert (cfg["dsplit"], cfg["packed"], cfg["num_stages"], cfg["maxnreg"]) == (4, True, 1, 128)
    assert (cfg["tail"], cfg["hload"], cfg["rep"]) == (True, 2, True)  # 4 query rows: REP
    assert (cfg["lacc"], cfg["pf"]) == (True, True)
    assert not plan(1, 4, 12, 32768, 256, 132)["rep"]  # a 3-token chunk, 12 rows: 4 accumulators
    cfg = plan(8, 4, 4, 8192, 256, 132)
    assert cfg["splits"] == 16 and cfg["chunk"] == 512  # 512 programs <= 528 slots: no ragged wave
    cfg = plan(1, 4, 4, 32768, 256, 132, variant="single")
    assert cfg["splits"] == 64 and cfg["chunk"] == 512  # 256 programs <= 264 slots
    assert plan(1, 4, 4, 40, 256, 132, lut=False)["splits"] == 2  # never a split shorter than BLOCK_N (32)
    assert plan(1, 4, 4, 40, 256, 132)["splits"] == 1  # LUT decode tiles: 64 tokens
    assert plan(128, 4, 4, 1024, 256, 132)["splits"] == 1  # 512 programs without splitting
    assert {k: cfg[k] for k in ("dsplit", "packed", "num_stages", "maxnreg", "num_warps")} == dict(
        dsplit=1, packed=False, num_stages=2, maxnreg=None, num_warps=4)  # "single"
    cfg = plan(1, 4, 4, 32768, 128, 132)  # D = 128: "single" (the D = 256 default is untimed there)
    assert (cfg["dsplit"], cfg["packed"], cfg["splits"]) == (1, False, 64)


def test_plan_variants():
    """The opt-in decode-tile configurations: their tiles, and splits for their programs per SM
    (32k decode, 4 KV heads, 132 SMs); nothing changes where the default plan does not use that tile."""
    cfg = plan(1, 4, 4, 32768, 256, 132, variant="dsplit4")
    assert (cfg["dsplit"], cfg["maxnreg"], cfg["splits"], cfg["chunk"]) == (4, 128, 128, 256)  # 512 <= 4 x 132
    cfg = plan(1, 4, 4, 32768, 256, 132, variant="dsplit2-lutpack-n128w8")
    assert (cfg["block_n"], cfg["num_warps"], cfg["packed"], cfg["splits"], cfg["chunk"] % 128) == (128, 8, True, 64, 0)
    assert plan(1, 4, 4, 32768, 64, 132, variant="dsplit4")["dsplit"] == 2  # at most D / 32 parts
    # the register cap only where it was compiled spill-free: D = 256 with split partials
    assert plan(1, 4, 4, 32768, 128, 132, variant="dsplit4")["maxnreg"] is None
    assert plan(1, 4, 4, 40, 256, 132, variant="dsplit4")["maxnreg"] is None  # one split: DIRECT epilogue
    for kw in (dict(lut=False), dict(n_rows=32)):  # gather decode, prefill tile: the default plan
        args = dict(B=1, Hkv=4, n_rows=4, lmax=32768, d=256, sms=132) | kw
        assert plan(**args, variant="dsplit4") == plan(**args)
    with pytest.raises(ValueError, match="variant must be None or one of"):
        plan(1, 4, 4, 32768, 256, 132, variant="fast")


@pytest.mark.skipif(not ON_GPU, reason="needs CUDA")
@pytest.mark.parametrize("bits", ATTN_BITS)
def test_kv_quant_attn_qwen35_shapes_gpu(bits):
    """Qwen3.5-9B attention (16 q / 4 KV heads, D = 256): decode at 8k with ragged batch lengths,
    and causal 3- and 7-token chunks, bf16, auto split-K."""
    kp, kn, vp, vn = make_cache(3, 4, 8192, 256, bits, bits)
    lens = torch.tensor([8192, 5000, 77], device=DEV)
    for tq in (1, 3, 7):  # 3: the LUT tile without REP (12 rows); 7: the prefill tile (28 rows)
        q = torch.randn(3, 16, tq, 256, device=DEV).to(torch.bfloat16)
        out = kv_quant_attn(q, kp, kn, vp, vn, bits=bits, kv_lens=lens)
        check_attention(out, q, kp, kn, vp, vn, lens, bits, True, what=f"tq={tq}")


@pytest.mark.skipif(not ON_GPU, reason="needs CUDA")
@pytest.mark.parametrize("fused", [False, True])
def test_decode_step_is_cuda_graph_capturable(fused):
    """append K/V (two kv_cache_write_ or one kv_cache_write_kv_) + attend, captured once and
    replayed at a new position (device-side `start` and `kv_lens`, no host syncs), equals the
    eager result."""
    bits, lmax, d = 3, 1024, 256
    kp, kn, vp, vn = make_cache(1, 4, lmax, d, bits, 1)
    start = torch.tensor([100], device=DEV)
    lens = start + 1
    k_new, v_new, q = (torch.randn(1, n, 1, d, device=DEV).to(torch.bfloat16) for n in (4, 4, 16))

    def step():
        if fused:
            kv_cache_write_kv_(kp, kn, vp, vn, k_new, v_new, start, bits=bits)
        else:
            kv_cache_write_(kp, kn, k_new, start, bits=bits)
            kv_cache_write_(vp, vn, v_new, start, bits=bits)
        return kv_quant_attn(q, kp, kn, vp, vn, bits=bits, kv_lens=lens)

    step()  # compile outside the capture
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = step()
    start.fill_(500)
    lens.fill_(501)
    graph.replay()
    torch.cuda.synchronize()
    got = out.clone()
    assert torch.equal(got, step())
    check_attention(got, q, kp, kn, vp, vn, lens, bits, True)


@pytest.mark.parametrize("splits", [1, 5, 128, 200])
def test_merge_kernel_online_matches_torch(splits):
    """``_merge_kernel`` (online merge: each block of SB split partials and their log2-sum-exps loaded in one
    round trip, blocks combined with a running max) against a plain torch merge: one block (splits <= SB)
    and several (200 > SB = 128), rows with -inf partials (splits that saw no key) and a row with none."""
    from hlwq_kernels.kv_quant_attn.triton import launch_merge

    g = _gen(splits)
    bhkv, n_rows, grp, d = 2, 3, 3, 256
    op = torch.randn(splits, bhkv, n_rows, d, generator=g)
    lse = torch.randn(splits, bhkv, n_rows, generator=g) * 20
    lse[torch.rand(splits, bhkv, n_rows, generator=g) < 0.3] = float("-inf")
    lse[:, 1, 2] = float("-inf")  # a row that saw no key anywhere: zeros
    w = torch.exp2(lse - lse.amax(0).clamp_min(-1e30))
    want = (op * w[..., None]).sum(0) / w.sum(0).clamp_min(1e-30)[..., None]
    want[1, 2] = 0
    out = torch.empty(1, bhkv * grp, 1, d, device=DEV)  # B = 1, Hkv = 2, G = 3, Tq = 1
    launch_merge(op.to(DEV), lse.to(DEV), out, splits, n_rows, bhkv, grp)
    got = out.cpu().view(bhkv, grp, d)
    assert torch.allclose(got, want, rtol=1e-5, atol=1e-5), float((got - want).abs().max())

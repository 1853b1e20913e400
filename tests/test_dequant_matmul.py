"""dequant_matmul: Triton (GPU or interpreter) against the fp32 reference, by the flash-attention rule:
the kernel's max error vs ``fwht(pad(x)) @ W_rot.T`` in fp32 is at most 2x the max error of the same
computation in plain PyTorch at x's dtype, plus one output ulp of |y|max (the interpreter truncates
fp32->bf16 instead of rounding: TRITON_CPU.md)."""

import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import assume, example, given
from hypothesis import strategies as st

from hlwq_kernels import dequantize_weight, fwht, quantize_weight
from hlwq_kernels.dequant_matmul import (Config, dequant_matmul, dequant_matmul_reference,
                                         dequant_matmul_triton_method)
from helpers import assert_close_verbose

ON_GPU = torch.cuda.is_available()
DTYPES = [torch.float32, torch.bfloat16, torch.float16]
needs_gpu = pytest.mark.skipif(not ON_GPU, reason="needs CUDA")


def make_weight(n, k, bits, block, seed, device):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(n, k, generator=g) * (0.02 + torch.rand(n, 1, generator=g))  # uneven row scales
    # the reference quantizer: these tests are about the matmul, not the quantizer's kernel
    return quantize_weight(w.to(device), bits, block=block, impl="reference")


def make_x(lead, width, dtype, seed, device):
    g = torch.Generator().manual_seed(seed + 1)
    return torch.randn(*lead, width, generator=g).to(dtype).to(device)


def torch_rival(x, qw, x_rotated, out_dtype):
    """The same computation in plain PyTorch at x's dtype (what the kernel must not be much worse than)."""
    n, k = qw.shape
    kp = qw.padded_in_features
    xr = x if x_rotated else fwht(F.pad(x.float(), (0, kp - k)), block=qw.block, impl="reference").to(x.dtype)
    w_rot = dequantize_weight(qw, rotated=True, impl="reference").to(x.dtype)
    if x.dtype != torch.float32 and x.device.type == "cpu":  # CPU half matmuls: accumulate like cuBLAS
        y = (xr.float() @ w_rot.float().T).to(x.dtype)
    else:
        y = xr @ w_rot.T
    return y.to(out_dtype)


def rounding_floor(x, qw, x_rotated):
    """Three standard deviations of the error of one rounding to x's dtype per product term (unit roundoff u,
    uniform: sigma u / sqrt(3) per term): 3 (u / sqrt(3)) ||xr_k w_k||_2, the largest over the outputs. This is what
    the rival's rounding of the rotated x or of the weight costs on a typical draw."""
    n, k = qw.shape
    xc = x.cpu().float().reshape(-1, x.shape[-1])
    xr = xc if x_rotated else fwht(F.pad(xc, (0, qw.padded_in_features - k)), block=qw.block, impl="reference")
    w = dequantize_weight(qw.to("cpu"), rotated=True, impl="reference")
    if xr.numel() == 0 or w.numel() == 0:
        return 0.0
    norm = ((xr.double() ** 2) @ (w.double() ** 2).T).sqrt()  # ||xr_m * w_n||_2 for every output
    return float(3 * (torch.finfo(x.dtype).eps / 2) / 3 ** 0.5 * norm.max())


def check(y, x, qw, x_rotated, out_dtype, what=""):
    ref = dequant_matmul_reference(x.cpu().float(), qw.to("cpu"), x_rotated, torch.float32).double()
    rival = torch_rival(x.cpu(), qw.to("cpu"), x_rotated, out_dtype).double()
    assert y.dtype == out_dtype and y.shape == ref.shape, (y.dtype, y.shape, ref.shape)
    scale = float(ref.abs().max()) if ref.numel() else 0.0
    rival_err = float((rival - ref).abs().max()) if ref.numel() else 0.0
    # With one to three outputs the rival's max error is one sample of luck: on the H100 (S15-9) it was 3.8e-5 where
    # our bf16-rotated x cost 3.9e-3 (N = 1, K = 227) and 2.5e-5 where dot2's bf16 operands cost 1.3e-4 (M = 3,
    # N = 1). So it is floored by what one x.dtype rounding per term costs on a typical draw (rounding_floor; at
    # fp32 ~1e-7 relative, at bf16 ~1e-2 of the terms' scale). Large draws are bound by the rival's max as before.
    rival_err = max(rival_err, rounding_floor(x, qw, x_rotated))
    atol = torch.finfo(out_dtype).eps * scale + 1e-6 * (scale + 1.0)
    assert_close_verbose(y.cpu(), ref, atol=2 * rival_err + atol, what=f"{what} (rival err {rival_err:.3g})")


# ---------------------------------------------------------------------------------------------
@given(m=st.sampled_from([1, 2, 3, 4, 5, 16, 17, 300]), n=st.integers(1, 80), k=st.integers(1, 300),
       bits=st.integers(1, 8), block=st.sampled_from([32, 64, 128]), dtype=st.sampled_from(DTYPES),
       out_dtype=st.sampled_from([None] + DTYPES), x_rotated=st.booleans(), seed=st.integers(0, 2**20))
@example(m=1, n=63, k=200, bits=5, block=128, dtype=torch.bfloat16, out_dtype=None, x_rotated=False, seed=0)
@example(m=3, n=1, k=1, bits=8, block=32, dtype=torch.float16, out_dtype=torch.float32, x_rotated=True, seed=1)
@example(m=17, n=33, k=130, bits=2, block=64, dtype=torch.float32, out_dtype=None, x_rotated=False, seed=2)
@example(m=5, n=40, k=96, bits=7, block=32, dtype=torch.bfloat16, out_dtype=torch.bfloat16, x_rotated=True, seed=3)
def test_dequant_matmul_matches_reference(device, m, n, k, bits, block, dtype, out_dtype, x_rotated, seed):
    kp = -(-k // block) * block
    assume(m * n * kp <= 60_000)
    qw = make_weight(n, k, bits, block, seed, device)
    x = make_x((m,), kp if x_rotated else k, dtype, seed, device)
    y = dequant_matmul(x, qw, x_rotated=x_rotated, out_dtype=out_dtype, impl="triton")
    check(y, x, qw, x_rotated, out_dtype or dtype, f"m={m} n={n} k={k} bits={bits} block={block}")


@pytest.mark.parametrize("method", ["gemv", "dot", "slab"])
@pytest.mark.parametrize("bits", [1, 2, 3, 4, 5, 6, 7, 8])
def test_each_kernel_every_bit_width(device, method, bits):
    m, n, k, block = {"gemv": (2, 64, 256, 128), "dot": (16, 64, 256, 128), "slab": (40, 64, 256, 128)}[method]
    qw = make_weight(n, k, bits, block, bits, device)
    x = make_x((m,), k, torch.bfloat16 if ON_GPU else torch.float16, bits, device)
    y = dequant_matmul_triton_method(x, qw, False, x.dtype, method)
    check(y, x, qw, False, x.dtype, f"{method} bits={bits}")


@pytest.mark.parametrize("cfg", [
    Config("gemv", BN=16, G=2, split_k=3),   # split-K with a ragged last split
    Config("gemv", BN=8, G=1, split_k=5, prefetch=True),
    Config("gemv", BN=16, G=2, split_k=2, prefetch=True),
    Config("gemv", BN=16, G=1, split_k=5, unroll=2),  # K=300, block 64: 10 tiles, 2 per split
    Config("gemv", BN=32, G=2, split_k=1, unroll=5, prefetch=True),  # 5 tiles in one trip
    Config("dot", BN=64, G=2, BM=16, split_k=2),
    Config("dot", BN=64, G=1, BM=32, split_k=4),
    Config("dot", BN=64, G=1, BM=16, split_k=2, unroll=5),  # K=300, block 64: 10 K-steps, 5 per trip
    Config("slab", BN=32, G=2),  # 70 rows: a ragged last row tile
])
def test_split_k_configs(device, cfg):
    m = {"gemv": 2, "dot": 20, "slab": 33}[cfg.method]
    qw = make_weight(70, 300, 5, 64, 7, device)
    x = make_x((m,), 300, torch.float32, 7, device)
    y = dequant_matmul_triton_method(x, qw, False, torch.float32, config=cfg)
    check(y, x, qw, False, torch.float32, str(cfg))


@pytest.mark.parametrize("opts", [None, dict(nib=True), dict(depth=2), dict(unroll=2), dict(lean=True),
                                  dict(early=True), dict(depth=2, unroll=3, nib=True, lean=True, early=True),
                                  dict(i32=True), dict(i32=True, unroll=2, nib=True, lean=True)],
                         ids=["default", "nib", "depth2", "pingpong", "lean", "early", "d2-pp-nib-lean-early", "i32",
                              "i32-pp-nib-lean"])
@pytest.mark.parametrize("bits", [1, 2, 3, 4, 5, 6, 7, 8])
def test_gemv2_every_bit_width(device, bits, opts):
    """The K-across-the-CTA GEMV (the M <= GEMV_MAX_M default) through method="gemv2", and its opt-in
    variants (nib: bits 1-3 only, the others fall back to the byte-word decode; lean: every width)."""
    qw = make_weight(40, 256, bits, 128, bits, device)
    x = make_x((2,), 256, torch.bfloat16 if ON_GPU else torch.float16, bits, device)
    if opts is None:
        y = dequant_matmul_triton_method(x, qw, False, x.dtype, "gemv2")
    else:
        cfg = Config("gemv2", BN=4, G=128, prefetch=True, row_tiles=3, **opts)  # 40 rows: 10 tiles, ragged
        y = dequant_matmul_triton_method(x, qw, False, x.dtype, config=cfg)
    check(y, x, qw, False, x.dtype, f"gemv2 bits={bits} {opts}")


@given(n=st.integers(1, 80), k=st.integers(1, 300), bits=st.integers(1, 8), block=st.sampled_from([32, 64, 128]),
       bn=st.sampled_from([1, 4, 8]), g=st.sampled_from([1, 2, 4, 16]), split_k=st.sampled_from([0, 2, 3]),
       row_tiles=st.sampled_from([0, 1, 3]), prefetch=st.booleans(), dtype=st.sampled_from(DTYPES),
       seed=st.integers(0, 2**20), depth=st.sampled_from([1, 2]), pingpong=st.booleans(), nib=st.booleans(),
       lean=st.booleans(), early=st.booleans(), fused=st.booleans(), i32=st.booleans())
# examples: ragged K slices (10 groups in 3 slices of 4) and a ragged last row tile; bits 8 at G=1; nib with
# ragged K, 3 tiles per trip and tiles past N; row_tiles 1 rounded up to one trip of 2 tiles; nib without
# prefetch; lean byte words with a 4-, 2- and 1-bit plane
@example(n=70, k=300, bits=5, block=64, bn=4, g=4, split_k=0, row_tiles=3, prefetch=True, dtype=torch.float32,
         seed=0, depth=1, pingpong=False, nib=False, lean=False, early=False, fused=True, i32=True)
@example(n=33, k=200, bits=8, block=32, bn=8, g=1, split_k=0, row_tiles=0, prefetch=False, dtype=torch.bfloat16,
         seed=1, depth=1, pingpong=False, nib=False, lean=False, early=False, fused=False, i32=False)
@example(n=70, k=300, bits=3, block=64, bn=4, g=4, split_k=0, row_tiles=3, prefetch=True, dtype=torch.float32,
         seed=2, depth=2, pingpong=True, nib=True, lean=True, early=True, fused=False, i32=True)
@example(n=37, k=250, bits=1, block=32, bn=2, g=2, split_k=3, row_tiles=1, prefetch=True, dtype=torch.float16,
         seed=3, depth=1, pingpong=True, nib=True, lean=False, early=False, fused=False, i32=False)
@example(n=50, k=256, bits=2, block=128, bn=4, g=4, split_k=0, row_tiles=0, prefetch=False, dtype=torch.float32,
         seed=4, depth=1, pingpong=False, nib=True, lean=True, early=True, fused=False, i32=True)
@example(n=45, k=300, bits=7, block=32, bn=4, g=2, split_k=2, row_tiles=3, prefetch=True, dtype=torch.float32,
         seed=5, depth=2, pingpong=False, nib=False, lean=True, early=True, fused=True, i32=False)
def test_gemv2_configs(device, n, k, bits, block, bn, g, split_k, row_tiles, prefetch, dtype, seed, depth, pingpong,
                       nib, lean, early, fused, i32):
    kp = -(-k // block) * block
    assume(n * kp <= 20_000)
    qw = make_weight(n, k, bits, block, seed, device)
    x = make_x((1,), k, dtype, seed, device)
    unroll = depth + 1 if prefetch and pingpong else 1
    cfg = Config("gemv2", BN=bn, G=g, split_k=split_k, row_tiles=row_tiles, prefetch=prefetch, depth=depth,
                 unroll=unroll, nib=nib, lean=lean, early=early, fused=fused, i32=i32)
    y = dequant_matmul_triton_method(x, qw, False, dtype, config=cfg)
    check(y, x, qw, False, dtype, str(cfg))
    if fused:  # the fused split-K tail leaves its counters at zero
        from hlwq_kernels.dequant_matmul import triton as dq
        buf = dq._G2_COUNTERS.get(x.device)
        assert buf is None or int(buf.abs().sum()) == 0


# (k, block, G, slices): 2, 3 and 4 K slices; a ragged last slice (K=300: 10 groups in slices of 4)
G3_SLICES = [(256, 128, 4, 2), (384, 128, 4, 3), (512, 128, 4, 4), (300, 64, 4, 3)]


@pytest.mark.parametrize("k,block,g,slices", G3_SLICES, ids=[f"k{k}-s{s}" for k, _, _, s in G3_SLICES])
# the fused tail sums fp32 partials whatever the width; 3 / 4 / 5 bits take each option set below once,
# 8 the L1 codebook decode (every width's decode: test_gemv2_every_bit_width). All 8 widths here took
# ~4.7 min in the interpreter.
@pytest.mark.parametrize("bits", [3, 4, 5, 8])
def test_gemv2_fused_splitk(device, bits, k, block, g, slices):
    """Config.fused: the split-K sum in the kernel (last-arriving slice sums the partials), M = 1 and 2,
    ragged N (37 rows: a ragged last row tile and row range), out dtypes (no bf16 x: at 1 bit, K=512 its
    bf16 rotation alone puts every kernel, gemv included, past the rival bound); the same call three
    times, and the counters back at zero after every call (the next call and graph replays rely on it)."""
    from hlwq_kernels.dequant_matmul import triton as dq

    qw = make_weight(37, k, bits, block, bits, device)
    kp = qw.padded_in_features
    assert -(-(kp // 32) // g) == slices
    opts = [dict(), dict(lean=True, unroll=2), dict(nib=True, lean=True, unroll=2, early=True)][bits % 3]
    for m, dtype, out_dtype in ((1, torch.float32, torch.float32), (2, torch.float16, torch.bfloat16),
                                (2, torch.float16, torch.float32)):
        x = make_x((m,), k, dtype, bits + m, device)
        cfg = Config("gemv2", BN=4, G=g, prefetch=True, row_tiles=2, fused=True, **opts)
        for rep in range(3):
            y = dequant_matmul_triton_method(x, qw, False, out_dtype, config=cfg)
            check(y, x, qw, False, out_dtype, f"fused {cfg} m={m} rep={rep}")
            assert int(dq._G2_COUNTERS[x.device].abs().sum()) == 0
        # bit-identical to the two-launch path (same slice order)
        ref = dequant_matmul_triton_method(x, qw, False, out_dtype, config=cfg._replace(fused=False))
        assert torch.equal(y, ref)


def test_gemv2_fused_single_slice_and_growth(device):
    """fused with one K slice is the plain kernel; a launch needing more counters than the buffer
    holds grows it (the old buffer kept alive) and still resets every slot."""
    from hlwq_kernels.dequant_matmul import triton as dq

    qw = make_weight(70, 256, 5, 128, 3, device)
    x = make_x((1,), 256, torch.float32, 3, device)
    y = dequant_matmul_triton_method(x, qw, False, torch.float32, config=Config("gemv2", BN=4, G=128, fused=True))
    check(y, x, qw, False, torch.float32, "fused, one slice")
    old = dq._G2_MIN_COUNTERS
    dq._G2_COUNTERS.pop(x.device, None)
    try:
        dq._G2_MIN_COUNTERS = 4
        for rt in (9, 1):  # 2 then 18 counters (70 rows = 18 tiles of 4)
            cfg = Config("gemv2", BN=4, G=4, row_tiles=rt, fused=True)
            y = dequant_matmul_triton_method(x, qw, False, torch.float32, config=cfg)
            check(y, x, qw, False, torch.float32, str(cfg))
            buf = dq._G2_COUNTERS[x.device]
            assert buf.numel() >= 18 // rt and int(buf.abs().sum()) == 0
    finally:
        dq._G2_MIN_COUNTERS = old


# (out features, Kp, bits) whose M=1 default differs: N <= 4096 at K = 4096 and with K slices (5 bits: BN 4
# lean slots), N > 4096 per width, and 3 bits at N >= 16384 (2-warp programs, 12 row tiles)
PICKED = [(4096, 4096, 5), (4096, 12288, 5), (24576, 4096, 5), (24576, 4096, 4), (24576, 4096, 3),
          (8192, 4096, 3), (24576, 4096, 2)]


@pytest.mark.parametrize("n_pick,kp_pick,bits", PICKED, ids=[f"{n}x{k}-{b}" for n, k, b in PICKED])
def test_gemv2_default_configs(device, n_pick, kp_pick, bits):
    """Each M=1 default config of ``_pick`` on a small weight (40 rows, ragged against every BN x row
    tiles; K = 384: three norm blocks, one K slice)."""
    from hlwq_kernels.dequant_matmul.triton import _pick

    cfg = _pick(1, n_pick, kp_pick, 128, "gemv2", bits)
    qw = make_weight(40, 384, bits, 128, bits, device)
    x = make_x((1,), 384, torch.bfloat16 if ON_GPU else torch.float16, bits, device)
    y = dequant_matmul_triton_method(x, qw, False, x.dtype, config=cfg)
    check(y, x, qw, False, x.dtype, str(cfg))


# (out features, Kp, bits) whose M=16 default is the pipelined dot2 loop: N >= 16384 (split 1), K > 4096 (BN 128)
PICKED16 = [(24576, 4096, 5), (24576, 4096, 4), (4096, 12288, 5), (4096, 12288, 4), (8192, 4096, 5)]


@pytest.mark.parametrize("n_pick,kp_pick,bits", PICKED16, ids=[f"{n}x{k}-{b}" for n, k, b in PICKED16])
def test_dot2_default_configs(device, n_pick, kp_pick, bits):
    """Each M=16 default config of ``_pick`` on a small weight (70 rows: ragged against BN 64 and 128; K = 512:
    four K-steps, split 1 or the split rule)."""
    from hlwq_kernels.dequant_matmul.triton import _pick

    cfg = _pick(16, n_pick, kp_pick, 128, "dot2", bits)
    assert (cfg.pipe == 3) == ((n_pick, kp_pick) != (8192, 4096)), cfg
    qw = make_weight(70, 512, bits, 128, bits, device)
    x = make_x((16,), 512, torch.bfloat16 if ON_GPU else torch.float16, bits, device)
    y = dequant_matmul_triton_method(x, qw, False, x.dtype, config=cfg)
    check(y, x, qw, False, x.dtype, str(cfg))


def test_split_k_rule(monkeypatch):
    """Split-K counts on a 132-SM GPU: dot2 (M <= 16) under 4 programs per SM twice the one-wave rule, at
    least 4 and at most 8 (the session-4 sweeps' best on the 5 Qwen3.5-9B shapes); dot keeps one wave, and
    so does dot2 on a large grid (lm_head: 3880 programs)."""
    from hlwq_kernels.dequant_matmul import triton as dq

    monkeypatch.setattr(dq, "_num_sms", lambda device: 132)
    d2 = Config("dot2", BN=64, G=4, BM=16, num_stages=1, pf=1)
    dev = torch.device("cpu")
    # (out features, K-steps of 128) -> splits: 8192x4096, 4096^2, 24576x4096, 4096x12288, 2048x4096
    for n, steps, want in [(8192, 32, 4), (4096, 32, 8), (24576, 32, 4), (4096, 96, 6), (2048, 32, 8),
                           (248320, 32, 1)]:
        assert dq._split_k(d2, n // 64, steps, dev) == want, (n, steps)
    dot = Config("dot", BN=64, G=4, BM=16)
    assert [dq._split_k(dot, n // 64, 32, dev) for n in (8192, 4096, 24576, 2048)] == [2, 4, 1, 8]


@pytest.mark.parametrize("bits", [1, 2, 3, 4, 5, 6, 7, 8])
def test_dot2_every_bit_width(device, bits):
    """The opt-in M = 5..256 tensor-core kernel (method="dot2"), fragment order + prefetch."""
    qw = make_weight(64, 256, bits, 128, bits, device)
    x = make_x((16,), 256, torch.bfloat16 if ON_GPU else torch.float16, bits, device)
    y = dequant_matmul_triton_method(x, qw, False, x.dtype, "dot2")
    check(y, x, qw, False, x.dtype, f"dot2 bits={bits}")


@pytest.mark.parametrize("m,n,k,bits,block,cfg,dtype", [
    # ragged M (tokens clamped), ragged N (rows clamped, FRAG row order), split-K with a ragged last split
    (20, 70, 300, 5, 64, Config("dot2", BN=32, G=2, BM=16, num_stages=1, split_k=3, pf=2), torch.float32),
    (5, 33, 256, 3, 128, Config("dot2", BN=64, G=4, BM=16, num_stages=1, pf=1, l2pf=4), torch.bfloat16),
    (32, 130, 512, 5, 128, Config("dot2", BN=64, G=4, BM=32, num_stages=1, split_k=2, pf=0, unroll=2),
     torch.float16),
    (9, 40, 200, 8, 32, Config("dot2", BN=64, G=1, BM=16, num_stages=1, pf=0, frag=False), torch.bfloat16),
    (17, 100, 384, 4, 128, Config("dot2", BN=128, G=4, BM=16, num_warps=8, num_stages=1, pf=2, unroll=2),
     torch.float32),
    (24, 64, 640, 6, 128, Config("dot2", BN=64, G=2, BM=32, num_stages=1, split_k=4, unroll=2, l2pf=2),
     torch.bfloat16),
    (7, 48, 96, 2, 32, Config("dot2", BN=32, G=1, BM=16, num_stages=1, split_k=2, pf=2, unroll=3), torch.float16),
    (16, 96, 1024, 1, 128, Config("dot2", BN=64, G=4, BM=16, num_stages=1, split_k=3, pf=1, unroll=2),
     torch.bfloat16),  # 8 K-steps in 3 splits of 3: the last split has 2 (clamped step, zero norm)
    (12, 50, 256, 7, 64, Config("dot2", BN=64, G=2, BM=16, num_stages=1, pf=1, frag=False, l2pf=1), torch.float32),
    # the pipelined K loop (pipe): every width's planes as pieces, ragged M / N, a ragged last split, fp32 x
    (16, 70, 1024, 5, 128, Config("dot2", BN=64, G=4, BM=16, num_stages=1, split_k=3, pipe=3), torch.bfloat16),
    (9, 64, 512, 3, 128, Config("dot2", BN=64, G=4, BM=16, num_stages=1, pipe=4), torch.float16),
    (16, 40, 300, 7, 64, Config("dot2", BN=32, G=2, BM=16, num_stages=1, split_k=2, pipe=2), torch.float32),
    (5, 64, 256, 4, 128, Config("dot2", BN=64, G=4, BM=16, num_stages=1, pipe=3), torch.bfloat16),
    (16, 33, 256, 1, 32, Config("dot2", BN=64, G=1, BM=16, num_stages=1, pipe=3), torch.bfloat16),
    (16, 64, 256, 6, 128, Config("dot2", BN=64, G=4, BM=16, num_stages=1, pipe=3), torch.bfloat16),
    (16, 64, 256, 2, 128, Config("dot2", BN=64, G=4, BM=16, num_stages=1, pipe=3), torch.bfloat16),
    (16, 64, 256, 8, 128, Config("dot2", BN=64, G=4, BM=16, num_stages=1, pipe=3), torch.bfloat16),
    # + the lean decode and x^T copied in operand order (xperm)
    (16, 70, 1024, 5, 128, Config("dot2", BN=64, G=4, BM=16, num_stages=1, split_k=3, pipe=3, lean=True, xperm=True),
     torch.bfloat16),
    (11, 130, 512, 4, 128, Config("dot2", BN=128, G=4, BM=16, num_warps=8, num_stages=1, pipe=3, lean=True,
                                  xperm=True), torch.float16),
    (16, 40, 384, 7, 128, Config("dot2", BN=64, G=4, BM=16, num_stages=1, pipe=4, lean=True, xperm=True),
     torch.float32),
    (16, 64, 256, 3, 128, Config("dot2", BN=64, G=4, BM=16, num_stages=1, pipe=3, lean=True, xperm=True),
     torch.bfloat16),
    (16, 64, 256, 6, 64, Config("dot2", BN=64, G=2, BM=16, num_stages=1, pipe=3, lean=True, xperm=True),
     torch.bfloat16),
    (16, 64, 256, 5, 128, Config("dot2", BN=64, G=4, BM=16, num_stages=1, pipe=2, xperm=True), torch.bfloat16),
])
def test_dot2_configs(device, m, n, k, bits, block, cfg, dtype):
    qw = make_weight(n, k, bits, block, bits + m, device)
    x = make_x((m,), k, dtype, bits + m, device)
    y = dequant_matmul_triton_method(x, qw, False, dtype, config=cfg)
    check(y, x, qw, False, dtype, f"m={m} n={n} k={k} bits={bits} {cfg}")


def test_dot2_rejects_bad_config(device):
    qw = make_weight(16, 64, 3, 32, 0, device)
    x = make_x((8,), 64, torch.float32, 0, device)
    for cfg in (Config("dot2", BN=64, G=1, pf=3), Config("dot2", BN=24, G=1), Config("dot2", BN=64, G=1, pipe=1)):
        with pytest.raises(ValueError, match="dot2"):
            dequant_matmul_triton_method(x, qw, False, torch.float32, config=cfg)


def test_gemv2_rejects_non_power_of_two(device):
    qw = make_weight(16, 64, 3, 32, 0, device)
    x = make_x((1,), 64, torch.float32, 0, device)
    with pytest.raises(ValueError, match="powers of two"):
        dequant_matmul_triton_method(x, qw, False, torch.float32, config=Config("gemv2", BN=4, G=3))
    with pytest.raises(ValueError, match="depth must be 1 or 2"):
        dequant_matmul_triton_method(x, qw, False, torch.float32, config=Config("gemv2", BN=4, G=4, depth=3))
    with pytest.raises(ValueError, match="unroll must be 1 or depth"):
        dequant_matmul_triton_method(x, qw, False, torch.float32,
                                     config=Config("gemv2", BN=4, G=4, prefetch=True, unroll=3))


def test_slab_path_many_slabs(device, monkeypatch):
    from hlwq_kernels.dequant_matmul import triton as dq
    monkeypatch.setattr(dq, "SLAB_BYTES", 4096)  # 32-row slabs: 3 slabs for 70 rows, the last ragged
    monkeypatch.setattr(dq, "SLAB_MIN_ROWS", 0)
    qw = make_weight(70, 200, 3, 64, 9, device)
    x = make_x((5,), 200, torch.float16, 9, device)
    y = dequant_matmul_triton_method(x, qw, False, torch.float32, config=Config("slab", BN=32, G=2))
    check(y, x, qw, False, torch.float32, "slabs")


def test_leading_dims_and_rotation_sharing(device):
    qw = make_weight(48, 100, 4, 32, 11, device)
    x = make_x((2, 3), 100, torch.float32, 11, device)
    y = dequant_matmul(x, qw)
    assert y.shape == (2, 3, 48)
    xr = fwht(F.pad(x, (0, qw.padded_in_features - 100)), block=qw.block)
    y2 = dequant_matmul(xr, qw, x_rotated=True)
    assert_close_verbose(y2, y, atol=1e-4, what="x_rotated=True vs False")
    check(y, x, qw, False, torch.float32)


def test_equals_unfused_matmul_with_dequantized_weight(device):
    """The contract in user terms: x @ dequantize_weight(w).T (fp32, small shapes)."""
    qw = make_weight(40, 200, 5, 128, 5, device)
    x = make_x((3,), 200, torch.float32, 5, device)
    want = x.cpu() @ dequantize_weight(qw.to("cpu"), impl="reference").T
    assert_close_verbose(dequant_matmul(x, qw), want, atol=1e-4, rtol=1e-4)


def test_empty_and_auto(device):
    qw = make_weight(16, 64, 3, 32, 0, device)
    x = make_x((0,), 64, torch.float32, 0, device)
    assert dequant_matmul(x, qw).shape == (0, 16)
    x = make_x((2,), 64, torch.float32, 0, device)
    assert_close_verbose(dequant_matmul(x, qw, impl="auto"), dequant_matmul(x, qw, impl="reference"), atol=1e-4)


def test_does_not_mutate_inputs(device):
    qw = make_weight(16, 64, 5, 32, 0, device)
    x = make_x((2,), 64, torch.bfloat16, 0, device)
    before = [t.clone() for t in (x, qw.packed, qw.norms, qw.codebook)]
    dequant_matmul(x, qw)
    for a, b in zip(before, (x, qw.packed, qw.norms, qw.codebook)):
        assert torch.equal(a, b)


# ---------------------------------------------------------------------------------------------
def test_validation_errors():
    qw = make_weight(8, 40, 4, 32, 0, "cpu")
    x = torch.randn(2, 40)
    with pytest.raises(TypeError, match="w must be an HLWQWeight"):
        dequant_matmul(x, qw.packed)
    with pytest.raises(ValueError, match=r"x.shape\[-1\] must be w.shape\[1\] = 40, got 64"):
        dequant_matmul(torch.randn(2, 64), qw)
    with pytest.raises(ValueError, match=r"padded_in_features .* = 64, got 40"):
        dequant_matmul(x, qw, x_rotated=True)
    with pytest.raises(TypeError, match="x.dtype"):
        dequant_matmul(x.to(torch.int32), qw)
    with pytest.raises(TypeError, match="out_dtype"):
        dequant_matmul(x, qw, out_dtype=torch.int8)
    with pytest.raises(TypeError, match="x_rotated must be a bool"):
        dequant_matmul(x, qw, x_rotated=1)
    with pytest.raises(ValueError, match="impl must be one of"):
        dequant_matmul(x, qw, impl="cuda")
    bad = type(qw)(qw.packed[:, :-1], qw.norms, qw.codebook, qw.bits, qw.block, qw.shape)
    with pytest.raises(ValueError, match="w.packed must have shape"):
        dequant_matmul(x, bad)


# ---------------------------------------------------------------------------------------------
# GPU only: real shapes, torch.compile and CUDA graphs
@needs_gpu
@pytest.mark.parametrize("m", [1, 4, 5, 16, 100, 2048])
@pytest.mark.parametrize("bits", [2, 3, 4, 5, 8])
def test_gpu_qwen_shape(m, bits):
    qw = make_weight(1024, 4096, bits, 128, bits, "cuda")
    x = make_x((m,), 4096, torch.bfloat16, m, "cuda")
    check(dequant_matmul(x, qw), x, qw, False, torch.bfloat16, f"m={m} bits={bits}")


QWEN_BIG = [(1, 24576, 4096, 3), (1, 24576, 4096, 4), (1, 4096, 12288, 5), (16, 8192, 4096, 5),
            (16, 4096, 12288, 5), (16, 24576, 4096, 5)]


@needs_gpu
@pytest.mark.parametrize("m,n,k,bits", QWEN_BIG, ids=[f"m{m}-{n}x{k}-{b}" for m, n, k, b in QWEN_BIG])
def test_gpu_qwen_big_shapes(m, n, k, bits):
    """The defaults at the Qwen3.5-9B shapes where the choice depends on N and K (3-bit 2-warp programs,
    split-K GEMV slots, dot2's split count)."""
    qw = make_weight(n, k, bits, 128, bits, "cuda")
    x = make_x((m,), k, torch.bfloat16, m, "cuda")
    check(dequant_matmul(x, qw), x, qw, False, torch.bfloat16, f"m={m} {n}x{k} bits={bits}")


@needs_gpu
@pytest.mark.parametrize("m", [1, 16, 256])
def test_gpu_torch_compile_fullgraph(m):
    qw = make_weight(512, 1000, 5, 128, 0, "cuda")
    x = make_x((m,), 1000, torch.bfloat16, 0, "cuda")

    def f(x):
        return dequant_matmul(x * 2.0, qw, out_dtype=torch.float32) + 1.0

    eager = f(x)
    compiled = torch.compile(f, fullgraph=True)(x)
    assert torch.equal(compiled, eager)


@needs_gpu
@pytest.mark.parametrize("m", [1, 16, 300])
def test_gpu_cuda_graph_capture_replay(m):
    qw = make_weight(2048, 512, 4, 128, 1, "cuda")
    x = make_x((m,), 512, torch.bfloat16, 1, "cuda")
    eager = dequant_matmul(x, qw)
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):  # warm up (compile, caches) outside the capture
        for _ in range(2):
            dequant_matmul(x, qw)
    torch.cuda.current_stream().wait_stream(s)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        y = dequant_matmul(x, qw)
    x.copy_(make_x((m,), 512, torch.bfloat16, 2, "cuda"))
    graph.replay()
    torch.cuda.synchronize()
    assert torch.equal(y, dequant_matmul(x, qw))
    assert not torch.equal(y, eager)


@needs_gpu
def test_gpu_gemv2_probe():
    """The diagnostic timestamps (``_gemv2(probe=)``, ``.notes/dq_probe.py``): every program writes its start, two
    loop points and its end in order, and an SM id; the output is the unprobed kernel's, bit for bit."""
    from hlwq_kernels.dequant_matmul import triton as dq

    qw = make_weight(1000, 1024, 5, 128, 4, "cuda")
    x = make_x((1,), 1024, torch.bfloat16, 4, "cuda")
    cfg = Config("gemv2", BN=4, G=128, prefetch=True, lean=True, unroll=2, row_tiles=8)
    probe = torch.zeros(8 * 1000, dtype=torch.int64, device="cuda")
    y = dq._gemv2(x, qw, torch.bfloat16, cfg, probe)
    assert torch.equal(y, dq._gemv2(x, qw, torch.bfloat16, cfg))
    p = probe.view(-1, 8)[: -(-250 // 8)].cpu()  # 250 row tiles of 4 in ranges of 8: 32 programs
    assert bool((p[:, 0] > 0).all()) and bool((p[:, 0] <= p[:, 1]).all()) and bool((p[:, 1] <= p[:, 2]).all())
    assert bool((p[:, 2] <= p[:, 3]).all())
    assert int(p[:, 4].max()) < torch.cuda.get_device_properties(0).multi_processor_count
    with pytest.raises(ValueError, match="probe needs"):
        dq._gemv2(x, qw, torch.bfloat16, cfg, probe[:8])


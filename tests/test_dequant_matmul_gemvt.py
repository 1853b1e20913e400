"""The TMA-ring M = 1 GEMV (hlwq_kernels/dequant_matmul/gemvt.py).

On the CPU (Triton's interpreter cannot run Gluon): the kernel's integer decode (``gemvt.decode_words``: the
nibble/bit merge by multiplication and the per-code shifts) against ``unpack_bits`` on random words, and the
kernel's coverage rule. On the GPU: the compiled kernel against the reference over shapes, bit widths, dtypes and
ring / tile / program options (ragged last tiles, programs with no tile, several K slices).
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import example, given, settings
from hypothesis import strategies as st

from hlwq_kernels.dequant_matmul import gemvt as T
from hlwq_kernels.fwht import fwht
from hlwq_kernels.pack_bits import pack_bits, unpack_bits
from test_dequant_matmul import check, make_weight, make_x

ON_GPU = torch.cuda.is_available()
needs_gpu = pytest.mark.skipif(not ON_GPU, reason="needs CUDA")


@settings(max_examples=60, deadline=None)
@given(bits=st.sampled_from(T.BITS_OK), seed=st.integers(0, 2**31 - 1))
@example(bits=5, seed=0)
@example(bits=3, seed=0)
def test_decode_words_matches_unpack(bits, seed):
    """One thread's view of a 128-code block of rows: nibble words 4 t .. 4 t + 3 (2-bit words 2 t, 2 t + 1 at 3
    bits) and 1-bit word t give codes 32 t .. 32 t + 31 as the 5 bits each shuffle reads, and the lane they name
    must hold that code's level: at 4/5 bits the table repeats every 2**bits lanes (the low ``bits`` bits must equal
    the code; at 4 bits bit 4 is another code's), at 3 bits two tables read bit 4 or bit 3 (``table_entry``)."""
    g = torch.Generator().manual_seed(seed)
    codes = torch.randint(0, 1 << bits, (8, 128), generator=g, dtype=torch.int32)
    if seed % 3 == 0:  # the extremes: all-ones and alternating patterns
        codes[0] = (1 << bits) - 1
        codes[1, ::2] = (1 << bits) - 1
        codes[1, 1::2] = 0
    packed = pack_bits(codes, bits, impl="reference")  # [8, 128 * bits / 32]
    assert torch.equal(unpack_bits(packed, bits, 128, impl="reference"), codes)
    mw = T.main_width(bits)  # the widest plane: 4 * mw words of a 128-code block, mw per thread
    nib = packed[:, :4 * mw].reshape(8, 4, mw)
    bitw = packed[:, 4 * mw: 4 * mw + 4] if bits in (3, 5) else None  # 1-bit plane: thread t's word t
    got = T.decode_words(nib, bitw, bits)  # [8, 4 threads, 32]: the 5 bits each shuffle reads
    assert ((got >= 0) & (got < 32)).all()
    assert torch.equal(T.table_entry(got, bits), codes.reshape(8, 4, 32).long())


def test_supported():
    w = torch.zeros(8, 640, dtype=torch.int32)
    nrm = torch.zeros(8, 32, dtype=torch.float16)
    assert T.supported(1, 5, 128, 4096, w, nrm)
    assert not T.supported(2, 5, 128, 4096, w, nrm)  # one token only
    assert T.supported(1, 3, 128, 4096, torch.zeros(8, 384, dtype=torch.int32), nrm)
    assert not T.supported(1, 2, 128, 4096, torch.zeros(8, 256, dtype=torch.int32), nrm)  # 3, 4 and 5 bits
    assert not T.supported(1, 5, 64, 4096, w, nrm)  # 128-blocks
    assert not T.supported(1, 5, 128, 2048, w, nrm)  # whole 4096-code K slices
    assert not T.supported(1, 5, 128, 4096, w[:, ::2], nrm)  # contiguous rows


def test_default_options():
    """Where gemvt is the M = 1 default (measured faster than gemv2, perf/RESULTS.md S13-4, S14-2)."""
    assert T.default_options(24576, 4096, 5) == T.DEFAULTS[5]
    assert T.default_options(248320, 4096, 4) == T.DEFAULTS[4]
    assert T.default_options(8192, 4096, 5) is None  # 5 bits: gemv2 at N <= 8192
    assert T.default_options(4096, 12288, 5) is None  # and at K = 12288
    # with PDL (pdl_options): every shape with N >= 2048
    assert T.default_options(8192, 4096, 5, pdl=True) == dict(rows=8, stages=2, per_sm=3)
    assert T.default_options(24576, 4096, 5, pdl=True) == dict(rows=8, stages=3, per_sm=3)
    assert T.default_options(4096, 12288, 5, pdl=True) == dict(rows=8, stages=2, per_sm=4)
    assert T.default_options(2048, 4096, 4, pdl=True) == dict(rows=8, stages=2, per_sm=4)
    assert T.default_options(248320, 4096, 4, pdl=True) == dict(rows=8, stages=2, per_sm=4)
    assert T.default_options(8192, 4096, 3, pdl=True) == dict(rows=8, stages=2, per_sm=4)
    assert T.default_options(1024, 4096, 3, pdl=True) is None
    assert T.default_options(8192, 4096, 4) is None  # 4 bits: gemv2 on 8192 x 4096 only
    assert T.default_options(4096, 4096, 4) == T.DEFAULTS[4]
    assert T.default_options(4096, 12288, 4) == T.DEFAULTS[4]
    assert T.default_options(4096, 12288, 3) == T.DEFAULTS[3]  # 3 bits: every measured shape
    assert T.default_options(2048, 4096, 3) == T.DEFAULTS[3]
    assert T.default_options(1024, 4096, 3) is None  # (not measured)
    assert T.default_options(24576, 4096, 2) is None


@pytest.mark.parametrize("kw", [dict(rows=1), dict(rows=16), dict(rows=8, wg=4), dict(rows=4, stages=1),
                                dict(rows=8, wg=2, rotated=False)])
def test_gemvt_bad_options(kw):
    qw = make_weight(8, 4096, 5, 128, 0, "cpu")
    with pytest.raises(ValueError, match="gemvt"):
        T.gemvt(torch.zeros(1, 4096), qw, torch.float32, **kw)


@needs_gpu
@settings(max_examples=30, deadline=None)
@given(bits=st.sampled_from(T.BITS_OK), n=st.sampled_from([64, 100, 1000, 4096]),
       k=st.sampled_from([4096, 8192, 12288]), dtype=st.sampled_from([torch.bfloat16, torch.float16, torch.float32]),
       out_dtype=st.sampled_from([None, torch.float32]), seed=st.integers(0, 2**16))
@example(bits=5, n=4096, k=4096, dtype=torch.bfloat16, out_dtype=None, seed=0)
@example(bits=4, n=1000, k=12288, dtype=torch.float16, out_dtype=torch.float32, seed=1)
@example(bits=5, n=3, k=8192, dtype=torch.bfloat16, out_dtype=None, seed=2)
def test_gpu_gemvt_matches_reference(bits, n, k, dtype, out_dtype, seed):
    """N >= 64 in the random draws: the tolerance is twice the plain-PyTorch rival's max error, and with one or
    three fp32 outputs that max can be 0 (S13-1: N = 1, K = 4096, fp32: the rival exact, the kernel 8e-6 off on
    a sum of 4096 fp32 products in another order); the N = 3 case runs in bf16."""
    qw = make_weight(n, k, bits, 128, seed, "cuda")
    x = make_x((1,), k, dtype, seed, "cuda")
    out_dtype = out_dtype or dtype
    y = T.gemvt(x, qw, out_dtype)
    check(y, x, qw, True, out_dtype, f"gemvt bits={bits} {n}x{k}")


@needs_gpu
@settings(max_examples=24, deadline=None)
@given(bits=st.sampled_from(T.BITS_OK), n=st.sampled_from([64, 1000, 4096]), k=st.sampled_from([4096, 8192, 12288]),
       dtype=st.sampled_from([torch.bfloat16, torch.float16, torch.float32]), pdl=st.booleans(),
       seed=st.integers(0, 2**16))
@example(bits=3, n=4096, k=4096, dtype=torch.bfloat16, pdl=False, seed=0)
@example(bits=5, n=1000, k=12288, dtype=torch.float32, pdl=True, seed=1)
def test_gpu_gemvt_fused_rotation(bits, n, k, dtype, pdl, seed):
    """``rotated=False``: the kernel rotates x itself (two shuffle stages across the four lanes of a 128-block, five
    in-thread stages); against the reference with the rotation."""
    qw = make_weight(n, k, bits, 128, seed, "cuda")
    x = make_x((1,), k, dtype, seed, "cuda")
    y = T.gemvt(x, qw, dtype, rows=8, stages=2, per_sm=4, rotated=False, pdl=pdl)
    check(y, x, qw, False, dtype, f"fused rotation bits={bits} {n}x{k}")


@needs_gpu
@pytest.mark.parametrize("bits", T.BITS_OK)
@pytest.mark.parametrize("rows,stages,per_sm,programs,wg", [(2, 2, 1, None, 1), (2, 3, 2, None, 1),
                                                            (4, 8, 2, None, 1), (8, 4, 1, None, 2),
                                                            (16, 4, 1, None, 2), (8, 6, 1, 7, 1),
                                                            (4, 4, 1, 1000, 1), (4, 4, 2, None, 2)])
def test_gpu_gemvt_options(bits, rows, stages, per_sm, programs, wg):
    """Ring depth 2..8, 2..16 rows per slot, 1 or 2 warp groups, a ragged last tile (N = 1000 + 3), few programs
    (7: many tiles each) and more programs than tiles (1000 > 251: some get none)."""
    qw = make_weight(1003, 8192, bits, 128, rows, "cuda")
    x = make_x((1,), 8192, torch.bfloat16, stages, "cuda")
    y = T.gemvt(x, qw, torch.bfloat16, rows=rows, stages=stages, per_sm=per_sm, programs=programs, wg=wg)
    check(y, x, qw, True, torch.bfloat16, f"rows={rows} stages={stages} programs={programs} wg={wg}")


@needs_gpu
@pytest.mark.parametrize("bits", sorted(T.DEFAULTS))
def test_gpu_gemvt_is_the_default_where_measured(bits):
    """dequant_matmul at M = 1 takes gemvt where ``gemvt.default_options`` says (N = 16384 at every width) and gemv2
    elsewhere (N = 8192 at 5 bits, 1024 at 3/4); the default path is right, captures in a CUDA graph and replays with
    new inputs; method="gemvt" forces it."""
    from hlwq_kernels.dequant_matmul import dequant_matmul, dequant_matmul_triton_method

    calls = []
    real = T.gemvt
    T.gemvt = lambda *a, **kw: calls.append(kw) or real(*a, **kw)
    try:
        qw = make_weight(16384, 4096, bits, 128, 0, "cuda")
        x = make_x((1,), 4096, torch.bfloat16, 1, "cuda")
        check(dequant_matmul(x, qw), x, qw, False, torch.bfloat16, "auto, N = 16384")
        assert calls and calls[-1] == dict(T.DEFAULTS[bits], pdl=False, rotated=False)  # x rotated inside
        xr = fwht(x, block=128)
        check(dequant_matmul(xr, qw, x_rotated=True), xr, qw, True, torch.bfloat16, "auto, rotated x")
        assert calls[-1] == dict(T.DEFAULTS[bits], pdl=False, rotated=True)
        g = torch.cuda.CUDAGraph()
        xs = x.clone()
        with torch.cuda.graph(g):
            ys = dequant_matmul(xs, qw)
        x2 = make_x((1,), 4096, torch.bfloat16, 2, "cuda")
        xs.copy_(x2)
        g.replay()
        check(ys, x2, qw, False, torch.bfloat16, "graph replay")
        calls.clear()
        n_small = 8192 if bits == 5 else 1024
        small = make_weight(n_small, 4096, bits, 128, 1, "cuda")
        check(dequant_matmul(x, small), x, small, False, torch.bfloat16, f"auto, N = {n_small}")
        assert not calls  # gemv2 there
        check(dequant_matmul_triton_method(x, small, False, torch.bfloat16, method="gemvt"), x, small, False,
              torch.bfloat16, "forced")
        assert calls
        with pytest.raises(ValueError, match="gemvt"):
            dequant_matmul_triton_method(make_x((2,), 4096, torch.bfloat16, 3, "cuda"), small, False, torch.bfloat16,
                                         method="gemvt")
    finally:
        T.gemvt = real


@needs_gpu
@pytest.mark.parametrize("bits", T.BITS_OK)
@pytest.mark.parametrize("rows,stages,programs", [(8, 2, None), (8, 4, None), (4, 3, 5), (2, 2, 1), (8, 2, 3000)])
def test_gpu_gemvt_tiles_at_run_time(bits, rows, stages, programs):
    """Row tiles handed out by a ticket counter (``counter=``): every tile done once, the output right on repeated
    calls with one counter (the last program puts it back to zero), also with few programs (most tiles drawn at
    run time), one program, and more programs than tiles (none drawn)."""
    n = 2999  # a ragged last tile
    qw = make_weight(n, 4096, bits, 128, rows + stages, "cuda")
    ctr = torch.zeros(2, dtype=torch.int32, device="cuda")
    for call in range(3):
        x = make_x((1,), 4096, torch.bfloat16, call, "cuda")
        y = T.gemvt(x, qw, torch.bfloat16, rows=rows, stages=stages, programs=programs, counter=ctr)
        check(y, x, qw, True, torch.bfloat16, f"call {call}")
        assert ctr.tolist() == [0, 0]
        assert torch.equal(y, T.gemvt(x, qw, torch.bfloat16, rows=rows, stages=stages, programs=programs))


def test_gemvt_counter_checks():
    qw = make_weight(8, 8192, 5, 128, 0, "cpu")
    with pytest.raises(ValueError, match="K = 4096"):
        T.gemvt(torch.zeros(1, 8192), qw, torch.float32, counter=torch.zeros(2, dtype=torch.int32))


@needs_gpu
def test_gpu_gemvt_probe_and_stagger():
    """The diagnostic timestamps (4 per program, increasing, and the SM id) and the staggered start give the same
    output as the default launch."""
    qw = make_weight(3000, 4096, 5, 128, 4, "cuda")
    x = make_x((1,), 4096, torch.bfloat16, 5, "cuda")
    probe = torch.zeros(8 * 1024, dtype=torch.int64, device="cuda")
    y0 = T.gemvt(x, qw, torch.bfloat16)
    y1 = T.gemvt(x, qw, torch.bfloat16, stagger=True, probe=probe)
    assert torch.equal(y0, y1)
    p = probe.view(-1, 8)[: min(375, 2 * torch.cuda.get_device_properties(0).multi_processor_count)].cpu()
    assert (p[:, 0] > 0).all() and (p[:, 1] >= p[:, 0]).all() and (p[:, 2] >= p[:, 1]).all()
    assert (p[:, 3] >= p[:, 2]).all() and (p[:, 4] >= 0).all()
    check(y0, x, qw, True, torch.bfloat16, "probe")


def _tma_box(desc, coords):
    """What a TMA copy of ``desc``'s box at ``coords`` delivers: element i of the box is element coords + i of the
    descriptor's view (offset = sum of (coord + i) * stride over the dims), zero where coord + i is past the view."""
    flat = desc.base.reshape(-1)
    idx = torch.zeros(desc.block_shape, dtype=torch.int64)
    ok = torch.ones(desc.block_shape, dtype=torch.bool)
    for d, (c, size, stride, box) in enumerate(zip(coords, desc.shape, desc.strides, desc.block_shape)):
        i = (c + torch.arange(box)).reshape([box if e == d else 1 for e in range(len(coords))])
        idx = idx + i * stride
        ok = ok & (i < size)
    return torch.where(ok, flat[torch.where(ok, idx, 0)], torch.zeros((), dtype=flat.dtype))


@pytest.mark.parametrize("bits,kp,rows", [(5, 8192, 4), (4, 12288, 8), (5, 4096, 2), (3, 8192, 4), (3, 4096, 8)])
def test_descriptors_address_the_kernel_order(bits, kp, rows):
    """The TMA views, replayed on the CPU: for every (row tile, K slice) the boxes the kernel asks for (widest plane at
    chunk 4 s, 1-bit plane at ``bit_plane_chunk`` + 4 s, norms at 4 s) hold [warp chunk c, row, ...] = the row's words
    4 cw s + cw c.. (cw = 128 nibble words, 64 2-bit words), its 1-bit words Kp mw / 32 + 128 s + 32 c.., its norms
    32 s + 8 c..; rows past N are zero."""
    pytest.importorskip("triton.experimental.gluon.nvidia.hopper")
    n = 3 * rows + 1  # a ragged last tile
    g = torch.Generator().manual_seed(kp + bits)
    packed = torch.randint(-2**31, 2**31 - 1, (n, kp * bits // 32), generator=g, dtype=torch.int32)
    norms = torch.rand(n, kp // 128, generator=g).half()
    wd, bd, nd = T.descriptors(packed, norms, bits, rows)
    hb = T.bit_plane_chunk(kp, bits)
    for t in range(-(-n // rows)):
        r = torch.arange(t * rows, (t + 1) * rows)
        live = (r < n)[None, :, None]
        rr = r.clamp(max=n - 1)
        for s in range(kp // T.KSLICE):
            cw = 32 * T.main_width(bits)
            want = packed[rr, 4 * cw * s: 4 * cw * (s + 1)].reshape(rows, 4, cw).permute(1, 0, 2)
            assert torch.equal(_tma_box(wd, [4 * s, t * rows, 0]), torch.where(live, want, 0))
            if bits in (3, 5):
                base = kp * T.main_width(bits) // 32 + 128 * s
                want = packed[rr, base: base + 128].reshape(rows, 4, 32).permute(1, 0, 2)
                assert torch.equal(_tma_box(bd, [hb + 4 * s, t * rows, 0]), torch.where(live, want, 0))
            else:
                assert bd is None
            want = norms[rr, 32 * s: 32 * s + 32].reshape(rows, 4, 8).permute(1, 0, 2)
            assert torch.equal(_tma_box(nd, [4 * s, t * rows, 0]), torch.where(live, want, torch.zeros((), dtype=torch.float16)))

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
from hlwq_kernels.pack_bits import pack_bits, unpack_bits
from test_dequant_matmul import check, make_weight, make_x

ON_GPU = torch.cuda.is_available()
needs_gpu = pytest.mark.skipif(not ON_GPU, reason="needs CUDA")


@settings(max_examples=60, deadline=None)
@given(bits=st.sampled_from(T.BITS_OK), seed=st.integers(0, 2**31 - 1))
@example(bits=5, seed=0)
def test_decode_words_matches_unpack(bits, seed):
    """One thread's view of a 128-code block of rows: nibble words 4 t .. 4 t + 3 and 1-bit word t give codes
    32 t .. 32 t + 31 in the 5 bits the shuffle reads; the levels' table repeats every 2**bits lanes, so the low
    ``bits`` bits must equal the code (at 4 bits bit 4 is another code's bit, read but ignored by the table)."""
    g = torch.Generator().manual_seed(seed)
    codes = torch.randint(0, 1 << bits, (8, 128), generator=g, dtype=torch.int32)
    if seed % 3 == 0:  # the extremes: all-ones and alternating patterns
        codes[0] = (1 << bits) - 1
        codes[1, ::2] = (1 << bits) - 1
        codes[1, 1::2] = 0
    packed = pack_bits(codes, bits, impl="reference")  # [8, 128 * bits / 32]
    assert torch.equal(unpack_bits(packed, bits, 128, impl="reference"), codes)
    nib = packed[:, :16].reshape(8, 4, 4)  # 4-bit plane: thread t's words 4 t .. 4 t + 3
    bitw = packed[:, 16:20] if bits == 5 else None  # 1-bit plane: thread t's word t
    got = T.decode_words(nib, bitw, bits)  # [8, 4 threads, 32]
    assert torch.equal(got & ((1 << bits) - 1), codes.reshape(8, 4, 32).long())


def test_supported():
    w = torch.zeros(8, 640, dtype=torch.int32)
    nrm = torch.zeros(8, 32, dtype=torch.float16)
    assert T.supported(1, 5, 128, 4096, w, nrm)
    assert not T.supported(2, 5, 128, 4096, w, nrm)  # one token only
    assert not T.supported(1, 3, 128, 4096, w, nrm)  # 4 and 5 bits
    assert not T.supported(1, 5, 64, 4096, w, nrm)  # 128-blocks
    assert not T.supported(1, 5, 128, 2048, w, nrm)  # whole 4096-code K slices
    assert not T.supported(1, 5, 128, 4096, w[:, ::2], nrm)  # contiguous rows


@needs_gpu
@settings(max_examples=30, deadline=None)
@given(bits=st.sampled_from(T.BITS_OK), n=st.sampled_from([1, 3, 64, 100, 1000, 4096]),
       k=st.sampled_from([4096, 8192, 12288]), dtype=st.sampled_from([torch.bfloat16, torch.float16, torch.float32]),
       out_dtype=st.sampled_from([None, torch.float32]), seed=st.integers(0, 2**16))
@example(bits=5, n=4096, k=4096, dtype=torch.bfloat16, out_dtype=None, seed=0)
@example(bits=4, n=1000, k=12288, dtype=torch.float16, out_dtype=torch.float32, seed=1)
@example(bits=5, n=3, k=8192, dtype=torch.float32, out_dtype=None, seed=2)
def test_gpu_gemvt_matches_reference(bits, n, k, dtype, out_dtype, seed):
    qw = make_weight(n, k, bits, 128, seed, "cuda")
    x = make_x((1,), k, dtype, seed, "cuda")
    out_dtype = out_dtype or dtype
    y = T.gemvt(x, qw, out_dtype)
    check(y, x, qw, True, out_dtype, f"gemvt bits={bits} {n}x{k}")


@needs_gpu
@pytest.mark.parametrize("bits", T.BITS_OK)
@pytest.mark.parametrize("rows,stages,per_sm,programs,wg", [(1, 2, 1, None, 1), (2, 3, 2, None, 1),
                                                            (4, 8, 2, None, 1), (8, 4, 1, None, 2),
                                                            (16, 4, 1, None, 2), (8, 6, 1, 7, 1),
                                                            (4, 4, 1, 1000, 1)])
def test_gpu_gemvt_options(bits, rows, stages, per_sm, programs, wg):
    """Ring depth 2..8, 1..16 rows per slot, 1 or 2 warp groups, a ragged last tile (N = 1000 + 3), few programs
    (7: many tiles each) and more programs than tiles (1000 > 251: some get none)."""
    qw = make_weight(1003, 8192, bits, 128, rows, "cuda")
    x = make_x((1,), 8192, torch.bfloat16, stages, "cuda")
    y = T.gemvt(x, qw, torch.bfloat16, rows=rows, stages=stages, per_sm=per_sm, programs=programs, wg=wg)
    check(y, x, qw, True, torch.bfloat16, f"rows={rows} stages={stages} programs={programs} wg={wg}")

"""pack_bits / unpack_bits: exhaustive and random round trips, layout checks, errors."""

import pytest
import torch
from hypothesis import example, given
from hypothesis import strategies as st

from hlwq_kernels import pack_bits, unpack_bits
from hlwq_kernels.pack_bits import packed_words, plane_offsets, plane_widths

BITS = list(range(1, 9))


@pytest.mark.parametrize("bits", BITS)
@pytest.mark.parametrize("impl", ["reference", "triton"])
def test_every_code_round_trips(device, bits, impl):
    # every code value at every position class within a 32-code group
    n = 1 << bits
    codes = torch.arange(n, dtype=torch.uint8).repeat(35)[None, :]  # rows not a multiple of 32 when n<32
    codes = torch.stack([codes[0], codes[0].roll(7)])
    packed = pack_bits(codes.to(device), bits, impl=impl)
    assert packed.dtype == torch.int32 and packed.shape == (2, packed_words(codes.shape[-1], bits))
    out = unpack_bits(packed, bits, codes.shape[-1], impl=impl)
    assert out.dtype == torch.uint8
    assert torch.equal(out.cpu(), codes)


@given(bits=st.sampled_from(BITS), lead=st.sampled_from([(1,), (3,), (63,), (2, 3)]),
       n=st.integers(1, 1100), seed=st.integers(0, 2**31 - 1),
       dtype=st.sampled_from([torch.uint8, torch.int32, torch.int64]))
@example(bits=5, lead=(1,), n=781, seed=0, dtype=torch.uint8)
@example(bits=3, lead=(63,), n=1, seed=0, dtype=torch.int64)
def test_triton_matches_reference(device, bits, lead, n, seed, dtype):
    g = torch.Generator().manual_seed(seed)
    codes = torch.randint(0, 1 << bits, (*lead, n), generator=g).to(dtype)
    ref = pack_bits(codes, bits, impl="reference")
    got = pack_bits(codes.to(device), bits, impl="triton")
    assert torch.equal(got.cpu(), ref), "packed words differ"
    back = unpack_bits(got, bits, n, impl="triton")
    assert torch.equal(back.cpu(), codes.to(torch.uint8))
    assert torch.equal(unpack_bits(ref, bits, n, impl="reference"), codes.to(torch.uint8))


@pytest.mark.parametrize("bits", BITS)
def test_layout_is_dense_bit_sliced_planes(bits):
    """Check the documented layout bit by bit (docs/FORMAT.md) on one 64-code row."""
    n = 64
    codes = torch.randint(0, 1 << bits, (n,), generator=torch.Generator().manual_seed(bits))
    words = pack_bits(codes, bits, impl="reference").tolist()
    assert len(words) == n * bits // 32  # exactly `bits` bits per code
    groups = n // 32
    for w, off in zip(plane_widths(bits), plane_offsets(bits)):
        for i in range(n):
            word = words[groups * off + (i * w) // 32] & 0xFFFFFFFF
            field = (word >> ((i * w) % 32)) & ((1 << w) - 1)
            assert field == (int(codes[i]) >> off) & ((1 << w) - 1), (w, i)


def test_padding_to_word_boundary():
    assert packed_words(1, 5) == 5 and packed_words(32, 5) == 5 and packed_words(33, 5) == 10
    codes = torch.full((33,), 31, dtype=torch.uint8)
    back = unpack_bits(pack_bits(codes, 5), 5, 64)
    assert torch.equal(back[:33], codes) and int(back[33:].max()) == 0  # padding codes are zero


@pytest.mark.parametrize("impl", ["reference", "triton"])
def test_empty_rows(device, impl):
    codes = torch.zeros(0, 40, dtype=torch.uint8, device=device)
    assert pack_bits(codes, 3, impl=impl).shape == (0, 6)
    assert unpack_bits(torch.zeros(0, 6, dtype=torch.int32, device=device), 3, 40, impl=impl).shape == (0, 40)


@pytest.mark.parametrize("bad, err, match", [
    (lambda: pack_bits(torch.tensor([0, 8]), 3), ValueError, r"codes must be in \[0, 8\) for bits=3, got values in \[0, 8\]"),
    (lambda: pack_bits(torch.tensor([-1, 2]), 3), ValueError, "codes must be in"),
    (lambda: pack_bits(torch.tensor([0.0, 1.0]), 3), TypeError, "codes.dtype"),
    (lambda: pack_bits(torch.tensor([0, 1]), 9), ValueError, "bits must be in 1..8, got 9"),
    (lambda: pack_bits(torch.tensor([0, 1]), 0), ValueError, "bits must be in 1..8, got 0"),
    (lambda: pack_bits(torch.tensor([0, 1]), 2.0), TypeError, "bits must be an int"),
    (lambda: pack_bits(torch.tensor(1), 2), ValueError, "at least 1 dimensions"),
    (lambda: unpack_bits(torch.zeros(4, dtype=torch.int32), 3, 64), ValueError, r"packed.shape\[-1\] must be"),
    (lambda: unpack_bits(torch.zeros(6, dtype=torch.int64), 3, 64), TypeError, "packed.dtype"),
    (lambda: unpack_bits(torch.zeros(6, dtype=torch.int32), 3, -1), ValueError, "n must be in"),
])
def test_validation(bad, err, match):
    with pytest.raises(err, match=match):
        bad()

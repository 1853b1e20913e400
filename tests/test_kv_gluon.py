"""The Gluon decode kernel (hlwq_kernels/kv_quant_attn/gluon.py).

On the CPU (Triton's interpreter cannot run Gluon): the coordinate maps and the kernel's tensor
algebra, replayed with numpy/torch tensor ops of the same semantics (reshape / permute / split /
join) and the lookup's PTX executed by ``lut.emulate``. On the GPU: the compiled kernel against
the reference, including that the auto dispatch takes it.
"""

from __future__ import annotations

import importlib

import numpy as np
import pytest
import torch
from hypothesis import example, given, settings
from hypothesis import strategies as st

from hlwq_kernels import hadamard_matrix, kv_quant_attn, pack_bits
from hlwq_kernels.kv_quant_attn import kv_quant_attn_triton_splits, lut
from hlwq_kernels.quantize_kv import default_codebook
from hlwq_kernels.quantize_kv.codebooks import tables

G = importlib.import_module("hlwq_kernels.kv_quant_attn.gluon")
ON_GPU = torch.cuda.is_available()


def _is_bit_permutation(f) -> bool:
    """f maps each of the 8 index bits to one bit: f(c) = OR of f(2^b) over the set bits b of c."""
    img = [f(1 << b) for b in range(8)]
    if sorted(img) != [1 << b for b in range(8)]:
        return False
    return all(f(c) == sum(img[b] for b in range(8) if c >> b & 1) for c in range(256))


def test_coordinate_maps_are_index_bit_permutations():
    """k_coord / v_coord: bijections of 0..255 that permute the index bits (so the orthonormal
    Hadamard matrix commutes with them: the kernel rotates q and the output in its own order), and
    the device-side tables equal the Python definitions."""
    kc, vc = G.perms("cpu")
    assert kc.tolist() == [G.k_coord(c) for c in range(256)]
    assert vc.tolist() == [G.v_coord(c) for c in range(256)]
    h = hadamard_matrix(256, dtype=torch.float64)
    for f, t in ((G.k_coord, kc), (G.v_coord, vc)):
        assert sorted(t.tolist()) == list(range(256))
        assert _is_bit_permutation(f)
        p = torch.eye(256, dtype=torch.float64)[t.long()]  # (P x)[c] = x[f(c)]
        assert torch.allclose(h @ p, p @ h)
    assert not _is_bit_permutation(lambda c: (c + 1) % 256)  # the check can fail


def _levels(codes, cb16):
    return torch.tensor(cb16.float().numpy()[codes])


def _lookup(w, h, words):
    """The kernel's _lookup: 8 outputs of shape w.shape + [2] (the fp16 halves of each register)."""
    out = lut.emulate(w.reshape(-1), h.reshape(-1), words, packed=True, raw=True)
    res = []
    for i in range(8):
        lo = (out[:, i] & 0xFFFF).astype(np.uint16).view(np.float16)
        hi = (out[:, i] >> 16).astype(np.uint16).view(np.float16)
        res.append(torch.tensor(np.stack([lo, hi], -1).astype(np.float32)).reshape(*w.shape, 2))
    return res


@given(bits=st.sampled_from([2, 3]), seed=st.integers(0, 2**31 - 1), random_cb=st.booleans())
@example(bits=3, seed=0, random_cb=False)
@settings(max_examples=6, deadline=None)
def test_tile_algebra_matches_the_coordinate_maps(bits, seed, random_cb):
    """One 64-key tile through the kernel's tensor steps: the keys' A operand of part p, column c holds
    the level of stored coordinate k_coord(64 p + c); the values' A operand of m-tile mt, row r and key
    j holds key j's level at v_coord(64 mt + r) (the synthesized words pair keys 2i, 2i + 1)."""
    rng = np.random.default_rng(seed)
    cb = (torch.randn(1 << bits, generator=torch.Generator().manual_seed(seed)).sort().values if random_cb
          else default_codebook(bits, "cpu"))
    _, _, cb16, words = tables(cb)
    words = words.tolist()
    codes = rng.integers(0, 1 << bits, (64, 256))
    words_k = pack_bits(torch.tensor(codes), bits).numpy().view(np.uint32)  # [64 keys, 8 bits words]
    halves = words_k.view(np.uint16).reshape(64, -1)  # the 1-bit plane as 16-bit halves: index 32 + word
    levels = _levels(codes, cb16)
    kc, vc = (t.long() for t in G.perms("cpu"))

    def join(a, b):
        return torch.stack([a, b], -1)

    for part in range(4):  # keys: words 4 part + t of every key, raw high halves
        w = words_k[:, 4 * part:4 * part + 4]
        h = halves[:, 32 + 4 * part:32 + 4 * part + 4].astype(np.uint32) if bits == 3 else w * 0
        p = _lookup(w, h, words)
        jt = join(join(join(p[0], p[1]), join(p[2], p[3])), join(join(p[4], p[5]), join(p[6], p[7])))
        kcols = jt.permute(0, 5, 4, 3, 1, 2).reshape(64, 64)
        assert torch.equal(kcols, levels[:, kc[64 * part:64 * part + 64]]), part
    s = torch.tensor(np.arange(32) & 1)[None, :]  # nibble half of word-half qv
    for half in range(2):  # values: word qv >> 1 of each key of the half, pairs of keys
        x = torch.tensor(words_k[32 * half:32 * half + 32, np.arange(32) >> 1].astype(np.int64))
        x0, x1 = x.reshape(16, 2, 32).permute(0, 2, 1).unbind(-1)
        wsyn = ((x0 >> (4 * s)) & 0x0F0F0F0F) | ((x1 << (4 - 4 * s)) & 0xF0F0F0F0)
        hsyn = wsyn * 0
        if bits == 3:
            y = torch.tensor(halves[32 * half:32 * half + 32, 32 + (np.arange(32) >> 1)].astype(np.int64))
            y0, y1 = y.reshape(16, 2, 32).permute(0, 2, 1).unbind(-1)
            hsyn = ((y0 >> (2 * s)) & 0x3333) | ((y1 << (2 - 2 * s)) & 0xCCCC)
        p = _lookup(wsyn.numpy().astype(np.uint32), hsyn.numpy().astype(np.uint32), words)
        for mt in range(4):
            a = join(p[2 * mt], p[2 * mt + 1]).reshape(16, 4, 8, 2, 2).permute(1, 4, 2, 0, 3).reshape(64, 32)
            want = levels[32 * half:32 * half + 32][:, vc[64 * mt:64 * mt + 64]].T
            assert torch.equal(a, want), (half, mt)


def test_split_plan_one_wave_of_whole_tiles():
    """The split rule both launchers share (the Gluon one with 64-key tiles, 4 programs per SM)."""
    from hlwq_kernels.kv_quant_attn.triton import split_plan
    for b, hkv, lmax in ((1, 4, 32768), (8, 4, 8192), (1, 4, 2048), (1, 4, 1), (3, 2, 1000)):
        splits, chunk = split_plan(b * hkv, lmax, 64, 4, 132)
        assert chunk % 64 == 0 and splits * chunk >= lmax > (splits - 1) * chunk
        assert b * hkv * splits <= 4 * 132 or splits == 1
    assert split_plan(4, 32768, 64, 4, 132) == (128, 256)  # 32k decode, 4 KV heads: 128 splits of 256 keys
    assert split_plan(4, 1000, 64, 4, 132, num_splits=3) == (3, 384)
    assert G.supported(256, 3, 4) and not G.supported(128, 3, 4) and not G.supported(256, 4, 4)
    assert not G.supported(256, 2, 8)


needs_gpu = pytest.mark.skipif(not ON_GPU or not G.available(), reason="needs CUDA and Triton's Gluon")


@needs_gpu
@given(b=st.integers(1, 3), hkv=st.integers(1, 4), rows=st.sampled_from([(4, 1), (2, 2), (1, 4), (1, 1), (3, 1)]),
       lmax=st.integers(1, 700), bits=st.sampled_from([2, 3]), causal=st.booleans(),
       dtype=st.sampled_from([torch.float16, torch.bfloat16]), splits=st.sampled_from([None, 1, 3, 7]),
       left_pad=st.booleans(), seed=st.integers(0, 2**31 - 1))
@example(b=1, hkv=4, rows=(4, 1), lmax=1, bits=3, causal=True, dtype=torch.bfloat16, splits=None, left_pad=False,
         seed=0)
@example(b=2, hkv=2, rows=(1, 4), lmax=333, bits=2, causal=True, dtype=torch.float16, splits=3, left_pad=True,
         seed=1)
@settings(max_examples=20, deadline=None)
def test_gluon_matches_reference_gpu(b, hkv, rows, lmax, bits, causal, dtype, splits, left_pad, seed):
    """Decode and short causal chunks (group x tokens <= 4 rows per KV head), ragged lengths off the
    64-key tile grid (0 included), left padding, one split and several; the auto dispatch of
    kv_quant_attn takes this kernel (same output, bit for bit)."""
    from test_kv_quant_attn import _gen, check_attention, make_cache

    group, tq = rows
    g = _gen(seed)
    kp, kn, vp, vn = make_cache(b, hkv, lmax, 256, bits, seed)
    lens = torch.randint(0, lmax + 1, (b,), generator=g)
    lens[0] = lmax
    q = (torch.randn(b, hkv * group, tq, 256, generator=g) * 2).to(dtype).cuda()
    start = (torch.rand(b, generator=g) * (lens + 1)).long().clamp_max(lens).cuda() if left_pad else None
    lens = lens.cuda()
    cb = default_codebook(bits, "cuda")
    out = G.kv_attn_decode_gluon(q, kp, kn, vp, vn, lens, start, bits, 256 ** -0.5, causal, cb, splits)
    check_attention(out, q, kp, kn, vp, vn, lens, bits, causal, start=start)
    auto = kv_quant_attn_triton_splits(q, kp, kn, vp, vn, lens, start, bits, 256 ** -0.5, causal, cb, splits)
    assert torch.equal(auto, out)


@needs_gpu
@pytest.mark.parametrize("bits", [2, 3])
def test_gluon_long_context_gpu(bits):
    """Qwen3.5-9B decode (16 q / 4 KV heads) at 32k with ragged batch lengths, against the reference
    and within one bf16 ulp-ish of the Triton kernel."""
    from test_kv_quant_attn import check_attention, make_cache

    kp, kn, vp, vn = make_cache(2, 4, 32768, 256, bits, 11)
    lens = torch.tensor([32768, 20001], device="cuda")
    q = torch.randn(2, 16, 1, 256, device="cuda").to(torch.bfloat16)
    out = kv_quant_attn(q, kp, kn, vp, vn, bits=bits, kv_lens=lens)
    check_attention(out, q, kp, kn, vp, vn, lens, bits, True)
    tri = kv_quant_attn_triton_splits(q, kp, kn, vp, vn, lens, None, bits, 256 ** -0.5, True,
                                      default_codebook(bits, "cuda"), variant="dsplit4-rep-lacc-pf")
    assert float((out.float() - tri.float()).abs().max()) <= 2 ** -7 * float(tri.abs().max())

"""CPU emulation of the fp16 Gluon KV kernel's roundings on the S9-14 example (tests/test_kv_gluon.py's pinned
fp16 case): max |out - fp32 reference| with, one at a time, the rotated q in fp16, the softmax weights in fp16, the
norm * level products in fp16, and the level table in fp16 (norms applied in fp32, as the kernel does); then the
plain fp16 attention error the test's budget is built on. Run from the repository root:

    python perf/results/2026-11-27-s9/fp16_table_emulation.py
"""
import os, sys, torch
ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..", ".."))
sys.path.insert(0, ROOT); sys.path.insert(0, os.path.join(ROOT, "tests"))
import test_kv_quant_attn as Q
from hlwq_kernels import dequantize_kv, fwht
b, hkv, (group, tq), lmax, bits, seed = 1, 3, (4, 1), 697, 3, 0
g = Q._gen(seed)
kp, kn, vp, vn = Q.make_cache(b, hkv, lmax, 256, bits, seed, device="cpu")
lens = torch.randint(0, lmax + 1, (b,), generator=g); lens[0] = lmax
q = (torch.randn(b, hkv * group, tq, 256, generator=g) * 2).to(torch.float16)
cb = Q.default_codebook(bits, "cpu")
ref = Q.kv_quant_attn_reference(q.float(), kp, kn, vp, vn, lens, None, bits, 256 ** -0.5, False, cb)
k = dequantize_kv(kp, kn, bits=bits).repeat_interleave(group, 1)   # fp32 natural basis
v = dequantize_kv(vp, vn, bits=bits).repeat_interleave(group, 1)
# rotated basis: k_rot = H k ; q_rot = H q
H = lambda x: fwht(x)
kr, vr, qr = H(k), H(v), H(q.float())
def attn(qx, kx, vx, p16=False):
    s = (qx @ kx.transpose(-1, -2)) * 256 ** -0.5
    p = torch.softmax(s, -1)
    if p16: p = p.half().float()
    return p @ vx
variants = {
 "fp32 rotated": attn(qr, kr, vr),
 "q_rot fp16": attn(qr.half().float(), kr, vr),
 "P fp16": attn(qr, kr, vr, True),
 "q_rot fp16 + P fp16": attn(qr.half().float(), kr, vr, True),
 "q_rot, k_rot, v_rot levels fp16 + P": attn(qr.half().float(), kr.half().float(), vr.half().float(), True),
}
for name, o in variants.items():
    o = H(o)  # back to natural basis
    print(f"{name:40s} err {float((o.half().float() - ref).abs().max()):.5f}")
lowp = Q.lowp_attention(q, kp, kn, vp, vn, lens, bits, False)
print("lowp (budget)", float((lowp.float() - ref).abs().max()), "limit", 2 * float((lowp.float() - ref).abs().max()) + 2 * 2**-11 * float(ref.abs().max()) + 1e-5)
# systematic: the level table in fp16 (as the fp16 kernel's LUT), norms applied in fp32
cb16 = cb.half().float()
kr16 = dequantize_kv(kp, kn, bits=bits, codebook=cb16, rotated=True).repeat_interleave(group, 1)
vr16 = dequantize_kv(vp, vn, bits=bits, codebook=cb16, rotated=True).repeat_interleave(group, 1)
krx = dequantize_kv(kp, kn, bits=bits, codebook=cb, rotated=True).repeat_interleave(group, 1)
vrx = dequantize_kv(vp, vn, bits=bits, codebook=cb, rotated=True).repeat_interleave(group, 1)
for name, (qq, kk, vv, p16) in {"rotated exact (check)": (qr, krx, vrx, False),
                                "fp16 level table": (qr, kr16, vr16, False),
                                "fp16 level table + q_rot fp16 + P fp16": (qr.half().float(), kr16, vr16, True)}.items():
    o = H(attn(qq, kk, vv, p16))
    print(f"{name:40s} err {float((o.half().float() - ref).abs().max()):.5f}")
print("levels", cb.tolist(), "fp16 rel err", ((cb16 - cb) / cb).abs().max().item())

"""GPU check of the Gluon decode kernels (hlwq_kernels/kv_quant_attn/gluon.py, fp16 and int8): correctness
against the reference and the Triton kernel, then CUDA-graph timing (caches rotated through DRAM) against the
Triton kernel and SDPA bf16, with the int8 kernel's opt-in TMA ring (tma=True, 2 or 3 stages).

    python .notes/gluon_check.py [check|time|all]
"""
import math
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "perf"))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from hlwq_kernels import kv_quant_attn, quantize_kv  # noqa: E402
from hlwq_kernels.kv_quant_attn import gluon as G  # noqa: E402
from hlwq_kernels.kv_quant_attn import kv_quant_attn_triton_splits  # noqa: E402
from hlwq_kernels.kv_quant_attn.triton import DEFAULT_VARIANT  # noqa: E402
from hlwq_kernels.kv_quant_attn.reference import kv_quant_attn_reference  # noqa: E402
from hlwq_kernels.quantize_kv import default_codebook  # noqa: E402

DEV = "cuda"
D = 256
VARIANTS = [dict(int8=False), dict(int8=True), dict(int8=True, tma=True), dict(int8=True, tma=True, stages=3)]
if os.environ.get("KV_VARIANTS"):  # e.g. '[{"int8": true}, {"int8": true, "tma": true}]'
    import json
    VARIANTS = [dict(int8=False)] + json.loads(os.environ["KV_VARIANTS"])
CASES = os.environ.get("KV_CASES", "decode-32k,decode-128k,batch8x8k,decode-2k").split(",")


def cache(b, hkv, lmax, bits, seed):
    g = torch.Generator(device=DEV).manual_seed(seed)
    k = torch.randn(b, hkv, lmax, D, device=DEV, generator=g) * (1 + torch.rand(b, hkv, lmax, 1, device=DEV, generator=g))
    v = torch.randn(b, hkv, lmax, D, device=DEV, generator=g)
    kq = quantize_kv(k.to(torch.bfloat16), bits)
    vq = quantize_kv(v.to(torch.bfloat16), bits)
    return kq.packed, kq.norms, vq.packed, vq.norms


def check():
    worst = 0.0
    cases = [  # (B, Hq, Hkv, Tq, lens, start, lmax, splits)
        (1, 16, 4, 1, [1], None, 64, None), (1, 16, 4, 1, [63], None, 64, None), (1, 16, 4, 1, [65], None, 256, None),
        (1, 16, 4, 1, [1000], None, 1024, None), (1, 16, 4, 1, [1000], None, 1024, 3),
        (2, 16, 4, 1, [700, 129], None, 1024, 5), (2, 16, 4, 1, [700, 300], [5, 77], 1024, 4),
        (1, 8, 4, 2, [333], None, 512, 2), (1, 4, 4, 4, [200], None, 256, 3), (1, 12, 4, 1, [150], None, 256, 2),
        (1, 16, 4, 1, [32768 - 37], None, 32768, None),
    ]
    for bits in (3, 2):
        cb = default_codebook(bits, DEV)
        for i, (B, Hq, Hkv, Tq, lens, start, lmax, splits) in enumerate(cases):
            kp, kn, vp, vn = cache(B, Hkv, lmax, bits, i)
            q = torch.randn(B, Hq, Tq, D, device=DEV, dtype=torch.bfloat16)
            kl = torch.tensor(lens, device=DEV, dtype=torch.int32)
            ks = None if start is None else torch.tensor(start, device=DEV, dtype=torch.int32)
            ref = kv_quant_attn_reference(q, kp, kn, vp, vn, kl, ks, bits, D ** -0.5, True, cb).float()
            tri = kv_quant_attn_triton_splits(q, kp, kn, vp, vn, kl, ks, bits, D ** -0.5, True, cb,
                                              variant=DEFAULT_VARIANT[D]).float()
            for opt in VARIANTS:
                out = G.kv_attn_decode_gluon(q, kp, kn, vp, vn, kl, ks, bits, D ** -0.5, True, cb, splits,
                                             **opt).float()
                e_ref = ((out - ref).norm() / ref.norm()).item()
                e_tri = ((tri - ref).norm() / ref.norm()).item()
                worst = max(worst, e_ref / max(e_tri, 1e-6))
                print(f"check bits={bits} case={i} B={B} Hq={Hq} Tq={Tq} lens={lens} start={start} splits={splits} "
                      f"{opt}: gluon rel err {e_ref:.2e} (triton {e_tri:.2e}) maxabs "
                      f"{(out - ref).abs().max().item():.2e}", flush=True)
    print("worst gluon/triton error ratio", worst)


def timing():
    from graphbench import graph_us, sets_for

    for name, (b, lmax) in {"decode-32k": (1, 32768), "decode-128k": (1, 131072), "batch8x8k": (8, 8192),
                            "decode-2k": (1, 2048)}.items():
        if name not in CASES:
            continue
        q = torch.randn(b, 16, 1, D, device=DEV, dtype=torch.bfloat16)
        sb = b * lmax * 4 * 2 * D * 2
        kvs = [(torch.randn(b, 4, lmax, D, device=DEV, dtype=torch.bfloat16),
                torch.randn(b, 4, lmax, D, device=DEV, dtype=torch.bfloat16)) for _ in range(sets_for(sb))]
        sd = graph_us([lambda k=k, v=v: F.scaled_dot_product_attention(q, k, v, enable_gqa=True) for k, v in kvs])
        del kvs
        lens = torch.full((b,), lmax, device=DEV, dtype=torch.int32)
        for bits in (3, 2):
            cb = default_codebook(bits, DEV)
            qb = b * lmax * 4 * 2 * (D * bits // 8 + 2)
            g = torch.Generator(device=DEV).manual_seed(0)
            caches = []
            for _ in range(sets_for(qb)):
                w = D * bits // 32
                caches.append((torch.randint(-2**31, 2**31 - 1, (b, 4, lmax, w), device=DEV, dtype=torch.int32, generator=g),
                               (torch.rand(b, 4, lmax, device=DEV, generator=g) + 0.5).half(),
                               torch.randint(-2**31, 2**31 - 1, (b, 4, lmax, w), device=DEV, dtype=torch.int32, generator=g),
                               (torch.rand(b, 4, lmax, device=DEV, generator=g) + 0.5).half()))
            tri = graph_us([lambda c=c: kv_quant_attn_triton_splits(q, *c, lens, None, bits, D ** -0.5, True, cb,
                                                                    variant=DEFAULT_VARIANT[D]) for c in caches])
            res = [f"{name} {bits}b: sdpa {sd:.2f} us, triton {tri:.2f} ({sd / tri:.2f}x)"]
            for opt in VARIANTS[1:] + VARIANTS[1:2]:  # (the default again last: drift within the run)
                full = graph_us([lambda c=c: G.kv_attn_decode_gluon(q, *c, lens, None, bits, D ** -0.5, True, cb,
                                                                   **opt) for c in caches])
                res.append(f"gluon {opt}: {full:.2f} ({sd / full:.2f}x, {qb / full / 1e3:.0f} GB/s)")
            print(" | ".join(res), flush=True)
            del caches


if __name__ == "__main__":
    mode = sys.argv[1] if len(sys.argv) > 1 else "all"
    if mode in ("check", "all"):
        check()
    if mode in ("time", "all"):
        timing()

"""Offline sm_90 compile of the M=16 tensor-core kernels (no GPU needed): registers, spills, shared
memory, CTAs/SM, SASS per code in the main loop and its L1/MIO ops, for the default ``_dot_kernel``
config and the opt-in ``_dot2_kernel`` ("dot2") variants.

    PYTHONPATH=/tmp/tri36 python .notes/dq_dot_compile.py [bits ...]     (default: 5)
    DQ_SASS=/tmp/dir ... also writes each kernel's SASS there.

Shape: gate_up 24576 x 4096 (Kp), block 128, M=16, x bf16, split 1 (launch-like specialization, as
in dq_compile.py). "codes/thread/trip" = BN*BK*unroll / threads (per trip of the largest loop).
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from dq_compile import BLOCK, KP, N, PIPE, compile_kernel, dq, main_loop, resources, triton  # noqa: E402

M = 16
REGS_PER_SM, SMEM_PER_SM = 65536, 228 * 1024


def args(bits):
    a, f = (8, 4) if bits == 8 else (4, 8)
    ptrs = dict(x_ptr="*bf16", p_ptr="*i32", n_ptr="*fp16", cb_ptr="*fp32", out_ptr="*bf16")
    ints = dict(p_addr=16, n_addr=16, cb_addr=16, M=M, N=N, groups=KP // 32, nblk=KP // BLOCK, stride_xm=KP,
                stride_om=N, stride_os=0)
    return a, f, ptrs, ints, (2 if bits <= 5 else 1)


def dot(bits, bn=64, g=4, bm=16, warps=4, unroll=2):
    a, f, ptrs, ints, mode = args(bits)
    ints = dict(ints, tiles_per_split=(KP // 32) // g)
    ints.pop("n_addr")
    k = compile_kernel(dq._dot_kernel, ptrs, ints,
                       dict(BITS=bits, BLOCK=BLOCK, BM=bm, BN=bn, G=g, A=a, F=f, SPLIT_K=1, UPCAST=False, IEEE=False,
                            MODE=mode, MASKED=False, MASK_M=False, UNROLL=unroll),
                       dict(num_warps=warps, num_stages=1))
    return k, bn * g * 32 * unroll / (32 * warps), warps, f"dot BN={bn} G={g} BM={bm} w{warps} u{unroll}"


def dot2(bits, bn=64, g=4, bm=16, warps=4, unroll=1, pf=1, frag=True, l2pf=0, split=1):
    a, f, ptrs, ints, mode = args(bits)
    ints = dict(ints, tiles_per_split=(KP // 32) // g)
    ints.pop("n_addr")
    k = compile_kernel(dq._dot2_kernel, ptrs, ints,
                       dict(BITS=bits, BLOCK=BLOCK, BM=bm, BN=bn, G=g, A=a, F=f, SPLIT_K=split, UPCAST=False,
                            IEEE=False, MODE=mode, MASKED=False, MASK_M=False, UNROLL=unroll, PF=pf, FRAG=frag,
                            L2PF=l2pf),
                       dict(num_warps=warps, num_stages=1))
    label = (f"dot2 BN={bn} G={g} BM={bm} w{warps} u{unroll} pf{pf}{' frag' if frag else ''}"
             f"{f' l2pf{l2pf}' if l2pf else ''}{f' s{split}' if split > 1 else ''}")
    return k, bn * g * 32 * unroll / (32 * warps), warps, label


def row(k, codes, warps, label):
    regs, stack, local, sass = resources(k)
    smem = k.metadata.shared
    ops = main_loop(sass)
    n = sum(ops.values())
    per = {p: ops.get(p, 0) / codes for p in PIPE}
    regs_cta = ((regs + 7) // 8 * 8) * 32 * warps
    ctas = min(REGS_PER_SM // regs_cta, SMEM_PER_SM // max(smem, 1), 32 // warps)
    print(f"| {label} | {regs} | {stack}/{local} | {smem} | {ctas} ({ctas * warps} warps) | {int(codes)} | "
          f"{n / codes:.2f} | {per['LDG']:.3f} | {per['SHFL']:.3f} | {per['LDS']:.3f} | {per['STS']:.3f} | "
          f"{per['BAR']:.3f} | {ops.get('HGMMA', 0)} | {', '.join(f'{o}:{c}' for o, c in ops.most_common(8))} |",
          flush=True)
    return sass


VARIANTS = {
    "dot": lambda b: dot(b),
    "dot-u1": lambda b: dot(b, unroll=1),
    "dot2": lambda b: dot2(b),
    "dot2-nofrag": lambda b: dot2(b, frag=False),
    "dot2-pf0": lambda b: dot2(b, pf=0),
    "dot2-pf2": lambda b: dot2(b, pf=2),
    "dot2-u2": lambda b: dot2(b, unroll=2),
    "dot2-pf2u2": lambda b: dot2(b, pf=2, unroll=2),
    "dot2-pf0u2": lambda b: dot2(b, pf=0, unroll=2),
    "dot2-l2": lambda b: dot2(b, l2pf=4),
    "dot2-pf2u2l2": lambda b: dot2(b, pf=2, unroll=2, l2pf=4),
    "dot2-pf0u2l2": lambda b: dot2(b, pf=0, unroll=2, l2pf=4),
    "dot2-pf0u2l2x8": lambda b: dot2(b, pf=0, unroll=2, l2pf=8),
    "dot2-bm32": lambda b: dot2(b, bm=32),
    "dot2-bm32g2u2l2": lambda b: dot2(b, bm=32, g=2, unroll=2, l2pf=4),
    "dot-bm32": lambda b: dot(b, bm=32, g=2, unroll=1),
    "dot2-pf0u2l2s2": lambda b: dot2(b, pf=0, unroll=2, l2pf=4, split=2),
    "dot2-bn128w8pf2u2l2": lambda b: dot2(b, bn=128, warps=8, unroll=2, pf=2, l2pf=4),
    "dot2-bn128w8": lambda b: dot2(b, bn=128, warps=8),
    "dot2-bn128w8u2": lambda b: dot2(b, bn=128, warps=8, unroll=2),
    "dot2-bn128w8pf2u2": lambda b: dot2(b, bn=128, warps=8, unroll=2, pf=2),
    "dot2-g2u2": lambda b: dot2(b, g=2, unroll=2),
}

if __name__ == "__main__":
    bits_list = [int(b) for b in sys.argv[1:] if b.isdigit()] or [5]
    names = os.environ.get("DQ_VARIANTS", ",".join(VARIANTS)).split(",")
    print(f"triton {triton.__version__}, sm_90, {N}x{KP} block {BLOCK}, M={M}, x bf16")
    print("| kernel | regs | stack/local | smem B | CTAs/SM (warps) | codes/thread/trip | SASS/code | LDG/code | "
          "SHFL/code | LDS/code | STS/code | BAR/code | HGMMA/trip | top ops in loop |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for bits in bits_list:
        print(f"| **{bits} bits** | | | | | | | | | | | | | |")
        for name in names:
            try:
                k, codes, warps, label = VARIANTS[name](bits)
                sass = row(k, codes, warps, label)
            except Exception as e:  # noqa: BLE001
                print(f"| {name} FAILED {type(e).__name__}: {str(e)[:300]} |", flush=True)
                continue
            if os.environ.get("DQ_SASS"):
                open(os.path.join(os.environ["DQ_SASS"], f"{bits}b_{label}.sass".replace(" ", "_")), "w").write(sass)

"""Offline sm_90 compile of the M=1 GEMV kernels (no GPU needed): registers, spills, SASS
instructions per code in the main loop and the L1/MIO-pipe ops (LDG / SHFL / LDS / STS) per code,
for the default ``_gemv_kernel`` config and the opt-in ``_gemv2_kernel`` variants.

    PYTHONPATH=/tmp/tri36 python .notes/dq_compile.py [bits ...]     (default: 5)
    PYTHONPATH=/tmp/tri36 python .notes/dq_compile.py small [bits ...]   (gemv2 on the small decode shapes,
        whole-kernel counts, fused split-K tail vs partials + reduce launch)

(/tmp/tri36: ``pip install --no-deps --target /tmp/tri36 triton==3.6.0``, the device's Triton.)
Shape: gate_up 24576 x 4096 (Kp), block 128, M=1, split 1, launch-like specialization (ints
divisible by 16 get tt.divisibility, ints == 1 become constexpr, as the JIT does).
"""
import collections
import os
import re
import subprocess
import sys
import tempfile

os.environ.pop("TRITON_INTERPRET", None)
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import triton  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402

from hlwq_kernels.dequant_matmul import triton as dq  # noqa: E402

TARGET = GPUTarget("cuda", 90, 32)
BIN = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin")
N, KP, BLOCK = 24576, 4096, 128
PIPE = ("LDG", "SHFL", "LDS", "STS", "BAR", "LDC", "ULDC")


def compile_kernel(kernel, ptrs, ints, consts, opts):
    sig, attrs, cx = {}, {}, dict(consts)
    for i, name in enumerate(kernel.arg_names):
        if name in consts:
            sig[name] = "constexpr"
        elif name in ptrs:
            sig[name] = ptrs[name]
            attrs[(i,)] = [["tt.divisibility", 16]]
        else:
            v = ints[name]
            if v == 1:
                sig[name] = "constexpr"
                cx[name] = 1
            else:
                sig[name] = "i64" if name.endswith("_addr") else "i32"
                if v % 16 == 0:
                    attrs[(i,)] = [["tt.divisibility", 16]]
    return triton.compile(ASTSource(fn=kernel, signature=sig, constexprs=cx, attrs=attrs), target=TARGET,
                          options=opts)


def resources(k):
    with tempfile.NamedTemporaryFile(suffix=".cubin", delete=False) as f:
        f.write(k.asm["cubin"])
    res = subprocess.run([os.path.join(BIN, "cuobjdump"), "--dump-resource-usage", f.name], capture_output=True,
                         text=True).stdout
    m = re.search(r"REG:(\d+).*?STACK:(\d+).*?LOCAL:(\d+)", res)
    sass = subprocess.run([os.path.join(BIN, "nvdisasm"), "-c", f.name], capture_output=True, text=True).stdout
    return int(m.group(1)), int(m.group(2)), int(m.group(3)), sass


def main_loop(sass):
    """Instruction mix of the largest loop (label ... backward BRA to it)."""
    lines = sass.splitlines()
    labels, best = {}, []
    for i, line in enumerate(lines):
        m = re.match(r"^(\.L_x_\d+):", line.strip())
        if m:
            labels[m.group(1)] = i
        m = re.search(r"BRA\s+`?\(?(\.L_x_\d+)", line)
        if m and m.group(1) in labels and labels[m.group(1)] < i and i - labels[m.group(1)] > len(best):
            best = lines[labels[m.group(1)]:i + 1]
    ops = collections.Counter()
    for line in best:
        m = re.match(r"\s*/\*[0-9a-f]+\*/\s+(@!?U?P\w+\s+)?([A-Z0-9_]+)", line)
        if m:
            ops[m.group(2)] += 1
    return ops


def common(bits):
    a, f = (8, 4) if bits == 8 else (4, 8)
    ptrs = dict(x_ptr="*bf16", p_ptr="*i32", n_ptr="*fp16", cb_ptr="*fp32", out_ptr="*bf16")
    ints = dict(p_addr=16, n_addr=16, cb_addr=16, N=N, groups=KP // 32, nblk=KP // BLOCK, stride_xm=KP,
                stride_om=N, stride_os=0)
    mode = 2 if bits <= 5 else 1
    return a, f, ptrs, ints, mode


def gemv(bits, bn=32, g=4, warps=4, unroll=4, prefetch=True):
    a, f, ptrs, ints, mode = common(bits)
    ints = dict(ints, tiles_per_split=(KP // 32) // g)
    k = compile_kernel(dq._gemv_kernel, ptrs, ints,
                       dict(BITS=bits, BLOCK=BLOCK, BN=bn, G=g, A=a, F=f, SPLIT_K=1, MODE=mode, MASKED=False,
                            PREFETCH=prefetch, UNROLL=unroll), dict(num_warps=warps, num_stages=2))
    codes = unroll * bn * g * 32 / (32 * warps)  # per thread per loop trip
    return k, codes, f"gemv BN={bn} G={g} w{warps} u{unroll}{' pf' if prefetch else ''}"


def gemv2(bits, bn=4, g=128, warps=4, prefetch=True, row_tiles=12, depth=1, nib=False, unroll=1, lean=False,
          early=False):
    a, f, ptrs, ints, mode = common(bits)
    ints = dict(ints, row_tiles=row_tiles)
    k = compile_kernel(dq._gemv2_kernel, ptrs, ints,
                       dict(BITS=bits, BLOCK=BLOCK, BN=bn, G=g, A=a, F=f, SPLIT_K=1, MODE=mode, MASKED=False,
                            PREFETCH=prefetch, DEPTH=depth, NIB=nib and bits <= 3,
                            UNROLL=unroll, LEAN=lean, EARLY=early, FUSED=False, y_ptr=None, cnt_ptr=None),
                       dict(num_warps=warps, num_stages=2))
    codes = unroll * bn * g * 32 / (32 * warps)  # per loop trip
    return k, codes, (f"gemv2 BN={bn} G={g} w{warps}{' pf' if prefetch else ''}{' d2' if depth == 2 else ''}"
                      f"{' nib' if nib and bits <= 3 else ''}{f' u{unroll}' if unroll > 1 else ''}"
                      f"{' lean' if lean else ''}{' early' if early else ''}")


def gemv2_at(bits, n, kp, split, fused=False, bn=8, warps=4, prefetch=True, row_tiles=1, unroll=1, lean=False,
             out="*bf16"):
    """gemv2 for shape n x kp (block 128) with ``split`` K slices of kp/split codes (G = kp/split/32) and
    the fused split-K tail (``Config.fused``) or the plain partial stores (+ _splitk_reduce_kernel)."""
    a, f = (8, 4) if bits == 8 else (4, 8)
    g = kp // split // 32
    ptrs = dict(x_ptr="*bf16", p_ptr="*i32", n_ptr="*fp16", cb_ptr="*fp32",
                out_ptr=out if split == 1 else "*fp32")
    consts = dict(BITS=bits, BLOCK=BLOCK, BN=bn, G=g, A=a, F=f, SPLIT_K=split, MODE=2 if bits <= 5 else 1,
                  MASKED=False, PREFETCH=prefetch, DEPTH=1, NIB=False, UNROLL=unroll, LEAN=lean, EARLY=False,
                  FUSED=fused)
    if fused:
        ptrs.update(y_ptr=out, cnt_ptr="*i32")
    else:
        consts.update(y_ptr=None, cnt_ptr=None)
    ints = dict(p_addr=16, n_addr=16, cb_addr=16, N=n, groups=kp // 32, nblk=kp // BLOCK, stride_xm=kp,
                stride_om=n, stride_os=0 if split == 1 else n, row_tiles=row_tiles)
    k = compile_kernel(dq._gemv2_kernel, ptrs, ints, consts, dict(num_warps=warps, num_stages=2))
    return k, (f"gemv2 {n}x{kp} BN={bn} G={g} split {split}{' fused' if fused else ''} rt{row_tiles}"
                f"{' pf' if prefetch else ''}{f' u{unroll}' if unroll > 1 else ''}{' lean' if lean else ''}")


def small_shapes(bits_list):
    """``small`` mode: whole-kernel SASS of gemv2 on the small decode shapes (not the loop: the row loop
    runs 1-4 times there), with and without the fused split-K tail; launches per call."""
    print(f"triton {triton.__version__}, sm_90, block {BLOCK}, M=1; whole-kernel SASS counts")
    print("| bits | kernel | launches | regs | stack/local | SASS | ATOM/RED | MEMBAR | BAR | LDG | STG | "
          "EXIT |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    red = dq._splitk_reduce_kernel
    for bits in bits_list:
        cases = [
            # down 4096x12288: default (BN 8, G 128 -> 3 slices, rt 1) vs fused
            (4096, 12288, 3, dict()), (4096, 12288, 3, dict(fused=True)),
            (4096, 12288, 3, dict(fused=True, prefetch=False)), (4096, 12288, 3, dict(fused=True, row_tiles=3)),
            (4096, 12288, 3, dict(fused=True, bn=4, row_tiles=2, lean=True, unroll=2)),
            # K = 4096 shapes: split 1 (default) vs 2 / 4 slices with the fused tail
            (4096, 4096, 1, dict()), (4096, 4096, 1, dict(prefetch=False)), (4096, 4096, 2, dict(fused=True)),
            (4096, 4096, 1, dict(bn=4, row_tiles=2, lean=True, unroll=2)),
            (2048, 4096, 1, dict()), (2048, 4096, 2, dict(fused=True)), (2048, 4096, 4, dict(fused=True)),
            (2048, 4096, 1, dict(bn=4, row_tiles=1, prefetch=False)), (2048, 4096, 2, dict(fused=True, bn=4)),
            (4096, 4096, 4, dict(fused=True)), (8192, 4096, 2, dict(fused=True, row_tiles=1)),
            (8192, 4096, 1, dict(bn=4, row_tiles=4, lean=True, unroll=2)),
            (8192, 4096, 2, dict(fused=True, bn=4, row_tiles=2, lean=True, unroll=2)),
        ]
        for n, kp, split, kw in cases:
            try:
                k, label = gemv2_at(bits, n, kp, split, **kw)
            except Exception as e:  # noqa: BLE001
                print(f"| {bits} | FAILED {n}x{kp} {kw} {type(e).__name__}: {str(e)[:300]} |", flush=True)
                continue
            regs, stack, local, sass = resources(k)
            ops = collections.Counter()
            for line in sass.splitlines():
                m = re.match(r"\s*/\*[0-9a-f]+\*/\s+(@!?U?P\w+\s+)?([A-Z0-9_]+)", line)
                if m:
                    ops[m.group(2)] += 1
            launches = 1 if split == 1 or kw.get("fused") else 2
            print(f"| {bits} | {label} | {launches} | {regs} | {stack}/{local} | {sum(ops.values())} | "
                  f"{sum(c for o, c in ops.items() if o.startswith(('ATOM', 'RED')))} | {ops['MEMBAR']} | "
                  f"{ops['BAR']} | {ops['LDG']} | {ops['STG']} | {ops['EXIT']} |", flush=True)
            if os.environ.get("DQ_SASS"):
                open(os.path.join(os.environ["DQ_SASS"], f"{bits}b {label}.sass".replace(" ", "_")), "w").write(sass)
        rk = compile_kernel(red, dict(part_ptr="*fp32", out_ptr="*bf16"), dict(numel=4096),
                            dict(SPLIT_K=3, BLOCK=1024), dict(num_warps=4, num_stages=2))
        regs, stack, local, sass = resources(rk)
        n_sass = sum(1 for line in sass.splitlines() if re.match(r"\s*/\*[0-9a-f]+\*/\s+[@A-Z]", line))
        print(f"| {bits} | _splitk_reduce_kernel (SPLIT_K 3, 4096 outputs: 4 CTAs) | +1 | {regs} | {stack}/{local} | "
              f"{n_sass} | | | | | | |")


def row(k, codes, label):
    regs, stack, local, sass = resources(k)
    ops = main_loop(sass)
    n = sum(ops.values())
    pipe = {p: sum(c for o, c in ops.items() if o == p) / codes for p in PIPE}
    print(f"| {label} | {regs} | {stack}/{local} | {int(codes)} | {n / codes:.2f} | {pipe['LDG']:.3f} | "
          f"{pipe['SHFL']:.3f} | {pipe['LDS']:.3f} | {pipe['STS']:.3f} | {pipe['BAR']:.3f} | "
          f"{ops['FFMA'] / codes:.2f} | {', '.join(f'{o}:{c}' for o, c in ops.most_common(7))} |", flush=True)
    return sass


if __name__ == "__main__" and sys.argv[1:2] == ["small"]:  # python .notes/dq_compile.py small [bits ...]
    small_shapes([int(b) for b in sys.argv[2:]] or [5])
elif __name__ == "__main__":
    bits_list = [int(b) for b in sys.argv[1:]] or [5]
    print(f"triton {triton.__version__}, sm_90, {N}x{KP} block {BLOCK}, M=1")
    print("| kernel | regs | stack/local | codes/thread/trip | SASS/code | LDG/code | SHFL/code | LDS/code | "
          "STS/code | BAR/code | FFMA/code | top ops in loop |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for bits in bits_list:
        print(f"| **{bits} bits** | | | | | | | | | | | |")
        for make in (lambda: gemv(bits),
                     lambda: gemv2(bits),
                     lambda: gemv2(bits, prefetch=False),
                     lambda: gemv2(bits, bn=2, row_tiles=24),
                     lambda: gemv2(bits, bn=8, row_tiles=6),
                     lambda: gemv2(bits, bn=8, warps=8, row_tiles=6),
                     lambda: gemv2(bits, bn=4, g=64, warps=2, row_tiles=12),
                     # opt-in variants of 2026-11-27 (branch g2opt; offline only, not timed)
                     lambda: gemv2(bits, lean=True),
                     lambda: gemv2(bits, unroll=2),
                     lambda: gemv2(bits, depth=2),
                     lambda: gemv2(bits, depth=2, unroll=3),
                     lambda: gemv2(bits, lean=True, unroll=2),
                     lambda: gemv2(bits, lean=True, depth=2, unroll=3),
                     lambda: gemv2(bits, lean=True, unroll=2, early=True),
                     lambda: gemv2(bits, lean=True, depth=2, unroll=3, early=True),
                     lambda: gemv2(bits, bn=8, row_tiles=6, lean=True, unroll=2),
                     lambda: gemv2(bits, bn=2, warps=2, row_tiles=24, lean=True, unroll=2),
                     *([lambda: gemv2(bits, nib=True),
                        lambda: gemv2(bits, nib=True, lean=True),
                        lambda: gemv2(bits, nib=True, lean=True, unroll=2),
                        lambda: gemv2(bits, nib=True, lean=True, depth=2, unroll=3),
                        lambda: gemv2(bits, nib=True, lean=True, unroll=2, early=True),
                        lambda: gemv2(bits, nib=True, lean=True, depth=2, unroll=3, early=True)] if bits <= 3 else [])):
            try:
                k, codes, label = make()
                sass = row(k, codes, label)
            except Exception as e:  # noqa: BLE001
                print(f"| FAILED {type(e).__name__}: {str(e)[:300]} |", flush=True)
                continue
            if os.environ.get("DQ_SASS"):
                open(os.path.join(os.environ["DQ_SASS"], f"{bits}b {label}.sass".replace(" ", "_")), "w").write(sass)

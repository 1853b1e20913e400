"""Compile the kv kernels for sm_90 on a machine without a GPU (Triton's bundled LLVM + ptxas)
and print register use, spills and the SASS instruction mix of the attention kernel.

    python .notes/kv_compile.py [bits] [decode: 0 gather | 2 lut] [D] [BLOCK_N] [warps]
    python .notes/kv_compile.py all | sweep | append   (append: the quantize/append kernels only)
    python .notes/kv_compile.py variants   (the opt-in VARIANTS of the decode tile vs the default:
                                            registers, spills, instructions per code, CTAs per SM)
"""
import collections
import itertools
import os
import re
import subprocess
import sys
import tempfile

os.environ.pop("TRITON_INTERPRET", None)
sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

import triton  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402

from hlwq_kernels.kv_quant_attn.triton import _reduce_kernel, _split_kernel  # noqa: E402
from hlwq_kernels.quantize_kv.triton import _quantize_kv_kernel, _quantize_kv_pair_kernel, _rows_warps  # noqa: E402

TARGET = GPUTarget("cuda", 90, 32)
NVDISASM = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "nvdisasm")


def compile_split(bits, decode, d, block_n, warps, block_m=16, causal=True, direct=False, stages=2, trans=False,
                  has_start=False, dsplit=1, maxnreg=None, packed=False, hload=0, tail=False, rep=False, dual=0,
                  lacc=False, pf=False):
    ptr = {"q_ptr": "*bf16", "kp_ptr": "*i32", "kn_ptr": "*fp16", "vp_ptr": "*i32", "vn_ptr": "*fp16",
           "cb_ptr": "*fp16", "lut_ptr": "*i32", "lens_ptr": "*i32", "start_ptr": "*i32", "op_ptr": "*fp32", "lse_ptr": "*fp32",
           "out_ptr": "*bf16"}
    ints = ["s_lens", "s_start", "Hkv", "G", "Tq", "n_rows", "L", "chunk"]
    floats = ["qscale", "oscale"]
    strides = ["sqb", "sqh", "sqt", "skb", "skh", "skl", "snkb", "snkh", "snkl", "svb", "svh", "svl",
               "snvb", "snvh", "snvl", "sob", "soh", "sot"]
    sig = dict(ptr)
    sig.update({k: "i32" for k in ints})
    sig.update({k: "fp32" for k in floats})
    sig.update({k: "i32" for k in strides})
    const = dict(D=d, LOG_D=d.bit_length() - 1, BITS=bits, BLOCK_M=block_m, BLOCK_N=block_n, CAUSAL=causal,
                 DIRECT=direct, DECODE=decode, TRANS=trans, HAS_START=has_start, DSPLIT=dsplit, PACKED=packed)
    if hload or tail or rep:  # only when set: the default compile stays exactly as before
        const.update(HLOAD=hload, TAIL=tail, REP=rep, DUAL=dual, LACC=lacc, PF=pf)  # (unlisted: not its default)
    for k, v in const.items():
        sig[k] = "constexpr"
    src = ASTSource(_split_kernel, sig, constexprs=const,
                    attrs={(i,): [["tt.divisibility", 16]] for i in range(12)})
    opts = {"num_warps": warps, "num_stages": stages}
    if maxnreg:
        opts["maxnreg"] = maxnreg
    return triton.compile(src, target=TARGET, options=opts)


def regs_spills(k):
    """Registers / spill stores from cuobjdump's resource usage of the cubin (no driver needed)."""
    cuobjdump = NVDISASM.replace("nvdisasm", "cuobjdump")
    with tempfile.NamedTemporaryFile(suffix=".cubin", delete=False) as f:
        f.write(k.asm["cubin"])
    out = subprocess.run([cuobjdump, "-res-usage", f.name], capture_output=True, text=True).stdout
    m = re.search(r"REG:(\d+).*?STACK:(\d+).*?SHARED:(\d+).*?LOCAL:(\d+)", out)
    return m.groups() if m else out


def sass_mix(k):
    with tempfile.NamedTemporaryFile(suffix=".cubin", delete=False) as f:
        f.write(k.asm["cubin"])
    txt = subprocess.run([NVDISASM, "-c", f.name], capture_output=True, text=True).stdout
    ops = collections.Counter()
    for line in txt.splitlines():
        m = re.match(r"\s*/\*[0-9a-f]+\*/\s+(@!?U?P\w+\s+)?([A-Z0-9_]+)(\.[A-Z0-9_.]+)?", line)
        if m:
            ops[m.group(2)] += 1
    return ops, txt




def loop_stats(txt, codes_per_iter_per_thread):
    """Instruction mix of the loop that holds the HMMAs (label ... backward BRA to it)."""
    lines = txt.splitlines()
    labels = {}
    best = None
    for i, line in enumerate(lines):
        m = re.match(r"^(\.L_x_\d+):", line.strip())
        if m:
            labels[m.group(1)] = i
        m = re.search(r"BRA\s+`?\(?(\.L_x_\d+)", line)
        if m and m.group(1) in labels and labels[m.group(1)] < i:
            body = lines[labels[m.group(1)]:i + 1]
            if any(("HMMA" in b or "HGMMA" in b) for b in body) and (best is None or len(body) > len(best)):
                best = body
    ops = collections.Counter()
    for line in best or []:
        m = re.match(r"\s*/\*[0-9a-f]+\*/\s+(@!?U?P\w+\s+)?([A-Z0-9_]+)", line)
        if m:
            ops[m.group(2)] += 1
    n = sum(ops.values())
    return n, n / codes_per_iter_per_thread, ops


ALU_OPS = ("IMAD", "LOP3", "SHF", "PRMT", "IADD3", "ISETP", "LEA", "SEL", "VIADD", "SGXT", "MOV", "CS2R", "IABS",
           "FSEL", "SHL", "SHR")  # integer/logic pipe (ALU + the IMAD copies), as ncu's "ALU" roughly


def hgmma_loops(txt):
    """Every loop that holds a wgmma (label ... backward BRA), in code order: [(ops Counter, lines)].
    With tail=True the first is the mask-free main loop, the second the masked tail loop."""
    lines = txt.splitlines()
    labels, out = {}, []
    for i, line in enumerate(lines):
        m = re.match(r"^(\.L_x_\d+):", line.strip())
        if m:
            labels[m.group(1)] = i
        m = re.search(r"BRA\s+`?\(?(\.L_x_\d+)", line)
        if m and m.group(1) in labels and labels[m.group(1)] < i:
            body = lines[labels[m.group(1)]:i + 1]
            if any("HGMMA" in b for b in body):
                ops = collections.Counter()
                for b in body:
                    mm = re.match(r"\s*/\*[0-9a-f]+\*/\s+(@!?U?P\w+\s+)?([A-Z0-9_]+)", b)
                    if mm:
                        ops[mm.group(2)] += 1
                out.append((ops, body))
    return out


def main_loop_stats(txt, codes_per_iter_per_thread):
    """Main-loop SASS instructions, per code, integer-ALU share, IMAD copies of uniform registers
    (``IMAD.U32 R, RZ, RZ, UR``), local-memory (spill) accesses, and the tail loop's size."""
    loops = hgmma_loops(txt)
    ops, body = loops[0]
    n = sum(ops.values())
    alu = sum(c for o, c in ops.items() if o in ALU_OPS)
    ur = sum(1 for b in body if re.search(r"IMAD\.U32 R\d+, RZ, RZ, UR", b))
    local = ops["LDL"] + ops["STL"]
    tail = sum(loops[1][0].values()) if len(loops) > 1 else 0
    return dict(n=n, per_code=n / codes_per_iter_per_thread, alu=alu / n, ur=ur, local=local, tail=tail,
                bar=ops["BAR"], ops=ops)


def sweep(bits_list=(3,), decodes=(2, 0), shapes=((32, 4), (64, 4), (64, 8), (128, 8)), d=256, transs=(False, True),
          stages=(2,)):
    for bits, decode, (block_n, warps), trans, st in itertools.product(bits_list, decodes, shapes, transs, stages):
                try:
                    k = compile_split(bits, decode, d, block_n, warps, trans=trans, stages=st)
                except Exception as e:  # noqa: BLE001
                    print(bits, decode, block_n, warps, "FAILED", type(e).__name__, str(e)[:200])
                    continue
                _, txt = sass_mix(k)
                per_thread = block_n * d * 2 / (32 * warps)
                n, per_code, ops = loop_stats(txt, per_thread)
                regs = regs_spills(k)
                print(f"bits={bits} decode={decode} BLOCK_N={block_n} warps={warps} trans={trans} stages={st}: regs/stack/shared/local={regs} "
                      f"loop={n} instr/thread, {per_code:.2f} per code; top: "
                      + ", ".join(f"{o}:{c}" for o, c in ops.most_common(8)))


def compile_reduce(d, perm, sb=64):
    sig = {"op_ptr": "*fp32", "lse_ptr": "*fp32", "out_ptr": "*bf16"}
    sig.update({k: "i32" for k in ["n_splits", "total_rows", "n_rows", "Hkv", "G"]})
    sig["oscale"] = "fp32"
    sig.update({k: "i32" for k in ["sob", "soh", "sot"]})
    const = dict(D=d, LOG_D=d.bit_length() - 1, SB=sb, PERM=perm)
    sig.update({k: "constexpr" for k in const})
    return triton.compile(ASTSource(_reduce_kernel, sig, constexprs=const), target=TARGET,
                          options={"num_warps": 8 if sb * d >= 8192 else 4})  # as the launcher


def compile_quantize(d, bits, has_start, rows):
    sig = {"x_ptr": "*bf16", "thr_ptr": "*fp32", "p_ptr": "*i32", "n_ptr": "*fp16", "start_ptr": "*i32"}
    sig.update({k: "i32" for k in ["s_start", "n_rows", "H", "T", "L", "sxb", "sxh", "sxt", "spb", "sph", "spl",
                                   "snb", "snh", "snl"]})
    sig["scale"] = "fp32"
    const = dict(D=d, LOG_D=d.bit_length() - 1, BITS=bits, ROWS=rows, HAS_START=has_start)
    sig.update({k: "constexpr" for k in const})
    return triton.compile(ASTSource(_quantize_kv_kernel, sig, constexprs=const), target=TARGET,
                          options={"num_warps": 4 if d * rows <= 2048 else 8})


def compile_quantize_pair(d, bits, rows, x_dtype="*bf16"):
    """The K+V append kernel (kv_cache_write_kv_), as _launch_pair calls it."""
    sig = {"k_ptr": x_dtype, "v_ptr": x_dtype, "thr_ptr": "*fp32", "kp_ptr": "*i32", "kn_ptr": "*fp16",
           "vp_ptr": "*i32", "vn_ptr": "*fp16", "start_ptr": "*i32"}
    sig.update({k: "i32" for k in ["s_start", "n_rows", "H", "T", "L", "skb", "skh", "skt", "svb", "svh", "svt",
                                   "skpb", "skph", "skpl", "sknb", "sknh", "sknl",
                                   "svpb", "svph", "svpl", "svnb", "svnh", "svnl"]})
    sig["scale"] = "fp32"
    const = dict(D=d, LOG_D=d.bit_length() - 1, BITS=bits, ROWS=rows)
    sig.update({k: "constexpr" for k in const})
    return triton.compile(ASTSource(_quantize_kv_pair_kernel, sig, constexprs=const), target=TARGET,
                          options={"num_warps": _rows_warps(d)[1]})


def check_append():
    """Compile the single-tensor and the K+V quantize/append kernels at every D and width, and
    print registers/spills and the SASS size of both at the Qwen3.5 shape (D = 256, 3 bits)."""
    bad = []
    for d, bits in itertools.product((64, 128, 256), (1, 2, 3, 4, 5, 8)):
        rows = _rows_warps(d)[0]
        for name, make in (("quantize", lambda: compile_quantize(d, bits, True, rows)),
                           ("pair", lambda: compile_quantize_pair(d, bits, rows))):
            try:
                k = make()
            except Exception as e:  # noqa: BLE001
                bad.append((name, d, bits))
                print("FAIL", name, d, bits, type(e).__name__, str(e)[:300])
                continue
            regs = regs_spills(k)
            if regs[3] != "0":
                print("spills:", name, d, bits, regs)
            if d == 256 and bits == 3:
                ops, _ = sass_mix(k)
                print(f"{name} D=256 bits=3 rows={rows}: regs/stack/shared/local={regs} "
                      f"SASS {sum(ops.values())} instr")
    print("compiled append kernels; failures:", bad)


def compile_plan(bits, d, n_rows=4, variant=None, causal=True, direct=False, has_start=False):
    """The split kernel exactly as the launcher plans it (decode, tiles, variant) for a 32k cache."""
    from hlwq_kernels.kv_quant_attn.triton import plan
    lut = bits in (2, 3)
    cfg = plan(1, 4, n_rows, 32768, d, 132, 1 if direct else None, lut=lut, variant=variant)  # DIRECT: one split
    k = compile_split(bits, 2 if lut else 0, d, cfg["block_n"], cfg["num_warps"], block_m=cfg["block_m"],
                      causal=causal, direct=direct, stages=cfg["num_stages"], trans=cfg["trans"],
                      has_start=has_start, dsplit=cfg["dsplit"], maxnreg=cfg["maxnreg"],
                      packed=cfg["packed"] and lut, hload=int(cfg["hload"]) if lut else 0,
                      tail=cfg["tail"] and lut, rep=cfg["rep"], dual=cfg["dual"] if cfg["tail"] and lut else 0,
                      lacc=cfg["lacc"] and cfg["tail"] and lut, pf=cfg["pf"] and cfg["tail"] and lut)
    return k, cfg


def ctas_per_sm(regs, warps, smem, max_regs=65536, max_smem=228 * 1024, max_warps=64):
    """Resident programs per SM on the H100 (sm_90): registers are allocated per warp in units of
    256 (8 per thread), each CTA reserves 1 KiB of shared memory beyond its own."""
    by_regs = max_regs // (warps * 32 * (-(-regs // 8) * 8))
    by_smem = max_smem // (smem + 1024)
    return min(by_regs, by_smem, max_warps // warps, 32)


def check_variants(d=256, only=None):
    """Registers / spills / loop instructions per cached code of every VARIANTS entry next to the
    default decode tile, at 2 and 3 bits (32k decode, 16 q / 4 KV heads, the launcher's plan)."""
    from hlwq_kernels.kv_quant_attn.triton import VARIANTS
    print(f"D={d}, Triton {triton.__version__}, sm_90; per code = SASS instructions in the loop / codes per thread")
    print("| variant | bits | regs | stack B | smem B | main loop instr | per code | int-ALU share | UR copies "
          "| BAR | spill LDL/STL in loop | tail loop | CTAs/SM | warps/SM | splits |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for variant in [None, *VARIANTS]:
        if only and (variant or "default") not in only:
            continue
        for bits in (3, 2):
            k, cfg = compile_plan(bits, d, variant=variant)
            regs = regs_spills(k)
            _, txt = sass_mix(k)
            trip = 2 if cfg.get("dual") in (1, 2) else 1  # dual 1/2: two key tiles per main-loop trip
            st = main_loop_stats(txt, trip * cfg["block_n"] * d * 2 / (32 * cfg["num_warps"]))
            ctas = ctas_per_sm(int(regs[0]), cfg["num_warps"], k.metadata.shared)
            print(f"| {variant or 'default'} | {bits} | {regs[0]} | {regs[1]} | {k.metadata.shared} | {st['n']} | "
                  f"{st['per_code']:.2f} | {st['alu']:.0%} | {st['ur']} | {st['bar']} | {st['local']} | {st['tail'] or '-'} | "
                  f"{ctas} | {ctas * cfg['num_warps']} | {cfg['splits']} |", flush=True)


def check_all():
    """Compile every kernel variant the tests and benchmarks launch (as the launcher plans them)."""
    from hlwq_kernels.kv_quant_attn.triton import plan
    bad = []
    for d, bits, n_rows, direct, causal in itertools.product((64, 128, 256), (2, 3, 4, 8), (4, 32, 64),
                                                              (False, True), (True, False)):
        if not causal and (n_rows != 4 or d != 64):
            continue
        lut = bits in (2, 3)
        cfg = plan(1, 4, n_rows, 32768, d, 132, None, lut=lut)
        if direct and cfg["block_m"] != 16:
            continue  # the launcher sends big tiles through the reduce kernel
        try:
            k = compile_split(bits, 2 if lut else 0, d, cfg["block_n"], cfg["num_warps"], block_m=cfg["block_m"],
                              causal=causal, direct=direct, trans=cfg["trans"], has_start=not causal)
            regs = regs_spills(k)
            if regs[3] != "0" or int(regs[1]) > 64:
                print("spills:", d, bits, n_rows, direct, causal, regs)
        except Exception as e:  # noqa: BLE001
            bad.append((d, bits, n_rows, direct, causal))
            print("FAIL split", d, bits, n_rows, direct, causal, type(e).__name__, str(e)[:300])
    from hlwq_kernels.kv_quant_attn.triton import VARIANTS
    for variant, d, bits, direct in itertools.product(VARIANTS, (64, 128, 256), (2, 3), (False, True)):
        try:
            k, _ = compile_plan(bits, d, variant=variant, direct=direct)
            regs = regs_spills(k)
            if regs[3] != "0" or regs[1] != "0":
                print("spills:", variant, d, bits, direct, regs)
        except Exception as e:  # noqa: BLE001
            bad.append((variant, d, bits, direct))
            print("FAIL split", variant, d, bits, direct, type(e).__name__, str(e)[:300])
    for d, perm in itertools.product((64, 128, 256), (False, True)):
        try:
            compile_reduce(d, perm, min(64, 16384 // d))
        except Exception as e:  # noqa: BLE001
            bad.append(("reduce", d, perm))
            print("FAIL reduce", d, perm, str(e)[:300])
    for d, bits, hs in itertools.product((64, 128, 256), (1, 2, 3, 4, 5, 8), (False, True)):
        try:
            compile_quantize(d, bits, hs, max(1, min(16, 4096 // d)))
        except Exception as e:  # noqa: BLE001
            bad.append(("quantize", d, bits, hs))
            print("FAIL quantize", d, bits, hs, str(e)[:300])
    for d, bits in itertools.product((64, 128, 256), (1, 2, 3, 4, 5, 8)):
        try:
            compile_quantize_pair(d, bits, max(1, min(16, 4096 // d)))
        except Exception as e:  # noqa: BLE001
            bad.append(("quantize_pair", d, bits))
            print("FAIL quantize_pair", d, bits, str(e)[:300])
    print("compiled all; failures:", bad)


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "sweep":
        sweep()
    elif len(sys.argv) > 1 and sys.argv[1] == "all":
        check_all()
    elif len(sys.argv) > 1 and sys.argv[1] == "append":
        check_append()
    elif len(sys.argv) > 1 and sys.argv[1] == "variants":
        check_variants(only=sys.argv[2:])
    else:
        bits = int(sys.argv[1]) if len(sys.argv) > 1 else 3
        decode = int(sys.argv[2]) if len(sys.argv) > 2 else 2
        d = int(sys.argv[3]) if len(sys.argv) > 3 else 256
        block_n = int(sys.argv[4]) if len(sys.argv) > 4 else 32
        warps = int(sys.argv[5]) if len(sys.argv) > 5 else 4
        k = compile_split(bits, decode, d, block_n, warps)
        ops, txt = sass_mix(k)
        n, per_code, lops = loop_stats(txt, block_n * d * 2 / (32 * warps))
        print(f"regs/stack/shared/local={regs_spills(k)} loop={n} instr/thread, {per_code:.2f} per code")
        print(lops.most_common(30))
        if len(sys.argv) > 6:
            open(sys.argv[6], "w").write(txt)


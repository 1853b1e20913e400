"""Compile the TMA-ring GEMV (hlwq_kernels/dequant_matmul/gemvt.py) for sm_90 without a GPU (Triton 3.6 at
/tmp/tri36); print registers, shared memory and the SASS instruction mix.

    PYTHONPATH=/tmp/tri36 python .notes/gemvt_compile.py [bits] [rows] [stages] [splits] [wg]
    (env DYN=1: the kernel with row tiles handed out at run time; STAGGER=1, PROBE=1, PDL=1, ROT=1, XS=n: those
    constexprs)
"""
import collections
import os
import re
import subprocess
import sys
import tempfile

os.environ.pop("TRITON_INTERPRET", None)
sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

import triton  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.experimental.gluon._runtime import GluonASTSource  # noqa: E402

from hlwq_kernels.dequant_matmul import gemvt as G  # noqa: E402

TARGET = GPUTarget("cuda", 90, 32)
NVDISASM = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "nvdisasm")


def lay(bw):
    return (f"NVMMASharedLayout(swizzle_byte_width=0, element_bitwidth={bw}, rank=3, transposed=False, "
            "fp4_padded=False, cga_layout=[])")


def compile_t(bits=5, rows=4, stages=8, splits=1, wg=1):
    dyn = os.environ.get("DYN") == "1"  # (env: the run-time tile kernel)
    fn = G.kernel(rows, stages, bits, wg, dyn=dyn)
    sig = {"x_ptr": "*bf16", "cb_ptr": "*fp32", "out_ptr": "*bf16",
           "wd": f"tensordesc<i32[4, {rows}, {32 * G.main_width(bits)}],{lay(32)}>",
           "bd": f"tensordesc<i32[4, {rows}, {32 if bits in (3, 5) else 32 * G.main_width(bits)}],{lay(32)}>",
           "nd": f"tensordesc<fp16[4, {rows}, 8],{lay(16)}>",
           "N": "i32", "n_tiles": "i32", "HB": "i32", "SPLITS": "constexpr", "ctr_ptr": "*i32"}
    const = {} if dyn else {"SPLITS": splits}
    if not dyn:  # (environment: XS=n, the unused ring slots; default 0)
        const["XS"] = int(os.environ.get("XS", "0"))
        sig["XS"] = "constexpr"
    # (environment: the kernel's diagnostic / opt-in constexprs)
    for opt in ("PROBE",) if dyn else ("STAGGER", "PROBE", "PDL", "ROT"):
        if os.environ.get(opt) == "1":
            const[opt] = True
            sig[opt] = "constexpr"
    if "PROBE" in const:
        sig["probe_ptr"] = "*i64"
    sig = {k: sig[k] for k in fn.arg_names if k in sig}
    src = GluonASTSource(fn, sig, constexprs=const, attrs={(i,): [["tt.divisibility", 16]] for i in range(3)})
    return triton.compile(src, target=TARGET, options={"num_warps": 4 * wg})


if __name__ == "__main__":
    a = [int(v) for v in sys.argv[1:]]
    k = compile_t(*a)
    with tempfile.NamedTemporaryFile(suffix=".cubin", delete=False) as f:
        f.write(k.asm["cubin"])
    cuobjdump = NVDISASM.replace("nvdisasm", "cuobjdump")
    out = subprocess.run([cuobjdump, "-res-usage", f.name], capture_output=True, text=True).stdout
    print(re.search(r"REG:(\d+).*?STACK:(\d+).*?SHARED:(\d+).*?LOCAL:(\d+)", out).group(0))
    s = subprocess.run([NVDISASM, "-c", f.name], capture_output=True, text=True).stdout
    lines = [ln for ln in s.splitlines() if re.search(r"/\*[0-9a-f]{4}\*/", ln)]
    print("instructions", len(lines))
    ops = [re.sub(r"^\s*/\*[0-9a-f]+\*/\s*", "", ln).split()[0] for ln in lines]
    c = collections.Counter(o.split(".")[0] if not o.startswith("@") else "pred" for o in ops)
    print(c.most_common(30))
    # the main loop: the largest block between a label and a backward branch to it
    labels = {m.group(1): i for i, ln in enumerate(s.splitlines()) if (m := re.match(r"^(\.L_x_\d+):", ln))}
    best = None
    for i, ln in enumerate(s.splitlines()):
        m = re.search(r"BRA `\((\.L_x_\d+)\)", ln)
        if m and m.group(1) in labels and labels[m.group(1)] < i and (best is None or i - labels[m.group(1)] > best[0]):
            best = (i - labels[m.group(1)], labels[m.group(1)], i)
    if best:
        body = [ln for ln in s.splitlines()[best[1]:best[2] + 1] if re.search(r"/\*[0-9a-f]{4}\*/", ln)]
        lops = [re.sub(r"^\s*/\*[0-9a-f]+\*/\s*", "", ln).split() for ln in body]
        lops = [o[1] if o[0].startswith("@") else o[0] for o in lops]
        print("loop instructions", len(body), collections.Counter(o.split(".")[0] for o in lops).most_common(12))
    tag = "_".join(map(str, a)) or "default"
    open(f"/tmp/gemvt_{tag}.sass", "w").write(s)
    open(f"/tmp/gemvt_{tag}.ttgir", "w").write(k.asm["ttgir"])
    print(f"/tmp/gemvt_{tag}.sass")

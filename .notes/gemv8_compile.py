"""Compile the int8 GEMV (hlwq_kernels/dequant_matmul/gluon.py) for sm_90 without a GPU (Triton 3.6 at
/tmp/tri36): registers, spills, main-loop SASS counts.

    PYTHONPATH=/tmp/tri36:.notes python .notes/gemv8_compile.py [bits] [ks] [pf] [--sass]   (env PAIR=1, EARLY=1)
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

from hlwq_kernels.dequant_matmul import gluon as G  # noqa: E402
from gluon_compile import sass  # noqa: E402  (same folder)

TARGET = GPUTarget("cuda", 90, 32)
NVDISASM = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "nvdisasm")


def compile_k(bits=5, ks=8, pf=2, kp=4096, maxnreg=None, pair=os.environ.get('PAIR') == '1'):
    fn = G.kernel()
    ptrs = {"xq_ptr": "*i8", "f_ptr": "*fp32", "p_ptr": "*i32", "n_ptr": "*fp16", "lut_ptr": "*i32", "out_ptr": "*bf16"}
    sig = dict(ptrs)
    sig.update({k: "i32" for k in ["M", "N", "n_tiles", "rt", "stride_om", "stride_os", "RS", "NS", "HOFF"]})
    const = dict(BITS=bits, KS=ks, PF=pf, PAIR=pair, EARLY=os.environ.get('EARLY') == '1')
    sig.update({k: "constexpr" for k in const})
    src = GluonASTSource(fn, sig, constexprs=const, attrs={(i,): [["tt.divisibility", 16]] for i in list(range(len(ptrs))) + [12, 13, 14]})
    opts = {"num_warps": 4}
    if maxnreg:
        opts["maxnreg"] = maxnreg
    return triton.compile(src, target=TARGET, options=opts)


def _unused(text):
    lines = [ln for ln in text.splitlines() if re.search(r"/\*[0-9a-f]{4,}\*/", ln)]
    # the largest backward-branch loop
    best = None
    addr = {}
    for i, ln in enumerate(lines):
        m = re.search(r"/\*([0-9a-f]{4,})\*/", ln)
        addr[int(m.group(1), 16)] = i
    for i, ln in enumerate(lines):
        m = re.search(r"BRA\s+(?:`\(\.L_x_\d+\)|0x([0-9a-f]+))", ln)
        t = re.search(r"\.L_x_(\d+)", ln)
        if "BRA" in ln and t:
            lab = t.group(0)
            for j, l2 in enumerate(lines):
                pass
    return None


if __name__ == "__main__":
    bits = int(sys.argv[1]) if len(sys.argv) > 1 else 5
    ks = int(sys.argv[2]) if len(sys.argv) > 2 else 32
    pf = int(sys.argv[3]) if len(sys.argv) > 3 else 2
    k = compile_k(bits, ks, pf)
    cuobjdump = NVDISASM.replace("nvdisasm", "cuobjdump")
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(k.asm["cubin"])
        f.flush()
        out = subprocess.run([cuobjdump, "-res-usage", f.name], capture_output=True, text=True).stdout
    print(f"bits {bits} ks {ks} pf {pf}:", re.search(r"REG:(\d+).*?STACK:(\d+).*?SHARED:(\d+).*?LOCAL:(\d+)", out).group(0))
    text = sass(k)
    # main loop: from the first HGMMA back to the loop start (the last backward BRA after it)
    body = [ln for ln in text.splitlines() if re.search(r"/\*[0-9a-f]{4,}\*/", ln)]
    hg = [i for i, ln in enumerate(body) if "HGMMA" in ln]
    if hg:
        lo = max(i for i, ln in enumerate(body[:hg[0]]) if re.match(r"^\.L_x_|^\s*\.L", ln) or "BAR" in ln or True and i < hg[0] and "BRA" in ln) if False else None
    ops_loop = None
    ops = collections.Counter(re.findall(r"^\s+/\*[0-9a-f]+\*/\s+(?:@!?U?P\w+\s+)?([A-Z][A-Z0-9_]*)", text, re.M))
    print("whole-kernel SASS", sum(ops.values()), dict(ops.most_common(25)))
    if "--sass" in sys.argv:
        print(text)

"""Compile the Gluon decode kernel (hlwq_kernels/kv_quant_attn/gluon.py) for sm_90 without a GPU
(Triton 3.6 at /tmp/tri36) and print registers, spills, barriers and main-loop instruction counts.

    PYTHONPATH=/tmp/tri36 python .notes/gluon_compile.py [bits] [maxnreg] [int8]
"""
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

from hlwq_kernels.kv_quant_attn import gluon as G  # noqa: E402

TARGET = GPUTarget("cuda", 90, 32)
NVDISASM = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "nvdisasm")


def compile_g(bits=3, maxnreg=None, causal=True, has_start=False, int8=False):
    fn = G.split_kernel(int8)
    ptrs = {"q_ptr": "*bf16", "kp_ptr": "*i32", "kn_ptr": "*fp16", "vp_ptr": "*i32", "vn_ptr": "*fp16",
            "lut_ptr": "*i32", "lens_ptr": "*i32", "start_ptr": "*i32", "kperm_ptr": "*i32", "vperm_ptr": "*i32",
            "op_ptr": "*fp32", "lse_ptr": "*fp32"}
    ints = ["s_lens", "s_start", "Hkv", "G", "Tq", "n_rows", "L", "chunk"]
    strides = ["sqb", "sqh", "sqt", "skb", "skh", "snkb", "snkh", "svb", "svh", "snvb", "snvh"]
    if int8:  # the int8 kernel computes its coordinate maps
        del ptrs["kperm_ptr"], ptrs["vperm_ptr"]
    sig = dict(ptrs)
    sig.update({k: "i32" for k in ints})
    sig["qscale"] = "fp32"
    sig["oscale"] = "fp32"
    sig.update({k: "i32" for k in strides})
    const = dict(SKL=8 * bits, SVL=8 * bits, SNKL=1, SNVL=1, BITS=bits, CAUSAL=causal, HAS_START=has_start)
    if int8:
        const["ASYNC_K"] = os.environ.get("ASYNC_K", "0") == "1"
        if os.environ.get("PROBE", "0") == "1":
            sig["probe_ptr"] = "*i64"
            const["PROBE"] = True
    if int8 and os.environ.get("TMA", "0") == "1":  # the TMA ring (descriptors of [rows, 8 bits] words)
        lay = f"NVMMASharedLayout(swizzle_byte_width={64 if bits == 2 else 128}, element_bitwidth=32, rank=2, " \
              "transposed=False, fp4_padded=False, cga_layout=[])"
        sig["kd"] = sig["vd"] = f"tensordesc<i32[64, {16 if bits == 2 else 32}],{lay}>"
        const["STAGES"] = int(os.environ.get("STAGES", "2"))
    sig.update({k: "constexpr" for k in const if k not in sig})
    sig = {k: sig[k] for k in fn.arg_names if k in sig}  # (the kernel's parameter order)
    src = GluonASTSource(fn, sig, constexprs=const, attrs={(i,): [["tt.divisibility", 16]] for i in range(len(ptrs))})
    opts = {"num_warps": 4}
    if maxnreg:
        opts["maxnreg"] = maxnreg
    return triton.compile(src, target=TARGET, options=opts)


def sass(k):
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(k.asm["cubin"])
        f.flush()
        return subprocess.run([NVDISASM, "-c", f.name], capture_output=True, text=True).stdout


if __name__ == "__main__":
    bits = int(sys.argv[1]) if len(sys.argv) > 1 else 3
    maxnreg = int(sys.argv[2]) if len(sys.argv) > 2 else None
    int8 = len(sys.argv) > 3 and sys.argv[3] == "int8"
    k = compile_g(bits, maxnreg, int8=int8)
    cuobjdump = NVDISASM.replace("nvdisasm", "cuobjdump")
    with tempfile.NamedTemporaryFile(suffix=".cubin", delete=False) as f:
        f.write(k.asm["cubin"])
    out = subprocess.run([cuobjdump, "-res-usage", f.name], capture_output=True, text=True).stdout
    print(re.search(r"REG:(\d+).*?STACK:(\d+).*?SHARED:(\d+).*?LOCAL:(\d+)", out).group(0))
    s = sass(k)
    lines = [ln for ln in s.splitlines() if re.search(r"/\*[0-9a-f]{4}\*/", ln)]
    print("instructions", len(lines))
    # the main loop: the block between the first HGMMA's loop label and its back branch (roughly)
    ops = [re.sub(r"^\s*/\*[0-9a-f]+\*/\s*", "", ln).split()[0] for ln in lines]
    import collections
    c = collections.Counter(o.split(".")[0] if not o.startswith("@") else "pred" for o in ops)
    print(c.most_common(30))
    open(f"/tmp/gluon_kv_{bits}{'_8' if int8 else ''}.sass", "w").write(s)
    open(f"/tmp/gluon_kv_{bits}{'_8' if int8 else ''}.ttgir", "w").write(k.asm["ttgir"])

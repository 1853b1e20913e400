"""Offline sm_90 compile check of the GDN/conv kernels (no GPU needed): registers, stack (spills),
shared memory, with launch-like specialization. Run: python .notes/gdn_compile.py bf16 [x3|tf32]
(PYTHONPATH=<dir with triton==3.6.0> to match the H100 machine)."""
import sys, os, re, subprocess, tempfile
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
tgt = GPUTarget("cuda", 90, 32)
BIN = os.path.join(os.path.dirname(triton.__file__), "backends/nvidia/bin")

def n_sass(cubin):
    """SASS instruction count of a cubin (refactors of the Triton source should leave it unchanged)."""
    sass = subprocess.run([os.path.join(BIN, "cuobjdump"), "--dump-sass", cubin], capture_output=True, text=True).stdout
    return len(re.findall(r"^\s+/\*[0-9a-f]{4}\*/", sass, re.M))

def comp(kernel, ptrs, ints, consts, opts, label="", dump=None):
    sig, attrs, cx = {}, {}, dict(consts)
    for i, n in enumerate(kernel.arg_names):
        if n in consts:
            sig[n] = "constexpr"
        elif n in ptrs:
            sig[n] = ptrs[n]; attrs[(i,)] = [["tt.divisibility", 16]]
        else:
            v = ints[n]
            if v == 1:
                sig[n] = "constexpr"; cx[n] = 1
            else:
                sig[n] = "i32"
                if v % 16 == 0:
                    attrs[(i,)] = [["tt.divisibility", 16]]
    k = triton.compile(ASTSource(fn=kernel, signature=sig, constexprs=cx, attrs=attrs), target=tgt, options=opts)
    f = tempfile.NamedTemporaryFile(suffix=".cubin", delete=False); f.write(k.asm["cubin"]); f.close()
    res = subprocess.run([os.path.join(BIN, "cuobjdump"), "--dump-resource-usage", f.name], capture_output=True, text=True).stdout
    m = re.search(r"REG:(\d+).*?STACK:(\d+)", res)
    print(f"{kernel.fn.__name__:22s} {label:34s} smem {k.metadata.shared:6d} regs {m.group(1)} stack {m.group(2)} "
          f"sass {n_sass(f.name)}", flush=True)
    if dump:
        open(dump, "w").write(k.asm["ttgir"])
    return k

if __name__ == "__main__":
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
    from hlwq_kernels.gated_delta_rule import triton as G
    from hlwq_kernels.causal_conv1d import triton as Cv
    dt = sys.argv[1] if len(sys.argv) > 1 else "bf16"
    mode = "ieee" if dt == "fp32" else (sys.argv[2] if len(sys.argv) > 2 else "x3")
    P = "*" + dt; SP = "*bf16" if mode == "x3" else "*fp32"
    T, HK, HV, D = 4096, 16, 32, 128
    # q, k, v as views of the packed conv output [1, T, 8192] (what the model passes)
    C8 = (2 * HK + HV) * D
    ints = dict(T=T, HV=HV, DK=D, DV=D, REP=HV // HK,
                sqb=T * C8, sqt=C8, sqh=D, skb=T * C8, skt=C8, skh=D, svb=T * C8, svt=C8, svh=D,
                sgb=T * HV, sgt=HV, sgh=1, sbb=T * HV, sbt=HV, sbh=1, sob=T * HV * D, sot=HV * D, soh=D)
    rec_ptrs = dict(q_ptr=P, k_ptr=P, v_ptr=P, o_ptr=P, g_ptr="*fp32", beta_ptr=P, s0_ptr="*fp32", sT_ptr="*fp32")
    comp(G._recurrent_kernel, rec_ptrs, dict(ints, T=1), dict(HAS_S0=True, BK=D, BV=16), dict(num_warps=4), "BV16 w4")
    prep_ptrs = dict(q_ptr=P, k_ptr=P, g_ptr="*fp32", beta_ptr=P, tm_ptr=SP, tm_lo_ptr=SP, aqk_ptr=SP, aqk_lo_ptr=SP, gc_ptr="*fp32")
    for C, nw in [(64, 8), (64, 4)]:
        comp(G._chunk_prepare_kernel, prep_ptrs, ints, dict(C=C, SUBC=16, BK=D, MODE=mode), dict(num_warps=nw), f"C{C} w{nw} {mode}")
    scan_ptrs = dict(q_ptr=P, k_ptr=P, v_ptr=P, beta_ptr=P, tm_ptr=SP, tm_lo_ptr=SP, aqk_ptr=SP, aqk_lo_ptr=SP,
                     gc_ptr="*fp32", s0_ptr="*fp32", o_ptr=P, sT_ptr="*fp32")
    for bv, nw, ns in [(32, 4, 2), (32, 8, 2), (64, 4, 2), (64, 8, 2), (16, 4, 2), (32, 4, 1)]:
        comp(G._chunk_scan_kernel, scan_ptrs, ints, dict(HAS_S0=True, C=64, BK=D, BV=bv, MODE=mode),
             dict(num_warps=nw, num_stages=ns), f"BV{bv} w{nw} s{ns} {mode}")
    cints = dict(T=T, C=C8, sxb=T * C8, sxt=C8, swc=4, sww=1, ssb=C8 * 3, ssc=3, sob=T * C8, sot=C8)
    for bt, bc in [(2, 256), (32, 128), (16, 128), (16, 256)]:
        comp(Cv._causal_conv1d_kernel, dict(x_ptr=P, w_ptr=P, s0_ptr=P, o_ptr=P, sT_ptr=P), dict(cints, T=1 if bt == 2 else T),
             dict(W=4, WP=4, HAS_S0=True, SILU=True, BT=bt, BC=bc), dict(num_warps=4), f"BT{bt} BC{bc}")
    dints = dict(HK=16, HV=32, DK=128, DV=128, REP=2, q_scale=0.088, sxb=8192, sxc=1, swc=4, sww=1, ssb=8192 * 3, ssc=3, ssw=1,
                 sab=32, sah=1, sbb=32, sbh=1, sob=4096, soh=128)
    # q_scale is a float: handled below
    from triton.compiler import ASTSource as _A
    dk = G._decode_step_kernel
    sig, attrs, cx = {}, {}, dict(W=4, HAS_CS=True, HAS_S0=True, BK=128, BV=16)
    ptrs = dict(x_ptr=P, cw_ptr=P, a_ptr=P, b_ptr=P, alog_ptr="*fp32", dtb_ptr="*fp32", cs_ptr=P, s0_ptr="*fp32", o_ptr=P, sT_ptr="*fp32", ncs_ptr=P)
    for i, n in enumerate(dk.arg_names):
        if n in cx: sig[n] = "constexpr"
        elif n in ptrs: sig[n] = ptrs[n]; attrs[(i,)] = [["tt.divisibility", 16]]
        elif n == "q_scale": sig[n] = "fp32"
        else:
            v = dints[n]
            if v == 1: sig[n] = "constexpr"; cx[n] = 1
            else:
                sig[n] = "i32"
                if v % 16 == 0: attrs[(i,)] = [["tt.divisibility", 16]]
    k = triton.compile(_A(fn=dk, signature=sig, constexprs=cx, attrs=attrs), target=tgt, options=dict(num_warps=4))
    f = tempfile.NamedTemporaryFile(suffix=".cubin", delete=False); f.write(k.asm["cubin"]); f.close()
    res = subprocess.run([os.path.join(BIN, "cuobjdump"), "--dump-resource-usage", f.name], capture_output=True, text=True).stdout
    print("_decode_step_kernel", re.search(r"REG:(\d+).*?STACK:(\d+)", res).groups(), "smem", k.metadata.shared,
          "sass", n_sass(f.name))

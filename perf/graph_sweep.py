"""Kernel-only times on the GPU: every case and its baseline timed by perf/graphbench.graph_us
(many calls in one CUDA graph, rotating over input sets several times the L2), in one run.

    python perf/graph_sweep.py [section ...]     (default: all; the sections are SECTIONS below)

Prints one line per case (us per call, GB/s of the bytes the op must move, ratio to the
section's baseline) and appends JSON rows to $OUT/graph.jsonl.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).parent))
from graphbench import graph_us, sets_for  # noqa: E402
from shapes import (ATTN_HEAD_DIM, ATTN_KV_HEADS, ATTN_Q_HEADS, GDN_CONV, GDN_HEAD_DIM, GDN_K_HEADS,  # noqa: E402
                    GDN_V_HEADS, HIDDEN, HLWQ_BLOCK, LINEARS)

OUT = os.environ.get("OUT", "/tmp/graph_out")
os.makedirs(OUT, exist_ok=True)
LOG = open(os.path.join(OUT, "graph.jsonl"), "a")
DEV = "cuda"
T0 = time.time()


def report(section, case, impl, us, nbytes, base_us=None, **extra):
    gbs = nbytes / (us * 1e-6) / 1e9
    ratio = "" if base_us is None else f"  x{base_us / us:5.2f} vs base"
    print(f"[{time.time() - T0:6.1f}s] {section:5s} {case:28s} {impl:34s} {us:9.2f} us {gbs:8.0f} GB/s{ratio}",
          flush=True)
    LOG.write(json.dumps(dict(section=section, case=case, impl=impl, us=round(us, 3), GBps=round(gbs, 1),
                              nbytes=int(nbytes), base_us=base_us, device=torch.cuda.get_device_name(),
                              **extra)) + "\n")
    LOG.flush()


def safe(section, case, impl, make, nbytes, base_us=None, **extra):
    """Time one case; a failure prints and the sweep goes on."""
    try:
        us = graph_us(make())
    except Exception as exc:  # noqa: BLE001
        print(f"{section} {case} {impl}: FAILED {type(exc).__name__}: {str(exc)[:300]}", flush=True)
        torch.cuda.synchronize()
        return None
    report(section, case, impl, us, nbytes, base_us, **extra)
    return us


# ---- fwht ---------------------------------------------------------------------------------------
def sec_fwht():
    from hlwq_kernels import fwht, hadamard_matrix
    from hlwq_kernels.fwht import fwht_triton_method

    h = hadamard_matrix(HLWQ_BLOCK, dtype=torch.bfloat16, device=DEV)
    for rows in (2048, 16384, 1):
        shape = (rows, HIDDEN)
        nbytes = 2 * rows * HIDDEN * 2
        n = sets_for(nbytes)
        xs = [torch.randn(shape, device=DEV, dtype=torch.bfloat16) for _ in range(n)]
        ys = [torch.empty_like(x) for x in xs]
        case = f"[{rows},{HIDDEN}] bf16 b128"
        base = safe("fwht", case, "baseline-copy", lambda: [lambda x=x, y=y: y.copy_(x) for x, y in zip(xs, ys)],
                    nbytes)
        safe("fwht", case, "baseline-matmul-H",
             lambda: [lambda x=x: (x.view(-1, HLWQ_BLOCK) @ h).view(shape) for x in xs], nbytes, base)
        for method in ("butterfly", "dot"):
            safe("fwht", case, f"hlwq-{method}",
                 lambda: [lambda x=x: fwht_triton_method(x, HLWQ_BLOCK, method) for x in xs], nbytes, base)
        safe("fwht", case, "hlwq-public-fwht", lambda: [lambda x=x: fwht(x, block=HLWQ_BLOCK) for x in xs], nbytes,
             base)
        del xs, ys


def sec_fwhtcfg():
    from hlwq_kernels.fwht import fwht_triton_method

    for rows in (2048, 16384):
        shape = (rows, HIDDEN)
        nbytes = 2 * rows * HIDDEN * 2
        xs = [torch.randn(shape, device=DEV, dtype=torch.bfloat16) for _ in range(sets_for(nbytes))]
        ys = [torch.empty_like(x) for x in xs]
        case = f"[{rows},{HIDDEN}] bf16 b128"
        base = safe("fwht", case, "baseline-copy", lambda: [lambda x=x, y=y: y.copy_(x) for x, y in zip(xs, ys)],
                    nbytes)
        for elems, warps in ((512, 1), (1024, 1), (1024, 2), (2048, 1), (2048, 2), (4096, 4), (4096, 8)):
            if True:
                safe("fwht", case, f"butterfly-e{elems}-w{warps}", lambda: [
                    lambda x=x: fwht_triton_method(x, HLWQ_BLOCK, "butterfly", elems=elems, warps=warps)
                    for x in xs], nbytes, base)
        del xs, ys


# ---- dequant_matmul ------------------------------------------------------------------------------
def _hlwq_weight(n, k, bits, seed, grid=False):
    """Random codes and norms; the default codebook, or with ``grid`` the int8-grid one (what gemv8 needs)."""
    from hlwq_kernels.lloyd_max import gaussian_codebook
    from hlwq_kernels.quant import HLWQWeight
    from hlwq_kernels.quant.grid import weight_codebook

    g = torch.Generator(device=DEV).manual_seed(seed)
    packed = torch.randint(-2**31, 2**31 - 1, (n, k * bits // 32), dtype=torch.int32, device=DEV, generator=g)
    norms = (torch.rand(n, k // HLWQ_BLOCK, device=DEV, generator=g) * 0.02 + 0.01).half()
    cb = weight_codebook(bits, device=DEV) if grid else gaussian_codebook(bits, device=DEV)
    return HLWQWeight(packed, norms, cb, bits, HLWQ_BLOCK, (n, k))


def _dq_cases(m, bits_list, shapes, configs, grid=False):
    from hlwq_kernels import dequant_matmul
    from hlwq_kernels.dequant_matmul.triton import dequant_matmul_rotated

    for name, n, k in shapes:
        case = f"M={m} {name} {n}x{k}"
        wbytes = n * k * 2
        nb = (wbytes + (m * k + m * n) * 2)
        nsets = sets_for(wbytes)
        if n * k * 2 * nsets > 8 * 2**30:
            nsets = max(1, (8 * 2**30) // (n * k * 2))
        ws = [torch.randn(n, k, device=DEV, dtype=torch.bfloat16) for _ in range(nsets)]
        xs = [torch.randn(m, k, device=DEV, dtype=torch.bfloat16) for _ in range(nsets)]
        base = safe("dq", case, "cublas-bf16", lambda: [lambda x=x, w=w: F.linear(x, w) for x, w in zip(xs, ws)],
                    nb, flops=2 * m * n * k)
        del ws
        for bits in bits_list:
            qbytes = n * k * bits // 8 + n * k // HLWQ_BLOCK * 2
            nbq = qbytes + (m * k + m * n) * 2
            nq = sets_for(qbytes)
            qws = [_hlwq_weight(n, k, bits, s, grid) for s in range(nq)]
            xq = [xs[i % len(xs)] for i in range(nq)]
            for label, cfg in configs:
                if cfg == "public-rotated":  # dequant_matmul_rotated's automatic choice (rotated x)
                    make = lambda: [lambda x=x, w=w: dequant_matmul_rotated(x, w, torch.bfloat16)  # noqa: E731
                                    for x, w in zip(xq, qws)]
                elif cfg == "public":
                    make = lambda: [lambda x=x, w=w: dequant_matmul(x, w) for x, w in zip(xq, qws)]  # noqa: E731
                elif cfg == "public-pdl":  # with the rotation; the GEMVs launched with PDL, the fwht triggers them
                    make = lambda: [lambda x=x, w=w: dequant_matmul(x, w, pdl=True)  # noqa: E731
                                    for x, w in zip(xq, qws)]
                elif cfg in ("public-sep", "public-pdl-sep"):  # the rotation as a separate fwht pass
                    def sep(x, w, pdl=cfg == "public-pdl-sep"):
                        from hlwq_kernels.dequant_matmul import triton as dqt
                        dqt.FUSED_ROTATION = False
                        try:
                            return dequant_matmul(x, w, pdl=pdl)
                        finally:
                            dqt.FUSED_ROTATION = True
                    make = lambda sep=sep: [lambda x=x, w=w: sep(x, w) for x, w in zip(xq, qws)]  # noqa: E731
                elif cfg == "rotated-pdl":  # back-to-back GEMVs launched with PDL (each starts in the last's tail)
                    make = lambda: [lambda x=x, w=w: dequant_matmul_rotated(  # noqa: E731
                        x, w, torch.bfloat16, pdl=True) for x, w in zip(xq, qws)]
                elif isinstance(cfg, str):  # a method's default Config
                    from hlwq_kernels.dequant_matmul.triton import _pick
                    c = _pick(m, n, k, HLWQ_BLOCK, cfg, bits)
                    make = lambda c=c: [lambda x=x, w=w: dequant_matmul_rotated(x, w, torch.bfloat16, config=c)  # noqa: E731
                                        for x, w in zip(xq, qws)]
                elif isinstance(cfg, tuple) and cfg[0] == "gemvt":  # the TMA-ring GEMV with explicit options
                    from hlwq_kernels.dequant_matmul.gemvt import gemvt
                    make = lambda kw=cfg[1]: [lambda x=x, w=w: gemvt(x, w, torch.bfloat16, **kw)  # noqa: E731
                                              for x, w in zip(xq, qws)]
                elif isinstance(cfg, dict):  # gemv8 with explicit plan options
                    from hlwq_kernels.dequant_matmul.gluon import gemv8
                    from hlwq_kernels.quant.grid import int8_tables
                    tab = int8_tables(qws[0].codebook, bits)
                    make = lambda kw=cfg, tab=tab: [lambda x=x, w=w: gemv8(x, w, torch.bfloat16, tab, **kw)  # noqa: E731
                                                    for x, w in zip(xq, qws)]
                else:
                    make = lambda cfg=cfg: [lambda x=x, w=w: dequant_matmul_rotated(x, w, torch.bfloat16, config=cfg)  # noqa: E731
                                            for x, w in zip(xq, qws)]
                safe("dq", case, f"hlwq-{bits}b-{label}", make, nbq, base, bits=bits, flops=2 * m * n * k)
            del qws


def sec_dq():
    _dq_cases(1, (5,), LINEARS, [("rotated-default", None), ("public(+fwht)", "public")])
    _dq_cases(1, (4, 3), LINEARS, [("rotated-default", None)])  # (session 14: every shape; before, gate+up only)
    _dq_cases(16, (5,), LINEARS[:5], [("rotated-default", None)])


def sec_dqpdl():
    """Programmatic dependent launch (``dequant_matmul(pdl=True)``), M = 1, 5/4/3 bits, every shape: the default
    launch and the PDL one, back to back (rotated x) and with the rotation (fwht + GEMV per call), alternated."""
    for bits in (5, 4, 3):
        _dq_cases(1, (bits,), LINEARS, [("rotated-default", None), ("rotated-pdl", "rotated-pdl"),
                                        ("public(+fwht)", "public"), ("public(+fwht)-pdl", "public-pdl"),
                                        ("rotated-default-again", None), ("rotated-pdl-again", "rotated-pdl")])


def sec_dqpdl5():
    """gemvt launched with PDL where gemv2 is the default (5 bits on the four smaller shapes, 4 bits on 8192 x 4096):
    the per-call cost that kept gemvt out there (its first slot lands late) overlaps the previous call's tail."""
    g = lambda **kw: ("gemvt", dict(pdl=True, **kw))  # noqa: E731
    _dq_cases(1, (5,), LINEARS[:2] + LINEARS[3:5],
              [("rotated-pdl", "rotated-pdl"), ("gemvt-8x4x2-pdl", g(rows=8, stages=4, per_sm=2)),
               ("gemvt-8x2x4-pdl", g(rows=8, stages=2, per_sm=4)), ("gemvt-4x4x3-pdl", g(rows=4, stages=4, per_sm=3)),
               ("gemvt-8x3x3-pdl", g(rows=8, stages=3, per_sm=3)), ("rotated-pdl-again", "rotated-pdl")])
    _dq_cases(1, (4,), LINEARS[:1], [("rotated-pdl", "rotated-pdl"), ("gemvt-8x2x4-pdl", g(rows=8, stages=2, per_sm=4)),
                                     ("gemvt-8x2x3-pdl", g(rows=8, stages=2, per_sm=3)),
                                     ("rotated-pdl-again", "rotated-pdl")])


def sec_dqpdlcfg():
    """gemvt launched with PDL, M = 1, 5/4/3 bits, every shape, four ring / program options (rows x stages x
    programs per SM), back to back."""
    g = lambda r, s, p: (f"gemvt-{r}x{s}x{p}-pdl", ("gemvt", dict(rows=r, stages=s, per_sm=p, pdl=True)))  # noqa: E731
    for bits in (5, 4, 3):
        _dq_cases(1, (bits,), LINEARS, [("rotated-default", None), g(8, 2, 4), g(8, 2, 3), g(8, 4, 2), g(8, 3, 3),
                                        ("rotated-pdl", "rotated-pdl")])


def sec_dqrot():
    """The rotation inside gemvt (``FUSED_ROTATION``) against the separate fwht pass, M = 1, 5/4/3 bits, every shape,
    with the default launch and with PDL; the rotated-x GEMV alone for reference."""
    for bits in (5, 4, 3):
        _dq_cases(1, (bits,), LINEARS, [("rotated-default", None), ("public(+fwht)", "public-sep"),
                                        ("public-fused", "public"), ("rotated-pdl", "rotated-pdl"),
                                        ("public(+fwht)-pdl", "public-pdl-sep"), ("public-fused-pdl", "public-pdl"),
                                        ("public-fused-again", "public")])


def sec_dqt():
    """M = 1: the TMA-ring GEMV (gemvt, session 13) against the default gemv2 on the same weights: rows per ring
    slot, ring depth, programs per SM, warp groups."""
    # (session 13: "gemv2" is the method's config, not the automatic choice, which is gemvt for N >= 16384)
    opts = [("gemv2", "gemv2"), ("auto", "public-rotated"),
            ("t-r8-s4-p2", ("gemvt", dict(rows=8, stages=4, per_sm=2))),
            ("t-r8-s4-p2-stag", ("gemvt", dict(rows=8, stages=4, per_sm=2, stagger=True))),
            ("t-r8-s3-p3-stag", ("gemvt", dict(rows=8, stages=3, per_sm=3, stagger=True))),
            ("t-r8-s2-p4", ("gemvt", dict(rows=8, stages=2, per_sm=4))),
            ("t-r4-s2-p6", ("gemvt", dict(rows=4, stages=2, per_sm=6))),
            ("t-r4-s3-p6-stag", ("gemvt", dict(rows=4, stages=3, per_sm=6, stagger=True))),
            ("gemv2-again", "gemv2")]
    _dq_cases(1, (5,), LINEARS, opts)
    gate_up = [s for s in LINEARS if s[0] == "gate_up"]
    _dq_cases(1, (4,), gate_up, opts)


def sec_dqt3():
    """M = 1, 3 bits (session 14): the TMA-ring GEMV's 3-bit decode (2-bit plane + 1-bit plane) against gemv2 on
    the same weights, every shape (run 1: 2 stages x 4 programs per SM was the best of six configs on gate+up,
    down and 8192 x 4096, 4 stages x 3 on lm_head)."""
    opts = [("gemv2", "gemv2"), ("auto", "public-rotated"),
            ("t-r8-s2-p4", ("gemvt", dict(rows=8, stages=2, per_sm=4))),
            ("t-r8-s2-p5", ("gemvt", dict(rows=8, stages=2, per_sm=5))),
            ("t-r8-s3-p5", ("gemvt", dict(rows=8, stages=3, per_sm=5))),
            ("t-r8-s2-p3", ("gemvt", dict(rows=8, stages=2, per_sm=3))),
            ("t-r8-s3-p4-stag", ("gemvt", dict(rows=8, stages=3, per_sm=4, stagger=True))),
            ("t-r8-s4-p3", ("gemvt", dict(rows=8, stages=4, per_sm=3))),
            ("t-r4-s2-p5", ("gemvt", dict(rows=4, stages=2, per_sm=5))),
            ("gemv2-again", "gemv2")]
    _dq_cases(1, (3,), LINEARS, opts)


def sec_dqt4():
    """M = 1, 4 bits (session 14): gemvt (the gate+up default, 2 stages x 4 programs per SM) against gemv2 on every
    shape, to see whether the 3-bit result (faster everywhere) holds at 4 bits."""
    opts = [("gemv2", "gemv2"), ("auto", "public-rotated"),
            ("t-r8-s2-p4", ("gemvt", dict(rows=8, stages=2, per_sm=4))),
            ("t-r8-s2-p3", ("gemvt", dict(rows=8, stages=2, per_sm=3))),
            ("gemv2-again", "gemv2")]
    _dq_cases(1, (4,), LINEARS, opts)


def sec_dqt3b():
    """M = 1, 3 bits, gate+up and lm_head (session 14, run 5): gemvt's default (8 rows, 2 stages, 4 programs per SM)
    against two warp groups per program (16-row slots, 8 rows per thread) and an exact split of gate+up's 3072 row
    tiles (512 programs of 6)."""
    opts = [("auto", "public-rotated"),
            ("t-r8-s2-p4", ("gemvt", dict(rows=8, stages=2, per_sm=4))),
            ("t-r16-wg2-s2-p2", ("gemvt", dict(rows=16, wg=2, stages=2, per_sm=2))),
            ("t-r16-wg2-s3-p2", ("gemvt", dict(rows=16, wg=2, stages=3, per_sm=2))),
            ("t-r8-s2-g512", ("gemvt", dict(rows=8, stages=2, programs=512))),
            ("t-r8-s2-g396", ("gemvt", dict(rows=8, stages=2, programs=396))),
            ("gemv2", "gemv2")]
    _dq_cases(1, (3,), [s for s in LINEARS if s[0] in ("gate_up", "lm_head")], opts)


def sec_dqtd():
    """M = 1, K = 4096 (session 14, run 6): gemvt with row tiles handed out at run time ("d-": a ticket counter;
    steps 0 .. stages - 1 static) against the static split ("t-") and the automatic choice, 3/4/5 bits."""
    ctr = torch.zeros(2, dtype=torch.int32, device=DEV)
    opts = [("auto", "public-rotated"),
            ("t-r8-s2-p4", ("gemvt", dict(rows=8, stages=2, per_sm=4))),
            ("d-r8-s2-p4", ("gemvt", dict(rows=8, stages=2, per_sm=4, counter=ctr))),
            ("d-r8-s3-p4", ("gemvt", dict(rows=8, stages=3, per_sm=4, counter=ctr))),
            ("d-r8-s2-p3", ("gemvt", dict(rows=8, stages=2, per_sm=3, counter=ctr))),
            ("d-r8-s4-p2", ("gemvt", dict(rows=8, stages=4, per_sm=2, counter=ctr))),
            ("d-r4-s2-p5", ("gemvt", dict(rows=4, stages=2, per_sm=5, counter=ctr))),
            ("gemv2", "gemv2")]
    k4096 = [s for s in LINEARS if s[2] == 4096]
    _dq_cases(1, (3,), k4096, opts)
    _dq_cases(1, (4, 5), [s for s in LINEARS if s[0] in ("gate_up", "lm_head", "square")], opts)
    assert ctr.tolist() == [0, 0], ctr.tolist()


def sec_dqtd5():
    """M = 1, 5 bits, gate+up and lm_head (session 14): the static default against row tiles handed out at run time
    (a repeat of run 7's A/B, with the default timed first and last; run 8 timed these rows plus since-removed
    "tail" variants)."""
    ctr = torch.zeros(2, dtype=torch.int32, device=DEV)
    opts = [("auto", "public-rotated"),
            ("d-r8-s2-p4", ("gemvt", dict(rows=8, stages=2, per_sm=4, counter=ctr))),
            ("d-r8-s2-p3", ("gemvt", dict(rows=8, stages=2, per_sm=3, counter=ctr))),
            ("auto-again", "public-rotated")]
    _dq_cases(1, (5,), [s for s in LINEARS if s[0] in ("gate_up", "lm_head")], opts)
    assert ctr.tolist() == [0, 0], ctr.tolist()


def sec_dq8():
    """The opt-in int8 GEMV (gemv8, int8-grid codebook) against the default gemv2 on the same weights: plan options
    ks blocks per K slice, rt row tiles per program, one block per trip, and the untimed early loads (session 7:
    every option slower than gemv2 but at 3 bits)."""
    opts = [("gemv2-default", None), ("g8-default", {}), ("g8-early", {"early": True}), ("g8-ks16", {"ks": 16}),
            ("g8-rt1", {"rt": 1}), ("g8-ks4-rt1", {"ks": 4, "rt": 1}), ("g8-nopair", {"pair": False})]
    _dq_cases(1, (5,), LINEARS, opts, grid=True)
    gate_up = [s for s in LINEARS if s[0] == "gate_up"]
    _dq_cases(1, (4, 3), gate_up, opts, grid=True)


def sec_dqg2x():
    """The gemv2 option sweep (timed in session 3, S3-2..S3-7); kept to re-run against new defaults."""
    from hlwq_kernels.dequant_matmul.triton import Config

    # the old gemv split-K sweep and the first gemv2 configs were timed in session 3 run 1
    # (perf/RESULTS.md S3-1); here the default against the g2x options
    cfgs = [("default", None), ("g2-bn8", Config("gemv2", BN=8, G=128, prefetch=True))]
    # gemv2 opt-in variants (branch g2opt, 2026-11-27): offline sm_90 compile only, NOT timed yet
    # (.notes/dequant_matmul.md "gemv2 variants"). Registers / SASS per code at 5 bits, BN=4 default
    # 96 / 5.46: lean 95 / 4.99; pp (unroll=2: two prefetch slots used in turn, no register copies)
    # 96 / 5.39; d2 (two row tiles in flight) 128 / 5.72; d2pp 168 / 5.39; lean-pp 96 / 4.93;
    # lean-d2pp 128 / 4.92; bn8-lean-pp 128 / 5.04; bn2w2-lean-pp (64 codes per thread per row) 128 / 4.72.
    g2 = dict(G=128, prefetch=True)
    g2x = [("g2x-lean", Config("gemv2", BN=4, lean=True, **g2)),
           ("g2x-pp", Config("gemv2", BN=4, unroll=2, **g2)),
           ("g2x-lean-pp", Config("gemv2", BN=4, lean=True, unroll=2, **g2)),
           ("g2x-d2", Config("gemv2", BN=4, depth=2, **g2)),
           ("g2x-lean-d2pp", Config("gemv2", BN=4, lean=True, depth=2, unroll=3, **g2)),
           ("g2x-bn8-lean-pp", Config("gemv2", BN=8, lean=True, unroll=2, **g2)),
           # 2-warp CTAs: 8 fit per SM at 128 registers; row_tiles 12 gives gate_up 1024 of them
           ("g2x-bn2w2-lean-pp", Config("gemv2", BN=2, num_warps=2, lean=True, unroll=2, **g2)),
           ("g2x-bn2w2-lean-pp-rt12", Config("gemv2", BN=2, num_warps=2, lean=True, unroll=2, row_tiles=12, **g2)),
           # more CTAs per SM where the registers allow (gate_up: 5 bits 96 regs -> 5/SM: rt 10 = 615 CTAs
           # <= 660 slots; 4 bits 80 regs -> 6/SM: rt 8 = 768 <= 792); default rule: ~4 per SM (rt 12)
           ("g2x-lean-pp-rt10", Config("gemv2", BN=4, lean=True, unroll=2, row_tiles=10, **g2)),
           ("g2x-lean-pp-rt8", Config("gemv2", BN=4, lean=True, unroll=2, row_tiles=8, **g2)),
           # early: the next tiles' loads issue before the current tile (ptxas otherwise sinks them to 2/3
           # into it or next to their use); 5 bits 128 regs / 4.95, 4 bits 127 / 3.95 (d2pp: 128 / 3.95)
           ("g2x-lean-pp-early", Config("gemv2", BN=4, lean=True, unroll=2, early=True, **g2)),
           ("g2x-lean-d2pp-early", Config("gemv2", BN=4, lean=True, depth=2, unroll=3, early=True, **g2))]
    small = [s for s in LINEARS if s[0] in ("square", "down", "attn_kv", "gate_up")]
    _dq_cases(1, (5,), small, cfgs + g2x)
    # 4 and 3 bits (instruction/latency-bound: 4 bits no faster than 5 today, 3 bits slower):
    # 3-bit default 128 regs / 6.32 per code; nib (one shift per code from nibble words) 80 / 5.15,
    # nib-lean-pp 80 / 4.99, nib-lean-d2pp 96 / 4.99. 4 bits: default 80 / 4.08, lean-pp 80 / 3.93,
    # lean-d2pp 112 / 3.92, bn2w2-lean-pp 128 / 3.72.
    gate_up = [s for s in LINEARS if s[0] == "gate_up"]
    _dq_cases(1, (4, 3), gate_up, [("g2-bn4", Config("gemv2", BN=4, **g2))] + g2x)
    _dq_cases(1, (3,), gate_up, [("g2x-nib", Config("gemv2", BN=4, nib=True, **g2)),
                                 ("g2x-nib-lean-pp", Config("gemv2", BN=4, nib=True, lean=True, unroll=2, **g2)),
                                 ("g2x-nib-lean-d2pp", Config("gemv2", BN=4, nib=True, lean=True, depth=2, unroll=3,
                                                              **g2)),
                                 ("g2x-nib-bn2w2-lean-pp-rt12", Config("gemv2", BN=2, num_warps=2, nib=True, lean=True,
                                                                       unroll=2, row_tiles=12, **g2)),
                                 ("g2x-nib-lean-pp-early", Config("gemv2", BN=4, nib=True, lean=True, unroll=2,
                                                                  early=True, **g2)),
                                 ("g2x-nib-lean-d2pp-early", Config("gemv2", BN=4, nib=True, lean=True, depth=2,
                                                                    unroll=3, early=True, **g2))])


def sec_dq16more():
    """M = 16, 5 bits: the session-11 default (pipe 3, lean, xperm) against its neighbours (stages, split-K, tile),
    on the shapes where it is the default."""
    from hlwq_kernels.dequant_matmul.triton import _pick

    for shape in LINEARS:
        name, n, k = shape
        base = _pick(16, n, k, HLWQ_BLOCK, "dot2", 5)
        if not base.pipe:
            continue
        cfgs = [("default", None), ("pipe2", base._replace(pipe=2)), ("pipe4", base._replace(pipe=4))]
        if k > 4096:
            cfgs += [("bn64w4", base._replace(BN=64, num_warps=4)), ("s2", base._replace(split_k=2)),
                     ("s6", base._replace(split_k=6))]
        else:
            cfgs += [("s2", base._replace(split_k=2)), ("bn128w8", base._replace(BN=128, num_warps=8)),
                     ("bn128w8-s2", base._replace(BN=128, num_warps=8, split_k=2))]
        cfgs.append(("default-again", None))
        _dq_cases(16, (5,), [shape], cfgs)


def sec_dq16lean():
    """M = 16, dot2's pipelined loop: the lean decode and x^T copied straight into the operand order (xperm),
    against the session-11 default, alternated twice."""
    from hlwq_kernels.dequant_matmul.triton import _pick

    for shape in LINEARS:
        name, n, k = shape
        for bits in ((5, 4) if name in ("gate_up", "down") else (5,)):
            base = _pick(16, n, k, HLWQ_BLOCK, "dot2", bits)
            pipe = base if base.pipe else base._replace(pipe=3)
            cfgs = []
            for i in range(2):
                cfgs += [(f"default-{i}", None), (f"lean-{i}", pipe._replace(lean=True)),
                         (f"lean-xperm-{i}", pipe._replace(lean=True, xperm=True))]
            cfgs.append(("xperm", pipe._replace(xperm=True)))
            _dq_cases(16, (bits,), [shape], cfgs)


def sec_dq16ab():
    """M = 16: session 11's dot2 defaults (the pipelined K loop with the lean decode and x^T in operand order, on
    N >= 16384 and on K > 4096, 4 and 5 bits) against the previous default (pf 1, the split-K rule), alternated
    twice; the shapes whose default changed."""
    from hlwq_kernels.dequant_matmul.triton import Config, _pick

    old = Config("dot2", BN=64, G=4, BM=16, num_warps=4, num_stages=1, pf=1)
    for shape in LINEARS:
        name, n, k = shape
        for bits in ((5, 4) if name in ("gate_up", "down") else (5,)):
            if _pick(16, n, k, HLWQ_BLOCK, "dot2", bits).pipe == 0:
                continue
            cfgs = []
            for i in range(2):
                cfgs += [(f"old-{i}", old), (f"default-{i}", None)]
            _dq_cases(16, (bits,), [shape], cfgs)


def sec_dq16pipe():
    """M = 16: dot2 with Triton's pipelined K loop (``Config.pipe``: cp.async copies of the planes, x^T and norms)
    against the default (the register prefetch, pf 1), session 11."""
    from hlwq_kernels.dequant_matmul.triton import _pick

    for shape in LINEARS[:5]:
        name, n, k = shape
        base = _pick(16, n, k, HLWQ_BLOCK, "dot2", 5)
        cfgs = [("default", None)] + [(f"pipe{p}", base._replace(pipe=p)) for p in (2, 3, 4)]
        cfgs += [(f"pipe3-s{sk}", base._replace(pipe=3, split_k=sk)) for sk in (1, 2, 4, 8)]
        cfgs += [("pipe3-bn128w8", base._replace(pipe=3, BN=128, num_warps=8)), ("default-again", None)]
        _dq_cases(16, (5,), [shape], cfgs)
    gate_up = [s for s in LINEARS if s[0] == "gate_up"]
    for bits in (4, 3):
        base = _pick(16, gate_up[0][1], gate_up[0][2], HLWQ_BLOCK, "dot2", bits)
        _dq_cases(16, (bits,), gate_up, [("default", None), ("pipe3", base._replace(pipe=3)),
                                         ("pipe4", base._replace(pipe=4))])


def sec_dqi32ab():
    """gemv2, M = 1, 5 bits: 32-bit row offsets (``Config.i32``, the default for N <= 4096 with one K slice since
    session 11) against the same config without them, alternated three times."""
    from hlwq_kernels.dequant_matmul.triton import _pick

    for shape in LINEARS:
        name, n, k = shape
        if name not in ("square", "attn_kv"):
            continue
        base = _pick(1, n, k, HLWQ_BLOCK, "gemv2", 5)
        cfgs = []
        for i in range(3):
            cfgs += [(f"no-i32-{i}", base._replace(i32=False)), (f"default-{i}", None)]
        _dq_cases(1, (5,), [shape], cfgs)


def sec_dqfixed():
    """Fixed cost vs streaming rate: M = 1 and 16, 5 bits, K = 4096, N from 64 to 98304 rows (the default config at
    each N) with cuBLAS bf16 at the same N, and an empty Triton kernel (the graph's per-launch floor). A fit of
    t = a + bytes / BW over the large N separates the per-call cost a from the streaming rate BW."""
    import triton

    @triton.jit
    def _empty(p):
        pass

    buf = torch.zeros(1, device=DEV)
    safe("dq", "empty triton kernel", "empty", lambda: [lambda: _empty[(132,)](buf)], 1)
    safe("dq", "empty triton kernel 528", "empty", lambda: [lambda: _empty[(528,)](buf)], 1)
    for m in (1, 16):
        for n in (64, 1024, 2048, 4096, 8192, 16384, 24576, 49152, 98304):
            _dq_cases(m, (5,), [("n-sweep", n, 4096)], [("default", None)])


def sec_dqwarps():
    """M = 1, N > 4096: programs of 8 warps (2 per SM: fewer programs of different ages per SM, and half the x
    loads) and finer 2-row tiles, against the default (4 warps, 4-row tiles, ~4 programs per SM). S12-12's probe: on
    each SM the older programs end first (rank 0..3: 28.9 / 29.4 / 30.2 / 31.2 µs on gate_up)."""
    from hlwq_kernels.dequant_matmul.triton import _pick

    for bits, shapes in ((5, [s for s in LINEARS if s[0] in ("gdn_qkv|attn_q", "gate_up", "lm_head")]),
                         (4, [s for s in LINEARS if s[0] == "gate_up"])):
        for shape in shapes:
            name, n, k = shape
            base = _pick(1, n, k, HLWQ_BLOCK, "gemv2", bits)
            tiles = -(-n // base.BN)
            sms = torch.cuda.get_device_properties(0).multi_processor_count
            rt4 = -(-tiles // (4 * sms))
            cfgs = [("default", None), ("w8-rt2x", base._replace(num_warps=8, row_tiles=2 * rt4)),
                    ("w8-bn8", base._replace(num_warps=8, BN=8, row_tiles=rt4)),
                    ("bn2-rt2x", base._replace(BN=2, row_tiles=2 * rt4)),
                    ("p5", base._replace(row_tiles=-(-tiles // (5 * sms)))), ("default-again", None)]
            if base.unroll > 1:  # whole trips
                cfgs = [(lbl, c if c is None else c._replace(row_tiles=-(-c.row_tiles // c.unroll) * c.unroll))
                        for lbl, c in cfgs]
            _dq_cases(1, (bits,), [shape], cfgs)


def sec_dqwaves():
    """M = 1, N > 4096, 5 and 4 bits: several waves of shorter programs (row_tiles 6 / 4 / 2: the hardware hands
    freed slots to the next programs, which balances the SMs) against the default's one wave of ~4 programs per SM."""
    from hlwq_kernels.dequant_matmul.triton import _pick

    for bits, shapes in ((5, [s for s in LINEARS if s[0] in ("gdn_qkv|attn_q", "gate_up", "lm_head")]),
                         (4, [s for s in LINEARS if s[0] == "gate_up"])):
        for shape in shapes:
            name, n, k = shape
            base = _pick(1, n, k, HLWQ_BLOCK, "gemv2", bits)
            cfgs = [("default", None)] + [(f"rt{rt}", base._replace(row_tiles=rt)) for rt in (6, 4, 2)]
            cfgs.append(("default-again", None))
            _dq_cases(1, (bits,), [shape], cfgs)


def sec_dqcfg():
    """Untimed opt-in decode configs against the current default (M = 1). S4-2 timed programmatic
    dependent launch for gemv2 (1: launch overlap; 2: + the first tile's weights before the wait): slower on
    5 of 6 shapes (e.g. gate_up 31.10 -> 33.64 / 35.31 us, attn_kv 5.88 -> 7.14 / 6.58; only square
    7.92 -> 7.47 with 2, which is unsafe for weights written just before), so it was removed."""
    from hlwq_kernels.dequant_matmul.triton import _pick

    def at(n, k, bits, **kw):
        return _pick(1, n, k, HLWQ_BLOCK, "gemv2", bits)._replace(**kw)

    for shape in LINEARS:
        name, n, k = shape
        if name == "down":  # fused split-K, BN 4, lean, round-robin slots: 18.34 / 18.51 vs 19.63 / 19.96 (S4-1/2)
            _dq_cases(1, (5,), [shape], [("default", None), ("g2-bn8", at(n, k, 5, fused=False, BN=8, lean=False,
                                                                             unroll=1)),
                                         ("bn4-lean-pp", at(n, k, 5, BN=4, lean=True, unroll=2)),
                                         ("fused-bn4-lean-pp", at(n, k, 5, fused=True, BN=4, lean=True, unroll=2))])


def sec_dqg3():
    """The g3 options (timed in session 4 run 1, S4-1), each shape against its current default."""
    from hlwq_kernels.dequant_matmul.triton import Config
    # branch g3 (2026-11-27): offline sm_90 compile only until S4-1 (.notes/dequant_matmul.md "g3").
    # fused = split-K sum in the kernel (last-arriving slice; no _splitk_reduce_kernel launch), which also
    # makes 2-4 K slices affordable at K=4096 (more, smaller CTAs: G=64 64 regs, G=32 48 regs vs 96).
    # Each shape against its current default (5 bits, M=1).
    from hlwq_kernels.dequant_matmul.triton import _pick

    def g3(n, k, **kw):
        return _pick(1, n, k, HLWQ_BLOCK, "gemv2", 5)._replace(**kw)

    g3cases = {
        "down": lambda n, k: [("g3-fused", g3(n, k, fused=True)),  # split 3 (rt 3): 2 launches per call -> 1
                              ("g3-fused-rt1", g3(n, k, fused=True, row_tiles=1)),
                              ("g3-fused-rt2", g3(n, k, fused=True, row_tiles=2)),
                              ("g3-fused-bn4-lean-pp", g3(n, k, fused=True, BN=4, lean=True, unroll=2))],
        "square": lambda n, k: [("g3-s2f", g3(n, k, G=64, fused=True)),
                                ("g3-s2f-rt1", g3(n, k, G=64, fused=True, row_tiles=1)),
                                ("g3-s4f-rt1", g3(n, k, G=32, fused=True, row_tiles=1)),
                                ("g3-bn4-lean-pp", g3(n, k, BN=4, lean=True, unroll=2))],
        "attn_kv": lambda n, k: [("g3-s2f-rt1", g3(n, k, G=64, fused=True, row_tiles=1)),
                                 ("g3-s4f-rt1", g3(n, k, G=32, fused=True, row_tiles=1)),
                                 ("g3-bn4", g3(n, k, BN=4, prefetch=False)),
                                 ("g3-bn4-s2f-rt1", g3(n, k, BN=4, G=64, fused=True, row_tiles=1))],
        "gdn_qkv|attn_q": lambda n, k: [("g3-s2f", g3(n, k, G=64, fused=True)),
                                        ("g3-s2f-rt2", g3(n, k, G=64, fused=True, row_tiles=2)),
                                        ("g3-s2f-bn8-rt1", Config("gemv2", BN=8, G=64, prefetch=True, fused=True,
                                                                  row_tiles=1))],
    }
    for shape in LINEARS:
        if shape[0] in g3cases:
            _dq_cases(1, (5,), [shape], [("default", None)] + g3cases[shape[0]](shape[1], shape[2]))


def sec_dqsmallm():
    """M = 2, 4, 8, 16 at 5 bits: gemv2 (one program per token row) against the tensor-core dot kernel,
    to place GEMV_MAX_M."""
    from hlwq_kernels.dequant_matmul.triton import Config

    for m in (2, 4, 8, 16):
        cfgs = [("default", None),
                ("gemv2-bn4", Config("gemv2", BN=4, G=128, num_warps=4, prefetch=True)),
                ("gemv2-bn8", Config("gemv2", BN=8, G=128, num_warps=4, prefetch=True)),
                ("dot-bm16", Config("dot", BN=64, G=4, BM=16, num_warps=4, num_stages=1, unroll=2))]
        _dq_cases(m, (5,), [s for s in LINEARS if s[0] in ("square", "gate_up", "down")], cfgs)


def sec_dq16cfg():
    """M=16, 5 bits, the 5 shapes of sec_dq's M=16 rows: the current default (``_dot_kernel``, BN=64
    BK=128 unroll 2) against the opt-in ``_dot2_kernel`` configs (.notes/dequant_matmul.md "dot2":
    offline-compiled only, NOT yet timed). pf = K-steps of words loaded ahead in registers, l2 =
    prefetch.global.L2 this many K-steps ahead, nofrag = natural k order (A tile via smem as in dot)."""
    from hlwq_kernels.dequant_matmul.triton import Config

    def d2(**kw):
        return Config("dot2", **{**dict(BN=64, G=4, BM=16, num_warps=4, num_stages=1, pf=1), **kw})

    cfgs = [("default", None),
            ("dot-u1", Config("dot", BN=64, G=4, BM=16, num_warps=4, num_stages=1, unroll=1)),
            ("d2-pf1", d2()),
            ("d2-pf1-nofrag", d2(frag=False)),
            ("d2-pf0u2", d2(pf=0, unroll=2)),
            ("d2-pf2u2", d2(pf=2, unroll=2)),
            ("d2-pf1-l2", d2(l2pf=4)),
            ("d2-pf0u2-l2", d2(pf=0, unroll=2, l2pf=4)),
            ("d2-pf0u2-l2x8", d2(pf=0, unroll=2, l2pf=8)),
            ("d2-pf2u2-l2", d2(pf=2, unroll=2, l2pf=4)),
            ("d2-bn128w8-pf2u2-l2", d2(BN=128, num_warps=8, pf=2, unroll=2, l2pf=4)),
            ("d2-pf0u2-l2-s2", d2(pf=0, unroll=2, l2pf=4, split_k=2)),
            ("d2-pf0u2-l2-s4", d2(pf=0, unroll=2, l2pf=4, split_k=4))]
    _dq_cases(16, (5,), LINEARS[:5], cfgs)


def sec_dq16split():
    """M=16, 5 bits: dot2's split-K count. The default rule (``_split_k``) fills about one program per SM
    (8192x4096: 2 splits, 256 programs; 4096^2: 4; 4096x12288: 3; 2048x4096: 8; 24576x4096: 1), while
    dot2 pf1 fits 4 programs per SM (128 registers) and pf0 unroll 2 fits 5 (96): 2x and 4x the splits."""
    from hlwq_kernels.dequant_matmul.triton import Config, _split_k

    for name, n, k in LINEARS[:5]:
        d2 = Config("dot2", BN=64, G=4, BM=16, num_warps=4, num_stages=1, pf=1)
        n_tiles = k // 128
        base = _split_k(d2, n // 64, n_tiles, torch.device(DEV))
        cfgs = [("default", None)]
        for mult in (2, 4):
            s = min(base * mult, n_tiles)
            cfgs += [(f"d2-pf1-s{s}", d2._replace(split_k=s)),
                     (f"d2-pf0u2-s{s}", d2._replace(pf=0, unroll=2, split_k=s))]
        _dq_cases(16, (5,), [(name, n, k)], cfgs)


def sec_dq16pf():
    """M=16, 5 bits, dot2 at the split counts of the current rule (S4-9): the prefetch options of S3-5
    again (pf2 unroll 2 was best on 24576x4096 there), and 24576x4096 at 4 splits."""
    from hlwq_kernels.dequant_matmul.triton import Config

    def d2(**kw):
        return Config("dot2", **{**dict(BN=64, G=4, BM=16, num_warps=4, num_stages=1, pf=1), **kw})

    for name, n, k in LINEARS[:5]:
        cfgs = [("default", None), ("d2-pf2u2", d2(pf=2, unroll=2)), ("d2-pf1-l2", d2(l2pf=4)),
                ("d2-pf1u2", d2(unroll=2))]
        if name == "gate_up":
            cfgs += [("d2-pf1-s4", d2(split_k=4)), ("d2-pf2u2-s4", d2(pf=2, unroll=2, split_k=4))]
        _dq_cases(16, (5,), [(name, n, k)], cfgs)


def sec_dqlowbit():
    """M=1, 4 and 3 bits on the N > 4096 shapes: the defaults against 2-warp programs (BN 2, row_tiles 12),
    the best of S3-6 at both widths (4 bits 26.22 vs 26.63 us, 3 bits with nib 28.36 vs 29.59)."""
    from hlwq_kernels.dequant_matmul.triton import Config

    g2 = dict(G=128, prefetch=True, lean=True, unroll=2, BN=2, num_warps=2, row_tiles=12)
    big = [s for s in LINEARS if s[0] in ("gate_up", "lm_head")]
    _dq_cases(1, (4,), big, [("default", None), ("bn2w2-lean-pp-rt12", Config("gemv2", **g2))])
    _dq_cases(1, (3,), big, [("default", None), ("nib-bn2w2-lean-pp-rt12", Config("gemv2", nib=True, **g2))])


def sec_dqprefill():
    """M=2048, 5 bits: the slab path at several slab heights (rows of W_rot dequantized per cuBLAS
    call; default ~16 MiB of bf16) against cuBLAS bf16."""
    from hlwq_kernels.dequant_matmul.triton import Config

    cfgs = [("default", None)] + [(f"slab{r}", Config("slab", BN=32, G=4, slab_rows=r)) for r in (1024, 2048, 4096)]
    _dq_cases(2048, (5,), [s for s in LINEARS if s[0] != "lm_head"], cfgs)


# ---- KV attention ---------------------------------------------------------------------------------
D, HKV, HQ = ATTN_HEAD_DIM, ATTN_KV_HEADS, ATTN_Q_HEADS


def _packed_cache(b, lmax, bits, seed):
    g = torch.Generator(device=DEV).manual_seed(seed)
    w = D * bits // 32
    kp = torch.randint(-2**31, 2**31 - 1, (b, HKV, lmax, w), device=DEV, dtype=torch.int32, generator=g)
    vp = torch.randint(-2**31, 2**31 - 1, (b, HKV, lmax, w), device=DEV, dtype=torch.int32, generator=g)
    kn = (torch.rand(b, HKV, lmax, device=DEV, generator=g) + 0.5).half()
    vn = (torch.rand(b, HKV, lmax, device=DEV, generator=g) + 0.5).half()
    return kp, kn, vp, vn


def _kv_attn(cases, bits_list, variants):
    from hlwq_kernels import kv_quant_attn
    from hlwq_kernels.kv_quant_attn.triton import kv_quant_attn_triton_splits
    from hlwq_kernels.quantize_kv import default_codebook

    for name, (b, lmax) in cases.items():
        q = torch.randn(b, HQ, 1, D, device=DEV, dtype=torch.bfloat16)
        qo = 2 * q.numel() * 2
        sb = b * lmax * HKV * 2 * D * 2
        ns = sets_for(sb)
        kvs = [(torch.randn(b, HKV, lmax, D, device=DEV, dtype=torch.bfloat16),
                torch.randn(b, HKV, lmax, D, device=DEV, dtype=torch.bfloat16)) for _ in range(ns)]
        base = safe("kv", name, "sdpa-bf16", lambda: [
            lambda k=k, v=v: F.scaled_dot_product_attention(q, k, v, enable_gqa=True) for k, v in kvs], sb + qo)
        del kvs
        lens = torch.full((b,), lmax, device=DEV, dtype=torch.int32)
        for bits in bits_list:
            qb = b * lmax * HKV * 2 * (D * bits // 8 + 2)
            caches = [_packed_cache(b, lmax, bits, s) for s in range(sets_for(qb))]
            cb = default_codebook(bits, DEV)
            for label, kw in variants:
                if kw is None:
                    make = lambda: [lambda c=c: kv_quant_attn(q, *c, bits=bits, kv_lens=lens) for c in caches]  # noqa: E731
                elif "gluon" in kw:  # the Gluon decode kernel with explicit options (e.g. tma=False)
                    from hlwq_kernels.kv_quant_attn import gluon as kvg
                    make = lambda kw=kw: [  # noqa: E731
                        lambda c=c: kvg.kv_attn_decode_gluon(q, *c, lens, None, bits, D ** -0.5, True, cb,
                                                             **kw["gluon"]) for c in caches]
                else:
                    make = lambda kw=kw: [  # noqa: E731
                        lambda c=c: kv_quant_attn_triton_splits(q, *c, lens, None, bits, D ** -0.5, True, cb,
                                                                kw.get("splits"), decode=kw.get("decode"),
                                                                block_n=kw.get("block_n"), num_warps=kw.get("warps"),
                                                                num_stages=kw.get("stages"),
                                                                variant=kw.get("variant"), maxnreg=kw.get("maxnreg"))
                        for c in caches]
                safe("kv", name, f"hlwq-{bits}b-{label}", make, qb + qo, base, bits=bits)
            del caches


KV_CASES = {"decode-32k": (1, 32768), "decode-128k": (1, 131072), "batch8x8k": (8, 8192)}


def sec_kv():
    # default = the int8 Gluon decode kernel at D = 256 (session 6); "triton" = the Triton kernel's default tile
    # "regs": the int8 Gluon kernel with register loads only (the default takes the TMA ring at 3 bits from 1024
    # keys per program: 128k here; session 8)
    _kv_attn(KV_CASES, (3, 2), [("default", None), ("regs", dict(gluon=dict(tma=False))),
                                ("triton", dict(variant="dsplit4-rep-lacc-pf"))])
    sec_kv_append()


# the VARIANTS timed in session 3 runs 1-2 (perf/RESULTS.md); sec_kvcfg times the default and the rest
KV_TIMED = ("single", "lutpack", "dsplit2", "dsplit4", "dsplit2-lutpack-s3", "dsplit2-lutpack-n128w8",
            # session 3 (S3-1..S3-7): timed; the next kvcfg sweep times only the newer VARIANTS + the default
            "dsplit4-lutpack-s1", "dsplit4-tail", "dsplit4-tail-h16", "dsplit4-rep", "dsplit4-rep-s2",
            "dsplit4-rep-r96", "dsplit4-rep-r80",
            # session 4 runs 1-3 (perf/RESULTS.md S4-1..S4-3)
            "dsplit4-rep-dual", "dsplit4-rep-dualx", "dsplit4-rep-pipe", "dsplit4-rep-n128", "dsplit4-rep-lacc",
            "dsplit4-rep-lacc-pf", "dsplit4-rep-n128-lacc", "dsplit4-rep-n128-lacc-pf")


def sec_kvcfg():
    """The LUT decode-tile configurations (VARIANTS not in KV_TIMED; "default" = the plan's choice for
    D = 256) at their planned splits (r96 / r80 also at 171 / 198 splits, where their 5th / 6th
    program per SM gets work at 32k); 32k 3 and 2 bits, 128k and batch 8x8k."""
    from hlwq_kernels.kv_quant_attn.triton import VARIANTS

    new = [v for v in VARIANTS if v not in KV_TIMED]
    variants = [("default", None)] + [(f"v-{v}", dict(variant=v)) for v in new]
    variants += [(f"v-{v}-s{s}", dict(variant=v, splits=s)) for v, s in (("dsplit4-rep-r96", 171),
                                                                          ("dsplit4-rep-r80", 198))
                 if v in new]
    _kv_attn({"decode-32k": (1, 32768)}, (3, 2), variants)
    _kv_attn({"decode-128k": (1, 131072), "batch8x8k": (8, 8192)}, (3, 2),
             [("default", None)] + [(f"v-{v}", dict(variant=v)) for v in new])


def sec_kvscale():
    """Time vs context length, the default and the best tiles of the last sweeps, SDPA bf16 alongside.
    A straight line t = a + b * L through these separates the per-call cost (launches, prologue,
    epilogue, the split merge) from the per-token rate. (S4-2: a = ~12 us with the old _reduce_kernel.)"""
    names = ("dsplit4-rep", "dsplit4-rep-n128", "dsplit4-rep-lacc-pf", "dsplit4-rep-n128-lacc-pf")
    best = [("default", None)] + [(f"v-{v}", dict(variant=v)) for v in names]
    cases = {f"decode-{n // 1024}k": (1, n) for n in (2048, 8192, 32768, 131072)}
    _kv_attn(cases, (3,), best)
    _kv_attn({"batch8x8k": (8, 8192)}, (3,), best)
    _kv_attn({"decode-32k": (1, 32768), "decode-128k": (1, 131072), "batch8x8k": (8, 8192)}, (2,), best[:4])


def sec_kv_append():
    from hlwq_kernels import kv_cache_write_

    lmax, bits = 32768, 3
    nbytes = 2 * HKV * (D * 2 + D * bits // 8 + 2)
    sets = []
    for s in range(16):
        k_new = torch.randn(1, 1, HKV, D, device=DEV, dtype=torch.bfloat16).transpose(1, 2)
        v_new = torch.randn_like(k_new)
        start = torch.tensor([lmax // 2 + s], device=DEV, dtype=torch.int32)
        sets.append((k_new, v_new, start))
    kp, kn, vp, vn = _packed_cache(1, lmax, bits, 0)
    kc = torch.zeros(1, HKV, lmax, D, device=DEV, dtype=torch.bfloat16)
    vc = torch.zeros_like(kc)

    def bf16(k_new, v_new, start):
        kc.index_copy_(2, start.long(), k_new)
        vc.index_copy_(2, start.long(), v_new)

    def ours(k_new, v_new, start):
        kv_cache_write_(kp, kn, k_new, start, bits=bits)
        kv_cache_write_(vp, vn, v_new, start, bits=bits)

    base = safe("kv", "append 1 token K+V 4 heads", "bf16-index-copy", lambda: [
        lambda a=a: bf16(*a) for a in sets], nbytes)
    safe("kv", "append 1 token K+V 4 heads", "hlwq-3b (2 launches)", lambda: [lambda a=a: ours(*a) for a in sets],
         nbytes, base)
    try:
        from hlwq_kernels.quantize_kv import kv_cache_write_kv_
    except ImportError:
        return
    safe("kv", "append 1 token K+V 4 heads", "hlwq-3b fused K+V", lambda: [
        lambda a=a: kv_cache_write_kv_(kp, kn, vp, vn, a[0], a[1], a[2], bits=bits) for a in sets], nbytes, base)


# ---- Gated DeltaNet decode step -------------------------------------------------------------------
def sec_gdn():
    from hlwq_kernels import recurrent_gated_delta_rule
    from hlwq_kernels.gated_delta_rule import gated_delta_decode_step

    HK, HV, DK, W = GDN_K_HEADS, GDN_V_HEADS, GDN_HEAD_DIM, GDN_CONV
    C = (2 * HK + HV) * DK
    state_b = HV * DK * DK * 4
    conv_b = 2 * (2 * C + 2 * C * (W - 1) + C * W)
    rec_b = 2 * state_b + 2 * (2 * HK * DK + 2 * HV * DK) + 8 * HV
    n = sets_for(2 * state_b)
    sets = []
    for _ in range(n):
        sets.append(dict(
            x=torch.randn(1, 1, C, device=DEV, dtype=torch.bfloat16),
            wconv=torch.randn(C, W, device=DEV, dtype=torch.bfloat16) * 0.5,
            cs=torch.randn(1, C, W - 1, device=DEV, dtype=torch.bfloat16),
            a=torch.randn(1, 1, HV, device=DEV, dtype=torch.bfloat16),
            b=torch.randn(1, 1, HV, device=DEV, dtype=torch.bfloat16),
            A_log=torch.rand(HV, device=DEV), dt_bias=torch.rand(HV, device=DEV),
            s0=torch.randn(1, HV, DK, DK, device=DEV) * 0.01,
            q=F.normalize(torch.randn(1, 1, HK, DK, device=DEV), dim=-1).bfloat16(),
            k=F.normalize(torch.randn(1, 1, HK, DK, device=DEV), dim=-1).bfloat16(),
            v=torch.randn(1, 1, HV, DK, device=DEV, dtype=torch.bfloat16),
            g=-0.1 * torch.rand(1, 1, HV, device=DEV), beta=torch.rand(1, 1, HV, device=DEV, dtype=torch.bfloat16)))
    case = "decode step B=1 16k/32v heads"
    base = safe("gdn", case, "baseline-copy-of-state", lambda: [
        lambda s=s: s["s0"].clone() for s in sets], 2 * state_b)
    safe("gdn", case, "hlwq-fused-step(conv+rec)", lambda: [
        lambda s=s: gated_delta_decode_step(s["x"], s["wconv"], s["a"], s["b"], s["A_log"], s["dt_bias"],
                                            num_k_heads=HK, head_k_dim=DK, conv_state=s["cs"], state=s["s0"])
        for s in sets], conv_b + rec_b, base)
    safe("gdn", case, "hlwq-recurrent", lambda: [
        lambda s=s: recurrent_gated_delta_rule(s["q"], s["k"], s["v"], s["g"], s["beta"], initial_state=s["s0"])
        for s in sets], rec_b, base)
    try:
        import fla.ops.gated_delta_rule as fla
    except Exception as exc:  # noqa: BLE001
        print(f"gdn: fla not importable ({exc!r}); no side-by-side", flush=True)
        return
    safe("gdn", case, "fla-0.6-fused-recurrent", lambda: [
        lambda s=s: fla.fused_recurrent_gated_delta_rule(s["q"], s["k"], s["v"], g=s["g"], beta=s["beta"], scale=1.0,
                                                         initial_state=s["s0"], output_final_state=True)
        for s in sets], rec_b, base)


SECTIONS = {"dqt": sec_dqt, "dqt3": sec_dqt3, "dqt4": sec_dqt4, "dqt3b": sec_dqt3b, "dqtd": sec_dqtd, "dqtd5": sec_dqtd5, "dq16more": sec_dq16more, "dq16lean": sec_dq16lean, "dq16ab": sec_dq16ab, "dq16pipe": sec_dq16pipe, "dqi32ab": sec_dqi32ab, "dqfixed": sec_dqfixed, "dqwarps": sec_dqwarps, "dqwaves": sec_dqwaves,
            "fwht": sec_fwht, "fwhtcfg": sec_fwhtcfg, "dq": sec_dq,
            "dqpdl": sec_dqpdl, "dqpdl5": sec_dqpdl5, "dqpdlcfg": sec_dqpdlcfg, "dqrot": sec_dqrot,
            "dq8": sec_dq8, "dqcfg": sec_dqcfg, "dqg2x": sec_dqg2x,
            "dqg3": sec_dqg3, "dq16cfg": sec_dq16cfg, "dq16split": sec_dq16split, "dqlowbit": sec_dqlowbit,
            "dq16pf": sec_dq16pf,
            "dqprefill": sec_dqprefill, "dqsmallm": sec_dqsmallm,
            "kv": sec_kv, "kvcfg": sec_kvcfg, "kvscale": sec_kvscale, "gdn": sec_gdn}

if __name__ == "__main__":
    torch.backends.cuda.matmul.allow_tf32 = False
    print(torch.cuda.get_device_name(), "torch", torch.__version__, flush=True)
    for name in sys.argv[1:] or list(SECTIONS):
        try:
            SECTIONS[name]()
        except Exception as exc:  # noqa: BLE001
            print(f"section {name} FAILED: {exc!r}", flush=True)
        torch.cuda.empty_cache()

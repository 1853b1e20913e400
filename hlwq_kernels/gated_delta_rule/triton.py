"""Triton gated delta rule kernels: recurrent (decode) and chunked (prefill).

Recurrent, ``_recurrent_kernel``: one program per (Dv tile, batch x value head); the fp32 state
tile [Dk, BV] lives in registers for the whole token loop; each token is a rank-1 update.
Floor at batch 1 with Qwen3.5-9B dims (32 value heads, Dk = Dv = 128): the fp32 state read once
and written once, 2 x 2 MiB = 4.2 MB -> 1.4 us at 3 TB/s; q/k/v/g/beta of one token are ~24 KB.
Launch latency (~2-4 us eager, ~1 us in a CUDA graph) dominates; target <= 10 us with the conv.

Fused decode step, ``_decode_step_kernel`` (``gated_delta_decode_step``): the same program grid
also does the conv update + SiLU for its q, k (its key head) and v (its Dv tile) channels, the q/k
L2 norms, the gates and the conv-state shift: one launch instead of ~15 per GDN layer and token.
Extra bytes over the recurrent floor: qkv 16 KB, conv state 48 KB in + 48 KB out, conv weight 64 KB.

Chunked, two kernels over chunks of C = 64 tokens (per value head; Gc = cumsum(g) in the chunk):
1. ``_chunk_prepare_kernel`` (parallel over chunks and heads): A = strictly-lower(beta k k^T *
   exp(Gc_i - Gc_j)); Tm = (I + A)^-1 by forward substitution on the 16x16 diagonal blocks, then a
   block Neumann series (D = blockdiag inverse, M = D A_off, Tm = (I - M + M^2 - M^3) D, exact as
   M^4 = 0); Aqk = q k^T * exp(Gc_i - Gc_j) (j <= i). Stores Tm, Aqk [C x C per chunk] and Gc.
2. ``_chunk_scan_kernel`` (sequential over chunks; one program per (Dv tile, batch x value head),
   fp32 state tile [Dk, BV] in registers), per chunk:
       v_new = Tm (beta (v - exp(Gc) (k S)))          (= u - w S of the WY form, w/u never stored)
       o     = exp(Gc) (q S) + Aqk v_new
       S    <- exp(Gc_last) S + k^T (exp(Gc_last - Gc) v_new)
   No per-chunk states are stored (fla stores them) and no w/u (fla stores both).
Floor at T=4096, batch 1, 16 key / 32 value heads, dim 128, bf16: q, k 16.8 MB each, v and out
33.5 MB each = 100 MB -> 33 us at 3 TB/s; Tm, Aqk (4 x 16.8 MB as bf16 hi/lo pairs) written once and
read by the 4 Dv-tile programs of a head (mostly L2 hits) add ~67-270 MB -> 55-120 us.
FLOPs per token and value head: k k^T, q k^T (2 x 2 x 64 x 128), Tm rhs, Aqk v_new (2 x 2 x 64 x 128),
k S, q S, k^T v_new (3 x 2 x 128 x 128) = 230 kFLOP -> 30 GFLOP per layer; the "x3" split products
double/triple the tensor-core work (~100 GFLOP-equivalent: ~0.15 ms at a realistic 50% of bf16 peak).
The scan is latency-bound: 64 chunks in sequence with 128 programs (BV=32) on 132 SMs.
Target <= 0.85 ms (fla 0.6: 4.8 M tokens/s per layer); expected ~0.2-0.4 ms.

Precision (``MODE``): fp32 inputs use plain fp32 products ("ieee"). For 16-bit inputs ("x3", the
default) every product with an fp32 operand (state, Tm, Aqk, v_new) splits it into bf16 hi + lo and
sums 2-3 tensor-core products with fp32 accumulation: ~2^-16 relative error (the interpreter runs the
same split upcast to fp32: "x3i"); "tf32" (one tf32 product, ~2^-11) is a benchmark option.
Shared memory and registers were checked by compiling for sm_90 offline (Triton 3.6 and 3.9).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .._common import cdiv, interpreting, next_pow2

SUB = 16  # diagonal block size of the triangular solve


# ----------------------------------------------------------------------------------------------
# Recurrent (decode)
# ----------------------------------------------------------------------------------------------


@triton.jit
def _head_tile(HV, REP, DK, DV, BK: tl.constexpr, BV: tl.constexpr):
    """Grid (Dv tiles, B * Hv) -> batch (int64), value head, key head, the Dk range and mask, and
    this program's Dv tile and mask."""
    pid_bh = tl.program_id(1)
    b = (pid_bh // HV).to(tl.int64)
    h = pid_bh % HV
    rk = tl.arange(0, BK)
    rv = tl.program_id(0) * BV + tl.arange(0, BV)
    return b, h, h // REP, rk, rk < DK, rv, rv < DV


@triton.jit
def _state_tile(s0_ptr, b, h, HV, DK, DV, rk, mk, rv, mv, HAS_S0: tl.constexpr, BK: tl.constexpr,
                BV: tl.constexpr):
    """The fp32 [BK, BV] tile of head (b, h)'s state (zeros without an initial state), with the
    offsets and mask that store the final state to the same place."""
    s_offs = (b * HV + h) * DK * DV + rk[:, None] * DV + rv[None, :]
    smask = mk[:, None] & mv[None, :]
    if HAS_S0:
        s = tl.load(s0_ptr + s_offs, mask=smask, other=0.0)
    else:
        s = tl.zeros([BK, BV], dtype=tl.float32)
    return s, s_offs, smask


@triton.jit
def _delta_step(s, q, k, v, g, beta):
    """One token of the gated delta rule on a state tile: decay by e^g, write beta * (v - S^T k)
    along k, read out S^T q. Returns (new state, output)."""
    s = s * tl.exp(g)
    u = beta * (v - tl.sum(s * k[:, None], axis=0))
    s = s + k[:, None] * u[None, :]
    return s, tl.sum(s * q[:, None], axis=0)


@triton.jit(do_not_specialize=["T", "HV", "REP"])  # no recompiles per length / head count
def _recurrent_kernel(q_ptr, k_ptr, v_ptr, g_ptr, beta_ptr, s0_ptr, o_ptr, sT_ptr,
                      T, HV, DK, DV, REP,
                      sqb, sqt, sqh, skb, skt, skh, svb, svt, svh, sgb, sgt, sgh, sbb, sbt, sbh,
                      sob, sot, soh,
                      HAS_S0: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr):
    b, h, hk, rk, mk, rv, mv = _head_tile(HV, REP, DK, DV, BK, BV)
    s, s_offs, smask = _state_tile(s0_ptr, b, h, HV, DK, DV, rk, mk, rv, mv, HAS_S0, BK, BV)
    q_base = q_ptr + b * sqb + hk * sqh
    k_base = k_ptr + b * skb + hk * skh
    v_base = v_ptr + b * svb + h * svh
    o_base = o_ptr + b * sob + h * soh
    g_base = g_ptr + b * sgb + h * sgh
    be_base = beta_ptr + b * sbb + h * sbh
    for _ in range(T):
        qt = tl.load(q_base + rk, mask=mk, other=0.0).to(tl.float32)
        kt = tl.load(k_base + rk, mask=mk, other=0.0).to(tl.float32)
        vt = tl.load(v_base + rv, mask=mv, other=0.0).to(tl.float32)
        gt = tl.load(g_base).to(tl.float32)
        bt = tl.load(be_base).to(tl.float32)
        s, ot = _delta_step(s, qt, kt, vt, gt, bt)
        tl.store(o_base + rv, ot.to(o_ptr.dtype.element_ty), mask=mv)
        q_base += sqt
        k_base += skt
        v_base += svt
        o_base += sot
        g_base += sgt
        be_base += sbt
    tl.store(sT_ptr + s_offs, s, mask=smask)


def _lastdim_contig(x: torch.Tensor) -> torch.Tensor:
    return x if x.stride(-1) == 1 else x.contiguous()


def _recurrent_launch(q, k, v, g, beta, initial_state):
    q, k, v = (_lastdim_contig(x) for x in (q, k, v))
    bsz, t, hk, dk = q.shape
    hv, dv = v.shape[2], v.shape[3]
    out = torch.empty(bsz, t, hv, dv, dtype=v.dtype, device=v.device)
    final = torch.empty(bsz, hv, dk, dv, dtype=torch.float32, device=v.device)
    s0 = initial_state.contiguous() if initial_state is not None else final
    bk = next_pow2(dk)
    # BV=16 at Dk=128: 8 tiles x 32 heads = 256 programs at batch 1 (132 SMs), 8 KB of state each.
    bv = min(next_pow2(dv), max(16, 2048 // bk))
    grid = (cdiv(dv, bv), bsz * hv)
    _recurrent_kernel[grid](
        q, k, v, g, beta, s0, out, final, t, hv, dk, dv, hv // hk,
        *q.stride()[:3], *k.stride()[:3], *v.stride()[:3], *g.stride(), *beta.stride(), *out.stride()[:3],
        HAS_S0=initial_state is not None, BK=bk, BV=bv, num_warps=4 if bk * bv <= 4096 else 8)
    return out, final


@triton.jit
def _conv_tap_sum(x_base, cs_base, w_ptr, ch, mask, sxc, ssc, ssw, swc, sww, W: tl.constexpr,
                  HAS_CS: tl.constexpr):
    """silu(sum_j w[c, j] xpad[j]) for the single new token, xpad = (conv state, x), in fp32,
    rounded to the input dtype (what ``causal_conv1d`` returns), back in fp32."""
    acc = tl.zeros_like(ch).to(tl.float32)
    if HAS_CS:  # else the state is zero: only the last tap sees data
        for j in tl.static_range(W - 1):  # taps in the order of causal_conv1d's kernel (same rounding)
            sj = tl.load(cs_base + ch * ssc + j * ssw, mask=mask, other=0.0).to(tl.float32)
            acc += sj * tl.load(w_ptr + ch * swc + j * sww, mask=mask, other=0.0).to(tl.float32)
    x_new = tl.load(x_base + ch * sxc, mask=mask, other=0.0)
    acc += x_new.to(tl.float32) * tl.load(w_ptr + ch * swc + (W - 1) * sww, mask=mask, other=0.0).to(tl.float32)
    y = acc * tl.sigmoid(acc)
    return y.to(x_new.dtype).to(tl.float32)


@triton.jit
def _conv_state_shift(x_base, cs_base, ncs_base, ch, mask, sxc, ssc, ssw, W: tl.constexpr):
    """new conv state = (old state[1:], x): the last W-1 inputs."""
    for j in tl.static_range(W - 2):
        sj = tl.load(cs_base + ch * ssc + (j + 1) * ssw, mask=mask, other=0.0)
        tl.store(ncs_base + ch * ssc + j * ssw, sj.to(ncs_base.dtype.element_ty), mask=mask)
    x_new = tl.load(x_base + ch * sxc, mask=mask, other=0.0)
    tl.store(ncs_base + ch * ssc + (W - 2) * ssw, x_new.to(ncs_base.dtype.element_ty), mask=mask)


@triton.jit(do_not_specialize=["HK", "HV", "REP"])  # no recompiles per length / head count
def _decode_step_kernel(x_ptr, cw_ptr, a_ptr, b_ptr, alog_ptr, dtb_ptr, cs_ptr, s0_ptr,
                        o_ptr, sT_ptr, ncs_ptr,
                        HK, HV, DK, DV, REP, q_scale,
                        sxb, sxc, swc, sww, ssb, ssc, ssw, sab, sah, sbb, sbh, sob, soh,
                        W: tl.constexpr, HAS_CS: tl.constexpr, HAS_S0: tl.constexpr,
                        BK: tl.constexpr, BV: tl.constexpr):
    pid_v = tl.program_id(0)
    bb, h, hk, rk, mk, rv, mv = _head_tile(HV, REP, DK, DV, BK, BV)
    x_base = x_ptr + bb * sxb
    cs_base = cs_ptr + bb * ssb
    ncs_base = ncs_ptr + bb * ssb
    cq = hk * DK + rk
    ck = HK * DK + hk * DK + rk
    cv = 2 * HK * DK + h * DV + rv
    q = _conv_tap_sum(x_base, cs_base, cw_ptr, cq, mk, sxc, ssc, ssw, swc, sww, W, HAS_CS)
    k = _conv_tap_sum(x_base, cs_base, cw_ptr, ck, mk, sxc, ssc, ssw, swc, sww, W, HAS_CS)
    v = _conv_tap_sum(x_base, cs_base, cw_ptr, cv, mv, sxc, ssc, ssw, swc, sww, W, HAS_CS)
    # The conv state of the q/k channels is written once per key head, that of v per Dv tile.
    # (Functional: the old state is only read, so there is no race between programs.)
    if HAS_CS:
        if (pid_v == 0) & (h % REP == 0):
            _conv_state_shift(x_base, cs_base, ncs_base, cq, mk, sxc, ssc, ssw, W)
            _conv_state_shift(x_base, cs_base, ncs_base, ck, mk, sxc, ssc, ssw, W)
        _conv_state_shift(x_base, cs_base, ncs_base, cv, mv, sxc, ssc, ssw, W)
    q = q * tl.rsqrt(tl.sum(q * q, axis=0) + 1e-6) * q_scale
    k = k * tl.rsqrt(tl.sum(k * k, axis=0) + 1e-6)
    a_in = tl.load(a_ptr + bb * sab + h * sah).to(tl.float32) + tl.load(dtb_ptr + h).to(tl.float32)
    softplus = tl.where(a_in > 20.0, a_in, tl.log(1.0 + tl.exp(tl.minimum(a_in, 20.0))))
    g = -tl.exp(tl.load(alog_ptr + h).to(tl.float32)) * softplus
    beta = tl.sigmoid(tl.load(b_ptr + bb * sbb + h * sbh).to(tl.float32))
    s, s_offs, smask = _state_tile(s0_ptr, bb, h, HV, DK, DV, rk, mk, rv, mv, HAS_S0, BK, BV)
    s, o = _delta_step(s, q, k, v, g, beta)
    tl.store(o_ptr + bb * sob + h * soh + rv, o.to(o_ptr.dtype.element_ty), mask=mv)
    tl.store(sT_ptr + s_offs, s, mask=smask)


def _decode_step_launch(qkv, conv_weight, a, b, A_log, dt_bias, conv_state, state, num_k_heads, head_k_dim):
    """One kernel for the conv update, SiLU, q/k L2 norm and scale, the gates and the recurrent step."""
    bsz, _, c = qkv.shape
    w = conv_weight.shape[1]
    hk, dk = num_k_heads, head_k_dim
    hv = a.shape[-1]
    dv = (c - 2 * hk * dk) // hv
    dev = qkv.device
    out = torch.empty(bsz, 1, hv, dv, dtype=qkv.dtype, device=dev)
    final = torch.empty(bsz, hv, dk, dv, dtype=torch.float32, device=dev)
    conv_final = torch.empty(bsz, c, w - 1, dtype=qkv.dtype, device=dev)
    if conv_state is None:
        conv_final.zero_()
        conv_final[:, :, -1] = qkv[:, 0]
        cs = conv_final  # unused (HAS_CS=False)
    else:
        cs = conv_state.contiguous()
    s0 = state.contiguous() if state is not None else final
    bk = next_pow2(dk)
    bv = min(next_pow2(dv), max(16, 2048 // bk))
    a2, b2 = a.reshape(bsz, hv), b.reshape(bsz, hv)
    _decode_step_kernel[(cdiv(dv, bv), bsz * hv)](
        qkv, conv_weight, a2, b2, A_log, dt_bias, cs, s0, out, final, conv_final,
        hk, hv, dk, dv, hv // hk, dk**-0.5,
        qkv.stride(0), qkv.stride(2), conv_weight.stride(0), conv_weight.stride(1),
        conv_final.stride(0), conv_final.stride(1), conv_final.stride(2),
        a2.stride(0), a2.stride(1), b2.stride(0), b2.stride(1), out.stride(0), out.stride(2),
        W=w, HAS_CS=conv_state is not None, HAS_S0=state is not None, BK=bk, BV=bv,
        num_warps=4 if bk * bv <= 4096 else 8)
    return out, final, conv_final


# ----------------------------------------------------------------------------------------------
# Chunked (prefill)
# ----------------------------------------------------------------------------------------------


@triton.jit
def _mm_split(a_hi, a_lo, b, MODE: tl.constexpr):
    """a @ b where a was split into bf16 hi + lo beforehand ("x3"/"x3i"; a_lo unused otherwise,
    a_hi is then fp32) and b is fp32: the "x3" product of ``_mm`` without re-splitting a."""
    if MODE == "x3" or MODE == "x3i":
        b_hi = b.to(tl.bfloat16)
        b_lo = (b - b_hi.to(tl.float32)).to(tl.bfloat16)
        if MODE == "x3i":
            a_hi = a_hi.to(tl.float32)
            a_lo = a_lo.to(tl.float32)
            b_hi = b_hi.to(tl.float32)
            b_lo = b_lo.to(tl.float32)
        acc = tl.dot(a_hi, b_hi)
        acc = tl.dot(a_hi, b_lo, acc)
        acc = tl.dot(a_lo, b_hi, acc)
        return acc
    else:
        return tl.dot(a_hi, b, input_precision=MODE)


@triton.jit
def _mm(a, b, MODE: tl.constexpr):
    """a @ b for fp32 a, b with fp32 accumulation. MODE "ieee"/"tf32": one tl.dot; "x3": each
    operand split into bf16 hi + lo, three tensor-core products (~2^-16 relative error, ~fp32 for
    these well-scaled operands, at 1.5x the cost of one tf32 product); "x3i": the same split
    upcast to fp32 before tl.dot (the interpreter's bf16 tl.dot is broken)."""
    if MODE == "x3" or MODE == "x3i":
        a_hi = a.to(tl.bfloat16)
        return _mm_split(a_hi, (a - a_hi.to(tl.float32)).to(tl.bfloat16), b, MODE)
    else:
        return tl.dot(a, b, input_precision=MODE)


@triton.jit
def _mm_in(x, b, MODE: tl.constexpr):
    """x @ b for x in the input dtype and fp32 b. "x3"/"x3i": b split into two parts of x's
    16-bit dtype (x itself is exact), two products; else one fp32 tl.dot (x fp32)."""
    if MODE == "x3" or MODE == "x3i":
        b_hi = b.to(x.dtype)
        b_lo = (b - b_hi.to(tl.float32)).to(x.dtype)
        if MODE == "x3i":
            x = x.to(tl.float32)
            b_hi = b_hi.to(tl.float32)
            b_lo = b_lo.to(tl.float32)
        acc = tl.dot(x, b_hi)
        acc = tl.dot(x, b_lo, acc)
        return acc
    else:
        return tl.dot(x.to(tl.float32), b, input_precision=MODE)


@triton.jit
def _store_split(hi_ptr, lo_ptr, offs, x, MODE: tl.constexpr):
    """Store fp32 x as bf16 hi + lo ("x3"/"x3i"), or as fp32 into hi_ptr."""
    if MODE == "x3" or MODE == "x3i":
        x_hi = x.to(tl.bfloat16)
        tl.store(hi_ptr + offs, x_hi)
        tl.store(lo_ptr + offs, (x - x_hi.to(tl.float32)).to(tl.bfloat16))
    else:
        tl.store(hi_ptr + offs, x)


@triton.jit(do_not_specialize=["T", "HV", "REP"])  # no recompiles per length / head count
def _chunk_prepare_kernel(q_ptr, k_ptr, g_ptr, beta_ptr, tm_ptr, tm_lo_ptr, aqk_ptr, aqk_lo_ptr, gc_ptr,
                          T, HV, DK, REP,
                          sqb, sqt, sqh, skb, skt, skh, sgb, sgt, sgh, sbb, sbt, sbh,
                          C: tl.constexpr, SUBC: tl.constexpr, BK: tl.constexpr, MODE: tl.constexpr):
    NSUB: tl.constexpr = C // SUBC
    n = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = (pid_bh // HV).to(tl.int64)
    h = pid_bh % HV
    hk = h // REP
    rt = (n * C + tl.arange(0, C)).to(tl.int64)  # int64: rt * stride may pass 2^31 for long prompts
    mt = rt < T
    rk = tl.arange(0, BK)
    mk = rk < DK
    g = tl.load(g_ptr + b * sgb + h * sgh + rt * sgt, mask=mt, other=0.0).to(tl.float32)
    beta = tl.load(beta_ptr + b * sbb + h * sbh + rt * sbt, mask=mt, other=0.0).to(tl.float32)
    gc = tl.cumsum(g, axis=0)
    kk = tl.load(k_ptr + b * skb + hk * skh + rt[:, None] * skt + rk[None, :],
                 mask=mt[:, None] & mk[None, :], other=0.0)
    qq = tl.load(q_ptr + b * sqb + hk * sqh + rt[:, None] * sqt + rk[None, :],
                 mask=mt[:, None] & mk[None, :], other=0.0)
    if MODE == "x3i" or MODE == "ieee":  # exact fp32 products (interpreter: bf16 tl.dot is broken)
        kk = kk.to(tl.float32)
        qq = qq.to(tl.float32)
    ri = tl.arange(0, C)
    lower = ri[:, None] > ri[None, :]
    causal = ri[:, None] >= ri[None, :]
    decay = tl.exp(tl.where(causal, gc[:, None] - gc[None, :], -float("inf")))  # 0 above the diagonal
    # q k^T * exp(Gc_i - Gc_j) (j <= i): the intra-chunk attention, used by the scan.
    aqk = tl.dot(qq, tl.trans(kk), input_precision="ieee" if MODE == "ieee" else "tf32") * decay
    # A = strictly-lower(beta_i k_i.k_j exp(Gc_i - Gc_j))
    a = tl.dot(kk, tl.trans(kk), input_precision="ieee" if MODE == "ieee" else "tf32")
    a = tl.where(lower, a * beta[:, None] * decay, 0.0)
    # Diagonal SUBCxSUBC blocks, stacked [NSUB, SUBC, SUBC]: X[s, i, j] = A[s*SUBC + i, s*SUBC + j].
    a4 = tl.reshape(a, [C, NSUB, SUBC])
    blk_r = ri // SUBC
    sel = blk_r[:, None, None] == tl.arange(0, NSUB)[None, :, None]
    x = tl.reshape(tl.sum(tl.where(sel, a4, 0.0), axis=1), [NSUB, SUBC, SUBC])
    # Forward substitution on all diagonal blocks at once: Y = (I + X)^-1 - I, row by row.
    li = tl.arange(0, SUBC)
    y = -x
    for i in tl.static_range(1, SUBC):
        row = tl.sum(tl.where(li[None, :, None] == i, y, 0.0), axis=1)           # [NSUB, SUBC]
        new = row + tl.sum(row[:, :, None] * y, axis=1)
        y = tl.where(li[None, :, None] == i, new[:, None, :], y)
    y = y + tl.where(li[:, None] == li[None, :], 1.0, 0.0)[None, :, :]
    # Block-diagonal D [C, C] from the stacked blocks.
    d = tl.reshape(y, [C, SUBC])
    dfull = tl.reshape(tl.broadcast_to(d[:, None, :], [C, NSUB, SUBC]), [C, C])
    same_blk = blk_r[:, None] == blk_r[None, :]
    dfull = tl.where(same_blk, dfull, 0.0)
    if NSUB > 1:
        # Tm = (I + D A_off)^-1 D = (I - M + M^2 - ...) D with M = D A_off nilpotent (M^NSUB = 0).
        eye = tl.where(ri[:, None] == ri[None, :], 1.0, 0.0)
        m = _mm(dfull, tl.where(same_blk, 0.0, a), MODE)
        r = eye - m
        for _ in tl.static_range(NSUB - 2):
            r = eye - _mm(m, r, MODE)
        tm = _mm(r, dfull, MODE)
    else:
        tm = dfull
    out_offs = ((b * HV + h) * tl.num_programs(0) * C + rt[:, None]) * C + ri[None, :]  # [B, HV, N*C, C]
    _store_split(tm_ptr, tm_lo_ptr, out_offs, tm, MODE)  # split once here, not once per Dv tile
    _store_split(aqk_ptr, aqk_lo_ptr, out_offs, aqk, MODE)
    tl.store(gc_ptr + (b * HV + h) * tl.num_programs(0) * C + rt, gc)  # padded tokens repeat the last Gc


@triton.jit(do_not_specialize=["T", "HV", "REP"])  # no recompiles per length / head count
def _chunk_scan_kernel(q_ptr, k_ptr, v_ptr, beta_ptr, tm_ptr, tm_lo_ptr, aqk_ptr, aqk_lo_ptr, gc_ptr, s0_ptr,
                       o_ptr, sT_ptr,
                       T, HV, DK, DV, REP,
                       sqb, sqt, sqh, skb, skt, skh, svb, svt, svh, sbb, sbt, sbh, sob, sot, soh,
                       HAS_S0: tl.constexpr, C: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
                       MODE: tl.constexpr):
    b, h, hk, rk, mk, rv, mv = _head_tile(HV, REP, DK, DV, BK, BV)
    s, s_offs, smask = _state_tile(s0_ptr, b, h, HV, DK, DV, rk, mk, rv, mv, HAS_S0, BK, BV)
    IS_X3: tl.constexpr = MODE == "x3" or MODE == "x3i"
    ri = tl.arange(0, C)
    n_chunks = tl.cdiv(T, C)
    base_g = (b * HV + h) * n_chunks * C
    for n in range(n_chunks):
        rt = (n * C + ri).to(tl.int64)
        mt = rt < T
        gc = tl.load(gc_ptr + base_g + rt)
        g_last = tl.load(gc_ptr + base_g + n * C + C - 1)
        beta = tl.load(beta_ptr + b * sbb + h * sbh + rt * sbt, mask=mt, other=0.0).to(tl.float32)
        kk = tl.load(k_ptr + b * skb + hk * skh + rt[:, None] * skt + rk[None, :],
                     mask=mt[:, None] & mk[None, :], other=0.0)
        vv = tl.load(v_ptr + b * svb + h * svh + rt[:, None] * svt + rv[None, :],
                     mask=mt[:, None] & mv[None, :], other=0.0).to(tl.float32)
        cc_offs = (base_g + rt[:, None]) * C + ri[None, :]
        tm = tl.load(tm_ptr + cc_offs)
        tm_lo = tl.load(tm_lo_ptr + cc_offs) if IS_X3 else tm
        # v_new = Tm (beta (v - exp(Gc) k S)) = u - w S
        ks = _mm_in(kk, s, MODE)
        v_new = _mm_split(tm, tm_lo, beta[:, None] * (vv - tl.exp(gc)[:, None] * ks), MODE)
        # o = exp(Gc) q S + (q k^T * decay) v_new
        qq = tl.load(q_ptr + b * sqb + hk * sqh + rt[:, None] * sqt + rk[None, :],
                     mask=mt[:, None] & mk[None, :], other=0.0)
        aqk = tl.load(aqk_ptr + cc_offs)
        aqk_lo = tl.load(aqk_lo_ptr + cc_offs) if IS_X3 else aqk
        o = tl.exp(gc)[:, None] * _mm_in(qq, s, MODE) + _mm_split(aqk, aqk_lo, v_new, MODE)
        tl.store(o_ptr + b * sob + h * soh + rt[:, None] * sot + rv[None, :], o.to(o_ptr.dtype.element_ty),
                 mask=mt[:, None] & mv[None, :])
        # S <- exp(Gc_last) S + k^T (exp(Gc_last - Gc) v_new)
        s = s * tl.exp(g_last) + _mm_in(tl.trans(kk), v_new * tl.exp(g_last - gc)[:, None], MODE)
    tl.store(sT_ptr + s_offs, s, mask=smask)


def _mode(dtype: torch.dtype, mode: str | None) -> str:
    if dtype == torch.float32:
        return "ieee"
    mode = mode or "x3"
    if interpreting():  # bf16 tl.dot is broken there: split and upcast, or plain fp32
        return "x3i" if mode == "x3" else "ieee"
    return mode


def chunk_gated_delta_rule_triton_config(q, k, v, g, beta, initial_state, chunk_size, *, scan_bv=None,
                                         scan_warps=None, scan_stages=2, mode=None):
    """The launcher with its tuning knobs exposed (benchmarks and tests). ``mode`` for 16-bit
    inputs: "x3" (default, bf16 hi/lo splits) or "tf32"; fp32 inputs always use "ieee"."""
    q, k, v = (_lastdim_contig(x) for x in (q, k, v))
    bsz, t, hk, dk = q.shape
    hv, dv = v.shape[2], v.shape[3]
    dev = v.device
    out = torch.empty(bsz, t, hv, dv, dtype=v.dtype, device=dev)
    final = torch.empty(bsz, hv, dk, dv, dtype=torch.float32, device=dev)
    if t == 0:
        if initial_state is not None:
            final.copy_(initial_state)
        else:
            final.zero_()
        return out, final
    n_chunks = cdiv(t, chunk_size)
    tpad = n_chunks * chunk_size
    bk = max(16, next_pow2(dk))
    mode = _mode(q.dtype, mode)
    # Tm and the masked q k^T per chunk, [B, Hv, N*C, C]: bf16 hi + lo pairs for "x3", else fp32.
    split = mode in ("x3", "x3i")
    buf = lambda: torch.empty(bsz, hv, tpad, chunk_size, dtype=torch.bfloat16 if split else torch.float32,  # noqa: E731
                              device=dev)
    tm, aqk = buf(), buf()
    tm_lo, aqk_lo = (buf(), buf()) if split else (tm, aqk)
    gc = torch.empty(bsz, hv, tpad, dtype=torch.float32, device=dev)
    _chunk_prepare_kernel[(n_chunks, bsz * hv)](
        q, k, g, beta, tm, tm_lo, aqk, aqk_lo, gc, t, hv, dk, hv // hk,
        *q.stride()[:3], *k.stride()[:3], *g.stride(), *beta.stride(),
        C=chunk_size, SUBC=min(SUB, chunk_size), BK=bk, MODE=mode,
        num_warps=4 if bk * chunk_size <= 4096 else 8)  # C=64, Dk=128: 215 registers at 8 warps, 240 at 4
    # BV=32 at Dv=128: 4 tiles x 32 heads = 128 programs at batch 1 on 132 SMs (the scan is
    # sequential over chunks, so parallelism comes only from (batch, head, Dv tile)). Compiled for
    # sm_90 with launch-like specialization (Triton 3.6): BV=32 with 8 warps uses 255 registers and
    # 32 B of stack, 160 KB of shared memory at num_stages=2; BV=64 spills ~300 B.
    bv = scan_bv or min(32, max(16, next_pow2(dv)))
    s0 = initial_state.contiguous() if initial_state is not None else final
    _chunk_scan_kernel[(cdiv(dv, bv), bsz * hv)](
        q, k, v, beta, tm, tm_lo, aqk, aqk_lo, gc, s0, out, final, t, hv, dk, dv, hv // hk,
        *q.stride()[:3], *k.stride()[:3], *v.stride()[:3], *beta.stride(), *out.stride()[:3],
        HAS_S0=initial_state is not None, C=chunk_size, BK=bk, BV=bv, MODE=mode,
        num_warps=scan_warps or (8 if bk * bv >= 4096 else 4), num_stages=scan_stages)
    return out, final


# torch.library registration: opaque to torch.compile, capturable in CUDA graphs (no host syncs).
@torch.library.custom_op("hlwq::recurrent_gated_delta_rule", mutates_args=())
def _recurrent_op(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, g: torch.Tensor, beta: torch.Tensor,
                  initial_state: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    return _recurrent_launch(q, k, v, g, beta, initial_state)


@_recurrent_op.register_fake
def _(q, k, v, g, beta, initial_state):
    bsz, t, hv, dv = v.shape
    return v.new_empty(bsz, t, hv, dv), v.new_empty(bsz, hv, q.shape[3], dv, dtype=torch.float32)


@torch.library.custom_op("hlwq::chunk_gated_delta_rule", mutates_args=())
def _chunk_op(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, g: torch.Tensor, beta: torch.Tensor,
              initial_state: torch.Tensor | None, chunk_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    return chunk_gated_delta_rule_triton_config(q, k, v, g, beta, initial_state, chunk_size)


@_chunk_op.register_fake
def _(q, k, v, g, beta, initial_state, chunk_size):
    bsz, t, hv, dv = v.shape
    return v.new_empty(bsz, t, hv, dv), v.new_empty(bsz, hv, q.shape[3], dv, dtype=torch.float32)


@torch.library.custom_op("hlwq::gated_delta_decode_step", mutates_args=())
def _decode_step_op(qkv: torch.Tensor, conv_weight: torch.Tensor, a: torch.Tensor, b: torch.Tensor,
                    A_log: torch.Tensor, dt_bias: torch.Tensor, conv_state: torch.Tensor | None,
                    state: torch.Tensor | None, num_k_heads: int,
                    head_k_dim: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return _decode_step_launch(qkv, conv_weight, a, b, A_log, dt_bias, conv_state, state, num_k_heads, head_k_dim)


@_decode_step_op.register_fake
def _(qkv, conv_weight, a, b, A_log, dt_bias, conv_state, state, num_k_heads, head_k_dim):
    bsz, _, c = qkv.shape
    hv = a.shape[-1]
    dv = (c - 2 * num_k_heads * head_k_dim) // hv
    return (qkv.new_empty(bsz, 1, hv, dv), qkv.new_empty(bsz, hv, head_k_dim, dv, dtype=torch.float32),
            qkv.new_empty(bsz, c, conv_weight.shape[1] - 1))


def recurrent_gated_delta_rule_triton(q, k, v, g, beta, initial_state):
    """Launcher (same arguments as ``recurrent_gated_delta_rule_reference``), through
    ``hlwq::recurrent_gated_delta_rule``."""
    return torch.ops.hlwq.recurrent_gated_delta_rule(q, k, v, g, beta, initial_state)


def chunk_gated_delta_rule_triton(q, k, v, g, beta, initial_state, chunk_size):
    """Launcher (same arguments as ``chunk_gated_delta_rule_reference``; chunk_size 16, 32 or 64),
    through ``hlwq::chunk_gated_delta_rule``."""
    return torch.ops.hlwq.chunk_gated_delta_rule(q, k, v, g, beta, initial_state, chunk_size)


def gated_delta_decode_step_triton(qkv, conv_weight, a, b, A_log, dt_bias, conv_state, state, num_k_heads,
                                   head_k_dim):
    """Launcher (same arguments as ``gated_delta_decode_step_reference``), through
    ``hlwq::gated_delta_decode_step``."""
    return torch.ops.hlwq.gated_delta_decode_step(qkv, conv_weight, a, b, A_log, dt_bias, conv_state, state,
                                                  num_k_heads, head_k_dim)

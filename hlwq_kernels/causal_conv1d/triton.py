"""Triton depthwise causal conv1d with carried state (prefill and the T=1 decode update).

One kernel, ``_causal_conv1d_kernel``: program (channel tile, time tile, batch) computes a
[BT, BC] output tile from W shifted loads of x (positions before 0 come from the state), in fp32,
then SiLU; the last time tile also writes the final state (the last W-1 inputs).
Floor, decode (B=1, C=8192, W=4, bf16): x 16 KB + state 48 KB read + 48 KB written + weight
64 KB (bf16) + out 16 KB = ~0.2 MB -> < 0.1 us at 3 TB/s: launch latency (~2-3 us) is the cost.
Prefill (T=4096, C=8192, bf16): x read once (67 MB, the W-1 halo rows are L2 hits), out written
once (67 MB) -> 134 MB -> ~45 us at 3 TB/s.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .._common import cdiv, next_pow2


@triton.jit(do_not_specialize=["T"])  # no recompiles per length
def _causal_conv1d_kernel(x_ptr, w_ptr, s0_ptr, o_ptr, sT_ptr, T, C,
                          sxb, sxt, swc, sww, ssb, ssc, sob, sot,
                          W: tl.constexpr, WP: tl.constexpr, HAS_S0: tl.constexpr, SILU: tl.constexpr,
                          BT: tl.constexpr, BC: tl.constexpr):
    pid_c = tl.program_id(0)
    pid_t = tl.program_id(1)
    b = tl.program_id(2).to(tl.int64)
    rc = pid_c * BC + tl.arange(0, BC)
    mc = rc < C
    rt = pid_t * BT + tl.arange(0, BT)
    mt = rt < T
    x_base = x_ptr + b * sxb
    s_base = s0_ptr + b * ssb
    acc = tl.zeros([BT, BC], dtype=tl.float32)
    for j in tl.static_range(W):
        wj = tl.load(w_ptr + rc * swc + j * sww, mask=mc, other=0.0).to(tl.float32)
        src = rt + (j - (W - 1))                      # position in x; < 0 reads the state
        in_x = (src >= 0) & mt
        xv = tl.load(x_base + src[:, None] * sxt + rc[None, :], mask=in_x[:, None] & mc[None, :], other=0.0)
        xv = xv.to(tl.float32)
        if HAS_S0:
            in_s = (src < 0) & mt
            sv = tl.load(s_base + rc[None, :] * ssc + (src + (W - 1))[:, None],
                         mask=in_s[:, None] & mc[None, :], other=0.0)
            xv += sv.to(tl.float32)
        acc += xv * wj[None, :]
    if SILU:
        acc = acc * tl.sigmoid(acc)
    tl.store(o_ptr + b * sob + rt[:, None] * sot + rc[None, :], acc.to(o_ptr.dtype.element_ty),
             mask=mt[:, None] & mc[None, :])
    if pid_t == tl.num_programs(1) - 1:
        # final_state[:, i] = xpad[T + i] = x[T - (W-1) + i], or state[T + i] when that is < 0.
        # (Fresh names: a runtime `if` must not rebind variables of another shape.)
        f_i = tl.arange(0, WP)  # WP: W - 1 rounded up to a power of two
        f_m = f_i < W - 1
        f_src = T - (W - 1) + f_i
        f_in_x = (f_src >= 0) & f_m
        f_v = tl.load(x_base + f_src[None, :] * sxt + rc[:, None], mask=f_in_x[None, :] & mc[:, None], other=0.0)
        if HAS_S0:
            f_in_s = (f_src < 0) & f_m
            f_s = tl.load(s_base + rc[:, None] * ssc + (T + f_i)[None, :], mask=f_in_s[None, :] & mc[:, None],
                          other=0.0)
            f_v = tl.where(f_in_s[None, :], f_s.to(f_v.dtype), f_v)
        tl.store(sT_ptr + b * ssb + rc[:, None] * ssc + f_i[None, :], f_v.to(sT_ptr.dtype.element_ty),
                 mask=f_m[None, :] & mc[:, None])


def _causal_conv1d_launch(x, weight, initial_state, activation):
    if x.stride(-1) != 1:
        x = x.contiguous()
    bsz, t, c = x.shape
    w = weight.shape[1]
    out = torch.empty(bsz, t, c, dtype=x.dtype, device=x.device)
    final = torch.empty(bsz, c, w - 1, dtype=x.dtype, device=x.device)
    if t == 0:
        if initial_state is None:
            final.zero_()
        else:
            final.copy_(initial_state)
        return out, final
    s0 = initial_state.contiguous() if initial_state is not None else final
    # Decode (T small): a short time tile and 256 channels: C=8192 gives 32 programs.
    # Prefill: [16, 128] tiles (4096 x 8192: 16384 programs; x rows read ~(1 + 3/16) times, the
    # halo from L2); [32, 128] needs 255 registers and spills on sm_90 (Triton 3.6).
    bt = 2 if t <= 2 else min(16, next_pow2(t))
    bc = 256 if t <= 2 else 128
    grid = (cdiv(c, bc), cdiv(t, bt), bsz)
    _causal_conv1d_kernel[grid](
        x, weight, s0, out, final, t, c, x.stride(0), x.stride(1), weight.stride(0), weight.stride(1),
        final.stride(0), final.stride(1), out.stride(0), out.stride(1),
        W=w, WP=max(2, next_pow2(w - 1)), HAS_S0=initial_state is not None, SILU=activation == "silu", BT=bt, BC=bc, num_warps=4)
    return out, final


# torch.library registration: opaque to torch.compile, capturable in CUDA graphs (no host syncs).
@torch.library.custom_op("hlwq::causal_conv1d", mutates_args=())
def _causal_conv1d_op(x: torch.Tensor, weight: torch.Tensor, initial_state: torch.Tensor | None,
                      activation: str | None) -> tuple[torch.Tensor, torch.Tensor]:
    return _causal_conv1d_launch(x, weight, initial_state, activation)


@_causal_conv1d_op.register_fake
def _(x, weight, initial_state, activation):
    bsz, t, c = x.shape
    return x.new_empty(bsz, t, c), x.new_empty(bsz, c, weight.shape[1] - 1)


def causal_conv1d_triton(x, weight, initial_state, activation):
    """Launcher (same arguments as ``causal_conv1d_reference``), through ``hlwq::causal_conv1d``."""
    return torch.ops.hlwq.causal_conv1d(x, weight, initial_state, activation)

"""Plain PyTorch gated delta rule, fp32 inside: the sequential recurrence (the definition) and the
chunked WY/UT form (the same maths in matmuls, fast enough for CPU prefill).

Per value head, for t in order (g: log-decay, beta: write strength):
    S <- exp(g_t) S;  u_t = beta_t (v_t - S^T k_t);  S <- S + k_t u_t^T;  o_t = S^T q_t.
Value head h reads key head h // (Hv // Hk). q and k are used as given (no l2norm, no scale).
"""

from __future__ import annotations

import torch


def _expand_heads(q: torch.Tensor, k: torch.Tensor, hv: int):
    """[B, T, Hk, D] -> [B, Hv, T, D] fp32 (value head h reads key head h // (Hv // Hk))."""
    rep = hv // q.shape[2]
    q = q.to(torch.float32).repeat_interleave(rep, dim=2).transpose(1, 2)
    k = k.to(torch.float32).repeat_interleave(rep, dim=2).transpose(1, 2)
    return q, k


def _zero_state(q: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    b, _, hv, dv = v.shape
    return torch.zeros(b, hv, q.shape[-1], dv, dtype=torch.float32, device=v.device)


def recurrent_gated_delta_rule_reference(q, k, v, g, beta, initial_state):
    """The recurrence, one token at a time. Returns (out [B, T, Hv, Dv] in v.dtype, final_state fp32)."""
    hv = v.shape[2]
    qf, kf = _expand_heads(q, k, hv)                       # [B, Hv, T, Dk]
    vf = v.to(torch.float32).transpose(1, 2)               # [B, Hv, T, Dv]
    gf = g.to(torch.float32).transpose(1, 2)               # [B, Hv, T]
    bf = beta.to(torch.float32).transpose(1, 2)
    s = _zero_state(q, v) if initial_state is None else initial_state.to(torch.float32).clone()
    out = torch.empty_like(vf)
    for t in range(v.shape[1]):
        s = s * gf[:, :, t, None, None].exp()
        kt = kf[:, :, t]
        u = bf[:, :, t, None] * (vf[:, :, t] - torch.einsum("bhkv,bhk->bhv", s, kt))
        s = s + kt[..., :, None] * u[..., None, :]
        out[:, :, t] = torch.einsum("bhkv,bhk->bhv", s, qf[:, :, t])
    return out.transpose(1, 2).to(v.dtype), s


def chunk_gated_delta_rule_reference(q, k, v, g, beta, initial_state, chunk_size):
    """Chunked form (same result as the recurrence up to fp32 rounding).

    Within a chunk of C tokens with state S0 at its start, Gc = cumsum(g) (within the chunk),
    A[i, j] = beta_i (k_i . k_j) exp(Gc_i - Gc_j) for j < i, Tm = (I + A)^-1 (unit lower triangular):
        U = Tm (beta v) - Tm (beta exp(Gc) k) S0           (the u_t of all C tokens at once)
        o_i = exp(Gc_i) S0^T q_i + sum_{j<=i} exp(Gc_i - Gc_j) (q_i . k_j) U_j
        S_C = exp(Gc_C) S0 + sum_j exp(Gc_C - Gc_j) k_j U_j^T
    Padding tokens (k = 0, g = 0, beta = 0) change nothing.
    """
    bsz, t, hv, dv = v.shape
    qf, kf = _expand_heads(q, k, hv)                       # [B, Hv, T, Dk]
    vf = v.to(torch.float32).transpose(1, 2)               # [B, Hv, T, Dv]
    gf = g.to(torch.float32).transpose(1, 2)               # [B, Hv, T]
    bf = beta.to(torch.float32).transpose(1, 2)
    c = chunk_size
    pad = (-t) % c
    if pad:
        qf, kf, vf = (torch.nn.functional.pad(x, (0, 0, 0, pad)) for x in (qf, kf, vf))
        gf, bf = (torch.nn.functional.pad(x, (0, pad)) for x in (gf, bf))
    n = (t + pad) // c
    qf, kf, vf = (x.reshape(bsz, hv, n, c, x.shape[-1]) for x in (qf, kf, vf))
    gc = gf.reshape(bsz, hv, n, c).cumsum(-1)              # [B, Hv, N, C]
    bf = bf.reshape(bsz, hv, n, c)
    causal = torch.ones(c, c, dtype=torch.bool, device=v.device).tril()
    diff = (gc[..., :, None] - gc[..., None, :]).masked_fill(~causal, float("-inf"))
    decay = diff.exp()                                     # exp(Gc_i - Gc_j) for j <= i, else 0
    a = (kf @ kf.transpose(-1, -2)) * decay * bf[..., :, None]
    a = a.tril(-1)                                         # strictly lower
    eye = torch.eye(c, dtype=torch.float32, device=v.device)
    tm_u = torch.linalg.solve_triangular(a + eye, bf[..., None] * vf, upper=False, unitriangular=True)
    tm_w = torch.linalg.solve_triangular(a + eye, (bf * gc.exp())[..., None] * kf, upper=False,
                                         unitriangular=True)
    attn = (qf @ kf.transpose(-1, -2)) * decay            # [B, Hv, N, C, C]
    q_dec = qf * gc.exp()[..., None]
    k_dec = kf * (gc[..., -1:] - gc).exp()[..., None]
    s = _zero_state(q, v) if initial_state is None else initial_state.to(torch.float32).clone()
    out = torch.empty_like(vf)
    for i in range(n):
        u = tm_u[:, :, i] - tm_w[:, :, i] @ s
        out[:, :, i] = q_dec[:, :, i] @ s + attn[:, :, i] @ u
        s = s * gc[:, :, i, -1, None, None].exp() + k_dec[:, :, i].transpose(-1, -2) @ u
    out = out.reshape(bsz, hv, n * c, dv)[:, :, :t]
    return out.transpose(1, 2).to(v.dtype), s


def l2norm(x: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """x * rsqrt(sum(x^2) + eps) over the last dim, fp32 (transformers' / fla's Qwen3.5 l2norm)."""
    x = x.to(torch.float32)
    return x * torch.rsqrt((x * x).sum(-1, keepdim=True) + eps)


def gated_delta_decode_step_reference(qkv, conv_weight, a, b, A_log, dt_bias, conv_state, state, num_k_heads,
                                      head_k_dim):
    """Gated DeltaNet's whole decode step after the projections, unfused:
    conv update + SiLU (output rounded to qkv.dtype, as ``causal_conv1d`` returns it), split into
    q | k | v, q, k L2-normalised in fp32 (eps 1e-6) and q scaled by Dk^-0.5, beta = sigmoid(b),
    g = -exp(A_log) softplus(a + dt_bias) (fp32), then one recurrent step.
    Returns (out [B, 1, Hv, Dv] in qkv.dtype, final_state fp32, final_conv_state in qkv.dtype)."""
    from ..causal_conv1d.reference import causal_conv1d_reference

    bsz, t, c = qkv.shape
    hk, dk = num_k_heads, head_k_dim
    hv = a.shape[-1]
    dv = (c - 2 * hk * dk) // hv
    y, conv_final = causal_conv1d_reference(qkv, conv_weight, conv_state, "silu")
    q, k, v = y.split([hk * dk, hk * dk, hv * dv], dim=-1)
    q = l2norm(q.reshape(bsz, t, hk, dk)) * dk**-0.5
    k = l2norm(k.reshape(bsz, t, hk, dk))
    v = v.reshape(bsz, t, hv, dv)
    beta = torch.sigmoid(b.to(torch.float32))
    g = -A_log.to(torch.float32).exp() * torch.nn.functional.softplus(a.to(torch.float32) + dt_bias.to(torch.float32))
    out, final = recurrent_gated_delta_rule_reference(q, k, v, g, beta, state)
    return out, final, conv_final

"""Plain PyTorch depthwise causal conv1d with carried state, fp32 inside."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def causal_conv1d_reference(x, weight, initial_state, activation):
    """out[b, t, c] = act(sum_j weight[c, j] * xpad[b, t + j, c]), xpad = concat(state, x) over time.

    Returns (out [B, T, C] in x.dtype, final_state [B, C, W-1] in x.dtype = the last W-1 of xpad).
    """
    bsz, t, c = x.shape
    w = weight.shape[1]
    if initial_state is None:
        state = torch.zeros(bsz, c, w - 1, dtype=torch.float32, device=x.device)
    else:
        state = initial_state.to(torch.float32)
    xpad = torch.cat((state, x.to(torch.float32).transpose(1, 2)), dim=2)       # [B, C, W-1+T]
    y = F.conv1d(xpad, weight.to(torch.float32).unsqueeze(1), groups=c)         # [B, C, T]
    if activation == "silu":
        y = F.silu(y)
    final = xpad[:, :, xpad.shape[2] - (w - 1):]
    return y.transpose(1, 2).to(x.dtype), final.to(x.dtype).contiguous()

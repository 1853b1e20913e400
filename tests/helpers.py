"""Assertion helpers that say *where* a comparison failed."""

from __future__ import annotations

import torch


def assert_close_verbose(actual: torch.Tensor, expected: torch.Tensor, *, atol: float, rtol: float = 0.0,
                         what: str = "") -> None:
    """Like torch.testing.assert_close, but reports the first mismatching indices and NaN/inf
    disagreement. Compared in float64."""
    a = actual.detach().to("cpu", torch.float64)
    e = expected.detach().to("cpu", torch.float64)
    assert a.shape == e.shape, f"{what} shape {tuple(a.shape)} != expected {tuple(e.shape)}"
    nan_a, nan_e = torch.isnan(a), torch.isnan(e)
    if not torch.equal(nan_a, nan_e):
        idx = (nan_a != nan_e).nonzero()[:5].tolist()
        raise AssertionError(f"{what} NaN mismatch at {idx}")
    inf_a, inf_e = torch.isinf(a), torch.isinf(e)
    if not torch.equal(inf_a, inf_e) or not torch.equal(a[inf_a], e[inf_e]):
        raise AssertionError(f"{what} inf mismatch")
    ok = ~(nan_a | inf_a)
    err = (a - e).abs()
    bad = ok & (err > atol + rtol * e.abs())
    if bool(bad.any()):
        idx = bad.nonzero()[:5]
        rows = [f"  {tuple(i.tolist())}: got {a[tuple(i)].item():.6g}, expected {e[tuple(i)].item():.6g}"
                for i in idx]
        raise AssertionError(
            f"{what} {int(bad.sum())}/{a.numel()} elements differ beyond atol={atol:g} rtol={rtol:g}; "
            f"max abs err {err[ok].max().item():.4g}; first:\n" + "\n".join(rows))


def rel_err(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """||actual - expected|| / ||expected|| in float64."""
    a = actual.detach().to("cpu", torch.float64)
    e = expected.detach().to("cpu", torch.float64)
    return float((a - e).norm() / e.norm().clamp_min(1e-300))

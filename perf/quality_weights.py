"""HLWQ weight quality vs round-to-nearest absmax at the same bits per weight; prints markdown.

    python perf/quality_weights.py [--bits 2 3 4 5 6 7 8] [--fixture DIR]

Three sources, each quantized by ``quantize_weight(w, bits, impl="reference")`` (block 128, the
Gaussian Lloyd-Max codebook) and by ``rtn_absmax_roundtrip(w, bits)`` (GGUF Q*_0-style: b-bit signed
ints, one fp16 scale per 128 weights; both ``bits + 0.125`` bits per weight):
* N(0, 1): four 1024 x 4096 matrices (should match the codebook's MSE on N(0, 1), column "Lloyd-Max");
* Student-t, df 4 (heavy tails): four 1024 x 4096 matrices;
* the trained fixture tiny-qwen35-pystd: every 2-D ``*_proj*.weight`` (q/k/v/o, in_proj_qkv/z/a/b,
  out_proj, gate/up/down: 62 linears) plus ``lm_head``; embeddings, norms and conv weights skipped.
Relative MSE = sum ||W - W_hat||^2 / sum ||W||^2 over the source's matrices; cosine = per matrix
(flattened), mean and minimum over the source's matrices. "HLWQ, RMS scale" is HLWQ without the
per-block scale search (codes of y / rms(y), scale rms(y)): on N(0, 1) it reproduces the
codebook's MSE; the shipped quantizer's search takes 2-20% off it.
"""

from __future__ import annotations

import argparse
import glob
import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch.nn.functional as F  # noqa: E402

from hlwq_kernels.fwht import fwht  # noqa: E402
from hlwq_kernels.lloyd_max import gaussian_codebook, gaussian_mse, thresholds_of  # noqa: E402
from hlwq_kernels.quant import dequantize_weight, quantize_weight  # noqa: E402
from hlwq_kernels.quant.rtn import rtn_absmax_roundtrip  # noqa: E402

FIXTURE = "/work/shared/fixtures/tiny-qwen35-pystd"


def fixture_linears(path: str) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file
    sd = {}
    for f in sorted(glob.glob(os.path.join(path, "*.safetensors"))):
        sd.update(load_file(f))
    keep = {k: v for k, v in sd.items()
            if v.ndim == 2 and k.endswith(".weight") and ("_proj" in k or k == "lm_head.weight")}
    return dict(sorted(keep.items()))


def synthetic(kind: str, count: int = 4, shape=(1024, 4096)) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0 if kind == "gauss" else 1)
    out = {}
    for i in range(count):
        if kind == "gauss":
            out[f"{kind}{i}"] = torch.randn(*shape, generator=g)
        else:  # Student-t df 4 = N(0, 1) / sqrt(chi2_4 / 4)
            z = torch.randn(*shape, generator=g)
            chi2 = torch.randn(4, *shape, generator=g).square().sum(0)
            out[f"{kind}{i}"] = z / (chi2 / 4).sqrt()
    return out


def rms_scale_roundtrip(w: torch.Tensor, bits: int, block: int = 128) -> torch.Tensor:
    """HLWQ without the scale search: codes of y / rms(y), scale = rms(y) in fp16 (what the KV
    cache stores). On N(0, 1) its error is the codebook's MSE (up to the 128-sample RMS)."""
    n, k = w.shape
    kp = -(-k // block) * block
    y = fwht(F.pad(w.float(), (0, kp - k)), block=block, impl="reference").view(n, kp // block, block)
    rms = y.square().mean(-1, keepdim=True).sqrt().to(torch.float16).float()
    cb = gaussian_codebook(bits)
    code = torch.bucketize(y / rms.clamp_min(1e-30), thresholds_of(cb))
    rot = (cb[code] * rms).view(n, kp)
    return fwht(rot, block=block, impl="reference")[:, :k]


def stats(mats: dict[str, torch.Tensor], roundtrip) -> tuple[float, float, float, list[float]]:
    """(relative MSE over all matrices, mean cosine, min cosine, per-matrix relative MSE)."""
    err = ref = 0.0
    cos, per = [], []
    for w in mats.values():
        wf = w.to(torch.float64)
        wh = roundtrip(w).to(torch.float64)
        e, r = float((wh - wf).square().sum()), float(wf.square().sum())
        err += e
        ref += r
        per.append(e / r)
        cos.append(float((wh * wf).sum() / (wh.norm() * wf.norm()).clamp_min(1e-300)))
    return err / ref, sum(cos) / len(cos), min(cos), per


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--bits", type=int, nargs="+", default=list(range(2, 9)))
    ap.add_argument("--fixture", default=FIXTURE)
    args = ap.parse_args()
    sources = {"N(0,1)": synthetic("gauss"), "Student-t df4": synthetic("t4")}
    if os.path.isdir(args.fixture):
        lin = fixture_linears(args.fixture)
        sources[f"tiny-qwen35-pystd ({len(lin)} linears)"] = lin
    print("| source | bits | Lloyd-Max MSE on N(0,1) | HLWQ, RMS scale | HLWQ rel. MSE | RTN absmax rel. MSE "
          "| HLWQ / RTN MSE "
          "| HLWQ cosine mean (min) | RTN cosine mean (min) | matrices where HLWQ has the lower MSE |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for name, mats in sources.items():
        for bits in args.bits:
            hl = stats(mats, lambda w: dequantize_weight(quantize_weight(w, bits, impl="reference"),
                                                         impl="reference"))
            rt = stats(mats, lambda w: rtn_absmax_roundtrip(w, bits))
            plain = stats(mats, lambda w: rms_scale_roundtrip(w, bits))
            print(f"| {name} | {bits} | {gaussian_mse(gaussian_codebook(bits)):.4g} | {plain[0]:.4g} | {hl[0]:.4g} "
                  f"| {rt[0]:.4g} "
                  f"| {hl[0] / rt[0]:.3f} | {hl[1]:.6f} ({hl[2]:.6f}) | {rt[1]:.6f} ({rt[2]:.6f}) "
                  f"| {sum(a < b for a, b in zip(hl[3], rt[3]))}/{len(mats)} |", flush=True)


if __name__ == "__main__":
    main()

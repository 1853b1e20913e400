"""Sweep the fwht dot kernel's launch config on the GPU (prints a table; picks DOT_CONFIG)."""

import itertools

import torch
import triton

from hlwq_kernels import hadamard_matrix
from hlwq_kernels.fwht import fwht_triton_method


def bench(fn):
    return triton.testing.do_bench(fn, warmup=25, rep=100, return_mode="median")


def main():
    for rows_total in (2048, 16384):
        x = torch.randn(rows_total, 4096, device="cuda", dtype=torch.bfloat16)
        nbytes = 2 * x.numel() * 2
        y = torch.empty_like(x)
        h = hadamard_matrix(128, dtype=torch.bfloat16, device="cuda")
        res = [("copy", bench(lambda: y.copy_(x))), ("matmul-H", bench(lambda: x.view(-1, 128) @ h)),
               ("butterfly", bench(lambda: fwht_triton_method(x, 128, "butterfly")))]
        for rows, warps, stages, psm in itertools.product((64, 128), (4, 8), (1, 2, 3), (2, 4, 8)):
            cfg = dict(rows=rows, num_warps=warps, num_stages=stages, programs_per_sm=psm)
            try:
                res.append((str(cfg), bench(lambda: fwht_triton_method(x, 128, "dot", **cfg))))
            except Exception as e:  # noqa: BLE001 - report and go on
                res.append((f"{cfg} FAILED {type(e).__name__}", float("inf")))
        print(f"\n[{rows_total}, 4096] bf16, block 128 ({nbytes / 1e6:.1f} MB moved)")
        for name, ms in sorted(res, key=lambda r: r[1])[:12] + [r for r in res if r[0] in ("copy", "matmul-H", "butterfly")]:
            print(f"{ms * 1e3:8.2f} us {nbytes / ms / 1e6:8.0f} GB/s  {name}")


if __name__ == "__main__":
    main()

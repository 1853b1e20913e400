"""quantize_weight and lloyd_max_fit on the H100, with same-run baselines.

* quantize_weight, down_proj [4096, 12288] bf16 at 5 bits (target <= 5 ms): the fused Triton
  kernel; baseline: a bf16 copy of the weight (the bandwidth floor's shape).
  nbytes = read the bf16 weight + write packed codes + norms.
* lloyd_max_fit's assign-and-accumulate pass on 2**24 fp32 samples at 2/5/8 bits, and a whole fit
  (20 steps, tol 0) at 5 bits; baseline: torch.bucketize + bincount (the reference pass).
"""

import pytest
import torch

from shapes import HIDDEN, HLWQ_BLOCK, INTERMEDIATE
from hlwq_kernels.lloyd_max import gaussian_codebook, lloyd_assign_reference, lloyd_assign_triton, lloyd_max_fit
from hlwq_kernels.quant import quantize_weight_triton

N_SAMPLES = 1 << 24


@pytest.mark.benchmark(group="quantize_weight [4096,12288] bf16 5 bits")
@pytest.mark.parametrize("impl", ["triton", "baseline-copy"])
def test_quantize_weight_down(benchmark, gpu_bench, impl):
    n, k, bits = HIDDEN, INTERMEDIATE, 5
    w = torch.randn(n, k, device="cuda", dtype=torch.bfloat16) * 0.02
    nbytes = w.numel() * 2 + n * k * bits // 8 + n * (k // HLWQ_BLOCK) * 2
    if impl == "baseline-copy":
        src = torch.empty(nbytes // 2, dtype=torch.uint8, device="cuda")
        dst = torch.empty_like(src)
        fn = lambda: dst.copy_(src)  # noqa: E731  same byte count moved
    else:
        cb = gaussian_codebook(bits, device="cuda")
        # the kernel alone; quantize_weight adds the fp16-range check (one sync) and the fp16 cast
        fn = lambda: quantize_weight_triton(w, bits, HLWQ_BLOCK, cb)  # noqa: E731
    gpu_bench(benchmark, fn, graph=True, nbytes=nbytes, flops=2 * HLWQ_BLOCK * n * k)


@pytest.mark.benchmark(group="quantize_weight [4096,12288] bf16 5 bits, public API")
def test_quantize_weight_down_public(benchmark, gpu_bench):
    from hlwq_kernels import quantize_weight
    n, k, bits = HIDDEN, INTERMEDIATE, 5
    w = torch.randn(n, k, device="cuda", dtype=torch.bfloat16) * 0.02
    nbytes = w.numel() * 2 + n * k * bits // 8 + n * (k // HLWQ_BLOCK) * 2
    gpu_bench(benchmark, lambda: quantize_weight(w, bits), nbytes=nbytes, note="includes validation syncs")


@pytest.mark.benchmark(group="lloyd assign pass 2^24 fp32 samples")
@pytest.mark.parametrize("bits", [2, 5, 8])
@pytest.mark.parametrize("impl", ["triton", "baseline-reference"])
def test_lloyd_assign(benchmark, gpu_bench, bits, impl):
    x = torch.randn(N_SAMPLES, device="cuda")
    levels = gaussian_codebook(bits, device="cuda")
    f = lloyd_assign_triton if impl == "triton" else lloyd_assign_reference
    gpu_bench(benchmark, lambda: f(x, levels), graph=True, nbytes=x.numel() * 4)


@pytest.mark.benchmark(group="lloyd_max_fit 2^24 fp32 samples, 5 bits, 20 steps")
def test_lloyd_max_fit(benchmark, gpu_bench):
    x = torch.distributions.StudentT(4.0).sample((N_SAMPLES,)).cuda()
    gpu_bench(benchmark, lambda: lloyd_max_fit(x, 5, max_iter=20, tol=0.0), nbytes=21 * x.numel() * 4,
              note="21 passes incl. the init's distortion")

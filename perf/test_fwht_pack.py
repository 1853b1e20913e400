"""fwht and unpack_bits on the H100 against the same-run baselines (a plain copy, and the
Hadamard transform as a bf16 matmul by the 128x128 matrix)."""

import pytest
import torch

from shapes import HIDDEN, HLWQ_BLOCK
from hlwq_kernels import fwht, hadamard_matrix, pack_bits, unpack_bits
from hlwq_kernels.fwht import fwht_triton_method

M_ROWS = 2048  # [2048, 4096] bf16 activations: the prefill-sized rotation


@pytest.mark.benchmark(group="fwht [2048,4096] bf16 block128")
@pytest.mark.parametrize("impl", ["triton-auto", "triton-butterfly", "triton-dot", "baseline-matmul-H", "baseline-copy"])
def test_fwht_2048x4096(benchmark, gpu_bench, impl):
    x = torch.randn(M_ROWS, HIDDEN, device="cuda", dtype=torch.bfloat16)
    nbytes = 2 * x.numel() * x.element_size()
    if impl == "baseline-copy":
        y = torch.empty_like(x)
        fn = lambda: y.copy_(x)  # noqa: E731
    elif impl == "baseline-matmul-H":
        h = hadamard_matrix(HLWQ_BLOCK, dtype=torch.bfloat16, device="cuda")
        fn = lambda: (x.view(-1, HLWQ_BLOCK) @ h).view(M_ROWS, HIDDEN)  # noqa: E731
    else:
        method = impl.split("-")[1]
        fn = lambda: fwht_triton_method(x, HLWQ_BLOCK, method)  # noqa: E731
    gpu_bench(benchmark, fn, graph=True, nbytes=nbytes, flops=2 * HLWQ_BLOCK * x.numel())


@pytest.mark.benchmark(group="fwht [1,4096] bf16 block128 latency")
@pytest.mark.parametrize("impl", ["triton", "baseline-matmul-H"])
def test_fwht_1x4096(benchmark, gpu_bench, impl):
    x = torch.randn(1, HIDDEN, device="cuda", dtype=torch.bfloat16)
    if impl == "triton":
        fn = lambda: fwht(x, block=HLWQ_BLOCK)  # noqa: E731
    else:
        h = hadamard_matrix(HLWQ_BLOCK, dtype=torch.bfloat16, device="cuda")
        fn = lambda: (x.view(-1, HLWQ_BLOCK) @ h).view(1, HIDDEN)  # noqa: E731
    gpu_bench(benchmark, fn, graph=True, nbytes=4 * x.numel())


@pytest.mark.benchmark(group="unpack 2^27 codes")
@pytest.mark.parametrize("bits", [3, 4, 5])
@pytest.mark.parametrize("impl", ["triton-unpack", "triton-pack", "baseline-copy"])
def test_unpack_2p27(benchmark, gpu_bench, bits, impl):
    n_rows, n = 2**27 // 4096, 4096
    codes = torch.randint(0, 1 << bits, (n_rows, n), device="cuda", dtype=torch.uint8)
    packed = pack_bits(codes, bits)
    nbytes = packed.numel() * 4 + codes.numel()  # packed words + one byte per code
    if impl == "baseline-copy":
        src = torch.empty(nbytes // 2, dtype=torch.uint8, device="cuda")
        dst = torch.empty_like(src)
        fn = lambda: dst.copy_(src)  # noqa: E731  same byte count moved (read + write)
    elif impl == "triton-unpack":
        fn = lambda: unpack_bits(packed, bits, n)  # noqa: E731
    else:
        from hlwq_kernels.pack_bits import pack_bits_triton
        fn = lambda: pack_bits_triton(codes, bits)  # noqa: E731  (skips the range check's sync)
    gpu_bench(benchmark, fn, graph=True, nbytes=nbytes)

"""CPU timing of the reference HLWQ quantizer (the CPU path) on down_proj [4096, 12288] bf16 at
5 bits; target <= 2 s on the 2-core dev machine (the peer takes 9.2 s for 4096 x 4096).

    python perf/cpu_quant_timing.py [--bits 5] [--repeat 3] [--threads N]

Prints the best and median wall time of ``quantize_weight(w, bits, impl="reference")``, its CPU
time, and the machine's load average: other processes on a shared 2-core machine inflate wall
times (badly with 2 OpenMP threads, which wait on each other at every op when a core is taken).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from shapes import HIDDEN, INTERMEDIATE  # noqa: E402
from hlwq_kernels.quant import quantize_weight  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--bits", type=int, default=5)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--shape", type=int, nargs=2, default=(HIDDEN, INTERMEDIATE))
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    n, k = args.shape
    w = (torch.randn(n, k, generator=torch.Generator().manual_seed(0)) * 0.02).to(torch.bfloat16)
    quantize_weight(w[:64], args.bits, impl="reference")  # warm up (codebook, allocator)
    times, cpu = [], []
    for _ in range(args.repeat):
        t0, c0 = time.perf_counter(), time.process_time()
        quantize_weight(w, args.bits, impl="reference")
        times.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    # CPU seconds: what the run costs the cores it got; with 1 thread and an idle core, ~the wall time
    print(f"quantize_weight reference, [{n}, {k}] bf16, {args.bits} bits, {torch.get_num_threads()} threads: "
          f"wall best {min(times):.3f} s, median {statistics.median(times):.3f} s; CPU time best {min(cpu):.3f} s "
          f"over {args.repeat} (load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs)")


if __name__ == "__main__":
    main()

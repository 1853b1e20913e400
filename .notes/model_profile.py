"""Where a W5/KV3 decode step of the Qwen3.5-9B-shaped model (random weights) spends its time: the CUDA-graph step
profiled with torch.profiler (CUDA kernels inside the graph), kernels grouped by name; the sum of kernel time
against the step's wall time gives the launch gaps.

    PYTHONPATH=$PWD:perf python .notes/model_profile.py      (GPU; ~18 GB; writes $OUT/model_profile.txt if set)
"""
import collections
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "perf"))

import torch  # noqa: E402
from torch.profiler import ProfilerActivity, profile  # noqa: E402

from hlwq_models.cli import quantize  # noqa: E402
from hlwq_models.qwen35.generate import DecodeGraph  # noqa: E402
from test_model import CTX, random_model9b  # noqa: E402

STEPS = 10


def main():
    model = random_model9b()
    model.compile_elementwise()
    quantize(model, wbits=5, kvbits=3, progress=False)
    model.setup_cache(1, CTX + 64)
    graph = DecodeGraph(model, 1, padded=False)
    cfg = model.config
    prompt = torch.randint(0, cfg.vocab_size, (1, CTX), device="cuda")
    with torch.no_grad():
        model.hidden_states(prompt, torch.arange(CTX, device="cuda"))
    tok = torch.zeros(1, 1, dtype=torch.long, device="cuda")
    pos = torch.tensor([CTX], device="cuda")
    for _ in range(5):
        graph(tok, pos)
    torch.cuda.synchronize()
    ev = [torch.cuda.Event(enable_timing=True) for _ in range(2)]
    ev[0].record()
    for _ in range(STEPS):
        graph(tok, pos)
    ev[1].record()
    torch.cuda.synchronize()
    step_us = ev[0].elapsed_time(ev[1]) * 1e3 / STEPS
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(STEPS):
            graph(tok, pos)
        torch.cuda.synchronize()
    kern = collections.defaultdict(lambda: [0, 0.0])
    for e in prof.events():
        if e.device_type == torch.autograd.DeviceType.CUDA:
            k = kern[e.name[:90]]
            k[0] += 1
            k[1] += e.device_time_total if hasattr(e, "device_time_total") else e.cuda_time_total
    total = sum(v[1] for v in kern.values()) / STEPS
    n = sum(v[0] for v in kern.values()) / STEPS
    lines = [f"step {step_us:.1f} us wall ({1e6 / step_us:.1f} tok/s); {n:.0f} kernels per step, kernel time "
             f"{total:.1f} us; gaps {step_us - total:.1f} us ({(step_us - total) / max(n, 1):.2f} per kernel)"]
    for name, (c, t) in sorted(kern.items(), key=lambda kv: -kv[1][1]):
        lines.append(f"{t / STEPS:9.1f} us  {c / STEPS:6.1f}x  {t / max(c, 1):7.2f} us each  {name}")
    text = "\n".join(lines)
    print(text)
    if os.environ.get("OUT"):
        open(os.path.join(os.environ["OUT"], "model_profile.txt"), "w").write(text + "\n")


if __name__ == "__main__":
    main()

"""Shared test setup.

Without CUDA, Triton kernels run through Triton's CPU interpreter: TRITON_INTERPRET must be
set before any kernel is defined, i.e. before hlwq_kernels is imported, so it is set here.
"""

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402
from hypothesis import HealthCheck, settings  # noqa: E402

# "ci": quick, for the 2-core CPU machine where each interpreted launch costs ~0.1-0.5 s.
# "gpu": thorough, for the H100 run (perf/device.sh selects it).
settings.register_profile("ci", max_examples=8, deadline=None, derandomize=True,
                          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
settings.register_profile("gpu", max_examples=12, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
settings.register_profile("dev", max_examples=25, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "gpu" if torch.cuda.is_available() else "ci"))

ON_GPU = torch.cuda.is_available()
if ON_GPU:
    # fp32 comparisons against fp32 references mean fp32: no TF32 in cuBLAS/cuDNN behind our backs
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False


@pytest.fixture(scope="session")
def device() -> torch.device:
    """Where Triton kernels run: CUDA when present, else the CPU (through the interpreter)."""
    return torch.device("cuda" if ON_GPU else "cpu")

"""impl= dispatch rules shared by every op (hlwq_kernels._common.resolve_impl)."""

import pytest
import torch

from hlwq_kernels._common import check_tensor, resolve_impl


def test_unknown_impl_raises():
    with pytest.raises(ValueError, match="impl must be one of"):
        resolve_impl("fast", torch.zeros(1))


def test_auto_and_triton(monkeypatch):
    cpu = torch.zeros(1)
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    assert resolve_impl("auto", cpu) == "reference"
    assert resolve_impl("reference", cpu) == "reference"
    with pytest.raises(RuntimeError, match="impl='triton' needs CUDA tensors or TRITON_INTERPRET=1"):
        resolve_impl("triton", cpu)
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert resolve_impl("auto", cpu) == "triton"
    assert resolve_impl("triton", cpu) == "triton"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_auto_on_cuda(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    assert resolve_impl("auto", torch.zeros(1, device="cuda")) == "triton"


def test_check_tensor_messages():
    with pytest.raises(ValueError, match=r"w must have shape \[\*, 4\], got \[3, 5\]"):
        check_tensor(torch.zeros(3, 5), "w", shape=(None, 4))
    with pytest.raises(TypeError, match=r"w.dtype must be one of \(float32\), got int64"):
        check_tensor(torch.zeros(3, dtype=torch.long), "w", dtypes=(torch.float32,))

"""Issue #25: the CUDA branches. bf16 autocast and channels_last run only on a GPU (skipped
without one; CI has none); the CPU side of `autocast_for` and the ZeroGPU wrapper (a stand-in
`spaces` module) run everywhere."""

import sys
import types

import numpy as np
import pytest
import torch

from app.endpoints import on_zero_gpu
from detector.predictor import Predictor, autocast_for

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def test_autocast_is_off_on_cpu():
    a = torch.randn(4, 4)
    with autocast_for(torch.device("cpu")):
        assert torch.mm(a, a).dtype == torch.float32


@cuda
def test_autocast_is_bf16_on_cuda():
    a = torch.randn(4, 4, device="cuda")
    with autocast_for(torch.device("cuda")):
        assert torch.mm(a, a).dtype == torch.bfloat16
    assert torch.mm(a, a).dtype == torch.float32  # only inside


@cuda
def test_a_cuda_predictor_is_channels_last_and_agrees_with_the_cpu(small_image):
    gpu, cpu = Predictor.from_pretrained("tiny", device="cuda"), Predictor.from_pretrained("tiny", device="cpu")
    convs = [p for p in gpu.model.parameters() if p.dim() == 4]
    assert convs and all(p.is_contiguous(memory_format=torch.channels_last) for p in convs)
    on_gpu = gpu.predict(small_image, "person, cup", 0.0, 0.5, 5)[0]
    on_cpu = cpu.predict(small_image, "person, cup", 0.0, 0.5, 5)[0]
    assert len(on_gpu) == len(on_cpu) == 5
    assert np.isfinite(on_gpu.xyxy).all() and np.isfinite(on_gpu.confidence).all()
    # bf16: close, not equal
    assert np.abs(np.sort(on_gpu.confidence) - np.sort(on_cpu.confidence)).max() < 0.05


def test_on_zero_gpu_wraps_with_spaces_gpu_only_on_a_zero_gpu_space(monkeypatch):
    wrapped = []
    fake = types.ModuleType("spaces")
    fake.GPU = lambda fn: wrapped.append(fn) or (lambda *a, **k: ("on gpu", fn(*a, **k)))
    monkeypatch.setitem(sys.modules, "spaces", fake)

    def detect(x):
        return x + 1

    monkeypatch.setenv("SPACE_ID", "someone/app")  # a Space, but not a ZeroGPU one
    monkeypatch.delenv("SPACES_ZERO_GPU", raising=False)
    assert on_zero_gpu(detect) is detect and not wrapped
    monkeypatch.setenv("SPACES_ZERO_GPU", "true")
    assert on_zero_gpu(detect)(1) == ("on gpu", 2) and wrapped == [detect]
    monkeypatch.setitem(sys.modules, "spaces", None)  # not installed: unchanged
    assert on_zero_gpu(detect) is detect

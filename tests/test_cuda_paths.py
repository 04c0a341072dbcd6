"""Issue #25 / #23: the CUDA branches.

Every path that runs on CUDA (predict, assign, region scoring, suggest, finetune in bf16, evaluate,
the dry run, the app's detect / train / hot swap) has a test here on the `device` fixture: CUDA when
one is present, the CPU otherwise, so they run (fast, tiny preset) everywhere. Only the
cross-device comparisons (`@cuda`) are skipped without a GPU: CPU and CUDA (bf16 autocast,
channels_last) agree within 0.05 in scores and 2 px in boxes at 192 px (bf16 keeps 8 bits of
mantissa: ~0.4 % per value, compounded through the tiny network). Training on CUDA is not
bit-exact run to run (cuDNN / atomics); resume exactness is tested on the CPU (test_train.py)."""

import sys
import types

import numpy as np
import pytest
import torch

from app.endpoints import on_zero_gpu
from detector import OpenVocabDetector
from detector.predictor import Predictor, autocast_for
from detector.presets import PRESETS

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


# --- every CUDA path, on the device fixture (CUDA when present, else the CPU) ------------------------


@pytest.fixture(scope="module")
def on_device(device):
    return Predictor.from_pretrained("tiny", device=device)


@pytest.fixture(scope="module")
def clip_scored(device):
    cfg = PRESETS["tiny"].replace(region_scoring=True, region_scorer="clip", region_top_k=20, score_threshold=0.0)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return Predictor(OpenVocabDetector(cfg), device=device)


@pytest.fixture(scope="module")
def syn(tmp_path_factory):
    from train.synthetic import generate

    out = tmp_path_factory.mktemp("syn")
    generate(out, seed=0, n_box=4, n_label=4, n_val=2, size=64)
    return out


def _boxes_inside(det, image):
    h, w = image.shape[:2]
    return (np.isfinite(det.xyxy).all() and (det.xyxy >= 0).all() and (det.xyxy[:, 2] <= w).all()
            and (det.xyxy[:, 3] <= h).all() and np.isfinite(det.confidence).all())


def test_predict_single_and_batched_on_the_device(on_device, small_image, device):
    assert on_device.device.type == torch.device(device).type
    one = on_device.predict(small_image, "person, cup", 0.0, 0.5, 5)[0]
    two = on_device.predict([small_image, small_image[:150]], "person, cup", 0.0, 0.5, 5)
    assert len(one) == 5 and _boxes_inside(one, small_image) and _boxes_inside(two[1], small_image[:150])
    np.testing.assert_allclose(one.confidence, two[0].confidence, atol=1e-2 if device == "cuda" else 1e-5)


def test_assign_on_the_device(on_device, small_image):
    a = on_device.assign(small_image, "person", "person, cup")
    assert a.proposals.shape[1] == 4 and a.scores.shape[1] == 2 and np.isfinite(a.scores).all()
    assert a.rules and all(idx < len(a.proposals) for cs in a.rules.values() for idx, _ in cs)


def test_region_scoring_on_the_device(clip_scored, small_image, device):
    enc = clip_scored.encode([__import__("detector").images.load_image(small_image)])[0]
    assert enc.region_embeddings[0].device.type == torch.device(device).type and len(enc.region_embeddings[0]) == 20
    det = clip_scored.predict(small_image, "person, cup", max_detections=10)[0]
    assert len(det) == 10 and _boxes_inside(det, small_image)


def test_suggest_and_hot_swap_in_the_app_on_the_device(tmp_path, on_device, small_image, device):
    from PIL import Image

    from app.service import AppService

    service = AppService(tmp_path / "data", predictor=on_device)
    service.device = device  # where a hot-swapped model goes (default: CUDA when present)
    path = tmp_path / "photo.png"
    Image.fromarray(small_image).save(path)
    added = service.add_images([str(path)])
    image_hash = service.images()[0]["hash"]
    assert added and isinstance(service.suggest(image_hash, "person, cup", 0.0), list)
    drawn, records = service.detect(small_image, "person, cup", 0.0, 0.5, 3)
    assert drawn.shape == small_image.shape and len(records) == 3
    service.use_model("tiny")  # hot swap: a new predictor on the service's device
    assert service.predictor is not on_device and service.predictor.device.type == torch.device(device).type
    assert len(service.detect(small_image, "person, cup", 0.0, 0.5, 3)[1]) == 3


def test_finetune_in_bf16_then_evaluate_on_the_device(syn, tmp_path, device):
    """The app's training job is this `finetune` (bf16 autocast on CUDA); then held-out evaluation."""
    from train.evaluate import evaluate_model
    from train.finetune import finetune
    from train.run_config import RunConfig

    cfg = RunConfig(model="tiny", box_data=str(syn / "box_train.json"), box_images=str(syn / "images"),
                    label_data=str(syn / "image_labels.json"), label_images=str(syn / "images"), iters=3,
                    box_batch=2, label_batch=2, box_size=64, label_size=32, checkpoint_every=3, log_every=1,
                    warmup=1, lr=1e-3, device=device)
    result = finetune(cfg, tmp_path / "run")
    assert result["state"] == "finished" and np.isfinite(result.get("loss", 0.0))
    trained = Predictor.from_pretrained(str(tmp_path / "run"), device=device)
    metrics = evaluate_model(trained, syn / "val.json", syn / "images")
    assert 0.0 <= metrics["all"]["AP"] <= 1.0


def test_dry_run_on_the_device(syn, device):
    from train.dry_run import dry_run
    from train.run_config import RunConfig

    cfg = RunConfig(model="tiny", heads="light", box_data=str(syn / "box_train.json"), box_images=str(syn / "images"),
                    box_size=64, box_batch=2, device=device)
    out = dry_run(cfg, steps=1)
    assert out["seconds_per_iter"]["box"] > 0 and out["peak_memory_mb"] > 0


@cuda
def test_assign_and_region_scores_agree_across_devices(small_image):
    gpu, cpu = Predictor.from_pretrained("tiny", device="cuda"), Predictor.from_pretrained("tiny", device="cpu")
    a, b = gpu.assign(small_image, "person", "person, cup"), cpu.assign(small_image, "person", "person, cup")
    n = min(len(a.proposals), len(b.proposals), 20)
    assert np.abs(a.proposals[:n] - b.proposals[:n]).max() < 2.0
    assert np.abs(a.scores[:n] - b.scores[:n]).max() < 0.05

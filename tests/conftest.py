"""Shared fixtures. Tests never touch the network: the Hub is forced offline and the text
embedding cache lives in a temporary folder of the session, removed when the session ends."""

import os
import shutil
import tempfile

os.environ["HF_HUB_OFFLINE"] = "1"
# Set before any test module is imported (and inherited by the processes tests start); removed in
# `pytest_unconfigure` unless the caller chose the folder.
_SESSION_CACHE = None if os.environ.get("OVD_CACHE_DIR") else tempfile.mkdtemp(prefix="ovd-cache-")
if _SESSION_CACHE:
    os.environ["OVD_CACHE_DIR"] = _SESSION_CACHE

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402


@pytest.fixture(scope="session")
def tiny_predictor():
    from detector import Predictor

    return Predictor.from_pretrained("tiny", device="cpu")


@pytest.fixture
def tiny_model():
    from detector import load_detector

    return load_detector("tiny")


@pytest.fixture(scope="session")
def astronaut() -> np.ndarray:
    from skimage import data

    return data.astronaut()


@pytest.fixture(scope="session")
def small_image() -> np.ndarray:
    from PIL import Image
    from skimage import data

    return np.array(Image.fromarray(data.astronaut()).resize((192, 192)))


@pytest.fixture
def unit_embeddings():
    def make(n: int, d: int = 64, seed: int = 0) -> torch.Tensor:
        g = torch.Generator().manual_seed(seed)
        return torch.nn.functional.normalize(torch.randn(n, d, generator=g), dim=-1)

    return make


def pytest_unconfigure(config):
    if _SESSION_CACHE:
        shutil.rmtree(_SESSION_CACHE, ignore_errors=True)
        if os.environ.get("OVD_CACHE_DIR") == _SESSION_CACHE:
            del os.environ["OVD_CACHE_DIR"]


@pytest.fixture(scope="session")
def device() -> str:
    """Where the device-agnostic tests run: CUDA when present (bf16 autocast, channels_last), else the CPU."""
    return "cuda" if torch.cuda.is_available() else "cpu"

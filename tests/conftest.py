"""Shared fixtures. Tests never touch the network: the Hub is forced offline and the text
embedding cache lives in a temporary folder."""

import os
import tempfile

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("OVD_CACHE_DIR", tempfile.mkdtemp(prefix="ovd-cache-"))

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

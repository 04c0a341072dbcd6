"""ZeroGPU without a GPU: `spaces` is imported before torch, model operations run under
`spaces.GPU`, and training processes are CPU-only. A fake `spaces` stands in for the real one."""

import os
import subprocess
import sys
import types
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FAKE_SPACES = '''
import sys
torch_was_imported = "torch" in sys.modules
wrapped = []
def GPU(fn=None, **kw):
    if fn is None:
        return GPU
    wrapped.append(fn.__name__)
    return fn
'''


@pytest.fixture
def fake_spaces_path(tmp_path):
    (tmp_path / "spaces").mkdir()
    (tmp_path / "spaces" / "__init__.py").write_text(FAKE_SPACES)
    return tmp_path


def _run(code: str, fake: Path, zero: bool = True) -> str:
    env = {k: v for k, v in os.environ.items() if k != "SPACES_ZERO_GPU"}
    env["PYTHONPATH"] = os.pathsep.join([str(fake), str(ROOT)])
    if zero:
        env["SPACES_ZERO_GPU"] = "true"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


@pytest.mark.parametrize("entry", ["import app.launch", "import runpy; runpy.run_path('app.py')"])
def test_spaces_is_imported_before_torch_on_zero_gpu(fake_spaces_path, entry):
    code = (f"{entry}\nimport sys\nimport app.service\n"
            "print(sys.modules['spaces'].torch_was_imported, 'torch' in sys.modules)")
    assert _run(code, fake_spaces_path) == "False True"  # spaces first; torch came afterwards


def test_spaces_is_left_alone_elsewhere(fake_spaces_path):
    assert _run("import app.launch, sys\nprint('spaces' in sys.modules)", fake_spaces_path, zero=False) == "False"


def test_model_operations_and_only_they_run_under_spaces_gpu(tiny_predictor, tmp_path, monkeypatch):
    from app.endpoints import make_endpoints
    from app.service import AppService

    fake = types.ModuleType("spaces")
    exec(FAKE_SPACES, fake.__dict__)
    monkeypatch.setitem(sys.modules, "spaces", fake)
    monkeypatch.setenv("SPACES_ZERO_GPU", "true")
    endpoints = make_endpoints(AppService(tmp_path / "data", predictor=tiny_predictor))
    gpu = {name for name, fn in endpoints.items() if fn.endpoint["gpu"]}
    assert {"detect", "detect_batch", "assign", "suggest"} <= gpu
    assert sorted(fake.wrapped) == sorted(gpu)  # training, the store, model swaps: no GPU call
    monkeypatch.delenv("SPACES_ZERO_GPU")
    fake.wrapped.clear()
    make_endpoints(AppService(tmp_path / "data2", predictor=tiny_predictor))
    assert fake.wrapped == []


def test_training_processes_get_no_gpu_on_zero_gpu():
    from app.policy import AccessPolicy

    assert AccessPolicy().child_env(env={"SPACES_ZERO_GPU": "true"})["CUDA_VISIBLE_DEVICES"] == ""
    assert "CUDA_VISIBLE_DEVICES" not in AccessPolicy().child_env(env={})

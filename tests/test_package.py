"""`pip install .`: the wheel holds the four packages, the console commands and the one version."""

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

import detector

ROOT = Path(__file__).resolve().parents[1]


def test_the_wheel_lists_the_packages_and_entry_points(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md", "requirements.txt", "app.py"):
        shutil.copy(ROOT / name, src / name)
    for package in ("app", "detector", "train"):
        shutil.copytree(ROOT / package, src / package, ignore=shutil.ignore_patterns("__pycache__"))
    r = subprocess.run([sys.executable, "-m", "pip", "wheel", ".", "--no-deps", "--no-build-isolation", "-w",
                        str(tmp_path / "dist")], cwd=src, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    (wheel,) = (tmp_path / "dist").glob("*.whl")
    assert wheel.name == f"ovdet-{detector.__version__}-py3-none-any.whl"
    with zipfile.ZipFile(wheel) as z:
        names = z.namelist()
        info = f"ovdet-{detector.__version__}.dist-info"
        entry_points = z.read(f"{info}/entry_points.txt").decode()
        metadata = z.read(f"{info}/METADATA").decode()
    for module in ("app/__init__.py", "app/ui/__init__.py", "app/launch.py", "detector/__init__.py",
                   "detector/cli.py", "train/__init__.py", "train/cli.py",
                   "detector/data/imagenet_wordnet.json"):  # the offline name mapping's table (package data)
        assert module in names
    assert not any(n.startswith(("tests/", "bench/", "docs/")) for n in names)
    assert "ovdet = app.launch:ovdet" in entry_points and "ovdet-app = app.launch:main" in entry_points
    assert f"Version: {detector.__version__}" in metadata and "Requires-Dist: supervision==" in metadata


def test_ovdet_dispatches_to_every_cli(capsys, monkeypatch):
    from app import launch

    assert launch.ovdet(["--version"]) == 0 and capsys.readouterr().out.strip() == f"ovdet {detector.__version__}"
    assert launch.ovdet([]) == 2 and "predict" in capsys.readouterr().err
    calls = []
    monkeypatch.setattr("detector.cli.main", lambda argv, prog: calls.append(("detector", argv)) or 0)
    monkeypatch.setattr("train.cli.main", lambda argv, prog: calls.append(("train", argv)) or 0)
    assert launch.ovdet(["predict", "x.png", "-v", "cat"]) == 0 and launch.ovdet(["finetune", "--iters", "1"]) == 0
    assert calls == [("detector", ["predict", "x.png", "-v", "cat"]), ("train", ["finetune", "--iters", "1"])]
    # every command the README shows under "From the repository root … or `ovdet …`" (it lacked three)
    for command, cli in (("export-onnx", "detector"), ("evaluate", "train"), ("synthetic", "train"),
                         ("pretrain", "train"), ("dryrun", "train")):
        calls.clear()
        assert launch.ovdet([command, "--help"]) == 0 and calls == [(cli, [command, "--help"])]
    monkeypatch.undo()
    with pytest.raises(SystemExit):
        launch.ovdet(["dryrun", "--help"])
    assert capsys.readouterr().out.startswith("usage: ovdet dryrun")


def test_the_docker_image_checks_its_health_offers_cpu_torch_and_leaves_tests_out():
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert "\nHEALTHCHECK " in dockerfile and "ARG TORCH_VARIANT=" in dockerfile
    assert "download.pytorch.org/whl/cpu" in dockerfile
    ignored = {line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()}
    assert {"tests", "docs", "bench", ".git", ".venv"} <= ignored
    hadolint = Path(sys.executable).with_name("hadolint")
    if hadolint.exists():
        r = subprocess.run([str(hadolint), str(ROOT / "Dockerfile")], capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, r.stdout + r.stderr

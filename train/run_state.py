"""A training run's directory: resumable checkpoints, status and metrics, all crash-safe.

    RUN_DIR/
      model.safetensors, config.json   latest weights: RUN_DIR itself loads as a model
      checkpoints/iter_0000500/        model + optimizer (safetensors) + trainer_state.json
      checkpoints/latest.json          points at the newest complete checkpoint
      status.json                      state, iteration, pid, message (for the app)
      metrics.jsonl                    one line per logged iteration (tail-able)
      metrics.json                     final summary
      CANCEL                           create this file to stop the run cleanly

Checkpoints are assembled in a temporary folder and renamed into place, and `latest.json` is
replaced atomically afterwards, so a run killed at any moment leaves a loadable checkpoint.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import torch
from safetensors.torch import load_file

from detector.checkpoint import atomic_save_tensors, atomic_write_bytes, load_checkpoint, save_checkpoint

KEEP_CHECKPOINTS = 2


def write_json(path: Path, data: dict) -> None:
    atomic_write_bytes(path, json.dumps(data, indent=2, ensure_ascii=False).encode("utf-8"))


def read_json(path: Path) -> dict | None:
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None


def write_status(run_dir: Path, state: str, **fields) -> None:
    status = read_json(run_dir / "status.json") or {}
    status.update(fields, state=state, updated=time.time(), pid=os.getpid())
    write_json(run_dir / "status.json", status)


def optimizer_tensors(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    sd = optimizer.state_dict()
    tensors = {f"{pid}.{k}": v for pid, st in sd["state"].items() for k, v in st.items() if torch.is_tensor(v)}
    return tensors, {"param_groups": sd["param_groups"]}


def restore_optimizer(optimizer: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], groups: dict) -> None:
    state: dict[int, dict[str, torch.Tensor]] = {}
    for key, v in tensors.items():
        pid, name = key.split(".", 1)
        state.setdefault(int(pid), {})[name] = v
    optimizer.load_state_dict({"state": state, "param_groups": groups["param_groups"]})


def save_run_checkpoint(run_dir: Path, model, optimizer, iteration: int, extra: dict) -> Path:
    ckpts = run_dir / "checkpoints"
    final = ckpts / f"iter_{iteration:07d}"
    tmp = ckpts / f".tmp-iter_{iteration:07d}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    save_checkpoint(model, tmp)
    tensors, groups = optimizer_tensors(optimizer)
    atomic_save_tensors(tensors, tmp / "optimizer.safetensors", {"format": "pt"})
    write_json(tmp / "trainer_state.json", {"iteration": iteration, **groups, **extra})
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)
    write_json(ckpts / "latest.json", {"checkpoint": final.name, "iteration": iteration})
    save_checkpoint(model, run_dir)  # RUN_DIR always loads as the newest model
    for old in sorted(p for p in ckpts.glob("iter_*") if p.is_dir())[:-KEEP_CHECKPOINTS]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def latest_checkpoint(run_dir: Path) -> Path | None:
    info = read_json(Path(run_dir) / "checkpoints" / "latest.json")
    if not info:
        return None
    path = Path(run_dir) / "checkpoints" / info["checkpoint"]
    return path if (path / "model.safetensors").exists() else None


def load_run_checkpoint(path: Path, map_location="cpu"):
    """(model, optimizer tensors, trainer state) of a checkpoint folder."""
    model = load_checkpoint(path, map_location=map_location)
    tensors = load_file(str(path / "optimizer.safetensors"))
    state = read_json(path / "trainer_state.json")
    if state is None:
        raise ValueError(f"'{path}' has no readable trainer_state.json")
    return model, tensors, state

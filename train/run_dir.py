"""`RunDir`: a training run's folder, and the only code that names or touches its files.

    RUN/
      run_config.json                  the RunConfig a fine-tuning run was started with, or
      pretrain_config.json             the PretrainConfig of a pre-training run (one of the two)
      image_labels.json                the label snapshot the app exported for this run (if any)
      boxes_coco.json                  the snapshot of the app's stored boxes (COCO) it trains on (if any)
      job.json                         pid + command of the process the launcher started
      status.json                      state, iteration, total, message, pid of the trainer
      metrics.jsonl                    one line per logged iteration (tail-able)
      metrics.json                     final summary
      eval.json, eval_before.json      evaluation of the trained / starting model (with eval data)
      heldout.json                     held-out tags: split note, starting model's and each checkpoint's scores
      best/                            the checkpoint that scored best on the held-out tags (what is served)
      CANCEL                           present = stop after the current step, with a checkpoint
      stdout.log, train.log            the process's output and the trainer's log
      model.safetensors, config.json   the newest weights: RUN itself loads as a model
      checkpoints/iter_0000500/        model + optimizer (safetensors) + trainer_state.json
                                       (+ NAME.safetensors for a trainer's other state, e.g. momentum)
      checkpoints/latest.json          points at the newest complete checkpoint
    ../.cache/NAME/                    content-addressed caches shared by the runs of one folder
                                       (e.g. proposals per image hash), so re-runs skip done work

Every JSON write is atomic (`detector.files`); a checkpoint is assembled in a temporary folder and
renamed into place before `latest.json` points at it, so a run killed at any moment resumes from
a complete checkpoint. Torch is imported only by the checkpoint methods.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import time
from pathlib import Path

from detector.files import atomic_write, atomic_write_json, read_json

from .run_config import CONFIGS, ConfigBase, RunConfig

KEEP_CHECKPOINTS = 2
ACTIVE_STATES = ("queued", "running")


class RunDir:
    CONFIG = "run_config.json"
    PRETRAIN_CONFIG = "pretrain_config.json"
    CONFIG_FILES = {"finetune": CONFIG, "pretrain": PRETRAIN_CONFIG}  # command -> its config file
    LABELS = "image_labels.json"
    BOXES = "boxes_coco.json"
    JOB = "job.json"
    STATUS = "status.json"
    METRICS_LOG = "metrics.jsonl"
    SUMMARY = "metrics.json"
    EVALUATION = "eval.json"
    EVALUATION_BEFORE = "eval_before.json"
    HELDOUT = "heldout.json"
    BEST = "best"
    CANCEL = "CANCEL"
    STDOUT = "stdout.log"
    TRAIN_LOG = "train.log"
    CHECKPOINTS = "checkpoints"
    CACHE = ".cache"

    def __init__(self, path: str | Path):
        self.path = Path(path)

    @classmethod
    def create(cls, runs_root: str | Path) -> RunDir:
        """A new, empty run folder under `runs_root`, named so that names sort by start time."""
        root = Path(runs_root)
        root.mkdir(parents=True, exist_ok=True)
        while True:
            path = root / f"{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(3)}"
            try:
                path.mkdir()
                return cls(path)
            except FileExistsError:
                continue

    @property
    def id(self) -> str:
        return self.path.name

    def file(self, name: str) -> Path:
        return self.path / name

    def exists(self) -> bool:
        return self.path.is_dir()

    def delete(self) -> None:
        """Remove the run: configuration, checkpoints, metrics and logs. Renamed aside first, so
        a half-deleted run is never listed."""
        doomed = self.path.with_name(f".deleting-{self.id}")
        self.path.rename(doomed)
        shutil.rmtree(doomed, ignore_errors=True)

    # --- configuration and inputs ---------------------------------------------------------
    def write_config(self, cfg: ConfigBase) -> Path:
        return atomic_write_json(self.file(self.CONFIG_FILES[cfg.COMMAND]), cfg.to_dict())

    def command(self) -> str:
        """The `python -m train` sub-command this run's saved config is for."""
        return next((c for c, name in self.CONFIG_FILES.items() if self.file(name).exists()), RunConfig.COMMAND)

    def config_path(self) -> Path:
        return self.file(self.CONFIG_FILES[self.command()])

    def read_config(self) -> ConfigBase:
        """The saved config (a RunConfig or a PretrainConfig, whichever this run has)."""
        return CONFIGS[self.command()].load(self.config_path())

    def cache_dir(self, name: str) -> Path:
        """A content-addressed cache shared with the other runs in the same parent folder."""
        path = self.path.parent / self.CACHE / name
        path.mkdir(parents=True, exist_ok=True)
        return path

    def write_labels(self, detic_json: dict) -> Path:
        """The snapshot of image-level labels this run trains on (Detic JSON)."""
        return atomic_write_json(self.file(self.LABELS), detic_json, indent=None)

    def write_boxes(self, coco_json: dict) -> Path:
        """The snapshot of box labels this run trains on (COCO detection JSON)."""
        return atomic_write_json(self.file(self.BOXES), coco_json, indent=None)

    # --- process and status ---------------------------------------------------------------
    def write_job(self, pid: int, argv: list[str]) -> None:
        atomic_write_json(self.file(self.JOB), {"pid": pid, "argv": argv})

    def clear_job(self) -> None:
        self.file(self.JOB).unlink(missing_ok=True)

    def job(self) -> dict:
        job = read_json(self.file(self.JOB))
        return job if isinstance(job, dict) else {}

    def status(self) -> dict:
        status = read_json(self.file(self.STATUS))
        return status if isinstance(status, dict) else {}

    def unreadable(self) -> str | None:
        """One sentence when this folder's files are not a run's (status.json that is not a JSON
        object, metrics.jsonl that is not UTF-8 text: copied in, damaged, someone else's), else None."""
        path = self.file(self.STATUS)
        if path.exists() and not isinstance(read_json(path), dict):
            return f"run {self.id}: its status.json is not readable JSON; it is not a run of this app (delete it)"
        try:
            with open(self.file(self.METRICS_LOG), "rb") as f:
                head = f.read(65536)
        except FileNotFoundError:
            return None
        except OSError as e:
            return f"run {self.id}: its metrics.jsonl cannot be read ({e.strerror or type(e).__name__}); delete it"
        try:
            head.decode("utf-8")
        except UnicodeDecodeError as e:
            if e.start < len(head) - 4 or b"\0" in head:  # a character cut at the 64 KB boundary is fine
                return f"run {self.id}: its metrics.jsonl is not text; it is not a run of this app (delete it)"
        return None

    def write_status(self, state: str, **fields) -> dict:
        """Merge `fields` into status.json. The trainer passes `pid=os.getpid()` itself; nobody
        else writes a pid here (the launcher's record is job.json)."""
        status = {**self.status(), **fields, "state": state, "updated": time.time()}
        atomic_write_json(self.file(self.STATUS), status)
        return status

    def request_cancel(self) -> None:
        self.file(self.CANCEL).write_text("cancel requested\n", encoding="utf-8")

    def cancel_requested(self) -> bool:
        return self.file(self.CANCEL).exists()

    def clear_cancel(self) -> None:
        self.file(self.CANCEL).unlink(missing_ok=True)

    # --- metrics, evaluation, logs --------------------------------------------------------
    def append_metrics(self, row: dict) -> None:
        with open(self.file(self.METRICS_LOG), "a", encoding="utf-8") as f:
            f.write(json.dumps(row) + "\n")

    def truncate_metrics(self, after_iteration: int) -> None:
        """Drop metric lines past `after_iteration` (a resumed run re-does them: one line per iteration)."""
        kept = [m for m in self.metrics() if int(m.get("iteration", 0)) <= after_iteration]
        atomic_write(self.file(self.METRICS_LOG), "".join(json.dumps(m) + "\n" for m in kept))

    def metrics(self) -> list[dict]:
        path = self.file(self.METRICS_LOG)
        if not path.exists():
            return []
        rows = []
        for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:  # a line being written right now (or not ours)
                continue
            if isinstance(row, dict):
                rows.append(row)
        return rows

    def write_summary(self, summary: dict) -> None:
        atomic_write_json(self.file(self.SUMMARY), summary)

    def summary(self) -> dict:
        return read_json(self.file(self.SUMMARY)) or {}

    def write_evaluation(self, evaluation: dict, before: bool = False) -> None:
        atomic_write_json(self.file(self.EVALUATION_BEFORE if before else self.EVALUATION), evaluation)

    def evaluation(self, before: bool = False) -> dict | None:
        return read_json(self.file(self.EVALUATION_BEFORE if before else self.EVALUATION))

    def write_heldout(self, record: dict) -> None:
        atomic_write_json(self.file(self.HELDOUT), record)

    def heldout(self) -> dict | None:
        return read_json(self.file(self.HELDOUT))

    def log_tail(self, lines: int = 20) -> str:
        path = self.file(self.STDOUT)
        if not path.exists():
            return ""
        return "\n".join(path.read_text(encoding="utf-8", errors="replace").splitlines()[-lines:])

    # --- checkpoints (torch) ----------------------------------------------------------------
    def save_checkpoint(self, model, optimizer, iteration: int, extra: dict,
                        states: dict[str, dict] | None = None) -> Path:
        """model + optimizer + trainer state as `checkpoints/iter_N`, then the model as RUN itself.
        `states`: more named state dicts the trainer needs to resume (NAME.safetensors)."""
        import torch

        from detector.checkpoint import atomic_save_tensors, save_checkpoint

        ckpts = self.file(self.CHECKPOINTS)
        final = ckpts / f"iter_{iteration:07d}"
        tmp = ckpts / f".tmp-iter_{iteration:07d}-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        save_checkpoint(model, tmp)
        sd = optimizer.state_dict()
        tensors = {f"{pid}.{k}": v for pid, st in sd["state"].items() for k, v in st.items() if torch.is_tensor(v)}
        atomic_save_tensors(tensors, tmp / "optimizer.safetensors", {"format": "pt"})
        for name, state in (states or {}).items():
            atomic_save_tensors(state, tmp / f"{name}.safetensors", {"format": "pt"})
        atomic_write_json(tmp / "trainer_state.json",
                          {"iteration": iteration, "param_groups": sd["param_groups"], **extra})
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
        atomic_write_json(ckpts / "latest.json", {"checkpoint": final.name, "iteration": iteration})
        save_checkpoint(model, self.path)
        for old in sorted(p for p in ckpts.glob("iter_*") if p.is_dir())[:-KEEP_CHECKPOINTS]:
            shutil.rmtree(old, ignore_errors=True)
        return final

    def save_best(self, model, iteration: int) -> Path:
        """The model as `best/` (replaced whole: assembled aside, then renamed into place)."""
        from detector.checkpoint import save_checkpoint

        final = self.file(self.BEST)
        tmp = self.file(f".tmp-best-{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        save_checkpoint(model, tmp)
        atomic_write_json(tmp / "best.json", {"iteration": iteration})
        old = self.file(f".old-best-{os.getpid()}")
        if final.exists():
            os.replace(final, old)
        os.replace(tmp, final)
        shutil.rmtree(old, ignore_errors=True)
        return final

    def served_model(self) -> Path:
        """What "use this model" loads: the best checkpoint on held-out tags when the run has one,
        else the newest weights (the run folder itself)."""
        best = self.file(self.BEST)
        return best if (best / "model.safetensors").exists() else self.path

    def resumes_at(self) -> int:
        """The iteration a resume continues from: its newest complete checkpoint's, else 0."""
        info = read_json(self.file(self.CHECKPOINTS) / "latest.json") or {}
        return int(info.get("iteration", 0)) if self.latest_checkpoint() is not None else 0

    def has_trained(self) -> bool:
        """Whether a run has trained here: a checkpoint, a best model or a metrics line."""
        return (self.file(self.CHECKPOINTS) / "latest.json").exists() or self.file(self.BEST).exists() \
            or self.file(self.METRICS_LOG).exists()

    def latest_checkpoint(self) -> Path | None:
        info = read_json(self.file(self.CHECKPOINTS) / "latest.json")
        if not info:
            return None
        path = self.file(self.CHECKPOINTS) / info["checkpoint"]
        return path if (path / "model.safetensors").exists() else None

    @staticmethod
    def load_checkpoint(path: Path, map_location="cpu"):
        """(model, trainer state) of a checkpoint folder."""
        from detector.checkpoint import load_checkpoint

        return load_checkpoint(path, map_location=map_location), RunDir.trainer_state(path)

    @staticmethod
    def trainer_state(path: Path) -> dict:
        """A checkpoint folder's trainer state (iteration, optimizer groups, the trainer's extras)."""
        state = read_json(path / "trainer_state.json")
        if state is None:
            raise ValueError(f"'{path}' has no readable trainer_state.json")
        return state

    @staticmethod
    def load_tensors(path: Path, name: str) -> dict:
        """A state dict saved with `save_checkpoint(..., states={name: ...})`."""
        from safetensors.torch import load_file

        return load_file(str(path / f"{name}.safetensors"))

    @staticmethod
    def restore_optimizer(path: Path, optimizer) -> None:
        """Load a checkpoint folder's optimizer state into `optimizer` (built over the same params)."""
        from safetensors.torch import load_file

        state: dict[int, dict] = {}
        for key, v in load_file(str(path / "optimizer.safetensors")).items():
            pid, name = key.split(".", 1)
            state.setdefault(int(pid), {})[name] = v
        groups = read_json(path / "trainer_state.json")["param_groups"]
        optimizer.load_state_dict({"state": state, "param_groups": groups})

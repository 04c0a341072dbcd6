"""Background training runs: `python -m train finetune` in its own process, one at a time.

The app never trains in its own process: a crash or a slow step cannot freeze the UI, and a run
survives an app restart. Everything about a run is read back from its directory (see
`train.run_state`), so history and live status need no database. A run whose status says
"running" but whose process is gone is reported (and recorded) as failed.
"""

from __future__ import annotations

import fcntl
import json
import os
import secrets
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

from train.finetune import FinetuneConfig
from train.run_state import read_json, write_status

ROOT = Path(__file__).resolve().parents[1]
ACTIVE_STATES = ("queued", "running")


class JobError(RuntimeError):
    """A training request that cannot be started or found; the message says why."""


def _alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        os.kill(int(pid), 0)
    except (ProcessLookupError, PermissionError, ValueError):
        return False
    try:  # a zombie child counts as finished
        waited, _ = os.waitpid(int(pid), os.WNOHANG)
        return waited == 0
    except ChildProcessError:
        return True


def finetune_argv(cfg: FinetuneConfig) -> list[str]:
    """The CLI call equivalent to `finetune(cfg)`."""
    argv = [sys.executable, "-m", "train", "finetune", "--out", cfg.out, "--model", cfg.model,
            "--iters", str(cfg.iters), "--image-loss", cfg.image_loss, "--ratio", cfg.ratio,
            "--box-batch", str(cfg.box_batch), "--label-batch", str(cfg.label_batch),
            "--box-size", str(cfg.box_size), "--label-size", str(cfg.label_size), "--lr", str(cfg.lr),
            "--warmup", str(cfg.warmup), "--checkpoint-every", str(cfg.checkpoint_every),
            "--log-every", str(cfg.log_every), "--seed", str(cfg.seed)]
    for flag, value in (("--box-data", cfg.box_data), ("--box-images", cfg.box_images),
                        ("--label-data", cfg.label_data), ("--label-images", cfg.label_images),
                        ("--eval-data", cfg.eval_data), ("--eval-images", cfg.eval_images),
                        ("--device", cfg.device)):
        if value:
            argv += [flag, str(value)]
    if cfg.novel:
        argv += ["--novel", ",".join(cfg.novel)]
    if cfg.resume:
        argv.append("--resume")
    return argv


class TrainingJobs:
    def __init__(self, runs_dir: str | Path):
        self.runs_dir = Path(runs_dir)
        self.runs_dir.mkdir(parents=True, exist_ok=True)

    @contextmanager
    def _lock(self):
        with open(self.runs_dir / ".lock", "w") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)

    def new_run_dir(self) -> Path:
        run = self.runs_dir / f"{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(2)}"
        run.mkdir(parents=True)
        return run

    def start(self, cfg: FinetuneConfig) -> str:
        """Launch `cfg` in the background; refuses while another run is active."""
        with self._lock():
            active = self.active()
            if active:
                raise JobError(f"a training run is already active ({active['id']}); cancel it or wait for it")
            run = Path(cfg.out)
            run.mkdir(parents=True, exist_ok=True)
            write_status(run, "queued", iteration=0, total=cfg.iters, message="starting", started=time.time())
            log = open(run / "stdout.log", "ab")  # noqa: SIM115 - handed to the child process
            env = {**os.environ, "PYTHONUNBUFFERED": "1"}
            proc = subprocess.Popen(finetune_argv(cfg), cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, env=env, start_new_session=True)
            log.close()
            (run / "job.json").write_text(json.dumps({"pid": proc.pid, "argv": finetune_argv(cfg)}))
            write_status(run, "queued", pid=proc.pid)
        return run.name

    def status(self, run_id: str) -> dict:
        run = self.runs_dir / run_id
        if not run.is_dir():
            raise JobError(f"no training run {run_id!r}")
        status = read_json(run / "status.json") or {"state": "unknown"}
        job = read_json(run / "job.json") or {}
        pid = job.get("pid") or status.get("pid")
        if status.get("state") in ACTIVE_STATES and not _alive(pid):
            status = read_json(run / "status.json") or status  # it may have finished just now
            if status.get("state") in ACTIVE_STATES:
                write_status(run, "failed", message="the training process ended unexpectedly (see the log)")
                status = read_json(run / "status.json") or status
        status["id"] = run_id
        status["dir"] = str(run)
        return status

    def runs(self) -> list[dict]:
        out = []
        for run in sorted((p for p in self.runs_dir.iterdir() if p.is_dir() and not p.name.startswith(".")),
                          reverse=True):
            s = self.status(run.name)
            metrics = read_json(run / "metrics.json") or {}
            s["evaluation"] = metrics.get("evaluation")
            out.append(s)
        return out

    def active(self) -> dict | None:
        for s in self.runs():
            if s.get("state") in ACTIVE_STATES:
                return s
        return None

    def cancel(self, run_id: str) -> None:
        status = self.status(run_id)
        if status.get("state") not in ACTIVE_STATES:
            raise JobError(f"run {run_id} is not running ({status.get('state')})")
        (self.runs_dir / run_id / "CANCEL").write_text("cancel requested\n")

    def metrics(self, run_id: str) -> list[dict]:
        path = self.runs_dir / run_id / "metrics.jsonl"
        if not path.exists():
            return []
        rows = []
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:  # a line being written right now
                continue
        return rows

    def log_tail(self, run_id: str, lines: int = 20) -> str:
        path = self.runs_dir / run_id / "stdout.log"
        if not path.exists():
            return ""
        return "\n".join(path.read_text(encoding="utf-8", errors="replace").splitlines()[-lines:])

    def wait(self, run_id: str, timeout: float = 600, poll: float = 0.5) -> dict:
        t = time.time()
        while time.time() - t < timeout:
            s = self.status(run_id)
            if s.get("state") not in ACTIVE_STATES:
                return s
            time.sleep(poll)
        raise JobError(f"run {run_id} still running after {timeout:.0f} s")

"""Background training runs: `python -m train {finetune,pretrain} --config RUN/<config>.json`, one at a time.

The app never trains in its own process: a crash or a slow step cannot freeze the UI, and a run
survives an app restart. This module only starts, polls and cancels; everything about a run is
read through `train.run_dir.RunDir`. A run is active only while its recorded process is alive and
is this run's trainer (its command line names the run's folder): one whose process is gone, or
now belongs to another program, is reported (and recorded) as failed. A folder whose files are not
a run's is "unreadable", with one sentence: it never blocks training and can be deleted.

A child gets `child_env()`: by default the app's environment without the operator's Hub token
(unless APP_ALLOW_SERVER_TOKEN=1); the app passes its `AccessPolicy.child_env`, which also limits
the folders the child reads images from. Every child also gets a memory budget
(`train.memory_budget`): settings that need more fail in one sentence instead of exhausting the server.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path

from train.cli import PARENT_ENV
from train.memory_budget import BUDGET_ENV, default_budget_gb
from train.run_dir import ACTIVE_STATES, RunDir

ROOT = Path(__file__).resolve().parents[1]
PREPARING_S = 120  # a run folder without a status this young is still being written by the app
log = logging.getLogger(__name__)


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


def _is_trainer_of(pid: int | None, run: RunDir) -> bool:
    """Whether `pid` is alive and is the trainer of `run`: its command line (`train_argv`) holds a
    path in the run's folder. Without /proc (not Linux), alive is all that can be told."""
    if not _alive(pid):
        return False
    try:
        argv = Path(f"/proc/{int(pid)}/cmdline").read_bytes().split(b"\0")
    except FileNotFoundError:
        return not Path("/proc/self").exists()
    except (OSError, ValueError):
        return False
    return any(Path(os.fsdecode(a)).parent.name == run.id for a in argv if a)


def train_argv(run: RunDir, command: str | None = None, resume: bool = False) -> list[str]:
    """The command that runs `run` from its saved config (the only way the app starts one):
    `command` is the `python -m train` sub-command, by default the one the saved config is for."""
    command = command or run.command()
    return [sys.executable, "-m", "train", command, "--config", str(run.file(RunDir.CONFIG_FILES[command])),
            *(["--resume"] if resume else [])]


def finetune_argv(run: RunDir, resume: bool = False) -> list[str]:
    return train_argv(run, "finetune", resume)


def _default_child_env() -> dict[str, str]:
    from .policy import AccessPolicy

    return AccessPolicy.from_env().child_env()


def _dry_run_failure(returncode: int, stderr: str) -> str:
    """Why a dry run failed, in one sentence: its own "error: …" line, or how it was stopped. Not
    the last line it logged (a killed one ended on "INFO …: Loading SentenceTransformer model from
    /path/on/the/server")."""
    if returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = f"signal {-returncode}"
        return (f"the dry run was stopped ({name}) before it finished"
                + (": killed, most likely for want of memory (lower the image sizes or the batch)"
                   if -returncode == signal.SIGKILL else ""))
    errors = [ln.strip()[len("error:"):].strip() for ln in stderr.splitlines() if ln.strip().startswith("error:")]
    reason = errors[-1] if errors else f"it exited with code {returncode} (the server's log has its output)"
    if not errors:
        log.warning("dry run failed (exit code %s):\n%s", returncode, stderr[-4000:])
    reason = reason if len(reason) <= 300 else reason[:299] + "…"  # cut, and says so
    return f"the dry run failed: {reason}"


class TrainingJobs:
    def __init__(self, runs_dir: str | Path, child_env: Callable[[], dict[str, str]] | None = None):
        self.runs_dir = Path(runs_dir)
        self.runs_dir.mkdir(parents=True, exist_ok=True)
        self._child_env = child_env or _default_child_env

    def child_env(self) -> dict[str, str]:
        """The environment of every process this starts (see the module's docstring)."""
        # no library progress bars ("Loading weights: 0%|...") in a run's log, whose tail the Train tab shows
        env = {**self._child_env(), "PYTHONUNBUFFERED": "1", "HF_HUB_DISABLE_PROGRESS_BARS": "1"}
        budget = default_budget_gb(env)  # the memory it may take (train.memory_budget)
        return {**env, BUDGET_ENV: str(budget)} if budget else env

    @contextmanager
    def _lock(self):
        with open(self.runs_dir / ".lock", "w") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)

    @contextmanager
    def _only_one(self, name: str, busy: str):
        """Held by one caller at a time across processes; others get JobError(`busy`) at once."""
        with open(self.runs_dir / name, "w") as f:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise JobError(busy) from None
            yield

    def run(self, run_id: str) -> RunDir:
        """The run called `run_id` (a plain folder name under the runs directory, nothing else)."""
        if not run_id or Path(run_id).name != run_id or run_id.startswith(".") or len(run_id) > 200:
            raise JobError(f"no training run {run_id[:60]!r}")  # > 200: longer than any file name may be
        run = RunDir(self.runs_dir / run_id)
        if not run.exists():
            raise JobError(f"no training run {run_id!r}")
        return run

    def start(self, run: RunDir, resume: bool = False) -> str:
        """Launch the run whose config is already in `run` (with `resume`, from its last
        checkpoint); refuses while another run is active."""
        with self._lock():
            active = self.active()
            if active:
                raise JobError(f"a training run is already active ({active['id']}); cancel it or wait for it")
            cfg = run.read_config()  # a run is only started from a valid config
            run.clear_cancel()
            run.clear_job()
            run.write_status("queued", iteration=run.status().get("iteration", 0) if resume else 0,
                             total=cfg.iters, message="resuming" if resume else "starting",
                             started=time.time(), pid=None, command=cfg.COMMAND)
            argv = train_argv(run, cfg.COMMAND, resume)
            with open(run.file(RunDir.STDOUT), "ab") as log:
                proc = subprocess.Popen(argv, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
                                        stdin=subprocess.DEVNULL, env=self.child_env(),
                                        start_new_session=True)
            run.write_job(proc.pid, argv)
        return run.id

    def status(self, run_id: str) -> dict:
        run = self.run(run_id)
        problem = run.unreadable()
        if problem:
            return {"state": "unreadable", "message": problem, "iteration": 0, "total": 0, "id": run.id}
        status = run.status() or {"state": self._unstarted_state(run)}
        pid = status.get("pid") or run.job().get("pid")
        try:
            updated = float(status.get("updated", 0))
        except (TypeError, ValueError):
            updated = 0.0
        launching = (status.get("state") == "queued" and pid is None  # between "queued" and job.json
                     and time.time() - updated < 60)
        if status.get("state") in ACTIVE_STATES and not launching and not _is_trainer_of(pid, run):
            status = run.status() or status  # it may have finished just now
            if status.get("state") in ACTIVE_STATES:
                message = ("the training process ended unexpectedly (see the log)" if not _alive(pid) else
                           f"its recorded process ({pid}) is not this run's trainer: the trainer has ended")
                try:
                    status = run.write_status("failed", message=message)
                except OSError:  # a folder we cannot write: report it, record nothing
                    status = {**status, "state": "failed", "message": message}
        if status.get("state") in ACTIVE_STATES and run.cancel_requested():
            # The trainer stops at its next step (seconds on a CPU): say so meanwhile, not "running".
            status = {**status, "cancelling": True}
        return {**status, "id": run.id}

    @staticmethod
    def _unstarted_state(run: RunDir) -> str:
        """A folder with no status yet: "preparing" while the app still writes it (the tag snapshot
        and the live model take seconds), "unknown" when it has stayed so (not a run of this app)."""
        try:
            fresh = time.time() - run.path.stat().st_ctime < PREPARING_S
        except OSError:
            fresh = False
        return "preparing" if fresh else "unknown"

    def runs(self) -> list[dict]:
        """Every run, newest first, with its evaluation when it has one."""
        from train.heldout import heldout_summary

        out = []
        for path in sorted((p for p in self.runs_dir.iterdir() if p.is_dir() and not p.name.startswith(".")),
                           reverse=True):
            run = RunDir(path)
            heldout = heldout_summary(run.heldout())
            out.append({**self.status(path.name), "evaluation": run.evaluation(),
                        "heldout_mean_before": heldout["mean_before"] if heldout else None,
                        "heldout_mean_after": heldout["mean_after"] if heldout else None})
        return out

    def measure(self, cfg, timeout: float = 600) -> dict:
        """`python -m train dryrun` for `cfg` in its own process (its peak memory is the step's, not
        the app's): seconds per iteration and peak memory on this machine. No run is created."""
        if self.active():
            raise JobError("a run is active: measure when it is done (its work would distort the numbers)")
        with self._only_one(".dryrun.lock", "another measurement is running; try again when it is done"):
            return self._measure(cfg, timeout)

    def _measure(self, cfg, timeout: float) -> dict:
        folder = Path(tempfile.mkdtemp(prefix=".dryrun-", dir=self.runs_dir))  # dot: never listed as a run
        try:
            path = RunDir(folder).write_config(cfg)
            argv = [sys.executable, "-m", "train", "dryrun", "--config", str(path)]
            started = time.perf_counter()
            try:
                proc = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=timeout,
                                      stdin=subprocess.DEVNULL, env={**self.child_env(), PARENT_ENV: str(os.getpid())})
            except subprocess.TimeoutExpired:
                raise JobError(f"the dry run took over {timeout:.0f} s; the settings are too heavy for this machine") from None
            if proc.returncode != 0:
                raise JobError(_dry_run_failure(proc.returncode, proc.stderr))
            result = json.loads(proc.stdout[proc.stdout.index("{"):])
            # what a run pays once before its first step too: starting Python, imports, loading the model
            result["start_s"] = max(0.0, time.perf_counter() - started - float(result.get("measuring_s", 0.0)))
            return result
        finally:
            shutil.rmtree(folder, ignore_errors=True)

    def active(self) -> dict | None:
        return next((s for s in self.runs() if s.get("state") in ACTIVE_STATES), None)

    def cancel(self, run_id: str) -> None:
        status = self.status(run_id)
        if status.get("state") not in ACTIVE_STATES:
            raise JobError(f"run {run_id} is not running ({status.get('state')})")
        self.run(run_id).request_cancel()

    def wait(self, run_id: str, timeout: float = 600, poll: float = 0.5) -> dict:
        t = time.time()
        while time.time() - t < timeout:
            s = self.status(run_id)
            if s.get("state") not in ACTIVE_STATES:
                return s
            time.sleep(poll)
        raise JobError(f"run {run_id} still running after {timeout:.0f} s")

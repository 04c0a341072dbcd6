"""Background runs: the app starts, polls and cancels; the run folder is `train.run_dir.RunDir`'s."""

import json
import os
import subprocess
import sys

import pytest

from app.jobs import JobError, TrainingJobs, finetune_argv
from app.ui.train_tab import _present_runs, progress_html
from train.run_config import RunConfig
from train.run_dir import RunDir


def test_dead_process_is_reported_failed_and_history_survives_restart(tmp_path):
    jobs = TrainingJobs(tmp_path / "runs")
    run = RunDir.create(jobs.runs_dir)
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    run.write_status("running", iteration=3, total=10, pid=gone.pid)
    fresh = TrainingJobs(tmp_path / "runs")  # as after an app restart
    status = fresh.status(run.id)
    assert status["state"] == "failed" and "ended unexpectedly" in status["message"]
    assert run.status()["state"] == "failed"  # recorded, not just shown
    assert fresh.active() is None and [r["id"] for r in fresh.runs()] == [run.id]
    with pytest.raises(JobError, match="not running"):
        fresh.cancel(run.id)
    for bad in ("nope", "../runs", "", ".lock"):
        with pytest.raises(JobError, match="no training run"):
            fresh.status(bad)


def test_live_process_counts_as_active_and_refuses_a_second_run(tmp_path):
    jobs = TrainingJobs(tmp_path / "runs")
    run = RunDir.create(jobs.runs_dir)
    # A stand-in trainer: its command line names a file of the run's folder, as `train_argv`'s does
    # (a live process that does not is someone else's and never counts: tests/test_security_round2.py).
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)", str(run.file(RunDir.CONFIG))])
    try:
        run.write_status("running", iteration=1, total=10, pid=proc.pid)
        assert jobs.active()["id"] == run.id
        second = RunDir.create(jobs.runs_dir)
        second.write_config(RunConfig(model="tiny"))
        with pytest.raises(JobError, match="already active"):
            jobs.start(second)
        assert not jobs.status(run.id).get("cancelling")
        jobs.cancel(run.id)
        assert run.cancel_requested()
        # Until the trainer's next step ends it, the run reads "cancelling", not "running".
        status = jobs.status(run.id)
        assert status["state"] == "running" and status["cancelling"]
        assert "<b>cancelling</b>" in progress_html(status)
        table = _present_runs(jobs.runs())
        assert table.loc[table["run"] == run.id, "state"].tolist() == ["cancelling"]
    finally:
        proc.kill()
        proc.wait()


def test_started_run_records_the_child_pid_and_finishes(tmp_path, monkeypatch):
    """The pid the app polls is the training process's own, and a bad config ends the run as failed."""
    import app.jobs

    launched = []

    class RecordingPopen(subprocess.Popen):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            launched.append(self)

    monkeypatch.setattr(app.jobs.subprocess, "Popen", RecordingPopen)
    jobs = TrainingJobs(tmp_path / "runs")
    run = RunDir.create(jobs.runs_dir)
    run.write_config(RunConfig(model="tiny", box_data=str(tmp_path / "missing.json"), box_images=str(tmp_path)))
    jobs.start(run)
    (child,) = launched
    assert run.job()["argv"] == finetune_argv(run) == child.args
    assert run.job()["pid"] == child.pid != os.getpid()  # the launcher's record: the child, not the app
    status = jobs.wait(run.id, timeout=300)
    assert status["state"] == "failed" and "missing.json" in status["message"], run.log_tail()
    assert status["pid"] == child.pid  # the trainer wrote its own pid, the one the launcher recorded
    child.wait(timeout=60)


def test_argv_is_the_config_file_only(tmp_path):
    run = RunDir.create(tmp_path)
    assert finetune_argv(run)[1:] == ["-m", "train", "finetune", "--config", str(run.file(RunDir.CONFIG))]


def test_a_run_folder_being_written_reads_preparing(tmp_path, monkeypatch):
    """Between Start and the trainer's first status (the tag snapshot and the live model take
    seconds) the Train tab showed "unknown · iteration 0 / 1": now "preparing"; a folder that
    stays without a status is still "unknown"."""
    import app.jobs as jobs_module

    jobs = TrainingJobs(tmp_path / "runs")
    run = RunDir.create(jobs.runs_dir)
    assert jobs.status(run.id)["state"] == "preparing" and jobs.active() is None  # start() is not refused
    line = progress_html(jobs.status(run.id))
    assert "<b>preparing</b></p>" in line and "iteration" not in line  # no "0 / 1", no dangling "·"
    monkeypatch.setattr(jobs_module, "PREPARING_S", 0)
    assert jobs.status(run.id)["state"] == "unknown"


def test_the_evaluation_box_shows_only_what_the_run_has():
    """A run without evaluation data showed '{"after": null, "before": null, ...}'."""
    from app.ui.train_tab import _present_status

    running = {"state": "running", "id": "r1", "iteration": 1, "total": 5, "metrics": [], "log": ""}
    assert _present_status(running)[4] == {"value": "", "visible": False, "__type__": "update"}  # no blank box
    done = _present_status({**running, "state": "finished", "evaluation": {"AP50": 0.5}})[4]
    assert json.loads(done["value"]) == {"after": {"AP50": 0.5}} and done["visible"] is True


def test_a_run_id_longer_than_a_file_name_is_no_run(tmp_path):
    """'a' * 5000 as a run id reached the file system (OSError: file name too long, a traceback
    and a bare error for the visitor): now it is no run, in one sentence."""
    jobs = TrainingJobs(tmp_path / "runs")
    for run_id in ("a" * 5000, "x" * 300 + ".x"):
        with pytest.raises(JobError, match="no training run"):
            jobs.run(run_id)

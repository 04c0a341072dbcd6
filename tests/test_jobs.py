import json
import subprocess
import sys

import pytest

from app.jobs import JobError, TrainingJobs, finetune_argv
from train.finetune import FinetuneConfig
from train.run_state import write_status


def test_dead_process_is_reported_failed_and_history_survives_restart(tmp_path):
    jobs = TrainingJobs(tmp_path / "runs")
    run = jobs.new_run_dir()
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    write_status(run, "running", iteration=3, total=10)
    (run / "job.json").write_text(json.dumps({"pid": gone.pid}))
    fresh = TrainingJobs(tmp_path / "runs")  # as after an app restart
    status = fresh.status(run.name)
    assert status["state"] == "failed" and "ended unexpectedly" in status["message"]
    assert json.loads((run / "status.json").read_text())["state"] == "failed"  # recorded, not just shown
    assert fresh.active() is None and [r["id"] for r in fresh.runs()] == [run.name]
    with pytest.raises(JobError, match="not running"):
        fresh.cancel(run.name)
    with pytest.raises(JobError, match="no training run"):
        fresh.status("nope")


def test_live_process_counts_as_active(tmp_path):
    jobs = TrainingJobs(tmp_path / "runs")
    run = jobs.new_run_dir()
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        write_status(run, "running", iteration=1, total=10)
        (run / "job.json").write_text(json.dumps({"pid": proc.pid}))
        assert jobs.active()["id"] == run.name
        with pytest.raises(JobError, match="already active"):
            jobs.start(FinetuneConfig(out=str(jobs.new_run_dir()), model="tiny"))
        jobs.cancel(run.name)
        assert (run / "CANCEL").exists()
    finally:
        proc.kill()
        proc.wait()


def test_argv_matches_the_config():
    cfg = FinetuneConfig(out="r", model="tiny", label_data="l.json", label_images="i", iters=7, novel=["a b", "c"],
                         resume=True, ratio="1:4")
    argv = finetune_argv(cfg)
    assert argv[1:4] == ["-m", "train", "finetune"]
    pairs = dict(zip(argv[4::2], argv[5::2]))
    assert pairs["--iters"] == "7" and pairs["--ratio"] == "1:4" and pairs["--label-data"] == "l.json"
    assert "--novel" in argv and argv[argv.index("--novel") + 1] == "a b,c" and argv[-1] == "--resume"
    assert "--box-data" not in argv

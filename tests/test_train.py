import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from detector import Predictor, load_checkpoint
from train.data import DataError, read_box_dataset, read_label_dataset, vocabulary_of
from train.evaluate import coco_metrics
from train.finetune import finetune
from train.run_config import RunConfig
from train.run_dir import RunDir
from train.sampler import MixedSampler, parse_ratio
from train.synthetic import BASE, CLASSES, NOVEL, generate

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def syn(tmp_path_factory):
    out = tmp_path_factory.mktemp("syn")
    generate(out, seed=0, n_box=8, n_label=8, n_val=4, size=64)
    return out


def _train(syn, out, resume=False, on_progress=None, **kw):
    base = dict(model="tiny", box_data=str(syn / "box_train.json"), box_images=str(syn / "images"),
                label_data=str(syn / "image_labels.json"), label_images=str(syn / "images"), iters=6,
                box_batch=2, label_batch=2, box_size=64, label_size=32, checkpoint_every=3, log_every=1,
                warmup=2, lr=1e-3)
    base.update(kw)
    return finetune(RunConfig(**base), out, resume=resume, on_progress=on_progress)


# --- synthetic benchmark -----------------------------------------------------------------------------


def test_synthetic_benchmark_is_deterministic_and_split_correctly(syn, tmp_path):
    generate(tmp_path, seed=0, n_box=8, n_label=8, n_val=4, size=64)
    for name in ("box_train.json", "image_labels.json", "val.json"):
        assert (tmp_path / name).read_text() == (syn / name).read_text()
    box = json.loads((syn / "box_train.json").read_text())
    names = {c["id"]: c["name"] for c in box["categories"]}
    assert {names[a["category_id"]] for a in box["annotations"]} <= set(BASE)
    labels = json.loads((syn / "image_labels.json").read_text())
    assert not labels["annotations"] and all(len(i["pos_category_ids"]) == 1 for i in labels["images"])
    assert {names[i["pos_category_ids"][0]] for i in labels["images"]} & set(NOVEL)
    assert set(NOVEL) < set(CLASSES) and all(n.split()[0] in " ".join(BASE) for n in NOVEL)



def test_the_hard_benchmark_goes_through_the_same_writer_deterministically(tmp_path):
    """bench/hard_synthetic writes with train.synthetic.write_benchmark: same seed, same files;
    its novel classes (unseen shapes, unrelated names) get no box in box_train, and a tag image
    lists every class drawn in it."""
    from bench import hard_synthetic

    sizes = dict(seed=1, n_box=4, n_label=6, n_val=2, size=64)
    files = hard_synthetic.generate(tmp_path / "a", **sizes)
    hard_synthetic.generate(tmp_path / "b", **sizes)
    for name in ("box_train.json", "image_labels.json", "val.json", "meta.json"):
        assert (tmp_path / "a" / name).read_text() == (tmp_path / "b" / name).read_text()
    box = json.loads(files["box_train"].read_text())
    names = {c["id"]: c["name"] for c in box["categories"]}
    assert list(names.values()) == hard_synthetic.CLASSES
    assert {names[a["category_id"]] for a in box["annotations"]} <= set(hard_synthetic.BASE)
    labels = json.loads(files["image_labels"].read_text())["images"]
    assert all(i["pos_category_ids"] == sorted(set(i["pos_category_ids"])) and i["pos_category_ids"] for i in labels)
    assert any(len(i["pos_category_ids"]) > 1 for i in labels)  # the scenes: every class present is tagged

# --- data readers ------------------------------------------------------------------------------------


def test_readers_on_good_files(syn):
    box, stats = read_box_dataset(syn / "box_train.json", syn / "images")
    labels, _ = read_label_dataset(syn / "image_labels.json", syn / "images")
    assert stats.images == 8 and len(labels) == 8
    assert all(s.boxes.shape == (len(s.names), 4) for s in box)
    vocab = vocabulary_of(box, labels)
    assert set(vocab) <= set(CLASSES) and len(vocab) == len(set(vocab))


def test_crowd_degenerate_and_missing_images_are_counted(syn, tmp_path):
    data = json.loads((syn / "box_train.json").read_text())
    data["annotations"][0]["iscrowd"] = 1
    data["annotations"][1]["bbox"] = [5, 5, 0, 10]
    data["images"].append({"id": 999, "file_name": "nope.png", "width": 64, "height": 64})
    (tmp_path / "b.json").write_text(json.dumps(data))
    samples, stats = read_box_dataset(tmp_path / "b.json", syn / "images")
    assert (stats.crowd_ignored, stats.degenerate_dropped, stats.skipped_missing) == (1, 1, 1)
    assert sum(len(s.names) for s in samples) == len(data["annotations"]) - 2


@pytest.mark.parametrize("content, match", [
    ("{broken", "not valid JSON"),
    ('{"images": []}', "no 'categories'"),
    ('[1, 2]', "not Detic/COCO JSON"),
    ('{"images": [{"id": 1, "file_name": "x.png", "pos_category_ids": [7]}], "categories": [{"id": 1, "name": "a"}]}',
     "unknown category ids"),
])
def test_broken_label_files_give_clear_errors(tmp_path, syn, content, match):
    (tmp_path / "l.json").write_text(content)
    with pytest.raises(DataError, match=match):
        read_label_dataset(tmp_path / "l.json", syn / "images")


def test_missing_files_and_folders(tmp_path, syn):
    with pytest.raises(DataError, match="not found"):
        read_box_dataset(tmp_path / "none.json", syn / "images")
    with pytest.raises(DataError, match="image folder not found"):
        read_label_dataset(syn / "image_labels.json", tmp_path / "no-images")


def test_csv_and_jsonl_labels_match_categories_by_name(tmp_path, syn):
    with open(tmp_path / "l.csv", "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["image", "labels"])
        w.writerow(["image_labels/00000.png", "Red  Circle; blue star"])
        w.writerow(["image_labels/00001.png", "crème brûlée"])
    (tmp_path / "l.jsonl").write_text(json.dumps({"image": "image_labels/00002.png", "labels": ["RED CIRCLE"],
                                                  "negatives": ["green square"]}) + "\n")
    a, _ = read_label_dataset(tmp_path / "l.csv", syn / "images")
    b, _ = read_label_dataset(tmp_path / "l.jsonl", syn / "images")
    assert a[0].positives == ["Red Circle", "blue star"] and a[1].positives == ["crème brûlée"]
    assert b[0].negatives == ["green square"]
    # Same name, different case and file: one vocabulary entry.
    assert vocabulary_of([], a + b) == ["Red Circle", "blue star", "crème brûlée", "green square"]
    (tmp_path / "bad.csv").write_text("file,tags\nx.png,a\n")
    with pytest.raises(DataError, match="'image' and 'labels'"):
        read_label_dataset(tmp_path / "bad.csv", syn / "images")


# --- sampler -----------------------------------------------------------------------------------------


def test_sampler_ratio_and_absent_sources():
    s = MixedSampler(10, 20, 2, 4, parse_ratio("1:4"), seed=3)
    kinds = [s.batch(i)[0] for i in range(500)]
    assert kinds.count("box") == 100 and kinds.count("label") == 400
    assert s.batch(7) == s.batch(7) and s.batch(7) != MixedSampler(10, 20, 2, 4, (1, 4), seed=3, rank=1).batch(7)
    assert {MixedSampler(0, 5, ratio=(1, 1)).batch(i)[0] for i in range(10)} == {"label"}
    assert {MixedSampler(5, 0, ratio=(1, 1)).batch(i)[0] for i in range(10)} == {"box"}
    with pytest.raises(ValueError):
        MixedSampler(0, 0)
    with pytest.raises(ValueError):
        parse_ratio("one to one")


# --- training loop -----------------------------------------------------------------------------------


def test_the_optimiser_is_fused_and_makes_adamws_own_updates():
    """Runs step with fused AdamW (one kernel: 0.089 -> 0.011 s a step over a box head's 13 M
    parameters on 2 CPU cores), which must move the parameters as plain AdamW does, group
    settings included (the name mapping's group has its own step size and no weight decay)."""
    from train.loop import adamw

    torch.manual_seed(0)
    start = [torch.randn(64, 32), torch.randn(32), torch.randn(5, 10)]
    grads = [[torch.randn_like(t) for t in start] for _ in range(5)]
    moved = []
    for make in (adamw, torch.optim.AdamW):
        ps = [torch.nn.Parameter(t.clone()) for t in start]
        opt = make([{"params": ps[:2]}, {"params": ps[2:], "lr": 3e-2, "weight_decay": 0.0}], lr=1e-3,
                   weight_decay=1e-2)
        for g in grads:
            for p, gp in zip(ps, g):
                p.grad = gp.clone()
            opt.step()
        moved.append([p.detach() for p in ps])
        if make is adamw:
            assert opt.defaults["fused"]
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(*moved))
    assert not torch.allclose(moved[0][2], start[2])


def test_few_iterations_lower_the_loss(syn, tmp_path):
    result = _train(syn, tmp_path / "run", iters=40, label_data=None, label_images=None, checkpoint_every=100)
    losses = [json.loads(line)["loss"] for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert result["state"] == "finished" and len(losses) == 40
    assert np.mean(losses[-8:]) < 0.8 * np.mean(losses[:8])
    status = json.loads((tmp_path / "run" / "status.json").read_text())
    assert status["state"] == "finished" and status["iteration"] == 40
    model = load_checkpoint(tmp_path / "run")  # the run folder loads as a model
    assert set(model.config.trained_class_names) <= set(BASE)


def test_resume_matches_uninterrupted_run(syn, tmp_path):
    full = _train(syn, tmp_path / "full", iters=8, checkpoint_every=4)
    assert full["state"] == "finished"

    def cancel_at_4(metrics):
        if metrics["iteration"] == 4:
            (tmp_path / "part" / "CANCEL").write_text("")

    part = _train(syn, tmp_path / "part", iters=8, checkpoint_every=4, on_progress=cancel_at_4)
    assert part["state"] == "cancelled" and part["iteration"] == 4
    assert json.loads((tmp_path / "part" / "status.json").read_text())["state"] == "cancelled"
    assert RunDir(tmp_path / "part").resumes_at() == 4  # what the status shows while the resume reads its data
    resumed = _train(syn, tmp_path / "part", iters=8, checkpoint_every=4, resume=True)
    assert resumed["state"] == "finished" and resumed["iteration"] == 8
    a = load_checkpoint(tmp_path / "full").state_dict()
    b = load_checkpoint(tmp_path / "part").state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_a_resume_before_the_first_checkpoint_starts_over_with_one_curve(syn, tmp_path):
    """A run killed before its first checkpoint resumes from the start: its curve kept the dead
    attempt's points too (iterations 1, 2 twice, from two different models)."""
    class Killed(Exception):
        pass

    def killed_at_2(metrics):  # as a kill -9: no checkpoint on the way out
        if metrics["iteration"] == 2:
            raise Killed

    with pytest.raises(Killed):
        _train(syn, tmp_path / "part", iters=6, checkpoint_every=5, on_progress=killed_at_2)
    assert not list((tmp_path / "part").glob("checkpoints/*")) and RunDir(tmp_path / "part").resumes_at() == 0
    assert [m["iteration"] for m in RunDir(tmp_path / "part").metrics()] == [1, 2]
    resumed = _train(syn, tmp_path / "part", iters=6, checkpoint_every=5, resume=True)
    assert resumed["state"] == "finished"
    assert [m["iteration"] for m in RunDir(tmp_path / "part").metrics()] == [1, 2, 3, 4, 5, 6]


def test_the_cli_resumes_a_run_with_its_own_config_and_never_trains_over_one(syn, tmp_path, capsys):
    """`finetune --out RUN --resume` alone trained the defaults (no data: "no training images") and
    wrote them over the run's config and status; a new run into RUN left the old checkpoints beside
    a latest.json naming one that did not exist. Now a resume reads the run's config, a new run
    into a run's folder is refused and leaves it as it was, and a device the machine lacks is one
    line."""
    from train import cli as train_cli

    run = tmp_path / "run"
    flags = ["--model", "tiny", "--box-data", str(syn / "box_train.json"), "--box-images", str(syn / "images"),
             "--box-batch", "2", "--box-size", "64", "--log-every", "1", "--warmup", "1"]

    def cancel_at_2(metrics):
        if metrics["iteration"] == 2:
            (run / "CANCEL").write_text("")

    cfg = RunConfig(model="tiny", box_data=str(syn / "box_train.json"), box_images=str(syn / "images"), iters=4,
                    box_batch=2, box_size=64, checkpoint_every=2, log_every=1, warmup=1)
    assert finetune(cfg, run, on_progress=cancel_at_2)["iteration"] == 2
    saved = (run / RunDir.CONFIG).read_text()

    assert train_cli.main(["finetune", "--out", str(run), "--iters", "3", *flags]) == 2
    assert f"'{run}' already holds a run (cancelled at iteration 2 of 4): continue it with --resume" in \
        capsys.readouterr().err
    assert (run / RunDir.CONFIG).read_text() == saved and RunDir(run).status()["state"] == "cancelled"

    assert train_cli.main(["finetune", "--out", str(tmp_path / "none"), "--resume"]) == 2
    assert "nothing to resume in" in capsys.readouterr().err and not (tmp_path / "none").exists()

    assert train_cli.main(["finetune", "--out", str(run), "--resume"]) == 0
    status = RunDir(run).status()
    assert status["state"] == "finished" and status["iteration"] == 4
    assert RunConfig.load(run / RunDir.CONFIG).box_data == str(syn / "box_train.json")
    capsys.readouterr()

    assert train_cli.main(["finetune", "--out", str(tmp_path / "gpu"), *flags, "--iters", "2", "--device", "tpu"]) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == "error: unknown device 'tpu': use cpu or cuda"


def test_the_cli_says_the_held_out_verdict_and_which_model_to_serve(tmp_path):
    """A CLI run printed state and time only: the held-out verdict, its caveat and that RUN/best
    (not RUN, the latest weights) is what the held-out tags chose were in files alone, and a late
    checkpoint that scored worse was what `--model RUN` loaded."""
    from train.cli import _heldout_lines

    run = RunDir(tmp_path / "run")
    (run.path / RunDir.BEST).mkdir(parents=True)
    (run.path / RunDir.BEST / "model.safetensors").write_bytes(b"")
    heldout = {"images": 5, "mean_before": 1.0, "mean_after": 1.0, "change": 0.0, "best_iteration": 50,
               "latest_iteration": 100, "labels": {"cat": {"before": 1.0, "after": 1.0, "positives": 1}}}
    lines = _heldout_lines(heldout, run)
    assert lines["heldout"] == "5 held-out images: mean image-level AP 1.00 -> 1.00 at the best checkpoint (unchanged)"
    assert "already ranked perfectly before the run" in lines["heldout_caveat"]
    assert lines["serve"].startswith(f"{run.path / RunDir.BEST} (iteration 50")
    assert "serve" not in _heldout_lines({**heldout, "latest_iteration": 50}, run)
    assert _heldout_lines({"images": 0, "note": "only 3 tagged images"}, run) == {}


def test_a_signal_before_the_step_loop_ends_the_run_as_cancelled(tmp_path):
    """SIGTERM while a run read and cached its images (minutes) ended the process with the status
    still "running" and a dead pid; the caller's own handlers come back after the run."""
    from train.finetune import run_with_status
    from train.loop import Stopped

    def caching(run, rank, world):
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(5)  # the signal's exception interrupts this
        raise AssertionError("not stopped")

    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(Stopped):
        run_with_status(tmp_path / "run", caching)
    status = RunDir(tmp_path / "run").status()
    assert status["state"] == "cancelled" and status["message"] == "stopped by SIGTERM before training began"
    assert signal.getsignal(signal.SIGTERM) is before


@pytest.mark.parametrize("scope", ["box_head", "classifier"])
def test_image_labels_only_never_train_rpn_or_box_regression(syn, tmp_path, scope):
    start = load_checkpoint_of_preset(tmp_path)
    _train(syn, tmp_path / "run", model=str(start), box_data=None, box_images=None, iters=4,
           image_label_scope=scope)
    log = (tmp_path / "run" / "train.log").read_text()
    assert "RPN and box regression get no signal" in log
    before, after = load_checkpoint(start).state_dict(), load_checkpoint(tmp_path / "run").state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert any(k.startswith("roi_heads.box_predictor.cls_score.") for k in changed)
    assert not any(k.startswith(("rpn.", "roi_heads.box_predictor.bbox_pred", "backbone.body")) for k in changed)
    if scope == "classifier":
        assert all(k.startswith("roi_heads.box_predictor.cls_score.") for k in changed)
    else:  # Detic's scope: the chosen proposals' features learn too
        assert any(k.startswith("roi_heads.box_head") for k in changed)


def load_checkpoint_of_preset(tmp_path):
    from detector import load_detector, save_checkpoint

    return save_checkpoint(load_detector("tiny"), tmp_path / "start")


def test_unreadable_images_are_skipped_and_counted(syn, tmp_path):
    images = tmp_path / "images"
    shutil.copytree(syn / "images", images)
    damaged = [images / "image_labels" / f"{i:05d}.png" for i in range(3)]
    for path in damaged:
        path.write_bytes(b"not a png")
    # every label step reads all 8 tagged images (nothing held out), so each damaged one is met
    result = _train(syn, tmp_path / "run", label_images=str(images), box_images=str(images), iters=6,
                    label_batch=8, heldout_share=0)
    assert result["state"] == "finished" and result["skipped_images"] == sorted(map(str, damaged))
    log = (tmp_path / "run" / "train.log").read_text()
    assert all(f"skipping unreadable image: '{p.name}'" in log for p in damaged)
    assert "3 unreadable image(s) skipped" in RunDir(tmp_path / "run").status()["message"]


def test_no_data_is_a_clear_error(syn, tmp_path):
    r = subprocess.run([sys.executable, "-m", "train", "finetune", "--model", "tiny", "--out", str(tmp_path / "r")],
                       capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert r.returncode == 2 and "no training images" in r.stderr
    r = subprocess.run([sys.executable, "-m", "train", "finetune", "--model", "tiny", "--out", str(tmp_path / "r"),
                        "--box-data", str(tmp_path / "missing.json"), "--box-images", str(syn / "images")],
                       capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert r.returncode == 2 and "missing.json" in r.stderr and "Traceback" not in r.stderr


def _wait_for(path: Path, proc, timeout=240):
    t = time.time()
    while not path.exists():
        assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
        assert time.time() - t < timeout
        time.sleep(0.2)


@pytest.mark.slow
def test_killed_run_leaves_loadable_checkpoint_and_sigterm_stops_cleanly(syn, tmp_path):
    args = [sys.executable, "-m", "train", "finetune", "--model", "tiny", "--box-data", str(syn / "box_train.json"),
            "--box-images", str(syn / "images"), "--iters", "100000", "--box-batch", "2", "--box-size", "64",
            "--checkpoint-every", "2", "--log-every", "1"]
    killed = subprocess.Popen([*args, "--out", str(tmp_path / "k")], cwd=ROOT, stderr=subprocess.DEVNULL)
    _wait_for(tmp_path / "k" / "checkpoints" / "latest.json", killed)
    time.sleep(1.0)
    killed.kill()
    killed.wait()
    ckpt = RunDir(tmp_path / "k").latest_checkpoint()
    assert ckpt is not None and load_checkpoint(ckpt) is not None
    found = Predictor.from_pretrained(str(tmp_path / "k"), device="cpu").predict(
        np.zeros((64, 64, 3), np.uint8), "red circle", score_threshold=0.0, max_detections=5)[0]
    assert len(found) == 5 and set(found.data["class_name"]) == {"red circle"}
    assert (found.xyxy >= 0).all() and (found.xyxy <= 64).all() and (found.xyxy[:, 2:] > found.xyxy[:, :2]).all()

    stopped = subprocess.Popen([*args, "--out", str(tmp_path / "t")], cwd=ROOT, stderr=subprocess.DEVNULL)
    _wait_for(tmp_path / "t" / "metrics.jsonl", stopped)
    stopped.send_signal(signal.SIGTERM)
    assert stopped.wait(timeout=120) == 0
    status = json.loads((tmp_path / "t" / "status.json").read_text())
    assert status["state"] == "cancelled"
    assert (tmp_path / "t" / "checkpoints" / "latest.json").exists()


@pytest.mark.slow
def test_two_process_ddp_keeps_ranks_identical(syn, tmp_path):
    torchrun = Path(sys.executable).with_name("torchrun")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    # --standalone: torchrun's rendezvous binds a free port of its own (a fixed one can collide)
    r = subprocess.run([str(torchrun), "--standalone", "--nproc_per_node", "2", "-m", "train", "finetune",
                        "--model", "tiny", "--box-data", str(syn / "box_train.json"), "--box-images", str(syn / "images"),
                        "--label-data", str(syn / "image_labels.json"), "--label-images", str(syn / "images"),
                        "--iters", "4", "--box-batch", "2", "--label-batch", "2", "--box-size", "64",
                        "--label-size", "32", "--device", "cpu", "--out", str(tmp_path / "ddp")],
                       cwd=ROOT, capture_output=True, text=True, timeout=600, env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    metrics = json.loads((tmp_path / "ddp" / "metrics.json").read_text())
    a, b = metrics["rank_checksums"]
    assert a == b and metrics["state"] == "finished"


# --- evaluation --------------------------------------------------------------------------------------


def test_evaluation_perfect_vs_shuffled(syn):
    gt = json.loads((syn / "val.json").read_text())
    perfect = [{"image_id": a["image_id"], "category_id": a["category_id"], "bbox": a["bbox"], "score": 0.9}
               for a in gt["annotations"]]
    m = coco_metrics(gt, perfect, NOVEL)
    assert m["all"]["AP"] == pytest.approx(1.0) and m["all"]["AP50"] == pytest.approx(1.0)
    present = {c["name"] for c in gt["categories"] if any(a["category_id"] == c["id"] for a in gt["annotations"])}
    assert {k for k, v in m["per_class"].items() if v is not None} == present
    rng = np.random.default_rng(0)
    boxes = [d["bbox"] for d in perfect]
    order = rng.permutation(len(boxes))
    shuffled = [{**d, "bbox": boxes[j]} for d, j in zip(perfect, order)]
    assert coco_metrics(gt, shuffled, NOVEL)["all"]["AP"] < 0.5
    assert coco_metrics(gt, [], NOVEL)["all"]["AP"] == 0.0
    none = coco_metrics(gt, [], NOVEL)["per_class"]  # no detection: every class with boxes at 0 (it was {})
    assert none and set(none.values()) == {0.0} and set(none) == set(m["per_class"])
    with pytest.raises(ValueError, match="purple hexagon"):
        coco_metrics(gt, perfect, ["purple hexagon"])


def test_box_batches_never_give_negatives_to_classes_without_boxes(syn, tmp_path, monkeypatch):
    """Detic's rule: a class known only from image labels (here the novel ones, whose objects do
    appear unannotated in box images) must not be trained as 'background' by box batches."""
    from train.finetune import TrainStep

    seen = []
    original = TrainStep.forward

    def spy(self, kind, images, payload, class_embeddings):
        seen.append((kind, class_embeddings.shape[0], payload))
        return original(self, kind, images, payload, class_embeddings)

    monkeypatch.setattr(TrainStep, "forward", spy)
    _train(syn, tmp_path / "run", iters=4)
    box_names = {n for s in read_box_dataset(syn / "box_train.json", syn / "images")[0] for n in s.names}
    labels, _ = read_label_dataset(syn / "image_labels.json", syn / "images")
    all_names = set(box_names) | {n for s in labels for n in s.positives}
    assert len(all_names) > len(box_names)  # the label data brings classes without boxes
    for kind, num_classes, payload in seen:
        if kind == "box":
            assert num_classes == len(box_names)
            assert all(int(t["labels"].max()) < num_classes for t in payload if len(t["labels"]))
        else:
            assert num_classes == len(all_names)
    assert {k for k, _, _ in seen} == {"box", "label"}


def test_evaluation_of_an_image_above_the_decode_limit_is_in_original_pixels(tmp_path, tiny_predictor):
    """An image wider than the decode limit is shrunk for the model; the boxes evaluation scores
    must still be in its original pixels, or a perfect detection would score 0 AP."""
    from PIL import Image

    from detector.images import MAX_SIDE
    from train.evaluate import evaluate_model

    width = int(MAX_SIDE * 2.5)
    rng = np.random.default_rng(0)
    pixels = np.repeat(rng.integers(0, 255, (96, width // 8, 3), dtype=np.uint8), 8, axis=1)
    Image.fromarray(pixels).save(tmp_path / "wide.png")
    (det,) = tiny_predictor.predict(tmp_path / "wide.png", ["stripe"], score_threshold=0.0, max_detections=1)
    x1, y1, x2, y2 = (float(v) for v in det.xyxy[0])
    gt = {"images": [{"id": 1, "file_name": "wide.png", "width": width, "height": 96}],
          "categories": [{"id": 7, "name": "stripe"}],
          "annotations": [{"id": 1, "image_id": 1, "category_id": 7, "bbox": [x1, y1, x2 - x1, y2 - y1]}]}
    (tmp_path / "gt.json").write_text(json.dumps(gt))
    metrics = evaluate_model(tiny_predictor, tmp_path / "gt.json", tmp_path, score_threshold=0.0, max_detections=1)
    assert metrics["images"] == 1 and metrics["all"]["AP"] == pytest.approx(1.0)
    # The same ground truth in the shrunk image's pixels must not match: the scale really matters.
    shrink = MAX_SIDE / width
    gt["annotations"][0]["bbox"] = [v * shrink for v in gt["annotations"][0]["bbox"]]
    (tmp_path / "gt.json").write_text(json.dumps(gt))
    assert evaluate_model(tiny_predictor, tmp_path / "gt.json", tmp_path, score_threshold=0.0,
                          max_detections=1)["all"]["AP50"] < 0.5


def test_run_diagnostic_before_after_and_chosen_proposals(syn, tmp_path):
    """Issue 11's per-run diagnostic: AP before and after on the validation set, and where the
    image labels' chosen proposals were; the Train tab renders both."""
    from app.service import _choice_summary
    from app.ui.train_tab import diagnostics_html

    _train(syn, tmp_path / "run", iters=4, eval_data=str(syn / "val.json"), eval_images=str(syn / "images"),
           novel=list(NOVEL))
    run = RunDir(tmp_path / "run")
    before, after = run.evaluation(before=True), run.evaluation()
    # "before" is the starting model's AP on the validation set, "after" the trained model's: the same
    # numbers an evaluation of each model on its own gives.
    from detector import load_detector
    from train.evaluate import evaluate_model

    val = (syn / "val.json", syn / "images")
    for saved, model in ((before, load_detector("tiny")), (after, load_checkpoint(tmp_path / "run"))):
        expected = evaluate_model(model.eval(), *val, list(NOVEL))
        for part in ("novel", "base", "all"):
            assert saved[part] == pytest.approx(expected[part], abs=1e-6), part
            assert all(0 <= v <= 1 for v in saved[part].values())
        assert saved["images"] == 4
    choices = _choice_summary(run.metrics())
    assert 0 < choices["select_size"] <= 1 and 0 <= choices["select_image_box"] <= 1
    shown = diagnostics_html({"evaluation_before": before, "evaluation": after, "image_label_choices": choices})
    for part in ("novel", "base", "all"):
        assert f"{part} AP50 {100 * before[part]['AP50']:.1f} → {100 * after[part]['AP50']:.1f}" in shown
    assert f"covering {100 * choices['select_size']:.0f}% of the image" in shown

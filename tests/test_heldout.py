"""Every run from tags proves itself on held-out tags, trains fast on cached features, and the app
serves its best checkpoint (never silently a worse one)."""

import json
from pathlib import Path

import pytest
import torch

from detector.image_labels import Choice, choose_proposals, max_size_index, with_image_box
from train.data import LabelSample, read_label_dataset, vocabulary_of
from train.finetune import finetune
from train.heldout import average_precision, heldout_summary, label_report, plan_from_detic, rank_key, split_heldout
from train.run_config import RunConfig
from train.run_dir import RunDir
from train.synthetic import generate
from train.tag_features import cache_tag_images, tag_step


def _samples(n: int, names=("cat", "dog", "cup")) -> list[LabelSample]:
    return [LabelSample(Path(f"img{i:03d}.png"), [names[i % len(names)]], [names[(i + 1) % len(names)]])
            for i in range(n)]


# --- the split --------------------------------------------------------------------------------


def test_the_split_is_deterministic_holds_each_label_out_and_never_overlaps():
    samples = _samples(30)
    train, held, note = split_heldout(samples)
    again = split_heldout(list(reversed(samples)))
    assert {s.path for s in held} == {s.path for s in again[1]}, "chosen by file name, not by order"
    assert len(held) == 6 and "6 of 30" in note
    assert not {s.path for s in train} & {s.path for s in held} and len(train) + len(held) == 30
    assert {s.positives[0] for s in held} == {"cat", "dog", "cup"}, "at least one image per label"
    assert {s.positives[0] for s in train} == {"cat", "dog", "cup"}, "and every label still trains"


def test_too_few_tagged_images_train_on_all_and_say_so():
    train, held, note = split_heldout(_samples(5))
    assert len(train) == 5 and held == [] and "no held-out score" in note
    tagged, n_held, plan = plan_from_detic({"categories": [{"id": 1, "name": "cat"}],
                                            "images": [{"file_name": "a.png", "pos_category_ids": [1]}]})
    assert (tagged, n_held) == (1, 0) and "no held-out score" in plan
    assert "only 1 tagged image (fewer than" in plan and "trained on it," in plan  # one: not "1 tagged images"
    assert split_heldout([])[2] == "no tagged images: nothing to train on"


# --- the score --------------------------------------------------------------------------------


def test_average_precision_ranks_positives_and_is_none_when_not_measurable():
    assert average_precision([0.9, 0.8, 0.1], [True, True, False]) == 1.0
    assert average_precision([0.9, 0.8, 0.1], [False, True, True]) == pytest.approx((1 / 2 + 2 / 3) / 2)
    assert average_precision([0.5, 0.4], [False, False]) is None  # no positive: never 0
    assert average_precision([0.5, 0.4], [True, True]) is None  # no negative: nothing to rank against
    # Ties are one threshold, whatever their order: an untrained name scored alike everywhere got 1.0
    # whenever its positive came first.
    for order in ([True, False, False, False], [False, False, False, True]):
        assert average_precision([0.01] * 4, order) == pytest.approx(0.25)
    assert average_precision([0.9, 0.5, 0.5], [True, False, True]) == pytest.approx(1 / 2 * 1 + 1 / 2 * 2 / 3)
    # scikit-learn's average_precision_score([1, 0, 1, 0, 1], [3, 2, 2, 1, 2]) = 0.8333…
    assert average_precision([3, 2, 2, 1, 2], [True, False, True, False, True]) == pytest.approx(5 / 6)


def test_the_verdict_says_what_it_cannot_tell():
    """"1.00 -> 1.00, unchanged" on five held-out images with one or two positives per label, with
    no word that such a set cannot show a gain."""
    from train.heldout import caveat

    def summary(before, positives):
        return {"images": 5, "mean_before": before, "mean_after": before,
                "labels": {"cat": {"before": before, "after": before, "positives": positives, "negatives": 3}}}

    assert "already ranked perfectly before the run" in caveat(summary(1.0, 5))
    assert "At most 2 positive held-out image(s) per label" in caveat(summary(0.5, 2))
    assert caveat(summary(0.5, 3)) == "" and caveat(None) == "" and caveat({"images": 0}) == ""


def test_label_report_counts_other_names_only_as_negatives_and_skips_untagged():
    samples = [LabelSample(Path("a"), ["cat"]), LabelSample(Path("b"), ["dog"]),
               LabelSample(Path("c"), [], ["cat"]), LabelSample(Path("d"), [], ["dog"])]
    scores = [[0.9, 0.1], [0.2, 0.3], [0.95, 0.0], [0.0, 0.9]]
    report = label_report(samples, scores, ["cat", "dog"])
    cat, dog = report["labels"]["cat"], report["labels"]["dog"]
    assert (cat["positives"], cat["negatives"]) == (1, 2)  # b (other names only) and c (tagged "not cat")
    assert cat["ap"] == 0.5  # c outscores the cat
    assert (dog["positives"], dog["negatives"]) == (1, 2) and dog["ap"] == 0.5
    assert report["mean"] == 0.5
    lonely = label_report([LabelSample(Path("a"), ["cat"])], [[0.5, 0.5]], ["cat", "fox"])
    assert lonely["labels"]["fox"]["ap"] is None and lonely["mean"] is None


# --- max-size picks objects ----------------------------------------------------------------


def test_max_size_skips_proposals_that_are_the_frame():
    boxes = with_image_box(torch.tensor([[0.0, 0.0, 100.0, 100.0], [0.0, 0.0, 99.0, 98.0],
                                         [10.0, 10.0, 70.0, 80.0], [5.0, 5.0, 20.0, 20.0]]), (100, 100))
    assert max_size_index(boxes) == 2  # 0 and 1 cover (nearly) the whole image: not objects
    assert choose_proposals("max_size", boxes, torch.zeros(5, 2), [1]) == [Choice(2, (1,))]
    frames = with_image_box(torch.tensor([[0.0, 0.0, 100.0, 100.0], [0.0, 0.0, 95.0, 95.0]]), (100, 100))
    assert max_size_index(frames) == 0, "no object-like proposal: the plain largest one"


# --- cached training = the full path on the same proposals ----------------------------------


def test_a_cached_tag_step_gives_the_full_paths_loss_and_gradients(tiny_model, tmp_path):
    """With the backbone and neck frozen, a step on cached candidates is the same computation as
    Detic's full path for the same proposal (here the whole-image box, which both paths share)."""
    generate(tmp_path, seed=1, n_box=1, n_label=2, n_val=1, size=64)
    labels, _ = read_label_dataset(tmp_path / "image_labels.json", tmp_path / "images")
    names = vocabulary_of([], labels)
    index = {n.casefold(): i for i, n in enumerate(names)}
    emb = torch.nn.functional.normalize(torch.randn(len(names), 64, generator=torch.Generator().manual_seed(0)), dim=-1)
    model = tiny_model.train()
    cached, skipped = cache_tag_images(model, labels, index, 64, torch.device("cpu"))
    assert not skipped and len(cached) == 2 and all(c.boxes.shape[0] == c.pooled.shape[0] for c in cached)
    params = list(model.roi_heads.box_head.parameters())
    losses, stats = tag_step(model, cached, emb, torch.device("cpu"), "image_box", 0.1, "box_head")
    grads = torch.autograd.grad(losses["loss_image_label"], params)
    import random

    from train.data import load_resized
    images = [load_resized(s.path, 64, random.Random(0), (1.0, 1.0), flip=False)[0] for s in labels]
    for p in model.backbone.parameters():
        p.requires_grad_(False)
    full = model.image_label_loss(images, [c.positives for c in cached], emb, rule="image_box", weight=0.1)
    full_grads = torch.autograd.grad(full["loss_image_label"], params)
    # the cache stores half precision: equal up to its rounding
    assert losses["loss_image_label"].item() == pytest.approx(full["loss_image_label"].item(), rel=2e-2)
    for g, f in zip(grads, full_grads):
        assert (g - f).norm() <= 0.02 * f.norm() + 1e-8
    assert stats["select_image_box"] == 1.0


# --- a run from tags, end to end ------------------------------------------------------------


@pytest.fixture(scope="module")
def tagged(tmp_path_factory):
    out = tmp_path_factory.mktemp("tagged")
    generate(out, seed=2, n_box=1, n_label=16, n_val=1, size=64)
    return out


def _tag_run(tagged, out, **kw):
    cfg = RunConfig(model="tiny", label_data=str(tagged / "image_labels.json"), label_images=str(tagged / "images"),
                    iters=6, label_batch=4, label_size=64, checkpoint_every=3, log_every=1, warmup=1, lr=1e-3, **kw)
    return finetune(cfg, out)


def test_a_run_from_tags_scores_held_out_tags_before_and_at_each_checkpoint(tagged, tmp_path):
    result = _tag_run(tagged, tmp_path / "run")
    run = RunDir(tmp_path / "run")
    record = run.heldout()
    assert result["cached_features"] and result["state"] == "finished"
    assert record["images"] == 3 and "3 of 16" in record["note"]  # 20 % of 16, by file name
    assert record["before"]["labels"] and [c["iteration"] for c in record["checkpoints"]] == [3, 6]
    labels, _ = read_label_dataset(tagged / "image_labels.json", tagged / "images")
    _, held, _ = split_heldout(labels)
    assert record["files"] == sorted(s.path.name for s in held), "the run records which images it held out"
    best = record["best"]
    if best is not None:  # the best checkpoint is kept whole and is what a run serves
        assert run.served_model() == run.file(RunDir.BEST)
        assert best["mean"] == max(c["mean"] for c in record["checkpoints"] if c["mean"] is not None)
        assert json.loads((run.file(RunDir.BEST) / "best.json").read_text())["iteration"] == best["iteration"]
    summary = heldout_summary(record)
    assert set(summary["labels"]) == set(record["before"]["labels"])
    assert result["heldout"]["mean_before"] == summary["mean_before"]


def test_a_run_without_held_out_images_says_so(tagged, tmp_path):
    _tag_run(tagged, tmp_path / "run", heldout_share=0.0)
    assert RunDir(tmp_path / "run").heldout() is None or RunDir(tmp_path / "run").heldout()["images"] == 0


def test_the_full_path_still_trains_and_scores(tagged, tmp_path):
    result = _tag_run(tagged, tmp_path / "run", tag_features="full")
    assert not result["cached_features"] and len(RunDir(tmp_path / "run").heldout()["checkpoints"]) == 2


# --- serving: the best checkpoint, never silently a worse one --------------------------------


def _finished_run(service, tiny_predictor, before: float, best: float):
    run = RunDir.create(service.jobs.runs_dir)
    run.write_config(RunConfig(model="tiny", label_data="x.json", label_images="."))
    tiny_predictor.save_pretrained(run.path)
    run.save_best(tiny_predictor.model, 3)
    run.write_heldout({"note": "3 of 16 tagged images held out", "images": 3,
                       "before": {"labels": {"cat": {"ap": before, "positives": 1, "negatives": 2}}, "mean": before},
                       "checkpoints": [{"iteration": 3, "labels": {"cat": {"ap": best, "positives": 1, "negatives": 2}},
                                        "mean": best}], "best": {"iteration": 3, "mean": best}})
    run.write_status("finished", iteration=6, total=6)
    return run


def test_use_model_serves_the_best_checkpoint_and_asks_before_serving_a_worse_one(tmp_path, tiny_predictor):
    from app.service import AppService

    service = AppService(tmp_path / "data", predictor=tiny_predictor)
    served = service.model_info()["source"]
    worse = _finished_run(service, tiny_predictor, before=0.8, best=0.5)
    answer = service.use_model(worse.id)
    assert answer["needs_confirmation"] and "0.80 → 0.50" in answer["message"] and "-30.0 points" in answer["message"]
    assert service.model_info()["source"] == served, "nothing was swapped"
    runs = {r["id"]: r for r in service.training_runs()}
    assert runs[worse.id]["heldout_mean_before"] == 0.8 and runs[worse.id]["heldout_mean_after"] == 0.5
    status = service.training_status(worse.id)["heldout"]
    assert status["labels"]["cat"] == {"before": 0.8, "after": 0.5, "positives": 1, "negatives": 2}
    info = service.use_model(worse.id, confirm=True)
    assert info["source"] == str(worse.file(RunDir.BEST)) and "served although" in info["note"]
    better = _finished_run(service, tiny_predictor, before=0.5, best=0.75)
    info = service.use_model(better.id)
    assert not info.get("needs_confirmation") and info["source"] == str(better.file(RunDir.BEST))
    assert "best checkpoint" in info["note"] and "0.50 → 0.75: better" in info["note"]
    assert "At most 1 positive held-out image(s) per label" in info["note"]  # what the verdict cannot tell
    same = _finished_run(service, tiny_predictor, before=1.0, best=1.0)  # served, saying it is no better
    info = service.use_model(same.id)
    assert "1.00 → 1.00: no better than the model it started from" in info["note"]
    assert "already ranked perfectly before the run" in info["note"]


def test_use_asks_when_the_served_model_is_not_the_one_the_run_was_compared_with(tmp_path, tiny_predictor):
    """Run B was better than its start and is served; "Use" on an older run A, better than *its*
    start (offline), had replaced B unasked although nothing compares A with B. A run with no
    checkpoint yet is refused in one sentence ("serve it anyway" had answered with a server path)."""
    from app.jobs import JobError
    from app.service import AppService
    from app.service_training import START_MODEL, STARTED_FROM

    service = AppService(tmp_path / "data", predictor=tiny_predictor)
    first = service.model_info()["source"]
    old = _finished_run(service, tiny_predictor, before=0.5, best=0.8)
    old.file(START_MODEL).mkdir()
    (old.file(START_MODEL) / STARTED_FROM).write_text(json.dumps({"source": first}))
    newer = _finished_run(service, tiny_predictor, before=0.8, best=0.9)
    service._current_source(newer.file(START_MODEL))  # what a run records when it starts
    assert json.loads((newer.file(START_MODEL) / STARTED_FROM).read_text()) == {"source": first}
    assert not service.use_model(newer.id).get("needs_confirmation")  # compared with what was served: asked nothing
    served = service.model_info()["source"]
    answer = service.use_model(old.id)
    assert answer["needs_confirmation"] and service.model_info()["source"] == served
    assert answer["message"] == (f"It was compared with the model served when it started ({first}), not with the one "
                                 f"served now (run {newer.id}): which of the two is better is not known.")
    info = service.use_model(old.id, confirm=True)
    assert info["source"] == str(old.file(RunDir.BEST)) and "served although it was compared with" in info["note"]
    assert service.use_model(newer.id)["needs_confirmation"]  # back to B: it too was compared with `first` alone

    empty = RunDir.create(service.jobs.runs_dir)
    empty.write_config(RunConfig(model="tiny", label_data="x.json", label_images="."))
    empty.write_status("failed", iteration=0, total=40, message="the training process ended unexpectedly")
    for confirm in (False, True):
        with pytest.raises(JobError) as refused:
            service.use_model(empty.id, confirm=confirm)
        assert str(refused.value) == f"run {empty.id} has no checkpoint yet (failed at iteration 0 of 40): nothing to serve"


def test_a_run_with_no_held_out_score_is_served_only_when_asked(tmp_path, tiny_predictor):
    """Too few tags to hold any out: nothing says the run is better, so "use" asks first (it was
    swapped in silently); with validation boxes scored before and after, it is served as asked."""
    from app.service import AppService

    service = AppService(tmp_path / "data", predictor=tiny_predictor)
    served = service.model_info()["source"]
    run = RunDir.create(service.jobs.runs_dir)
    run.write_config(RunConfig(model="tiny", label_data="x.json", label_images="."))
    tiny_predictor.save_pretrained(run.path)
    run.write_status("finished", iteration=6, total=6)
    answer = service.use_model(run.id)
    assert answer["needs_confirmation"] and "no held-out score" in answer["message"]
    assert service.model_info()["source"] == served
    run.write_heldout({"note": "only 6 tagged images (fewer than 8): trained on all of them, so this run has no "
                               "held-out score", "images": 0, "before": None, "checkpoints": [], "best": None})
    answer = service.use_model(run.id)
    assert answer["message"].startswith("Only 6 tagged images (fewer than 8)") and "nothing says" in answer["message"]
    info = service.use_model(run.id, confirm=True)
    assert info["source"] != served and "served although only 6 tagged images" in info["note"]
    from app.ui.model_tab import model_header

    header = model_header(info)  # the run by its id, not its folder on the server
    assert f"<code>run {run.id}</code>" in header and str(service.jobs.runs_dir) not in header
    boxes = RunDir.create(service.jobs.runs_dir)
    boxes.write_config(RunConfig(model="tiny", box_data="x.json", box_images="."))
    tiny_predictor.save_pretrained(boxes.path)
    boxes.write_status("finished", iteration=6, total=6)
    boxes.write_evaluation({"AP": 0.1}, before=True)
    boxes.write_evaluation({"AP": 0.2})
    assert not service.use_model(boxes.id).get("needs_confirmation")


def test_unreadable_tagged_images_are_skipped_and_listed(tagged, tmp_path):
    import shutil

    data = tmp_path / "data"
    shutil.copytree(tagged, data)
    labels, _ = read_label_dataset(data / "image_labels.json", data / "images")
    train, held, _ = split_heldout(labels)
    broken = [train[0].path, held[0].path]
    for path in broken:
        path.write_bytes(b"not an image")  # e.g. replaced while the run reads it
    result = _tag_run(data, tmp_path / "run")
    record = RunDir(tmp_path / "run").heldout()
    assert result["state"] == "finished"
    assert str(train[0].path) in result["skipped_images"] and str(held[0].path) in record["skipped"]
    assert record["images"] == len(held) - 1


def test_a_tie_in_ap_is_broken_by_how_far_positives_sit_above_negatives():
    samples = [LabelSample(Path("a"), ["cat"]), LabelSample(Path("b"), [], ["cat"])]
    close = label_report(samples, [[0.55], [0.45]], ["cat"])
    clear = label_report(samples, [[0.9], [0.1]], ["cat"])
    assert close["mean"] == clear["mean"] == 1.0
    assert rank_key(clear) > rank_key(close) and clear["separation"] == pytest.approx(0.8)

"""A training run is described once (`RunConfig`): every field survives app -> config file -> CLI
-> the training loop, and the CLI's flags are generated from it."""

import dataclasses
import json
import re
from pathlib import Path

import pytest

from app.jobs import finetune_argv
from train import cli
from train.run_config import RunConfig
from train.run_dir import RunDir


def _non_default_config(tmp_path) -> RunConfig:
    """Every field set to something other than its default."""
    values = {
        "model": "tiny", "box_data": str(tmp_path / "b.json"), "box_images": str(tmp_path / "bi"),
        "label_data": str(tmp_path / "l.json"), "label_images": str(tmp_path / "li"), "iters": 77,
        "box_batch": 3, "label_batch": 5, "box_size": 96, "label_size": 48, "jitter": (0.5, 1.5), "ratio": "1:4",
        "image_label_rule": "image_box", "image_label_weight": 0.37, "image_label_scope": "classifier", "heads": "heavy", "train_backbone": "last_stages", "lr": 3e-3, "weight_decay": 0.02, "warmup": 7,
        "clip": 2.5, "checkpoint_every": 11, "log_every": 3, "seed": 9, "device": "cpu",
        "eval_data": str(tmp_path / "v.json"), "eval_images": str(tmp_path / "vi"), "novel": ["red star", "猫"],
        "heldout_share": 0.3, "tag_features": "full",
    }
    cfg = RunConfig(**values)
    default = RunConfig()
    missing = [f.name for f in dataclasses.fields(RunConfig) if getattr(cfg, f.name) == getattr(default, f.name)]
    assert not missing, f"the test must set every field: {missing}"
    return cfg


def _data_at_the_config_paths(cfg: RunConfig, tmp_path) -> None:
    """Real (synthetic) files where `cfg` points, so that the real `finetune` runs up to its loop;
    one class is renamed "猫" so that both novel names are among the categories."""
    from train.synthetic import generate

    syn = tmp_path / "syn"
    generate(syn, seed=0, n_box=4, n_label=8, n_val=2, size=64)
    for data, images, name in ((cfg.box_data, cfg.box_images, "box_train.json"),
                               (cfg.label_data, cfg.label_images, "image_labels.json"),
                               (cfg.eval_data, cfg.eval_images, "val.json")):
        d = json.loads((syn / name).read_text())
        for c in d["categories"]:
            c["name"] = "猫" if c["name"] == "blue circle" else c["name"]
        Path(data).write_text(json.dumps(d), encoding="utf-8")
        Path(images).symlink_to(syn / "images")
    assert set(cfg.novel) <= {c["name"] for c in d["categories"]}


def test_every_field_survives_app_config_file_cli_and_training_loop(tmp_path, monkeypatch):
    """The app writes the config, launches `python -m train finetune --config FILE` (its argv run
    in-process here) and the real `finetune` hands the training loop a config equal, field by field,
    to the app's; the loop then stops at once (the run ends "cancelled" at iteration 0)."""
    from train.loop import Loop

    cfg = _non_default_config(tmp_path)
    _data_at_the_config_paths(cfg, tmp_path)
    run = RunDir.create(tmp_path / "runs")
    run.write_config(cfg)  # what the app does
    seen = []

    def loop_that_stops_at_once(self, step, start_it):
        seen.append((self.cfg, self.run.path, start_it))
        return "cancelled", start_it

    monkeypatch.setattr(Loop, "run_steps", loop_that_stops_at_once)
    argv = finetune_argv(run)  # what the app launches
    assert cli.main(argv[argv.index("train") + 1:]) == 0
    (loop_cfg, loop_run, start_it), = seen
    differ = [f.name for f in dataclasses.fields(RunConfig) if getattr(loop_cfg, f.name) != getattr(cfg, f.name)]
    assert not differ and loop_cfg == cfg, f"fields the loop got differently: {differ}"
    assert loop_run == run.path and start_it == 0 and run.status()["state"] == "cancelled"
    assert json.loads(run.file(RunDir.CONFIG).read_text()) == cfg.to_dict()  # as the run rewrote it


def test_every_field_is_a_flag_that_overrides_the_config_file(tmp_path, monkeypatch):
    target = _non_default_config(tmp_path)
    flags = []
    for f in dataclasses.fields(RunConfig):
        value = getattr(target, f.name)
        text = ",".join(map(str, value)) if isinstance(value, (list, tuple)) else str(value)
        flags += [f"--{f.name.replace('_', '-')}", text]
    (tmp_path / "run").mkdir()
    base = tmp_path / "run" / RunDir.CONFIG
    base.write_text(RunConfig(model="offline").to_json())
    seen = {}
    monkeypatch.setattr("train.finetune.finetune", lambda c, out, resume=False: seen.update(cfg=c) or
                        {"state": "finished", "iteration": 0, "total": 0, "seconds": 0.0})
    assert cli.main(["finetune", "--config", str(base), *flags]) == 0
    assert seen["cfg"] == target


def test_paths_given_relative_are_saved_absolute_so_a_run_resumes_from_anywhere(tmp_path, monkeypatch):
    """A run started in the photos folder with `--label-data labels.csv --label-images .` saved them
    as typed, and `--resume` (or `--config`) from another folder failed: label file not found."""
    from train.run_config import PretrainConfig

    (tmp_path / "photos").mkdir()
    (tmp_path / "photos" / "labels.csv").write_text("image,labels\n")
    (tmp_path / "photos" / "my-model").mkdir()
    monkeypatch.chdir(tmp_path / "photos")
    seen = {}
    monkeypatch.setattr("train.finetune.finetune", lambda c, out, resume=False: seen.update(cfg=c) or
                        {"state": "finished", "iteration": 0, "total": 0, "seconds": 0.0})
    assert cli.main(["finetune", "--out", "../run", "--label-data", "labels.csv", "--label-images", ".",
                     "--eval-data", "val.json", "--eval-images", "val", "--model", "my-model"]) == 0
    photos = tmp_path.resolve() / "photos"
    cfg = seen["cfg"]
    assert (cfg.label_data, cfg.label_images, cfg.eval_data, cfg.eval_images, cfg.model) == (
        str(photos / "labels.csv"), str(photos), str(photos / "val.json"), str(photos / "val"), str(photos / "my-model"))
    assert cli.main(["finetune", "--out", "../run2", "--label-data", "labels.csv", "--label-images", ".",
                     "--model", "offline"]) == 0
    assert seen["cfg"].model == "offline"  # a preset (or Hub id) is not a path
    args = cli.argparse.Namespace(images="more", extra_images=None, model="owner/name")
    pre = cli.config_from_args(args, None, PretrainConfig)
    assert (pre.images, pre.extra_images, pre.model) == (str(photos / "more"), None, "owner/name")


def test_old_flag_names_and_json_round_trip():
    import argparse

    from train.run_config import add_config_arguments, config_from_args

    p = argparse.ArgumentParser()
    add_config_arguments(p)
    cfg = config_from_args(p.parse_args(["--image-loss", "max_score", "--image-loss-weight", "0.5"]))
    assert (cfg.image_label_rule, cfg.image_label_weight) == ("max_score", 0.5)
    assert RunConfig.from_json(cfg.to_json()) == cfg
    with pytest.raises(SystemExit):
        p.parse_args(["--image-loss", "biggest"])


@pytest.mark.parametrize("bad, match", [
    ({"iters": 0}, "iters"), ({"iters": 10**9}, "iters must be between 1 and 1,000,000"), ({"ratio": "x"}, "ratio"),
    ({"label_size": 10**9}, "label_size must be between 1 and 4,096"), ({"box_batch": 10**6}, "box_batch"),
    ({"image_label_weight": float("nan")}, "image_label_weight must be a finite number"),
    ({"image_label_weight": 1e308}, "image_label_weight must be between 0 and 100"),
    ({"lr": float("inf")}, "lr must be a finite"), ({"ratio": "999999999999:1"}, "ratio parts must be between"), ({"image_label_rule": "biggest"}, "image_label_rule"),
    ({"box_data": "b.json"}, "box_images"), ({"jitter": (2.0, 1.0)}, "jitter"), ({"surprise": 1}, "surprise"),
])
def test_bad_configs_name_the_field(bad, match):
    with pytest.raises(ValueError, match=match):
        RunConfig.from_dict(bad)


def test_config_errors_read_the_same_in_a_toast_and_over_the_api():
    """The app escapes error text for the toast (it is rendered as HTML), so a message written with
    '>=' reached API clients as 'iters must be &gt;= 1': the project's own messages use words."""
    import html

    import train.run_config as run_config
    import train.sampler as sampler

    for module in (run_config, sampler):
        for message in re.findall(r'ValueError\(f?"([^"]*)"', Path(module.__file__).read_text()):
            assert html.escape(message, quote=False) == message, message
    with pytest.raises(ValueError) as caught:
        RunConfig(lr=0)
    assert html.escape(str(caught.value), quote=False) == str(caught.value)


def test_schedule_defaults_are_derived_once():
    assert RunConfig(iters=40).warmup_iters == 4 and RunConfig(iters=40).log_interval == 2
    assert RunConfig(iters=40).checkpoint_interval == 50 and RunConfig(iters=10_000).checkpoint_interval == 500
    assert RunConfig(iters=40, log_every=7).log_interval == 7


def test_app_start_training_writes_every_setting_it_is_given(tmp_path, tiny_predictor):
    """The app's parameters (the λ included) reach the config file the CLI reads."""
    from app.service import AppService

    service = AppService(tmp_path / "data", predictor=tiny_predictor)
    h = service.store.add_image(_png())
    service.tag(h, "cat")
    service.jobs.start = lambda run: run.id  # launch nothing: this test is about the config file
    run_id = service.start_training(iters=12, image_label_rule="max_score", ratio="1:4", image_label_weight=0.25,
                                    novel="cat", label_size=48, box_size=80)
    cfg = service.jobs.run(run_id).read_config()
    assert (cfg.iters, cfg.image_label_rule, cfg.ratio, cfg.image_label_weight, cfg.novel, cfg.label_size,
            cfg.box_size) == (12, "max_score", "1:4", 0.25, ["cat"], 48, 80)
    labels = json.loads(Path(cfg.label_data).read_text())
    assert cfg.label_data.startswith(str(service.jobs.runs_dir / run_id)) and len(labels["images"]) == 1


def _png() -> bytes:
    import io

    import numpy as np
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.full((16, 16, 3), 200, np.uint8)).save(buf, "PNG")
    return buf.getvalue()


def test_novel_names_go_through_the_name_cleaner():
    """A 99,999-character novel name started a run (the 200-character limit was not applied), and a
    string was read as its letters."""
    assert RunConfig(model="tiny", novel=" cat, dog ,cat").novel == ["cat", "dog"]
    assert RunConfig(model="tiny", novel=["red star", " ", "猫"]).novel == ["red star", "猫"]
    with pytest.raises(ValueError, match="novel: a name may have at most 200 characters"):
        RunConfig(model="tiny", novel=["a" * 99_999])

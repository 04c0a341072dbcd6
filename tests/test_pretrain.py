"""AlignDet pre-training (`train.pretrain`): proposals, views, EMA, InfoNCE, hand-off to finetune,
exact resume, the CLI/config contract and the app's one entry point. Tiny preset, <= 96 px."""

import json
import math
import os
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from detector import load_checkpoint
from detector.checkpoint import PRETRAINING_ONLY, CheckpointError, read_checkpoint, save_checkpoint
from detector.presets import load_detector
from detector.proposals import ALIGNDET, ProposalParams, filter_proposals
from train import cli
from train.finetune import finetune
from train.pretrain import (
    PROJECTOR,
    cached_proposals,
    ema_update,
    geometric_view,
    info_nce,
    list_images,
    momentum_at,
    pretrain,
    two_views,
)
from train.run_config import PretrainConfig, RunConfig
from train.run_dir import RunDir
from train.synthetic import generate

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def syn(tmp_path_factory):
    out = tmp_path_factory.mktemp("syn_pretrain")
    generate(out, seed=0, n_box=6, n_label=0, n_val=0, size=96)
    return out


def _pretrain(syn, out, resume=False, on_progress=None, **kw):
    base = dict(images=str(syn / "images"), model="tiny", iters=6, batch=2, size=96, checkpoint_every=3,
                log_every=1, warmup=2, lr=1e-3, workers=1)
    base.update(kw)
    return pretrain(PretrainConfig(**base), out, resume=resume, on_progress=on_progress)


# --- proposals ---------------------------------------------------------------------------------------


def test_proposal_filter_on_hand_made_boxes():
    h, w = 480, 640  # at the reference size the 32 px rule applies unscaled
    boxes = torch.tensor([
        [10.0, 10, 110, 90],    # kept
        [10, 10, 40, 90],       # 30 px wide: too narrow
        [200, 200, 330, 240],   # aspect 3.25: too elongated
        [0, 0, 600, 460],       # sqrt(area ratio) = 0.95 > 0.8: too large
        [11, 10, 111, 90],      # near-duplicate of the first (IoU 0.98)
        [300, 100, 400, 180],   # kept (smaller: ranked after the first)
    ])
    kept = filter_proposals(boxes, (h, w), ALIGNDET)
    assert kept.tolist() == [[10.0, 10, 110, 90], [300, 100, 400, 180]]
    assert len(filter_proposals(boxes, (h, w), ProposalParams(top_k=1))) == 1
    # small images: the 32 px minimum scales with the shorter side (96 px -> 6.4 px)
    assert len(filter_proposals(torch.tensor([[0.0, 0, 8, 8]]), (96, 96), ALIGNDET)) == 1


def test_proposals_are_cached_by_content_and_computed_in_workers(syn, tmp_path, monkeypatch):
    paths = list_images(syn / "images")[:3]
    seen = []
    first, failed = cached_proposals(paths, tmp_path / "cache", ALIGNDET, workers=2,
                                     on_progress=lambda d, t: seen.append((d, t)))
    assert not failed and set(first) == set(paths) and seen[-1] == (3, 3)
    assert all(v.ndim == 2 and v.shape[1] == 4 for v in first.values())
    copy = tmp_path / "copy.png"  # same bytes under another name: a cache hit
    copy.write_bytes(paths[0].read_bytes())
    monkeypatch.setattr("train.pretrain._worker", lambda job: pytest.fail("recomputed a cached image"))
    again, _ = cached_proposals([*paths, copy], tmp_path / "cache", ALIGNDET, workers=2)
    assert all(np.array_equal(again[p], first[p]) for p in paths) and np.array_equal(again[copy], first[paths[0]])


# --- views -----------------------------------------------------------------------------------------


def _square_image():
    img = torch.full((3, 80, 100), 0.5)
    img[:, 20:60, 30:70] = torch.tensor([0.9, 0.1, 0.1])[:, None, None]  # red square at x 30..70, y 20..60
    return img, torch.tensor([[30.0, 20, 70, 60]])


@pytest.mark.parametrize("flip", [False, True])
@pytest.mark.parametrize("jitter", [(0.5, 0.5), (1.2, 1.2)])
def test_view_boxes_stay_on_the_content_under_flip_and_scale(flip, jitter):
    img, box = _square_image()
    out, b = geometric_view(img, box, 80, jitter, random.Random(0), flip=flip)
    assert out.shape[-2] == round(80 * jitter[0])
    x1, y1, x2, y2 = b[0].tolist()
    inside = out[:, math.ceil(y1) + 1:int(y2) - 1, math.ceil(x1) + 1:int(x2) - 1]
    assert torch.allclose(inside, torch.tensor([0.9, 0.1, 0.1])[:, None, None], atol=0.02)
    ring = torch.cat([out[:, int(y1) - 3:int(y1) - 1, int(x1):int(x2)].flatten(1),
                      out[:, int(y2) + 2:int(y2) + 4, int(x1):int(x2)].flatten(1)], 1)
    assert torch.allclose(ring, torch.full_like(ring, 0.5), atol=0.02)  # just outside: background


def test_two_views_differ_but_each_box_still_frames_the_object():
    img, box = _square_image()
    for seed in range(8):  # every photometric op comes up
        views = two_views(img, box, 80, (0.5, 1.5), random.Random(seed))
        for out, b in views:
            x1, y1, x2, y2 = b[0].tolist()
            inside = out[:, math.ceil(y1) + 2:int(y2) - 2, math.ceil(x1) + 2:int(x2) - 2].flatten(1)
            outside = out[:, :max(1, int(y1) - 2)].flatten(1)
            median = inside.median(dim=1).values[:, None]
            # mostly uniform (equalize stretches the resize seams of a two-colour image)
            assert ((inside - median).abs() < 0.06).all(0).float().mean() > 0.6
            assert (median[:, 0] - outside.median(dim=1).values).abs().max() > 0.1


# --- EMA, InfoNCE ------------------------------------------------------------------------------------


def test_momentum_schedule_and_ema_update():
    assert momentum_at(0.996, 0, 100) == pytest.approx(0.996)
    assert momentum_at(0.996, 50, 100) == pytest.approx(0.998)
    assert momentum_at(0.996, 100, 100) == pytest.approx(1.0)
    ms = [momentum_at(0.996, i, 100) for i in range(101)]
    assert all(a <= b for a, b in zip(ms, ms[1:]))
    online, target = nn.BatchNorm1d(2), nn.BatchNorm1d(2)
    with torch.no_grad():
        online.weight.copy_(torch.tensor([1.0, 3.0]))
        target.weight.copy_(torch.tensor([0.0, 1.0]))
        online.running_mean.copy_(torch.tensor([5.0, 6.0]))
    ema_update(target, online, 0.75)
    assert torch.allclose(target.weight, torch.tensor([0.25, 1.5]))  # 0.75 * t + 0.25 * o
    assert torch.equal(target.running_mean, online.running_mean)  # buffers are copied


def test_info_nce_matches_a_hand_computation():
    q = torch.tensor([[1.0, 0.0], [0.0, 2.0]])  # normalised to e1, e2
    k = torch.tensor([[1.0, 1.0], [0.0, 1.0], [1.0, 0.0], [-1.0, 0.0]])
    k_ids = torch.tensor([0, 1, 0, 1])
    positive = torch.tensor([True, True, False, False])  # view-2 keys; view-1 keys are only negatives
    t = 0.5
    s = 1 / math.sqrt(2)
    # query 0 (id 0): positive k0 (cos s), negatives k1 (0), k3 (-1); k2 (its own view) is left out
    l0 = -math.log(math.exp(s / t) / (math.exp(s / t) + math.exp(0) + math.exp(-1 / t)))
    # query 1 (id 1): positive k1 (1), negatives k0 (s), k2 (0); k3 is left out
    l1 = -math.log(math.exp(1 / t) / (math.exp(1 / t) + math.exp(s / t) + math.exp(0)))
    got = info_nce(q, torch.tensor([0, 1]), k, k_ids, positive, t)
    assert got.item() == pytest.approx((l0 + l1) / 2, rel=1e-6)
    # no query with a positive: zero, still differentiable
    q2 = q.clone().requires_grad_()
    zero = info_nce(q2, torch.tensor([7, 8]), k, k_ids, positive, t)
    zero.backward()
    assert zero.item() == 0 and q2.grad is not None


def test_info_nce_is_smallest_when_the_same_id_matches():
    g = torch.Generator().manual_seed(0)
    keys = torch.nn.functional.normalize(torch.randn(6, 16, generator=g), dim=1)
    ids = torch.arange(6)
    pos = torch.ones(6, dtype=torch.bool)
    matched = info_nce(keys, ids, keys, ids, pos, 0.5)
    for _ in range(5):
        noisy = keys + 0.3 * torch.randn(6, 16, generator=g)
        assert info_nce(noisy, ids, keys, ids, pos, 0.5) > matched
    assert info_nce(keys[torch.randperm(6, generator=g)], ids, keys, ids, pos, 0.5) > matched


# --- the run: hand-off, resume, contract ---------------------------------------------------------------


@pytest.fixture(scope="module")
def pretrained(syn, tmp_path_factory):
    out = tmp_path_factory.mktemp("pretrained") / "run"
    result = _pretrain(syn, out)
    assert result["state"] == "finished" and result["images"] == 6
    return out


def test_checkpoint_hands_off_to_finetune_with_exactly_the_projector_dropped(pretrained, syn, tmp_path):
    config, saved = read_checkpoint(pretrained)
    preset = load_detector("tiny")
    projector = {k for k in saved if k.startswith(PRETRAINING_ONLY)}
    # key accounting: the checkpoint is the detector's keys plus the projector's, nothing else
    assert projector and {k[len(PROJECTOR) + 1:] for k in projector} == {"0.weight", "0.bias", "2.weight", "2.bias"}
    assert set(saved) - projector == set(preset.state_dict())
    model = load_checkpoint(pretrained)
    assert model.dropped_keys == sorted(projector)
    loaded = model.state_dict()
    assert all(torch.equal(loaded[k], saved[k]) for k in loaded)
    # heads moved, backbone body and zero-shot classifier did not; the RPN now counts as trained
    fresh = preset.state_dict()
    changed = {k for k in fresh if not torch.equal(fresh[k], loaded[k])}
    assert any(k.startswith("rpn.") for k in changed) and any(k.startswith("backbone.fpn.") for k in changed)
    assert any(k.startswith("roi_heads.box_head.") for k in changed)
    assert not any(k.startswith(("backbone.body.", "roi_heads.box_predictor.cls_score.")) for k in changed)
    assert config.rpn_trained and config.pretrained_heads.startswith("aligndet: 6 unlabelled images")
    # no silent partial loads: any other extra or missing key still fails
    bad = tmp_path / "bad"
    save_checkpoint(model, bad)
    from safetensors.torch import load_file, save_file
    state = load_file(str(bad / "model.safetensors"))
    save_file({**state, "roi_heads.extra.weight": torch.zeros(1)}, str(bad / "model.safetensors"))
    with pytest.raises(CheckpointError, match="1 unexpected"):
        load_checkpoint(bad)
    # finetune starts from the run folder
    generate(tmp_path / "boxes", seed=1, n_box=4, n_label=0, n_val=0, size=64)
    result = finetune(RunConfig(model=str(pretrained), box_data=str(tmp_path / "boxes" / "box_train.json"),
                                box_images=str(tmp_path / "boxes" / "images"), iters=2, box_batch=2, box_size=64,
                                warmup=1), tmp_path / "ft")
    assert result["state"] == "finished"
    assert load_checkpoint(tmp_path / "ft").config.pretrained_heads == config.pretrained_heads


def test_cancelled_and_resumed_pretraining_is_bit_identical(syn, tmp_path):
    full = _pretrain(syn, tmp_path / "full")

    def cancel_at_3(metrics):
        if metrics["iteration"] == 3:
            RunDir(tmp_path / "part").request_cancel()

    part = _pretrain(syn, tmp_path / "part", on_progress=cancel_at_3)
    assert full["state"] == "finished" and part["state"] == "cancelled" and part["iteration"] == 3
    assert RunDir(tmp_path / "part").status()["state"] == "cancelled"
    resumed = _pretrain(syn, tmp_path / "part", resume=True)
    assert resumed["state"] == "finished" and resumed["iteration"] == 6
    _, a = read_checkpoint(tmp_path / "full")
    _, b = read_checkpoint(tmp_path / "part")
    assert set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a)
    ma = RunDir.load_tensors(RunDir(tmp_path / "full").latest_checkpoint(), "momentum")
    mb = RunDir.load_tensors(RunDir(tmp_path / "part").latest_checkpoint(), "momentum")
    assert all(torch.equal(ma[k], mb[k]) for k in ma)


def test_config_file_cli_flags_and_run_dir(tmp_path, monkeypatch):
    from app.jobs import train_argv

    cfg = PretrainConfig(images=str(tmp_path), model="tiny", iters=9, batch=3, proposals=20, momentum=0.99,
                         temperature=0.2, jitter=(0.7, 1.3), seed=4)
    assert PretrainConfig.from_json(cfg.to_json()) == cfg
    run = RunDir.create(tmp_path / "runs")
    run.write_config(cfg)
    assert run.command() == "pretrain" and run.read_config() == cfg
    argv = train_argv(run)
    assert argv[1:] == ["-m", "train", "pretrain", "--config", str(run.file(RunDir.PRETRAIN_CONFIG))]
    seen = {}

    def fake(c, out, resume=False, on_progress=None):
        seen.update(cfg=c, out=out, resume=resume)
        return {"state": "finished", "iteration": c.iters, "total": c.iters, "images": 0, "seconds": 0.0}

    monkeypatch.setattr("train.pretrain.pretrain", fake)
    assert cli.main([*argv[argv.index("train") + 1:], "--iters", "11", "--resume"]) == 0
    assert seen["cfg"] == cfg.replace(iters=11) and str(seen["out"]) == str(run.path) and seen["resume"]
    assert cli.main(["pretrain", "--images", str(tmp_path), "--out", str(tmp_path / "o"), "--batch", "0"]) == 2
    with pytest.raises(ValueError, match="images"):
        PretrainConfig()


def test_app_start_pretraining_writes_a_config_over_the_stored_images(tmp_path, tiny_predictor):
    from app.service import AppService

    service = AppService(tmp_path / "data", predictor=tiny_predictor)
    service.jobs.start = lambda run: run.id  # launch nothing: this test is about the config file
    with pytest.raises(Exception, match="no images"):
        service.start_pretraining(iters=5)
    import io

    from PIL import Image
    buf = io.BytesIO()
    Image.fromarray(np.full((16, 16, 3), 200, np.uint8)).save(buf, "PNG")
    service.store.add_image(buf.getvalue())
    run_id = service.start_pretraining(iters=5, size=96, base_model="tiny")
    run = service.jobs.run(run_id)
    cfg = run.read_config()
    assert isinstance(cfg, PretrainConfig) and (cfg.iters, cfg.size, cfg.model) == (5, 96, "tiny")
    assert cfg.images == str(service.store.image_dir)


@pytest.mark.slow
def test_two_process_ddp_pretraining_keeps_ranks_identical(syn, tmp_path):
    torchrun = Path(sys.executable).with_name("torchrun")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    # --standalone: torchrun's rendezvous binds a free port of its own (a fixed one can collide)
    r = subprocess.run([str(torchrun), "--standalone", "--nproc_per_node", "2", "-m", "train", "pretrain",
                        "--images", str(syn / "images"), "--model", "tiny", "--iters", "3", "--batch", "1",
                        "--size", "96", "--workers", "1", "--device", "cpu", "--out", str(tmp_path / "ddp")],
                       cwd=ROOT, capture_output=True, text=True, timeout=600, env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    summary = json.loads((tmp_path / "ddp" / "metrics.json").read_text())
    a, b = summary["rank_checksums"]
    assert a == b and summary["state"] == "finished"


def test_app_pretraining_takes_an_allowed_server_folder_and_refuses_others(tmp_path, tiny_predictor):
    from PIL import Image

    from app.policy import AccessDenied, AccessPolicy
    from app.service import AppService

    allowed, outside = tmp_path / "allowed", tmp_path / "outside"
    for folder in (allowed / "sub", outside):
        folder.mkdir(parents=True)
    Image.fromarray(np.full((16, 16, 3), 90, np.uint8)).save(allowed / "sub" / "a.png")
    Image.fromarray(np.full((16, 16, 3), 90, np.uint8)).save(outside / "b.png")
    service = AppService(tmp_path / "data", predictor=tiny_predictor, policy=AccessPolicy(allowed_dirs=(allowed.resolve(),)))
    service.jobs.start = lambda run: run.id  # launch nothing: this test is about the config file
    with pytest.raises(AccessDenied):
        service.start_pretraining(iters=5, folder=str(outside))
    with pytest.raises(AccessDenied):  # '..' out of the allowed folder
        service.start_pretraining(iters=5, folder=str(allowed / ".." / "outside"))
    assert not service.jobs.runs(), "a refused request creates no run"
    # no stored images at all: the server folder alone is enough
    cfg = service.jobs.run(service.start_pretraining(iters=5, base_model="tiny", folder=str(allowed))).read_config()
    assert cfg.extra_images == str(allowed.resolve()) and cfg.images == str(service.store.image_dir)
    from train.pretrain import list_images

    assert list_images(cfg.images, cfg.extra_images) == [allowed.resolve() / "sub" / "a.png"]

import contextlib
import os
import pickle
import shlex
import socket
import subprocess
import sys
import threading
import time

import pytest
import torch

from detector import CheckpointError, HubUnavailableError, Predictor, load_checkpoint, save_checkpoint
from detector.presets import resolve_source


def test_round_trip_gives_identical_outputs(tiny_predictor, small_image, tmp_path):
    out = tiny_predictor.save_pretrained(tmp_path / "ckpt")
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "model.safetensors"]  # no temp files left
    again = Predictor.from_pretrained(str(tmp_path / "ckpt"), device="cpu")
    assert again.config == tiny_predictor.config
    a = tiny_predictor.predict(small_image, "person, sky", score_threshold=0.0)[0]
    b = again.predict(small_image, "person, sky", score_threshold=0.0)[0]
    assert len(a) > 0
    assert (a.xyxy == b.xyxy).all() and (a.confidence == b.confidence).all()
    assert (a.data["class_name"] == b.data["class_name"]).all()


def test_weights_file_alone_is_a_complete_checkpoint(tiny_model, tmp_path):
    save_checkpoint(tiny_model, tmp_path)
    (tmp_path / "config.json").unlink()
    model = load_checkpoint(tmp_path / "model.safetensors")
    assert model.config == tiny_model.config


class Exploit:
    """Unpickling it runs a shell command that writes `marker` (a path of the test's own)."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"echo pwned > {shlex.quote(self.marker)}",))


def test_pickle_payload_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    (tmp_path / "model.safetensors").write_bytes(pickle.dumps({"w": Exploit(marker)}))
    with pytest.raises(CheckpointError, match="not a valid safetensors"):
        load_checkpoint(tmp_path)
    only_pickle = tmp_path / "other"
    only_pickle.mkdir()
    (only_pickle / "pytorch_model.bin").write_bytes(pickle.dumps(Exploit(marker)))
    with pytest.raises(CheckpointError, match="refusing to unpickle"):
        load_checkpoint(only_pickle)
    assert not marker.exists()


def test_mismatched_weights_are_reported(tiny_model, tmp_path):
    from safetensors.torch import save_file

    state = {k: v for k, v in tiny_model.state_dict().items() if not k.startswith("rpn.")}
    save_file(state, str(tmp_path / "model.safetensors"), metadata={"config": tiny_model.config.to_json()})
    with pytest.raises(CheckpointError, match="missing"):
        load_checkpoint(tmp_path)


def test_interrupted_save_keeps_previous_checkpoint(tiny_model, tmp_path, monkeypatch):
    save_checkpoint(tiny_model, tmp_path)
    good = (tmp_path / "model.safetensors").read_bytes()

    def boom(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr("detector.files.os.replace", boom)
    with torch.no_grad():
        tiny_model.roi_heads.box_predictor.bbox_pred.bias.add_(1.0)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(tiny_model, tmp_path)
    assert (tmp_path / "model.safetensors").read_bytes() == good
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json", "model.safetensors"]


def test_unknown_source_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a preset"):
        resolve_source(str(tmp_path / "missing" / "dir"))


def test_offline_hub_fails_fast_with_one_clear_line():
    t = time.monotonic()
    with pytest.raises(HubUnavailableError) as e:
        Predictor.from_pretrained("someone/not-cached-model")
    assert time.monotonic() - t < 5
    msg = str(e.value)
    assert "\n" not in msg and "HF_HUB_OFFLINE" in msg and "someone/not-cached-model" in msg


def test_unresponsive_hub_fails_within_seconds(monkeypatch):
    """A server that accepts connections and never answers must not hang the load."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    held = []
    stop = threading.Event()

    def accept():
        server.settimeout(0.2)
        while not stop.is_set():
            with contextlib.suppress(OSError):
                held.append(server.accept()[0])

    threading.Thread(target=accept, daemon=True).start()
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", False)
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{server.getsockname()[1]}")
    monkeypatch.setattr("detector.hub.HUB_TIMEOUT_S", 1.0)
    t = time.monotonic()
    try:
        with pytest.raises(HubUnavailableError, match="offline or unreachable"):
            resolve_source("someone/slow-model")
    finally:
        stop.set()
        server.close()
    assert time.monotonic() - t < 15


def test_cli_names_the_problem_on_bad_model(tmp_path):
    from PIL import Image

    Image.new("RGB", (8, 8)).save(tmp_path / "x.png")  # inputs are checked first: this one is fine
    r = subprocess.run([sys.executable, "-m", "detector", "predict", str(tmp_path / "x.png"), "-v", "cat",
                        "-m", "someone/not-cached"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and r.stderr.startswith("error: could not fetch")


def test_alternative_filenames_are_tried_in_order(monkeypatch, tmp_path):
    from detector import hub

    calls = []

    def fake(repo, name, revision=None):
        calls.append(name)
        if name == "second.safetensors":
            return tmp_path / name
        raise HubUnavailableError(f"no {name}")

    monkeypatch.setattr(hub, "download_file", fake)
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", False)
    assert hub.download_first("o/r", ["first.safetensors", "second.safetensors"]).name == "second.safetensors"
    assert calls == ["first.safetensors", "second.safetensors"]
    with pytest.raises(HubUnavailableError, match="no third"):
        hub.download_first("o/r", ["third.safetensors"])


def test_reloaded_offline_model_keeps_what_the_banner_says(tmp_path):
    """Issue #19: a checkpoint keeps every fact `model_limits` / `info()` read, so the app says
    the same about a served checkpoint as about the model it was saved from (the offline preset's
    backbone started from the packaged ImageNet weights, and still has them after a reload)."""
    from app.service import model_limits

    before = Predictor.from_pretrained("offline", device="cpu")
    assert before.info()["backbone_pretrained"] is True
    before.save_pretrained(tmp_path / "m")
    after = Predictor.from_pretrained(str(tmp_path / "m"), device="cpu")
    a, b = before.info(), after.info()
    assert b["backbone_pretrained"] is True
    assert {k: v for k, v in a.items() if k != "device"} == {k: v for k, v in b.items() if k != "device"}
    assert model_limits({**a, "rpn_trained": before.config.rpn_trained}) == \
        model_limits({**b, "rpn_trained": after.config.rpn_trained})
    after.save_pretrained(tmp_path / "again")  # and again: the fact is not lost on the second trip
    assert load_checkpoint(tmp_path / "again").backbone_pretrained is True


def test_checkpoints_from_before_the_field_do_not_claim_a_random_backbone(tiny_model, tmp_path):
    """A checkpoint without `backbone_pretrained` loads; a backbone that has pre-trained weights is
    then not known to be random (None, no banner line); the tiny one never has any (False)."""
    import json

    from detector import load_detector

    for name, expected in (("offline", None), ("tiny", False)):
        save_checkpoint(load_detector(name), tmp_path / name)
        cfg = json.loads((tmp_path / name / "config.json").read_text())
        cfg.pop("backbone_pretrained", None)
        state = load_checkpoint(tmp_path / name).state_dict()
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in state.items()}, str(tmp_path / name / "model.safetensors"),
                  metadata={"format": "pt", "config": json.dumps(cfg)})
        (tmp_path / name / "config.json").write_text(json.dumps(cfg))
        assert load_checkpoint(tmp_path / name).backbone_pretrained is expected, name

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
    # the weights, their config and the model card; no temp files left
    assert sorted(p.name for p in out.iterdir()) == ["README.md", "config.json", "model.safetensors"]
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
    assert r.stderr.count("\n") == 1 and "look-ups a)" not in r.stderr  # the library's reason, not cut mid-word


def test_the_hub_reason_is_cut_at_a_sentence_or_a_word():
    from detector.hub import _first_sentence

    assert _first_sentence("Cannot find it. To enable repo look-ups and downloads online, unset it.") == "Cannot find it"
    long = "word " * 60
    cut = _first_sentence(long.strip())
    assert cut.endswith(" …") and len(cut) <= 162 and cut[:-2].split(" ")[-1] == "word"


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


# --- the Hub's conventions: a model card beside the weights, push ------------------------------------


def test_saved_folder_has_a_model_card_in_the_hubs_format(tiny_predictor, tmp_path):
    from huggingface_hub import ModelCard

    tiny_predictor.save_pretrained(tmp_path / "plain")
    card = ModelCard.load(tmp_path / "plain" / "README.md")
    assert card.data.library_name == "pytorch" and card.data.pipeline_tag == "zero-shot-object-detection"
    assert card.data.license == "apache-2.0"
    assert "No held-out score was recorded" in card.text and "model.safetensors" in card.text

    heldout = {"images": 3, "best_iteration": 40, "mean_before": 0.25, "mean_after": 0.5, "note": "3 of 16 held out",
               "labels": {"cat": {"before": 0.25, "after": 0.5, "positives": 1, "negatives": 2},
                          "dog": {"before": None, "after": None, "positives": 0, "negatives": 3}}}
    tiny_predictor.save_pretrained(tmp_path / "run", card_info={"heldout": heldout, "license": "mit",
                                                                "training_data": "16 tagged images."})
    card = ModelCard.load(tmp_path / "run" / "README.md")
    assert card.data.license == "mit"
    assert "16 tagged images." in card.text and "iteration 40" in card.text
    assert "| cat | 0.250 | 0.500 | 1 | 2 |" in card.text and "| dog | not measurable |" in card.text
    assert Predictor.from_pretrained(str(tmp_path / "run"), device="cpu").config == tiny_predictor.config


def test_the_card_names_the_base_models():
    from detector.model_card import model_card
    from detector.presets import PRESETS

    head = model_card(PRESETS["resnet50-clip"]).split("\n---\n")[0]
    assert "laion/CLIP-ViT-B-32-laion2B-s34B-b79K" in head and "pipeline_tag: zero-shot-object-detection" in head
    text = model_card(PRESETS["offline"])
    assert "sentence-transformers/all-MiniLM-L6-v2" in text and "EfficientNet-Lite0" in text
    assert "selective search" in text and "ImageNet scores of region crops" in text


class FakeHfApi:
    """Records what a push would send; no network."""

    calls: list = []

    def __init__(self, endpoint=None, token=None):
        self.endpoint, self.token = endpoint, token

    def create_repo(self, repo_id, private=False, exist_ok=False, **kw):
        FakeHfApi.calls.append(("create_repo", repo_id, private, exist_ok, self.token))

    def upload_folder(self, repo_id, folder_path, commit_message="", **kw):
        from pathlib import Path

        files = {p.name: p.read_bytes() for p in Path(folder_path).iterdir()}
        FakeHfApi.calls.append(("upload_folder", repo_id, files))
        return type("Commit", (), {"commit_url": f"https://hub.test/{repo_id}/commit/abc"})()


def test_push_to_hub_uploads_weights_config_and_card(tiny_predictor, monkeypatch):
    import huggingface_hub

    monkeypatch.setattr(huggingface_hub, "HfApi", FakeHfApi)
    FakeHfApi.calls = []
    url = tiny_predictor.push_to_hub("me/detector", token="hf_x")
    assert url == "https://hub.test/me/detector/commit/abc"
    (_, repo, private, exist_ok, token), (_, repo2, files) = FakeHfApi.calls
    assert (repo, private, exist_ok, token, repo2) == ("me/detector", True, True, "hf_x", "me/detector")  # private by default
    assert sorted(files) == ["README.md", "config.json", "model.safetensors"]
    assert b'Predictor.from_pretrained("me/detector")' in files["README.md"]
    assert b"pipeline_tag: zero-shot-object-detection" in files["README.md"]
    FakeHfApi.calls = []
    tiny_predictor.push_to_hub("me/public", private=False)
    assert FakeHfApi.calls[0][2] is False and FakeHfApi.calls[0][4] is None  # huggingface_hub's own token


def test_the_app_pushes_a_runs_training_data_and_held_out_scores(tiny_predictor, tmp_path, monkeypatch):
    import json

    import huggingface_hub

    from app.policy import AccessPolicy
    from app.service import AppService
    from train.run_config import RunConfig
    from train.run_dir import RunDir

    service = AppService(tmp_path / "data", predictor=tiny_predictor, policy=AccessPolicy())
    run = RunDir.create(service.jobs.runs_dir)
    labels = tmp_path / "labels.json"
    labels.write_text(json.dumps({"categories": [{"id": 1, "name": "cat"}, {"id": 2, "name": "dog"}],
                                  "images": [{"file_name": f"{i}.png", "pos_category_ids": [1 + i % 2]}
                                             for i in range(10)]}))
    run.write_config(RunConfig(model="tiny", label_data=str(labels), label_images=".", iters=40))
    run.write_heldout({"images": 2, "note": "2 of 10 tagged images held out",
                       "before": {"labels": {"cat": {"ap": 0.5, "positives": 1, "negatives": 1}}, "mean": 0.5},
                       "checkpoints": [{"iteration": 40, "labels": {"cat": {"ap": 1.0, "positives": 1, "negatives": 1}},
                                        "mean": 1.0}], "best": {"iteration": 40, "mean": 1.0}})
    info = service.card_info(str(run.file(RunDir.BEST)))  # a run serves its best/ checkpoint
    assert "10 images with image-level tags (2 labels: cat, dog), 2 of them held out" in info["training_data"]
    assert "40 iterations" in info["training_data"] and info["heldout"]["mean_after"] == 1.0
    assert service.card_info("tiny") == {}

    monkeypatch.setattr(huggingface_hub, "HfApi", FakeHfApi)
    FakeHfApi.calls = []
    service.serving.source = str(run.path)
    service.push_to_hub("me/run", token="hf_visitor")
    card = FakeHfApi.calls[1][2]["README.md"].decode()
    assert "| cat | 0.500 | 1.000 | 1 | 1 |" in card and "10 images with image-level tags" in card


def test_a_hub_id_loads_from_a_loopback_hub_reading_only_config_and_weights(tiny_predictor, tmp_path, monkeypatch):
    """The online path (model_info with a timeout, then each file) against a fake Hub: the
    checkpoint loads and neither the model card nor anything else is fetched."""
    import hashlib
    import json
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    folder = tiny_predictor.save_pretrained(tmp_path / "repo")
    files = {p.name: p.read_bytes() for p in folder.iterdir()}
    sha = "a" * 40
    seen = []

    class Hub(BaseHTTPRequestHandler):
        def log_message(self, *a):
            pass

        def _answer(self, body_wanted: bool):
            seen.append((self.command, self.path))
            if self.path.startswith("/api/models/me/model"):
                body = json.dumps({"id": "me/model", "sha": sha,
                                   "siblings": [{"rfilename": n} for n in files]}).encode()
                headers = {"Content-Type": "application/json"}
            elif self.path.startswith(f"/me/model/resolve/{sha}/") and self.path.rsplit("/", 1)[1] in files:
                body = files[self.path.rsplit("/", 1)[1]]
                headers = {"X-Repo-Commit": sha, "ETag": f'"{hashlib.sha1(body).hexdigest()}"'}
            else:
                self.send_response(404)
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self.send_response(200)
            for k, v in {**headers, "Content-Length": str(len(body))}.items():
                self.send_header(k, v)
            self.end_headers()
            if body_wanted:
                self.wfile.write(body)

        def do_GET(self):
            self._answer(True)

        def do_HEAD(self):
            self._answer(False)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Hub)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", False)
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{server.server_address[1]}")
    try:
        loaded = Predictor.from_pretrained("me/model", device="cpu")
    finally:
        server.shutdown()
    assert loaded.config == tiny_predictor.config
    fetched = {p.rsplit("/", 1)[1] for method, p in seen if "/resolve/" in p}
    assert fetched == {"config.json", "model.safetensors"}  # not README.md
    # A file larger than the server downloads is refused from its size, before any byte of it is read.
    import detector.hub as hub

    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path / "cache2"))
    monkeypatch.setattr(hub, "MAX_DOWNLOAD_GB", 100 / 2**30)  # 100 bytes
    seen.clear()
    server = ThreadingHTTPServer(("127.0.0.1", 0), Hub)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{server.server_address[1]}")
    try:
        with pytest.raises(HubUnavailableError, match=r"larger than this server downloads .*OVD_MAX_DOWNLOAD_GB"):
            Predictor.from_pretrained("me/model", device="cpu")
    finally:
        server.shutdown()
    assert not [p for method, p in seen if method == "GET" and "/resolve/" in p]

"""The app launched in-process with a tiny model, driven through its API with gradio_client."""

import io
import json
import os
import socket
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from app.service import AppService
from app.ui import build_app, launch_options
from detector import Predictor


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def running(tmp_path_factory, small_image):
    from gradio_client import Client

    data = tmp_path_factory.mktemp("appdata")
    service = AppService(data, predictor=Predictor.from_pretrained("tiny", device="cpu"))
    demo = build_app(service)
    service._demo = demo
    port = _free_port()
    demo.launch(prevent_thread_lock=True, server_name="127.0.0.1", server_port=port, quiet=True,
                **launch_options())
    files = tmp_path_factory.mktemp("files")
    paths = []
    for i in range(3):
        img = np.roll(small_image, 17 * i, axis=1)
        p = files / f"photo_{i}.png"
        Image.fromarray(img).save(p)
        paths.append(p)
    try:
        yield service, Client(f"http://127.0.0.1:{port}/", verbose=False), paths, files
    finally:
        demo.close()


def _error(fn, *args, **kwargs) -> str:
    with pytest.raises(Exception) as e:  # gradio_client's AppError carries the gr.Error message
        fn(*args, **kwargs)
    return str(e.value)


def _app_script():
    """app.py (the launcher; `import app` is the package)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("app_main", Path(__file__).resolve().parents[1] / "app.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_binds_to_loopback_by_default_with_limits_and_optional_login(tmp_path):
    script = _app_script()
    args = script.build_parser({}).parse_args([])
    kw = script.launch_kwargs(args, tmp_path, {})
    assert (kw["server_name"], kw["server_port"], kw["auth"], kw["share"]) == ("127.0.0.1", 7860, None, False)
    assert kw["max_file_size"] == "50mb" and kw["allowed_paths"] == [] and "theme" in kw
    env = {"APP_USERNAME": "ann", "APP_PASSWORD": "pw", "APP_PORT": "9000", "APP_MAX_FILE_SIZE": "5mb"}
    kw = script.launch_kwargs(script.build_parser(env).parse_args(["--host", "0.0.0.0"]), tmp_path, env)
    assert (kw["server_name"], kw["server_port"], kw["auth"], kw["max_file_size"]) == ("0.0.0.0", 9000, ("ann", "pw"), "5mb")
    assert script.build_parser({"SPACE_ID": "u/s"}).parse_args([]).host == "0.0.0.0"


def test_data_dir_resolution(tmp_path, monkeypatch):
    from app.service import default_data_dir

    monkeypatch.setenv("DATA_DIR", str(tmp_path))
    assert default_data_dir() == tmp_path
    monkeypatch.delenv("DATA_DIR")
    # /data as a Space's persistent storage would be: present and writable, present but read-only, absent
    real_is_dir, real_access = Path.is_dir, os.access
    for exists, writable, expected in ((True, True, Path("/data")), (True, False, Path("data")),
                                       (False, False, Path("data"))):
        monkeypatch.setattr(Path, "is_dir", lambda p, e=exists: e if str(p) == "/data" else real_is_dir(p))
        monkeypatch.setattr(os, "access", lambda p, mode, w=writable: w if str(p) == "/data" else real_access(p, mode))
        assert default_data_dir() == expected, (exists, writable)


def test_detect_endpoint(running):
    from gradio_client import handle_file

    _, client, paths, _ = running
    image, table, json_path = client.predict(handle_file(str(paths[0])), "person, flag", 0.0, 0.5, 5,
                                             api_name="/detect")
    assert Image.open(image).size == (192, 192)
    assert len(table["data"]) == 5 and {r[0] for r in table["data"]} <= {"person", "flag"}
    records = json.loads(Path(json_path).read_text())
    assert len(records) == 5 and set(records[0]) == {"box", "score", "class_id", "class_name"}


def test_bad_detect_inputs_give_clear_messages(running, tmp_path):
    from gradio_client import handle_file

    _, client, paths, _ = running
    assert "vocabulary is empty" in _error(client.predict, handle_file(str(paths[0])), " , ", 0.3, 0.5, 10,
                                           api_name="/detect")
    bad = tmp_path / "corrupt.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    assert "not a readable image" in _error(client.predict, handle_file(str(bad)), "cat", 0.3, 0.5, 10,
                                            api_name="/detect")
    from detector.vocabulary import MAX_NAMES

    many = ", ".join(f"thing {i}" for i in range(MAX_NAMES))  # the most a vocabulary may hold
    _, table, _ = client.predict(handle_file(str(paths[0])), many, 0.0, 0.5, 20, api_name="/detect")
    assert len(table["data"]) == 20
    assert f"at most {MAX_NAMES:,} names" in _error(client.predict, handle_file(str(paths[0])), many + ", one more",
                                                    0.3, 0.5, 10, api_name="/detect")


@pytest.mark.slow
def test_forty_megapixel_image_is_downscaled_not_oom(running, tmp_path):
    from gradio_client import handle_file

    _, client, _, _ = running
    big = np.zeros((5000, 8000, 3), np.uint8)
    big[:, :, 0] = np.linspace(0, 255, 8000, dtype=np.uint8)
    Image.fromarray(big).save(tmp_path / "big.png", compress_level=1)
    _, table, json_path = client.predict(handle_file(str(tmp_path / "big.png")), "sky", 0.0, 0.5, 3,
                                         api_name="/detect")
    boxes = [r["box"] for r in json.loads(Path(json_path).read_text())]
    assert len(boxes) == 3 and max(b[2] for b in boxes) > 4096  # reported in original pixels


def test_assign_endpoint(running):
    from gradio_client import handle_file

    _, client, paths, _ = running
    image, table, said = client.predict(handle_file(str(paths[1])), "person, flag", "", 20, 10, api_name="/assign")
    rules = [r[0] for r in table["data"]]
    assert rules.count("max_size") == 1 and rules.count("image_box") == 1 and rules.count("max_score") == 2
    col = {h: i for i, h in enumerate(table["headers"])}
    assert [r for r in table["data"] if r[0] == "image_box"][0][col["proposal"]] == "whole image"
    assert Image.open(image).size == (192, 192)
    max_size = [r for r in table["data"] if r[0] == "max_size"][0]
    rank = max_size[col["rank (by objectness)"]]
    assert rank.endswith("of 20") or rank == "—"
    assert "max_size trains" in said


@pytest.mark.slow
def test_tag_export_train_hot_swap_detect(running):
    """The whole loop: add images, tag with nasty names, export, train in the background,
    watch it finish, hot-swap the new model, detect again."""
    from gradio_client import handle_file

    service, client, paths, files = running
    assert "nothing to train on" in _error(client.predict, 30, "max_size", "1:1", api_name="/start_training")
    client.predict([handle_file(str(p)) for p in paths], api_name="/add_images")
    client.predict([handle_file(str(paths[0]))], api_name="/add_images")  # duplicate upload
    queue = client.predict(api_name="/images")
    assert len(queue) == 3
    nasty = "chat 🐈, Robert'); DROP TABLE tags;--, say \"cheese\""
    tags = client.predict(queue[0]["hash"], nasty, "dog", api_name="/tag")
    assert sorted(tags["positives"]) == sorted(["chat 🐈", "Robert'); DROP TABLE tags;--", 'say "cheese"'])
    client.predict(queue[1]["hash"], "person", "", api_name="/tag")
    client.predict(queue[2]["hash"], "person, chat 🐈", "", api_name="/tag")
    counts = client.predict(api_name="/dataset")["labels"]
    assert counts["person"]["positive"] == 2 and counts["dog"]["negative"] == 1

    exported = client.predict("detic", api_name="/export_labels")
    data = json.loads(Path(exported).read_text())
    assert len(data["images"]) == 3 and "pos_category_ids" in data["images"][0]
    csv_text = Path(client.predict("csv", api_name="/export_labels")).read_text(encoding="utf-8")
    assert "DROP TABLE" in csv_text

    before = service.predictor
    run_id = client.predict(6, "max_size", "1:1", label_size=64, box_size=64, api_name="/start_training")
    assert "already active" in _error(client.predict, 6, "max_size", "1:1", label_size=64, box_size=64,
                                      api_name="/start_training")
    status = service.jobs.wait(run_id, timeout=600)
    assert status["state"] == "finished", service.jobs.run(run_id).log_tail(40)
    final = client.predict(run_id, api_name="/training_status")
    assert final["state"] == "finished" and final["iteration"] == 6 and final["metrics"]
    asked = client.predict(run_id, api_name="/use_model")  # 3 tagged images: no held-out score, so it asks
    assert asked["needs_confirmation"] and "no held-out score" in asked["message"] and service.predictor is before
    info = client.predict(run_id, True, api_name="/use_model")
    assert info["source"].endswith(run_id) and service.predictor is not before
    # every tagged image is in each batch of 8: the run trained all four positive names (not "dog": a negative)
    trained = service.predictor.config.trained_class_names
    assert sorted(trained) == sorted(["chat 🐈", "Robert'); DROP TABLE tags;--", 'say "cheese"', "person"])
    assert info["trained_class_names"] == 4
    _, table, _ = client.predict(handle_file(str(paths[0])), "person", 0.0, 0.5, 5, api_name="/detect")
    assert len(table["data"]) == 5
    # The store survived all of it.
    assert service.store.db.conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    assert len(client.predict(api_name="/images")) == 3


def test_blank_tags_change_nothing_whatever_the_blanks(tmp_path, tiny_predictor, small_image):
    service = AppService(tmp_path, predictor=tiny_predictor)
    h = service.store.add_image(Image.fromarray(small_image))
    service.tag(h, "cat")
    for blank in ("", " , ,, ", "\n\t", "\t;\u3000", "\u200b", ["\u200b", " "]):  # zero-width: no name either
        assert service.tag(h, blank, blank) == {"positives": ["cat"], "negatives": []}, repr(blank)


def test_label_management_endpoints(running):
    service, client, paths, _ = running
    service.tag(service.store.add_image(paths[0]), ['say "cheese"', "dog"])  # whatever ran before
    counts = client.predict("say \"cheese\"", "smile", api_name="/rename_label")["labels"]
    assert "smile" in counts and 'say "cheese"' not in counts
    counts = client.predict("smile", "person", api_name="/merge_labels")["labels"]
    assert "smile" not in counts
    counts = client.predict("dog", api_name="/delete_label")["labels"]
    assert "dog" not in counts
    assert "no label named" in _error(client.predict, "nope", api_name="/delete_label")


def test_store_writes_are_safe_from_two_users_at_once(running):
    """Concurrent taggers: every write lands, none corrupts another."""
    import threading

    service, _, _, _ = running
    hashes = [service.store.add_image(_png(i)) for i in range(20)]
    errors = []

    def worker(offset):
        try:
            for h in hashes[offset::2]:
                service.tag(h, f"label {offset}")
        except Exception as e:  # noqa: BLE001
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(k,)) for k in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert service.store.counts()["label 0"]["positive"] == 10 and service.store.counts()["label 1"]["positive"] == 10


def _png(seed: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(100 + seed).integers(0, 255, (16, 16, 3), dtype=np.uint8)).save(buf, "PNG")
    return buf.getvalue()


def test_ui_events_and_api_endpoints_call_the_same_operations(running):
    """Every UI event goes through one of the service's operations, every operation over plain
    values is a named API endpoint bound to that very object, and both give the same answer."""
    service, client, _, _ = running
    demo = running_demo(running)
    ops = demo.app_endpoints
    assert {"detect", "assign", "tag", "suggest", "start_training", "training_status", "use_model"} <= set(ops)
    by_api_name = {}
    for block_fn in demo.fns.values():
        fn = block_fn.fn
        if fn is None or getattr(fn, "ui_only", False):
            continue
        op = fn if any(fn is o for o in ops.values()) else getattr(fn, "endpoint", None)
        assert any(op is o for o in ops.values()), f"event {block_fn.name} bypasses the service"
        if block_fn.api_name:
            by_api_name[block_fn.api_name] = op
    for name, op in ops.items():
        if op.endpoint["api"] or name in by_api_name:  # api=False: served through its UI event, or UI-only
            assert by_api_name.get(name) is op, f"operation {name} is not the API endpoint /{name}"
        assert op.endpoint["gpu"] == (name in {"detect", "detect_batch", "detect_video", "assign", "suggest", "detections_coco",
                                                  "image_classes",
                                                  "find_suggestions", "name_readings"})
    assert client.predict(api_name="/training_status") == _jsonable(service.training_status())
    assert client.predict(api_name="/dataset") == service.dataset()


def _jsonable(value):
    return json.loads(json.dumps(value))


def running_demo(running):
    service = running[0]
    return service._demo


def test_the_suggestion_filter_finds_images_to_review_once_per_model(tmp_path, small_image, monkeypatch):
    """"suggestion:NAME": the images where the model suggests NAME and that have no tag NAME yet,
    found in one pass (batched, with progress) and kept until the model is swapped."""
    import supervision as sv

    service = AppService(tmp_path / "data", predictor=Predictor.from_pretrained("tiny", device="cpu"))
    hashes = [service.store.add_image(np.roll(small_image, 11 * i, axis=0), f"img_{i}.png") for i in range(5)]
    service.tag(hashes[3], "Mug")  # already tagged (present, other case): nothing to review
    service.tag(hashes[4], "", "mug")  # tagged not present: nothing to review either
    service.tag(hashes[2], "plate")
    # What the "model" sees: name -> score per image; scores under the threshold (0.05) do not count.
    sees = {hashes[0]: {"mug": 0.9, "plate": 0.01}, hashes[1]: {"plate": 0.4, "mug": 0.3},
            hashes[2]: {"plate": 0.8}, hashes[3]: {"mug": 0.9}, hashes[4]: {"mug": 0.7}}
    calls = []

    def predict(self, images, vocabulary, score_threshold=None, *args, **kwargs):
        assert isinstance(images, list)
        calls.append(len(images))
        out = []
        for path in images:
            found = sees.get(Path(path).stem, {})
            out.append(sv.Detections(xyxy=np.array([[0, 0, 10, 10]] * len(found), dtype=float).reshape(-1, 4),
                                     confidence=np.array(list(found.values()), dtype=float),
                                     data={"class_name": np.array(list(found), dtype=object)}))
        return out

    monkeypatch.setattr(Predictor, "predict", predict)
    vocab = "mug, plate, cat"
    assert service.tag_view(0, "suggestion:mug", vocabulary=vocab)["pending"] == 5  # not looked yet
    progress = []
    found = service.find_suggestions(vocab, progress=lambda done, total: progress.append((done, total)))
    assert sum(calls) == 5 and progress[0] == (0, 5) and progress[-1] == (5, 5)
    assert found["names"] == ["mug", "plate", "cat"] and found["looked_at"] == 5
    assert found["to_review"] == {"mug": 2, "plate": 1, "cat": 0}

    def walk(show: str) -> list[int]:
        """The images ▶ visits from the first, each once."""
        v, seen = service.tag_view(0, show, vocabulary=vocab), []
        while v["image"] is not None and v["index"] not in seen:
            seen.append(v["index"])
            assert v["pending"] == 0 and v["position"] == len(seen)
            v = service.tag_view(v["index"] + 1, show, vocabulary=vocab)
        assert v["matches"] == len(seen)
        return seen

    assert walk("suggestion:mug") == [0, 1]  # not 3 (tagged Mug) nor 4 (tagged not present)
    assert walk("suggestion:plate") == [1]  # 0: under the threshold; 2: tagged plate
    assert service.tag_view(0, "suggestion:cat", vocabulary=vocab)["image"] is None
    assert service.tag_view(0, "all", vocabulary=vocab)["suggest_names"] == ["mug", "plate", "cat"]
    # Moving through the queue and asking again run no model; tagging takes an image out.
    calls.clear()
    assert service.find_suggestions(vocab)["looked_at"] == 0 and calls == []
    service.tag(hashes[0], "mug")
    assert walk("suggestion:mug") == [1]
    # Other names are another pass (the empty vocabulary is the labels: Mug, plate).
    assert service.tag_view(0, "suggestion:mug")["pending"] == 5
    assert service.find_suggestions("")["to_review"] == {"Mug": 1, "plate": 1} and sum(calls) == 5
    # A new image is looked at alone.
    calls.clear()
    new = service.store.add_image(np.roll(small_image, 99, axis=1), "img_5.png")
    sees[new] = {"mug": 0.5}
    assert service.tag_view(0, "suggestion:mug", vocabulary=vocab)["pending"] == 1
    assert service.find_suggestions(vocab)["looked_at"] == 1 and calls == [1]
    assert walk("suggestion:mug") == [1, 5]
    # A swapped model starts afresh: what the old one found no longer counts.
    before = service.model_version
    service.use_model("tiny")
    assert service.model_version == before + 1
    assert service.tag_view(0, "suggestion:mug", vocabulary=vocab)["pending"] == 6
    sees[hashes[2]] = {"mug": 0.6}  # the new model sees a mug in img_2
    calls.clear()
    assert service.find_suggestions(vocab)["looked_at"] == 6 and sum(calls) == 6
    assert walk("suggestion:mug") == [1, 2, 5]
    with pytest.raises(ValueError, match="unknown filter"):
        service.tag_view(0, "suggested:mug")
    empty = AppService(tmp_path / "empty", predictor=service.predictor)
    with pytest.raises(ValueError, match="names to suggest"):
        empty.find_suggestions("")


def test_tagging_never_waits_for_the_suggestion_pass(tmp_path, small_image, monkeypatch):
    """Issue #19: the "with suggestion" pass runs in a thread the service owns. While it runs (here
    held at its second batch) tag, untag, tag_view and the progress answer at once, the queue shows
    what is found so far, asking again starts no second pass, and the rest appears when it is done."""
    import threading
    import time

    import supervision as sv

    service = AppService(tmp_path / "data", predictor=Predictor.from_pretrained("tiny", device="cpu"))
    hashes = [service.store.add_image(np.roll(small_image, 11 * i, axis=0), f"img_{i}.png") for i in range(12)]
    sees = {hashes[0]: "mug", hashes[5]: "mug", hashes[9]: "plate"}
    release, calls = threading.Event(), []

    def predict(images, vocabulary, score_threshold=None, *args, **kwargs):
        calls.append([Path(p).stem for p in images])
        if len(calls) > 1:
            assert release.wait(60), "never released"  # a slow model: held until the test says so
        return [sv.Detections(xyxy=np.array([[0, 0, 9, 9]] * (h in sees), dtype=float).reshape(-1, 4),
                              confidence=np.array([0.9] * (h in sees)),
                              data={"class_name": np.array([sees.get(h)] * (h in sees), dtype=object)})
                for h in (Path(p).stem for p in images)]

    monkeypatch.setattr(service.predictor, "predict", predict)
    vocab = "mug, plate"

    def quick(fn, *args, **kwargs):
        started = time.perf_counter()
        out = fn(*args, **kwargs)
        assert time.perf_counter() - started < 1.0, f"{fn.__name__} waited"
        return out

    progress = quick(service.start_suggestions, vocab)
    assert progress["images"] == 12 and progress["running"]
    for _ in range(100):  # the first batch (two images: progress every tenth) is filed at once
        if service.suggestion_progress(vocab)["checked"] == 2:
            break
        time.sleep(0.05)
    v = quick(service.tag_view, 0, "suggestion:mug", vocabulary=vocab)
    assert v["running"] and v["pending"] == 10 and v["matches"] == 1 and v["index"] == 0
    assert quick(service.tag, hashes[3], "cup")["positives"] == ["cup"]
    assert quick(service.untag, hashes[3], "cup")["positives"] == []
    assert quick(service.tag_view, 4, "all")["index"] == 4
    assert quick(service.start_suggestions, vocab)["checked"] == 2 and len(calls) == 2  # no second pass
    assert service.suggestion_progress(vocab) == {"names": ["mug", "plate"], "images": 12, "checked": 2,
                                                  "running": True, "error": ""}
    release.set()
    found = service.find_suggestions(vocab)  # joins the running pass instead of starting another
    assert found["to_review"] == {"mug": 2, "plate": 1}
    assert sorted(sum(calls, [])) == sorted(hashes)  # every image looked at once
    assert service.suggestion_progress(vocab)["running"] is False
    v = service.tag_view(1, "suggestion:mug", vocabulary=vocab)
    assert not v["running"] and v["pending"] == 0 and v["index"] == 5 and v["position"] == 2


def test_a_failing_suggestion_pass_says_why(tmp_path, small_image, monkeypatch):
    service = AppService(tmp_path / "data", predictor=Predictor.from_pretrained("tiny", device="cpu"))
    service.store.add_image(small_image, "a.png")

    def broken(*args, **kwargs):
        raise RuntimeError("out of memory")

    monkeypatch.setattr(service.predictor, "predict", broken)
    with pytest.raises(ValueError, match="out of memory"):
        service.find_suggestions("mug")
    assert service.tag_view(0, "suggestion:mug", vocabulary="mug")["suggestion_error"] == "out of memory"


def test_importing_and_building_the_ui_writes_nothing_into_the_source_tree(tmp_path):
    """Gradio writes a `.pyi` beside the module of every component subclass it creates (at import,
    so this test module's own import would already have written one); the app defines none."""
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[1]
    code = ("from app.service import AppService; from app.ui import build_app; from detector import Predictor; "
            f"build_app(AppService({str(tmp_path / 'data')!r}, predictor=Predictor.from_pretrained('tiny', device='cpu')))")
    r = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    stubs = sorted(str(p.relative_to(root)) for p in (root / "app").rglob("*.pyi"))
    assert not stubs, f"stubs in the source tree (one left by an older checkout can be deleted): {stubs}"


def test_a_duplicate_is_named_as_given_and_says_what_it_repeats(tmp_path, tiny_predictor, small_image):
    """The same picture as chelsea.png and cat.png: the report named chelsea.png (the stored one) as
    the skipped duplicate; it is cat.png, the same as chelsea.png. Zips are named the same way."""
    import zipfile

    service = AppService(tmp_path / "data", predictor=tiny_predictor)
    first, second = tmp_path / "chelsea.png", tmp_path / "cat.png"
    Image.fromarray(small_image).save(first)
    second.write_bytes(first.read_bytes())
    result = service.add_images([str(first), str(second)])
    assert len(result["new"]) == 1 and result["duplicates"] == ["cat.png (same as chelsea.png)"]
    with zipfile.ZipFile(tmp_path / "two.zip", "w") as z:
        z.write(first, "chelsea.png")
        z.write(second, "kitty.png")
    assert service.add_images([str(tmp_path / "two.zip")])["duplicates"] == ["chelsea.png",
                                                                           "kitty.png (same as chelsea.png)"]


def test_stored_tags_of_an_uploaded_image(tmp_path, tiny_predictor, small_image):
    """The Assign tab fills in the tags of an image already in the store (same bytes)."""
    service = AppService(tmp_path / "data", predictor=tiny_predictor)
    known, other = tmp_path / "known.png", tmp_path / "other.png"
    Image.fromarray(small_image).save(known)
    Image.fromarray(small_image[::-1].copy()).save(other)
    service.tag(service.store.add_image(known), "mug, plate")
    assert service.stored_tags(str(known)) == "mug, plate"
    assert service.stored_tags(str(other)) == "" and service.stored_tags(None) == ""


def test_the_tag_editor_catching_up_answers_every_output(tmp_path, tiny_predictor, small_image):
    """The Tag tab's catch-up (`tag_tab._wire_sync`) runs after every change of the store, mostly with
    nothing to catch up: that answer must still be a valid one (an empty dict failed Gradio's output
    check after every edit, marking nine components "Error")."""
    import asyncio

    from gradio.state_holder import SessionState

    service = AppService(tmp_path / "data", predictor=tiny_predictor)
    h = service.store.add_image(small_image)
    service.tag(h, "mug")
    demo = build_app(service)
    sync = next(f for f in demo.fns.values() if getattr(f.fn, "__name__", "") == "sync")
    shown = {"hash": h, "positives": ["mug"], "negatives": []}

    def run(positives, before):
        return asyncio.run(demo.process_api(sync, [h, positives, [], before, "", 0, "all", "", None],
                                            state=SessionState(demo)))["data"]

    # The catch-up runs after every change of the store: this page's edit undone on another page
    # between two watches leaves the same tags as before, and still counts as a change.
    watch = next(f for f in demo.fns.values() if getattr(f.fn, "__name__", "") == "watch")
    stored = next(i for i, o in enumerate(watch.outputs) if getattr(o, "elem_id", "") == "tag-stored")

    def watched(seen):
        return asyncio.run(demo.process_api(watch, [seen, 0, "all", "", h], state=SessionState(demo)))["data"]

    first = watched("")
    service.tag(h, "cup")
    service.untag(h, "cup")
    assert watched(first[0])[stored] != first[stored]
    assert len(run(["mug"], shown)) == len(sync.outputs)  # nothing to catch up
    assert len(run(["mug", "cup"], shown)) == len(sync.outputs)  # an edit of its own on its way
    service.rename_label("mug", "cup")  # another page
    chips = next(i for i, o in enumerate(sync.outputs) if getattr(o, "elem_id", "") == "tag-positives")
    assert run(["mug"], shown)[chips]["value"] == ["cup"]  # the chips catch up


def test_a_chip_change_the_page_made_itself_saves_and_sets_nothing(tmp_path, tiny_predictor, small_image):
    """Setting the chips (a catch-up, another image) fires their change, so the save runs with the
    chips as just set, its `before` sometimes a step behind. It had answered by setting the chips to
    the store as read then, which fired two more saves, each behind again while another page kept
    editing: under load the page fell minutes behind (a stress run of rename / merge / untag
    elsewhere timed out on its 5th round). And with `before` a step behind it re-saved a merged
    name, leaving an Undo that would bring the old name back; a chip of a label renamed elsewhere,
    moved before the page caught up, brought the old name back."""
    import asyncio

    from gradio.state_holder import SessionState

    service = AppService(tmp_path / "data", predictor=tiny_predictor)
    h = service.store.add_image(small_image)
    service.tag(h, "mug", "bowl")
    demo = build_app(service)
    save = next(f for f in demo.fns.values() if getattr(f.fn, "__name__", "") == "save")
    at = {getattr(o, "elem_id", None): i for i, o in enumerate(save.outputs)}
    last_edit = save.outputs[-1]  # the State Undo reads

    seen_tags = save.inputs[-1]  # the State of what the page shows now, as the events before left it

    def run(positives, negatives, before, seen=None):
        keys, state = service.tag_view(0)["keys"], SessionState(demo)
        if seen:
            state[seen_tags._id] = seen
        data = asyncio.run(demo.process_api(save, [h, positives, negatives, {"hash": h, **before}, keys, None],
                                            state=state))["data"]
        return data, state.get(last_edit._id, None)

    service.rename_label("mug", "cup")  # another page, before this page's catch-up
    unchanged, undo = run(["mug"], ["bowl"], {"positives": ["mug"], "negatives": ["bowl"]})
    assert all(v is None or (isinstance(v, dict) and set(v) <= {"__type__"}) for v in unchanged), unchanged  # none set
    assert undo is None
    service.merge_labels("bowl", "dish")
    behind, undo = run(["cup"], ["dish"], {"positives": ["cup"], "negatives": ["bowl"]})  # chips new, `before` old
    assert "bowl" not in service.store.labels() and service.store.tags(h) == {"positives": ["cup"], "negatives": ["dish"]}
    assert undo is None  # no edit was made, so none to undo
    assert behind[at["tag-positives"]].get("value") is None and behind[at["tag-negatives"]].get("value") is None
    # A real edit still saves, and a name another page already added is not added twice.
    service.tag(h, "spoon")
    _, undo = run(["cup", "spoon", "plate"], ["dish"], {"positives": ["cup"], "negatives": ["dish"]})
    assert sorted(service.store.tags(h)["positives"]) == ["cup", "plate", "spoon"]
    assert undo["touched"] == ["plate"], undo
    # A chip moved to the other side just after another page renamed its label: the old name came
    # back as a new label, and the line said "moved". Refused; the chips show the store.
    service.rename_label("spoon", "ladle")
    moved, undo = run(["cup", "plate"], ["dish", "spoon"], {"positives": ["cup", "spoon", "plate"], "negatives": ["dish"]})
    assert "spoon" not in service.store.labels() and undo is None
    assert sorted(service.store.tags(h)["positives"]) == ["cup", "ladle", "plate"]
    assert "'spoon' is no longer a label" in moved[at["tag-msg"]]
    assert sorted(moved[at["tag-positives"]]["value"]) == ["cup", "ladle", "plate"]
    # A name typed again on its own side showed twice until the next image: the chips are re-set.
    twice, _ = run(["cup", "ladle", "plate", "plate"], ["dish"],
                   {"positives": ["cup", "ladle", "plate"], "negatives": ["dish"]})
    assert sorted(twice[at["tag-positives"]]["value"]) == ["cup", "ladle", "plate"]
    # An answer applied after a move left the image before's chips and `shown` beside this image:
    # the next edit was dropped. Nothing is saved, and the editor is redrawn from the store.
    mixed, _ = run(["bird"], [], {"hash": "f" * 64, "positives": ["bird"], "negatives": []})
    assert "bird" not in service.store.labels()
    assert sorted(mixed[at["tag-positives"]]["value"]) == ["cup", "ladle", "plate"]
    # A change that runs after the page moved on to another image (by `seen_tags`): an edit in it is
    # saved, but the editor (status, chips) is not redrawn with the image left.
    later, undo = run(["cup", "ladle"], ["dish"], {"positives": ["cup", "ladle", "plate"], "negatives": ["dish"]},
                      seen={"hash": "f" * 64, "positives": [], "negatives": []})
    assert sorted(service.store.tags(h)["positives"]) == ["cup", "ladle"] and undo["touched"] == ["plate"]
    assert all(v is None or (isinstance(v, dict) and set(v) <= {"__type__"}) for i, v in enumerate(later)
               if i != at["tag-msg"]), later


def test_a_number_key_means_the_label_its_legend_shows(tmp_path, tiny_predictor, small_image):
    """The legend said "1 cup · 2 rocket"; another page deleted cup; 1 then removed rocket (the
    store's first label by then). A key acts on the label the page showed for it, or says why not."""
    import asyncio

    from gradio.state_holder import SessionState

    service = AppService(tmp_path / "data", predictor=tiny_predictor)
    other = service.store.add_image(small_image)
    service.tag(other, "cup")
    h = service.store.add_image(Image.new("RGB", (64, 48), "red"))
    service.tag(h, "rocket")
    demo = build_app(service)
    key_1 = next(f for f in demo.fns.values() if getattr(f.fn, "__name__", "") == "toggle")

    def press(legend, chips):  # chips: the tags the page showed last (kept on the server, a State)
        state = SessionState(demo)
        state[key_1.inputs[2]._id] = {"hash": h, "positives": chips, "negatives": []}
        out = asyncio.run(demo.process_api(key_1, [h, legend, None], state=state))["data"]
        msg = next(i for i, o in enumerate(key_1.outputs) if getattr(o, "elem_id", "") == "tag-msg")
        return out[msg]

    service.delete_label("cup")  # another page
    assert "no longer a label" in str(press(["cup", "rocket"], ["rocket"]))
    assert service.store.tags(h)["positives"] == ["rocket"]
    assert "removed rocket" in str(press(["rocket"], ["rocket"]))  # the legend caught up: 1 is rocket
    assert service.store.tags(h)["positives"] == []
    # A key adds or removes what the page shows: rocket, tagged on another page and not shown yet,
    # is added (it was removed, the opposite of the key's meaning); shown but untagged elsewhere: removed.
    service.tag(h, "rocket")
    assert "added rocket" in str(press(["rocket"], [])) and service.store.tags(h)["positives"] == ["rocket"]
    service.untag(h, "rocket")
    assert "removed rocket" in str(press(["rocket"], ["rocket"])) and service.store.tags(h)["positives"] == []


def test_each_run_keeps_the_model_it_started_from(tmp_path, tiny_predictor, small_image, monkeypatch):
    """Every run started from one shared folder, which the next start overwrote: a run resumed before
    its first checkpoint trained (and was judged) from another model. Each run now keeps its own."""
    import hashlib

    import torch

    service = AppService(tmp_path / "data", predictor=tiny_predictor)
    service.tag(service.store.add_image(small_image), "mug")
    monkeypatch.setattr(service.jobs, "start", lambda run, resume=False: run.id)  # no process: the folders only
    first = service.jobs.run(service.start_training(iters=5, label_size=32))
    start = Path(first.read_config().model)
    assert start.parent == first.path

    def digest(folder: Path) -> str:
        return hashlib.sha256((folder / "model.safetensors").read_bytes()).hexdigest()

    before = digest(start)
    with torch.no_grad():  # another model served (a hot swap) before the next start
        next(service.predictor.model.parameters()).add_(1.0)
    second = service.jobs.run(service.start_training(iters=5, label_size=32))
    assert digest(start) == before and digest(Path(second.read_config().model)) != before


def test_exports_do_not_pile_up_in_the_temporary_folder(tmp_path, tiny_predictor, small_image, monkeypatch):
    """Every export (and one killed half-way) stayed in the temporary folder for good."""
    import app.service_dataset as dataset

    monkeypatch.setattr(dataset, "EXPORTS", tmp_path / "exports")
    service = AppService(tmp_path / "data", predictor=tiny_predictor)
    service.tag(service.store.add_image(small_image), "mug")
    first = service.export("detic", with_images=True)
    assert first.parent.parent == tmp_path / "exports" and len(list(first.parent.iterdir())) == 1  # no work folder
    left = tmp_path / "exports" / "killed-export"
    left.mkdir()
    hours_ago = time.time() - 2 * dataset.KEEP_EXPORTS_S
    for folder in (first.parent, left):
        os.utime(folder, (hours_ago, hours_ago))
    second = service.export("csv")
    assert second.exists() and not first.exists() and not left.exists()
    assert service.export("yolo").exists() and second.exists()  # a recent one stays
    # The two tag formats zipped with their images have names of their own (both were "…_image_labels.zip").
    zips = {service.export(fmt, with_images=True).name for fmt in ("detic", "csv")}
    assert len(zips) == 2 and all(z.endswith(".zip") for z in zips), zips


def test_an_image_preview_is_written_once_and_then_only_read(tmp_path, monkeypatch):
    """Returned as an array, a preview was rewritten into Gradio's cache on every event showing it,
    while another page could be downloading it ("Too much data for declared Content-Length")."""
    import app.ui.common as common

    monkeypatch.setattr(common, "PREVIEWS", tmp_path / "previews")
    made = []

    def image_preview(image_hash, max_side=1024):
        made.append(image_hash)
        return np.full((20, 30, 3), 200, np.uint8)

    ep = {"image_preview": image_preview}
    h = "ab" * 32
    first = common.preview_file(ep, h)
    inode = os.stat(first).st_ino
    assert common.preview_file(ep, h) == first and os.stat(first).st_ino == inode and made == [h]
    assert Image.open(first).size == (30, 20)
    with pytest.raises(ValueError):
        common.preview_file(ep, "../../etc/passwd")


def test_a_tag_picked_on_the_other_side_moves_and_says_so(tmp_path, tiny_predictor, small_image):
    """Picking "cup" under Not present while it was Present took it off Present without a word."""
    import asyncio

    from gradio.state_holder import SessionState

    service = AppService(tmp_path / "data", predictor=tiny_predictor)
    h = service.store.add_image(small_image)
    service.tag(h, "cup")
    demo = build_app(service)
    save = next(f for f in demo.fns.values() if getattr(f.fn, "__name__", "") == "save"
                and [getattr(i, "elem_id", "") for i in f.inputs][1:3] == ["tag-positives", "tag-negatives"])
    msg = next(i for i, o in enumerate(save.outputs) if getattr(o, "elem_id", "") == "tag-msg")
    shown = {"hash": h, "positives": ["cup"], "negatives": []}
    out = asyncio.run(demo.process_api(save, [h, ["cup"], ["cup"], shown, ["cup"], None], state=SessionState(demo)))["data"]
    assert "moved cup to Not present" in out[msg]
    assert service.store.tags(h) == {"positives": [], "negatives": ["cup"]}


def test_a_label_filter_matches_in_any_case_as_labels_do(tmp_path, tiny_predictor, small_image):
    """Labels compare case-insensitively ("Kitty" is "kitty"); the Show filter, which takes typed
    values, matched only the exact spelling ("label:KITTY": none)."""
    service = AppService(tmp_path / "data", predictor=tiny_predictor)
    h = service.store.add_image(small_image)
    service.tag(h, "Kitty")
    assert [service.tag_view(0, show)["matches"] for show in ("label:Kitty", "label:KITTY", "label:kitty")] == [1, 1, 1]
    assert service.tag_view(0, "label:cat")["matches"] == 0

"""The app on a public address, attacked as a hostile but fair visitor would: over the real HTTP API
(gradio_client and raw HTTP, loopback only) and, for script injection, in headless Chromium.
Each test reproduces one finding of the security review (issue 9) and shows it fixed."""

import concurrent.futures
import html
import io
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from app.policy import AccessPolicy
from app.service import AppService
from app.ui import build_app, launch_options
from detector import Predictor

ROOT = Path(__file__).resolve().parents[1]
XSS = '<img src=x onerror="window.__xss=1">'


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _png(path: Path, seed: int = 0, size=(48, 64)) -> Path:
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 255, (*size, 3), dtype=np.uint8)).save(path)
    return path


@pytest.fixture(scope="module")
def public(tmp_path_factory, monkeypatch_module):
    """The app as served publicly: no allowed folders, the operator's HF_TOKEN in the environment."""
    from gradio_client import Client

    monkeypatch_module.setenv("HF_TOKEN", "hf_operator_secret")
    data = tmp_path_factory.mktemp("public-data")
    service = AppService(data, predictor=Predictor.from_pretrained("tiny", device="cpu"), policy=AccessPolicy())
    demo = build_app(service)
    port = _free_port()
    demo.launch(prevent_thread_lock=True, server_name="127.0.0.1", server_port=port, quiet=True, **launch_options())
    try:
        yield service, Client(f"http://127.0.0.1:{port}/", verbose=False), f"http://127.0.0.1:{port}", \
            tmp_path_factory.mktemp("visitor")
    finally:
        demo.close()


@pytest.fixture(scope="module")
def monkeypatch_module():
    mp = pytest.MonkeyPatch()
    yield mp
    mp.undo()


def _error(fn, *args, **kwargs) -> str:
    with pytest.raises(Exception) as e:
        fn(*args, **kwargs)
    return str(e.value)


# 1. Reading the server's files ------------------------------------------------------------------------
def test_no_server_file_is_reachable(public):
    from gradio_client import handle_file

    service, client, base, visitor = public
    secret = visitor.parent / "secret-folder"
    secret.mkdir(exist_ok=True)
    _png(secret / "secret.png", 1)
    assert "not in a folder this server allows" in _error(client.predict, str(secret), api_name="/add_folder")
    # A label file naming absolute and ../ paths imports nothing from outside the uploads and the store.
    labels = visitor / "labels.csv"
    labels.write_text(f"image,labels\n{secret / 'secret.png'},stolen\n../../secret-folder/secret.png,stolen\n")
    report = client.predict([handle_file(str(labels))], api_name="/import_labels")[0]
    assert "imported tags for 0 image(s)" in report and "2 not found" in report
    assert service.store.progress() == (0, 0)
    # Exports are fresh temporary files, never inside the data folder; the data folder is not served.
    exported = client.predict("detic", api_name="/export_labels")
    assert str(service.data_dir) not in exported
    for target in (service.data_dir / "labels.db", service.store.image_dir):
        try:
            with urllib.request.urlopen(f"{base}/gradio_api/file={target.resolve()}", timeout=10) as r:
                status = r.status
        except urllib.error.HTTPError as e:
            status = e.code
        assert status in (403, 404), target
    # Model and training paths on the server are refused the same way.
    assert "not in a folder this server allows" in _error(client.predict, str(secret), api_name="/use_model")
    # A bare word is no folder: it is named as an unknown model, with what would be one.
    unknown = _error(client.predict, "asdf", api_name="/use_model")
    assert "unknown model 'asdf': type a preset (" in unknown and "offline" in unknown
    assert "not in a folder this server allows" in _error(client.predict, 5, "max_size", "1:1", "",
                                                          str(secret / "coco.json"), str(secret),
                                                          api_name="/start_training")


def test_allowed_folders_import_and_nothing_else(tmp_path, tiny_predictor):
    allowed = tmp_path / "photos"
    allowed.mkdir()
    for i in range(3):
        _png(allowed / f"p{i}.png", i)
    service = AppService(tmp_path / "data", predictor=tiny_predictor, policy=AccessPolicy(allowed_dirs=(allowed,)))
    result = service.add_folder(str(allowed))  # finding 6: used to import nothing
    assert len(result["added"]) == 3 and not result["skipped"]
    with pytest.raises(ValueError, match="not in a folder"):
        service.add_folder(str(allowed / ".." / "data"))
    with pytest.raises(ValueError, match="not in a folder"):
        service.add_folder("/root")


# 3. The operator's Hub token ----------------------------------------------------------------------------
def test_push_never_uses_the_operators_token(public):
    _, client, _, _ = public
    msg = _error(client.predict, "someone/model", "", True, api_name="/push_to_hub")
    assert "type your own Hugging Face token" in msg
    # With a visitor's token, offline: one readable line, not a bare "Error".
    msg = _error(client.predict, "someone/model", "hf_visitor", True, api_name="/push_to_hub")
    assert "could not push to 'someone/model'" in msg and "Traceback" not in msg


# 4. Lost tags ---------------------------------------------------------------------------------------------
def test_two_clients_adding_tags_to_one_image_lose_nothing(public):
    from gradio_client import Client, handle_file

    service, client, base, visitor = public
    h = client.predict([handle_file(str(_png(visitor / "shared.png", 7)))], api_name="/add_images")
    h = client.predict(api_name="/images")[-1]["hash"]
    clients = [Client(base + "/", verbose=False) for _ in range(2)]
    acknowledged = []

    def add(k):
        for i in range(25):
            clients[k].predict(h, f"tag {k}-{i}", "", api_name="/tag")
            acknowledged.append(f"tag {k}-{i}")

    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        list(pool.map(add, range(2)))
    kept = set(service.store.tags(h)["positives"])
    assert len(acknowledged) == 50 and set(acknowledged) <= kept
    client.predict(h, "tag 0-0, tag 1-0", api_name="/untag")
    assert len(service.store.tags(h)["positives"]) == 48


# 5. Import from the UI finds the images -------------------------------------------------------------------
def test_exports_reimport_through_uploads(public, tmp_path):
    from gradio_client import handle_file

    service, client, _, visitor = public
    before = service.store.progress()[0]
    a, b = _png(tmp_path / "a.png", 11), _png(tmp_path / "b.png", 12)
    client.predict([handle_file(str(a)), handle_file(str(b))], api_name="/add_images")
    rows = client.predict(api_name="/images")
    ha = next(r["hash"] for r in rows if r["original_name"] == "a.png")
    client.predict(ha, "apple; red, fruit", "", api_name="/tag")
    csv_export = Path(client.predict("csv", api_name="/export_labels"))
    detic = json.loads(Path(client.predict("detic", api_name="/export_labels")).read_text())
    client.predict(ha, "apple; red, fruit", api_name="/untag")
    report = client.predict([handle_file(str(csv_export))], api_name="/import_labels")[0]
    assert f"imported tags for {before + 1} image(s)" in report
    assert set(service.store.tags(ha)["positives"]) == {"apple; red", "fruit"}
    # A CSV naming uploaded images by their own names, images uploaded beside it.
    (tmp_path / "mine.csv").write_text("image,labels\nb.png,pear\nnot-there.png,ghost\n")
    c = _png(tmp_path / "c.png", 13)
    (tmp_path / "more.csv").write_text("image,labels\nc.png,plum\n")
    report = client.predict([handle_file(str(tmp_path / "mine.csv")), handle_file(str(b))], api_name="/import_labels")[0]
    assert "imported tags for 1 image(s)" in report and "1 not found: not-there.png" in report
    client.predict([handle_file(str(tmp_path / "more.csv")), handle_file(str(c))], api_name="/import_labels")
    assert "plum" in service.store.labels() and "ghost" not in service.store.labels()
    assert len(detic["images"]) == before + 1  # every tagged image, the one tagged here included


# 7. Thin images, 8. memory ----------------------------------------------------------------------------------
@pytest.mark.parametrize("shape", [(8, 4000), (4000, 8), (3, 4000)])
def test_thin_images_detect_with_boxes_inside_them(public, tmp_path, shape):
    from gradio_client import handle_file

    _, client, _, _ = public
    path = _png(tmp_path / "thin.png", 3, size=shape)
    _, _, json_path = client.predict(handle_file(str(path)), "stripe", 0.0, 0.5, 10, api_name="/detect")
    boxes = np.array([r["box"] for r in json.loads(Path(json_path).read_text())]).reshape(-1, 4)
    h, w = shape
    assert (boxes[:, 2] <= w + 0.01).all() and (boxes[:, 3] <= h + 0.01).all()  # no crash, nothing outside


@pytest.mark.slow
def test_absurd_images_are_refused_and_decode_memory_is_bounded(tmp_path):
    """A 15000 x 15000 PNG (a few hundred KB) is refused before decoding; a 40-megapixel one is
    decoded, downscaled and detected within a bounded peak (measured in a fresh process)."""
    Image.new("RGB", (15000, 15000), (10, 20, 30)).save(tmp_path / "huge.png")
    Image.new("RGB", (8000, 5000), (10, 20, 30)).save(tmp_path / "big.png")
    code = """
import resource, sys
from detector import Predictor, ImageLoadError
p = Predictor.from_pretrained('tiny', device='cpu')
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
try:
    p.predict(sys.argv[1], 'x'); print('decoded')
except ImageLoadError as e:
    print('refused:', e)
p.predict(sys.argv[2], 'x')
print('peak_mb', (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) / 1024)
"""
    r = subprocess.run([sys.executable, "-c", code, str(tmp_path / "huge.png"), str(tmp_path / "big.png")],
                       capture_output=True, text=True, cwd=ROOT, timeout=600, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert r.returncode == 0, r.stderr[-2000:]
    assert "refused: 'huge.png' is too large to decode" in r.stdout
    peak = float(r.stdout.split("peak_mb")[1])
    assert peak < 1500, f"40 MP detect raised the peak by {peak:.0f} MB"


# 9. Bad label files -------------------------------------------------------------------------------------
BAD_LABEL_FILES = {
    "empty.json": "", "list.json": "[]", "nocats.json": '{"images": []}',
    "nullname.json": '{"images": [], "categories": [{"id": 1, "name": null}]}',
    "strid.json": '{"images": [], "categories": [{"id": "a", "name": "x"}]}',
    "badids.json": '{"images": [{"file_name": "a.png", "pos_category_ids": [9]}], "categories": [{"id": 1, "name": "x"}]}',
    "nofile.json": '{"images": [{"pos_category_ids": [1]}], "categories": [{"id": 1, "name": "x"}]}',
    "idsnotlist.json": '{"images": [{"file_name": "a", "pos_category_ids": 1}], "categories": [{"id": 1, "name": "x"}]}',
    "long.json": json.dumps({"images": [{"file_name": "a.png", "pos_category_ids": [1]}],
                             "categories": [{"id": 1, "name": "x" * 300}]}),
    "noheader.csv": "a.png,cat\n", "quote.csv": 'image,labels\na.png,"cat\n', "extra.csv": "image,labels\na.png,cat,extra\n",
    "long.csv": "image,labels\na.png," + "y" * 300 + "\n", "bad.jsonl": '{"image": "a.png", "labels": ["x"]}\nnot json\n',
    "nolabels.jsonl": '{"image": "a.png"}\n', "numbers.jsonl": '{"image": "a.png", "labels": [1, 2]}\n',
    "latin1.csv": "image,labels\na.png,caf\xe9\n",
}


@pytest.mark.parametrize("name", sorted(BAD_LABEL_FILES))
def test_every_malformed_label_file_gets_one_clear_sentence_and_imports_nothing(tmp_path, tiny_predictor, name):
    service = AppService(tmp_path / "data", predictor=tiny_predictor, policy=AccessPolicy())
    h = service.store.add_image(_png(tmp_path / "a.png", 5))
    service.tag(h, "keep")
    path = tmp_path / name
    text = BAD_LABEL_FILES[name]
    path.write_bytes(text.encode("latin-1") if name == "latin1.csv" else text.encode("utf-8"))
    with pytest.raises(ValueError) as e:
        service.import_labels([str(path)])
    message = str(e.value)
    assert name in message and "\n" not in message.strip() and str(tmp_path) not in message, message
    assert service.store.labels() == ["keep"]


def test_invisible_characters_never_make_a_label(tmp_path, tiny_predictor):
    service = AppService(tmp_path / "data", predictor=tiny_predictor, policy=AccessPolicy())
    h = service.store.add_image(_png(tmp_path / "a.png", 6))
    tags = service.tag(h, "c\u200bat, do\x00g, \u200d")
    assert tags["positives"] == ["cat", "dog"]


# 10. CLI, error texts, concurrency, resume --------------------------------------------------------------
def test_cli_keeps_the_good_images_of_a_batch(tmp_path):
    good = _png(tmp_path / "good.png", 8)
    (tmp_path / "bad.png").write_bytes(b"not an image")
    r = subprocess.run([sys.executable, "-m", "detector", "predict", str(good), str(tmp_path / "bad.png"), "-v", "cat",
                        "-m", "tiny", "--out", str(tmp_path / "o.json")], capture_output=True, text=True, cwd=ROOT,
                       timeout=300)
    assert r.returncode == 2 and "'bad.png' is not a readable image" in r.stderr and "Traceback" not in r.stderr
    assert [d["image"] for d in json.loads((tmp_path / "o.json").read_text())] == [str(good)]
    r = subprocess.run([sys.executable, "-m", "detector", "predict", str(good), "-v", "cat", "-m", "tiny",
                        "--out", str(tmp_path / "missing" / "o.json")], capture_output=True, text=True, cwd=ROOT,
                       timeout=300)
    assert r.returncode == 2 and "does not exist" in r.stderr and "Traceback" not in r.stderr


def test_error_texts_show_no_temp_paths_or_object_reprs(public, tmp_path):
    from gradio_client import handle_file

    _, client, _, _ = public
    bad = tmp_path / "corrupt.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    msg = _error(client.predict, handle_file(str(bad)), "cat", 0.3, 0.5, 10, api_name="/detect")
    assert "corrupt.png" in msg and "/tmp" not in msg and "gradio" not in msg.lower() and " at 0x" not in msg
    from detector import ImageLoadError, load_image

    with pytest.raises(ImageLoadError) as e:
        load_image(io.BytesIO(b"nope"))
    assert " at 0x" not in str(e.value) and "uploaded image" in str(e.value)


@pytest.mark.slow
def test_twenty_concurrent_clients_all_succeed(public, tmp_path):
    """20 clients x 5 identical detects on loopback: 0 errors, bounded in time: all 100 take at most
    twice as long as the same 100 one after another from one client would (plus 30 s to connect)."""
    from gradio_client import Client, handle_file

    _, client, base, _ = public
    path = str(_png(tmp_path / "load.png", 9))
    client.predict(handle_file(path), "cat", 0.3, 0.5, 10, api_name="/detect")  # warm
    t0 = time.time()
    for _ in range(5):
        client.predict(handle_file(path), "cat", 0.3, 0.5, 10, api_name="/detect")
    one_by_one = (time.time() - t0) / 5
    errors, done = [], []
    t0 = time.time()

    def client_loop(_):
        c = Client(base + "/", verbose=False)
        for _ in range(5):
            try:
                image, _, _ = c.predict(handle_file(path), "cat", 0.3, 0.5, 10, api_name="/detect")
                assert Image.open(image).size == (64, 48)
                done.append(1)
            except Exception as e:  # noqa: BLE001 - counted, then asserted
                errors.append(repr(e)[:200])

    with concurrent.futures.ThreadPoolExecutor(20) as pool:
        list(pool.map(client_loop, range(20)))
    took = time.time() - t0
    assert not errors and len(done) == 100
    assert took < 2 * 100 * one_by_one + 30, f"100 concurrent detects took {took:.1f} s, one alone {one_by_one:.2f} s"


@pytest.mark.slow
def test_a_cancelled_run_resumes_from_the_app_with_one_metric_line_per_iteration(tmp_path, tiny_predictor):
    service = AppService(tmp_path / "data", predictor=tiny_predictor, policy=AccessPolicy())
    for i in range(4):
        service.tag(service.store.add_image(_png(tmp_path / f"r{i}.png", 20 + i)), "thing")
    run_id = service.start_training(iters=400, label_size=32)
    run = service.jobs.run(run_id)
    t = time.time()
    while not run.latest_checkpoint() and time.time() - t < 300:
        time.sleep(0.3)
    service.cancel_training(run_id)
    assert service.jobs.wait(run_id, 300)["state"] == "cancelled"
    stopped_at = run.status()["iteration"]
    with open(run.read_config().label_data) as f:  # the run's own snapshot, still there
        assert json.load(f)["images"]
    cfg = run.read_config().replace(iters=stopped_at + 6)
    run.write_config(cfg)
    assert service.resume_training(run_id) == run_id
    final = service.jobs.wait(run_id, 300)
    assert final["state"] == "finished" and final["iteration"] == stopped_at + 6, run.log_tail()
    iterations = [m["iteration"] for m in run.metrics()]
    assert iterations == sorted(set(iterations))  # no duplicate lines after the resume


# 2. Script injection, in a real browser ------------------------------------------------------------------
@pytest.mark.slow
def test_user_and_error_text_is_inert_in_a_real_browser(tmp_path, tiny_predictor):
    """The payload is waited for, as text, at every place text reaches the page (a class name in the
    detect table, a file name and a label in the Tag tab, a label in the Dataset table, a failed run's
    message in the Train tab, a Load error on the Model tab's line, a Detect error's toast); only then is
    it checked that no script ran."""
    from playwright.sync_api import expect, sync_playwright

    from train.run_config import RunConfig
    from train.run_dir import RunDir

    service = AppService(tmp_path / "data", predictor=tiny_predictor, policy=AccessPolicy())  # served publicly
    h = service.store.add_image(_png(tmp_path / "x.png", 10).read_bytes(), original_name=XSS + ".png")
    service.tag(h, XSS)
    run = RunDir.create(service.jobs.runs_dir)
    run.write_config(RunConfig(model="tiny"))
    run.write_status("failed", message=XSS, iteration=1, total=2)
    demo = build_app(service)
    port = _free_port()
    demo.launch(prevent_thread_lock=True, server_name="127.0.0.1", server_port=port, quiet=True, **launch_options())
    chromium = shutil.which("chromium") or "/usr/bin/chromium"
    flags = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
             "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage"]
    shown_at = []

    def shown_as_text(where: str, locator, text: str = XSS) -> None:  # the literal characters: never parsed as HTML
        expect(locator).to_contain_text(text, timeout=60_000)
        shown_at.append(where)

    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=chromium, args=flags)
            page = browser.new_page()
            page.goto(f"http://127.0.0.1:{port}/", wait_until="load")
            page.locator("#vocabulary textarea").fill(XSS)  # a class name: drawn into the image, listed in the table
            page.locator("#detect-image input[type=file]").set_input_files(str(tmp_path / "x.png"))
            expect(page.locator("#detect-image img")).to_be_visible(timeout=30_000)
            page.locator("#detect-score input[type=number]").fill("0")  # boxes, whatever the tiny model scores
            page.locator("#detect-button").click()
            shown_as_text("detect table", page.locator("#detect-table tbody"))
            page.get_by_role("tab", name="Tag").click()
            shown_as_text("tag status (file name)", page.locator("#tag-status"))
            shown_as_text("tag editor (label)", page.locator("#tag-positives"))
            page.get_by_role("tab", name="Dataset").click()
            shown_as_text("dataset table", page.locator("#dataset-table"))
            page.get_by_role("tab", name="Train").click()
            shown_as_text("failed run's message", page.locator("#train-status"))
            page.get_by_role("tab", name="Model").click()
            page.get_by_label("Load a model").fill(XSS)
            page.get_by_role("button", name="Load").click()
            shown_as_text("load error (the Model tab's line)", page.locator("#model-msg"))
            page.get_by_role("tab", name="Detect").click()
            page.locator("#vocabulary textarea").fill(XSS + "y" * 200)  # too long a name: an error toast
            page.locator("#detect-button").click()
            # Gradio 6 renders a toast's text as HTML; `friendly` escapes it once: the visitor reads
            # the payload as typed, inert (it was escaped twice and quoted: "'&lt;img …'").
            shown_as_text("detect error (toast)", page.get_by_test_id("toast-body").last)
            parsed = page.locator('img[src="x"]').count()  # the payload parsed as HTML anywhere on the page
            xss = page.evaluate("window.__xss")
            browser.close()
    finally:
        demo.close()
    assert len(shown_at) == 7 and parsed == 0
    assert xss is None, "a script ran"


def test_an_error_is_escaped_once_and_not_quoted():
    """A handler's endpoint is `friendly` and so is the handler: the inner gr.Error passes through
    the outer one unchanged (wrapping it again escaped it twice and quoted it: str() of a gr.Error
    is its repr)."""
    import gradio as gr

    from app.endpoints import friendly
    from app.ui.common import handler

    def refuse(name):
        raise ValueError(f"no name {name}")

    for fn in (friendly(refuse), handler(friendly(refuse)), friendly(friendly(refuse))):
        with pytest.raises(gr.Error) as caught:
            fn("<b>&x</b>")
        assert caught.value.message == "no name &lt;b&gt;&amp;x&lt;/b&gt;"


def test_a_message_line_escapes_user_text_exactly_once():
    """`friendly` escapes an error for toasts; the tab's message line must not escape it again
    (a label '<b>&' would read '&lt;b&gt;&amp;')."""
    from app.store import StoreError
    from app.ui.common import error_text, handler

    def refuse(name):
        raise StoreError(f"no label {name!r}")

    from markdown_it import MarkdownIt

    shown = handler(refuse, error=lambda text, *values: error_text(text))("<b>&")
    assert MarkdownIt("commonmark").renderInline(shown) == "⚠️ " + html.escape("no label '<b>&'", quote=False)

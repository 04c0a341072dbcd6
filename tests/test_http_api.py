"""Issue #25: operations and limits checked over the real HTTP API on loopback (gradio_client
against `demo.launch(prevent_thread_lock=True)`): batch detection, the tag queue's helpers, the
upload size limit and the zip archive limits. (The login over HTTP: test_security_round2.)"""

import io
import json
import socket
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from app.policy import AccessPolicy
from app.service import MAX_ZIP_MEMBER_BYTES, MAX_ZIP_MEMBERS, AppService
from app.ui import build_app, launch_options


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def serve():
    """serve(service, **launch overrides) -> gradio_client for the app, on a free loopback port."""
    from gradio_client import Client

    demos = []

    def start(service, **overrides):
        demo = build_app(service)
        port = _free_port()
        demo.launch(prevent_thread_lock=True, **{**launch_options(), "server_name": "127.0.0.1", "server_port": port,
                                                 "quiet": True, **overrides})
        demos.append(demo)
        return Client(f"http://127.0.0.1:{port}/", verbose=False)

    yield start
    for demo in demos:
        demo.close()


def _png(path: Path, seed: int, size=(40, 56)) -> Path:
    Image.fromarray(np.random.default_rng(seed).integers(0, 255, (*size, 3), dtype=np.uint8)).save(path)
    return path


def _message(outputs) -> str:
    """The Tag tab's message line among an upload's outputs."""
    texts = [o for o in outputs if isinstance(o, str) and ("added" in o or "skipped" in o)]
    assert texts, outputs
    return texts[0]


def test_the_readme_lists_every_named_endpoint_once(tmp_path, tiny_predictor, serve):
    """README's endpoint list had lacked seven endpoints, and /name_readings was served twice
    (the Detect tab's event took the name, the service's endpoint became /name_readings_1)."""
    import re

    client = serve(AppService(tmp_path / "data", predictor=tiny_predictor))
    served = {name.lstrip("/") for name in client.view_api(print_info=False, return_format="dict")["named_endpoints"]}
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    listed = readme[readme.index("Endpoints: `/detect`"):readme.index("## Python API")]
    documented = set(re.findall(r"`/(\w+)`", listed))
    assert served == documented, (served - documented, documented - served)


def test_batch_detection_and_the_queue_helpers_answer_over_http(tmp_path, tiny_predictor, small_image, serve):
    from gradio_client import handle_file

    service = AppService(tmp_path / "data", predictor=tiny_predictor, policy=AccessPolicy())
    a, b, c = (tmp_path / f"{n}.png" for n in "abc")
    for i, p in enumerate((a, b, c)):
        Image.fromarray(np.roll(small_image, 31 * i, axis=1)).save(p)
    hashes = [service.store.add_image(p) for p in (a, b, c)]
    service.tag(hashes[0], "mug")
    service.tag(hashes[2], "mug, plate")
    client = serve(service)

    # /detect_batch: one drawing and one entry per image, the same detections as the service gives.
    gallery, detections = client.predict([handle_file(str(a)), handle_file(str(b))], "person, mug", 0.0, 0.5, 5,
                                         api_name="/detect_batch")
    results = json.loads(Path(detections).read_text())
    direct = service.detect_batch([str(a), str(b)], "person, mug", 0.0, 0.5, 5)
    assert [r["image"] for r in results] == ["a.png", "b.png"]
    assert [len(r["detections"]) for r in results] == [len(r["detections"]) for r in direct]
    assert all(len(r["detections"]) == 5 for r in results)  # threshold 0: the cap decides
    assert [item["caption"] for item in gallery] == ["a.png: 5 box(es)", "b.png: 5 box(es)"]
    assert all(Path(item["image"]).is_file() for item in gallery)  # downloaded by the client

    # /first_untagged: b (index 1) is the only untagged image; once tagged, 0 (all tagged).
    assert client.predict(api_name="/first_untagged") == 1
    service.tag(hashes[1], "plate", "mug")  # "mug" known not present: not listed under mug
    assert client.predict(api_name="/first_untagged") == 0

    # /images_with_label: the images tagged present with the label, oldest first.
    assert client.predict("mug", api_name="/images_with_label") == [
        {"hash": hashes[0], "name": "a.png"}, {"hash": hashes[2], "name": "c.png"}]
    assert client.predict("plate", api_name="/images_with_label") == [
        {"hash": hashes[1], "name": "b.png"}, {"hash": hashes[2], "name": "c.png"}]
    assert client.predict("nothing", api_name="/images_with_label") == []


def test_an_upload_over_the_size_limit_is_refused(tmp_path, tiny_predictor, serve):
    """APP_MAX_FILE_SIZE as app.py passes it to Gradio: a file over it is refused before the app
    sees it; one under it goes through."""
    from gradio_client import handle_file

    from app.launch import build_parser, launch_kwargs

    env = {"APP_MAX_FILE_SIZE": "100kb"}
    limit = launch_kwargs(build_parser(env).parse_args([]), tmp_path, env)["max_file_size"]
    assert limit == "100kb"
    service = AppService(tmp_path / "data", predictor=tiny_predictor, policy=AccessPolicy())
    client = serve(service, max_file_size=limit)

    big = _png(tmp_path / "big.png", 1, size=(256, 256))  # noise: ~190 kB
    small = _png(tmp_path / "small.png", 2)
    assert big.stat().st_size > 100_000 > small.stat().st_size
    with pytest.raises(Exception) as refused:
        client.predict([handle_file(str(big))], api_name="/add_images")
    assert "size" in str(refused.value).lower() or "413" in str(refused.value), str(refused.value)
    assert service.store.progress() == (0, 0)
    assert "added 1 new image" in _message(client.predict([handle_file(str(small))], api_name="/add_images"))
    assert service.store.progress() == (0, 1)


def _tiny_png() -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.full((8, 8, 3), 120, dtype=np.uint8)).save(buf, "PNG")
    return buf.getvalue()


def test_zip_uploads_over_the_member_limits_are_refused(tmp_path, tiny_predictor, serve):
    """An archive with more than MAX_ZIP_MEMBERS images adds none; a member over
    MAX_ZIP_MEMBER_BYTES (uncompressed) is skipped with the reason, the others are added. Both
    archives are small on disk (empty members; zeros that deflate to ~50 kB)."""
    from gradio_client import handle_file

    service = AppService(tmp_path / "data", predictor=tiny_predictor, policy=AccessPolicy())
    client = serve(service)

    many = tmp_path / "many.zip"
    with zipfile.ZipFile(many, "w") as z:
        z.writestr("real.png", _tiny_png())
        for i in range(MAX_ZIP_MEMBERS):
            z.writestr(f"img_{i:05d}.png", b"")
    message = _message(client.predict([handle_file(str(many))], api_name="/add_images"))
    assert f"more than {MAX_ZIP_MEMBERS} images" in message, message
    assert service.store.progress() == (0, 0)

    large = tmp_path / "large.zip"
    with zipfile.ZipFile(large, "w", compression=zipfile.ZIP_DEFLATED) as z:
        z.writestr("fine.png", _tiny_png())
        with z.open("huge.png", "w", force_zip64=True) as member:
            chunk = bytes(2**20)
            for _ in range(MAX_ZIP_MEMBER_BYTES // len(chunk)):
                member.write(chunk)
            member.write(b"\0")  # one byte over
    assert large.stat().st_size < 1_000_000
    message = _message(client.predict([handle_file(str(large))], api_name="/add_images"))
    assert "huge.png: larger than 50 MB" in message and "added 1 new image" in message, message
    assert service.store.progress() == (0, 1)
    assert service.images()[0]["original_name"] == "fine.png"

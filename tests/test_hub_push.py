"""A Hub push that succeeds, end to end over HTTP: the app's Push, the real huggingface_hub client,
and a fake Hub on 127.0.0.1 that speaks just enough of the Hub's API (create repo, validate the
card, pre-upload, commit) and keeps what it was sent."""

import base64
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import torch


class FakeHub(BaseHTTPRequestHandler):
    received: dict[str, bytes] = {}
    authorization: list[str | None] = []
    private: list[bool] = []

    def log_message(self, *args):  # quiet
        pass

    def _send(self, code: int, obj) -> None:
        body = json.dumps(obj).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _body(self) -> bytes:
        if "chunked" in (self.headers.get("Transfer-Encoding") or ""):
            data = b""
            while (size := int(self.rfile.readline().strip(), 16)) != 0:
                data += self.rfile.read(size)
                self.rfile.readline()
            self.rfile.readline()
            return data
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def do_POST(self):  # noqa: N802 - http.server's name
        data = self._body()
        self.authorization.append(self.headers.get("Authorization"))
        host = self.headers["Host"]
        if self.path == "/api/repos/create":
            body = json.loads(data)
            self.private.append(bool(body.get("private")) or body.get("visibility") == "private")
            return self._send(200, {"url": f"http://{host}/{body.get('organization')}/{body['name']}"})
        if self.path == "/api/validate-yaml":
            return self._send(200, {"errors": [], "warnings": []})
        if "/preupload/" in self.path:
            files = json.loads(data)["files"]
            return self._send(200, {"files": [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False}
                                              for f in files]})
        if "/commit/" in self.path:
            for line in data.decode().splitlines():
                item = json.loads(line)
                if item["key"] == "file":
                    self.received[item["value"]["path"]] = base64.b64decode(item["value"]["content"])
            return self._send(200, {"commitUrl": f"http://{host}/you/detector/commit/{'a' * 40}",
                                    "commitOid": "a" * 40, "success": True})
        return self._send(404, {"error": "not on this fake Hub"})

    def do_GET(self):  # noqa: N802
        self._send(404, {"error": "not on this fake Hub"})


@pytest.fixture
def fake_hub(monkeypatch):
    FakeHub.received, FakeHub.authorization, FakeHub.private = {}, [], []
    server = ThreadingHTTPServer(("127.0.0.1", 0), FakeHub)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{server.server_address[1]}")
    monkeypatch.setattr("huggingface_hub.constants.ENDPOINT", f"http://127.0.0.1:{server.server_address[1]}")
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", False)
    monkeypatch.setenv("HF_TOKEN", "hf_operator_secret")
    yield FakeHub
    server.shutdown()


def test_the_apps_push_uploads_a_model_that_loads_back(fake_hub, tmp_path, tiny_predictor):
    from safetensors.torch import load

    from app.service import AppService

    service = AppService(tmp_path / "data", predictor=tiny_predictor)
    url = service.push_to_hub("you/detector", token="hf_visitor_typed", private=True)
    assert url.endswith("/you/detector/commit/" + "a" * 40)
    assert sorted(fake_hub.received) == ["README.md", "config.json", "model.safetensors"]
    assert fake_hub.private == [True]
    # the visitor's typed token, never the operator's HF_TOKEN
    assert set(fake_hub.authorization) == {"Bearer hf_visitor_typed"}
    sent = load(fake_hub.received["model.safetensors"])
    ours = tiny_predictor.model.state_dict()
    assert set(sent) == set(ours) and all(torch.equal(sent[k], ours[k].cpu()) for k in sent)
    assert json.loads(fake_hub.received["config.json"])["backbone"] == tiny_predictor.model.config.backbone
    assert b"pipeline_tag: zero-shot-object-detection" in fake_hub.received["README.md"]

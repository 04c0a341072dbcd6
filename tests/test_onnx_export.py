"""ONNX export (`python -m detector export-onnx`): the tiny preset in onnxruntime matches eager
PyTorch on two image sizes; models whose proposals or scores run outside the network are refused."""

import json

import numpy as np
import pytest
import torch

from detector import cli
from detector.presets import PRESETS, load_detector

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")


def test_tiny_export_matches_eager_pytorch_on_two_image_sizes(tmp_path):
    from detector.embedding_cache import VocabularyEmbedder

    out = tmp_path / "tiny.onnx"
    assert cli.main(["export-onnx", "--model", "tiny", "--vocabulary", "cat, dog, person", "--out", str(out)]) == 0
    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(str(out), options, providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["image"]
    assert [o.name for o in session.get_outputs()] == ["boxes", "scores", "labels"]
    meta = session.get_modelmeta().custom_metadata_map
    assert json.loads(meta["vocabulary"]) == ["cat", "dog", "person"]
    assert float(meta["score_threshold"]) == PRESETS["tiny"].score_threshold

    model = load_detector("tiny")
    names, emb = VocabularyEmbedder.for_config(model.config)(["cat", "dog", "person"])
    rng = np.random.default_rng(0)
    for height, width in ((200, 300), (333, 150)):  # neither is the size it was traced at
        image = rng.random((3, height, width), dtype=np.float32)
        with torch.no_grad():
            eager = model.classify(model.encode([torch.from_numpy(image)]), emb)[0]
        boxes, scores, labels = session.run(None, {"image": image})
        assert len(boxes) == len(eager["boxes"]) > 0
        np.testing.assert_allclose(boxes, eager["boxes"].numpy(), atol=1e-3)
        np.testing.assert_allclose(scores, eager["scores"].numpy(), atol=1e-4)
        np.testing.assert_array_equal(labels, eager["labels"].numpy())
        assert boxes[:, [0, 2]].max() <= width and boxes[:, [1, 3]].max() <= height


def test_export_leaves_the_model_as_it_was(tmp_path):
    from detector.embedding_cache import VocabularyEmbedder
    from detector.onnx_export import export_onnx

    model = load_detector("tiny")
    names, emb = VocabularyEmbedder.for_config(model.config)(["cat"])
    export_onnx(model, names, emb, tmp_path / "m.onnx", score_threshold=1.0, example_size=(64, 96))
    assert not model.training and not model.transform.training  # tracing restores the wrapper's mode
    session = ort.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"])
    boxes, scores, labels = session.run(None, {"image": np.zeros((3, 80, 120), np.float32)})
    assert boxes.shape == (0, 4) and scores.shape == labels.shape == (0,)  # nothing above 1.0: empty, not an error


def test_models_scoring_or_proposing_outside_the_network_are_refused(tmp_path, monkeypatch, capsys):
    from detector import presets
    from detector.onnx_export import OnnxExportError, check_exportable, unsupported_reason

    def never(*a, **k):
        raise AssertionError("a refused preset must not load")

    monkeypatch.setattr(presets, "load_detector", never)
    out = tmp_path / "m.onnx"
    assert cli.main(["export-onnx", "-m", "offline", "-v", "cat", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "selective search" in err and not out.exists()
    assert "CLIP" in unsupported_reason(PRESETS["coco-clip"])  # COCO-trained RPN, but CLIP region crops
    assert "selective search" in unsupported_reason(PRESETS["resnet50-clip"])
    assert unsupported_reason(PRESETS["tiny"]) is None
    with pytest.raises(OnnxExportError, match="ImageNet"):
        check_exportable(PRESETS["offline"].replace(rpn_trained=True))

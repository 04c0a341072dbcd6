"""ONNX export of a detector with its vocabulary baked in: `python -m detector export-onnx`.

The exported graph is the eager inference path itself (`OpenVocabDetector.encode` + `classify`,
traced by `torch.onnx.export(..., dynamo=False)`): resize and normalisation, backbone, RPN, RoI
head, class-agnostic box refinement, the zero-shot classifier against the vocabulary's text
embeddings (stored in the file as a constant), score threshold and per-class NMS.

    input   image   float32 [3, H, W], RGB in [0, 1], any H and W
    outputs boxes   float32 [N, 4] xyxy in the input image's pixels
            scores  float32 [N]
            labels  int64   [N] 0-based indices into the vocabulary

The vocabulary (and the thresholds used) are also written to the model's metadata
(`vocabulary` as a JSON list). Only models whose proposals and scores come from the network can be
exported: see `unsupported_reason`.

`torch.export` (the dynamo exporter) does not get through this graph yet: it stops at a
data-dependent guard in torchvision's `batched_nms`, called by the RPN's `filter_proposals`
(`detector.rpn`), so the TorchScript tracer is used. The graph leaves out one speed guard of
eager inference: the cap of `MAX_CANDIDATES` (box, name) pairs entering NMS (detector.roi_heads),
which only huge vocabularies reach.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import torch
from torch import nn

from .config import DetectorConfig

OPSET = 17


class OnnxExportError(ValueError):
    """A model that cannot be exported to ONNX (the sentence says why)."""


def unsupported_reason(config: DetectorConfig) -> str | None:
    """Why a model with `config` cannot be exported to ONNX, in one sentence; None when it can."""
    if not config.rpn_trained and not config.init_weights:
        return ("its proposals come from selective search (OpenCV, outside the network) until its RPN "
                "is trained, so they cannot be part of an ONNX graph")
    if config.region_scoring:
        what = "CLIP" if config.region_scorer == "clip" else "ImageNet"
        return (f"its scores are ensembled with {what} scores of cropped regions, computed outside the "
                "network, so they cannot be part of an ONNX graph")
    return None


def check_exportable(config: DetectorConfig) -> None:
    reason = unsupported_reason(config)
    if reason:
        raise OnnxExportError(f"this model cannot be exported to ONNX: {reason}.")


class ExportedDetector(nn.Module):
    """One image in, (boxes, scores, labels) out, for a fixed vocabulary and thresholds."""

    def __init__(self, model, class_embeddings: torch.Tensor, score_threshold: float | None = None,
                 nms_threshold: float | None = None, max_detections: int | None = None):
        super().__init__()
        check_exportable(model.config)
        self.model = model.eval()
        self.register_buffer("class_embeddings", class_embeddings.detach().float().clone())
        self.thresholds = (score_threshold, nms_threshold, max_detections)
        self.eval()  # torch.onnx.export restores the wrapper's mode, recursively, after tracing

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        enc = self.model.encode([image])
        det = self.model.classify(enc, self.class_embeddings, *self.thresholds)[0]
        return det["boxes"], det["scores"], det["labels"]


def export_onnx(model, names: list[str], class_embeddings: torch.Tensor, path: str | Path, *,
                score_threshold: float | None = None, nms_threshold: float | None = None,
                max_detections: int | None = None, example_size: tuple[int, int] = (480, 640)) -> Path:
    """Write `model` (an OpenVocabDetector) with the vocabulary `names` (its text embeddings
    `class_embeddings`, [C, embed_dim]) to `path`; OnnxExportError when it cannot be exported."""
    import onnx

    check_exportable(model.config)
    if class_embeddings.shape != (len(names), model.config.embed_dim):
        raise ValueError(f"expected embeddings of shape {(len(names), model.config.embed_dim)}")
    path = Path(path)
    was_training = model.training
    wrapper = ExportedDetector(model.cpu(), class_embeddings.cpu(), score_threshold, nms_threshold,
                               max_detections)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        example = torch.rand(3, *example_size)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)  # sizes and checks traced as constants: by design
        torch.onnx.export(
            wrapper, (example,), str(path), dynamo=False, opset_version=OPSET,
            input_names=["image"], output_names=["boxes", "scores", "labels"],
            dynamic_axes={"image": {1: "height", 2: "width"}, "boxes": {0: "detections"},
                          "scores": {0: "detections"}, "labels": {0: "detections"}},
        )
    model.train(was_training)
    cfg = model.config
    proto = onnx.load(str(path))
    meta = {
        "vocabulary": json.dumps(list(names), ensure_ascii=False),
        "score_threshold": str(cfg.score_threshold if score_threshold is None else score_threshold),
        "nms_threshold": str(cfg.nms_threshold if nms_threshold is None else nms_threshold),
        "max_detections": str(cfg.max_detections if max_detections is None else max_detections),
        "input": "image: float32 [3, H, W], RGB in [0, 1]",
        "outputs": "boxes [N, 4] xyxy pixels, scores [N], labels [N] (indices into vocabulary)",
    }
    onnx.helper.set_model_props(proto, meta)
    onnx.save(proto, str(path))
    return path

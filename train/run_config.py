"""`RunConfig` (fine-tuning) and `PretrainConfig` (AlignDet pre-training): everything that defines
a training run, in torch-free dataclasses that share one JSON round trip and one CLI generator.

It is the only description of a run. The app fills one in and writes it into the run's folder
(`RunDir.write_config`); `python -m train finetune --config RUN/run_config.json` reads it back;
the CLI's flags are generated from these fields (`add_config_arguments`), so a field added here is
settable everywhere and can never be dropped on the way. Defaults live here and nowhere else.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from detector.config import BACKBONE_CHOICES, HEAD_PRESETS, IMAGE_LABEL_RULES, IMAGE_LABEL_SCOPES

TAG_FEATURES = ("cached", "full")  # see train.tag_features
# A run longer than this is a typo (10**9 was accepted and estimated at 2.4e11 s): a million steps
# is days even on a GPU.
MAX_ITERS = 1_000_000
# Image sides and batch sizes above these are typos or attacks, not settings: a shorter side of
# 10**9 was accepted and failed only inside the run ("Storage size calculation overflowed"), and a
# memory estimate grows with the pixel count (320 px: 1.6 GB, 1280 px: 2.0 GB on the 2-core CPU).
MAX_SIDE = 4096
MAX_BATCH = 256
MAX_LOSS_WEIGHT = 100.0  # Detic's image-label weight is 0.1; 100 already drowns the box losses


def _opt(default, help: str, **extra) -> Any:  # noqa: A002 - argparse's word
    factory = {"default_factory": default} if callable(default) else {"default": default}
    return field(**factory, metadata={"help": help, **extra})


def _check_range(cfg, names: tuple[str, ...], most: int) -> None:
    """Each named field lies in 1..most (ValueError naming the field and the limit)."""
    for name in names:
        value = getattr(cfg, name)
        if not 1 <= value <= most:
            raise ValueError(f"{name} must be between 1 and {most:,}, got {value:,}")


class ConfigBase:
    """What every run config shares: the JSON round trip and the schedule derived from the run
    length. Subclasses are dataclasses with `iters`, `warmup`, `checkpoint_every`, `log_every`,
    and name the `python -m train` sub-command that runs them in `COMMAND`."""

    COMMAND: ClassVar[str] = ""

    def _validate_schedule(self) -> None:
        bad = [f.name for f in dataclasses.fields(self)
               if isinstance(getattr(self, f.name), float) and not math.isfinite(getattr(self, f.name))]
        if bad:
            raise ValueError(f"{', '.join(bad)} must be a finite number")
        if not 1 <= self.iters <= MAX_ITERS:
            raise ValueError(f"iters must be between 1 and {MAX_ITERS:,}, got {self.iters:,}")
        if self.lr <= 0 or self.weight_decay < 0 or self.clip <= 0:
            raise ValueError("lr and clip must be positive and weight_decay zero or more")
        if len(self.jitter) != 2 or not 0 < self.jitter[0] <= self.jitter[1]:
            raise ValueError("jitter must be two positive scales lo,hi with lo no larger than hi")
        if self.warmup < 0 or (self.checkpoint_every or 1) < 1 or (self.log_every or 1) < 1:
            raise ValueError("warmup must be zero or more, checkpoint_every and log_every at least 1")

    # --- schedule derived from the run length (the one place these are computed) ---------------
    @property
    def warmup_iters(self) -> int:
        return max(1, min(self.warmup, self.iters // 10 or 1))

    @property
    def checkpoint_interval(self) -> int:
        return self.checkpoint_every or max(50, min(500, self.iters // 4))

    @property
    def log_interval(self) -> int:
        return self.log_every or max(1, min(10, self.iters // 20))

    # --- JSON round trip ----------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, ensure_ascii=False)

    @classmethod
    def from_dict(cls, d: dict[str, Any]):
        if not isinstance(d, dict):
            raise ValueError("a run config must be a JSON object")
        unknown = sorted(set(d) - {f.name for f in dataclasses.fields(cls)})
        if unknown:
            raise ValueError(f"unknown {cls.COMMAND} config keys: {', '.join(unknown)}")
        return cls(**d)

    @classmethod
    def from_json(cls, text: str):
        try:
            return cls.from_dict(json.loads(text))
        except json.JSONDecodeError as e:
            raise ValueError(f"run config is not valid JSON: {e}") from None

    @classmethod
    def load(cls, path: str | Path):
        return cls.from_json(Path(path).read_text(encoding="utf-8"))

    def replace(self, **changes: Any):
        return dataclasses.replace(self, **changes)


@dataclass
class RunConfig(ConfigBase):
    COMMAND: ClassVar[str] = "finetune"

    model: str = _opt("offline", "starting point: preset, checkpoint folder or Hub id", path=True)
    box_data: str | None = _opt(None, "COCO detection JSON (box labels)", path=True)
    box_images: str | None = _opt(None, "folder the box JSON's file_name entries are relative to", path=True)
    label_data: str | None = _opt(None, "image-level labels: Detic JSON, CSV or JSONL", path=True)
    label_images: str | None = _opt(None, "folder the label file's image paths are relative to", path=True)
    iters: int = _opt(1000, "training iterations")
    box_batch: int = _opt(4, "images per box-labelled batch")
    label_batch: int = _opt(8, "images per image-labelled batch")
    box_size: int = _opt(640, "shorter side of box-labelled images")
    label_size: int = _opt(320, "shorter side of image-labelled images (Detic: half the box size)")
    jitter: tuple[float, float] = _opt((0.8, 1.25), "scale jitter range, e.g. 0.8,1.25")
    ratio: str = _opt("1:1", "box : image-label batches, e.g. 1:4")
    image_label_rule: str = _opt("max_size", "which proposal an image-level label trains",
                                 choices=IMAGE_LABEL_RULES, aliases=("--image-loss",))
    image_label_weight: float = _opt(0.1, "lambda of the image-label loss", aliases=("--image-loss-weight",))
    image_label_scope: str = _opt("box_head", "what image labels train: box_head (Detic: classifier, box head and "
                                  "neck) or classifier (its projection only)", choices=IMAGE_LABEL_SCOPES)
    heads: str = _opt("", "head capacity: light, standard or heavy (new heads; default: keep the model's)",
                      choices=("", *HEAD_PRESETS))
    train_backbone: str = _opt("", "frozen, last_stages or all (default: keep the model's; Vasconcelos: frozen)",
                               choices=("", *BACKBONE_CHOICES))
    lr: float = _opt(2e-4, "peak learning rate (AdamW)")
    weight_decay: float = _opt(1e-4, "AdamW weight decay")
    warmup: int = _opt(100, "linear warm-up iterations (at most a tenth of the run)")
    clip: float = _opt(1.0, "gradient-norm clipping")
    checkpoint_every: int | None = _opt(None, "iterations between checkpoints (default: a quarter of the run, 50..500)")
    log_every: int | None = _opt(None, "iterations between metric lines (default: a twentieth of the run, 1..10)")
    seed: int = _opt(0, "seed of sampling, augmentation and RoI sampling")
    device: str | None = _opt(None, "cpu, cuda, cuda:1 … (default: cuda when available)")
    eval_data: str | None = _opt(None, "COCO JSON to evaluate on when training finishes", path=True)
    eval_images: str | None = _opt(None, "folder of the evaluation images", path=True)
    novel: list[str] = _opt(list, "novel class names reported separately by the evaluation (comma separated)")
    heldout_share: float = _opt(0.2, "share of the tagged images held out to score the run (0: none; "
                                "needs at least 8 tagged images)")
    tag_features: str = _opt("cached", "tags only, frozen backbone: 'cached' runs the backbone, neck and proposals "
                             "once per image and trains the box head and classifier on them (minutes on a CPU); "
                             "'full' runs the whole model every step (the neck learns too; jitter, flips)",
                             choices=TAG_FEATURES)

    def __post_init__(self) -> None:
        self.jitter = tuple(float(v) for v in self.jitter)
        from detector.vocabulary import parse_vocabulary

        given = (self.novel.split(",") if isinstance(self.novel, str)  # "cat, dog" is two names, not six letters
                 else [str(n) for n in (self.novel or [])])
        given = [n for n in given if n.strip()]
        try:  # the one name cleaner, and its limits (200 characters a name, 2,000 names)
            self.novel = parse_vocabulary(given) if given else []
        except ValueError as e:
            raise ValueError(f"novel: {e}") from None
        self.validate()

    def validate(self) -> None:
        """Every mistake that can be found without touching files; ValueError names the field."""
        from .sampler import parse_ratio

        self._validate_schedule()
        _check_range(self, ("box_batch", "label_batch"), MAX_BATCH)
        _check_range(self, ("box_size", "label_size"), MAX_SIDE)
        if self.image_label_rule not in IMAGE_LABEL_RULES:
            raise ValueError(f"image_label_rule must be one of {', '.join(IMAGE_LABEL_RULES)}, "
                             f"got {self.image_label_rule!r}")
        if self.image_label_scope not in IMAGE_LABEL_SCOPES:
            raise ValueError(f"image_label_scope must be one of {', '.join(IMAGE_LABEL_SCOPES)}")
        if self.tag_features not in TAG_FEATURES:
            raise ValueError(f"tag_features must be one of {', '.join(TAG_FEATURES)}")
        if not 0 <= self.heldout_share < 0.9:
            raise ValueError("heldout_share must lie in [0, 0.9)")
        if not 0 <= self.image_label_weight <= MAX_LOSS_WEIGHT:  # 1e308 overflowed the loss to inf
            raise ValueError(f"image_label_weight must be between 0 and {MAX_LOSS_WEIGHT:g}, "
                             f"got {self.image_label_weight:g}")
        if self.heads not in ("", *HEAD_PRESETS):
            raise ValueError(f"heads must be one of {', '.join(HEAD_PRESETS)} (or empty: keep the model's)")
        if self.train_backbone not in ("", *BACKBONE_CHOICES):
            raise ValueError(f"train_backbone must be one of {', '.join(BACKBONE_CHOICES)} (or empty)")
        parse_ratio(self.ratio)
        for data, images in (("box_data", "box_images"), ("label_data", "label_images"),
                             ("eval_data", "eval_images")):
            if getattr(self, data) and not getattr(self, images):
                raise ValueError(f"{data} needs {images}")


@dataclass
class PretrainConfig(ConfigBase):
    """AlignDet box-domain pre-training of everything but the frozen backbone, on unlabelled images
    (`train.pretrain`). The output folder is a detector checkpoint that `finetune` starts from."""

    COMMAND: ClassVar[str] = "pretrain"

    images: str | None = _opt(None, "folder of unlabelled images (searched recursively)", path=True)
    extra_images: str | None = _opt(None, "a second folder of unlabelled images (e.g. the app's store + a server folder)", path=True)
    model: str = _opt("offline", "starting point: preset, checkpoint folder or Hub id", path=True)
    iters: int = _opt(1000, "pre-training iterations")
    batch: int = _opt(4, "images per batch (each gives two views)")
    size: int = _opt(640, "shorter side of the views before scale jitter")
    jitter: tuple[float, float] = _opt((0.5, 1.5), "scale jitter range of each view, e.g. 0.5,1.5")
    proposals: int = _opt(50, "selective-search proposals kept per image (AlignDet: ~50)")
    momentum: float = _opt(0.996, "EMA momentum at the start; rises to 1.0 on a cosine schedule")
    temperature: float = _opt(0.5, "InfoNCE temperature")
    projector_dim: int = _opt(256, "output size of the fc-ReLU-fc projector (dropped after pre-training)")
    contrastive_weight: float = _opt(1.0, "weight of the box-level InfoNCE loss")
    regression_weight: float = _opt(1.0, "weight of the L1 box regression to the proposals")
    lr: float = _opt(2e-4, "peak learning rate (AdamW)")
    weight_decay: float = _opt(1e-4, "AdamW weight decay")
    warmup: int = _opt(100, "linear warm-up iterations (at most a tenth of the run)")
    clip: float = _opt(1.0, "gradient-norm clipping")
    workers: int = _opt(0, "processes computing proposals (0: one per CPU core, at most 8)")
    checkpoint_every: int | None = _opt(None, "iterations between checkpoints (default: a quarter of the run, 50..500)")
    log_every: int | None = _opt(None, "iterations between metric lines (default: a twentieth of the run, 1..10)")
    seed: int = _opt(0, "seed of sampling, augmentation and RoI sampling")
    device: str | None = _opt(None, "cpu, cuda, cuda:1 … (default: cuda when available)")

    def __post_init__(self) -> None:
        self.jitter = tuple(float(v) for v in self.jitter)
        self.validate()

    def validate(self) -> None:
        self._validate_schedule()
        if not self.images:
            raise ValueError("images: give the folder of unlabelled images (--images DIR)")
        _check_range(self, ("batch",), MAX_BATCH)
        _check_range(self, ("size", "proposals", "projector_dim"), MAX_SIDE)
        if not 0.0 <= self.momentum <= 1.0:
            raise ValueError("momentum must lie in [0, 1]")
        if self.temperature <= 0 or self.contrastive_weight < 0 or self.regression_weight < 0 or self.workers < 0:
            raise ValueError("temperature must be positive; contrastive_weight, regression_weight and workers "
                             "zero or more")


CONFIGS: dict[str, type[ConfigBase]] = {c.COMMAND: c for c in (RunConfig, PretrainConfig)}

# --- the CLI, generated from the fields ---------------------------------------------------------
def _base_type(annotation) -> tuple[type, bool]:
    """(element type, is a list/tuple) of a field's annotation, `X | None` unwrapped."""
    hint = annotation
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        hint = next(a for a in typing.get_args(hint) if a is not type(None))
    origin = typing.get_origin(hint)
    if origin in (list, tuple):
        return typing.get_args(hint)[0], True
    return hint, False


def _parse_list(kind: type):
    def parse(text: str) -> list:
        return [kind(v.strip()) for v in str(text).split(",") if v.strip()]

    parse.__name__ = f"comma-separated {kind.__name__}"
    return parse


def add_config_arguments(parser: argparse.ArgumentParser, cls=RunConfig) -> None:
    """One flag per field (`--box-data` for `box_data`); defaults stay unset so that flags given
    on the command line override a `--config` file and everything else comes from the file."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        kind, many = _base_type(hints[f.name])
        flags = [f"--{f.name.replace('_', '-')}", *f.metadata.get("aliases", ())]
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        shown = ",".join(map(str, default)) if isinstance(default, (list, tuple)) else default
        text = f.metadata.get("help", "")
        kw: dict[str, Any] = {"dest": f.name, "default": argparse.SUPPRESS,
                              "help": text if "default" in text else f"{text} (default: {shown})"}
        if kind is bool:
            kw["action"] = argparse.BooleanOptionalAction
        else:
            kw["type"] = _parse_list(kind) if many else kind
        if "choices" in f.metadata:
            kw["choices"] = f.metadata["choices"]
            kw["metavar"] = "{" + ",".join(c for c in f.metadata["choices"] if c) + "}"  # "" (keep) is the default
        parser.add_argument(*flags, **kw)


def config_from_args(args: argparse.Namespace, base: ConfigBase | None = None, cls=RunConfig) -> ConfigBase:
    """`base` (e.g. read from --config) with every field given on the command line replaced.
    Paths given are made absolute (a model only when it is a local folder, not a preset or Hub id):
    the run's saved config had kept "labels.csv" as typed, and `--resume` from another folder failed."""
    given = {f.name: _absolute(getattr(args, f.name), f.name == "model") if f.metadata.get("path")
             else getattr(args, f.name) for f in dataclasses.fields(cls) if hasattr(args, f.name)}
    return (base.replace(**given) if base is not None else cls(**given)) if given or base is None else base


def _absolute(value: str | None, only_existing: bool) -> str | None:
    """A path as given on the command line, absolute (`only_existing`: when something is there)."""
    if not value or (only_existing and not Path(value).exists()):
        return value
    return os.path.abspath(value)

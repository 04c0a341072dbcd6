"""Checkpoint I/O: `config.json` + `model.safetensors`, written atomically, never unpickled.

The config is also stored inside the safetensors metadata, so the weights file alone is a
complete checkpoint and a crash between writing the two files can never pair weights with the
wrong config. Every file is written to a temporary name, fsynced and `os.replace`d.
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save

from .config import DetectorConfig
from .files import atomic_write

WEIGHTS_NAME = "model.safetensors"
CONFIG_NAME = "config.json"
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".ckpt")
# Modules that exist only while pre-training (train.pretrain) and are saved with its checkpoints so
# it can resume: a detector loads without them. Nothing else is ever dropped.
PRETRAINING_ONLY = ("aligndet_projector.",)


class CheckpointError(ValueError):
    """A checkpoint is missing, unsafe (pickle) or does not match the architecture."""


def atomic_save_tensors(tensors: dict[str, torch.Tensor], path: Path, metadata: dict[str, str]) -> None:
    """safetensors bytes through the one atomic writer (`detector.files`)."""
    atomic_write(path, save({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, metadata=metadata))


def save_checkpoint(model, directory: str | Path) -> Path:
    """Write `model` (an OpenVocabDetector) to `directory`; returns the directory."""
    directory = Path(directory)
    config_json = model.config.to_json()
    atomic_save_tensors(model.state_dict(), directory / WEIGHTS_NAME, {"format": "pt", "config": config_json})
    atomic_write(directory / CONFIG_NAME, config_json)
    return directory


def read_checkpoint(path: str | Path) -> tuple[DetectorConfig, dict[str, torch.Tensor]]:
    """(config, state dict) from a checkpoint folder or a `.safetensors` file."""
    path = Path(path)
    weights = path / WEIGHTS_NAME if path.is_dir() else path
    if not weights.exists():
        pickles = sorted(p.name for p in path.iterdir() if p.suffix in PICKLE_SUFFIXES) if path.is_dir() else []
        if pickles:
            raise CheckpointError(
                f"'{path}' only has pickle weights ({', '.join(pickles)}); refusing to unpickle "
                "untrusted files. Convert them to model.safetensors on a trusted machine."
            )
        raise CheckpointError(f"no {WEIGHTS_NAME} in '{path}'")
    if weights.suffix != ".safetensors":
        raise CheckpointError(f"'{weights}' is not a .safetensors file; refusing to unpickle it")
    try:
        from safetensors import safe_open

        with safe_open(str(weights), framework="pt") as f:
            metadata = f.metadata() or {}
        state = load_file(str(weights))
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"'{weights}' is not a valid safetensors file ({str(e)[:120]})") from None
    if "config" in metadata:
        config = DetectorConfig.from_json(metadata["config"])
    elif weights.with_name(CONFIG_NAME).exists():
        config = DetectorConfig.load(weights.with_name(CONFIG_NAME))
    else:
        raise CheckpointError(f"'{path}' has no detector config (config.json or safetensors metadata)")
    return config, state


def split_pretraining_state(state: dict[str, torch.Tensor]) -> tuple[dict, dict]:
    """(detector tensors, pre-training-only tensors such as the AlignDet projector)."""
    extra = {k: v for k, v in state.items() if k.startswith(PRETRAINING_ONLY)}
    return {k: v for k, v in state.items() if k not in extra}, extra


def legacy_backbone_pretrained(config: DetectorConfig) -> bool | None:
    """What a checkpoint that does not record `backbone_pretrained` can say: False where its
    backbone was built without pre-trained weights (the tiny one has none, or `backbone_weights`
    was "none"), else None (unknown: not claimed to be random)."""
    return False if config.backbone == "tiny" or config.backbone_weights == "none" else None


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu"):
    """Build an OpenVocabDetector from a checkpoint; every key must match (strict), except the
    pre-training-only modules (`PRETRAINING_ONLY`), which are dropped and listed in
    `model.dropped_keys`."""
    from .model import OpenVocabDetector

    config, state = read_checkpoint(path)
    state, extra = split_pretraining_state(state)
    # The checkpoint holds every weight: skip downloading / reading pre-trained backbones.
    model = OpenVocabDetector(config.replace(backbone_weights="none"))
    model.config = config  # with what it records, e.g. that the backbone started pre-trained
    if config.backbone_pretrained is None:  # a checkpoint from before the field
        model.backbone_pretrained = legacy_backbone_pretrained(config)
    # Checkpoints from before batch-norm statistics were always frozen carry BN's step counters.
    state = {k: v for k, v in state.items() if not (k.startswith("backbone.body.") and k.endswith("num_batches_tracked"))}
    result = model.load_state_dict(state, strict=False)
    if result.missing_keys or result.unexpected_keys:
        raise CheckpointError(
            f"checkpoint '{path}' does not match its architecture: {len(result.missing_keys)} missing "
            f"(e.g. {result.missing_keys[:3]}), {len(result.unexpected_keys)} unexpected "
            f"(e.g. {result.unexpected_keys[:3]})"
        )
    model.dropped_keys = sorted(extra)
    return model.to(map_location).eval()

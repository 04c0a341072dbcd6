import logging

import numpy as np
import pytest
import torch
from PIL import Image

from detector import DetectorConfig, OpenVocabDetector, load_detector
from detector.backbones import build_backbone


def test_packaged_efficientnet_lite0_weights_are_real():
    """The offline ImageNet weights load strictly and rank 'espresso' (967) top-5 on coffee()."""
    from skimage import data

    from detector.lite_weights import create_efficientnet_lite0, packaged_lite0_state_dict

    net = create_efficientnet_lite0()
    net.load_state_dict(packaged_lite0_state_dict(), strict=True)
    img = Image.fromarray(data.coffee()).resize((224, 224), Image.Resampling.BICUBIC)
    x = (torch.from_numpy(np.array(img)).permute(2, 0, 1).float() / 255 - 0.5) / 0.5
    with torch.no_grad():
        top5 = net.eval()(x[None]).softmax(-1).topk(5).indices[0].tolist()
    assert 967 in top5


def test_efficientnet_backbone_is_pretrained_and_frozen():
    spec = build_backbone(DetectorConfig(backbone="efficientnet_lite0"))
    assert spec.pretrained
    assert all(not p.requires_grad for p in spec.module.body.parameters())
    assert any(p.requires_grad for p in spec.module.fpn.parameters())
    feats = spec.module(torch.rand(1, 3, 128, 128))
    assert list(feats) == ["0", "1", "2", "3", "pool"]
    assert [f.shape[-1] for f in feats.values()] == [32, 16, 8, 4, 2]


def test_resnet50_without_download_is_random_with_one_warning(caplog, tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))  # empty torch hub cache
    with caplog.at_level(logging.WARNING):
        spec = build_backbone(DetectorConfig(backbone="resnet50"))
    assert not spec.pretrained
    warnings = [r for r in caplog.records if "random weights" in r.getMessage()]
    assert len(warnings) == 1


def test_unknown_backbone():
    with pytest.raises(ValueError, match="unknown backbone"):
        build_backbone(DetectorConfig(backbone="vgg7"))


def _step(model, emb):
    images = [torch.rand(3, 96, 128), torch.rand(3, 128, 96)]
    targets = [{"boxes": torch.tensor([[10.0, 12.0, 60.0, 70.0]]), "labels": torch.tensor([1])},
               {"boxes": torch.tensor([[5.0, 5.0, 50.0, 40.0]]), "labels": torch.tensor([0])}]
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    model.train()
    loss = sum(model(images, targets, emb).values())
    loss.backward()
    opt.step()


def test_frozen_backbone_keeps_params_and_bn_stats(tiny_model, unit_embeddings):
    body = tiny_model.backbone.body
    before = {k: v.clone() for k, v in body.state_dict().items()}
    heads_before = {k: v.clone() for k, v in tiny_model.roi_heads.state_dict().items()}
    assert any("running_mean" in k for k in before)  # BN statistics exist and are checked
    _step(tiny_model, unit_embeddings(3))
    for k, v in body.state_dict().items():
        assert torch.equal(v, before[k]), k
    changed = [k for k, v in tiny_model.roi_heads.state_dict().items() if not torch.equal(v, heads_before[k])]
    assert changed, "head parameters must train"
    counts = tiny_model.parameter_counts()
    frozen = sum(p.numel() for p in body.parameters())
    assert counts["trainable"] == counts["total"] - frozen


def test_unfrozen_backbone_trains_weights_not_bn_statistics(unit_embeddings):
    torch.manual_seed(0)
    cfg = load_detector("tiny").config.replace(freeze_backbone=False)
    model = OpenVocabDetector(cfg)
    before = {k: v.clone() for k, v in model.backbone.body.state_dict().items()}
    _step(model, unit_embeddings(3))
    changed = [k for k, v in model.backbone.body.state_dict().items() if not torch.equal(v, before[k])]
    assert any(k.endswith("weight") for k in changed)
    assert not any("running_" in k for k in changed), "BN statistics stay frozen (small detection batches)"


@pytest.mark.parametrize("backbone", ["tiny", "efficientnet_lite0"])
def test_last_stages_of_the_backbone_train_and_the_rest_stays(backbone, unit_embeddings):
    cfg = load_detector("tiny").config.replace(backbone=backbone, backbone_weights="none", freeze_backbone=False,
                                                backbone_trainable_stages=2)
    torch.manual_seed(0)
    model = OpenVocabDetector(cfg)
    body = model.backbone.body
    trainable = [n for n, p in body.named_parameters() if p.requires_grad]
    assert trainable and len(trainable) < len(list(body.parameters()))
    before = {n: p.detach().clone() for n, p in body.named_parameters()}
    _step(model, unit_embeddings(3))
    moved = {n for n, p in body.named_parameters() if not torch.equal(p, before[n])}
    assert moved and moved <= set(trainable)
    # the stages are ordered: everything trainable comes after everything frozen
    names = [n for n, _ in body.named_parameters()]
    assert min(names.index(n) for n in trainable) > max(names.index(n) for n in names if n not in trainable)


def test_torchvision_weights_are_loaded_tensors_only(tmp_path, monkeypatch):
    """Cached torchvision weights go through torch's restricted unpickler: a pickle payload fails."""
    import os
    import pickle
    import shlex

    from torchvision.models import ResNet50_Weights

    from detector.backbones import load_torchvision_weights

    marker = tmp_path / "pwned"

    class Exploit:
        def __reduce__(self):
            return (os.system, (f"echo pwned > {shlex.quote(str(marker))}",))

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    cache = tmp_path / "hub" / "checkpoints"
    cache.mkdir(parents=True)
    name = os.path.basename(ResNet50_Weights.IMAGENET1K_V2.url)
    (cache / name).write_bytes(pickle.dumps({"w": Exploit()}))
    assert load_torchvision_weights(ResNet50_Weights.IMAGENET1K_V2) is None  # refused, one warning
    assert not marker.exists()

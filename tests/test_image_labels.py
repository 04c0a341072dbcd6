import pytest
import torch

from detector.image_labels import Choice, choose_proposals, image_label_loss, with_image_box

# Hand-built proposals: index 1 is the largest, index 2 scores highest for class 0,
# index 0 highest for class 2. The whole-image box is appended last (index 3).
BOXES = with_image_box(torch.tensor([[0.0, 0.0, 10.0, 10.0], [5.0, 5.0, 60.0, 50.0], [20.0, 20.0, 30.0, 40.0]]),
                       (100, 120))
LOGITS = torch.tensor([[-1.0, 0.0, 3.0], [0.0, 0.5, 0.0], [4.0, 0.0, -2.0], [9.0, 9.0, 9.0]])


def test_max_size_picks_largest_proposal_not_the_image_box():
    assert choose_proposals("max_size", BOXES, LOGITS, [2, 0]) == [Choice(1, (0, 2))]


def test_image_box_picks_the_whole_image():
    (choice,) = choose_proposals("image_box", BOXES, LOGITS, [0])
    assert choice.proposal == 3 and BOXES[3].tolist() == [0, 0, 120, 100]


def test_max_score_picks_best_proposal_per_label():
    assert choose_proposals("max_score", BOXES, LOGITS, [0, 2]) == [Choice(2, (0,)), Choice(0, (2,))]


def test_no_labels_no_choice_and_bad_rule():
    assert choose_proposals("max_size", BOXES, LOGITS, []) == []
    with pytest.raises(ValueError):
        choose_proposals("largest", BOXES, LOGITS, [0])


def _bce(logits, target):
    return torch.nn.functional.binary_cross_entropy_with_logits(logits, target, reduction="sum")


def test_loss_is_bce_of_chosen_proposal():
    logits = LOGITS.clone().requires_grad_(True)
    loss = image_label_loss([logits], [[Choice(1, (0,))]])
    assert torch.allclose(loss, _bce(LOGITS[1], torch.tensor([1.0, 0.0, 0.0])))  # Detic: one-hot, summed
    loss.backward()
    assert logits.grad[[0, 2, 3]].abs().sum() == 0 and logits.grad[1].abs().sum() > 0


def test_loss_normalises_per_label_and_per_batch_as_detic():
    # max_size, labels {0, 2} on one proposal: Detic sums each label's one-hot BCE and divides by
    # the number of labels; the other label is masked out of each term (not pushed to 0).
    loss = image_label_loss([LOGITS, LOGITS], [[Choice(1, (0, 2))], []])
    row = LOGITS[1]
    per_label = [_bce(row[[0, 1]], torch.tensor([1.0, 0.0])), _bce(row[[2, 1]], torch.tensor([1.0, 0.0]))]
    expected = sum(per_label) / 2 / 2  # / labels, then / batch (the unlabelled image counts, as in Detic)
    assert torch.allclose(loss, expected)
    # max_score: each label on its own proposal, same normalisation
    loss = image_label_loss([LOGITS], [[Choice(2, (0,)), Choice(0, (2,))]])
    expected = (_bce(LOGITS[2, [0, 1]], torch.tensor([1.0, 0.0])) + _bce(LOGITS[0, [2, 1]], torch.tensor([1.0, 0.0]))) / 2
    assert torch.allclose(loss, expected)


def test_other_labels_of_the_image_get_no_negative_gradient():
    logits = LOGITS.clone().requires_grad_(True)
    image_label_loss([logits], [[Choice(2, (0,)), Choice(0, (2,))]]).backward()
    g = logits.grad
    assert g[2, 0] < 0 and g[0, 2] < 0  # each label pulled up on its proposal
    assert g[2, 2] == 0 and g[0, 0] == 0  # the image's other label is neither pushed up nor down there
    assert g[2, 1] > 0 and g[0, 1] > 0  # absent class pushed down


def test_loss_weight_and_single_label_do_not_depend_on_number_of_classes_seen():
    one = image_label_loss([LOGITS], [[Choice(1, (1,))]])
    two = image_label_loss([LOGITS, LOGITS], [[Choice(1, (1,))], [Choice(1, (1,))]])
    assert torch.allclose(one, two)  # batch mean
    assert image_label_loss([LOGITS], [[]]).item() == 0


def test_choice_stats_report_size_position_and_image_box():
    from detector.image_labels import choice_stats

    stats = choice_stats([BOXES], [LOGITS], [[Choice(1, (0,)), Choice(3, (2,))]], [(100, 120)])
    assert stats["select_image_box"] == 0.5
    assert abs(stats["select_size"] - (55 * 45 / 12000 + 1.0) / 2) < 1e-6
    assert abs(stats["select_x"] - (32.5 / 120 + 0.5) / 2) < 1e-6
    assert choice_stats([BOXES], [LOGITS], [[]], [(100, 120)]) == {}


def _grads(model):
    return {n for n, p in model.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}


@pytest.mark.parametrize("rule", ["max_size", "image_box", "max_score"])
def test_classifier_scope_trains_only_the_classifier(tiny_model, unit_embeddings, rule):
    tiny_model.train()
    stats_before = {k: v.clone() for k, v in tiny_model.state_dict().items() if "running" in k}
    loss = tiny_model.image_label_loss([torch.rand(3, 96, 128), torch.rand(3, 64, 80)], [[0, 2], [1]],
                                       unit_embeddings(3), rule=rule, scope="classifier")["loss_image_label"]
    assert loss.item() > 0
    loss.backward()
    for name in _grads(tiny_model):
        assert name.startswith("roi_heads.box_predictor.cls_score."), name
    assert any(n.startswith("roi_heads.box_predictor.cls_score.") for n in _grads(tiny_model))
    for k, v in tiny_model.state_dict().items():  # no normalisation statistics moved either
        if k in stats_before:
            assert torch.equal(v, stats_before[k]), k


def test_default_scope_is_detics_box_head_and_neck_never_rpn_or_regression(tiny_model, unit_embeddings):
    tiny_model.train()
    tiny_model.image_label_loss([torch.rand(3, 96, 128)], [[1]], unit_embeddings(3))["loss_image_label"].backward()
    grads = _grads(tiny_model)
    assert any(n.startswith("roi_heads.box_head") for n in grads)
    assert any(n.startswith("backbone.fpn") for n in grads)
    assert not any(n.startswith(("rpn.", "roi_heads.box_predictor.bbox_pred", "backbone.body")) for n in grads)


def test_rule_weight_and_scope_are_arguments_and_checked(tiny_model, unit_embeddings):
    tiny_model.train()
    images, emb = [torch.rand(3, 96, 128)], unit_embeddings(3)
    torch.manual_seed(0)
    a = tiny_model.image_label_loss(images, [[1]], emb, weight=0.1)["loss_image_label"]
    torch.manual_seed(0)
    b = tiny_model.image_label_loss(images, [[1]], emb, weight=1.0)["loss_image_label"]
    assert torch.allclose(10 * a, b, rtol=1e-4)
    assert set(tiny_model.image_label_stats) >= {"select_size", "select_x", "select_y", "select_image_box"}
    with pytest.raises(ValueError, match="rule"):
        tiny_model.image_label_loss(images, [[1]], emb, rule="largest")
    with pytest.raises(ValueError, match="scope"):
        tiny_model.image_label_loss(images, [[1]], emb, scope="everything")


def test_old_checkpoints_with_image_label_keys_still_load(tmp_path, tiny_model):
    import json

    from safetensors.torch import save_file

    from detector import DetectorConfig
    from detector.checkpoint import load_checkpoint

    legacy = {**tiny_model.config.to_dict(), "image_label_rule": "image_box", "image_label_weight": 0.5,
              "image_label_scope": "classifier"}
    assert DetectorConfig.from_dict(legacy) == tiny_model.config
    text = json.dumps(legacy)
    save_file(tiny_model.state_dict(), str(tmp_path / "model.safetensors"), {"format": "pt", "config": text})
    (tmp_path / "config.json").write_text(text)
    loaded = load_checkpoint(tmp_path)
    assert loaded.config == tiny_model.config and "image_label_rule" not in loaded.config.to_json()


def test_assign_api_reports_each_rule(tiny_predictor, small_image):
    a = tiny_predictor.assign(small_image, ["cat", "dog"], vocabulary="dog, cat, bird")
    n = a.proposals.shape[0]
    assert a.proposals.shape == (n, 4) and a.scores.shape == (n, 3) and a.objectness.shape == (n,)
    assert a.proposals[-1].tolist() == [0, 0, 192, 192]  # whole image, last, in image pixels
    assert a.rules["image_box"] == [(n - 1, ["dog", "cat"])]
    (idx, names), = a.rules["max_size"]
    areas = (a.proposals[:-1, 2] - a.proposals[:-1, 0]) * (a.proposals[:-1, 3] - a.proposals[:-1, 1])
    assert idx == int(areas.argmax()) and names == ["dog", "cat"]
    assert [names for _, names in a.rules["max_score"]] == [["dog"], ["cat"]]
    with pytest.raises(ValueError, match="not in the vocabulary"):
        tiny_predictor.assign(small_image, ["zebra"], vocabulary="dog")


def test_not_present_tags_push_down_the_best_region_for_that_class():
    from detector.image_labels import negative_terms

    logits = LOGITS.clone().requires_grad_(True)
    terms = negative_terms(LOGITS, [2, 0])
    assert terms == [(3, 0), (3, 2)]  # the highest-scoring region for each absent class
    loss = image_label_loss([logits], [[]], [terms])
    expected = torch.nn.functional.binary_cross_entropy_with_logits(torch.tensor([9.0, 9.0]), torch.zeros(2))
    assert torch.allclose(loss, expected)
    loss.backward()
    grad = logits.grad
    assert grad[3, 0] > 0 and grad[3, 2] > 0 and grad[3, 1] == 0 and grad[:3].abs().sum() == 0


def test_model_uses_negatives(tiny_model, unit_embeddings):
    tiny_model.train()
    images, emb = [torch.rand(3, 96, 128)], unit_embeddings(3)
    torch.manual_seed(0)
    without = tiny_model.image_label_loss(images, [[0]], emb)["loss_image_label"]
    torch.manual_seed(0)
    with_neg = tiny_model.image_label_loss(images, [[0]], emb, negatives=[[1, 2]])["loss_image_label"]
    only_neg = tiny_model.image_label_loss(images, [[]], emb, negatives=[[1]])["loss_image_label"]
    assert with_neg > without and only_neg > 0


def test_federated_loss_only_touches_present_and_sampled_classes():
    from detector.roi_heads import federated_classes, sigmoid_classification_loss

    torch.manual_seed(0)
    num_classes = 200
    gt = torch.tensor([3, 7, 7, num_classes, num_classes])  # two classes present, background RoIs
    freq = torch.ones(num_classes)
    freq[100:] = 0  # never-seen classes are never sampled as negatives
    chosen = federated_classes(gt, num_classes, 50, freq)
    assert len(chosen) == 50 and {3, 7} <= set(chosen.tolist()) and chosen.max() < 100
    logits = torch.zeros(5, num_classes + 1, requires_grad=True)
    sigmoid_classification_loss(logits, gt, federated_threshold=50, federated_num=50, freq_weight=freq).backward()
    touched = (logits.grad.abs().sum(0)[:num_classes] > 0).nonzero().flatten()
    assert 2 < len(touched) <= 50 and {3, 7} <= set(touched.tolist()) and touched.max() < 100
    small = torch.zeros(5, 11, requires_grad=True)  # 10 classes: plain BCE over all of them
    sigmoid_classification_loss(small, torch.tensor([1, 2, 10, 10, 10]), 50, 50).backward()
    assert (small.grad[:, :10].abs().sum(0) > 0).all() and small.grad[:, 10].abs().sum() == 0


def _coloured_images(colour: int, n: int, seed: int) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        img = 0.4 + 0.1 * torch.rand(3, 96, 96, generator=g)
        s = int(torch.randint(30, 60, (1,), generator=g))
        x, y = (int(v) for v in torch.randint(0, 96 - s, (2,), generator=g))
        img[:, y:y + s, x:x + s] = 0.1
        img[colour, y:y + s, x:x + s] = 0.9
        out.append(img)
    return out


def _label_margin(model, emb) -> float:
    """Mean over held-out images of (score of the true class - score of the other), top proposals."""
    margins = []
    with torch.no_grad():
        for cls, colour in ((0, 0), (1, 2)):
            enc = model.encode(_coloured_images(colour, 4, seed=100 + cls))
            for x in enc.box_features:
                p = torch.sigmoid(model.roi_heads.box_predictor.cls_score(x[:20], emb)[:, :2])
                margins.append((p[:, cls] - p[:, 1 - cls]).mean())
    return float(torch.stack(margins).mean())


def test_image_labels_teach_the_label_to_the_regions(unit_embeddings):
    """A few image-label steps (default rule and scope, no boxes at all) move each class's score up
    on the regions of images showing it, relative to the other class."""
    from detector import OpenVocabDetector, load_detector

    torch.manual_seed(0)
    model = OpenVocabDetector(load_detector("tiny").config)
    emb = unit_embeddings(3)
    before = _label_margin(model.eval(), emb)
    model.train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    red, blue = _coloured_images(0, 16, seed=1), _coloured_images(2, 16, seed=2)
    for step in range(12):
        i = (step * 2) % 16
        images, labels = [red[i], blue[i], red[i + 1], blue[i + 1]], [[0], [1], [0], [1]]
        loss = model.image_label_loss(images, labels, emb, weight=1.0)["loss_image_label"]
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = _label_margin(model.eval(), emb)
    assert after > before + 0.05, (before, after)

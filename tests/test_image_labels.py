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


def test_loss_is_bce_of_chosen_proposal():
    logits = LOGITS.clone().requires_grad_(True)
    loss = image_label_loss([logits], [[Choice(1, (0, 2))]])
    target = torch.tensor([1.0, 0.0, 1.0])
    expected = torch.nn.functional.binary_cross_entropy_with_logits(LOGITS[1], target, reduction="sum")
    assert torch.allclose(loss, expected)
    loss.backward()
    assert logits.grad[[0, 2, 3]].abs().sum() == 0 and logits.grad[1].abs().sum() > 0


@pytest.mark.parametrize("rule", ["max_size", "image_box", "max_score"])
def test_image_label_gradients_reach_only_the_classifier(tiny_model, unit_embeddings, rule):
    tiny_model.train()
    stats_before = {k: v.clone() for k, v in tiny_model.state_dict().items() if "running" in k}
    loss = tiny_model.image_label_loss([torch.rand(3, 96, 128), torch.rand(3, 64, 80)], [[0, 2], [1]],
                                       unit_embeddings(3), rule=rule)["loss_image_label"]
    assert loss.item() > 0
    loss.backward()
    for name, p in tiny_model.named_parameters():
        has_grad = p.grad is not None and p.grad.abs().sum() > 0
        if name.startswith("roi_heads.box_predictor.cls_score."):
            assert has_grad, name
        else:
            assert not has_grad, name
    for k, v in tiny_model.state_dict().items():  # no normalisation statistics moved either
        if k in stats_before:
            assert torch.equal(v, stats_before[k]), k


def test_box_head_scope_also_trains_box_head_but_never_rpn_or_regression(unit_embeddings):
    from detector import OpenVocabDetector, load_detector

    model = OpenVocabDetector(load_detector("tiny").config.replace(image_label_scope="box_head")).train()
    model.image_label_loss([torch.rand(3, 96, 128)], [[1]], unit_embeddings(3))["loss_image_label"].backward()
    grads = {n for n, p in model.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
    assert any(n.startswith("roi_heads.box_head") for n in grads)
    assert not any(n.startswith(("rpn.", "roi_heads.box_predictor.bbox_pred", "backbone.body")) for n in grads)


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

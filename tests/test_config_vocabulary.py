import pytest

from detector import DetectorConfig, parse_vocabulary


def test_config_json_round_trip():
    cfg = DetectorConfig(backbone="tiny", anchor_sizes=(8, 16, 32, 64, 128), trained_class_names=["cat"],
                         text_encoder_options={"dim": 64})
    again = DetectorConfig.from_json(cfg.to_json())
    assert again == cfg
    assert isinstance(again.anchor_sizes, tuple)


@pytest.mark.parametrize("bad", ['{"backbone": "tiny", "bogus": 1}', "[1, 2]", "{not json"])
def test_config_rejects_bad_json(bad):
    with pytest.raises(ValueError):
        DetectorConfig.from_json(bad)


def test_config_validates_values():
    with pytest.raises(ValueError, match="nope"):
        DetectorConfig.from_dict({"nope": 1})
    with pytest.raises(ValueError, match="image_label_num_proposals"):
        DetectorConfig(image_label_num_proposals=0)
    with pytest.raises(ValueError):
        DetectorConfig(score_threshold=1.5)


def test_vocabulary_normalises_and_deduplicates():
    assert parse_vocabulary("  cat,dog\n  potted   plant ,Cat, ,dog ") == ["cat", "dog", "potted plant"]
    assert parse_vocabulary("a;b, c") == ["a;b", "c"]  # only commas and newlines separate
    assert parse_vocabulary(["Crème brûlée", "crème brûlée", "猫"]) == ["Crème brûlée", "猫"]
    assert parse_vocabulary("cat, ;, 🐱, ..., t-shirt, 3") == ["cat", "🐱", "t-shirt", "3"]  # punctuation alone is no name
    # a list sent to the HTTP API's text field arrives as its Python repr: its names, not "['cat'"
    assert parse_vocabulary("['cat', 'cup']") == parse_vocabulary('["cat", "cup"]') == ["cat", "cup"]
    assert parse_vocabulary("[cat], [dog]") == ["[cat]", "[dog]"]  # not a list literal: text as always
    assert parse_vocabulary("[1, 2]") == ["[1", "2]"]
    with pytest.raises(ValueError, match="vocabulary is empty"):  # deep nesting: no crash, punctuation only
        parse_vocabulary("[" * 5000 + "]" * 5000)


@pytest.mark.parametrize("empty", ["", " , ,\n", [], None, " , ,, ;  ,", "...", ["-", "!?"]])
def test_empty_vocabulary_is_a_clear_error(empty):
    with pytest.raises(ValueError, match="vocabulary is empty"):
        parse_vocabulary(empty)


def test_overlong_name_rejected():
    with pytest.raises(ValueError, match="at most 200 characters"):
        parse_vocabulary("x" * 500)


def test_old_checkpoint_configs_with_the_loss_rule_still_load():
    """The image-label rule and weight moved to the run's config; old config.json files keep loading."""
    cfg = DetectorConfig.from_dict({**DetectorConfig().to_dict(), "image_label_rule": "max_size",
                                    "image_label_weight": 0.1})
    assert "image_label_rule" not in cfg.to_dict() and cfg == DetectorConfig()

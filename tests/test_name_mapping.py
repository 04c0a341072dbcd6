"""Issue 20: typed names read as the ImageNet classes people mean (WordNet), close names compete,
and the offline model says which names it cannot see."""

import time

import pytest
import torch

from bench.name_readings import corpus_weights, judge, load_corpus
from detector import Predictor
from detector.imagenet_scorer import compete, imagenet_class_names, nearest_visual_neighbours, wordnet_logits
from detector.wordnet_names import MIN_COVERAGE, find_lemma, modifier_classes, table, wordnet_classes, wordnet_senses

CLASSES = imagenet_class_names()


@pytest.fixture(scope="module")
def offline():
    return Predictor.from_pretrained("offline", device="cpu")


def _one_hot(name: str) -> torch.Tensor:
    p = torch.zeros(1, 1000)
    p[0, CLASSES.index(name)] = 1.0
    return p


def _named(idx) -> set[str]:
    return {CLASSES[k] for k in idx}


def test_wordnet_lookup_spellings():
    assert {"moped"} <= _named(wordnet_classes("motorcycle"))
    assert len(wordnet_classes("dog")) == 118 and wordnet_classes("Dogs") == wordnet_classes("dog")
    assert find_lemma("a Cat") == "cat" and find_lemma("mice") == "mouse" and find_lemma("boxes") == "box"
    assert find_lemma("cell phone") == "cellphone"  # the words run together
    assert _named(wordnet_classes("fridge")) == {"refrigerator"}  # a kind of refrigerator: the class above
    assert {"crane", "crane bird"} <= _named(wordnet_classes("crane"))  # every sense counts
    turtles = _named(wordnet_classes("turtle"))
    assert "box turtle" in turtles and "jersey" not in turtles  # "turtle" is a turtleneck's second name
    for nothing in ("giraffe", "pagoda", "", "   ", "猫", "xqzvw", "a" * 200):
        assert wordnet_classes(nothing) == ()


def test_young_female_and_male_animals_read_as_their_kind():
    """WordNet files "kitten" under young mammal, with no class below it; its gloss ("young
    domestic cat") names the kind a photo of one shows. Only animals, only a lemma's first sense
    and only a kind of at most MAX_KIND classes: "kid" is a child before a goat, "pen" a pen
    before a swan, "woman" (adult female person) no scuba diver, "mare" (female equine animal)
    not every animal."""
    cats = {"tabby", "tiger cat", "Persian cat", "Siamese cat", "Egyptian cat"}
    assert _named(wordnet_classes("kittens")) == cats
    assert wordnet_classes("puppy") == wordnet_classes("dog")
    assert _named(wordnet_classes("cow")) == {"ox"} and _named(wordnet_classes("calf")) == {"ox"}
    assert _named(wordnet_classes("foal")) == {"sorrel"} and _named(wordnet_classes("lamb")) == {"ram"}
    assert "ibex" not in _named(wordnet_classes("kid")) and "black swan" not in _named(wordnet_classes("pen"))
    assert _named(wordnet_classes("tabby")) == {"tabby"}  # its first sense is the class itself
    for nothing in ("woman", "mare", "child", "queen"):
        assert wordnet_classes(nothing) == (), nothing


def test_corpus_reads_as_people_mean(offline):
    """bench/name_readings.py's served rule on the hand-checked corpus. The issue's target is 90 %;
    the mapping reaches 170 of 189, 89.9 % (text similarity alone: 45 %; WordNet with every sense:
    84 %), so this guards 89 % and the gain of each rule (see the docs)."""
    corpus = load_corpus()
    assert len(corpus) >= 100
    names = [n for n, _, _ in corpus]

    def share(rule):
        weights = corpus_weights(offline.region_scorer, offline.embed, names, rule)
        return sum(not judge(w, e, a) for (_, e, a), w in zip(corpus, weights)) / len(corpus)

    served, before = share({}), share(None)
    every_sense = share({"sense_margin": float("inf"), "neighbours": False})
    assert served >= 0.89 and served >= before + 0.3 and served > every_sense, (served, before, every_sense)
    served = corpus_weights(offline.region_scorer, offline.embed, names, {})
    # The served weights are what the scorer uses for a name typed alone.
    _, emb = offline.embed(["motorcycle"])
    alone = torch.sigmoid(offline.region_scorer.match_logits(emb, ["motorcycle"]))[0]
    assert torch.allclose(alone, served[names.index("motorcycle")])


def test_senses_that_mean_the_name(offline):
    """A sense counts when its classes cover a fair share of its kinds, and when its text is not far
    below the name's best sense: "spider" is not the frying pan, "drill" not the baboon, "person"
    not a scuba diver; "crane" stays the machine and the bird."""
    sizes = table()["sizes"]
    assert wordnet_senses("person") == () and wordnet_classes("someone") == ()  # 3 classes of 10,297 kinds
    assert len(table()["synsets"]["00007846"]) < MIN_COVERAGE * sizes["00007846"]
    assert len(wordnet_classes("animal")) > 300  # 398 of 4,017 still counts
    assert len(wordnet_senses("spider")) == 2  # WordNet's arachnid and frying pan: the text picks
    names, emb = offline.embed(["spider", "drill", "key", "crane", "person"])
    a = torch.sigmoid(offline.region_scorer.match_logits(emb, names))
    idx = {n: CLASSES.index(n) for n in ("frying pan", "garden spider", "baboon", "power drill", "coral reef",
                                         "scuba diver")}
    assert a[0, idx["garden spider"]] > 0.9 and a[0, idx["frying pan"]] < 0.1
    assert a[1, idx["power drill"]] > 0.9 and a[1, idx["baboon"]] < 0.1
    assert a[2, idx["coral reef"]] < 0.1
    assert a[3, CLASSES.index("crane")] > 0.9 and a[3, CLASSES.index("crane bird")] > 0.9  # machine and bird
    assert a[4, idx["scuba diver"]] < 0.5 and not offline.name_readings(["person"])[0].seen


def test_nearest_visual_neighbours():
    """The nearest class by the classifier's weights, kept only when close enough; on the packaged
    network a motor scooter is the moped's and a tusker the elephant's, a tiger is not the lion's."""
    w = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0]])
    assert nearest_visual_neighbours(w, 0.9).tolist() == [1, 0, -1]
    assert nearest_visual_neighbours(w, 0.0).tolist() == [1, 0, 1]


def test_visual_neighbours_count_for_the_name(offline):
    near = offline.region_scorer.visual_neighbours
    assert CLASSES[int(near[CLASSES.index("moped")])] == "motor scooter"
    assert int(near[CLASSES.index("lion")]) == -1  # its nearest (cougar, 0.25) is too far
    names, emb = offline.embed(["motorcycle", "elephant", "lion"])
    a = torch.sigmoid(offline.region_scorer.match_logits(emb, names))
    assert a[0, CLASSES.index("motor scooter")] > 0.5 and a[1, CLASSES.index("tusker")] > 0.5
    assert a[2, CLASSES.index("cougar")] < 0.5 and a[2, CLASSES.index("tiger")] < 0.1  # cougar: "mountain lion"


def test_a_modifier_is_not_the_thing(offline):
    """English compounds name their head last: a tiger cat is a cat, a spider web a web. Such a
    class does not count for the modifier typed alone, whatever the text says (it did: "tiger" read
    tiger cat at 0.52, "spider" spider web at 0.59), unless WordNet puts it under the name."""
    assert {"tiger cat", "tiger shark", "tiger beetle"} <= _named(modifier_classes("Tigers"))
    assert "car wheel" in _named(modifier_classes("car")) and modifier_classes("laptop") == ()  # "laptop computer"
    assert modifier_classes("") == () and modifier_classes("猫") == ()
    names, emb = offline.embed(["tiger", "spider", "laptop"])
    a = torch.sigmoid(offline.region_scorer.match_logits(emb, names))
    assert a[0, CLASSES.index("tiger cat")] < 0.05 and a[0, CLASSES.index("tiger")] > 0.9
    assert a[1, CLASSES.index("spider web")] < 0.05 and a[1, CLASSES.index("garden spider")] > 0.9
    assert a[2, CLASSES.index("laptop")] > 0.9
    plain = torch.sigmoid(wordnet_logits(offline.region_scorer.match_logits(emb), names, modifiers=False))
    assert plain[0, CLASSES.index("tiger cat")] > 0.5  # the rule, not the text, removes it


def test_a_whole_reads_as_its_members():
    """WordNet's member meronyms: a train is its locomotives and cars (a photo of a steam locomotive
    is one of a train); a group with no class of its own is left alone ("pack" of hounds would read
    every dog)."""
    assert {"bullet train", "electric locomotive", "steam locomotive", "passenger car"} <= _named(
        wordnet_classes("train"))
    assert "Chihuahua" not in _named(wordnet_classes("pack"))


def test_frequent_senses_count_whatever_their_first_name(offline):
    """A sense that WordNet's tagged text uses the lemma for counts even when the lemma is not its
    first name: a "plane" is mostly an airplane; a "turtle" is still not a turtleneck (rare). The
    reading names the tool so that it does not look like a second airplane."""
    assert {"airliner", "plane"} <= _named(wordnet_classes("plane"))
    assert "jersey" not in _named(wordnet_classes("turtle"))
    plane = offline.name_readings(["plane"])[0]
    assert plane.classes[:2] == ["airliner", "plane (carpenter's plane)"], plane
    assert offline.name_readings(["lion"])[0].classes == ["lion"]  # unambiguous names stay as they are


def test_issue_examples(offline):
    scorer = offline.region_scorer
    names, emb = offline.embed(["motorcycle", "tiger", "book", "lion"])
    moped = scorer.probabilities(_one_hot("moped"), emb[:1], names=names[:1])
    assert moped[0, 0] > 0.9  # was 0.54 through text alone
    tiger = scorer.probabilities(_one_hot("lion"), emb[1:2], names=names[1:2])
    assert tiger[0, 0] < 0.1  # "tiger" took 0.58 of "lion"
    # Without names (old callers) the text mapping is unchanged.
    assert scorer.probabilities(_one_hot("moped"), emb[:1])[0, 0] < 0.7


def test_close_names_compete(offline):
    scorer = offline.region_scorer
    names, emb = offline.embed(["lion", "cat", "tiger", "cheetah"])
    p = scorer.probabilities(_one_hot("lion"), emb, names=names)[0]
    assert p[0] > 0.9 and p[1] < 0.1 and p[2] < 0.1 and p[3] < 0.1, p
    # Names sharing classes: "dog" alone reads a beagle as a dog ...
    names, emb = offline.embed(["dog", "beagle", "cat"])
    assert scorer.probabilities(_one_hot("beagle"), emb[:1], names=names[:1])[0, 0] > 0.9
    # ... but with "beagle" typed the beagle goes to "beagle"; a collie is still a dog.
    p = scorer.probabilities(torch.cat([_one_hot("beagle"), _one_hot("collie")]), emb, names=names)
    assert p[0, 1] > 0.9 and p[0, 0] < 0.1 and p[1, 0] > 0.9 and p[1, 1] < 0.1, p


def test_unrelated_names_change_nothing(offline):
    scorer = offline.region_scorer
    g = torch.Generator().manual_seed(0)
    regions = torch.softmax(torch.randn(6, 1000, generator=g) * 4, dim=-1)
    regions[0] = _one_hot("tabby")[0]
    names, emb = offline.embed(["cat", "car", "banana", "violin"])
    alone = scorer.probabilities(regions, emb[:1], names=names[:1])[:, 0]
    many = scorer.probabilities(regions, emb, names=names)[:, 0]
    assert torch.allclose(alone, many, atol=1e-3), (alone, many)


def test_compete_keeps_ties_and_single_names():
    w = torch.tensor([[1.0, 0.0, 0.0], [1.0, 0.0, 0.0], [0.6, 0.6, 0.6], [0.3, 0.0, 0.0]])
    out = compete(w)
    assert torch.equal(out[:2], w[:2])  # the same meaning twice: both keep it
    assert out[2, 0] < 0.5 and torch.equal(out[2, 1:], w[2, 1:])  # a third of a broader name: reduced
    assert torch.equal(out[3], w[3])  # a weight below 0.5 neither competes nor changes
    assert torch.equal(compete(w[:1]), w[:1])


def test_predict_reads_names_through_wordnet(offline, monkeypatch):
    seen = []
    original = offline.region_scorer.probabilities

    def spy(regions, emb, adapters=None, names=None):
        seen.append(names)
        return original(regions, emb, adapters=adapters, names=names)

    monkeypatch.setattr(offline.region_scorer, "probabilities", spy)
    offline.predict(torch.rand(3, 96, 128).mul(255).byte().permute(1, 2, 0).numpy(), "motorcycles, cup")
    assert seen and seen[-1] == ["motorcycles", "cup"]


def test_name_readings(offline):
    readings = offline.name_readings(["motorcycle", "giraffe", "cat", "lion", "café", "猫", "sky"])
    by = {r.name: r for r in readings}
    assert by["motorcycle"].seen and by["motorcycle"].classes[0] == "moped"
    dog = offline.name_readings(["dog"])[0]
    assert dog.count == 118 and dog.classes == ["Chihuahua", "Japanese spaniel", "Maltese dog"]  # ImageNet order
    assert not by["giraffe"].seen and by["giraffe"].classes == []
    assert by["lion"].classes == ["lion"] and "lion" not in by["cat"].classes  # in this vocabulary
    assert not by["sky"].seen and not by["猫"].seen
    assert offline.name_readings(["cat"]) is offline.name_readings(["cat"])  # cached per vocabulary
    with pytest.raises(ValueError):
        offline.name_readings("  ,  ")


def test_two_thousand_names_are_fast(offline):
    names = [f"thing {i}" for i in range(1999)] + ["cat"]
    offline.embed(names)  # the text encoder's cost is paid once per name (disk cache)
    t = time.perf_counter()
    readings = offline.name_readings(names)
    _, emb = offline.embed(names)
    p = offline.region_scorer.probabilities(_one_hot("tabby").repeat(50, 1), emb, names=names)
    elapsed = time.perf_counter() - t
    assert len(readings) == 2000 and p.shape == (50, 2000) and p[0, -1] > 0.5
    assert elapsed < 5.0, elapsed  # ~0.3 s + ~0.3 s on 2 loaded cores


def test_defaults_and_examples_are_seen(offline):
    """Every name the app offers by default or as an example is one the offline model sees."""
    from app.ui.assign_tab import default_tag
    from app.ui.detect_tab import DEFAULT_VOCABULARY
    from detector.presets import PRESETS
    from detector.vocabulary import PRESETS as VOCABULARIES

    names = [n.strip() for n in DEFAULT_VOCABULARY.split(",")] + [default_tag(PRESETS["offline"])]
    names += ["mug", "bottle"]  # the Tag tab's placeholder example
    for preset in ("Household", "Street"):
        names += VOCABULARIES[preset]
    unseen = [r.name for r in offline.name_readings(names) if not r.seen]
    assert not unseen, unseen


def test_broad_names_score_nothing_on_an_unreadable_region(offline):
    """"dog" covers 118 classes: a flat distribution would give it 0.118 (above the threshold) on
    every box; the score is its mass above that chance level."""
    scorer = offline.region_scorer
    names, emb = offline.embed(["dog", "animal", "beagle"])
    flat = torch.full((1, 1000), 1e-3)
    assert scorer.probabilities(flat, emb, names=names).max() < 0.005
    sure = 0.9 * _one_hot("beagle") + 0.1 * _one_hot("collie")
    p = scorer.probabilities(sure, emb[:1], names=names[:1])
    assert p[0, 0] > 0.85


def test_app_says_what_each_name_reads_as(offline, tiny_predictor, tmp_path):
    from app.service import AppService

    line = AppService(tmp_path / "a", predictor=offline).name_readings("giraffe, <b>cat</b>, dog, lion")
    assert line.endswith("Not seen by this model: **giraffe**.")  # one group, last
    assert "what they resemble: **&lt;b&gt;cat&lt;/b&gt;** (like " in line  # no class of its own, near the cats
    assert "&lt;b&gt;cat&lt;/b&gt;" in line and "<b>" not in line  # user text is escaped
    assert "**dog** → Chihuahua, Japanese spaniel, Maltese dog (+115 more)" in line
    assert "**lion** → lion" in line
    assert AppService(tmp_path / "b", predictor=tiny_predictor).name_readings("cat") == ""  # reads any name
    many = AppService(tmp_path / "c", predictor=offline).name_readings(", ".join(f"thing {i}" for i in range(2000)))
    assert "Not seen by this model: **thing 0**, **thing 1**" in many and many.endswith(" more.")
    assert many.count("**") <= 200 and len(many) < 4000  # at most 50 names of each kind, not a wall of 2,000


def test_an_unseen_name_that_still_gets_weak_boxes_says_what_it_resembles(offline, tmp_path):
    """"cat img src x onerror alert 1" maps onto no class (weight < 0.5) but is near the cats, so it
    got a 0.22 box while the line said "Not seen by this model" about it."""
    from app.service import AppService

    odd, giraffe = offline.name_readings(["cat img src x onerror alert 1", "giraffe"])
    assert not odd.seen and not odd.classes and any("cat" in c for c in odd.loose)
    assert not giraffe.seen and giraffe.loose == ()
    line = AppService(tmp_path / "app", predictor=offline).name_readings("cat img src x onerror alert 1, giraffe")
    assert "weak boxes from what they resemble: **cat img src x onerror alert 1** (like " in line
    assert line.endswith("Not seen by this model: **giraffe**.")


def test_a_name_learnt_from_tags_alone_is_not_called_unseen(offline, tmp_path, monkeypatch):
    """After a run trained "person" from tags, the Detect tab said "Not seen by this model: person"
    beside a 0.02 "person" box and the Model tab's "trained on person"."""
    from app.service import AppService

    monkeypatch.setattr(offline.model.config, "trained_class_names", ["Person", "cat"])
    line = AppService(tmp_path / "a", predictor=offline).name_readings("person, giraffe, cat")
    assert "Learnt from your tags alone, with no ImageNet class to build on (expect low scores): **person**." in line
    assert line.endswith("Not seen by this model: **giraffe**.") and "**cat** →" in line


def test_the_app_says_what_the_model_sees_in_an_image(offline, tiny_predictor, tmp_path):
    """On scikit-image's coffee "cup" finds nothing (the network reads an espresso): the Detect
    tab says what the model sees whatever was typed, so a person has a name that works; nothing
    for a black image or for a model that reads any name."""
    import numpy as np
    import skimage.data
    from PIL import Image

    from app.service import AppService

    coffee = np.asarray(Image.fromarray(skimage.data.coffee()).resize((256, 171)))
    service = AppService(tmp_path / "a", predictor=offline)
    line = service.image_classes(coffee)
    assert line.startswith("In this image the model sees") and "**espresso** 0.6" in line, line
    assert line.endswith("adds up all the classes it reads as, so it can be higher."), line
    assert "no ImageNet class" in service.image_classes(np.zeros((64, 64, 3), np.uint8))
    assert service.image_classes(None) == ""
    assert AppService(tmp_path / "b", predictor=tiny_predictor).image_classes(coffee) == ""
    # The detection before it pays for the image once: the same boxes, read from the cache.
    assert service.predictor.image_classes(coffee) == service.predictor.image_classes(coffee.copy())

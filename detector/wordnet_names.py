"""Which ImageNet-1k classes a typed name covers, from WordNet's hierarchy (no network, no package).

Every ImageNet-1k class is a WordNet noun synset, so a name's classes are those under any of its
noun senses: "motorcycle" -> moped, motor scooter; "dog" -> the 118 breeds; "crane" -> the
machine and the bird. Text similarity alone gets such names wrong ("book" -> bookcase, "tiger"
matching "lion"), because it compares words, not meanings.

The table `data/imagenet_wordnet.json` (0.28 MB) is generated from Princeton WordNet 3.0 by
`data/make_imagenet_wordnet.py`: no well-kept PyPI package ships WordNet's data for offline use
(`nltk` and `wn` download it at run time), see docs/offline_zero_shot.md. Names WordNet does not
know, or knows with no ImageNet class under them ("giraffe"), or with too few of their kinds to
mean the name (`MIN_COVERAGE`: "person" has only ballplayer, groom and scuba diver), fall back to
text similarity in `detector.imagenet_scorer`, which also picks among a name's senses
(`wordnet_logits`: a "spider" is not the frying pan WordNet also calls so).
"""

from __future__ import annotations

import json
import re
from functools import lru_cache
from pathlib import Path

TABLE = Path(__file__).with_name("data") / "imagenet_wordnet.json"
# A sense counts only when its ImageNet classes are a fair share of its kinds (the synsets under it
# in WordNet): "person" (also "someone", "individual") has 10,297 and ImageNet-1k holds three of
# them (ballplayer, groom, scuba diver): 0.0003. Read through WordNet, every person became a scuba
# diver at weight 0.998, which tags could not teach away (bench/loop_real.py seed 0: novel-name
# gain 1.57x -> 1.33x, all of it "person"). Below this share a sense is left to text similarity
# ("plant" the organism: 2 of 4,488; "flower": 2 of 468 still counts, "animal": 398 of 4,017).
MIN_COVERAGE = 0.001
# Regular English plural endings, tried in order (WordNet's own "morphy" rules for nouns);
# irregular plurals ("mice", "geese") come from the table's `exceptions`.
PLURAL_RULES = (("ches", "ch"), ("shes", "sh"), ("sses", "ss"), ("xes", "x"), ("zes", "z"), ("ies", "y"),
                ("men", "man"), ("ses", "s"), ("s", ""))
ARTICLE = re.compile(r"^(a|an|the)\s+")


@lru_cache(maxsize=1)
def table() -> dict:
    """The generated table (read once; ~20 ms)."""
    return json.loads(TABLE.read_text(encoding="utf-8"))


def lemma_key(name: str) -> str:
    """How WordNet spells lemmas: lower case, words separated by single spaces, no article."""
    key = re.sub(r"[\s_\-]+", " ", name.casefold()).strip()
    return ARTICLE.sub("", key)


def find_lemma(name: str) -> str | None:
    """The WordNet lemma (with ImageNet classes) that `name` spells, trying its singular and the
    words run together ("cell phone" / "cellphone"); None when there is none."""
    lemmas, exceptions = table()["lemmas"], table()["exceptions"]
    key = lemma_key(name)
    if not key:
        return None
    for form in (key, key.replace(" ", "")):
        if form in lemmas:
            return form
        if form in exceptions:
            return exceptions[form]
        for suffix, repl in PLURAL_RULES:
            if form.endswith(suffix) and len(form) > len(suffix) + 1:
                base = form[: len(form) - len(suffix)] + repl
                if base in lemmas:
                    return base
    return None


@lru_cache(maxsize=20_000)
def wordnet_senses(name: str) -> tuple[tuple[int, ...], ...]:
    """The ImageNet class indices under each noun sense of `name` that covers enough of its kinds
    (`MIN_COVERAGE`), in WordNet's sense order (most frequent first); empty: WordNet has none."""
    lemma = find_lemma(name)
    if lemma is None:
        return ()
    synsets, sizes = table()["synsets"], table()["sizes"]
    return tuple(tuple(synsets[o]) for o in table()["lemmas"][lemma] if len(synsets[o]) >= MIN_COVERAGE * sizes[o])


@lru_cache(maxsize=1)
def _modifier_index() -> dict[str, frozenset[int]]:
    """Word run -> the ImageNet classes with a lemma that has the run before its last word
    ("tiger" -> tiger cat, tiger shark, tiger beetle), less classes with a lemma that *is* the run."""
    from timm.data import ImageNetInfo

    info = ImageNetInfo()
    index: dict[str, set[int]] = {}
    exact: dict[str, set[int]] = {}
    for k in range(1000):
        for lemma in info.index_to_description(k).split(","):
            words = lemma_key(lemma).split()
            exact.setdefault(" ".join(words), set()).add(k)
            for i in range(len(words) - 1):
                for j in range(i + 1, len(words)):
                    index.setdefault(" ".join(words[i:j]), set()).add(k)
    return {run: frozenset(ks - exact.get(run, set())) for run, ks in index.items()}


@lru_cache(maxsize=20_000)
def modifier_classes(name: str) -> tuple[int, ...]:
    """ImageNet classes whose name uses `name` only as a modifier: English compounds name their
    head last, so a tiger cat is a cat, a spider web a web and a car wheel a wheel, not the thing
    typed (`imagenet_scorer.wordnet_logits` keeps them from counting for it); sorted indices."""
    key = lemma_key(name)
    forms = {key, find_lemma(name) or key}
    forms |= {key[: len(key) - len(s)] + r for s, r in PLURAL_RULES if key.endswith(s) and len(key) > len(s) + 1}
    index = _modifier_index()
    return tuple(sorted({k for form in forms for k in index.get(form, ())}))


def wordnet_classes(name: str) -> tuple[int, ...]:
    """Sorted ImageNet class indices under any of `name`'s senses (`wordnet_senses`)."""
    return tuple(sorted({k for sense in wordnet_senses(name) for k in sense}))

"""Which ImageNet-1k classes a typed name covers, from WordNet's hierarchy (no network, no package).

Every ImageNet-1k class is a WordNet noun synset, so a name's classes are those under any of its
noun senses: "motorcycle" -> moped, motor scooter; "dog" -> the 118 breeds; "crane" -> the
machine and the bird. Text similarity alone gets such names wrong ("book" -> bookcase, "tiger"
matching "lion"), because it compares words, not meanings.

The table `data/imagenet_wordnet.json` (0.14 MB) is generated from Princeton WordNet 3.0 by
`data/make_imagenet_wordnet.py`: no well-kept PyPI package ships WordNet's data for offline use
(`nltk` and `wn` download it at run time), see docs/offline_zero_shot.md. Names WordNet does not
know, or knows with no ImageNet class under them ("giraffe"), or with too few to mean the name
(`SPARSE_SENSES`: "person" has only ballplayer, groom and scuba diver), fall back to text
similarity in `detector.imagenet_scorer`.
"""

from __future__ import annotations

import json
import re
from functools import lru_cache
from pathlib import Path

TABLE = Path(__file__).with_name("data") / "imagenet_wordnet.json"
# Senses whose few ImageNet classes are not what the name means: "person" (also "someone",
# "individual") has thousands of kinds in WordNet and ImageNet-1k holds three of them (ballplayer,
# groom, scuba diver). Read through WordNet, every person became a scuba diver at weight 0.998,
# which tags could not teach away (bench/loop_real.py seed 0: novel-name gain 1.57x -> 1.33x, all
# of it "person"); these names keep text similarity and read as not seen.
SPARSE_SENSES = frozenset({"00007846"})
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
def wordnet_classes(name: str) -> tuple[int, ...]:
    """Sorted ImageNet class indices under any noun sense of `name` (empty: WordNet has none)."""
    lemma = find_lemma(name)
    if lemma is None:
        return ()
    synsets = table()["synsets"]
    return tuple(sorted({k for offset in table()["lemmas"][lemma] if offset not in SPARSE_SENSES
                         for k in synsets[offset]}))

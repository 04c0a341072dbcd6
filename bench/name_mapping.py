"""How the tags should teach the offline region scorer what a name means: the choices, measured.

`detector.name_adapters` adds a learned delta to the match logits between each tagged name and the
1000 ImageNet classes; `train.tag_features.adapter_loss` trains it. This script trains the deltas
alone (no head), on the `loop_real` benchmark's tagged scenes of one seed (the run's held-out
fifth of them left out, as a run does), and scores box AP50 on its `heldout` and `unseen` scenes
with the region scorer alone (ensemble weight 1 for every name), for each rule that picks the
proposal a present name trains (`max_size`: Detic's default for the head; `max_score`: the
candidate scoring highest for the name), learning rate and number of steps (batches of 8, Adam).

    python bench/name_mapping.py [--seed 0] [--rules max_size max_score] [--lrs 0.02 0.05] [--steps 100 300]

The rule and learning rate `train.finetune` uses (max_score, 0.02) were chosen from this table on
seed 0's `heldout` scenes; `unseen` (photos no choice looked at) is reported beside it.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.loop_real import VOCABULARY, _write, box_ap50, build_scenes, summarise  # noqa: E402
from detector import Predictor  # noqa: E402
from detector.image_labels import choose_proposals  # noqa: E402
from train.data import read_label_dataset, vocabulary_of  # noqa: E402
from train.heldout import split_heldout  # noqa: E402
from train.tag_features import cache_tag_images  # noqa: E402


def _loss(model, batch, base, rows, rule):
    """`adapter_loss` with the present names' proposal picked by `rule` (max_score is what it uses)."""
    import torch.nn.functional as F

    deltas = model.name_adapters.deltas[torch.tensor(rows)]
    match = torch.sigmoid(base + deltas)
    terms = []
    for item in batch:
        scores = (item.regions @ match.t()).clamp(1e-6, 1 - 1e-6)
        for c in choose_proposals(rule, item.boxes, scores.detach(), item.positives):
            terms.append(F.binary_cross_entropy(scores[c.proposal, list(c.labels)], torch.ones(len(c.labels))))
        absent = sorted(set(item.negatives) | set(item.others))
        if absent:
            top = scores[:, absent].max(dim=0).values
            terms.append(F.binary_cross_entropy(top, torch.zeros_like(top)))
    return torch.stack(terms).mean()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--rules", nargs="+", default=["max_size", "max_score"])
    ap.add_argument("--lrs", nargs="+", type=float, default=[0.02, 0.05])
    ap.add_argument("--steps", nargs="+", type=int, default=[100, 300])
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    scenes = build_scenes(args.seed)
    work = Path(tempfile.mkdtemp(prefix="name-mapping-"))
    paths = _write(scenes["tagged"], work / "images")
    cats = {n: i + 1 for i, n in enumerate(VOCABULARY)}
    images = []
    for i, (path, scene) in enumerate(zip(paths, scenes["tagged"])):
        pos, neg = scene.tags()
        images.append({"id": i + 1, "file_name": path.name, "pos_category_ids": [cats[n] for n in pos],
                       "neg_category_ids": [cats[n] for n in neg]})
    (work / "labels.json").write_text(json.dumps({"images": images, "annotations": [],
                                                  "categories": [{"id": v, "name": k} for k, v in cats.items()]}))
    labels, _ = read_label_dataset(work / "labels.json", work / "images")
    names = vocabulary_of([], labels)
    train, _, note = split_heldout(labels)
    predictor = Predictor.from_pretrained("offline", device="cpu")
    predictor.cache_size = 10_000  # every scene is encoded once; only the name mapping changes
    model = predictor.model
    cached, _ = cache_tag_images(model, train, {n.casefold(): i for i, n in enumerate(names)}, 320,
                                 torch.device("cpu"), None, None, predictor.region_scorer)
    _, emb = predictor.embed(names)
    rows = model.name_adapters.extend(emb)
    base = predictor.region_scorer.match_logits(emb, names).detach()
    model.config.trained_class_names, model.config.ensemble_weight_trained = list(names), 1.0

    def score() -> dict:
        out = {}
        for split in ("heldout", "unseen"):
            dets = [predictor.predict(s.image, VOCABULARY, score_threshold=0.0, max_detections=100)[0]
                    for s in scenes[split]]
            out[split] = summarise(box_ap50(scenes[split], dets))
        return out

    results = [{"rule": "before", "lr": None, "steps": 0, **score()}]
    for rule in args.rules:
        for lr in args.lrs:
            for steps in args.steps:
                torch.manual_seed(0)
                with torch.no_grad():
                    model.name_adapters.deltas.zero_()
                opt = torch.optim.Adam([model.name_adapters.deltas], lr=lr)
                rng = random.Random(0)
                for _ in range(steps):
                    loss = _loss(model, rng.sample(cached, min(8, len(cached))), base, rows, rule)
                    opt.zero_grad()
                    loss.backward()
                    opt.step()
                results.append({"rule": rule, "lr": lr, "steps": steps, **score()})
                print(f"{rule} lr {lr} steps {steps} done", flush=True)
    print(f"\nseed {args.seed}, {note}; box AP50 with the region scorer alone\n")
    print("| rule | lr | steps | heldout novel | heldout base | unseen novel | unseen base |")
    print("|---|---|---|---|---|---|---|")
    for r in results:
        cells = [f"{100 * r[s][k]:.1f}" if r[s][k] is not None else "–" for s in ("heldout", "unseen")
                 for k in ("novel", "base")]
        print(f"| {r['rule']} | {r['lr'] or '–'} | {r['steps']} | " + " | ".join(cells) + " |")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()

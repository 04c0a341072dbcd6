"""Did the person's tags help? A fixed held-out share of their tagged images, scored per label.

Every fine-tuning run that trains on tags keeps some tagged images out of training
(`split_heldout`: chosen by a hash of the image's file name, so the same tags give the same split,
with at least one image per label where the label has two or more), and scores them with the
starting model and with each checkpoint (`HeldoutScorer`), exactly as the served model would:

- an image's score for a name is its highest box score for that name (the final, ensembled score
  `OpenVocabDetector.classify` thresholds);
- per label, image-level average precision over the held-out images, with as positives the images
  tagged with the name and as negatives the images tagged "not <name>" and the images tagged with
  other names only (tags are taken as exhaustive: an image tagged "cat" alone has no dog);
- a label with no positive (or no negative) held-out image is "not measurable" (None), never 0;
- the mean over the measurable labels is the run's held-out score.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from detector.images import ImageLoadError, load_image

from .data import LabelSample

log = logging.getLogger("train")

HELDOUT_SHARE = 0.2
MIN_TAGGED_FOR_HELDOUT = 8  # fewer tagged images: train on all of them, no held-out score
ENSEMBLE_WEIGHTS = (1.0, 0.75, 0.5, 0.35)  # region scorer's weight for trained names, chosen per checkpoint


def _key(sample: LabelSample) -> str:
    return hashlib.blake2b(sample.path.name.encode("utf-8"), digest_size=8).hexdigest()


def split_heldout(samples: list[LabelSample], share: float = HELDOUT_SHARE,
                  minimum: int = MIN_TAGGED_FOR_HELDOUT) -> tuple[list[LabelSample], list[LabelSample], str]:
    """(train, held out, a sentence saying what was done). Deterministic by file name."""
    n = len(samples)
    if n == 0:
        return [], [], "no tagged images: nothing to train on"
    if n < minimum:
        return list(samples), [], (f"only {n} tagged image{'s' if n > 1 else ''} (fewer than {minimum}): trained on "
                                   f"{'all of them' if n > 1 else 'it'}, so this run has no held-out score")
    order = sorted(range(n), key=lambda i: _key(samples[i]))
    target = max(1, round(share * n))
    cap = max(target, n // 3)
    held: list[int] = []
    positives: dict[str, list[int]] = {}
    for i in order:
        for name in samples[i].positives:
            positives.setdefault(name.casefold(), []).append(i)
    for name in sorted(positives):  # one image per label where the label can spare one
        imgs = positives[name]
        if len(imgs) < 2 or any(i in held for i in imgs) or len(held) >= cap:
            continue
        held.append(imgs[0])
    for i in order:  # then fill up to the share, in hash order
        if len(held) >= target:
            break
        if i not in held:
            held.append(i)
    kept = set(held)
    train = [s for i, s in enumerate(samples) if i not in kept]
    return train, [samples[i] for i in sorted(held)], f"{len(held)} of {n} tagged images held out (never trained on)"


def average_precision(scores: list[float], positive: list[bool]) -> float | None:
    """Non-interpolated AP (as scikit-learn's `average_precision_score`): the sum over score
    thresholds of recall gained x precision there. Tied scores form one threshold, so their order
    counts for nothing: a label scored 0.01 on every image got AP 1.0 whenever its positive came
    first in the list (an untrained "person" read 1.00 before and after a run)."""
    if not any(positive) or all(positive):
        return None
    ranked = sorted(zip(scores, positive), key=lambda t: -t[0])
    n_pos, tp, seen, ap, i = sum(positive), 0, 0, 0.0, 0
    while i < len(ranked):
        j = i
        while j < len(ranked) and ranked[j][0] == ranked[i][0]:
            j += 1
        hits = sum(p for _, p in ranked[i:j])
        tp, seen = tp + hits, j
        ap += hits / n_pos * tp / seen
        i = j
    return ap


def label_report(samples: list[LabelSample], scores: list[list[float]], names: list[str]) -> dict:
    """{"labels": {name: {"ap", "positives", "negatives"}}, "mean"} for images `samples` whose
    per-name scores are `scores` (rows follow `samples`, columns `names`)."""
    labels = {}
    for j, name in enumerate(names):
        key = name.casefold()
        rows = []
        for sample, row in zip(samples, scores):
            pos = {n.casefold() for n in sample.positives}
            neg = {n.casefold() for n in sample.negatives}
            if key in pos:
                rows.append((row[j], True))
            elif key in neg or (pos and key not in neg):
                rows.append((row[j], False))
        n_pos = sum(p for _, p in rows)
        ap = average_precision([s for s, _ in rows], [p for _, p in rows])
        pos, neg = [s for s, p in rows if p], [s for s, p in rows if not p]
        labels[name] = {"ap": ap, "positives": n_pos, "negatives": len(rows) - n_pos,
                        "separation": (sum(pos) / len(pos) - sum(neg) / len(neg)) if ap is not None else None}
    measured = [v["ap"] for v in labels.values() if v["ap"] is not None]
    margins = [v["separation"] for v in labels.values() if v["separation"] is not None]
    return {"labels": labels, "mean": sum(measured) / len(measured) if measured else None,
            "separation": sum(margins) / len(margins) if margins else None}


def rank_key(report: dict) -> tuple[float, float]:
    """How reports are compared: mean AP first; on a tie (a few held-out images often rank every
    label perfectly), how far the positives' scores sit above the negatives' on average."""
    return (report["mean"] if report["mean"] is not None else -1.0,
            report.get("separation") if report.get("separation") is not None else -1.0)


@dataclass
class HeldoutScorer:
    """Scores the held-out images under one model after another, re-using what does not change.

    The images are encoded once (`Predictor.encode_keeping_pooled`: proposals, region-scorer
    features and the RoI-aligned neck features); a checkpoint that trained only the box head and
    the classifier is then scored by running those alone. `frozen_neck=False` re-encodes each time.
    """

    samples: list[LabelSample]
    names: list[str]
    device: torch.device
    frozen_neck: bool = True
    skipped: list[str] = field(default_factory=list)

    def prepare(self, model, on_image: Callable[[int, int], None] | None = None) -> None:
        from detector.predictor import Predictor

        was_training = model.training
        self.predictor = Predictor(model, device=str(self.device))
        self.embedding = self.predictor.embed(self.names)[1]
        self.encoded, kept = [], []
        for i, sample in enumerate(self.samples):
            try:
                self.encoded.append(self.predictor.encode_keeping_pooled(load_image(sample.path)))
                kept.append(sample)
            except ImageLoadError as e:
                self.skipped.append(str(sample.path))
                log.warning("held-out image skipped: %s", e)
            if on_image:
                on_image(i + 1, len(self.samples))
        self.samples = kept
        model.train(was_training)

    def scores(self, model, trained_names: list[str], w_trained: float | None = None) -> list[list[float]]:
        """Per held-out image, per name: the highest final box score under `model` (with the
        ensemble weight of trained names `w_trained` instead of the model's, when given)."""
        from detector.model import eval_mode
        from detector.predictor import autocast_for
        from detector.region_scorer import class_weights

        weights = None
        if self.predictor.region_scorer is not None:
            served_trained, w_untrained = model.ensemble_weights()
            weights = class_weights(self.names, trained_names, served_trained if w_trained is None else w_trained,
                                    w_untrained)
        out = []
        with eval_mode(model), torch.inference_mode(), autocast_for(self.device):
            for i, enc in enumerate(self.encoded):
                if self.frozen_neck:
                    enc = enc.with_box_features([model.roi_heads.box_head(enc.pooled[0])])
                else:
                    enc = self.predictor.encode_keeping_pooled(load_image(self.samples[i].path))
                s = model.class_scores(enc, 0, self.embedding, self.predictor.region_scorer, weights, self.names)
                out.append(s.max(dim=0).values.float().cpu().tolist() if len(s) else [0.0] * len(self.names))
        return out

    def report(self, model, trained_names: list[str], w_trained: float | None = None) -> dict:
        return label_report(self.samples, self.scores(model, trained_names, w_trained), self.names)

    def best_report(self, model, trained_names: list[str], weights=ENSEMBLE_WEIGHTS) -> tuple[dict, float | None]:
        """(report, w): the ensemble weight of the trained names (how much the region scorer counts
        against the trained head, `detector.region_scorer.ensemble`) that scores best on the held-out
        tags, from `weights` (1.0: the region scorer alone). None without a region scorer."""
        if self.predictor.region_scorer is None:
            return self.report(model, trained_names), None
        best = None
        for w in weights:
            report = self.report(model, trained_names, w)
            if best is None or rank_key(report) > rank_key(best[0]):
                best = (report, w)
        return best


def compare(before: dict | None, after: dict | None) -> dict:
    """Per label before -> after (what the Train tab's table shows) and both means."""
    names = list((after or before or {}).get("labels", {}))
    rows = {}
    for n in names:
        b = (before or {}).get("labels", {}).get(n, {})
        a = (after or {}).get("labels", {}).get(n, {})
        rows[n] = {"before": b.get("ap"), "after": a.get("ap"),
                   "positives": a.get("positives", b.get("positives", 0)),
                   "negatives": a.get("negatives", b.get("negatives", 0))}
    return {"labels": rows, "mean_before": (before or {}).get("mean"), "mean_after": (after or {}).get("mean")}


def heldout_summary(record: dict | None) -> dict | None:
    """A run's held-out record (heldout.json) as people and the API read it: per label before ->
    after, where "after" is the best checkpoint (the one "use this model" serves)."""
    if not record:
        return None
    best = record.get("best")
    after = next((c for c in record.get("checkpoints", []) if best and c["iteration"] == best["iteration"]), None)
    latest = record["checkpoints"][-1] if record.get("checkpoints") else None
    out = compare(record.get("before"), after or latest)
    before_mean, after_mean = out["mean_before"], out["mean_after"]
    return {**out, "images": record.get("images", 0), "note": record.get("note", ""),
            "best_iteration": best["iteration"] if best else None,
            "latest_iteration": latest["iteration"] if latest else None,
            "latest_mean": latest.get("mean") if latest else None,
            "skipped": record.get("skipped", []),
            "change": (after_mean - before_mean) if after_mean is not None and before_mean is not None else None}


def caveat(summary: dict | None) -> str:
    """What the held-out verdict cannot say, in one sentence ("" when nothing): a set already
    scored perfectly before the run cannot show a gain, and one or two positive images per label
    make every AP a coin toss (a run read "1.00 -> 1.00, unchanged" on 5 held-out images)."""
    if not summary or not summary.get("images"):
        return ""
    labels = [v for v in (summary.get("labels") or {}).values() if v.get("before") is not None
              or v.get("after") is not None]
    most = max((v.get("positives", 0) for v in labels), default=0)
    if summary.get("mean_before") is not None and summary["mean_before"] >= 0.999:
        return ("These held-out images were already ranked perfectly before the run, so they cannot show a "
                "gain: tag more images, and harder ones, for a verdict that can.")
    if most <= 2:
        return (f"At most {most} positive held-out image(s) per label: each AP turns on one or two images, so "
                "read the verdict as rough; tag more images for a firmer one.")
    return ""


def plan_from_detic(detic: dict, share: float = HELDOUT_SHARE) -> tuple[int, int, str]:
    """(tagged images, held-out images, the split's sentence) for a Detic label snapshot, without
    reading any image: what a run started now would hold out."""
    from pathlib import Path

    cats = {c["id"]: c["name"] for c in detic.get("categories", [])}
    samples = [LabelSample(Path(str(im["file_name"])), [cats[c] for c in im.get("pos_category_ids", [])],
                           [cats[c] for c in im.get("neg_category_ids", [])]) for im in detic.get("images", [])]
    if share <= 0:
        return len(samples), 0, "no images held out (heldout_share is 0): the run has no held-out score"
    _, held, note = split_heldout(samples, share)
    return len(samples), len(held), note

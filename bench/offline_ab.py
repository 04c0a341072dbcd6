"""Batch-1 CPU time of `Predictor.predict` (`offline` preset, a real 640 px photo) against the
pipeline as it was before issue 23, in one process, interleaved, so a busy machine slows both alike.

"Before" is rebuilt from the same modules: the image uploaded as a float tensor, torchvision's
per-image transform, a blake2b key over every byte, the region scorer image by image, `classify`
(per-image selection and NMS) and three copies to the host, with the frozen batch norms put back
to torchvision's / timm's eleven-op forward. "After" is `Predictor.predict`.

    python bench/offline_ab.py [--size 640] [--runs 9]
"""

from __future__ import annotations

import argparse
import hashlib
import statistics
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from detector import Predictor  # noqa: E402
from detector.backbones import OneOpFrozenBatchNorm2d, OneOpFrozenBatchNormAct2d  # noqa: E402
from detector.images import load_image  # noqa: E402
from detector.predictor import to_detections  # noqa: E402
from detector.region_scorer import class_weights  # noqa: E402
from detector.vocabulary import COCO_CLASSES  # noqa: E402


@contextmanager
def eleven_op_norms(modules):
    """torchvision's / timm's own FrozenBatchNorm forward, as before issue 23."""
    from timm.layers import FrozenBatchNormAct2d
    from torchvision.ops import FrozenBatchNorm2d

    swapped = []
    for module in modules:
        for m in module.modules():
            if type(m) is OneOpFrozenBatchNorm2d:
                m.__class__ = FrozenBatchNorm2d
                swapped.append((m, OneOpFrozenBatchNorm2d))
            elif type(m) is OneOpFrozenBatchNormAct2d:
                m.__class__ = FrozenBatchNormAct2d
                swapped.append((m, OneOpFrozenBatchNormAct2d))
    try:
        yield
    finally:
        for m, cls in swapped:
            m.__class__ = cls


def before(predictor: Predictor, image: np.ndarray, vocab: list[str], threshold: float):
    """The pre-issue-23 predict path for one image (see the module docstring)."""
    from torchvision.models.detection.transform import resize_boxes

    img = load_image(image)
    hashlib.blake2b(img.array.tobytes(), digest_size=16).hexdigest()
    names, emb = predictor.embedder(vocab)
    emb = emb.to(predictor.device)
    cfg = predictor.config
    t = torch.from_numpy(img.array).to(predictor.device).permute(2, 0, 1).float().div_(255)
    with torch.inference_mode():
        enc = predictor.model.encode([t])
        k = min(cfg.region_top_k, len(enc.boxes[0]))
        boxes = resize_boxes(enc.boxes[0][:k].float(), enc.image_sizes[0], enc.original_sizes[0])
        enc.region_embeddings = [predictor.region_scorer.embed_regions(t, boxes)]
        weights = class_weights(names, cfg.trained_class_names, cfg.ensemble_weight_trained,
                                cfg.ensemble_weight_untrained)
        det = predictor.model.classify(enc, emb, threshold, region_scorer=predictor.region_scorer,
                                       clip_weights=weights)[0]
    return to_detections(det, names, img.scale, img.array.shape[:2])


def main() -> None:
    from PIL import Image
    from skimage import data

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=640)
    ap.add_argument("--runs", type=int, default=9)
    ap.add_argument("--threshold", type=float, default=0.05, help="score threshold (low: many detections to compare)")
    args = ap.parse_args()
    photo = np.array(Image.fromarray(data.astronaut()).resize((args.size * 4 // 3, args.size)))
    predictor = Predictor.from_pretrained("offline", device="cpu").at_size(args.size)
    predictor.cache_size = 0
    vocab = list(COCO_CLASSES)
    nets = [predictor.model, predictor.region_scorer.net]
    new, old = predictor.predict(photo, vocab, args.threshold)[0], None
    with eleven_op_norms(nets):
        old = before(predictor, photo, vocab, args.threshold)
    assert len(new) == len(old) > 0 and np.allclose(new.xyxy, old.xyxy, atol=0.05), "the two paths disagree"
    t_new, t_old = [], []
    for _ in range(args.runs):
        t = time.perf_counter()
        predictor.predict(photo, vocab, args.threshold)
        t_new.append(time.perf_counter() - t)
        with eleven_op_norms(nets):
            t = time.perf_counter()
            before(predictor, photo, vocab, args.threshold)
            t_old.append(time.perf_counter() - t)
    m_new, m_old = statistics.median(t_new), statistics.median(t_old)
    print(f"offline preset, {photo.shape[0]}x{photo.shape[1]} photo, batch 1, CPU ({torch.get_num_threads()} "
          f"threads), {args.runs} interleaved runs, {len(new)} detections (same in both)")
    print(f"before issue 23: median {m_old:.3f} s (min {min(t_old):.3f}); now: median {m_new:.3f} s "
          f"(min {min(t_new):.3f}); now / before = {m_new / m_old:.2f}")


if __name__ == "__main__":
    main()

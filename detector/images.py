"""Any image a person can hand us -> an RGB uint8 array, or one clear error.

Handles paths, bytes, PIL images and numpy arrays; EXIF orientation; grayscale, palette, RGBA
(composited on white), CMYK, 16-bit and float modes; and very large images, which are decoded
at reduced size (JPEG draft mode) and downscaled so that no side exceeds `max_side`. The
original size is kept so detections can be reported in the caller's pixel coordinates.
"""

from __future__ import annotations

import io
import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

MAX_SIDE = int(os.environ.get("OVD_MAX_IMAGE_SIDE", "4096"))
MAX_PIXELS = 250_000_000  # refuse decompression bombs before decoding
# Pixels actually decoded (after JPEG's reduced-size draft): bounds decode memory to ~200 MB RGB.
MAX_DECODED_PIXELS = int(os.environ.get("OVD_MAX_DECODED_PIXELS", "64000000"))
Image.MAX_IMAGE_PIXELS = MAX_PIXELS


IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")  # the one list


# Set (by the app, for the training processes it starts) to the folders, separated by ':', that
# image files may be read from, links followed: `list_image_files` skips and `load_image` refuses
# any other. Unset (the CLI, tests): every path is readable.
READ_ROOTS_ENV = "OVD_READ_ROOTS"


def read_roots() -> tuple[Path, ...] | None:
    """The folders images may be read from (`READ_ROOTS_ENV`), None when unrestricted."""
    value = os.environ.get(READ_ROOTS_ENV)
    if value is None:
        return None
    return tuple(Path(p).resolve() for p in value.split(os.pathsep) if p.strip())


def _inside(path: Path, roots) -> bool:
    real = Path(path).resolve()
    return any(real == r or r in real.parents for r in roots)


def list_image_files(folder: str | Path, inside=None, outside: list | None = None) -> list[Path]:
    """Image files under `folder` (recursively, following links), sorted; hidden files and
    folders are skipped. [] when the folder does not exist. With `inside` (folders; by default
    `read_roots()`), a file or folder whose real path is outside all of them is skipped and
    appended to `outside`; a folder reached twice through links is walked once."""
    inside = read_roots() if inside is None else tuple(Path(r).resolve() for r in inside)
    paths, seen = [], set()
    for root, dirs, files in os.walk(folder, followlinks=True):
        real = Path(root).resolve()
        if real in seen:  # a link loop, or a folder linked twice
            dirs[:] = []
            continue
        seen.add(real)
        kept = []
        for d in dirs:
            if d.startswith("."):
                continue
            if inside is not None and not _inside(Path(root) / d, inside):
                if outside is not None:
                    outside.append(Path(root) / d)
                continue
            kept.append(d)
        dirs[:] = kept
        for f in files:
            path = Path(root) / f
            if f.startswith(".") or path.suffix.lower() not in IMAGE_SUFFIXES:
                continue
            if inside is not None and not _inside(path, inside):
                if outside is not None:
                    outside.append(path)
                continue
            paths.append(path)
    return sorted(paths)


class ImageLoadError(ValueError):
    """The input is not an image we can read; the message names it and says why."""


@dataclass
class LoadedImage:
    array: np.ndarray  # H x W x 3, uint8, RGB
    original_size: tuple[int, int]  # (height, width) as the caller sees the image

    @property
    def scale(self) -> float:
        """original / loaded size (1.0 unless the image was downscaled)."""
        return self.original_size[0] / self.array.shape[0]

    def shrunk(self, side: int) -> LoadedImage:
        """This image with its longer side at most `side` (itself when it is no larger): a drawing
        that needs no more pixels than a screen shows. Boxes in original pixels still map onto it."""
        if max(self.array.shape[:2]) <= side:
            return self
        small = Image.fromarray(self.array)
        small.thumbnail((side, side), Image.Resampling.BILINEAR)  # as `load_image` downscales
        return LoadedImage(np.asarray(small), self.original_size)


def _describe(source) -> str:
    """How an error names the input: a file by its name only (never a server or temp path),
    anything else as "the uploaded image" (never an object repr)."""
    if isinstance(source, (str, Path)):
        return f"'{Path(source).name}'"
    return "the uploaded image"


def _reason(e: BaseException) -> str:
    """The decoder's complaint without object reprs or file paths (error texts reach visitors)."""
    if isinstance(e, UnidentifiedImageError):
        return "unknown or damaged image format"
    text = re.sub(r"<[^<>]* at 0x[0-9a-fA-F]+>", "the data", str(e))
    return re.sub(r"(/[^\s/'\"]+)+/([^\s/'\"]+)", r"\2", text)[:160]


def _to_rgb(img: Image.Image) -> Image.Image:
    if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        a = np.asarray(img, dtype=np.float64)
        return Image.fromarray(_stretch(a)).convert("RGB")
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return img.convert("RGB")  # L, P, CMYK, YCbCr, ...


def _stretch(a: np.ndarray) -> np.ndarray:
    """Map a high-bit-depth/float array to uint8 (full 16-bit range, else min-max)."""
    if a.size == 0:
        return a.astype(np.uint8)
    lo, hi = float(np.nanmin(a)), float(np.nanmax(a))
    if lo >= 0 and hi > 255 and hi <= 65535:
        lo, hi = 0.0, 65535.0
    elif lo >= 0 and hi <= 1.0:
        lo, hi = 0.0, 1.0
    scale = 255.0 / (hi - lo) if hi > lo else 0.0
    return np.clip((np.nan_to_num(a, nan=lo) - lo) * scale, 0, 255).round().astype(np.uint8)


def _from_array(a: np.ndarray) -> Image.Image:
    if a.ndim == 2:
        a = a[..., None]
    if a.ndim != 3 or a.shape[2] not in (1, 3, 4):
        raise ImageLoadError(f"array image must be HxW, HxWx1, HxWx3 or HxWx4, got shape {a.shape}")
    if a.shape[0] == 0 or a.shape[1] == 0:
        raise ImageLoadError("array image is empty")
    if a.dtype != np.uint8:
        a = _stretch(a.astype(np.float64))
    if a.shape[2] == 1:
        return Image.fromarray(a[..., 0], "L")
    return Image.fromarray(np.ascontiguousarray(a), "RGBA" if a.shape[2] == 4 else "RGB")


def load_image(source, max_side: int = MAX_SIDE) -> LoadedImage:
    """Load `source` (path, bytes, file object, PIL image, array, or an already `LoadedImage`,
    returned as it is so an image is decoded once however many layers it passes) as RGB uint8."""
    if isinstance(source, LoadedImage):
        return source
    try:
        if isinstance(source, np.ndarray):
            img = _from_array(source)
        elif isinstance(source, Image.Image):
            img = source
        elif isinstance(source, (bytes, bytearray)):
            img = Image.open(io.BytesIO(source))
        elif isinstance(source, (str, Path)):
            if not Path(source).is_file():
                raise ImageLoadError(f"image file not found: {_describe(source)}")
            roots = read_roots()
            if roots is not None and not _inside(Path(source), roots):
                raise ImageLoadError(f"{_describe(source)} lies outside the folders this process may read "
                                     "(a link to another place?)")
            img = Image.open(source)
        elif hasattr(source, "read"):
            img = Image.open(source)
        else:
            raise ImageLoadError(f"cannot read an image from a {type(source).__name__}")
        if img.width == 0 or img.height == 0:
            raise ImageLoadError(f"{_describe(source)} has zero size")
        # The size is the header's: refuse before anything large is allocated (for a PNG even
        # `getexif` decodes the whole image). JPEGs decode reduced (draft), so they are checked after.
        width, height = img.size
        if img.format == "JPEG" and max(img.size) > 2 * max_side:
            img.draft("RGB", (max_side, max_side))  # decode huge JPEGs at reduced resolution
        if img.width * img.height > MAX_DECODED_PIXELS:
            raise ImageLoadError(f"{_describe(source)} is too large to decode ({width} x {height} pixels; "
                                 f"at most {MAX_DECODED_PIXELS // 1_000_000} megapixels, or a JPEG)")
        original = (height, width)
        if img.getexif().get(0x0112, 1) in (5, 6, 7, 8):  # EXIF says rotate by 90 degrees
            original = (width, height)
        img = _to_rgb(ImageOps.exif_transpose(img))
        if max(img.size) > max_side:
            img.thumbnail((max_side, max_side), Image.Resampling.BILINEAR)
        array = np.array(img, dtype=np.uint8)  # a writable copy
    except ImageLoadError:
        raise
    except Image.DecompressionBombError:
        raise ImageLoadError(f"{_describe(source)} is too large (over {MAX_PIXELS:,} pixels)") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise ImageLoadError(f"{_describe(source)} is not a readable image ({_reason(e)})") from None
    return LoadedImage(array, original)


def resize_shorter(t, size: float, max_side_ratio: float = 1.667):
    """[3, H, W] float tensor -> (tensor with its shorter side `size`, its longer side at most
    `size * max_side_ratio`; the scale). The one resize of tag images: training's and the Assign
    view's, so both see the same pixels and so the same proposals."""
    import torch.nn.functional as F

    h, w = t.shape[-2:]
    scale = min(size / min(h, w), size * max_side_ratio / max(h, w))
    nh, nw = max(8, round(h * scale)), max(8, round(w * scale))
    return F.interpolate(t[None], size=(nh, nw), mode="bilinear", align_corners=False, antialias=True)[0], scale

"""Videos as sequences of frames: what `python -m detector predict` and the Detect tab read.

OpenCV decodes (`open_video`, `video_frames`: every `stride`-th frame with its index and time);
`detect_video` runs a predictor over the frames in batches and can write the annotated frames
(as a browser-playable WebM/VP8 when the name ends in .webm: OpenCV's wheels encode no H.264;
MPEG-4 otherwise).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from .annotate import annotate, detections_to_records

VIDEO_SUFFIXES = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg", ".wmv")
BATCH = 8  # frames per model call


class InputError(ValueError):
    """An input that cannot be used; found before the model loads."""


@dataclass
class Item:
    """One picture to run the model on: an image file, or a frame of a video."""

    source: str  # the path as given (or found in a folder / by a pattern)
    frame: int | None = None  # the frame's index in its video
    time: float | None = None  # the frame's time in seconds
    pixels: object = None  # the decoded frame (RGB), for videos

    def record(self, detections) -> dict:
        out = {"image": self.source}
        if self.frame is not None:
            out.update(frame=self.frame, time=round(self.time, 3))
        return {**out, "detections": detections_to_records(detections)}


@dataclass
class Video:
    path: str
    fps: float
    frames: int  # as the container says (0 when unknown)
    size: tuple[int, int]  # (width, height)


def open_video(path: str) -> Video:
    """The video's frame rate, frame count and size; InputError when OpenCV cannot read a frame of it."""
    import cv2

    cap = cv2.VideoCapture(path)
    try:
        ok = cap.isOpened() and cap.read()[0]
        if not ok:
            raise InputError(f"'{Path(path).name}' is not a video OpenCV can read")
        fps = cap.get(cv2.CAP_PROP_FPS) or 0.0
        count = int(cap.get(cv2.CAP_PROP_FRAME_COUNT) or 0)  # an image named .mp4 read -2**63
        return Video(path, fps if fps > 0 else 25.0, max(0, count),
                     (int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)), int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT))))
    finally:
        cap.release()


def video_frames(video: Video, stride: int) -> Iterator[Item]:
    """Every `stride`-th frame (from the first), decoded as RGB, with its index and time."""
    import cv2

    cap = cv2.VideoCapture(video.path)
    try:
        index = 0
        while True:
            if index % stride:
                if not cap.grab():
                    return
            else:
                ok, frame = cap.read()
                if not ok:
                    return
                yield Item(video.path, index, index / video.fps, cv2.cvtColor(frame, cv2.COLOR_BGR2RGB))
            index += 1
    finally:
        cap.release()


def detect_video(predictor, path: str, vocabulary, score_threshold=None, nms_threshold=None, max_detections=None,
                 stride: int = 1, max_frames: int | None = None, annotated: str | Path | None = None,
                 progress: Callable[[int, int], None] | None = None) -> tuple[list[dict], Video, bool]:
    """(per-frame records, the video, whether it was cut at `max_frames`): every `stride`-th frame
    through `predictor`; with `annotated`, the drawn frames as a WebM at the sampled rate."""
    import cv2

    from .images import load_image

    video = open_video(path)
    expected = -(-video.frames // stride) if video.frames else 0
    total = min(expected, max_frames) if max_frames and expected else expected
    writer = None
    records, batch, cut = [], [], False

    def draw(image, det) -> None:
        """One drawn frame into the annotated video, opened at the drawings' size: a frame larger
        than `load_image`'s limit is drawn downscaled, and OpenCV drops, without a word, every
        frame whose size is not the writer's (a 4400 x 64 video came out empty)."""
        nonlocal writer
        drawn = cv2.cvtColor(annotate(image, det), cv2.COLOR_RGB2BGR)
        if writer is None:
            codec = "VP80" if Path(annotated).suffix.lower() == ".webm" else "mp4v"  # browsers play the first
            writer = cv2.VideoWriter(str(annotated), cv2.VideoWriter_fourcc(*codec), max(1.0, video.fps / stride),
                                     (drawn.shape[1], drawn.shape[0]))
        writer.write(drawn)

    def flush():
        loaded = [load_image(item.pixels) for item in batch]
        for item, image, det in zip(batch, loaded, predictor.predict(loaded, vocabulary, score_threshold,
                                                                      nms_threshold, max_detections)):
            records.append(item.record(det))
            if annotated is not None:
                draw(image, det)
        batch.clear()
        if progress:
            progress(len(records), total)

    try:
        for item in video_frames(video, stride):
            if max_frames and len(records) + len(batch) >= max_frames:
                cut = True
                break
            batch.append(item)
            if len(batch) == BATCH:
                flush()
        if batch:
            flush()
    finally:
        if writer is not None:
            writer.release()
    return records, video, cut

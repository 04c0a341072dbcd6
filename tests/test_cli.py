"""`python -m detector predict` over folders, globs and videos, in every output format."""

import csv
import io
import json
import sys

import cv2
import numpy as np
import pytest
from PIL import Image

from detector import cli


def make_video(path, frames=10, fps=10.0, size=(64, 48)):
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, size)
    assert writer.isOpened()
    rng = np.random.default_rng(0)
    for _ in range(frames):
        writer.write(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8))
    writer.release()
    return path


@pytest.fixture
def inputs(tmp_path):
    folder = tmp_path / "shots"
    (folder / "sub").mkdir(parents=True)
    rng = np.random.default_rng(1)
    for name in ("a.png", "sub/b.jpg"):
        Image.fromarray(rng.integers(0, 255, (40, 56, 3), dtype=np.uint8)).save(folder / name)
    return folder, make_video(tmp_path / "clip.mp4")


RUN = ["-v", "cat, dog", "-m", "tiny", "--score-threshold", "0", "--max-detections", "2"]


def test_folders_globs_and_videos_with_frame_index_and_time(inputs, tmp_path, capsys):
    folder, video = inputs
    out = tmp_path / "o.jsonl"
    rc = cli.main(["predict", str(folder), str(folder / "*.png"), str(video), *RUN, "--frame-stride", "3",
                   "--format", "jsonl", "--out", str(out), "--annotated-video", str(tmp_path / "drawn.mp4")])
    assert rc == 0
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["image"] for r in records[:2]] == [str(folder / "a.png"), str(folder / "sub" / "b.jpg")]  # once each
    assert [(r["width"], r["height"]) for r in records] == [(56, 40)] * 2 + [(64, 48)] * 4
    frames = records[2:]
    assert [(r["frame"], r["time"]) for r in frames] == [(0, 0.0), (3, 0.3), (6, 0.6), (9, 0.9)]
    assert all(r["image"] == str(video) and len(r["detections"]) == 2 for r in frames)
    drawn = cv2.VideoCapture(str(tmp_path / "drawn.mp4"))
    assert int(drawn.get(cv2.CAP_PROP_FRAME_COUNT)) == 4 and drawn.read()[1].shape == (48, 64, 3)
    drawn.release()
    err = capsys.readouterr().err
    assert "6/6" in err and "100%" in err  # the progress bar: 2 images and 4 frames


def test_every_input_is_checked_before_the_model_loads(tmp_path, monkeypatch, capsys):
    from detector import Predictor

    def never(*a, **k):
        raise AssertionError("the model must not load")

    monkeypatch.setattr(Predictor, "from_pretrained", never)
    (tmp_path / "empty").mkdir()
    (tmp_path / "bad.mp4").write_bytes(b"not a video")
    rc = cli.main(["predict", str(tmp_path / "nope.png"), str(tmp_path / "empty"), str(tmp_path / "*.gif"),
                   *RUN])
    err = capsys.readouterr().err
    assert rc == 2 and "'nope.png' does not exist" in err.replace(str(tmp_path) + "/", "")
    assert "holds no images" in err and "matches no images" in err
    assert cli.main(["predict", str(tmp_path / "bad.mp4"), *RUN]) == 2
    assert "'bad.mp4' is not a video OpenCV can read" in capsys.readouterr().err
    Image.new("RGB", (8, 8)).save(tmp_path / "x.png")
    assert cli.main(["predict", str(tmp_path / "x.png"), *RUN, "--annotated-video", str(tmp_path / "o.mp4")]) == 2
    assert "exactly one video" in capsys.readouterr().err


def test_every_image_gets_its_own_drawing_in_the_annotated_folder(inputs, tmp_path):
    """a.png, sub/b.jpg, and a.jpg beside a.png: three drawings (a.jpg's once overwrote a.png's,
    and sub-folders were flattened into one)."""
    folder, _ = inputs
    Image.open(folder / "a.png").save(folder / "a.jpg")
    drawn = tmp_path / "drawn"
    assert cli.main(["predict", str(folder), *RUN, "--annotated", str(drawn), "--no-progress",
                     "--out", str(tmp_path / "o.json")]) == 0
    assert sorted(str(p.relative_to(drawn)) for p in drawn.rglob("*.png")) == ["a_jpg.png", "a_png.png", "sub/b.png"]
    assert Image.open(drawn / "sub" / "b.png").size == (56, 40)


def test_an_output_never_overwrites_an_input_and_a_drawing_needs_a_name_it_can_take(inputs, tmp_path, monkeypatch,
                                                                                   capsys):
    """`--out photo.jpg` on photo.jpg had replaced the photo with JSON (exit 0), `--annotated` the
    same with the drawing; a single image's `--annotated` naming a folder or a file without an
    ending failed after the model had run. All are refused before the model loads; an existing
    folder takes the one drawing under the image's name."""
    from detector import Predictor

    folder, _ = inputs
    photo = folder / "a.png"
    before = photo.read_bytes()
    monkeypatch.setattr(Predictor, "from_pretrained", lambda *a, **k: pytest.fail("the model must not load"))
    for flag, target in (("--out", photo), ("--annotated", folder / "sub" / ".." / "a.png")):
        assert cli.main(["predict", str(photo), *RUN, flag, str(target)]) == 2
        assert "is one of the inputs: it would be overwritten" in capsys.readouterr().err
    assert cli.main(["predict", str(folder), *RUN, "--out", str(folder / "sub" / "b.jpg")]) == 2
    assert "is one of the inputs" in capsys.readouterr().err
    assert cli.main(["predict", str(photo), *RUN, "--annotated", str(tmp_path / "drawing.txt")]) == 2
    assert "needs an image file name (.png, .jpg …) or a folder" in capsys.readouterr().err
    assert cli.main(["predict", str(folder), *RUN, "--annotated", str(tmp_path / "one.png")]) == 2
    assert "names a file, but 2 images are given" in capsys.readouterr().err
    assert photo.read_bytes() == before
    monkeypatch.undo()
    drawn = tmp_path / "drawn"
    drawn.mkdir()
    assert cli.main(["predict", str(folder / "sub" / "b.jpg"), *RUN, "--annotated", str(drawn), "--no-progress"]) == 0
    assert [p.name for p in drawn.iterdir()] == ["b.png"]
    # a name without an ending is a folder, made as it is for several images ("drawn/" had been refused)
    assert cli.main(["predict", str(photo), *RUN, "--annotated", str(tmp_path / "new") + "/", "--no-progress"]) == 0
    assert [p.name for p in (tmp_path / "new").iterdir()] == ["a.png"]


def test_out_of_range_settings_and_a_missing_gpu_are_one_line_before_the_model_loads(tmp_path, monkeypatch, capsys):
    import torch

    from detector import Predictor

    Image.new("RGB", (8, 8)).save(tmp_path / "x.png")
    for flag, value in (("--score-threshold", "1.5"), ("--nms-threshold", "-0.1"), ("--max-detections", "0")):
        with pytest.raises(SystemExit) as exit_:
            cli.main(["predict", str(tmp_path / "x.png"), "-v", "cat", flag, value])
        assert exit_.value.code == 2 and f"argument {flag}" in capsys.readouterr().err
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr("detector.predictor.load_detector", lambda *a, **k: pytest.fail("the model must not load"))
    assert cli.main(["predict", str(tmp_path / "x.png"), "-v", "cat", "--device", "cuda"]) == 2
    err = capsys.readouterr().err
    assert err.strip() == "error: device 'cuda': no CUDA GPU is available on this machine (use cpu)", err
    with pytest.raises(ValueError, match="unknown device 'gpu'"):
        Predictor.from_pretrained("tiny", device="gpu")


def test_csv_and_coco_output(inputs, tmp_path, capsys):
    folder, video = inputs
    assert cli.main(["predict", str(folder), *RUN, "--format", "csv", "--no-progress"]) == 0
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert len(rows) == 4 and set(rows[0]) == {"image", "frame", "time", "class_name", "score", "x1", "y1", "x2", "y2"}
    assert {r["class_name"] for r in rows} <= {"cat", "dog"}
    out = tmp_path / "coco.json"
    assert cli.main(["predict", str(video), *RUN, "--format", "coco", "--frame-stride", "5", "--out", str(out)]) == 0
    coco = json.loads(out.read_text())
    assert [c["name"] for c in coco["categories"]] == ["cat", "dog"]
    assert [(i["frame_index"], i["file_name"]) for i in coco["images"]] == [(0, "clip.mp4"), (5, "clip.mp4")]
    assert all((i["width"], i["height"]) == (64, 48) for i in coco["images"])  # what COCO tools expect
    assert len(coco["annotations"]) == 4 and all("score" in a and len(a["bbox"]) == 4 for a in coco["annotations"])
    # A folder's images are named below it, their subfolders kept (sub/b.jpg was "b.jpg")
    assert cli.main(["predict", str(folder), *RUN, "--format", "coco", "--out", str(out)]) == 0
    assert [i["file_name"] for i in json.loads(out.read_text())["images"]] == ["a.png", "sub/b.jpg"]


def _webm(path, frames: int = 12, size=(96, 64)):
    import cv2

    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"VP80"), 10, size)
    for i in range(frames):
        frame = np.zeros((size[1], size[0], 3), np.uint8)
        frame[10:40, 5 + 4 * i: 35 + 4 * i] = (0, 0, 255)
        writer.write(frame)
    writer.release()
    return path


def test_the_app_detects_in_a_short_video_frame_by_frame(tmp_path, tiny_predictor):
    """The Detect tab's video path (AppService.detect_video): every n-th frame with its index and
    time, an annotated WebM a browser can play, and a cap on how many frames one request runs."""
    from app import service as service_module
    from app.service import AppService

    service = AppService(tmp_path / "data", predictor=tiny_predictor)
    video = _webm(tmp_path / "clip.webm")
    result = service.detect_video(str(video), "red box", 0.0, 0.5, 5, stride=4)
    assert [f["frame"] for f in result["frames"]] == [0, 4, 8]
    assert [f["time"] for f in result["frames"]] == [0.0, 0.4, 0.8]
    assert all(f["detections"] for f in result["frames"])
    out = cv2.VideoCapture(result["video"])
    assert result["video"].endswith(".webm") and out.isOpened() and out.read()[0]
    out.release()
    assert "3 frames (every 4th of 12" in result["note"]
    service_module.MAX_VIDEO_FRAMES, kept = 2, service_module.MAX_VIDEO_FRAMES
    try:
        cut = service.detect_video(str(video), "red box", 0.0, 0.5, 5, stride=1)
    finally:
        service_module.MAX_VIDEO_FRAMES = kept
    assert len(cut["frames"]) == 2 and "stopped after 2 frames" in cut["note"]
    assert cut["note"].startswith("2 frames (every frame of 12")  # not "every 1th"
    assert service.detect_video(str(video), "red box", 0.0, 0.5, 5, stride=12)["note"].startswith(
        "1 frame (every 12th of 12")
    (tmp_path / "fake.webm").write_text("not a video")
    with pytest.raises(ValueError, match="not a video OpenCV can read"):
        service.detect_video(str(tmp_path / "fake.webm"), "cat")
    with pytest.raises(ValueError, match="upload a video"):
        service.detect_video(None, "cat")


def test_a_video_wider_than_the_image_limit_is_drawn_and_an_unknown_length_says_so(tmp_path, tiny_predictor):
    """Frames wider than `load_image`'s limit (4096 px: 8K and 5.7K footage) are drawn downscaled,
    and the writer had been opened at the video's own size: OpenCV dropped every frame without a
    word and the Detect tab played an empty video. An image named .mp4 reported -2**63 frames."""
    from PIL import Image

    from app.service import AppService
    from detector.images import MAX_SIDE

    service = AppService(tmp_path / "data", predictor=tiny_predictor)
    wide = _webm(tmp_path / "wide.webm", frames=3, size=(MAX_SIDE + 304, 64))
    result = service.detect_video(str(wide), "red box", 0.0, 0.5, 5, stride=1)
    out = cv2.VideoCapture(result["video"])
    drawn = []
    while (frame := out.read())[0]:
        drawn.append(frame[1].shape)
    out.release()
    assert len(drawn) == 3 and drawn[0][1] == MAX_SIDE, drawn
    Image.new("RGB", (32, 24), (200, 10, 10)).save(tmp_path / "still.png")
    (tmp_path / "still.mp4").write_bytes((tmp_path / "still.png").read_bytes())
    note = service.detect_video(str(tmp_path / "still.mp4"), "red box", 0.0, 0.5, 5, stride=1)["note"]
    assert note.startswith("1 frame (every frame of ? at"), note


def test_evaluate_names_a_missing_file_before_the_model_loads(tmp_path, monkeypatch, capsys):
    from detector import Predictor
    from train import cli as train_cli

    monkeypatch.setattr(Predictor, "from_pretrained", lambda *a, **k: pytest.fail("the model must not load"))
    assert train_cli.main(["evaluate", "--model", "tiny", "--data", str(tmp_path / "nope.json"),
                           "--images", str(tmp_path)]) == 2
    assert capsys.readouterr().err.strip().endswith(f"error: --data '{tmp_path / 'nope.json'}' does not exist")


def test_evaluate_refuses_coco_files_it_cannot_score_in_one_line(tmp_path, capsys):
    """A file with no categories, an annotation of an unknown category or with three numbers in its
    bbox had ended in KeyError / IndexError tracebacks; images none of which are in --images had
    scored AP 0.0 with exit 0; a missing --out folder failed only after the evaluation."""
    from train import cli as train_cli

    Image.new("RGB", (32, 32)).save(tmp_path / "x.png")
    image = {"id": 1, "file_name": "x.png", "width": 32, "height": 32}
    cats = [{"id": 1, "name": "cat"}]

    def evaluate(data: dict, *extra: str) -> str:
        path = tmp_path / "gt.json"
        path.write_text(json.dumps(data))
        assert train_cli.main(["evaluate", "--model", "tiny", "--data", str(path), "--images", str(tmp_path),
                               *extra]) == 2
        return capsys.readouterr().err.strip().splitlines()[-1]

    ann = {"id": 7, "image_id": 1, "category_id": 1, "bbox": [1, 1, 10, 10]}
    assert "has no 'categories' list" in evaluate({"images": [image], "annotations": [ann]})
    assert "annotation 7 has unknown category_id 9" in evaluate(
        {"images": [image], "annotations": [{**ann, "category_id": 9}], "categories": cats})
    assert "'bbox' must be four numbers" in evaluate(
        {"images": [image], "annotations": [{**ann, "bbox": [1, 2, 3]}], "categories": cats})
    assert "annotation 7 names no image" in evaluate(
        {"images": [image], "annotations": [{**ann, "image_id": 5}], "categories": cats})
    assert "none of the 1 images" in evaluate(
        {"images": [{**image, "file_name": "elsewhere.png"}], "annotations": [ann], "categories": cats})
    assert "the folder of --out" in evaluate(
        {"images": [image], "annotations": [ann], "categories": cats}, "--out", str(tmp_path / "no" / "m.json"))
    (tmp_path / "gt.json").write_text("{'images': ")
    assert train_cli.main(["evaluate", "--model", "tiny", "--data", str(tmp_path / "gt.json"),
                           "--images", str(tmp_path)]) == 2
    assert f"'{tmp_path / 'gt.json'}' is not valid JSON" in capsys.readouterr().err


def test_an_image_with_nothing_at_the_threshold_gets_a_line_naming_its_best_candidates(inputs, capsys):
    """The Detect tab never answers with silence; the CLI printed an empty list and nothing else
    (the rocket photo: 0.19 under the offline model's 0.2)."""
    folder, _ = inputs
    assert cli.main(["predict", str(folder / "a.png"), "-v", "cat, dog", "-m", "tiny", "--score-threshold", "1",
                     "--no-progress"]) == 0
    out, err = capsys.readouterr()
    assert json.loads(out)["detections"] == []
    line = err.strip().splitlines()[-1]
    assert line.startswith(f"note: {folder / 'a.png'}: nothing at or above 1; best candidates (low confidence): ")
    assert "--score-threshold 0." in line and (" shows cat)" in line or " shows dog)" in line)


def test_no_progress_means_no_bar_at_all(tmp_path, capsys):
    """--no-progress hid our bar but the libraries' "Loading weights: 100%|..." still printed."""
    Image.new("RGB", (64, 48), (120, 90, 60)).save(tmp_path / "x.png")
    from huggingface_hub.utils import enable_progress_bars

    try:
        assert cli.main(["predict", str(tmp_path / "x.png"), "-v", "cat", "-m", "offline", "--no-progress"]) == 0
    finally:  # process-wide switches: the other tests' bars stay as they were
        enable_progress_bars()
        if "transformers" in sys.modules:
            sys.modules["transformers"].utils.logging.enable_progress_bar()
    assert "%|" not in capsys.readouterr().err

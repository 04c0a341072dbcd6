import io
import json
import subprocess
import sys

import numpy as np
import pytest
import supervision as sv
from PIL import Image

from detector import ImageLoadError, Predictor, load_image


def _png(img: Image.Image, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=kw.pop("format", "PNG"), **kw)
    return buf.getvalue()


@pytest.mark.parametrize("mode", ["L", "LA", "P", "RGBA", "CMYK", "I;16", "F", "1"])
def test_odd_modes_become_rgb_uint8(small_image, mode):
    img = Image.fromarray(small_image).convert(mode) if mode not in ("I;16", "F") else None
    if mode == "I;16":
        img = Image.fromarray(small_image[..., 0].astype(np.uint16) * 257)
    if mode == "F":
        img = Image.fromarray(small_image[..., 0].astype(np.float32) / 255.0)
    out = load_image(img)
    assert out.array.dtype == np.uint8 and out.array.shape == (192, 192, 3)
    if mode in ("L", "I;16", "F"):  # grey levels survive the conversion
        grey = np.array(img.convert("L")) if mode == "L" else small_image[..., 0]
        assert np.abs(out.array[..., 0].astype(int) - grey.astype(int)).max() <= 1


def test_rgba_transparent_pixels_become_white():
    a = np.zeros((8, 8, 4), np.uint8)
    assert (load_image(a).array == 255).all()


def test_sixteen_bit_png_file(tmp_path):
    a = (np.linspace(0, 65535, 64 * 64).reshape(64, 64)).astype(np.uint16)
    Image.fromarray(a).save(tmp_path / "deep.png")
    out = load_image(tmp_path / "deep.png").array
    assert out[0, 0, 0] == 0 and out[-1, -1, 0] == 255


def test_exif_rotation_is_applied():
    img = Image.new("RGB", (80, 40), "red")
    exif = img.getexif()
    exif[0x0112] = 6  # rotate 90° clockwise when displayed
    out = load_image(_png(img, format="JPEG", exif=exif.tobytes()))
    assert out.array.shape == (80, 40, 3) and out.original_size == (80, 40)


def test_huge_image_is_downscaled_and_boxes_map_back(tiny_predictor, small_image, monkeypatch):
    """The predictor decodes a too-large image at most `max_side` wide, detects on that, and reports
    the boxes in the original image's pixels: the downscaled image's boxes times the scale."""
    import detector.predictor

    big = np.array(Image.fromarray(small_image).resize((1536, 1536)))
    loaded = load_image(big, max_side=384)
    assert loaded.array.shape == (384, 384, 3) and loaded.original_size == (1536, 1536) and loaded.scale == 4
    seen = []

    def load_at_384(source, max_side=384):
        seen.append(load_image(source, max_side=max_side))
        return seen[-1]

    monkeypatch.setattr(detector.predictor, "load_image", load_at_384)
    on_big = tiny_predictor.predict(big, "person, flag", score_threshold=0.0, max_detections=5)[0]
    assert seen[0].array.shape == (384, 384, 3)  # the predictor detected on the downscaled image
    on_small = tiny_predictor.predict(loaded.array, "person, flag", score_threshold=0.0, max_detections=5)[0]
    assert len(on_big) == len(on_small) == 5
    assert np.allclose(on_big.xyxy, on_small.xyxy * 4, atol=1e-3)  # same boxes, in the original's pixels
    assert on_big.xyxy.max() > 384 and (on_big.xyxy >= 0).all() and (on_big.xyxy <= 1536).all()
    assert (on_big.data["class_name"] == on_small.data["class_name"]).all()


@pytest.mark.parametrize("bad", [b"not an image at all", b"\x89PNG\r\n\x1a\n" + b"\0" * 40, np.zeros((0, 5, 3)),
                                 np.zeros((4, 4, 7)), 12345])
def test_corrupt_inputs_raise_clear_error(bad):
    with pytest.raises(ImageLoadError):
        load_image(bad)


def test_truncated_jpeg_file(tmp_path, small_image):
    data = _png(Image.fromarray(small_image), format="JPEG")
    (tmp_path / "cut.jpg").write_bytes(data[: len(data) // 3])
    with pytest.raises(ImageLoadError, match="cut.jpg"):
        load_image(tmp_path / "cut.jpg")
    with pytest.raises(ImageLoadError, match="not found"):
        load_image(tmp_path / "nope.jpg")


def test_predict_accepts_paths_pil_arrays_bytes_in_one_batch(tiny_predictor, small_image, tmp_path):
    Image.fromarray(small_image).save(tmp_path / "a.png")
    inputs = [str(tmp_path / "a.png"), Image.fromarray(small_image), small_image, _png(Image.fromarray(small_image))]
    dets = tiny_predictor.predict(inputs, "person, flag", score_threshold=0.0)
    assert len(dets) == 4 and all(isinstance(d, sv.Detections) for d in dets)
    for d in dets[1:]:  # same pixels, same detections
        assert np.allclose(d.xyxy, dets[0].xyxy) and (d.data["class_name"] == dets[0].data["class_name"]).all()
    assert set(dets[0].data["class_name"]) <= {"person", "flag"}
    single = tiny_predictor.predict(small_image, "person, flag", score_threshold=0.0)
    assert isinstance(single, list) and np.allclose(single[0].xyxy, dets[0].xyxy)


def test_boxes_are_in_original_pixels_for_any_size(tiny_predictor, small_image):
    big = np.array(Image.fromarray(small_image).resize((384, 384)))
    small_d = tiny_predictor.predict(small_image, "person", score_threshold=0.0, max_detections=5)[0]
    big_d = tiny_predictor.predict(big, "person", score_threshold=0.0, max_detections=5)[0]
    assert big_d.xyxy.max() > 192 and (big_d.xyxy >= 0).all() and (big_d.xyxy[:, [0, 2]] <= 384).all()
    assert small_d.xyxy.max() <= 192


def test_vocabulary_change_reuses_image_work(tiny_predictor, small_image, monkeypatch):
    calls = []
    original = tiny_predictor.model.encode_images
    monkeypatch.setattr(tiny_predictor.model, "encode_images",
                        lambda image_list, *a, **k: calls.append(len(image_list.image_sizes))
                        or original(image_list, *a, **k))
    img = small_image.copy()
    img[0, 0] = [1, 2, 3]  # pixels not seen before
    tiny_predictor.predict(img, "cat")
    tiny_predictor.predict(img, "dog, car", score_threshold=0.0)
    tiny_predictor.predict(img, "dog", score_threshold=0.9)
    assert calls == [1]


def test_thresholds_and_max_detections(tiny_predictor, small_image):
    all_d = tiny_predictor.predict(small_image, "person, flag, rocket", score_threshold=0.0, max_detections=1000)[0]
    few = tiny_predictor.predict(small_image, "person, flag, rocket", score_threshold=0.0, max_detections=3)[0]
    high = tiny_predictor.predict(small_image, "person, flag, rocket", score_threshold=0.99)[0]
    assert len(few) == 3 and len(all_d) > 3 and (high.confidence > 0.99).all() and len(high) < len(all_d)


def test_empty_and_enormous_vocabularies(tiny_predictor, small_image):
    with pytest.raises(ValueError, match="empty"):
        tiny_predictor.predict(small_image, " , ")
    from detector.vocabulary import MAX_NAMES

    names = [f"thing {i}" for i in range(MAX_NAMES)]  # the most a vocabulary may hold
    d = tiny_predictor.predict(small_image, names, score_threshold=0.0, max_detections=50)[0]
    assert len(d) == 50 and all(n.startswith("thing ") for n in d.data["class_name"])
    with pytest.raises(ValueError, match=f"at most {MAX_NAMES:,} names"):
        tiny_predictor.predict(small_image, [*names, "one more"])


def test_offline_model_runs_end_to_end_on_astronaut(astronaut):
    """Real offline weights: EfficientNet-Lite0 (frozen, ImageNet) + all-MiniLM-L6-v2."""
    p = Predictor.from_pretrained("offline", device="cpu")
    info = p.info()
    assert info["backbone_pretrained"] and info["text_encoder"].startswith("minilm")
    assert info["parameters"]["trainable"] < info["parameters"]["total"]
    d = p.predict(astronaut, "person, rocket, flag", score_threshold=0.0, max_detections=20)[0]
    assert 0 < len(d) <= 20
    assert (d.xyxy[:, 2] <= 512).all() and (d.xyxy[:, 0] >= 0).all()
    assert set(d.data["class_name"]) <= {"person", "rocket", "flag"}


def test_cli_writes_json_and_annotated_image(tmp_path, small_image):
    Image.fromarray(small_image).save(tmp_path / "a.png")
    r = subprocess.run([sys.executable, "-m", "detector", "predict", str(tmp_path / "a.png"), "-v", "person, flag",
                        "-m", "tiny", "--score-threshold", "0", "--max-detections", "4", "--out", str(tmp_path / "o.json"),
                        "--annotated", str(tmp_path / "o.png")], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    out = json.loads((tmp_path / "o.json").read_text())
    assert out["image"].endswith("a.png") and len(out["detections"]) == 4
    assert {"box", "score", "class_id", "class_name"} <= set(out["detections"][0])
    drawn = np.array(Image.open(tmp_path / "o.png"))
    assert drawn.shape == small_image.shape and (drawn != small_image).any()


def test_cli_reports_corrupt_image(tmp_path):
    (tmp_path / "bad.jpg").write_bytes(b"garbage")
    r = subprocess.run([sys.executable, "-m", "detector", "predict", str(tmp_path / "bad.jpg"), "-v", "cat",
                        "-m", "tiny"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 2 and "bad.jpg" in r.stderr and "Traceback" not in r.stderr


def test_drawing_uses_the_documented_colours(tiny_predictor, small_image):
    """Red means max_size in the Assign legend: the drawn pixels must really be red (RGB)."""
    from detector.annotate import RULE_COLOURS, draw_assignment

    a = tiny_predictor.assign(small_image, ["person"])
    a.rules = {"max_size": a.rules["max_size"]}
    drawn = draw_assignment(np.zeros_like(small_image), a, faint=0)
    r, g, b = RULE_COLOURS["max_size"].as_rgb()
    assert (drawn == (r, g, b)).all(-1).sum() > 50  # the legend's red, as RGB
    assert (drawn == (b, g, r)).all(-1).sum() == 0  # not its BGR twin


def test_eval_forward_is_the_predictor_path(tiny_predictor, small_image):
    import torch

    model = tiny_predictor.model
    names, emb = tiny_predictor.embed("person, flag")
    image = torch.from_numpy(small_image).permute(2, 0, 1).float() / 255
    with torch.no_grad():
        (out,) = model.eval()([image], class_embeddings=emb)
    d = tiny_predictor.predict(small_image, names)[0]
    assert np.allclose(out["boxes"].numpy(), d.xyxy, atol=1e-4) and (out["labels"].numpy() == d.class_id).all()


def test_a_predictor_at_a_smaller_size_shares_the_weights_and_leaves_the_original(tiny_predictor, astronaut):
    """`at_size` (the Tag queue's suggestion pass): same parameters, smaller input, boxes still in
    the original image's pixels; the predictor it came from keeps its size."""
    small = tiny_predictor.at_size(64)
    assert small.config.min_size == 64 and small.config.max_size == 128
    assert tiny_predictor.config.min_size == 128 and tiny_predictor.model.transform.min_size == (128,)
    assert small.model.transform.min_size == (64,) and small._cache is not tiny_predictor._cache
    assert all(a is b for a, b in zip(small.model.parameters(), tiny_predictor.model.parameters()))
    assert tiny_predictor.at_size(128) is tiny_predictor
    d = small.predict(astronaut, "person, rocket", score_threshold=0.0, max_detections=5)[0]
    assert 0 < len(d) <= 5 and (d.xyxy[:, 2] <= 512).all() and d.xyxy.max() > 64  # astronaut is 512 px

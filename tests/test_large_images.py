"""Issue #25: a JPEG of nearly 250 megapixels (the most `load_image` accepts) is decoded at reduced
size (JPEG draft mode): the loaded image is downscaled, the original size is kept, and the
process's peak memory stays far below what a full decode takes. Both the file and the load run in
their own processes, so the peak measured is the load's alone."""

import json
import subprocess
import sys
from pathlib import Path

from detector.images import MAX_PIXELS

ROOT = Path(__file__).resolve().parents[1]
SIDE = 15_800  # 249.6 megapixels


def _python(code: str, *args: str) -> str:
    r = subprocess.run([sys.executable, "-c", code, *args], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    return r.stdout


def test_a_250_megapixel_jpeg_is_decoded_at_reduced_size_in_bounded_memory(tmp_path):
    assert SIDE * SIDE <= MAX_PIXELS
    path = tmp_path / "huge.jpg"
    # One grey level: 250 MB in the writing process, ~3 MB on disk.
    _python("import sys; from PIL import Image; Image.new('L', (int(sys.argv[2]),) * 2, 128).save(sys.argv[1], quality=50)",
            str(path), str(SIDE))
    assert path.stat().st_size < 20_000_000
    out = _python("""
import json, resource, sys
import numpy as np
from detector.images import MAX_SIDE, load_image
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
loaded = load_image(sys.argv[1])
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"shape": loaded.array.shape, "original": loaded.original_size, "max_side": MAX_SIDE,
                  "grey": int(np.median(loaded.array)), "peak_mb": (peak - before) / 1024}))
""", str(path))
    r = json.loads(out.strip().splitlines()[-1])
    assert r["original"] == [SIDE, SIDE]  # detections are still reported in the file's pixels
    assert max(r["shape"][:2]) <= r["max_side"] and r["shape"][2] == 3
    assert abs(r["grey"] - 128) <= 2
    # A full decode holds the 250 MB grey image and its 750 MB RGB copy; the draft decodes at most
    # MAX_DECODED_PIXELS (64 MP: ~250 MB with its RGB copy, plus the downscaled result).
    assert r["peak_mb"] < 600, r

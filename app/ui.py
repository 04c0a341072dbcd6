"""The Gradio interface: a detection page over `detector.Predictor`."""

from __future__ import annotations

import json
import tempfile

import gradio as gr

from detector import ImageLoadError, Predictor
from detector.annotate import annotate, detections_to_records
from detector.images import load_image
from detector.vocabulary import PRESETS


def build_app(predictor: Predictor) -> gr.Blocks:
    def detect(image, vocabulary, score_threshold, nms_threshold, max_detections):
        if image is None:
            raise gr.Error("upload an image first")
        try:
            loaded = load_image(image)
            det = predictor.predict(loaded.array, vocabulary, score_threshold, nms_threshold, int(max_detections))[0]
        except (ImageLoadError, ValueError) as e:
            raise gr.Error(str(e)) from None
        records = detections_to_records(det)
        with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False, encoding="utf-8") as f:
            json.dump(records, f, indent=2, ensure_ascii=False)
        rows = [[r["class_name"], r["score"], *r["box"]] for r in records]
        return annotate(loaded.array, det), rows, f.name

    with gr.Blocks(title="Open-vocabulary detector") as demo:
        gr.Markdown("## Detect anything you can name\nType a vocabulary, upload an image, get boxes.")
        with gr.Row():
            with gr.Column():
                image = gr.Image(label="Image", type="pil", sources=["upload", "webcam", "clipboard"])
                vocabulary = gr.Textbox(label="Vocabulary (comma or newline separated)", value="person, cup, laptop")
                preset = gr.Dropdown(list(PRESETS), label="Presets", value=None)
                score = gr.Slider(0, 1, value=predictor.config.score_threshold, label="Score threshold")
                nms = gr.Slider(0, 1, value=predictor.config.nms_threshold, label="NMS IoU threshold")
                max_det = gr.Slider(1, 300, value=predictor.config.max_detections, step=1, label="Max detections")
                run = gr.Button("Detect", variant="primary")
            with gr.Column():
                out_image = gr.Image(label="Detections")
                table = gr.Dataframe(headers=["name", "score", "x1", "y1", "x2", "y2"], label="Detections")
                download = gr.File(label="JSON")
        preset.change(lambda p: ", ".join(PRESETS[p]) if p else gr.update(), preset, vocabulary)
        inputs = [image, vocabulary, score, nms, max_det]
        run.click(detect, inputs, [out_image, table, download], api_name="detect")
    return demo

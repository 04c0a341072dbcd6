"""The Gradio interface: Detect, Assign, Tag, Dataset, Train and Model tabs, one module each.

Every event calls an operation from `app.endpoints` (generated from `AppService`), and the same
operations are the named API endpoints (README, "API"). Errors reach the person as one readable
message, never a traceback, and nothing they entered is lost.
"""

from __future__ import annotations

from types import SimpleNamespace

import gradio as gr

from ..endpoints import make_endpoints, register_api
from ..markdown import literal
from ..service import AppService
from . import assign_tab, dataset_tab, detect_tab, model_tab, tag_tab, train_tab
from .common import error_text, handler, launch_options, on_line, user_error

__all__ = ["build_app", "launch_options"]

WATCH_EVERY_S = 5.0  # how often an open page asks whether the store or the served model changed


def build_app(service: AppService) -> gr.Blocks:
    """The page: the tabs (one module each), then the events that join them."""
    ep = make_endpoints(service)
    with gr.Blocks(title="Open-vocabulary detector") as demo:
        ui = _layout(ep, service)
        _refresh_on_open(ui)
        model_out, model_views = _wire_model_swaps(ep, ui)
        _wire_open_in_tag(ep, ui)
        seen = _wire_load(demo, ep, ui, model_out, model_views)
        ui.train_page.select(*ui.train["restore"], api_name=False, show_progress="hidden")
        _wire_watch(ep, ui, model_out, model_views, seen)
        register_api(ep)
    demo.app_endpoints = ep  # for inspection (tests): the operations every event and API call goes through
    return demo


def _layout(ep: dict, service: AppService) -> SimpleNamespace:
    """The title, the served model's header and the tabs; what each tab's `build` returns, by name."""
    gr.Markdown("# Detect anything you can name\nType a vocabulary, detect, tag images with what they "
                "contain, retrain in the background, and serve the new model, all on this page.")
    header = gr.HTML(model_tab.model_header(service.model_info()))
    with gr.Tabs(overflow_behavior="wrap") as tabs:  # every tab in sight on a phone, no "…" menu
        with gr.Tab("Detect", id="detect"):
            detect_tab.build(ep, service.predictor.config)
        with gr.Tab("Assign", id="assign"):
            assign_tab.build(ep, service.predictor.config)
        with gr.Tab("Tag", id="tag") as tag_page:
            tag = tag_tab.build(ep, service.policy.server_folders)
        with gr.Tab("Dataset", id="dataset") as dataset_page:
            dataset = dataset_tab.build(ep)
        with gr.Tab("Train", id="train") as train_page:
            train = train_tab.build(ep, service.policy.server_folders)
        with gr.Tab("Model", id="model") as model_page:
            model = model_tab.build(ep)
    return SimpleNamespace(**locals())


def _refresh_on_open(ui: SimpleNamespace) -> None:
    tag_page, dataset_page, train_page, tag = ui.tag_page, ui.dataset_page, ui.train_page, ui.tag
    dataset, train = ui.dataset, ui.train
    # Every tab shows the store and the served model as they are now when it is opened.
    for page, (fn, inputs, outputs) in ((tag_page, tag["refresh"]), (dataset_page, dataset["refresh"]),
                                        (train_page, train["refresh"])):
        page.select(fn, inputs, outputs, api_name=False, show_progress="hidden")
    tag_page.select(*tag["choices"], api_name=False, show_progress="hidden")  # the Show filters, as they are now


def _wire_model_swaps(ep: dict, ui: SimpleNamespace) -> tuple:
    """The served model on the Model tab and in the header: on opening the tab, after "Use this
    run's model" (Train) and "Load" (Model). -> (those outputs, info -> their values)."""
    model, header, model_page, train = ui.model, ui.header, ui.model_page, ui.train
    # The served model: its summary and details on the Model tab, and the page's header.
    model_out = [model["summary"], model["info"], header]

    def model_views(info: dict) -> tuple:
        return (*model["present"](info), model_tab.model_header(info))

    served = handler(ep["model_info"], present=model_views)
    model_page.select(served, None, model_out, api_name=False, show_progress="hidden")

    def swapped(info: dict) -> tuple:
        if info.get("needs_confirmation"):  # nothing was swapped: say why and how to go ahead
            return (gr.update(), gr.update(), gr.update(),
                    f"not served. {info['message']} Tick 'Serve it anyway' to serve it.", gr.update())
        # with how the run did on its held-out tags ("…: no better than the model it started from");
        # "serve it anyway" is for this swap only (left ticked, the next Use asked nothing)
        said = info.get("note", "").partition("; ")[2]
        return (*model_views(info), f"now serving <code>{literal(model_tab.served_name(info))}</code>"
                + (f" — {literal(said)}" if said else ""), False)

    def use_run(run_id, anyway):
        return (*train["need_run"](run_id), bool(anyway))

    train["use"].click(handler(ep["use_model"], prepare=use_run, present=swapped,
                               error=on_line([*model_out, train["msg"], train["use_anyway"]], train["msg"])),
                       [train["run"], train["use_anyway"]],
                       [*model_out, train["msg"], train["use_anyway"]], api_name=False, show_progress_on=train["msg"])
    # A failed Load says so on the tab's line (the toast vanished and the line kept "now serving …")
    model["load"].click(handler(ep["use_model"], present=lambda info: swapped(info)[:-1],
                                error=lambda m, *_: (*(gr.update(),) * len(model_out), error_text(m))),
                        model["source"], [*model_out, model["msg"]], api_name=False, show_progress_on=model["msg"])
    return model_out, model_views


def _wire_open_in_tag(ep: dict, ui: SimpleNamespace) -> None:
    tabs, tag, dataset = ui.tabs, ui.tag, ui.dataset
    # Dataset → Tag: an image picked in the Dataset tab's gallery opens in the Tag editor.
    def open_in_tag(image_hash: str) -> tuple:
        if not image_hash:
            raise user_error("pick an image in the gallery first")
        return (gr.Tabs(selected="tag"), *tag["view_of"](image_hash))

    opened = handler(open_in_tag)
    opened.endpoint = ep["tag_view"]
    dataset["open_in_tag"].click(opened, dataset["picked"], [tabs, *tag["refresh"][2]], api_name=False,
                                 show_progress_on=dataset["msg"])


def _wire_load(demo: gr.Blocks, ep: dict, ui: SimpleNamespace, model_out: list, model_views) -> gr.State:
    """A page opened: the Tag tab at the first untagged image, the Dataset counts, the served
    model, and the revision it shows (returned: the watch compares against it)."""
    tag, dataset = ui.tag, ui.dataset

    def on_load(first_untagged: int) -> tuple:
        view = tag["view_at"](first_untagged)
        has_images = bool(view[tag["refresh"][2].index(tag["current"])])
        return (*view, *dataset["refresh"][0](), *model_views(ep["model_info"]()), ep["revision"](),
                gr.Accordion(open=not has_images))

    seen = gr.State("")  # the store's and model's revision the page shows (`AppService.revision`)
    demo.load(handler(ep["first_untagged"], present=on_load), None,
              [*tag["refresh"][2], *dataset["refresh"][2], *model_out, seen, tag["add_images"]], api_name=False,
              show_progress="hidden")
    return seen


def _wire_watch(ep: dict, ui: SimpleNamespace, model_out: list, model_views, seen: gr.State) -> None:
    tag, dataset = ui.tag, ui.dataset
    # What a person is looking at follows changes made elsewhere (another page tagged, a hot
    # swap): every few seconds the page asks whether anything changed, and only then refreshes
    # the Dataset counts, the Tag tab's keys and store mark (its catch-up then redraws the status
    # line and chips, in the editor's queue), and the served model.
    watch_out = [seen, *dataset["refresh"][2], *tag["watch"][2], *model_out]

    def watch(last: str, *tag_values) -> tuple:
        unchanged = tuple(gr.update() for _ in watch_out)
        try:
            now = ep["revision"]()
            if now == last:
                return unchanged
            return (now, *dataset["refresh"][0](), *tag["watch"][0](now, *tag_values),
                    *model_views(ep["model_info"]()))
        except gr.Error:  # e.g. a model swap under way: the next tick tries again
            return unchanged

    watch.endpoint = ep["revision"]
    gr.Timer(WATCH_EVERY_S).tick(watch, [seen, *tag["watch"][1]], watch_out, api_name=False,
                                 show_progress="hidden", trigger_mode="always_last")

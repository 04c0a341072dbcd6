"""The Train tab's capacity choices in headless Chromium (issue 13): head presets with their
parameter counts, the backbone choice, a measured dry run, and a run that takes them."""

import pytest

from detector import load_checkpoint
from detector.capacity import backbone_choice_of, head_preset_of
from tests.test_ui_flows import app, browser, photos, shots  # noqa: F401 - the served app and its browser

pytestmark = pytest.mark.slow


def test_train_tab_offers_capacity_measures_it_and_runs_with_it(app, photos, shots):  # noqa: F811
    from playwright.sync_api import expect

    service, page = app
    service.tag(service.store.add_image(photos[0]), "mug")
    page.get_by_role("tab", name="Train").click()
    expect(page.locator("#train-measure")).to_be_visible(timeout=30_000)  # in sight: no accordion to find it in
    page.get_by_label("Iterations").fill("3")  # a real run, kept short
    page.get_by_text("Optional: box labels and validation").click()
    page.get_by_label("Shorter side of tagged images").fill("32")
    page.get_by_text("Capacity: heads and backbone").click()
    page.locator("#train-heads input").click()
    options = page.get_by_role("option")
    expect(options.filter(has_text="M parameters")).to_have_count(3, timeout=30_000)  # counts for the live model
    page.get_by_role("option", name="light").click()
    page.locator("#train-backbone").get_by_text("fine-tune its last two stages").click()
    page.locator("#train-measure").click()
    cost = page.locator("#train-cost")
    expect(cost).to_contain_text("peak memory", timeout=120_000)
    expect(cost).to_contain_text("light heads, backbone last_stages")
    assert service.jobs.runs() == [], "measuring makes no run"
    page.screenshot(path=str(shots / "train-capacity.png"), full_page=True)

    # The run starts with the choices, trains in its own process and its model has them.
    page.get_by_role("button", name="Start training").click()
    expect(page.locator("#train-status")).to_contain_text("finished", timeout=300_000)
    (listed,) = service.jobs.runs()
    run = service.jobs.run(listed["id"])
    cfg = run.read_config()
    assert (cfg.heads, cfg.train_backbone, cfg.iters, cfg.label_size) == ("light", "last_stages", 3, 32)
    assert run.status()["state"] == "finished" and run.status()["iteration"] == 3, run.log_tail()
    model = load_checkpoint(run.path)
    assert (head_preset_of(model.config), backbone_choice_of(model.config)) == ("light", "last_stages")

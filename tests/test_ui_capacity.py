"""The Train tab's capacity choices in headless Chromium (issue 13): head presets with their
parameter counts, the backbone choice, a measured dry run, and a run that takes them."""

import pytest

from tests.test_ui_flows import app, browser, photos, shots  # noqa: F401 - the served app and its browser

pytestmark = pytest.mark.slow


def test_train_tab_offers_capacity_measures_it_and_runs_with_it(app, photos, shots):  # noqa: F811
    from playwright.sync_api import expect

    service, page = app
    service.tag(service.store.add_image(photos[0]), "mug")
    started = []
    service.jobs.start = lambda run, resume=False: started.append(run) or run.id  # launch nothing
    page.get_by_role("tab", name="Train").click()
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

    page.get_by_role("button", name="Start training").click()
    expect(page.locator("#train-run input, #train-run textarea")).not_to_have_value("", timeout=30_000)
    cfg = started[0].read_config()
    assert (cfg.heads, cfg.train_backbone) == ("light", "last_stages")

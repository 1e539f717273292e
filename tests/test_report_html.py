"""`--html` pages open in a real browser and their charts render.

A chart that matplotlib wrote but a browser cannot decode, or that decodes to an empty white
box, passes every test that only reads the HTML text. So the pages are opened in headless
Chromium (Debian's /usr/bin/chromium, driven by playwright; no browser is downloaded), every
`img.chart` must have decoded (naturalWidth > 0), and a screenshot of each must show a drawing.
`assert_charts_render(path)` is the reusable check; any report's page can go through it.

Without Chromium the tests skip with the reason on a developer's machine and fail in CI
(`CI=true`), as the PostgreSQL tests do (tests/conftest.py).
"""

from __future__ import annotations

import base64
import importlib.util
import io
import os
import random
from pathlib import Path

import matplotlib.image
import numpy as np
import pytest
from conftest import Cli
from test_report_retention import worked_example

from engine.store.open import open_store
from engine.sync.ingest import ingest_customers, ingest_events

CHROMIUM = Path(os.environ.get("RETAIN_TEST_CHROMIUM", "/usr/bin/chromium"))


def require_chromium() -> None:
    """Skip (locally) or fail (in CI) when there is no Chromium to drive."""
    if CHROMIUM.is_file():
        return
    reason = f"no Chromium at {CHROMIUM} (apt-get install chromium, or set RETAIN_TEST_CHROMIUM)"
    if os.environ.get("CI") == "true":
        pytest.fail(f"{reason}; CI must check that HTML charts render")
    pytest.skip(reason)


def assert_not_blank(png: bytes, label: str) -> None:
    """The screenshot shows a drawing: enough non-white pixels and real contrast."""
    image = matplotlib.image.imread(io.BytesIO(png), format="png")
    rgb = image[..., :3]
    height, width = rgb.shape[:2]
    assert height >= 50 and width >= 50, f"{label}: only {width}x{height} pixels on screen"
    inked = float((rgb < 0.9).any(axis=2).mean())
    assert inked > 0.01, f"{label}: blank ({inked:.2%} of the pixels are not white)"
    assert float(rgb.std()) > 0.05, f"{label}: no contrast (std {rgb.std():.3f})"


def assert_charts_render(path: Path, minimum: int = 1) -> int:
    """Open `path` in headless Chromium and check that each `img.chart` decoded and is not
    blank on screen; returns how many charts there are (at least `minimum`)."""
    require_chromium()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as driver:
        browser = driver.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.goto(path.resolve().as_uri(), wait_until="load")
            charts = page.locator("img.chart")
            count = charts.count()
            assert count >= minimum, f"{path.name}: {count} charts, expected {minimum} or more"
            for index in range(count):
                chart = charts.nth(index)
                label = f"{path.name} chart {index + 1} ({chart.get_attribute('alt')!r})"
                decoded = chart.evaluate("img => img.complete ? img.naturalWidth : 0")
                assert decoded > 0, f"{label}: the browser could not decode the image"
                assert_not_blank(chart.screenshot(), label)
        finally:
            browser.close()
    return count


def test_retention_page_charts_render(cli: Cli, tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'retain.db'}"
    people, happenings = worked_example(200, 50, 220, 20)
    engine = open_store(url)
    ingest_customers(engine, list(enumerate(({"customer_id": c, "created_at": created}
                                             for c, created in people.items()), 2)), "test")
    ingest_events(engine, list(enumerate(
        ({"event_id": f"e{i}", "customer_id": c, "type": kind, "occurred_at": when}
         for i, (c, kind, when) in enumerate(happenings)), 2)), "test")
    engine.dispose()
    page = tmp_path / "retention.html"
    code, _, err = cli(["--db", url, "report", "retention", "--html", str(page)])
    assert code == 0, err
    text = page.read_text(encoding="utf-8")
    assert "Customer retention per month" in text and "Signup cohorts" in text
    # the CRR trend, the counts per period and the cohort heat map
    assert assert_charts_render(page, minimum=3) == 3


def _store_with_purchases_and_feedback(url: str) -> None:
    """A year of made-up purchases (with amounts) and feedback scores for the other reports."""
    rng = random.Random(7)
    engine = open_store(url)
    ingest_customers(engine, [(i + 2, {"customer_id": f"c{i}", "created_at": "2024-01-01"})
                              for i in range(60)], "test")
    rows = []
    for i in range(600):
        day = f"2024-{rng.randrange(1, 13):02d}-{rng.randrange(1, 29):02d}T12:00:00Z"
        customer = f"c{rng.randrange(60)}"
        if i % 5:
            rows.append({"event_id": f"p{i}", "customer_id": customer, "type": "purchase",
                         "occurred_at": day, "properties": {"amount": rng.randrange(5, 300)}})
        else:
            rows.append({"event_id": f"f{i}", "customer_id": customer, "type": "feedback",
                         "occurred_at": day, "properties": {"score": rng.randrange(0, 11)}})
    ingest_events(engine, list(enumerate(rows, 2)), "test")
    engine.dispose()


@pytest.mark.parametrize("name", ["retention", "value", "nps", "rfm"])
def test_every_report_page_charts_render(cli: Cli, tmp_path: Path, name: str) -> None:
    """The same check on each report that exists (the others are written alongside)."""
    if importlib.util.find_spec(f"engine.reports.{name}") is None:
        pytest.skip(f"engine/reports/{name}.py is not written yet")
    url = f"sqlite:///{tmp_path / 'retain.db'}"
    _store_with_purchases_and_feedback(url)
    page = tmp_path / f"{name}.html"
    code, _, err = cli(["--db", url, "report", name, "--html", str(page)])
    assert code == 0, err
    assert_charts_render(page, minimum=1)


def _page_with(tmp_path: Path, images: list[bytes]) -> Path:
    tags = "".join(f'<img class="chart" alt="test" src="data:image/png;base64,'
                   f'{base64.b64encode(png).decode()}">' for png in images)
    path = tmp_path / "probe.html"
    path.write_text(f"<!DOCTYPE html><html><body>{tags}</body></html>", encoding="utf-8")
    return path


def _png(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    matplotlib.image.imsave(buffer, pixels, format="png")
    return buffer.getvalue()


def test_the_check_catches_blank_and_broken_charts(tmp_path: Path) -> None:
    """The helper must be able to fail: a white image, and bytes no browser can decode."""
    white = np.ones((200, 300, 3))
    with pytest.raises(AssertionError, match="blank"):
        assert_charts_render(_page_with(tmp_path, [_png(white)]))
    with pytest.raises(AssertionError, match="could not decode"):
        assert_charts_render(_page_with(tmp_path, [b"\x89PNG\r\n\x1a\nnot really"]))
    drawn = white.copy()
    drawn[50:150, 40:260] = [0.2, 0.3, 0.7]
    assert assert_charts_render(_page_with(tmp_path, [_png(drawn)])) == 1

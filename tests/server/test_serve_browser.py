"""End to end in headless Chromium: load the samples, click the left eye, see it on the target.

Uses Debian's ``chromium`` (``/usr/bin/chromium``) through Playwright; nothing is installed at run
time. Skipped, with the reason, only where that browser (or the playwright package) is absent.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from semcorr.samples import load_samples

CHROMIUM = Path("/usr/bin/chromium")
ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--no-first-run",
]

pytestmark = pytest.mark.skipif(
    not CHROMIUM.exists(), reason=f"{CHROMIUM} is absent (apt-get install chromium)"
)


def _to_screen(box: dict, point: tuple[float, float], size: tuple[int, int]) -> tuple[float, float]:
    """Image pixel (x, y) → page coordinates of its centre, for an image shown in ``box``."""
    return (box["x"] + (point[0] + 0.5) * box["width"] / size[0],
            box["y"] + (point[1] + 0.5) * box["height"] / size[1])


def _to_image(box: dict, screen: tuple[float, float], size: tuple[int, int]
              ) -> tuple[float, float]:
    return ((screen[0] - box["x"]) * size[0] / box["width"] - 0.5,
            (screen[1] - box["y"]) * size[1] / box["height"] - 0.5)


def test_click_shows_the_match(live_server: str, tmp_path: Path) -> None:
    sync_api = pytest.importorskip("playwright.sync_api",
                                   reason="the playwright package is not installed")
    samples = load_samples()
    eye = tuple(samples.points[0].tolist())  # left eye of the source
    truth = samples.target_points[0][0].tolist()  # its place on chelsea_turned.jpg
    size = (451, 300)
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=ARGS,
                                             headless=True)
        try:
            page = browser.new_page(viewport={"width": 1200, "height": 800})
            errors: list[str] = []
            page.on("pageerror", lambda error: errors.append(str(error)))
            page.goto(f"{live_server}/")
            page.click("#load-samples")
            page.wait_for_selector("body[data-state=ready]", timeout=120_000)
            assert page.locator("#target-name").inner_text() == "chelsea_turned.jpg"

            source_box = page.locator("#source-image").bounding_box()
            page.mouse.click(*_to_screen(source_box, eye, size))
            page.wait_for_selector("body[data-state=matched]", timeout=60_000)

            # The source marker sits where we clicked (the page's pixel maths both ways).
            clicked = page.locator("#source-0")
            assert abs(float(clicked.get_attribute("data-x")) - eye[0]) < 1.0
            assert abs(float(clicked.get_attribute("data-y")) - eye[1]) < 1.0

            # The match marker is drawn at the true place, within a few pixels.
            marker = page.locator("#match-0").bounding_box()
            centre = (marker["x"] + marker["width"] / 2, marker["y"] + marker["height"] / 2)
            target_box = page.locator("#target-image").bounding_box()
            found = _to_image(target_box, centre, size)
            error = ((found[0] - truth[0]) ** 2 + (found[1] - truth[1]) ** 2) ** 0.5
            assert error < 4.0, f"match marker at {found}, truth {truth}"

            # Its heat map is shown over the target, and the table lists the point.
            page.wait_for_function(
                "() => { const h = document.getElementById('heatmap');"
                " return !h.hidden && h.complete && h.naturalWidth === 451; }",
                timeout=30_000,
            )
            assert page.locator("#matches tbody tr").count() == 1
            score = float(page.locator("#matches tbody tr td").nth(3).inner_text())
            assert 0.5 < score <= 1.0

            shot = tmp_path / "serve.png"
            page.screenshot(path=str(shot), full_page=True)
            assert shot.stat().st_size > 10_000

            # Download: the same JSON as `semcorr match` writes, with the marker's point.
            with page.expect_download() as download_info:
                page.click("#download")
            saved = tmp_path / "matches.json"
            download_info.value.save_as(saved)
            payload = json.loads(saved.read_text())
            assert set(payload) == {"source", "backbone", "points", "targets"}
            assert payload["targets"][0]["image"] == "chelsea_turned.jpg"
            np.testing.assert_allclose(payload["targets"][0]["points"][0], found, atol=1.5)

            # Toggling the rule re-queries the same point: one row, an argmax answer.
            page.select_option("#refine", "argmax")
            page.wait_for_function(
                "() => document.querySelector('#match-0') && document.body.dataset.state"
                " === 'matched'", timeout=30_000)
            assert page.locator("#matches tbody tr").count() == 1

            # A bad upload is reported on the page, and the page keeps working.
            page.set_input_files("#upload-source", files=[{
                "name": "cat.png", "mimeType": "image/png", "buffer": b"not an image"}])
            page.wait_for_selector("#status.error", timeout=30_000)
            assert "415" in page.locator("#status").inner_text()
            assert errors == []
        finally:
            browser.close()

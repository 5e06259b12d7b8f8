"""The Topics page in headless Chromium: find topics with the page's own form, see a mosaic per
topic, and follow a topic to the search page filtered to it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from clipdex import Index
from clipdex.web import create_app
from tests.chromium import ARTIFACTS, needs_chromium, new_page
from tests.conftest import serving

pytestmark = needs_chromium


@pytest.fixture()
def server(web_index: Index) -> Iterator[str]:
    with serving(create_app(web_index)) as url:
        yield url


def test_topics_page_in_chromium(server: str, web_index: Index, tmp_path: Path) -> None:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        page = new_page(p)
        page.goto(server + "/topics")
        assert page.locator("#no-topics").is_visible()
        page.fill("#find-topics input[name=k]", "3")
        with page.expect_navigation(url="**/topics?set=topics"):
            page.click("#find-topics button")
        page.wait_for_selector("section.topic .mosaic img")
        assert page.locator("section.topic").count() == 3
        page.wait_for_function("[...document.images].every(i => i.complete && i.naturalWidth > 0)")
        page.screenshot(path=str(ARTIFACTS / "topics.png"), full_page=True)
        first = page.locator("section.topic").first
        name = first.get_attribute("data-label")
        size = int(first.locator("h2 small").inner_text().split()[0])
        first.locator("a.topic-search").click()
        page.wait_for_selector("#results .card img")
        assert "set=topics" in page.url and "label=" in page.url
        assert page.locator("#results .card").count() == size
        page.context.browser.close()
    with web_index.lock:
        assert web_index.classification("topics").counts()[name or ""] == size
